"""Lease-loss policy: count a phase's raised errors and lost leases apart.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("rankopt_jobs") as batch:
        batch.add_column(
            sa.Column("phase_errors", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("lost_leases", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("rankopt_jobs") as batch:
        batch.drop_column("lost_leases")
        batch.drop_column("phase_errors")
