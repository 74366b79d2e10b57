"""Errors raised by the store. Each carries a stable ``code`` the REST API can return as is."""

from __future__ import annotations

__all__ = [
    "ApiKeyNotFound",
    "ArtifactNotFound",
    "DuplicateKeyName",
    "IdempotencyConflict",
    "InvalidArtifactName",
    "InvalidCursor",
    "JobNotFinished",
    "JobNotFound",
    "LeaseLost",
    "MigrationError",
    "StoreError",
]


class StoreError(Exception):
    """Base class of every store error; ``code`` is a stable machine-readable identifier."""

    code: str = "store_error"


class JobNotFound(StoreError):
    """No such job, or it belongs to another API key (the two are indistinguishable)."""

    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class ArtifactNotFound(StoreError):
    """The job exists but has no artifact of that name."""

    code = "artifact_not_found"

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(
            f"job {job_id!r} has no artifact {name!r}; list the job's artifacts to see which exist"
        )
        self.job_id = job_id
        self.name = name


class ApiKeyNotFound(StoreError):
    """No API key of that name."""

    code = "api_key_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no API key named {name!r}; list keys to see which exist")
        self.name = name


class DuplicateKeyName(StoreError):
    """An API key of that name exists already (revoked keys keep their name)."""

    code = "duplicate_key_name"

    def __init__(self, name: str) -> None:
        super().__init__(f"an API key named {name!r} exists already; choose another name")
        self.name = name


class LeaseLost(StoreError):
    """The caller no longer holds the job's lease: it expired and was taken over, or the job
    was cancelled, failed or moved on. The caller must stop working on the job and write
    nothing more for it."""

    code = "lease_lost"

    def __init__(self, job_id: str, worker_id: str | None, detail: str) -> None:
        who = f"worker {worker_id!r}" if worker_id else "caller"
        super().__init__(f"{who} lost the lease on job {job_id!r}: {detail}")
        self.job_id = job_id
        self.worker_id = worker_id
        self.detail = detail


class IdempotencyConflict(StoreError):
    """An ``Idempotency-Key`` was reused with a different request body."""

    code = "idempotency_conflict"

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for job {job_id!r} with a different "
            "request; use a new key for a new request"
        )
        self.key = key
        self.job_id = job_id


class JobNotFinished(StoreError):
    """The operation needs a terminal job (SUCCEEDED, CANCELLED or FAILED)."""

    code = "job_not_finished"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id!r} is {status}; only finished jobs (SUCCEEDED, CANCELLED, FAILED) can "
            "be deleted: cancel it first and wait until it is CANCELLED"
        )
        self.job_id = job_id
        self.status = status


class InvalidArtifactName(StoreError, ValueError):
    """An artifact name or path that could escape the artifact folder or is malformed."""

    code = "invalid_artifact_name"


class InvalidCursor(StoreError, ValueError):
    """A pagination cursor that this store did not issue."""

    code = "invalid_cursor"


class MigrationError(StoreError):
    """The database schema could not be brought to, or is not at, the expected revision."""

    code = "migration_error"
