"""Run leases: which launcher is executing a run (issue 14, operators cannot collide).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

One row per run that someone is executing: the holder (``host:pid:nonce``), when it took the lease
and its last heartbeat. A second ``fedveil run --resume`` of a run whose lease is live is refused
(:mod:`fedveil.store.lease`). Written by hand, without the ORM models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``run_leases``."""
    op.create_table(
        "run_leases",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_leases"),
    )


def downgrade() -> None:
    """Drop ``run_leases``."""
    op.drop_table("run_leases")
