"""The persistent store of the REST service and the worker pool (SQLAlchemy 2 + Alembic).

Tables are prefixed ``rankopt_`` and migrations are tracked in ``rankopt_alembic_version``, so
the store can share a database with Optuna's studies. Nothing here imports torch or optuna.

:class:`Store` (:mod:`service.store.jobs`) is a facade over one module per aggregate: keys,
jobs, queue (claims and the lease-loss policy), leases, search, artifact_rows, metrics;
:mod:`service.store.optuna_tables` holds every SQL statement on Optuna's own tables.
"""

from service.store.engine import (
    describe_outage,
    is_database_unavailable,
    is_sqlite,
    make_engine,
    normalize_url,
    outage_cause,
    read_only,
)
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
    MigrationError,
    StoreError,
)
from service.store.jobs import (
    API_KEY_PREFIX,
    Store,
    hash_api_key,
    request_hash_of,
    validate_artifact_name,
    validate_artifact_path,
)
from service.store.migrate import (
    VERSION_TABLE,
    check_schema,
    current_revision,
    head_revision,
    upgrade,
)
from service.store.models import ACTIVE_STATUSES, TABLE_PREFIX, TERMINAL_STATUSES, JobStatus, utcnow
from service.store.records import (
    ApiKeyRecord,
    ArtifactRecord,
    Claim,
    ClaimKind,
    JobRecord,
    search_budget_spent,
)

__all__ = [
    "ACTIVE_STATUSES",
    "API_KEY_PREFIX",
    "TABLE_PREFIX",
    "TERMINAL_STATUSES",
    "VERSION_TABLE",
    "ApiKeyNotFound",
    "ApiKeyRecord",
    "ArtifactNotFound",
    "ArtifactRecord",
    "Claim",
    "ClaimKind",
    "DuplicateKeyName",
    "IdempotencyConflict",
    "InvalidArtifactName",
    "InvalidCursor",
    "JobNotFinished",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "LeaseLost",
    "MigrationError",
    "Store",
    "StoreError",
    "check_schema",
    "current_revision",
    "describe_outage",
    "hash_api_key",
    "head_revision",
    "is_database_unavailable",
    "is_sqlite",
    "make_engine",
    "normalize_url",
    "outage_cause",
    "read_only",
    "request_hash_of",
    "search_budget_spent",
    "upgrade",
    "utcnow",
    "validate_artifact_name",
    "validate_artifact_path",
]
