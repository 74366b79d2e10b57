"""SQLAlchemy models of the job store. Every table is prefixed ``rankopt_`` so the schema can
share a database with Optuna's tables.

The schema itself is created by the Alembic migrations in ``migrations/versions``; keep the two
in step (``tests/service/test_migrations.py`` compares them).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ACTIVE_STATUSES",
    "TABLE_PREFIX",
    "TERMINAL_STATUSES",
    "ApiKey",
    "Artifact",
    "Base",
    "Idempotency",
    "Job",
    "JobStatus",
    "UTCDateTime",
    "utcnow",
]

TABLE_PREFIX = "rankopt_"


class JobStatus(str, enum.Enum):
    """Lifecycle state of a job (see DESIGN.md, "Job lifecycle")."""

    QUEUED = "QUEUED"
    PREPARING = "PREPARING"
    SEARCHING = "SEARCHING"
    FINALIZING = "FINALIZING"
    SUCCEEDED = "SUCCEEDED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, CANCELLED and FAILED: nothing will change the job any more."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.FAILED})
ACTIVE_STATUSES = frozenset(
    {JobStatus.QUEUED, JobStatus.PREPARING, JobStatus.SEARCHING, JobStatus.FINALIZING}
)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (UTC).

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive
    UTC text (which sorts chronologically) and get ``tzinfo=UTC`` back on read. Naive values
    handed in are refused: they are ambiguous.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(f"naive datetime {value!r} given; pass a timezone-aware datetime")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the store's tables (a metadata separate from Optuna's)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_STATUS_LIST = ", ".join(f"'{s.value}'" for s in JobStatus)


class ApiKey(Base):
    """An API key. Only the SHA-256 of the key is stored; ``prefix`` helps a user recognise it."""

    __tablename__ = "rankopt_api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Job(Base):
    """One compression job and its queue state (status, lease, progress, result)."""

    __tablename__ = "rankopt_jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_LIST})", name="status"),
        Index("ix_rankopt_jobs_status", "status"),
        Index("ix_rankopt_jobs_owner_id_created_at", "owner_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("rankopt_api_keys.id"))
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights_path: Mapped[str] = mapped_column(Text)
    dataset_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    study_name: Mapped[str] = mapped_column(String(64))
    trials_total: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    trials_done: Mapped[int] = mapped_column(Integer, default=0)
    trials_running: Mapped[int] = mapped_column(Integer, default=0)
    best_compression: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    search_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_served_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    trial_failures: Mapped[int] = mapped_column(Integer, default=0)
    phase_errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lost_leases: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Artifact(Base):
    """A file a job produced, stored under the artifact root at ``path`` (relative)."""

    __tablename__ = "rankopt_artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("rankopt_jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Idempotency(Base):
    """An ``Idempotency-Key`` an owner used, the hash of the request and the job it created."""

    __tablename__ = "rankopt_idempotency"
    __table_args__ = (UniqueConstraint("owner_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("rankopt_api_keys.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("rankopt_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
