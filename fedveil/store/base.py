"""Lifecycle of a store: engine, migrations on open, transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fedveil.store.engine import DEFAULT_BUSY_TIMEOUT_MS, for_writing, make_engine, mask_url, normalise_url, one_line
from fedveil.store.errors import RunNotFound, StoreError
from fedveil.store.migrate import upgrade
from fedveil.store.models import Run


class StoreBase:
    """Connection handling shared by every part of :class:`fedveil.store.Store`.

    Opening migrates the database to the newest schema (see
    :func:`fedveil.store.migrate.upgrade`). Parameters are those of ``Store``.
    """

    def __init__(self, url: str, *, echo: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        self.url = normalise_url(url)
        self.echo = echo
        self.busy_timeout_ms = busy_timeout_ms
        self.engine = make_engine(self.url, echo=echo, busy_timeout_ms=busy_timeout_ms)
        try:
            upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(for_writing(self.engine), expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Store({mask_url(self.url)!r})"

    def close(self) -> None:
        """Close every pooled connection. The object can still be used (it reconnects)."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error.

        Parameters
        ----------
        readonly : bool
            The block only reads: on SQLite it then takes no write lock, so it
            never waits for (or blocks) a writer. Writing in such a block may
            fail with "database is locked" under contention.

        Yields
        ------
        sqlalchemy.orm.Session
            Session bound to this store (objects stay usable after commit).

        Raises
        ------
        StoreError
            A database error happened (the original is chained as ``__cause__``).
        """
        factory = self._read_sessions if readonly else self._sessions
        with factory() as session:
            try:
                with session.begin():
                    yield session
            except SQLAlchemyError as exc:
                raise StoreError(f"store {mask_url(self.url)}: {one_line(exc)}") from exc

    @staticmethod
    def _run(session: Session, run_id: str) -> Run:
        """The run row, or :class:`RunNotFound`."""
        run = session.get(Run, run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run
