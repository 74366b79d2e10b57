"""What every part of the :class:`~service.store.Store` shares: the engine, its transactions,
the clock, the tables, the job reads every aggregate needs, and the job's state machine (the
values each status writes, in one place: :func:`transition`).

The aggregates (:mod:`~service.store.keys`, :mod:`~service.store.jobs`,
:mod:`~service.store.queue`, :mod:`~service.store.leases`, :mod:`~service.store.search`,
:mod:`~service.store.artifact_rows`, :mod:`~service.store.metrics`) subclass
:class:`StoreBase`; :class:`service.store.Store` combines them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Select, Table, select, update
from sqlalchemy.engine import Connection, RowMapping

from service.store.engine import read_only
from service.store.exceptions import JobNotFound, LeaseLost
from service.store.models import ApiKey, Artifact, Idempotency, Job, JobStatus, utcnow
from service.store.records import JobRecord

__all__ = ["JOB_ID_RE", "StoreBase", "clip", "now_plus", "transition"]

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_MESSAGE = 4000

jobs_table = cast(Table, Job.__table__)
keys_table = cast(Table, ApiKey.__table__)
artifacts_table = cast(Table, Artifact.__table__)
idempotency_table = cast(Table, Idempotency.__table__)

#: The statuses whose phase is held under a lease by one worker.
LEASED = (JobStatus.PREPARING, JobStatus.FINALIZING, JobStatus.CANCELLING)
NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_kind": None, "lease_expires_at": None}

_NEW_PHASE: dict[str, Any] = {"attempts": 1, "phase_errors": 0, "lost_leases": 0}
_ENDED: dict[str, Any] = {**NO_LEASE, "trials_running": 0, "eta_s": None}

#: What each status writes whenever a job enters it (besides ``status`` and ``updated_at``).
_WRITES: dict[JobStatus, dict[str, Any]] = {
    JobStatus.QUEUED: {},
    JobStatus.PREPARING: {**_NEW_PHASE, "lease_kind": "prepare"},
    JobStatus.SEARCHING: {
        **NO_LEASE,
        "last_served_at": None,
        "trials_running": 0,
        "attempts": 0,
        "phase_errors": 0,
        "lost_leases": 0,
        "error_code": None,
        "error_message": None,
    },
    JobStatus.FINALIZING: {**_NEW_PHASE, "lease_kind": "finalize", "eta_s": None},
    JobStatus.CANCELLING: {},
    JobStatus.SUCCEEDED: {**_ENDED, "eta_s": 0.0, "error_code": None, "error_message": None},
    JobStatus.CANCELLED: _ENDED,
    JobStatus.FAILED: _ENDED,
}
#: The timestamps each status sets to the moment of the transition.
_STAMPS: dict[JobStatus, tuple[str, ...]] = {
    JobStatus.SEARCHING: ("search_started_at", "progress_at"),
    JobStatus.SUCCEEDED: ("finished_at",),
    JobStatus.CANCELLED: ("finished_at",),
    JobStatus.FAILED: ("finished_at",),
}
#: The values the caller must give for each status.
_REQUIRED: dict[JobStatus, frozenset[str]] = {
    JobStatus.PREPARING: frozenset({"lease_owner", "lease_expires_at"}),
    JobStatus.SEARCHING: frozenset({"baseline_accuracy", "deadline_at", "trials_done"}),
    JobStatus.FINALIZING: frozenset({"lease_owner", "lease_expires_at"}),
    JobStatus.SUCCEEDED: frozenset({"result"}),
    JobStatus.FAILED: frozenset({"error_code", "error_message"}),
}


def transition(status: JobStatus, now: datetime, **values: Any) -> dict[str, Any]:
    """The column values of an ``UPDATE`` that moves a job to ``status`` at ``now``.

    Every status writes a fixed set of fields (a terminal status drops the lease, zeroes the
    running trials and stamps ``finished_at``; a new leased phase starts its attempt counters
    at 1, ...); ``values`` adds what only the caller knows (the lease holder, the error, the
    result). The values a status needs are checked here.

    Raises:
        TypeError: a value the status needs is missing.
    """
    missing = _REQUIRED.get(status, frozenset()) - values.keys()
    if missing:
        raise TypeError(f"a transition to {status} needs {sorted(missing)}")
    stamps = {name: now for name in _STAMPS.get(status, ())}
    if "error_message" in values and values["error_message"] is not None:
        values["error_message"] = clip(values["error_message"])
    return {**_WRITES[status], **stamps, "status": status.value, "updated_at": now, **values}


def now_plus(now: datetime, seconds: float) -> datetime:
    """``now`` plus ``seconds``."""
    return now + timedelta(seconds=seconds)


def clip(message: str) -> str:
    """``message`` cut to what the error column keeps."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


