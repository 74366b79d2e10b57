"""The job store: API keys, the job queue with leases, search scheduling, artifacts.

One :class:`Store` wraps one SQLAlchemy engine and is safe to share between threads; every
method is one short transaction. Several processes (the API and any number of workers, on any
number of machines for PostgreSQL) may use the same database at once.

:class:`Store` is a facade over one module per aggregate:

* :mod:`service.store.keys`: API keys;
* this module: creating, reading, listing, cancelling and deleting jobs;
* :mod:`service.store.queue`: claims of the single-worker phases, the lease-loss policy and
  the concurrency model and state transitions (documented there);
* :mod:`service.store.leases`: the lease holder's writes;
* :mod:`service.store.search`: the shared search phase;
* :mod:`service.store.artifact_rows`: artifacts;
* :mod:`service.store.metrics`: counts and the readiness ping;
* :mod:`service.store._base`: the engine, transactions and the state machine's
  :func:`~service.store._base.transition`.

Optuna's own tables are read and written only in :mod:`service.store.optuna_tables`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from service.store._base import (
    JOB_ID_RE,
    StoreBase,
    artifacts_table,
    idempotency_table,
    jobs_table,
    transition,
)
from service.store.artifact_rows import (
    ARTIFACT_NAME_RE,
    ArtifactStore,
    validate_artifact_name,
    validate_artifact_path,
)
from service.store.engine import make_engine
from service.store.exceptions import (
    IdempotencyConflict,
    InvalidCursor,
    JobNotFinished,
    JobNotFound,
    StoreError,
)
from service.store.keys import API_KEY_PREFIX, KeyStore, hash_api_key
from service.store.leases import LeaseStore
from service.store.metrics import MetricsStore
from service.store.migrate import check_schema, upgrade
from service.store.models import ACTIVE_STATUSES, TERMINAL_STATUSES, JobStatus
from service.store.queue import QueueStore
from service.store.records import JobRecord
from service.store.search import SearchStore

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = [
    "API_KEY_PREFIX",
    "ARTIFACT_NAME_RE",
    "Store",
    "hash_api_key",
    "request_hash_of",
    "validate_artifact_name",
    "validate_artifact_path",
]

logger = logging.getLogger(__name__)

_MAX_LIST_LIMIT = 200

_jobs = jobs_table
_artifacts = artifacts_table
_idem = idempotency_table


def request_hash_of(payload: Any) -> str:
    """SHA-256 of the canonical JSON of ``payload``; the API should include uploaded files'
    digests so that an idempotent replay with different files is detected."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _status_value(status: JobStatus | str) -> str:
    try:
        return JobStatus(status).value
    except ValueError:
        raise ValueError(
            f"unknown job status {status!r}; expected one of {[s.value for s in JobStatus]}"
        ) from None


def _encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None or not JOB_ID_RE.match(job_id):
            raise ValueError("malformed")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursor(
            f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page unchanged"
        ) from exc
    return moment, job_id


