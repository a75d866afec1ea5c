"""Round trips through fedveil.store on real SQLite files, and on PostgreSQL when ``FEDVEIL_TEST_PG_URL`` is set."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fedveil.store import (
    EPS_LB_FLAG,
    CanaryRow,
    EventRow,
    ExposureRow,
    HERow,
    LedgerRow,
    MetricRow,
    RunNotFound,
    Store,
    StoreError,
    default_db_url,
    sqlite_url,
)
from fedveil.store.models import Base

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
# Tables whose rows belong to a run (a foreign key to runs or to one of its children); run_leases is keyed
# by run id without one (a lease can exist before its run row).
CHILD_TABLES = [t.name for t in Base.metadata.sorted_tables if t.foreign_keys]


def _run(store: Store, **overrides: object) -> str:
    kwargs: dict[str, object] = {
        "name": "demo", "method": "dp-opd", "task": "synthetic-text", "he_enabled": True,
        "num_clients": 2, "num_rounds": 3, "seed": 7,
    }
    kwargs.update(overrides)
    return store.create_run({"train": {"lr": 0.002, "steps": [1, 2]}, "he": {"enabled": True}}, **kwargs)  # type: ignore[arg-type]


def _ledger(client: int, eps: float, steps: int, server_round: int | None = None) -> LedgerRow:
    return LedgerRow(client, eps, 1e-5, 0.96, 0.01, steps, "prv", 1.0, "ghost", server_round)


def _round(store: Store, run_id: str, r: int, **kw: object) -> None:
    args: dict[str, object] = {
        "status": "completed",
        "started_at": T0 + dt.timedelta(minutes=r),
        "finished_at": T0 + dt.timedelta(minutes=r, seconds=30),
        "num_sampled": 2,
        "num_replied": 2,
    }
    args.update(kw)
    store.record_round(run_id, r, **args)  # type: ignore[arg-type]


@pytest.fixture()
def store(db_url: str) -> Iterator[Store]:
    # db_url (tests/fedveil/conftest.py): every test using this fixture runs on SQLite and, when given, PostgreSQL.
    s = Store(db_url)
    yield s
    s.close()


def _count(store: Store, table: str, run_id: str | None = None) -> int:
    with store.engine.connect() as conn:
        sql = f"SELECT COUNT(*) FROM {table}" + (" WHERE run_id = :r" if run_id else "")
        return int(conn.execute(sa.text(sql), {"r": run_id}).scalar_one())


def _populate(store: Store, tmp_path: Path) -> str:
    rid = _run(store, run_dir=tmp_path / "run")
    store.mark_running(rid)
    store.register_client(rid, 0, node_id=111, num_examples=50, teacher_provenance="private-non-dp")
    store.register_client(rid, 1, node_id="222", num_examples=60)
    store.register_client(rid, 1, node_id="223", num_examples=61, teacher_provenance="dp", teacher_epsilon=8.0)
    store.register_client(rid, 0, node_id=111, teacher_provenance="private-non-dp")  # keeps 50 examples
    for r, ppl, acc in ((1, 40.0, 0.2), (2, 25.0, 0.4)):
        _round(
            store, rid, r,
            metrics=[MetricRow("perplexity", ppl), MetricRow("accuracy", acc),
                     MetricRow("train_loss", 3.0 / r, client_index=0)],
            ledger=[_ledger(0, 0.5 * r, 10 * r), _ledger(1, 0.7 * r, 12 * r)],
            he=[HERow("compact", 1000, client_index=0, encrypt_seconds=0.1),
                HERow("compact", 900, aggregate_seconds=0.02, max_abs_error=1e-7)],
            events=[EventRow("dropped", "timeout", client_index=1, node_id="223")] if r == 2 else [],
        )
    # A per-client perplexity at a later round must not count as the global utility.
    store.add_metrics(rid, [MetricRow("perplexity", 1.0, server_round=3, client_index=1)])
    store.add_events(rid, [EventRow("refused-budget", "eps 2.1 > 2.0", client_index=1, server_round=3)])
    store.add_canaries(rid, [
        CanaryRow("c0", 0, "my account number is {d}", "123456", 4, True, client_index=0),
        CanaryRow("r0", 0, "my account number is {d}", "654321", 0, False, one_run=True),
    ])
    store.add_audit(rid, "exposure", "student", params={"n_ref": 16}, summary={"max": 3.0},
                    exposures=[ExposureRow("c0", 4, 12.5, 3.0, 16, 3.4),
                               ExposureRow("c1", 16, 2.0, 4.0, 16, 40.0, True)])
    store.add_audit(rid, "exposure", "teacher", client_index=0, exposures=[ExposureRow("c0", 4, 10.0, 2.5, 16)])
    store.add_audit(rid, "mia", "global", server_round=2, summary={"auc": 0.51, "tpr_at_1pct": float("nan")})
    store.add_epsilon_bound(rid, method="clopper-pearson", epsilon_lb=0.3, accountant_epsilon=1.4)
    store.add_epsilon_bound(rid, method="one-run", epsilon_lb=2.0, accountant_epsilon=1.4, details={"m": 100})
    art = tmp_path / "model.bin"
    art.write_bytes(b"weights" * 100)
    store.add_artifact(rid, "checkpoint", art)
    store.set_privacy_statement(rid, "DP-SGD sigma=0.96 ...")
    store.complete_run(rid, wall_seconds=12.5, peak_rss_mb=300.0)
    return rid


def test_round_trip_every_table(store: Store, tmp_path: Path) -> None:
    rid = _populate(store, tmp_path)
    got = store.get_run(rid)
    json.dumps(got, allow_nan=False)  # strict JSON, no datetimes or NaN left
    assert list(got) == ["run", "clients", "rounds", "metrics", "privacy_ledger", "he_records", "events",
                         "canaries", "audits", "epsilon_bounds", "artifacts"]
    run = got["run"]
    assert run["id"] == rid and run["status"] == "completed" and run["he_enabled"] is True
    assert run["config"] == {"train": {"lr": 0.002, "steps": [1, 2]}, "he": {"enabled": True}}
    assert run["last_complete_round"] == 2 and run["wall_seconds"] == 12.5 and run["peak_rss_mb"] == 300.0
    assert run["privacy_statement"].startswith("DP-SGD") and run["run_dir"] == str(tmp_path / "run")
    assert run["flags"] == [EPS_LB_FLAG]
    for key in ("created_at", "started_at", "finished_at"):
        assert dt.datetime.fromisoformat(run[key]).utcoffset() == dt.timedelta(0)
    assert got["clients"] == [
        {"client_index": 0, "node_id": "111", "num_examples": 50, "teacher_provenance": "private-non-dp",
         "teacher_epsilon": None},
        {"client_index": 1, "node_id": "223", "num_examples": 61, "teacher_provenance": "dp", "teacher_epsilon": 8.0},
    ]
    r1 = got["rounds"][0]
    assert [r["server_round"] for r in got["rounds"]] == [1, 2]
    assert r1["wall_seconds"] == 30.0 and r1["num_failed"] == 0
    assert dt.datetime.fromisoformat(r1["started_at"]) == T0 + dt.timedelta(minutes=1)
    assert {"round": 2, "client": None, "name": "perplexity", "value": 25.0} in got["metrics"]
    assert {"round": 1, "client": 0, "name": "train_loss", "value": 3.0} in got["metrics"]
    assert len(got["metrics"]) == 7
    assert [(e["server_round"], e["client_index"], e["steps"]) for e in got["privacy_ledger"]] == [
        (1, 0, 10), (1, 1, 12), (2, 0, 20), (2, 1, 24)]
    assert got["privacy_ledger"][0]["grad_sample_mode"] == "ghost"
    assert got["he_records"][1] == {"server_round": 1, "client_index": None, "profile": "compact", "bytes_sent": 900,
                                    "encrypt_seconds": None, "aggregate_seconds": 0.02, "decrypt_seconds": None,
                                    "max_abs_error": 1e-7}
    assert [(e["server_round"], e["kind"]) for e in got["events"]] == [(2, "dropped"), (3, "refused-budget")]
    assert got["canaries"][0]["secret"] == "123456" and got["canaries"][1]["one_run"] is True
    audits = got["audits"]
    assert [(a["model"], len(a["exposures"])) for a in audits] == [("student", 2), ("teacher", 1), ("global", 0)]
    assert audits[0]["exposures"][1]["extrapolated_is_bound"] is True
    assert audits[2]["summary"] == {"auc": 0.51, "tpr_at_1pct": "nan"}
    assert [b["flagged"] for b in got["epsilon_bounds"]] == [False, True]
    assert got["epsilon_bounds"][1]["details"] == {"m": 100}
    (artifact,) = got["artifacts"]
    assert artifact["bytes"] == 700
    assert artifact["sha256"] == hashlib.sha256(b"weights" * 100).hexdigest()
    assert artifact["path"] == str((tmp_path / "model.bin").resolve())


def test_list_runs_summary_values(store: Store, tmp_path: Path) -> None:
    first = _populate(store, tmp_path)
    second = _run(store, name="empty", he_enabled=False)
    summaries = store.list_runs()
    assert [s["id"] for s in summaries] == [second, first]  # newest first
    full, empty = summaries[1], summaries[0]
    assert full["final_perplexity"] == 25.0 and full["final_accuracy"] == 0.4
    assert full["max_epsilon"] == pytest.approx(1.4)
    assert full["worst_exposure"] == 4.0
    assert full["eps_lb_exceeds_claim"] is True
    assert full["status"] == "completed" and full["num_clients"] == 2 and "config" not in full
    assert empty["final_perplexity"] is None and empty["max_epsilon"] is None and empty["worst_exposure"] is None
    assert empty["eps_lb_exceeds_claim"] is False and empty["status"] == "pending"
    json.dumps(summaries, allow_nan=False)
    assert store.run_ids() == [first, second]


def test_latest_ledger_per_client(store: Store) -> None:
    rid = _run(store)
    _round(store, rid, 1, ledger=[_ledger(0, 0.5, 10), _ledger(1, 0.6, 10)])
    _round(store, rid, 2, ledger=[_ledger(0, 0.9, 20)])  # client 1 sat out round 2
    latest = store.latest_ledger(rid)
    assert {k: (v["server_round"], v["epsilon"], v["steps"]) for k, v in latest.items()} == {
        0: (2, 0.9, 20), 1: (1, 0.6, 10)}
    assert store.latest_ledger(_run(store)) == {}


def test_sqlite_pragmas(store: Store) -> None:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_reopen_is_idempotent(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "fv.db")
    with Store(url) as s1:
        rid = _run(s1)
    for _ in range(2):
        with Store(url) as s2:
            assert s2.get_run(rid)["run"]["name"] == "demo"
            assert len(s2.list_runs()) == 1
            assert _count(s2, "alembic_version") == 1
    # A plain path is accepted as a SQLite file.
    with Store(str(tmp_path / "fv.db")) as s3:
        assert s3.run_ids() == [rid]


def test_bad_urls_give_one_line_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        "nosuchdialect://user:hunter2@host/db",
        "postgresql+nosuchdriver://user:hunter2@localhost/db",
        f"sqlite:///{blocker}/sub/fv.db",
        f"sqlite:///{tmp_path}",  # a directory, not a database file
    ]
    for url in cases:
        with pytest.raises(StoreError) as info:
            Store(url)
        message = str(info.value)
        assert "\n" not in message, message
        assert "hunter2" not in message
        assert url.replace("hunter2", "***") in message


def test_missing_postgresql_driver_names_the_extra() -> None:
    # pg8000 is a real SQLAlchemy driver fedveil does not install: the message says what to install instead.
    with pytest.raises(StoreError) as info:
        Store("postgresql+pg8000://user:hunter2@localhost/db")
    message = str(info.value)
    assert "missing database driver" in message and "fedveil[postgres]" in message
    assert "hunter2" not in message and "\n" not in message


def test_unknown_run_id(store: Store) -> None:
    calls = [
        lambda: store.get_run("nope"),
        lambda: store.mark_running("nope"),
        lambda: store.complete_run("nope"),
        lambda: store.latest_ledger("nope"),
        lambda: store.add_metrics("nope", [MetricRow("x", 1.0)]),
        lambda: store.add_audit("nope", "mia", "global"),
        lambda: store.register_client("nope", 0, num_examples=1),
        lambda: _round(store, "nope", 1),
    ]
    for call in calls:
        with pytest.raises(RunNotFound) as info:
            call()
        assert str(info.value) == "unknown run id 'nope'"
        assert isinstance(info.value, StoreError)


def test_record_round_is_atomic(store: Store) -> None:
    rid = _run(store)
    _round(store, rid, 1, ledger=[_ledger(0, 0.5, 10)])
    before = store.get_run(rid)
    with pytest.raises(StoreError, match="(?i)unique"):  # SQLite says UNIQUE, PostgreSQL unique
        _round(store, rid, 2, metrics=[MetricRow("perplexity", 9.0)], he=[HERow("compact", 10)],
               events=[EventRow("failed", "boom")], ledger=[_ledger(0, 0.9, 20), _ledger(0, 0.95, 21)])
    with pytest.raises(ValueError, match="event kind"):
        _round(store, rid, 2, metrics=[MetricRow("perplexity", 9.0)], events=[EventRow("exploded", "?")])
    with pytest.raises(ValueError, match="ledger epsilon"):
        _round(store, rid, 2, ledger=[_ledger(0, float("nan"), 20)])
    after = store.get_run(rid)
    assert after == before
    assert after["run"]["last_complete_round"] == 1 and len(after["rounds"]) == 1


def test_failed_round_can_be_retried(store: Store) -> None:
    rid = _run(store)
    _round(store, rid, 1, status="failed", num_replied=0, num_failed=2, ledger=[_ledger(0, 0.5, 10)],
           metrics=[MetricRow("perplexity", float("nan"))], events=[EventRow("failed", "oom", client_index=1)])
    assert store.get_run(rid)["run"]["last_complete_round"] == 0
    assert store.get_run(rid)["metrics"][0]["value"] is None  # NaN is stored as NULL
    _round(store, rid, 1, ledger=[_ledger(0, 0.6, 12)], metrics=[MetricRow("perplexity", 30.0)])
    got = store.get_run(rid)
    assert [(r["server_round"], r["status"]) for r in got["rounds"]] == [(1, "completed")]
    assert [e["steps"] for e in got["privacy_ledger"]] == [12]
    assert [m["value"] for m in got["metrics"]] == [30.0]
    assert len(got["events"]) == 1  # the log of what happened is kept
    assert got["run"]["last_complete_round"] == 1
    with pytest.raises(StoreError, match="already recorded as completed"):
        _round(store, rid, 1)


def test_fail_run_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "fv.db"
    store = Store(sqlite_url(path), busy_timeout_ms=50)
    rid = _run(store)
    assert store.fail_run("nope", "x") is False
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    assert store.fail_run(rid, "RuntimeError: boom") is False  # database is locked
    assert store.get_run(rid)["run"]["status"] == "pending"  # WAL: reads go on beside a writer
    locker.execute("ROLLBACK")
    assert store.fail_run(rid, "RuntimeError: boom", wall_seconds=3.0) is True
    run = store.get_run(rid)["run"]
    assert run["status"] == "failed" and run["error"] == "RuntimeError: boom" and run["finished_at"]
    store.mark_running(rid)  # resume clears the error
    assert store.get_run(rid)["run"]["error"] is None
    locker.execute("PRAGMA foreign_keys = OFF")
    locker.execute("DROP TABLE runs")
    locker.close()
    assert store.fail_run(rid, "again") is False  # table gone
    store.close()


def test_delete_cascades(store: Store, tmp_path: Path) -> None:
    doomed = _populate(store, tmp_path)
    kept = _populate(store, tmp_path)
    assert all(_count(store, t) > 0 for t in CHILD_TABLES)
    store.delete_run(doomed)
    with pytest.raises(RunNotFound):
        store.get_run(doomed)
    for table in CHILD_TABLES:
        if table != "exposures":
            assert _count(store, table, doomed) == 0, table
    assert _count(store, "exposures") == 3  # only the kept run's audits remain
    assert len(store.get_run(kept)["audits"]) == 3
    # The cascade is the database's own (foreign keys ON), not ORM bookkeeping.
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM runs"))
    assert all(_count(store, t) == 0 for t in CHILD_TABLES)


def test_session_is_one_transaction(store: Store) -> None:
    from fedveil.store.models import Run

    rid = _run(store)
    with pytest.raises(RuntimeError), store.session() as s:
        s.get(Run, rid).name = "renamed"  # type: ignore[union-attr]
        s.flush()
        raise RuntimeError("crash mid-transaction")
    assert store.get_run(rid)["run"]["name"] == "demo"


def test_bad_values_are_named(store: Store) -> None:
    rid = _run(store)
    with pytest.raises(ValueError, match="round status must be one of 'completed', 'failed'"):
        _round(store, rid, 1, status="done")
    with pytest.raises(ValueError, match="teacher_provenance"):
        store.register_client(rid, 0, num_examples=3, teacher_provenance="stolen")
    with pytest.raises(ValueError, match="client 7 .* is new: num_examples is required"):
        store.register_client(rid, 7, teacher_provenance="public")
    with pytest.raises(ValueError, match="num_clients"):
        _run(store, num_clients=-1)
    with pytest.raises(TypeError, match=r"config\['x'\]"):
        store.create_run({"x": object()}, name="n", method="m", task="t", he_enabled=False,
                         num_clients=1, num_rounds=1, seed=0)
    with pytest.raises(StoreError, match="already exists"):
        _run(store, run_id=rid)
    with pytest.raises(ValueError, match="round 5"):
        _round(store, rid, 1, metrics=[MetricRow("x", 1.0, server_round=5)])
    with pytest.raises(FileNotFoundError):
        store.add_artifact(rid, "checkpoint", "/no/such/file")


def test_naive_datetimes_are_utc(store: Store) -> None:
    rid = _run(store)
    naive = dt.datetime(2025, 1, 1, 8, 0)
    _round(store, rid, 1, started_at=naive, finished_at=naive + dt.timedelta(seconds=5))
    started = store.get_run(rid)["rounds"][0]["started_at"]
    assert started == "2025-01-01T08:00:00+00:00"


def test_default_db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDVEIL_DB", raising=False)
    assert default_db_url() == f"sqlite:///{tmp_path / 'runs' / 'fedveil.db'}"
    monkeypatch.setenv("FEDVEIL_DB", "postgresql://u:p@db/fv")
    assert default_db_url() == "postgresql://u:p@db/fv"
    monkeypatch.setenv("FEDVEIL_DB", "other.db")
    assert default_db_url() == f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.delenv("FEDVEIL_DB")
    with Store(default_db_url()) as s:  # creates ./runs/
        assert s.list_runs() == []
    assert (tmp_path / "runs" / "fedveil.db").is_file()


def test_concurrent_writers_queue(tmp_path: Path) -> None:
    # Separate Store objects (separate engines, like separate processes) opening a new file at
    # once: the migration runs once, and read-then-write transactions wait instead of failing.
    url = sqlite_url(tmp_path / "shared.db")
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            with Store(url) as store:
                for _ in range(5):
                    rid = _run(store)
                    store.add_flag(rid, "x")
                    store.list_runs()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(url) as store:
        assert len(store.list_runs()) == 15


def test_headline_exposure_ignores_unreleased_models(store: Store) -> None:
    """Issue 20: a run's worst exposure is over the released models (students, global) only; the teacher and
    the fine-tuned baseline never leave their node, so their 10.97 bits must not become the run's number."""
    run_id = _run(store)

    def audit(model: str, bits: float) -> None:
        store.add_audit(run_id, "exposure", model, client_index=0,
                        exposures=[ExposureRow("c", 16, 30.0, bits, 2000)])

    audit("teacher", 10.97)
    audit("finetuned", 10.5)
    assert store.list_runs()[0]["worst_exposure"] is None  # nothing released was audited
    audit("student", 4.06)
    audit("global", 3.5)
    assert store.list_runs()[0]["worst_exposure"] == pytest.approx(4.06)
