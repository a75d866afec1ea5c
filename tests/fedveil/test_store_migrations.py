"""Alembic migrations of fedveil.store: agreement with the models, upgrade paths, portability."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from fedveil.store import Store, StoreError, check_models_match, current_revision, head_revision, sqlite_url
from fedveil.store.engine import make_engine
from fedveil.store.migrate import alembic_config, downgrade, upgrade
from fedveil.store.models import Base

TABLES = {t.name for t in Base.metadata.sorted_tables}


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows} - {"alembic_version"}


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    # Our `alembic check`: autogenerate finds nothing to do after upgrading to head.
    assert check_models_match(sqlite_url(tmp_path / "check.db")) == []
    assert _tables(tmp_path / "check.db") == TABLES


def test_check_detects_drift(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "drift.db"))
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_metrics_run_id_name")
        conn.exec_driver_sql("ALTER TABLE artifacts ADD COLUMN stray VARCHAR(3)")
    kinds = sorted(diff[0] for diff in check_models_match(engine))
    engine.dispose()
    assert kinds == ["add_index", "remove_column"]


def test_database_at_base_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = sqlite_url(path)
    upgrade(url)
    downgrade(url, "base")
    assert current_revision(url) is None and _tables(path) == set()
    with Store(url) as store:
        assert store.list_runs() == []
    assert current_revision(url) == head_revision()
    assert _tables(path) == TABLES


def test_empty_existing_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with Store(sqlite_url(path)) as store:
        assert store.run_ids() == []
    assert _tables(path) == TABLES


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store(sqlite_url(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff9999'")
    with pytest.raises(StoreError) as info:
        Store(sqlite_url(path))
    message = str(info.value)
    assert "'ffff9999'" in message and "newer" in message and "\n" not in message


def test_alembic_commands_without_ini(tmp_path: Path) -> None:
    # env.py path without a passed-in connection: it makes its own engine from the URL.
    url = sqlite_url(tmp_path / "cmd.db")
    command.upgrade(alembic_config(url), "head")
    assert current_revision(url) == head_revision()


def test_migration_sql_is_portable_to_postgresql() -> None:
    cfg = alembic_config("postgresql://u:p@localhost/fedveil")
    cfg.stdout = out = io.StringIO()
    cfg.output_buffer = out
    command.upgrade(cfg, "head", sql=True)
    sql = out.getvalue()
    assert "CREATE TABLE runs" in sql and "ON DELETE CASCADE" in sql
    assert "TIMESTAMP WITHOUT TIME ZONE" in sql and "JSON" in sql
    assert "CREATE INDEX ix_metrics_run_id_name ON metrics (run_id, name)" in sql
    assert 'ALTER TABLE "runs" RENAME CONSTRAINT "ck_runs_ck_runs_status" TO "ck_runs_status"' in sql
    # And the models themselves compile for PostgreSQL.
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    for table in Base.metadata.sorted_tables:
        str(CreateTable(table).compile(dialect=dialect))
        for index in table.indexes:
            str(CreateIndex(index).compile(dialect=dialect))


def test_every_child_table_has_a_run_id_index() -> None:
    for table in Base.metadata.sorted_tables:
        pk = [c.name for c in table.primary_key.columns]
        if "run_id" in table.c and pk != ["run_id"]:  # a run_id primary key (run_leases) is its own index
            assert any(next(iter(ix.columns)).name == "run_id" for ix in table.indexes), table.name
        assert len(pk) == 1 and isinstance(table.c[pk[0]].type, (sa.Integer, sa.String))


def _check_names(engine: sa.Engine) -> set[str]:
    inspector = sa.inspect(engine)
    return {ck["name"] for t in inspector.get_table_names() for ck in inspector.get_check_constraints(t)}


def _models_check_names(tmp_path: Path) -> set[str]:
    # The names the models' naming convention gives, as SQLAlchemy itself renders them.
    engine = sa.create_engine(sqlite_url(tmp_path / "models.db"))
    Base.metadata.create_all(engine)
    try:
        return _check_names(engine)
    finally:
        engine.dispose()


_ROWS = {  # one row in the parent tables and in a child of each, to see that the rebuild keeps them
    "runs": "INSERT INTO runs (id, name, status, method, task, he_enabled, num_clients, num_rounds, seed, config,"
            " privacy_statement, created_at, last_complete_round, flags) VALUES ('r1', 'n', 'running', 'dp-opd',"
            " 't', true, 1, 1, 0, '{}', 's', '2025-01-01 00:00:00', 0, '[]')",
    "clients": "INSERT INTO clients (run_id, client_index, num_examples, teacher_provenance)"
               " VALUES ('r1', 0, 5, 'dp')",
    "metrics": "INSERT INTO metrics (run_id, name, value) VALUES ('r1', 'perplexity', 9.5)",
    "audits": "INSERT INTO audits (run_id, kind, model, created_at, params, summary)"
              " VALUES ('r1', 'exposure', 'student', '2025-01-01 00:00:00', '{}', '{}')",
    "exposures": "INSERT INTO exposures (audit_id, canary_id, repetitions, log_perplexity_bits, exposure_rank, n_ref,"
                 " extrapolated_is_bound) SELECT id, 'c0', 4, 1.0, 2.0, 16, false FROM audits",
}


def test_0002_fixes_check_constraint_names_and_keeps_rows(db_url: str, tmp_path: Path) -> None:
    expected = _models_check_names(tmp_path)
    assert "ck_runs_status" in expected and not any("_ck_" in n for n in expected)
    engine = make_engine(db_url)
    try:
        upgrade(engine, "0001")
        assert "ck_runs_ck_runs_status" in _check_names(engine)  # the defect 0002 repairs
        with engine.begin() as conn:
            for sql in _ROWS.values():
                conn.execute(sa.text(sql))
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert _check_names(engine) == expected
        with engine.connect() as conn:
            for table in _ROWS:
                assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one() == 1, table
        # Renamed, not dropped: the constraints still hold, and so do the foreign keys' cascades.
        with pytest.raises(sa.exc.IntegrityError, match="ck_runs_status"), engine.begin() as conn:
            conn.execute(sa.text("UPDATE runs SET status = 'exploded'"))
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM runs"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM exposures")).scalar_one() == 0
        assert check_models_match(engine) == []
        downgrade(engine, "0001")
        assert _check_names(engine) == {f"ck_{table}_{name}" for table, name in _split(expected)}
    finally:
        engine.dispose()


def _split(names: set[str]) -> list[tuple[str, str]]:
    """Pair each ``ck_<table>_<rest>`` with its table (longest table name first: ``client_events`` vs ``clients``)."""
    tables = sorted(TABLES, key=len, reverse=True)
    return [(next(t for t in tables if name.startswith(f"ck_{t}_")), name) for name in names]