class StoreBase:
    """The engine, transactions and clock of a store (see :class:`service.store.Store`)."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_s: float = 60.0,
        max_attempts: int = 3,
        max_lost_leases: int = 10,
        stale_progress_s: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if lease_s <= 0 or max_attempts < 1 or max_lost_leases < 1 or stale_progress_s <= 0:
            raise ValueError(
                "lease_s and stale_progress_s must be positive and max_attempts and "
                f"max_lost_leases at least 1, got lease_s={lease_s}, max_attempts={max_attempts}, "
                f"max_lost_leases={max_lost_leases}, stale_progress_s={stale_progress_s}"
            )
        self._engine = engine
        self._read_engine = read_only(engine)
        self._postgres = engine.dialect.name == "postgresql"
        self.lease_s = float(lease_s)
        self.max_attempts = int(max_attempts)
        self.max_lost_leases = int(max_lost_leases)
        self.stale_progress_s = float(stale_progress_s)
        self._clock = clock

    @property
    def engine(self) -> Engine:
        """The engine this store writes through."""
        return self._engine

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self._engine.dispose()

    def now(self) -> datetime:
        """The store's clock (timezone-aware UTC)."""
        return self._clock()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction (deferred ``BEGIN`` on SQLite)."""
        with self._read_engine.begin() as conn:
            yield conn

    def _lock(self, stmt: Select[Any]) -> Select[Any]:
        """Add ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serialises writers instead)."""
        return stmt.with_for_update(skip_locked=True) if self._postgres else stmt

    def _for_update(self, stmt: Select[Any]) -> Select[Any]:
        """Add ``FOR UPDATE`` on PostgreSQL: wait for, then hold, the row lock."""
        return stmt.with_for_update() if self._postgres else stmt

    @staticmethod
    def _job_row(conn: Connection, job_id: str) -> RowMapping | None:
        return conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()

    @staticmethod
    def _update_if(
        conn: Connection, job_id: str, status: JobStatus, values: dict[str, Any]
    ) -> RowMapping | None:
        """Write ``values`` to the job if it is (still) in ``status``: its new row, or None."""
        j = jobs_table.c
        stmt = update(jobs_table).where(j.id == job_id, j.status == status.value).values(values)
        return conn.execute(stmt.returning(*jobs_table.c)).mappings().first()

    def get_job(self, job_id: str, owner_id: int) -> JobRecord:
        """The job ``job_id`` if ``owner_id`` owns it.

        Raises:
            JobNotFound: no such job, or another owner's (indistinguishable on purpose).
        """
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise JobNotFound(str(job_id))
        j = jobs_table.c
        with self._read() as conn:
            row = (
                conn.execute(select(jobs_table).where(j.id == job_id, j.owner_id == owner_id))
                .mappings()
                .first()
            )
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.from_row(row)

    def load_job(self, job_id: str) -> JobRecord:
        """The job ``job_id`` whoever owns it (for workers; the API uses :meth:`get_job`).

        Raises:
            JobNotFound: no such job.
        """
        with self._read() as conn:
            row = self._job_row(conn, job_id)
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.from_row(row)

    def _lease_lost(
        self, conn: Connection, job_id: str, worker_id: str | None, allowed: tuple[JobStatus, ...]
    ) -> LeaseLost:
        row = self._job_row(conn, job_id)
        if row is None:
            return LeaseLost(job_id, worker_id, "the job no longer exists")
        status = row["status"]
        if worker_id is not None and row["lease_owner"] != worker_id:
            holder = row["lease_owner"]
            detail = f"the lease is now held by {holder!r}" if holder else "the lease was released"
            return LeaseLost(job_id, worker_id, f"{detail} and the job is {status}")
        if status in [s.value for s in allowed] and row["lease_owner"] is not None:
            expires = row["lease_expires_at"]
            return LeaseLost(
                job_id,
                worker_id,
                f"the lease is held by {row['lease_owner']!r} until "
                f"{expires.isoformat() if expires else '?'}; let that worker finish",
            )
        wanted = "/".join(s.value for s in allowed)
        return LeaseLost(job_id, worker_id, f"the job is {status}, not {wanted}")
