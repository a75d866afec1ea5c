"""SQLAlchemy 2.x ORM models of the fedveil store.

Every table is portable SQL (SQLite, PostgreSQL, ...): JSON goes in
``sqlalchemy.JSON``, timestamps are naive-UTC ``DateTime`` columns read back as
aware UTC datetimes, and the allowed values of enum-like columns are CHECK
constraints rather than database-specific ENUM types. Constraint names follow
:data:`NAMING_CONVENTION` so that migrations can refer to them.

Any change here needs a new Alembic revision under ``migrations/versions``;
``tests/fedveil/test_store_migrations.py`` fails when models and migrations differ.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed")
ROUND_STATUSES: tuple[str, ...] = ("completed", "failed")
EVENT_KINDS: tuple[str, ...] = ("dropped", "rejected", "failed", "refused-budget")
TEACHER_PROVENANCES: tuple[str, ...] = ("public", "private-non-dp", "dp", "none")
AUDIT_KINDS: tuple[str, ...] = ("exposure", "memorisation", "mia", "epsilon")
AUDIT_MODELS: tuple[str, ...] = ("teacher", "student", "global", "finetuned", "reference")
# Models a run releases (each client's student, the global student); headline leakage numbers use only these.
RELEASED_MODELS: tuple[str, ...] = ("student", "global")
BOUND_METHODS: tuple[str, ...] = ("clopper-pearson", "one-run")
# Run flag set when an empirical ε lower bound exceeds the accountant's ε.
EPS_LB_FLAG = "eps_lb_exceeds_claim"


def in_list(column: str, values: tuple[str, ...]) -> str:
    """SQL text of a CHECK that ``column`` is one of ``values`` (portable ``IN`` list)."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


def utcnow() -> dt.datetime:
    """Current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Timestamp stored as naive UTC and returned as aware UTC.

    Naive UTC storage behaves the same on SQLite (which has no time zones) and
    PostgreSQL ``timestamp``; naive inputs are taken to be UTC already.
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base holding the store's metadata."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _run_fk() -> Mapped[str]:
    return mapped_column(
        sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    )


class Run(Base):
    """One training run (or an audit-only run) and its configuration."""

    __tablename__ = "runs"
    __table_args__ = (sa.CheckConstraint(in_list("status", RUN_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="pending")
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    method: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    task: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    he_enabled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    num_clients: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    num_rounds: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    seed: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    privacy_statement: Mapped[str] = mapped_column(sa.Text, nullable=False, default="")
    run_dir: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    wall_seconds: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    peak_rss_mb: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    last_complete_round: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    flags: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False, default=list)


class Client(Base):
    """A client (data owner) taking part in a run."""

    __tablename__ = "clients"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "client_index"),
        sa.CheckConstraint(
            "teacher_provenance IS NULL OR " + in_list("teacher_provenance", TEACHER_PROVENANCES),
            name="teacher_provenance",
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    client_index: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    node_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    num_examples: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    teacher_provenance: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    teacher_epsilon: Mapped[float | None] = mapped_column(sa.Float, nullable=True)


class Round(Base):
    """One server round of a run."""

    __tablename__ = "rounds"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "server_round"),
        sa.CheckConstraint(in_list("status", ROUND_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    server_round: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    num_sampled: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    num_replied: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    num_failed: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    num_rejected: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    wall_seconds: Mapped[float] = mapped_column(sa.Float, nullable=False)


class Metric(Base):
    """A scalar metric, global (``client_index`` NULL) or per client."""

    __tablename__ = "metrics"
    __table_args__ = (sa.Index(None, "run_id", "name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    server_round: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    client_index: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    name: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    # NULL stands for NaN (a diverged loss, say), which SQLite cannot store.
    value: Mapped[float | None] = mapped_column(sa.Float, nullable=True)


class LedgerEntry(Base):
    """Privacy-ledger row: a client's accountant state after a round."""

    __tablename__ = "privacy_ledger"
    __table_args__ = (sa.UniqueConstraint("run_id", "client_index", "server_round"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    client_index: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    server_round: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    epsilon: Mapped[float] = mapped_column(sa.Float, nullable=False)
    delta: Mapped[float] = mapped_column(sa.Float, nullable=False)
    noise_multiplier: Mapped[float] = mapped_column(sa.Float, nullable=False)
    sample_rate: Mapped[float] = mapped_column(sa.Float, nullable=False)
    steps: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    accountant: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    max_grad_norm: Mapped[float] = mapped_column(sa.Float, nullable=False)
    grad_sample_mode: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)


class HERecord(Base):
    """Homomorphic-encryption cost record (``client_index`` NULL = server aggregate)."""

    __tablename__ = "he_records"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    server_round: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    client_index: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    profile: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    bytes_sent: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    encrypt_seconds: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    aggregate_seconds: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    decrypt_seconds: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    max_abs_error: Mapped[float | None] = mapped_column(sa.Float, nullable=True)


class ClientEvent(Base):
    """A client dropped, rejected, failed or refused a round for lack of budget."""

    __tablename__ = "client_events"
    __table_args__ = (sa.CheckConstraint(in_list("kind", EVENT_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    server_round: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    client_index: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    node_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    reason: Mapped[str] = mapped_column(sa.Text, nullable=False)


class Canary(Base):
    """A canary candidate planted (or kept as reference) for the audits."""

    __tablename__ = "canaries"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    canary_id: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    format_index: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    template: Mapped[str] = mapped_column(sa.Text, nullable=False)
    secret: Mapped[str] = mapped_column(sa.Text, nullable=False)
    client_index: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    repetitions: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    inserted: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    one_run: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)


class Audit(Base):
    """One audit of one model: its parameters and summary results."""

    __tablename__ = "audits"
    __table_args__ = (
        sa.CheckConstraint(in_list("kind", AUDIT_KINDS), name="kind"),
        sa.CheckConstraint(in_list("model", AUDIT_MODELS), name="model"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    model: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    client_index: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    server_round: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    summary: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)


class Exposure(Base):
    """Exposure of one canary in one exposure audit."""

    __tablename__ = "exposures"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("audits.id", ondelete="CASCADE"), nullable=False, index=True
    )
    canary_id: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    repetitions: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    log_perplexity_bits: Mapped[float] = mapped_column(sa.Float, nullable=False)
    exposure_rank: Mapped[float] = mapped_column(sa.Float, nullable=False)
    exposure_extrapolated: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    extrapolated_is_bound: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    n_ref: Mapped[int] = mapped_column(sa.Integer, nullable=False)


class EpsilonBound(Base):
    """An empirical ε lower bound compared with the accountant's ε."""

    __tablename__ = "epsilon_bounds"
    __table_args__ = (sa.CheckConstraint(in_list("method", BOUND_METHODS), name="method"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    client_index: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    method: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    epsilon_lb: Mapped[float] = mapped_column(sa.Float, nullable=False)
    accountant_epsilon: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    flagged: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)


class Artifact(Base):
    """A file produced by a run (checkpoint, report, ...), with its digest."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = _run_fk()
    kind: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    path: Mapped[str] = mapped_column(sa.Text, nullable=False)
    sha256: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class RunLease(Base):
    """Who is executing a run right now: one row per run, renewed by its holder's heartbeat.

    No foreign key: a new run's launcher takes the lease before the ServerApp creates the run row.
    """

    __tablename__ = "run_leases"

    run_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
