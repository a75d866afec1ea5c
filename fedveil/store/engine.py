"""Turning a database URL into a configured SQLAlchemy engine.

SQLite gets the settings a multi-process, crash-prone workload needs: WAL
journal (readers such as the dashboard never block the training writer),
foreign keys ON (SQLite ignores ``ON DELETE CASCADE`` otherwise), a busy
timeout, and explicit ``BEGIN`` so that every SQLAlchemy transaction,
including migration DDL, is really atomic (the ``sqlite3`` module otherwise
starts transactions only before DML statements). Write transactions use
``BEGIN IMMEDIATE`` (see :func:`for_writing`), so concurrent writers queue on
the busy timeout instead of failing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import StaticPool

from fedveil.store.errors import StoreError

DEFAULT_BUSY_TIMEOUT_MS = 5000
# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write lock up front.
BEGIN_OPTION = "fedveil_sqlite_begin"
DEFAULT_RELATIVE_PATH = os.path.join("runs", "fedveil.db")


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """SQLAlchemy URL of a SQLite file, made absolute.

    Parameters
    ----------
    path : str or path-like
        File path, relative to the current directory or absolute.

    Returns
    -------
    str
        ``sqlite:///<absolute path>``.
    """
    return f"sqlite:///{os.path.abspath(os.fspath(path))}"


def default_db_url() -> str:
    """The store URL used when the caller gives none.

    Returns
    -------
    str
        Environment variable ``FEDVEIL_DB`` when set (a URL, or a plain file
        path which is turned into a SQLite URL), else
        ``sqlite:///<abs path of ./runs/fedveil.db>``.
    """
    env = os.environ.get("FEDVEIL_DB", "").strip()
    if env:
        return normalise_url(env)
    return sqlite_url(DEFAULT_RELATIVE_PATH)


def normalise_url(url: str | os.PathLike[str]) -> str:
    """Accept either a SQLAlchemy URL or a plain path to a SQLite file.

    Parameters
    ----------
    url : str or path-like
        ``dialect[+driver]://...`` or a file path (anything without ``://``).

    Returns
    -------
    str
        A SQLAlchemy URL.
    """
    text = os.fspath(url)
    if "://" not in text:
        return sqlite_url(text)
    return text


# Query-string credentials (``?password=...``) that SQLAlchemy's hide_password leaves in place.
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|pass|secret|token)=)[^&#]*", re.IGNORECASE)


def mask_url(url: str | URL) -> str:
    """Render a URL for messages with every password replaced by ``***``.

    Masks the user-info password (``user:***@host``) and query-string credentials
    (``?password=***``). Works on strings that SQLAlchemy cannot parse, too. This is the
    only form of a store URL that may be printed, logged, stored or shown.

    Parameters
    ----------
    url : str or sqlalchemy.engine.URL
        The URL.

    Returns
    -------
    str
        The URL without its passwords.
    """
    if isinstance(url, URL):
        text = url.render_as_string(hide_password=True)
    else:
        try:
            text = sa.make_url(url).render_as_string(hide_password=True)
        except (sa.exc.ArgumentError, ValueError):
            text = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return _QUERY_SECRET.sub(r"\1***", text)


def one_line(exc: BaseException) -> str:
    """First line of an exception's message (driver errors span several lines)."""
    text = str(exc).strip()
    # SQLAlchemy appends "(Background on this error at: ...)" after a newline.
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.strip()


def is_sqlite_memory(url: URL) -> bool:
    """Whether ``url`` names a private in-memory SQLite database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(
    url: str, *, echo: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> Engine:
    """Create an engine for ``url``, creating a SQLite file's parent directory.

    Parameters
    ----------
    url : str
        SQLAlchemy URL (or a plain SQLite file path).
    echo : bool
        Log every SQL statement.
    busy_timeout_ms : int
        How long a SQLite connection waits for another writer's lock.

    Returns
    -------
    sqlalchemy.engine.Engine
        The engine; no connection is made yet.

    Raises
    ------
    StoreError
        Unparseable URL, unknown dialect, missing driver, or a SQLite parent
        directory that cannot be created.
    """
    text = normalise_url(url)
    try:
        parsed = sa.make_url(text)
    except Exception as exc:
        raise StoreError(f"invalid database URL {mask_url(text)}: {one_line(exc)}") from exc
    shown = mask_url(parsed)
    kwargs: dict[str, Any] = {"echo": echo}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        if is_sqlite_memory(parsed):
            # One shared connection, or every pooled connection would see its own empty database.
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        elif parsed.database and not parsed.database.startswith("file:"):
            path = Path(parsed.database).expanduser().resolve()
            parent = path.parent
            try:
                parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # The store holds canary secrets: the file is the owner's only (SQLite gives its
                # -wal/-shm files the main file's mode). An existing file is tightened too.
                _private_file(path)
            except OSError as exc:
                raise StoreError(f"cannot open store {shown}: cannot create {path}: {one_line(exc)}") from exc
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except ModuleNotFoundError as exc:
        hint = ""
        if parsed.get_backend_name() == "postgresql":
            # fedveil's PostgreSQL driver is psycopg 3, shipped as the `postgres` extra.
            hint = "; install the PostgreSQL driver with pip install 'fedveil[postgres]' and use postgresql+psycopg://"
        raise StoreError(f"cannot open store {shown}: missing database driver: {one_line(exc)}{hint}") from exc
    except Exception as exc:
        raise StoreError(f"cannot open store {shown}: {type(exc).__name__}: {one_line(exc)}") from exc
    if is_sqlite:
        _configure_sqlite(engine, busy_timeout_ms=busy_timeout_ms, wal=not is_sqlite_memory(parsed))
    return engine


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0600, or tighten an existing file of ours to 0600."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(0o600)


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int, wal: bool) -> None:
    """Install per-connection PRAGMAs and explicit BEGIN on a SQLite engine."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Autocommit at the driver level; SQLAlchemy's "begin" hook below issues BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                # NORMAL is durable across application crashes in WAL mode, and much faster than FULL.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def for_writing(engine: Engine) -> Engine:
    """A view of ``engine`` whose SQLite transactions take the write lock when they begin.

    A deferred transaction that reads and then writes fails at once with
    "database is locked" if another connection wrote in between (SQLite cannot
    wait there without risking deadlock); ``BEGIN IMMEDIATE`` instead waits up
    to the busy timeout for the lock. Other databases ignore the option.
    """
    return engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