class JobStore(StoreBase):
    """Create, read, list, cancel and delete jobs."""

    def create_job(
        self,
        owner_id: int,
        spec: Mapping[str, Any],
        weights_path: str,
        dataset_path: str | None = None,
        *,
        trials_total: int,
        timeout_s: float | None = None,
        request_hash: str | None = None,
        idempotency_key: str | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Queue a new job (status QUEUED, study ``job-<id>``).

        ``job_id`` (32 lowercase hex digits) lets the caller choose the id up front, e.g. to
        store uploads under the job's folder before the row exists; by default a random one is
        drawn.

        With ``idempotency_key``: the first request with that key (per owner) creates the job;
        a repeat with the same ``request_hash`` returns that job with ``created=False`` (the
        caller should then discard the files it uploaded for the repeat); a repeat with another
        hash raises :class:`IdempotencyConflict`. Without ``request_hash`` the hash of
        ``spec``, ``trials_total`` and ``timeout_s`` is used. Safe under concurrent repeats.

        Raises:
            ValueError: ``trials_total < 1``, ``timeout_s <= 0``, a spec that is not JSON, an
                empty or over-long idempotency key, or a malformed ``job_id``.
            IdempotencyConflict: the key was used with a different request.
        """
        if isinstance(trials_total, bool) or not isinstance(trials_total, int) or trials_total < 1:
            raise ValueError(f"trials_total must be an integer >= 1, got {trials_total!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s!r}")
        if job_id is not None and (not isinstance(job_id, str) or not JOB_ID_RE.match(job_id)):
            raise ValueError(f"job_id must be 32 lowercase hex digits, got {job_id!r}")
        chosen_id = job_id
        try:
            spec_dict: dict[str, Any] = json.loads(json.dumps(dict(spec), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job spec is not JSON-serialisable: {exc}") from exc
        if idempotency_key is not None:
            if not idempotency_key or len(idempotency_key) > 255:
                raise ValueError("an idempotency key must be 1-255 characters")
            if request_hash is None:
                request_hash = request_hash_of(
                    {"spec": spec_dict, "trials_total": trials_total, "timeout_s": timeout_s}
                )

        for attempt in range(3):
            job_id = chosen_id or uuid.uuid4().hex
            now = self._clock()
            row_values = {
                "id": job_id,
                "owner_id": owner_id,
                "status": JobStatus.QUEUED.value,
                "spec": spec_dict,
                "weights_path": weights_path,
                "dataset_path": dataset_path,
                "study_name": f"job-{job_id}",
                "trials_total": trials_total,
                "timeout_s": timeout_s,
                "trials_done": 0,
                "trials_running": 0,
                "attempts": 0,
                "trial_failures": 0,
                "created_at": now,
                "updated_at": now,
                "request_hash": request_hash,
            }
            try:
                with self._write() as conn:
                    if idempotency_key is not None:
                        assert request_hash is not None
                        previous = conn.execute(
                            select(_idem.c.request_hash, _idem.c.job_id).where(
                                _idem.c.owner_id == owner_id, _idem.c.key == idempotency_key
                            )
                        ).first()
                        if previous is not None:
                            if not hmac.compare_digest(previous.request_hash, request_hash):
                                raise IdempotencyConflict(idempotency_key, previous.job_id)
                            row = self._job_row(conn, previous.job_id)
                            if row is not None:
                                return JobRecord.from_row(row, created=False)
                    conn.execute(insert(_jobs).values(row_values))
                    if idempotency_key is not None:
                        conn.execute(
                            insert(_idem).values(
                                owner_id=owner_id,
                                key=idempotency_key,
                                request_hash=request_hash,
                                job_id=job_id,
                                created_at=now,
                            )
                        )
                    row = self._job_row(conn, job_id)
                    assert row is not None
            except IntegrityError as exc:
                # Another request inserted the same idempotency key first: look again.
                if idempotency_key is not None and attempt < 2:
                    logger.debug("idempotency key race for owner %s, retrying", owner_id)
                    continue
                raise StoreError(
                    f"cannot create a job for owner {owner_id}: {exc.orig}; is the owner an "
                    "existing API key?"
                ) from exc
            logger.info("queued job %s for owner %s (%d trials)", job_id, owner_id, trials_total)
            return JobRecord.from_row(row, created=True)
        raise StoreError("could not create the job after 3 attempts; retry the request")

    def list_jobs(
        self,
        owner_id: int,
        status: JobStatus | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """A page of the owner's jobs, newest first, and the cursor of the next page (``None``
        on the last page). The cursor is opaque; it encodes (created_at, id) of the last job.

        Raises:
            ValueError: ``limit`` outside 1-200 or an unknown status.
            InvalidCursor: a cursor this store did not issue.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
            raise ValueError(f"limit must be an integer in 1..{_MAX_LIST_LIMIT}, got {limit!r}")
        stmt = select(_jobs).where(_jobs.c.owner_id == owner_id)
        if status is not None:
            stmt = stmt.where(_jobs.c.status == _status_value(status))
        if cursor is not None:
            created_at, last_id = _decode_cursor(cursor)
            stmt = stmt.where(
                or_(
                    _jobs.c.created_at < created_at,
                    and_(_jobs.c.created_at == created_at, _jobs.c.id < last_id),
                )
            )
        stmt = stmt.order_by(_jobs.c.created_at.desc(), _jobs.c.id.desc()).limit(limit + 1)
        with self._read() as conn:
            rows = conn.execute(stmt).mappings().all()
        jobs = [JobRecord.from_row(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _encode_cursor(jobs[-1].created_at, jobs[-1].id)
        return jobs, next_cursor

    def request_cancel(self, job_id: str, owner_id: int) -> JobRecord:
        """Ask to cancel the owner's job; idempotent.

        QUEUED → CANCELLED at once; PREPARING, SEARCHING, FINALIZING → CANCELLING (the
        workers stop and the job becomes CANCELLED); CANCELLING and terminal jobs are returned
        unchanged.

        Raises:
            JobNotFound: no such job, or another owner's.
        """
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise JobNotFound(str(job_id))
        with self._write() as conn:
            now = self._clock()
            row = (
                conn.execute(
                    self._for_update(
                        select(_jobs).where(_jobs.c.id == job_id, _jobs.c.owner_id == owner_id)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise JobNotFound(job_id)
            status = JobStatus(row["status"])
            values: dict[str, Any] | None = None
            if status is JobStatus.QUEUED:
                values = transition(JobStatus.CANCELLED, now)
            elif status in ACTIVE_STATUSES:
                values = transition(JobStatus.CANCELLING, now)
            if values is None:
                return JobRecord.from_row(row)
            updated = self._update_if(conn, job_id, status, values)
            if updated is None:  # changed under us (SQLite never; PostgreSQL holds the lock)
                updated = self._job_row(conn, job_id)
                assert updated is not None
        logger.info("cancel requested for job %s: %s → %s", job_id, status, updated["status"])
        return JobRecord.from_row(updated)

    def delete_job(self, job_id: str, owner_id: int) -> list[str]:
        """Delete a finished job with its artifact and idempotency rows; return the artifact
        paths (relative to the artifact root) for the caller to remove. The job's uploads
        (``weights_path``, ``dataset_path``) are the caller's too: read them first.

        Raises:
            JobNotFound: no such job, or another owner's.
            JobNotFinished: the job is not SUCCEEDED, CANCELLED or FAILED.
        """
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise JobNotFound(str(job_id))
        with self._write() as conn:
            row = (
                conn.execute(
                    self._for_update(
                        select(_jobs.c.status).where(
                            _jobs.c.id == job_id, _jobs.c.owner_id == owner_id
                        )
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise JobNotFound(job_id)
            if JobStatus(row["status"]) not in TERMINAL_STATUSES:
                raise JobNotFinished(job_id, row["status"])
            paths = list(
                conn.execute(
                    select(_artifacts.c.path)
                    .where(_artifacts.c.job_id == job_id)
                    .order_by(_artifacts.c.name)
                ).scalars()
            )
            conn.execute(delete(_artifacts).where(_artifacts.c.job_id == job_id))
            conn.execute(delete(_idem).where(_idem.c.job_id == job_id))
            conn.execute(delete(_jobs).where(_jobs.c.id == job_id))
        logger.info("deleted job %s (%d artifacts)", job_id, len(paths))
        return paths


class Store(KeyStore, JobStore, QueueStore, LeaseStore, SearchStore, ArtifactStore, MetricsStore):
    """The persistent job store (see the module docstring, and :mod:`service.store.queue` for
    the concurrency model).

    Args:
        engine: from :func:`service.store.engine.make_engine`; the schema must exist
            (:func:`service.store.migrate.upgrade`, or :meth:`Store.open`).
        lease_s: default lease length of claims and heartbeats.
        max_attempts: times one phase (prepare or finalize) may raise before the job is failed
            (``RANKOPT_MAX_PHASE_ATTEMPTS``).
        max_lost_leases: times the worker of one phase may vanish (its lease expired with no
            error recorded) before the job is failed (``RANKOPT_MAX_LOST_LEASES``).
        stale_progress_s: a SEARCHING job whose budget is spent but which still reports running
            trials is finalised anyway when its progress was not updated for this long (the
            workers running those trials are presumed dead).
        clock: returns the current time (timezone-aware); tests inject a fake one.
    """

    @classmethod
    def open(
        cls,
        database_url: str,
        *,
        migrate: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Store:
        """Create an engine for ``database_url``, migrate (or check) the schema, return a store.

        ``engine_options`` go to :func:`service.store.engine.make_engine` (pool sizes); the
        other keyword arguments to the constructor.

        Raises:
            MigrationError: ``migrate=False`` and the schema is not at the newest revision, or
                the migration failed.
        """
        engine = make_engine(database_url, **dict(engine_options or {}))
        try:
            if migrate:
                upgrade(engine)
            else:
                check_schema(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True, **kwargs: Any) -> Store:
        """:meth:`open` with the database URL, pool sizes, lease length and lease-loss limits
        of ``settings``."""
        kwargs.setdefault("lease_s", settings.lease_seconds)
        kwargs.setdefault("max_attempts", settings.max_phase_attempts)
        kwargs.setdefault("max_lost_leases", settings.max_lost_leases)
        kwargs.setdefault("stale_progress_s", max(300.0, 4 * settings.trial_heartbeat_seconds))
        kwargs.setdefault("engine_options", settings.engine_options)
        return cls.open(settings.database_url, migrate=migrate, **kwargs)
