"""The job queue: claims of the single-worker phases, and the lease-loss policy.

Concurrency model:

* **Claims** (:meth:`QueueStore.claim`, :meth:`QueueStore.claim_finalize`) hand a job phase to
  exactly one worker. On PostgreSQL the candidate row is selected ``FOR UPDATE SKIP LOCKED``; on
  SQLite the transaction starts with ``BEGIN IMMEDIATE`` (see :mod:`service.store.engine`),
  which serialises all writers, and SKIP LOCKED is not relied on there. In both cases the state
  change is a conditional ``UPDATE`` that repeats the selection condition.
* **Leases**: a claimed prepare or finalize phase belongs to ``lease_owner`` until
  ``lease_expires_at``; the holder renews it (:mod:`service.store.leases`). Every write that
  belongs to a leased phase checks the owner in the same statement and raises
  :class:`LeaseLost` when another worker took the job over, so a stale worker cannot write
  results.
* **Search** needs no lease (:mod:`service.store.search`).

Lease-loss policy: a dead lease of a phase is either one the holder gave back after the phase
**raised** (``release_lease`` with an error: ``phase_errors`` + 1), or one that **expired** with
nobody giving it back, the worker having vanished (killed, crashed, stalled: ``lost_leases``
+ 1 when the job is taken over). Raised phases fail the job after ``max_attempts``
(``RANKOPT_MAX_PHASE_ATTEMPTS``, code ``<phase>_failed``); vanished workers only after the
larger ``max_lost_leases`` (``RANKOPT_MAX_LOST_LEASES``, code ``<phase>_lost``), so a fleet
whose workers are killed and replaced does not fail the jobs they held.

State transitions (anything else is refused; the values each status writes are in
:func:`service.store._base.transition`):

=========================  ==============================================================
QUEUED → PREPARING          :meth:`claim` (kind ``prepare``)
PREPARING → PREPARING       :meth:`claim` takes over a dead lease (``attempts`` + 1)
PREPARING → SEARCHING       ``finish_prepare`` (lease holder)
SEARCHING → FINALIZING      :meth:`claim_finalize`, or :meth:`claim` once the budget is spent
FINALIZING → FINALIZING     :meth:`claim` takes over a dead lease (``attempts`` + 1)
FINALIZING → SUCCEEDED      ``finish_job`` (lease holder)
QUEUED → CANCELLED          ``request_cancel``
PREPARING/SEARCHING/
FINALIZING → CANCELLING     ``request_cancel``
CANCELLING → CANCELLED      ``mark_cancelled`` (lease holder, or anyone once no live
                            lease), or :meth:`claim` (kind ``cancel``) once no live lease
non-terminal → FAILED       ``fail_job``; :meth:`claim` past the lease-loss policy's limits;
                            ``record_trial_failure`` past its limit
=========================  ==============================================================
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.engine import Connection, RowMapping

from service.store._base import StoreBase, jobs_table, now_plus, transition
from service.store.models import JobStatus
from service.store.records import Claim, ClaimKind, JobRecord

__all__ = ["QueueStore"]

logger = logging.getLogger(__name__)

_jobs = jobs_table

#: The last error quoted when a phase's worker vanished without recording one.
VANISHED = "the worker stopped renewing its lease (it crashed, was killed, or stalled)"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


class QueueStore(StoreBase):
    """Claims of prepare, finalize and cancel work (see the module docstring)."""

    def claim(self, worker_id: str, lease_s: float | None = None) -> Claim | None:
        """Hand the most urgent piece of single-worker work to ``worker_id``, or ``None``.

        In priority order:

        1. a CANCELLING job without a live lease: it is marked CANCELLED here and returned as a
           ``cancel`` claim (no lease) so that the worker can clean up (delete the study);
        2. a FINALIZING job whose lease died (``finalize``, ``attempts`` + 1);
        3. a SEARCHING job whose budget is spent (trial count reached or deadline passed) and
           which reports no running trial, or whose progress went stale for
           ``stale_progress_s``: moved to FINALIZING (``finalize``, ``attempts`` = 1);
        4. a PREPARING job whose lease died (``prepare``, ``attempts`` + 1);
        5. the oldest QUEUED job: moved to PREPARING (``prepare``, ``attempts`` = 1).

        A lease is dead when it expired or was released. Taking over an expired lease counts a
        lost lease. A job whose phase raised ``max_attempts`` times is failed
        (``prepare_failed`` / ``finalize_failed``, with the last recorded error), one whose
        worker vanished ``max_lost_leases`` times too (``prepare_lost`` / ``finalize_lost``),
        and the search goes on. Exactly one of any number of concurrent callers gets a given
        job.
        """
        lease = self.lease_s if lease_s is None else float(lease_s)
        if lease <= 0:
            raise ValueError(f"lease_s must be positive, got {lease}")
        claimed: Claim | None = None
        with self._write() as conn:
            for _ in range(100):  # bounded: each pass claims, or fails one job for good
                outcome = self._claim_once(conn, worker_id, lease)
                if outcome is None:
                    break
                if isinstance(outcome, Claim):
                    claimed = outcome
                    break
        if claimed is not None:
            logger.info(
                "worker %s claimed job %s (%s, attempt %d)",
                worker_id,
                claimed.job.id,
                claimed.kind,
                claimed.job.attempts,
            )
        return claimed

    def _claim_once(self, conn: Connection, worker_id: str, lease: float) -> Claim | bool | None:
        """One pass of :meth:`claim`: a Claim, True when a job was failed (look again), or None
        when there is nothing to do."""
        now = self._clock()
        j = _jobs.c
        dead = or_(j.lease_owner.is_(None), j.lease_expires_at.is_(None), j.lease_expires_at <= now)
        spent = or_(
            j.trials_done >= j.trials_total,
            and_(j.deadline_at.is_not(None), j.deadline_at <= now),
        )
        settled = or_(
            j.trials_running <= 0,
            j.progress_at.is_(None),
            j.progress_at <= now - timedelta(seconds=self.stale_progress_s),
        )
        oldest = (j.updated_at, j.id)
        candidates: list[tuple[str, ColumnElement[bool], tuple[Any, ...]]] = [
            ("cancel", and_(j.status == JobStatus.CANCELLING.value, dead), oldest),
            ("finalize", and_(j.status == JobStatus.FINALIZING.value, dead), oldest),
            ("start-finalize", and_(j.status == JobStatus.SEARCHING.value, spent, settled), oldest),
            ("prepare", and_(j.status == JobStatus.PREPARING.value, dead), oldest),
            ("start-prepare", j.status == JobStatus.QUEUED.value, (j.created_at, j.id)),
        ]
        for kind, condition, order in candidates:
            row = (
                conn.execute(self._lock(select(_jobs).where(condition).order_by(*order).limit(1)))
                .mappings()
                .first()
            )
            if row is None:
                continue
            guard = and_(j.id == row["id"], condition)
            expires = now_plus(now, lease)
            lease_values = {"lease_owner": worker_id, "lease_expires_at": expires}
            values: dict[str, Any]
            claim_kind: ClaimKind
            if kind == "cancel":
                values = transition(JobStatus.CANCELLED, now)
                claim_kind, expires_at = "cancel", None
            elif kind in ("finalize", "prepare"):
                taken = self._take_over(conn, row, kind, guard, now)
                if taken is None:
                    return True
                values = {**lease_values, **taken, "updated_at": now}
                claim_kind, expires_at = cast(ClaimKind, kind), expires
            elif kind == "start-finalize":
                values = transition(JobStatus.FINALIZING, now, **lease_values)
                claim_kind, expires_at = "finalize", expires
            else:
                values = transition(JobStatus.PREPARING, now, **lease_values)
                claim_kind, expires_at = "prepare", expires
            updated = (
                conn.execute(update(_jobs).where(guard).values(values).returning(*_jobs.c))
                .mappings()
                .first()
            )
            if updated is None:  # lost a race (only possible without row locks); look again
                return True
            return Claim(
                kind=claim_kind,
                job=JobRecord.from_row(updated),
                worker_id=worker_id,
                lease_expires_at=expires_at,
            )
        return None

    def _take_over(
        self,
        conn: Connection,
        row: RowMapping,
        phase: str,
        guard: ColumnElement[bool],
        now: datetime,
    ) -> dict[str, Any] | None:
        """Apply the lease-loss policy to a phase whose lease died: the values of the takeover,
        or None when the job was failed instead."""
        lost = row["lost_leases"]
        holder = row["lease_owner"]
        if holder is not None:  # expired, not given back: the worker vanished
            lost += 1
            logger.warning(
                "job %s: the %s lease of worker %s expired with no error recorded (the worker "
                "vanished: killed, crashed or stalled); lost lease %d of %d allowed",
                row["id"],
                phase,
                holder,
                lost,
                self.max_lost_leases,
            )
        errors = row["phase_errors"]
        if errors >= self.max_attempts:
            last = row["error_message"] or VANISHED
            message = f"{phase} failed {errors} times; last error: {last}"
            if lost:
                message += f"; the worker also vanished {_times(lost)}"
            self._give_up(conn, row, guard, now, f"{phase}_failed", message)
            return None
        if lost >= self.max_lost_leases:
            message = (
                f"{phase} never finished: its worker vanished {_times(lost)} (the lease expired "
                f"with no error recorded: the worker was killed, crashed or stalled; the limit "
                f"is {self.max_lost_leases}, RANKOPT_MAX_LOST_LEASES)"
            )
            if errors:
                message += f"; it also raised {_times(errors)}, last: {row['error_message']}"
            self._give_up(conn, row, guard, now, f"{phase}_lost", message)
            return None
        return {"lease_kind": phase, "attempts": _jobs.c.attempts + 1, "lost_leases": lost}

    def _give_up(
        self,
        conn: Connection,
        row: RowMapping,
        guard: ColumnElement[bool],
        now: datetime,
        code: str,
        message: str,
    ) -> None:
        values = transition(JobStatus.FAILED, now, error_code=code, error_message=message)
        conn.execute(update(_jobs).where(guard).values(values))
        logger.warning("job %s failed (%s): %s", row["id"], code, values["error_message"])

    def claim_finalize(
        self, job_id: str, worker_id: str, lease_s: float | None = None
    ) -> Claim | None:
        """Move a SEARCHING job to FINALIZING under a lease for ``worker_id``.

        Called by a search worker that saw the budget run out. Returns ``None`` when the job is
        no longer SEARCHING (another worker got there first, or it was cancelled or failed).
        """
        lease = self.lease_s if lease_s is None else float(lease_s)
        now = self._clock()
        expires = now_plus(now, lease)
        values = transition(
            JobStatus.FINALIZING, now, lease_owner=worker_id, lease_expires_at=expires
        )
        with self._write() as conn:
            row = self._update_if(conn, job_id, JobStatus.SEARCHING, values)
        if row is None:
            return None
        logger.info("worker %s claimed job %s (finalize)", worker_id, job_id)
        return Claim(
            kind="finalize",
            job=JobRecord.from_row(row),
            worker_id=worker_id,
            lease_expires_at=expires,
        )
