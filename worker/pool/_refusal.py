"""The pool's one translation of worker errors: a job refused, with the cause's code.

Whatever a job's inputs or options fail on (a :class:`~worker.errors.WorkerError` of the data,
the zoo, the weights or the options) becomes one :class:`BadInput` that keeps the cause's
``code``; the worker's failure path records that code and the message on the job, so the user
sees the same code the API's pre-check would have given.
"""

from __future__ import annotations

from worker.errors import WorkerError

__all__ = ["BadInput", "refused"]


class BadInput(WorkerError, ValueError):
    """The job cannot run with what the user supplied; the message says what to change.

    ``code`` is the cause's (``invalid_dataset``, ``factory_not_allowed``...) or ``bad_input``
    for problems of the job's files as the server stored them.
    """

    code = "bad_input"


def refused(exc: WorkerError, what: str) -> BadInput:
    """The :class:`BadInput` that fails a job for ``exc``: message ``"<what>: <exc>"``, the
    code of ``exc``."""
    return BadInput(f"{what}: {exc}", code=exc.code)
