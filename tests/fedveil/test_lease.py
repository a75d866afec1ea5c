"""Run leases (fedveil/store/lease.py): one launcher per run, a dead holder can be replaced, races have one winner."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from fedveil.store import Store
from fedveil.store import lease
from fedveil.store.lease import LeaseKeeper, RunLeased
from fedveil.store.models import RunLease


@pytest.fixture()
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as s:
        with s.session() as session:
            session.execute(sa.delete(RunLease))
        yield s


def _row(store: Store, run_id: str) -> RunLease | None:
    with store.session(readonly=True) as s:
        return s.get(RunLease, run_id)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # exited and reaped: no process has this pid (pids are not reused this fast)


def test_second_holder_is_refused_until_release(store: Store) -> None:
    a, b = lease.new_holder(), lease.new_holder()
    assert a != b and a.startswith(f"{socket.gethostname()}:")
    lease.acquire(store, "r1", a)
    with pytest.raises(RunLeased, match="run r1 is being executed by .*heartbeat 0 s ago"):
        lease.acquire(store, "r1", b)
    lease.acquire(store, "r2", b)  # other runs are not affected
    assert not lease.renew(store, "r1", b) and lease.renew(store, "r1", a)
    lease.release(store, "r1", b)  # not b's lease: nothing happens
    assert _row(store, "r1") is not None and _row(store, "r1").holder == a  # type: ignore[union-attr]
    lease.release(store, "r1", a)
    lease.acquire(store, "r1", b)
    assert _row(store, "r1").holder == b  # type: ignore[union-attr]


def test_dead_holder_on_this_host_is_replaced_at_once(store: Store) -> None:
    dead = f"{socket.gethostname()}:{_dead_pid()}:beef"
    lease.acquire(store, "r1", dead)
    lease.acquire(store, "r1", lease.new_holder())  # no wait for the TTL
    # A live holder on another host is only replaced after its heartbeat is older than the TTL.
    other = "elsewhere.example:1:cafe"
    with store.session() as s:
        s.execute(sa.update(RunLease).values(holder=other))
    with pytest.raises(RunLeased):
        lease.acquire(store, "r1", lease.new_holder())
    with store.session() as s:
        s.execute(sa.update(RunLease).values(
            heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=lease.LEASE_TTL_S + 1)))
    mine = lease.new_holder()
    lease.acquire(store, "r1", mine)
    assert _row(store, "r1").holder == mine  # type: ignore[union-attr]


def test_racing_launchers_have_exactly_one_winner(store: Store) -> None:
    lease.acquire(store, "r1", f"{socket.gethostname()}:{_dead_pid()}:dead")  # a dead lease both try to take
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def take() -> None:
        holder = lease.new_holder()
        barrier.wait()
        try:
            lease.acquire(store, "r1", holder)
            outcomes.append("won")
        except RunLeased:
            outcomes.append("refused")

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]


def test_keeper_heartbeats_and_releases(store: Store) -> None:
    with LeaseKeeper(store, "r1", heartbeat=0.05) as keeper:
        first = _row(store, "r1")
        assert first is not None and first.holder == keeper.holder_
        threading.Event().wait(0.3)
        later = _row(store, "r1")
        assert later is not None and later.heartbeat_at > first.heartbeat_at
        with pytest.raises(RunLeased), LeaseKeeper(store, "r1"):
            pass
    assert _row(store, "r1") is None
