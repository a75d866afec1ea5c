"""Alembic migrations of the store, driven from code (no ``alembic.ini`` needed).

The migration scripts live in ``fedveil/store/migrations``; an
:class:`alembic.config.Config` pointing there is built in memory. A store is
upgraded to ``head`` whenever it is opened, so the only commands a user ever
needs are the ones here (``check_models_match`` is the project's ``alembic
check``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fedveil.store.engine import for_writing, make_engine, mask_url, one_line
from fedveil.store.errors import StoreError
from fedveil.store.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for the store's migration scripts.

    Parameters
    ----------
    url : str or None
        Database URL for commands run without a connection (e.g. offline SQL).

    Returns
    -------
    alembic.config.Config
        In-memory configuration; pass a connection through
        ``config.attributes["connection"]`` to run on an existing engine.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation treats "%" specially (URL-escaped passwords contain it).
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@functools.cache
def _shipped_revisions() -> tuple[str, frozenset[str]]:
    # The scripts are part of the installed package, so reading them once per process is enough.
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise StoreError(f"no migrations found in {MIGRATIONS_DIR}")
    return head, frozenset(rev.revision for rev in script.walk_revisions())


def head_revision() -> str:
    """Revision id of the newest migration shipped with this code."""
    return _shipped_revisions()[0]


def known_revisions() -> frozenset[str]:
    """Ids of every migration shipped with this code."""
    return _shipped_revisions()[1]


@contextmanager
def _engine_for(engine_or_url: Engine | str) -> Iterator[Engine]:
    """Use a given engine as is, or make (and afterwards dispose of) one for a URL."""
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _heads(engine: Engine) -> tuple[str, ...]:
    with engine.connect() as conn:
        return tuple(MigrationContext.configure(conn).get_current_heads())


def current_revision(engine_or_url: Engine | str) -> str | None:
    """Schema revision a database is at.

    Parameters
    ----------
    engine_or_url : Engine or str
        The database.

    Returns
    -------
    str or None
        The revision id, or ``None`` for a database never migrated (base).

    Raises
    ------
    StoreError
        The database cannot be read.
    """
    with _engine_for(engine_or_url) as engine:
        try:
            heads = _heads(engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read schema revision of {mask_url(engine.url)}: {one_line(exc)}") from exc
    return heads[0] if heads else None


def _run_command(engine: Engine, fn: Any, revision: str) -> None:
    """Run an Alembic command inside one transaction on ``engine``.

    On SQLite, foreign keys are switched off for the migration and checked
    before it commits: a batch-mode table rebuild drops the old table, and with
    foreign keys on that drop would cascade-delete every child row.
    """
    cfg = alembic_config()
    sqlite = engine.dialect.name == "sqlite"
    with for_writing(engine).connect() as conn:
        # The PRAGMA is a no-op inside a transaction, so it goes to the driver before BEGIN.
        driver = conn.connection.driver_connection
        if sqlite:
            driver.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        try:
            # The write lock up front: a second process opening the same new file waits, then sees head.
            with conn.begin():
                cfg.attributes["connection"] = conn
                fn(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"migration to {revision} broke {len(broken)} foreign key(s): {broken[0]}")
        finally:
            if sqlite:
                driver.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]


def upgrade(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Migrate a database up to ``revision`` (default: the newest).

    Parameters
    ----------
    engine_or_url : Engine or str
        The database.
    revision : str
        Target revision id, or ``"head"``.

    Raises
    ------
    StoreError
        The database is at a revision this code does not know (made by a newer
        fedveil), or the migration failed (it is rolled back).
    """
    with _engine_for(engine_or_url) as engine:
        shown = mask_url(engine.url)
        try:
            heads = _heads(engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {shown}: {one_line(exc)}") from exc
        unknown = [h for h in heads if h not in known_revisions()]
        if unknown:
            raise StoreError(
                f"store {shown} is at schema revision {unknown[0]!r}, which this version of fedveil "
                f"does not know (written by a newer version?); upgrade fedveil or use another database"
            )
        if revision == "head" and heads == (head_revision(),):
            return  # fast path: opening an up-to-date store writes nothing
        try:
            _run_command(engine, command.upgrade, revision)
        except SQLAlchemyError as exc:
            # Another process may have run the same migration at the same moment.
            if revision == "head" and _heads(engine) == (head_revision(),):
                return
            raise StoreError(f"cannot migrate store {shown}: {one_line(exc)}") from exc


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Migrate a database down to ``revision`` (``"base"`` drops every table).

    Parameters
    ----------
    engine_or_url : Engine or str
        The database.
    revision : str
        Target revision id, or ``"base"``.

    Raises
    ------
    StoreError
        The migration failed (it is rolled back).
    """
    with _engine_for(engine_or_url) as engine:
        try:
            _run_command(engine, command.downgrade, revision)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate store {mask_url(engine.url)}: {one_line(exc)}") from exc


def check_models_match(engine_or_url: Engine | str) -> list[Any]:
    """Differences between the ORM models and a database migrated to head.

    This is the project's ``alembic check``: run it against an empty database
    and an empty list means models and migration scripts agree.

    Parameters
    ----------
    engine_or_url : Engine or str
        A database to migrate and compare (use a scratch one).

    Returns
    -------
    list
        Alembic autogenerate diff entries (empty = in agreement).
    """
    with _engine_for(engine_or_url) as engine:
        upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
