"""Immutable records the store hands out: plain values, detached from any database session."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.engine import RowMapping

from service.store.models import JobStatus, utcnow

__all__ = [
    "ApiKeyRecord",
    "ArtifactRecord",
    "Claim",
    "ClaimKind",
    "JobRecord",
    "search_budget_spent",
]

ClaimKind = Literal["prepare", "finalize", "cancel"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as the store shows it: never the key itself nor its hash."""

    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        """True once the key has been revoked."""
        return self.revoked_at is not None

    @classmethod
    def from_row(cls, row: RowMapping) -> ApiKeyRecord:
        """Build from a ``rankopt_api_keys`` row."""
        return cls(
            id=row["id"],
            name=row["name"],
            prefix=row["prefix"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )

    def to_public(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": _iso(self.created_at),
            "revoked_at": _iso(self.revoked_at),
        }


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job row. Timestamps are timezone-aware UTC.

    ``attempts`` counts the claims of the current prepare or finalize phase; of those,
    ``phase_errors`` ended because the phase raised and ``lost_leases`` because the worker
    vanished (its lease expired with no error recorded).

    ``created`` is only meaningful on what :meth:`Store.create_job` returns: ``False`` when an
    idempotent replay returned the job an earlier request created.
    """

    id: str
    owner_id: int
    status: JobStatus
    spec: dict[str, Any]
    weights_path: str
    dataset_path: str | None
    study_name: str
    trials_total: int
    timeout_s: float | None
    trials_done: int
    trials_running: int
    best_compression: float | None
    best_accuracy: float | None
    baseline_accuracy: float | None
    eta_s: float | None
    search_started_at: datetime | None
    deadline_at: datetime | None
    last_served_at: datetime | None
    progress_at: datetime | None
    lease_owner: str | None
    lease_kind: str | None
    lease_expires_at: datetime | None
    attempts: int
    trial_failures: int
    phase_errors: int
    lost_leases: int
    error_code: str | None
    error_message: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    request_hash: str | None
    created: bool = field(default=False, compare=False)

    @classmethod
    def from_row(cls, row: RowMapping, *, created: bool = False) -> JobRecord:
        """Build from a ``rankopt_jobs`` row."""
        values: dict[str, Any] = {
            f.name: row[f.name] for f in fields(cls) if f.name not in ("created", "status")
        }
        return cls(status=JobStatus(row["status"]), created=created, **values)

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, CANCELLED and FAILED."""
        return self.status.terminal

    def budget_spent(self, now: datetime | None = None) -> bool:
        """See :func:`search_budget_spent`."""
        return search_budget_spent(self, now)

    def to_public(self) -> dict[str, Any]:
        """JSON-ready view for the job's owner (no lease or queue internals)."""
        error = None
        if self.status is JobStatus.FAILED:
            error = {"code": self.error_code, "message": self.error_message}
        return {
            "id": self.id,
            "status": self.status.value,
            "spec": self.spec,
            "study_name": self.study_name,
            "progress": {
                "trials_done": self.trials_done,
                "trials_running": self.trials_running,
                "trials_total": self.trials_total,
                "timeout_s": self.timeout_s,
                "best_compression": self.best_compression,
                "best_accuracy": self.best_accuracy,
                "baseline_accuracy": self.baseline_accuracy,
                "eta_s": self.eta_s,
                "search_started_at": _iso(self.search_started_at),
                "deadline_at": _iso(self.deadline_at),
            },
            "error": error,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
        }


def search_budget_spent(job: JobRecord, now: datetime | None = None) -> bool:
    """True when the job's search budget is used up: ``trials_done >= trials_total`` or the
    search deadline (``search_started_at + timeout_s``) has passed."""
    if job.trials_done >= job.trials_total:
        return True
    if job.deadline_at is None:
        return False
    return (now or utcnow()) >= job.deadline_at


@dataclass(frozen=True)
class ArtifactRecord:
    """A file a job produced; ``path`` is relative to the artifact root."""

    job_id: str
    name: str
    path: str
    sha256: str
    size: int
    content_type: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> ArtifactRecord:
        """Build from a ``rankopt_artifacts`` row."""
        return cls(
            job_id=row["job_id"],
            name=row["name"],
            path=row["path"],
            sha256=row["sha256"],
            size=row["size"],
            content_type=row["content_type"],
            created_at=row["created_at"],
        )

    def to_public(self) -> dict[str, Any]:
        """JSON-ready view (without the server-side path)."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "content_type": self.content_type,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class Claim:
    """Work handed to one worker by :meth:`Store.claim`.

    * ``prepare`` / ``finalize``: the worker holds the lease until ``lease_expires_at``; it must
      renew it with :meth:`Store.heartbeat` and end the phase with ``finish_prepare`` /
      ``finish_job`` / ``fail_job`` / ``release_lease`` / ``mark_cancelled``.
    * ``cancel``: the job was cancelled (it is already CANCELLED, no lease is held); the worker
      may clean up after it (delete its Optuna study). Nothing else is expected.
    """

    kind: ClaimKind
    job: JobRecord
    worker_id: str
    lease_expires_at: datetime | None
