"""The search phase: spreading workers over SEARCHING jobs, progress, failed trials, and the
cheap status polls of a running trial."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import and_, or_, select, update

from service.store._base import StoreBase, jobs_table, transition
from service.store.exceptions import JobNotFound
from service.store.models import ACTIVE_STATUSES, JobStatus
from service.store.records import JobRecord

__all__ = ["SearchStore"]

logger = logging.getLogger(__name__)

_jobs = jobs_table


class SearchStore(StoreBase):
    """Shared (lease-free) work on SEARCHING jobs."""

    def next_search_job(self, worker_id: str) -> JobRecord | None:
        """The SEARCHING job with budget left that was served least recently, or ``None``.

        Budget left means ``trials_done + trials_running < trials_total`` and the deadline has
        not passed. The job's ``last_served_at`` is set in the same transaction, so workers
        asking in turn spread over the jobs round-robin. Several workers may get the same job
        (the search phase is shared); the worker must still enforce the budget against the
        Optuna study, since two workers may be handed the last trial. On PostgreSQL no row is
        skipped for being locked, so a lone job is never hidden from a concurrent caller.
        """
        now = self._clock()
        j = _jobs.c
        condition = and_(
            j.status == JobStatus.SEARCHING.value,
            j.trials_done + j.trials_running < j.trials_total,
            or_(j.deadline_at.is_(None), j.deadline_at > now),
        )
        stmt = (
            select(_jobs)
            .where(condition)
            .order_by(j.last_served_at.asc().nulls_first(), j.created_at, j.id)
            .limit(1)
        )
        with self._write() as conn:
            row = conn.execute(stmt).mappings().first()
            if row is None:
                return None
            updated = (
                conn.execute(
                    update(_jobs)
                    .where(j.id == row["id"], condition)
                    .values(last_served_at=now)
                    .returning(*_jobs.c)
                )
                .mappings()
                .first()
            )
        if updated is None:
            return None
        logger.debug("worker %s serves job %s", worker_id, row["id"])
        return JobRecord.from_row(updated)

    def update_progress(
        self,
        job_id: str,
        *,
        trials_done: int,
        trials_running: int,
        best_compression: float | None = None,
        best_accuracy: float | None = None,
        eta_s: float | None = None,
    ) -> bool:
        """Record search progress (counts from the Optuna study). ``best_*`` are kept when
        ``None`` is passed. Terminal jobs are not touched.

        Returns ``True`` while the job is SEARCHING (keep going), ``False`` otherwise (stop:
        finalising, cancelling, finished, or gone).
        """
        if trials_done < 0 or trials_running < 0:
            raise ValueError(
                f"trial counts must be >= 0, got done={trials_done}, running={trials_running}"
            )
        now = self._clock()
        values: dict[str, Any] = {
            "trials_done": trials_done,
            "trials_running": trials_running,
            "eta_s": eta_s,
            "progress_at": now,
            "updated_at": now,
        }
        if best_compression is not None:
            values["best_compression"] = best_compression
        if best_accuracy is not None:
            values["best_accuracy"] = best_accuracy
        active = [s.value for s in JobStatus if not s.terminal]
        with self._write() as conn:
            status = conn.execute(
                update(_jobs)
                .where(_jobs.c.id == job_id, _jobs.c.status.in_(active))
                .values(values)
                .returning(_jobs.c.status)
            ).scalar_one_or_none()
        return status == JobStatus.SEARCHING.value

    def record_trial_failure(
        self, job_id: str, message: str, max_failures: int | None = None
    ) -> JobRecord:
        """Count a failed trial; past ``max_failures`` failures a SEARCHING job is failed
        (``trials_failed``, quoting ``message`` as the last error).

        Raises:
            JobNotFound: no such job.
        """
        now = self._clock()
        with self._write() as conn:
            row = (
                conn.execute(
                    update(_jobs)
                    .where(_jobs.c.id == job_id)
                    .values(trial_failures=_jobs.c.trial_failures + 1, updated_at=now)
                    .returning(*_jobs.c)
                )
                .mappings()
                .first()
            )
            if row is None:
                raise JobNotFound(job_id)
            failures = row["trial_failures"]
            if (
                max_failures is not None
                and failures >= max_failures
                and row["status"] == JobStatus.SEARCHING.value
            ):
                summary = (
                    f"{failures} trials failed (the limit is {max_failures}); last error: {message}"
                )
                values = transition(
                    JobStatus.FAILED, now, error_code="trials_failed", error_message=summary
                )
                row = self._update_if(conn, job_id, JobStatus.SEARCHING, values)
                assert row is not None  # the row is locked by the UPDATE above
                logger.warning("job %s failed: %s", job_id, values["error_message"])
        return JobRecord.from_row(row)

    def is_cancel_requested(self, job_id: str) -> bool:
        """True when the job is CANCELLING or CANCELLED, or gone. Cheap; poll between epochs."""
        with self._read() as conn:
            status = conn.execute(
                select(_jobs.c.status).where(_jobs.c.id == job_id)
            ).scalar_one_or_none()
        return status is None or status in (JobStatus.CANCELLING.value, JobStatus.CANCELLED.value)

    def should_stop(self, job_id: str) -> bool:
        """True unless the job is still QUEUED, PREPARING, SEARCHING or FINALIZING (i.e. it is
        cancelling, finished or gone). Cheap; poll between epochs of a trial."""
        with self._read() as conn:
            status = conn.execute(
                select(_jobs.c.status).where(_jobs.c.id == job_id)
            ).scalar_one_or_none()
        return status is None or JobStatus(status) not in ACTIVE_STATUSES

    def searching_job_ids(self) -> list[str]:
        """Ids of the SEARCHING jobs, oldest first (for the worker pool's reaper)."""
        with self._read() as conn:
            rows = conn.execute(
                select(_jobs.c.id)
                .where(_jobs.c.status == JobStatus.SEARCHING.value)
                .order_by(_jobs.c.created_at, _jobs.c.id)
            )
            return [str(row[0]) for row in rows]
