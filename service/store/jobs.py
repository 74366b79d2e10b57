"""The job store: API keys, the job queue with leases, search scheduling, artifacts.

One :class:`Store` wraps one SQLAlchemy engine and is safe to share between threads; every
method is one short transaction. Several processes (the API and any number of workers, on any
number of machines for PostgreSQL) may use the same database at once.

Concurrency model:

* **Claims** (:meth:`Store.claim`, :meth:`Store.claim_finalize`) hand a job phase to exactly one
  worker. On PostgreSQL the candidate row is selected ``FOR UPDATE SKIP LOCKED``; on SQLite the
  transaction starts with ``BEGIN IMMEDIATE`` (see :mod:`service.store.engine`), which
  serialises all writers, and SKIP LOCKED is not relied on there. In both cases the state change
  is a conditional ``UPDATE`` that repeats the selection condition.
* **Leases**: a claimed prepare or finalize phase belongs to ``lease_owner`` until
  ``lease_expires_at``; the holder renews it with :meth:`Store.heartbeat`. Every write that
  belongs to a leased phase checks the owner in the same statement and raises
  :class:`LeaseLost` when another worker took the job over, so a stale worker cannot write
  results.
* **Search** needs no lease: any number of workers run trials of a SEARCHING job;
  :meth:`Store.next_search_job` spreads them over jobs round-robin.

State transitions (anything else is refused):

=========================  ==============================================================
QUEUED → PREPARING          :meth:`claim` (kind ``prepare``)
PREPARING → PREPARING       :meth:`claim` takes over a dead lease (``attempts`` + 1)
PREPARING → SEARCHING       :meth:`finish_prepare` (lease holder)
SEARCHING → FINALIZING      :meth:`claim_finalize`, or :meth:`claim` once the budget is spent
FINALIZING → FINALIZING     :meth:`claim` takes over a dead lease (``attempts`` + 1)
FINALIZING → SUCCEEDED      :meth:`finish_job` (lease holder)
QUEUED → CANCELLED          :meth:`request_cancel`
PREPARING/SEARCHING/
FINALIZING → CANCELLING     :meth:`request_cancel`
CANCELLING → CANCELLED      :meth:`mark_cancelled` (lease holder, or anyone once no live
                            lease), or :meth:`claim` (kind ``cancel``) once no live lease
non-terminal → FAILED       :meth:`fail_job`; :meth:`claim` after ``max_attempts`` dead leases
                            of one phase; :meth:`record_trial_failure` past its limit
=========================  ==============================================================
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from service.store.engine import make_engine, read_only
from service.store.exceptions import (
    ApiKeyNotFound,
    ArtifactNotFound,
    DuplicateKeyName,
    IdempotencyConflict,
    InvalidArtifactName,
    InvalidCursor,
    JobNotFinished,
    JobNotFound,
    LeaseLost,
    StoreError,
)
from service.store.migrate import check_schema, upgrade
from service.store.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ApiKey,
    Artifact,
    Idempotency,
    Job,
    JobStatus,
    utcnow,
)
from service.store.records import ApiKeyRecord, ArtifactRecord, Claim, ClaimKind, JobRecord

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

API_KEY_PREFIX = "rk_"
ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_MESSAGE = 4000
_MAX_LIST_LIMIT = 200

_jobs = cast(Table, Job.__table__)
_keys = cast(Table, ApiKey.__table__)
_artifacts = cast(Table, Artifact.__table__)
_idem = cast(Table, Idempotency.__table__)

_LEASED = (JobStatus.PREPARING, JobStatus.FINALIZING, JobStatus.CANCELLING)
_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_kind": None, "lease_expires_at": None}


def hash_api_key(plaintext: str) -> str:
    """SHA-256 hex digest of an API key (what the database stores)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def request_hash_of(payload: Any) -> str:
    """SHA-256 of the canonical JSON of ``payload``; the API should include uploaded files'
    digests so that an idempotent replay with different files is detected."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validate_artifact_name(name: str) -> str:
    """Return ``name`` if it is a safe artifact name, else raise :class:`InvalidArtifactName`.

    A name is 1-128 characters of letters, digits, ``.``, ``_``, ``-``, starting with a letter
    or digit, and never contains ``..``.
    """
    if not isinstance(name, str) or not ARTIFACT_NAME_RE.match(name) or ".." in name:
        raise InvalidArtifactName(
            f"invalid artifact name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return name


def validate_artifact_path(path: str) -> str:
    """Return ``path`` if it is a relative POSIX path inside the artifact root, else raise
    :class:`InvalidArtifactName`."""
    parts = path.split("/") if isinstance(path, str) else []
    if (
        not parts
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or ":" in parts[0]
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise InvalidArtifactName(
            f"invalid artifact path {path!r}: it must be relative to the artifact root, "
            "'/'-separated, without '.', '..' or empty parts"
        )
    return path


def _now_plus(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


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
        if moment.tzinfo is None or not _JOB_ID_RE.match(job_id):
            raise ValueError("malformed")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursor(
            f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page unchanged"
        ) from exc
    return moment, job_id


class Store:
    """The persistent job store (see the module docstring for the concurrency model).

    Args:
        engine: from :func:`service.store.engine.make_engine`; the schema must exist
            (:func:`service.store.migrate.upgrade`, or :meth:`Store.open`).
        lease_s: default lease length of claims and heartbeats.
        max_attempts: claims of one phase (prepare or finalize) after which a job whose lease
            died again is failed instead of handed out once more.
        stale_progress_s: a SEARCHING job whose budget is spent but which still reports running
            trials is finalised anyway when its progress was not updated for this long (the
            workers running those trials are presumed dead).
        clock: returns the current time (timezone-aware); tests inject a fake one.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        lease_s: float = 60.0,
        max_attempts: int = 3,
        stale_progress_s: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if lease_s <= 0 or max_attempts < 1 or stale_progress_s <= 0:
            raise ValueError(
                "lease_s and stale_progress_s must be positive and max_attempts at least 1, got "
                f"lease_s={lease_s}, max_attempts={max_attempts}, "
                f"stale_progress_s={stale_progress_s}"
            )
        self._engine = engine
        self._read_engine = read_only(engine)
        self._postgres = engine.dialect.name == "postgresql"
        self.lease_s = float(lease_s)
        self.max_attempts = int(max_attempts)
        self.stale_progress_s = float(stale_progress_s)
        self._clock = clock

    # ------------------------------------------------------------------ construction
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
        """:meth:`open` with the database URL, pool sizes and lease length of ``settings``."""
        kwargs.setdefault("lease_s", settings.lease_seconds)
        kwargs.setdefault("stale_progress_s", max(300.0, 4 * settings.trial_heartbeat_seconds))
        kwargs.setdefault("engine_options", settings.engine_options)
        return cls.open(settings.database_url, migrate=migrate, **kwargs)

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

    # ------------------------------------------------------------------ API keys
    def create_api_key(self, name: str) -> tuple[str, ApiKeyRecord]:
        """Create an API key called ``name``; return the plaintext key (shown once, never
        stored: only its SHA-256 is) and its record.

        Raises:
            ValueError: ``name`` is not 1-64 letters, digits, ``.``, ``_``, ``@``, ``-``.
            DuplicateKeyName: a key of that name exists (revoked keys keep their names).
        """
        if not isinstance(name, str) or not _KEY_NAME_RE.match(name):
            raise ValueError(
                f"invalid API key name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit"
            )
        plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        values = {
            "name": name,
            "key_hash": hash_api_key(plaintext),
            "prefix": plaintext[:8],
            "created_at": now,
            "revoked_at": None,
        }
        try:
            with self._write() as conn:
                exists = conn.execute(select(_keys.c.id).where(_keys.c.name == name)).first()
                if exists is not None:
                    raise DuplicateKeyName(name)
                key_id = conn.execute(
                    insert(_keys).values(values).returning(_keys.c.id)
                ).scalar_one()
        except IntegrityError as exc:  # a concurrent create of the same name
            raise DuplicateKeyName(name) from exc
        logger.info("created API key %r (id %d, prefix %s)", name, key_id, values["prefix"])
        return plaintext, ApiKeyRecord(
            id=key_id, name=name, prefix=plaintext[:8], created_at=now, revoked_at=None
        )

    def authenticate(self, plaintext: str) -> ApiKeyRecord | None:
        """The record of an active key, or ``None`` for an unknown, malformed or revoked key."""
        if (
            not isinstance(plaintext, str)
            or not plaintext.startswith(API_KEY_PREFIX)
            or len(plaintext) > 256
        ):
            return None
        digest = hash_api_key(plaintext)
        with self._read() as conn:
            row = conn.execute(select(_keys).where(_keys.c.key_hash == digest)).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        if row["revoked_at"] is not None:
            return None
        return ApiKeyRecord.from_row(row)

    def revoke_api_key(self, name: str) -> ApiKeyRecord:
        """Revoke the key called ``name`` (idempotent); its jobs stay.

        Raises:
            ApiKeyNotFound: no key has that name.
        """
        with self._write() as conn:
            conn.execute(
                update(_keys)
                .where(_keys.c.name == name, _keys.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = conn.execute(select(_keys).where(_keys.c.name == name)).mappings().first()
        if row is None:
            raise ApiKeyNotFound(name)
        logger.info("revoked API key %r", name)
        return ApiKeyRecord.from_row(row)

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(_keys).order_by(_keys.c.id)).mappings().all()
        return [ApiKeyRecord.from_row(row) for row in rows]

    # ------------------------------------------------------------------ jobs
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
        if job_id is not None and (not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id)):
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

    @staticmethod
    def _job_row(conn: Connection, job_id: str) -> RowMapping | None:
        return conn.execute(select(_jobs).where(_jobs.c.id == job_id)).mappings().first()

    def get_job(self, job_id: str, owner_id: int) -> JobRecord:
        """The job ``job_id`` if ``owner_id`` owns it.

        Raises:
            JobNotFound: no such job, or another owner's (indistinguishable on purpose).
        """
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            raise JobNotFound(str(job_id))
        with self._read() as conn:
            row = (
                conn.execute(
                    select(_jobs).where(_jobs.c.id == job_id, _jobs.c.owner_id == owner_id)
                )
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

    # ------------------------------------------------------------------ claims and leases
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

        A lease is dead when it expired or was released. A job whose dead lease was already
        claimed ``max_attempts`` times in the current phase is failed
        (``prepare_failed`` / ``finalize_failed``, with the last recorded error) and the search
        goes on. Exactly one of any number of concurrent callers gets a given job.
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
            expires = _now_plus(now, lease)
            lease_values = {
                "lease_owner": worker_id,
                "lease_expires_at": expires,
                "updated_at": now,
            }
            values: dict[str, Any]
            claim_kind: ClaimKind
            if kind == "cancel":
                values = {
                    "status": JobStatus.CANCELLED.value,
                    "finished_at": now,
                    "updated_at": now,
                    "trials_running": 0,
                    "eta_s": None,
                    **_NO_LEASE,
                }
                claim_kind, expires_at = "cancel", None
            elif kind in ("finalize", "prepare"):
                phase = kind
                if row["attempts"] >= self.max_attempts:
                    self._give_up(conn, row, phase, guard, now)
                    return True
                values = {**lease_values, "lease_kind": phase, "attempts": j.attempts + 1}
                claim_kind, expires_at = cast(ClaimKind, phase), expires
            elif kind == "start-finalize":
                values = {
                    **lease_values,
                    "status": JobStatus.FINALIZING.value,
                    "lease_kind": "finalize",
                    "attempts": 1,
                    "eta_s": None,
                }
                claim_kind, expires_at = "finalize", expires
            else:
                values = {
                    **lease_values,
                    "status": JobStatus.PREPARING.value,
                    "lease_kind": "prepare",
                    "attempts": 1,
                }
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

    def _give_up(
        self,
        conn: Connection,
        row: RowMapping,
        phase: str,
        guard: ColumnElement[bool],
        now: datetime,
    ) -> None:
        last = row["error_message"] or (
            "the worker stopped renewing its lease (it crashed, was killed, or stalled)"
        )
        message = _clip(f"{phase} failed {row['attempts']} times; last error: {last}")
        conn.execute(
            update(_jobs)
            .where(guard)
            .values(
                status=JobStatus.FAILED.value,
                error_code=f"{phase}_failed",
                error_message=message,
                finished_at=now,
                updated_at=now,
                trials_running=0,
                eta_s=None,
                **_NO_LEASE,
            )
        )
        logger.warning("job %s failed: %s", row["id"], message)

    def claim_finalize(
        self, job_id: str, worker_id: str, lease_s: float | None = None
    ) -> Claim | None:
        """Move a SEARCHING job to FINALIZING under a lease for ``worker_id``.

        Called by a search worker that saw the budget run out. Returns ``None`` when the job is
        no longer SEARCHING (another worker got there first, or it was cancelled or failed).
        """
        lease = self.lease_s if lease_s is None else float(lease_s)
        now = self._clock()
        expires = _now_plus(now, lease)
        with self._write() as conn:
            row = (
                conn.execute(
                    update(_jobs)
                    .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.SEARCHING.value)
                    .values(
                        status=JobStatus.FINALIZING.value,
                        lease_owner=worker_id,
                        lease_kind="finalize",
                        lease_expires_at=expires,
                        attempts=1,
                        eta_s=None,
                        updated_at=now,
                    )
                    .returning(*_jobs.c)
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        logger.info("worker %s claimed job %s (finalize)", worker_id, job_id)
        return Claim(
            kind="finalize",
            job=JobRecord.from_row(row),
            worker_id=worker_id,
            lease_expires_at=expires,
        )

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
            _LEASED,
            lambda row, now: {"lease_expires_at": _now_plus(now, lease)},
        )
        return record.status is JobStatus.CANCELLING

    def release_lease(self, job_id: str, worker_id: str, error_message: str | None = None) -> None:
        """Give the lease back without finishing the phase (e.g. after a transient error).

        The job becomes claimable again at once; ``error_message`` is kept as the last error,
        which the eventual ``max_attempts`` failure message quotes.

        Raises:
            LeaseLost: the lease is not ``worker_id``'s.
        """
        self._leased_write(
            job_id,
            worker_id,
            _LEASED,
            lambda row, now: {
                **_NO_LEASE,
                "error_message": _clip(error_message) if error_message else row["error_message"],
            },
        )
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
            return {
                **_NO_LEASE,
                "status": JobStatus.SEARCHING.value,
                "baseline_accuracy": baseline_accuracy,
                "search_started_at": now,
                "deadline_at": _now_plus(now, timeout) if timeout is not None else None,
                "last_served_at": None,
                "progress_at": now,
                "trials_done": trials_done,
                "trials_running": 0,
                "attempts": 0,
                "error_code": None,
                "error_message": None,
            }

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
            lambda row, now: {
                **_NO_LEASE,
                "status": JobStatus.SUCCEEDED.value,
                "result": result_dict,
                "finished_at": now,
                "trials_running": 0,
                "eta_s": 0.0,
                "error_code": None,
                "error_message": None,
            },
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
        values = {
            **_NO_LEASE,
            "status": JobStatus.FAILED.value,
            "error_code": code,
            "error_message": _clip(message),
            "trials_running": 0,
            "eta_s": None,
        }
        if worker_id is not None:
            allowed: tuple[JobStatus, ...] = _LEASED
        else:
            allowed = tuple(s for s in JobStatus if not s.terminal)
        try:
            record = self._leased_write(
                job_id, worker_id, allowed, lambda row, now: {**values, "finished_at": now}
            )
        except LeaseLost:
            if worker_id is None:
                current = self.load_job(job_id)  # JobNotFound when it was deleted
                logger.info("fail_job on %s job %s ignored", current.status, job_id)
                return current
            raise
        logger.warning("job %s failed (%s): %s", job_id, code, values["error_message"])
        return record

    # ------------------------------------------------------------------ search phase
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
                summary = _clip(
                    f"{failures} trials failed (the limit is {max_failures}); last error: {message}"
                )
                row = (
                    conn.execute(
                        update(_jobs)
                        .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.SEARCHING.value)
                        .values(
                            status=JobStatus.FAILED.value,
                            error_code="trials_failed",
                            error_message=summary,
                            finished_at=now,
                            trials_running=0,
                            eta_s=None,
                            **_NO_LEASE,
                        )
                        .returning(*_jobs.c)
                    )
                    .mappings()
                    .one()
                )
                logger.warning("job %s failed: %s", job_id, summary)
        return JobRecord.from_row(row)

    # ------------------------------------------------------------------ cancellation
    def request_cancel(self, job_id: str, owner_id: int) -> JobRecord:
        """Ask to cancel the owner's job; idempotent.

        QUEUED → CANCELLED at once; PREPARING, SEARCHING, FINALIZING → CANCELLING (the
        workers stop and the job becomes CANCELLED); CANCELLING and terminal jobs are returned
        unchanged.

        Raises:
            JobNotFound: no such job, or another owner's.
        """
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
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
                values = {
                    "status": JobStatus.CANCELLED.value,
                    "finished_at": now,
                    "updated_at": now,
                    **_NO_LEASE,
                }
            elif status in ACTIVE_STATUSES:
                values = {"status": JobStatus.CANCELLING.value, "updated_at": now}
            if values is None:
                return JobRecord.from_row(row)
            updated = (
                conn.execute(
                    update(_jobs)
                    .where(_jobs.c.id == job_id, _jobs.c.status == status.value)
                    .values(values)
                    .returning(*_jobs.c)
                )
                .mappings()
                .first()
            )
            if updated is None:  # changed under us (SQLite never; PostgreSQL holds the lock)
                updated = self._job_row(conn, job_id)
                assert updated is not None
        logger.info("cancel requested for job %s: %s → %s", job_id, status, updated["status"])
        return JobRecord.from_row(updated)

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
                lambda row, now: {
                    **_NO_LEASE,
                    "status": JobStatus.CANCELLED.value,
                    "finished_at": now,
                    "trials_running": 0,
                    "eta_s": None,
                },
                extra=extra,
            )
        except LeaseLost:
            current = self.load_job(job_id)
            if current.status is JobStatus.CANCELLED:
                return current
            raise
        logger.info("job %s cancelled", job_id)
        return record

    # ------------------------------------------------------------------ deletion
    def delete_job(self, job_id: str, owner_id: int) -> list[str]:
        """Delete a finished job with its artifact and idempotency rows; return the artifact
        paths (relative to the artifact root) for the caller to remove. The job's uploads
        (``weights_path``, ``dataset_path``) are the caller's too: read them first.

        Raises:
            JobNotFound: no such job, or another owner's.
            JobNotFinished: the job is not SUCCEEDED, CANCELLED or FAILED.
        """
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
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

    # ------------------------------------------------------------------ artifacts
    def add_artifact(
        self,
        job_id: str,
        name: str,
        path: str,
        sha256: str,
        size: int,
        content_type: str = "application/octet-stream",
        *,
        worker_id: str | None = None,
    ) -> ArtifactRecord:
        """Record (or replace) the job's artifact ``name`` stored at ``path`` (relative to the
        artifact root). With ``worker_id`` the caller must hold the job's lease.

        Raises:
            InvalidArtifactName: a bad name or a path that could leave the artifact root.
            ValueError: ``sha256`` is not 64 lowercase hex digits or ``size`` is negative.
            JobNotFound: no such job.
            LeaseLost: ``worker_id`` was given and does not hold the lease.
        """
        validate_artifact_name(name)
        validate_artifact_path(path)
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if size < 0:
            raise ValueError(f"artifact size must be >= 0, got {size}")
        with self._write() as conn:
            now = self._clock()
            job = self._job_row(conn, job_id)
            if job is None:
                raise JobNotFound(job_id)
            if worker_id is not None and (
                job["lease_owner"] != worker_id or job["status"] not in [s.value for s in _LEASED]
            ):
                raise self._lease_lost(conn, job_id, worker_id, _LEASED)
            conn.execute(
                delete(_artifacts).where(_artifacts.c.job_id == job_id, _artifacts.c.name == name)
            )
            values: dict[str, Any] = {
                "job_id": job_id,
                "name": name,
                "path": path,
                "sha256": sha256,
                "size": size,
                "content_type": content_type,
                "created_at": now,
            }
            conn.execute(insert(_artifacts).values(values))
        return ArtifactRecord(**values)

    def list_artifacts(self, job_id: str, owner_id: int | None = None) -> list[ArtifactRecord]:
        """The job's artifacts by name; with ``owner_id`` only if that owner owns the job.

        Raises:
            JobNotFound: ``owner_id`` was given and does not own the job (or there is none).
        """
        if owner_id is not None:
            self.get_job(job_id, owner_id)
        with self._read() as conn:
            rows = (
                conn.execute(
                    select(_artifacts)
                    .where(_artifacts.c.job_id == job_id)
                    .order_by(_artifacts.c.name)
                )
                .mappings()
                .all()
            )
        return [ArtifactRecord.from_row(row) for row in rows]

    def get_artifact(self, job_id: str, owner_id: int, name: str) -> ArtifactRecord:
        """The owner's job's artifact ``name``.

        Raises:
            InvalidArtifactName: a malformed name.
            JobNotFound: no such job, or another owner's.
            ArtifactNotFound: the job has no artifact of that name.
        """
        validate_artifact_name(name)
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            raise JobNotFound(str(job_id))
        with self._read() as conn:
            row = (
                conn.execute(
                    select(_artifacts)
                    .join(_jobs, _jobs.c.id == _artifacts.c.job_id)
                    .where(
                        _jobs.c.id == job_id,
                        _jobs.c.owner_id == owner_id,
                        _artifacts.c.name == name,
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                owned = conn.execute(
                    select(_jobs.c.id).where(_jobs.c.id == job_id, _jobs.c.owner_id == owner_id)
                ).first()
        if row is None:
            if owned is None:
                raise JobNotFound(job_id)
            raise ArtifactNotFound(job_id, name)
        return ArtifactRecord.from_row(row)

    # ------------------------------------------------------------------ health and metrics
    def count_jobs_by_status(self) -> dict[str, int]:
        """Number of jobs in every status (zeros included), for ``/metrics``."""
        counts = {status.value: 0 for status in JobStatus}
        with self._read() as conn:
            rows = conn.execute(select(_jobs.c.status, func.count()).group_by(_jobs.c.status))
            for status, count in rows:
                counts[str(status)] = int(count)
        return counts

    def count_trials_done(self) -> int:
        """Finished trials summed over every job (``trials_done``), for ``/metrics``."""
        with self._read() as conn:
            total = conn.execute(select(func.coalesce(func.sum(_jobs.c.trials_done), 0))).scalar()
        return int(total or 0)

    def ping(self) -> bool:
        """True when the database answers (for ``/readyz``); never raises."""
        try:
            with self._read() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            logger.warning("store ping failed: %s", exc)
            return False
        return True
