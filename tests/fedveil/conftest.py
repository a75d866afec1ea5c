"""Store back ends for the tests of this package: SQLite always, PostgreSQL when one is given.

``FEDVEIL_TEST_PG_URL`` names a PostgreSQL server (``postgresql+psycopg://user@127.0.0.1:5432/postgres``)
whose user may create databases; ``.ci/run`` starts a throw-away cluster and sets it. Every test gets its
own freshly created database there, dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from fedveil.store import sqlite_url

PG_URL_ENV = "FEDVEIL_TEST_PG_URL"


def pg_server_url() -> str | None:
    """The PostgreSQL server the tests may use, or ``None``."""
    return os.environ.get(PG_URL_ENV, "").strip() or None


@contextmanager
def fresh_pg_database(server_url: str) -> Iterator[str]:
    """Create an empty database on ``server_url``, yield its URL, drop it afterwards."""
    name = f"fv_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE (PostgreSQL 13+): a test that leaked a connection must not keep its database alive.
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql", marks=pytest.mark.skipif(pg_server_url() is None, reason=f"{PG_URL_ENV} is not set")
    ),
]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty store database on each back end."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "sub" / "fv.db")
        return
    server = pg_server_url()
    assert server is not None
    with fresh_pg_database(server) as url:
        yield url
