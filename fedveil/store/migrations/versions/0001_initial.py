"""Initial schema: runs, clients, rounds, metrics, privacy ledger, HE records,
client events, canaries, audits, exposures, epsilon bounds, artifacts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand; it must not import the ORM models (they will move on while
this revision stays fixed). Constraint names follow the models' naming
convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Child tables first in downgrade order.
_CHILD_TABLES = (
    "exposures",
    "artifacts",
    "epsilon_bounds",
    "audits",
    "canaries",
    "client_events",
    "he_records",
    "privacy_ledger",
    "metrics",
    "rounds",
    "clients",
)


def _in(column: str, *values: str) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=f"pk_{table}")


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer(), autoincrement=True, nullable=False)


def _run_id(table: str) -> list[SchemaItem]:
    return [
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=f"fk_{table}_run_id_runs", ondelete="CASCADE"
        ),
    ]


def _child(table: str, *items: SchemaItem) -> None:
    op.create_table(table, _id(), *_run_id(table), *items, _pk(table))
    op.create_index(f"ix_{table}_run_id", table, ["run_id"], unique=False)


def upgrade() -> None:
    """Create every table of the store."""
    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("he_enabled", sa.Boolean(), nullable=False),
        sa.Column("num_clients", sa.Integer(), nullable=False),
        sa.Column("num_rounds", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("privacy_statement", sa.Text(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("wall_seconds", sa.Float(), nullable=True),
        sa.Column("peak_rss_mb", sa.Float(), nullable=True),
        sa.Column("last_complete_round", sa.Integer(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            _in("status", "pending", "running", "completed", "failed"), name="ck_runs_status"
        ),
        _pk("runs"),
    )
    _child(
        "clients",
        sa.Column("client_index", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        sa.Column("teacher_provenance", sa.String(length=32), nullable=True),
        sa.Column("teacher_epsilon", sa.Float(), nullable=True),
        sa.UniqueConstraint("run_id", "client_index", name="uq_clients_run_id_client_index"),
        sa.CheckConstraint(
            "teacher_provenance IS NULL OR "
            + _in("teacher_provenance", "public", "private-non-dp", "dp", "none"),
            name="ck_clients_teacher_provenance",
        ),
    )
    _child(
        "rounds",
        sa.Column("server_round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.Column("num_sampled", sa.Integer(), nullable=False),
        sa.Column("num_replied", sa.Integer(), nullable=False),
        sa.Column("num_failed", sa.Integer(), nullable=False),
        sa.Column("num_rejected", sa.Integer(), nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=False),
        sa.UniqueConstraint("run_id", "server_round", name="uq_rounds_run_id_server_round"),
        sa.CheckConstraint(_in("status", "completed", "failed"), name="ck_rounds_status"),
    )
    _child(
        "metrics",
        sa.Column("server_round", sa.Integer(), nullable=True),
        sa.Column("client_index", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
    )
    op.create_index("ix_metrics_run_id_name", "metrics", ["run_id", "name"], unique=False)
    _child(
        "privacy_ledger",
        sa.Column("client_index", sa.Integer(), nullable=False),
        sa.Column("server_round", sa.Integer(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("accountant", sa.String(length=16), nullable=False),
        sa.Column("max_grad_norm", sa.Float(), nullable=False),
        sa.Column("grad_sample_mode", sa.String(length=32), nullable=True),
        sa.UniqueConstraint(
            "run_id",
            "client_index",
            "server_round",
            name="uq_privacy_ledger_run_id_client_index_server_round",
        ),
    )
    _child(
        "he_records",
        sa.Column("server_round", sa.Integer(), nullable=False),
        sa.Column("client_index", sa.Integer(), nullable=True),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False),
        sa.Column("encrypt_seconds", sa.Float(), nullable=True),
        sa.Column("aggregate_seconds", sa.Float(), nullable=True),
        sa.Column("decrypt_seconds", sa.Float(), nullable=True),
        sa.Column("max_abs_error", sa.Float(), nullable=True),
    )
    _child(
        "client_events",
        sa.Column("server_round", sa.Integer(), nullable=True),
        sa.Column("client_index", sa.Integer(), nullable=True),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint(
            _in("kind", "dropped", "rejected", "failed", "refused-budget"),
            name="ck_client_events_kind",
        ),
    )
    _child(
        "canaries",
        sa.Column("canary_id", sa.String(length=128), nullable=False),
        sa.Column("format_index", sa.Integer(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("client_index", sa.Integer(), nullable=True),
        sa.Column("repetitions", sa.Integer(), nullable=False),
        sa.Column("inserted", sa.Boolean(), nullable=False),
        sa.Column("one_run", sa.Boolean(), nullable=False),
    )
    _child(
        "audits",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("client_index", sa.Integer(), nullable=True),
        sa.Column("server_round", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            _in("kind", "exposure", "memorisation", "mia", "epsilon"), name="ck_audits_kind"
        ),
        sa.CheckConstraint(
            _in("model", "teacher", "student", "global", "finetuned", "reference"),
            name="ck_audits_model",
        ),
    )
    op.create_table(
        "exposures",
        _id(),
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("canary_id", sa.String(length=128), nullable=False),
        sa.Column("repetitions", sa.Integer(), nullable=False),
        sa.Column("log_perplexity_bits", sa.Float(), nullable=False),
        sa.Column("exposure_rank", sa.Float(), nullable=False),
        sa.Column("exposure_extrapolated", sa.Float(), nullable=True),
        sa.Column("extrapolated_is_bound", sa.Boolean(), nullable=False),
        sa.Column("n_ref", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["audit_id"], ["audits.id"], name="fk_exposures_audit_id_audits", ondelete="CASCADE"
        ),
        _pk("exposures"),
    )
    op.create_index("ix_exposures_audit_id", "exposures", ["audit_id"], unique=False)
    _child(
        "epsilon_bounds",
        sa.Column("client_index", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("epsilon_lb", sa.Float(), nullable=False),
        sa.Column("accountant_epsilon", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            _in("method", "clopper-pearson", "one-run"), name="ck_epsilon_bounds_method"
        ),
    )
    _child(
        "artifacts",
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    """Drop every table of the store (their indexes go with them)."""
    for table in _CHILD_TABLES:
        op.drop_table(table)
    op.drop_table("runs")
