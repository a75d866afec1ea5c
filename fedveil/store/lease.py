"""Run leases: at most one launcher executes a run at a time (docs/METHODS.md §9, issue 14).

Two ``fedveil run --resume`` of one run would both restore its checkpoint and write its rounds; the
loser would mark the finished run failed and overwrite the checkpoint with an older round. A lease is
one ``run_leases`` row per run: its holder (``host:pid:nonce``) and a heartbeat the holder renews
every :data:`HEARTBEAT_S` seconds (:class:`LeaseKeeper`). A second launcher is refused while the lease
is live. A lease is dead when its heartbeat is older than :data:`LEASE_TTL_S`, or at once when its
holder ran on this host and that process no longer exists (a killed launcher can be resumed right
away). Taking over a dead lease is a compare-and-swap on the old holder and heartbeat, so two
launchers racing for one dead lease cannot both win.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import threading
from types import TracebackType
from typing import Self

import sqlalchemy as sa

from fedveil.store.base import StoreBase
from fedveil.store.errors import StoreError
from fedveil.store.models import RunLease, utcnow

__all__ = ["HEARTBEAT_S", "LEASE_TTL_S", "LeaseKeeper", "RunLeased", "acquire", "release", "renew"]

log = logging.getLogger("fedveil.store")
LEASE_TTL_S = 60.0   # a heartbeat older than this: the holder is gone
HEARTBEAT_S = 10.0   # the holder renews this often, well inside the TTL


class RunLeased(StoreError):
    """Another live launcher holds the run's lease."""


def new_holder() -> str:
    """``host:pid:nonce`` of this process (the nonce tells two leases of one process apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _gone(holder: str) -> bool:
    """The holder ran on this host and its process has exited."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _live(row: RunLease, now: dt.datetime, ttl: float) -> bool:
    return (now - row.heartbeat_at).total_seconds() < ttl and not _gone(row.holder)


def acquire(store: StoreBase, run_id: str, holder: str, *, ttl: float = LEASE_TTL_S) -> None:
    """Take the lease of ``run_id`` for ``holder``, or raise :class:`RunLeased` naming the live holder."""
    now = utcnow()
    try:
        with store.session() as s:
            row = s.get(RunLease, run_id)
            if row is None:
                s.add(RunLease(run_id=run_id, holder=holder, acquired_at=now, heartbeat_at=now))
                return
            if row.holder != holder and _live(row, now, ttl):
                age = (now - row.heartbeat_at).total_seconds()
                raise RunLeased(f"run {run_id} is being executed by {row.holder} (heartbeat {age:.0f} s ago); "
                                f"wait for it to end, or {ttl:.0f} s after it stopped")
            swapped = s.execute(sa.update(RunLease).where(
                RunLease.run_id == run_id, RunLease.holder == row.holder, RunLease.heartbeat_at == row.heartbeat_at,
            ).values(holder=holder, acquired_at=now, heartbeat_at=now).execution_options(synchronize_session=False))
            if swapped.rowcount != 1:  # type: ignore[attr-defined]
                raise RunLeased(f"run {run_id}: another launcher took its lease just now")
            log.warning("run %s: took over the dead lease of %s", run_id, row.holder)
    except RunLeased:
        raise
    except StoreError as exc:
        if isinstance(exc.__cause__, sa.exc.IntegrityError):  # a concurrent insert won the race
            raise RunLeased(f"run {run_id}: another launcher took its lease just now") from exc
        raise


def renew(store: StoreBase, run_id: str, holder: str) -> bool:
    """Refresh the heartbeat; False when ``holder`` no longer holds the lease."""
    with store.session() as s:
        done = s.execute(sa.update(RunLease).where(RunLease.run_id == run_id, RunLease.holder == holder)
                         .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))
        return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def release(store: StoreBase, run_id: str, holder: str) -> None:
    """Give the lease back (only the holder's own row is deleted)."""
    with store.session() as s:
        s.execute(sa.delete(RunLease).where(RunLease.run_id == run_id, RunLease.holder == holder))


class LeaseKeeper:
    """Hold a run's lease for a ``with`` block: acquire on entry, heartbeat in a thread, release on exit.

    Parameters
    ----------
    store : the store that holds the run.
    run_id : the run to execute.
    heartbeat : seconds between renewals.
    """

    def __init__(self, store: StoreBase, run_id: str, *, heartbeat: float = HEARTBEAT_S) -> None:
        self.store = store
        self.run_id = run_id
        self.heartbeat = heartbeat
        self.holder_ = new_holder()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        acquire(self.store, self.run_id, self.holder_)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not renew(self.store, self.run_id, self.holder_):
                    log.error("run %s: lost its lease (another launcher took it over)", self.run_id)
                    return
            except StoreError as exc:  # a locked or unreachable store: try again at the next beat
                log.warning("run %s: lease heartbeat failed: %s", self.run_id, exc)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            release(self.store, self.run_id, self.holder_)
        except StoreError as err:  # the lease then dies by its TTL
            log.warning("run %s: could not release its lease: %s", self.run_id, err)
