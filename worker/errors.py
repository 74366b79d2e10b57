"""The root of every error the worker raises on purpose, each with a stable ``code``.

A :class:`WorkerError` means "what was asked for cannot be done"; its message says what to
change and its ``code`` (a class attribute, overridable per instance) is the machine-readable
cause. The codes match the API's own pre-checks where the cause is the same
(``invalid_dataset``, ``factory_not_allowed``, ``invalid_weights``, ``invalid_spec``...), so a
job the worker refuses fails with the same code the API would have answered.

Each package's errors subclass this root (``worker.data.DatasetError``, ``worker.zoo.ZooError``,
``worker.weights.WeightsError``, the pool's ``BadInput``, the CLI's ``UsageError``) and are
translated once at each boundary: the pool's failure path records ``code`` and message on the
job (:func:`worker.pool._refusal.refused`), the CLI's ``main`` prints the message and exits 2.

``SearchStopped`` and ``PhaseInterrupted`` are signals (stop, hand the work back), not errors,
and deliberately do not subclass this root.
"""

from __future__ import annotations

__all__ = ["InvalidOptions", "UsageError", "WorkerError"]


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose; ``code`` names the cause."""

    code: str = "worker_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidOptions(WorkerError, ValueError):
    """A job's options cannot make a search (e.g. a method name that is not registered)."""

    code = "invalid_spec"


class UsageError(WorkerError):
    """A problem with what a command-line user asked for; printed as one line."""

    code = "usage_error"
