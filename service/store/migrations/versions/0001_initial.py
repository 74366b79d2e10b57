"""Initial schema: API keys, jobs, artifacts, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2025-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.models import UTCDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_STATUSES = (
    "QUEUED",
    "PREPARING",
    "SEARCHING",
    "FINALIZING",
    "SUCCEEDED",
    "CANCELLING",
    "CANCELLED",
    "FAILED",
)


def upgrade() -> None:
    op.create_table(
        "rankopt_api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rankopt_api_keys"),
        sa.UniqueConstraint("name", name="uq_rankopt_api_keys_name"),
        sa.UniqueConstraint("key_hash", name="uq_rankopt_api_keys_key_hash"),
    )
    status_list = ", ".join(f"'{s}'" for s in _STATUSES)
    op.create_table(
        "rankopt_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("weights_path", sa.Text(), nullable=False),
        sa.Column("dataset_path", sa.Text(), nullable=True),
        sa.Column("study_name", sa.String(length=64), nullable=False),
        sa.Column("trials_total", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("trials_done", sa.Integer(), nullable=False),
        sa.Column("trials_running", sa.Integer(), nullable=False),
        sa.Column("best_compression", sa.Float(), nullable=True),
        sa.Column("best_accuracy", sa.Float(), nullable=True),
        sa.Column("baseline_accuracy", sa.Float(), nullable=True),
        sa.Column("eta_s", sa.Float(), nullable=True),
        sa.Column("search_started_at", UTCDateTime(), nullable=True),
        sa.Column("deadline_at", UTCDateTime(), nullable=True),
        sa.Column("last_served_at", UTCDateTime(), nullable=True),
        sa.Column("progress_at", UTCDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_kind", sa.String(length=16), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("trial_failures", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.CheckConstraint(f"status IN ({status_list})", name="ck_rankopt_jobs_status"),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["rankopt_api_keys.id"], name="fk_rankopt_jobs_owner_id_rankopt_api_keys"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rankopt_jobs"),
    )
    op.create_index("ix_rankopt_jobs_status", "rankopt_jobs", ["status"])
    op.create_index(
        "ix_rankopt_jobs_owner_id_created_at", "rankopt_jobs", ["owner_id", "created_at"]
    )
    op.create_table(
        "rankopt_artifacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["rankopt_jobs.id"],
            name="fk_rankopt_artifacts_job_id_rankopt_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rankopt_artifacts"),
        sa.UniqueConstraint("job_id", "name", name="uq_rankopt_artifacts_job_id_name"),
    )
    op.create_table(
        "rankopt_idempotency",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["rankopt_api_keys.id"],
            name="fk_rankopt_idempotency_owner_id_rankopt_api_keys",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["rankopt_jobs.id"],
            name="fk_rankopt_idempotency_job_id_rankopt_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rankopt_idempotency"),
        sa.UniqueConstraint("owner_id", "key", name="uq_rankopt_idempotency_owner_id_key"),
    )


def downgrade() -> None:
    op.drop_table("rankopt_idempotency")
    op.drop_table("rankopt_artifacts")
    op.drop_index("ix_rankopt_jobs_owner_id_created_at", table_name="rankopt_jobs")
    op.drop_index("ix_rankopt_jobs_status", table_name="rankopt_jobs")
    op.drop_table("rankopt_jobs")
    op.drop_table("rankopt_api_keys")
