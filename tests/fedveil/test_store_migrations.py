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
    # And the models themselves compile for PostgreSQL.
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    for table in Base.metadata.sorted_tables:
        str(CreateTable(table).compile(dialect=dialect))
        for index in table.indexes:
            str(CreateIndex(index).compile(dialect=dialect))


def test_every_child_table_has_a_run_id_index() -> None:
    for table in Base.metadata.sorted_tables:
        if "run_id" in table.c:
            assert any(next(iter(ix.columns)).name == "run_id" for ix in table.indexes), table.name
        assert isinstance(table.c.id.type, (sa.Integer, sa.String))
