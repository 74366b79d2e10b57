"""Writes of a leased phase: renew, give back, finish or fail it, and cancel under a lease.

Every write checks, in the ``UPDATE`` itself, that the job is in an allowed status and (when a
worker id is given) that the worker holds the lease; otherwise it raises :class:`LeaseLost`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.engine import RowMapping

from service.store._base import LEASED, NO_LEASE, StoreBase, clip, jobs_table, now_plus, transition
from service.store.exceptions import LeaseLost
from service.store.models import JobStatus
from service.store.records import JobRecord

__all__ = ["LeaseStore"]

logger = logging.getLogger(__name__)

_jobs = jobs_table
_PHASES = {JobStatus.PREPARING: "prepare", JobStatus.FINALIZING: "finalize"}


class LeaseStore(StoreBase):
    """The lease holder's writes (see the module docstring)."""

    def _leased_write(
        self,
        job_id: str,
        worker_id: str | None,
        allowed: tuple[JobStatus, ...],
        values: Callable[[RowMapping, datetime], dict[str, Any]],
        *,
        extra: ColumnElement[bool] | None = None,
    ) -> JobRecord:
        """Update the job if its status is in ``allowed`` and (when ``worker_id`` is given)
        ``worker_id`` holds its lease, checked in the UPDATE itself; else raise LeaseLost."""
        allowed_values = [s.value for s in allowed]
        conditions: list[ColumnElement[bool]] = [
            _jobs.c.id == job_id,
            _jobs.c.status.in_(allowed_values),
        ]
        if worker_id is not None:
            conditions.append(_jobs.c.lease_owner == worker_id)
        if extra is not None:
            conditions.append(extra)
        with self._write() as conn:
            now = self._clock()
            row = (
                conn.execute(self._for_update(select(_jobs).where(*conditions))).mappings().first()
            )
            if row is None:
                raise self._lease_lost(conn, job_id, worker_id, allowed)
            updated = (
                conn.execute(
                    update(_jobs)
                    .where(*conditions)
                    .values({"updated_at": now, **values(row, now)})
                    .returning(*_jobs.c)
                )
                .mappings()
                .first()
            )
            if updated is None:
                raise self._lease_lost(conn, job_id, worker_id, allowed)
        return JobRecord.from_row(updated)

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float | None = None) -> bool:
        """Renew ``worker_id``'s lease on the job for ``lease_s`` more seconds.

        Returns ``True`` when cancellation was requested meanwhile (the job is CANCELLING): the
        lease is still renewed so the worker can stop cleanly and call :meth:`mark_cancelled`.

        Raises:
            LeaseLost: another worker took the job over, or it was released, finished,
                cancelled or failed. Stop working on it.
        """
        lease = self.lease_s if lease_s is None else float(lease_s)
        record = self._leased_write(
            job_id,
            worker_id,
            LEASED,
            lambda row, now: {"lease_expires_at": now_plus(now, lease)},
        )
        return record.status is JobStatus.CANCELLING

    def release_lease(
        self,
        job_id: str,
        worker_id: str,
        error_message: str | None = None,
        *,
        raised: bool | None = None,
    ) -> None:
        """Give the lease back without finishing the phase (after an error, or on shutdown).

        The job becomes claimable again at once; ``error_message`` is kept as the last error,
        which the eventual failure message quotes. ``raised`` says whether the phase raised
        (by default: when an ``error_message`` is given); a raised phase counts towards
        ``max_attempts``, a phase handed back for another reason (a worker shutting down)
        towards no limit.

        Raises:
            LeaseLost: the lease is not ``worker_id``'s.
        """
        counted = error_message is not None if raised is None else raised

        def values(row: RowMapping, now: datetime) -> dict[str, Any]:
            return {
                **NO_LEASE,
                "error_message": clip(error_message) if error_message else row["error_message"],
                "phase_errors": row["phase_errors"] + (1 if counted else 0),
            }

        record = self._leased_write(job_id, worker_id, LEASED, values)
        if counted:
            logger.warning(
                "worker %s released job %s after its %s raised (error %d of %d allowed)",
                worker_id,
                job_id,
                _PHASES.get(record.status, "phase"),
                record.phase_errors,
                self.max_attempts,
            )
        else:
            logger.info("worker %s released job %s", worker_id, job_id)

    def finish_prepare(
        self,
        job_id: str,
        worker_id: str,
        baseline_accuracy: float | None,
        *,
        trials_done: int = 0,
    ) -> JobRecord:
        """End the prepare phase: PREPARING → SEARCHING; the search clock starts now
        (``deadline_at = now + timeout_s`` when the job has a timeout).

        Raises:
            LeaseLost: the lease is not ``worker_id``'s, or the job is no longer PREPARING
                (e.g. CANCELLING: then call :meth:`mark_cancelled`).
        """

        def values(row: RowMapping, now: datetime) -> dict[str, Any]:
            timeout = row["timeout_s"]
            return transition(
                JobStatus.SEARCHING,
                now,
                baseline_accuracy=baseline_accuracy,
                deadline_at=now_plus(now, timeout) if timeout is not None else None,
                trials_done=trials_done,
            )

        record = self._leased_write(job_id, worker_id, (JobStatus.PREPARING,), values)
        logger.info("job %s prepared by %s, searching", job_id, worker_id)
        return record

    def finish_job(self, job_id: str, worker_id: str, result: Mapping[str, Any]) -> JobRecord:
        """End the finalize phase: FINALIZING → SUCCEEDED with the JSON ``result`` (report).

        Raises:
            ValueError: ``result`` is not JSON-serialisable.
            LeaseLost: the lease is not ``worker_id``'s, or the job is no longer FINALIZING.
        """
        try:
            result_dict = json.loads(json.dumps(dict(result), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job result is not JSON-serialisable: {exc}") from exc
        record = self._leased_write(
            job_id,
            worker_id,
            (JobStatus.FINALIZING,),
            lambda row, now: transition(JobStatus.SUCCEEDED, now, result=result_dict),
        )
        logger.info("job %s succeeded (finalised by %s)", job_id, worker_id)
        return record

    def fail_job(self, job_id: str, worker_id: str | None, code: str, message: str) -> JobRecord:
        """Mark the job FAILED with a stable ``code`` and a ``message`` the user can act on.

        With ``worker_id`` the caller must hold the lease (prepare/finalize phases). With
        ``None`` (search workers, operators) any non-terminal job is failed, and a job that is
        already terminal is returned unchanged.

        Raises:
            LeaseLost: ``worker_id`` was given and does not hold the lease.
        """
        if worker_id is not None:
            allowed: tuple[JobStatus, ...] = LEASED
        else:
            allowed = tuple(s for s in JobStatus if not s.terminal)
        try:
            record = self._leased_write(
                job_id,
                worker_id,
                allowed,
                lambda row, now: transition(
                    JobStatus.FAILED, now, error_code=code, error_message=message
                ),
            )
        except LeaseLost:
            if worker_id is None:
                current = self.load_job(job_id)  # JobNotFound when it was deleted
                logger.info("fail_job on %s job %s ignored", current.status, job_id)
                return current
            raise
        logger.warning("job %s failed (%s): %s", job_id, code, record.error_message)
        return record

    def mark_cancelled(self, job_id: str, worker_id: str | None) -> JobRecord:
        """CANCELLING → CANCELLED once the work has stopped; a CANCELLED job is returned as is.

        With ``worker_id`` the caller must hold the lease; with ``None`` the job must have no
        live lease (a search worker, or anyone cleaning up).

        Raises:
            LeaseLost: the job is not CANCELLING, or the lease condition does not hold.
        """
        extra = None
        if worker_id is None:
            now = self._clock()
            extra = or_(
                _jobs.c.lease_owner.is_(None),
                _jobs.c.lease_expires_at.is_(None),
                _jobs.c.lease_expires_at <= now,
            )
        try:
            record = self._leased_write(
                job_id,
                worker_id,
                (JobStatus.CANCELLING,),
                lambda row, now: transition(JobStatus.CANCELLED, now),
                extra=extra,
            )
        except LeaseLost:
            current = self.load_job(job_id)
            if current.status is JobStatus.CANCELLED:
                return current
            raise
        logger.info("job %s cancelled", job_id)
        return record
