"""Soft-label FD on digits: the strategy's aggregation by hand, rejected uploads, and real Flower runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from opacus.accountants import RDPAccountant

from client.fd_runtime import COUNTS, LABELS, SUMS, VOTES, received_targets
from client.fd_train import load_node
from fedveil.config import Config, load_config, to_dict, to_run_config
from fedveil.store import Store
from privacy.he.keys import load_public_context, load_secret_context, write_keys
from privacy.he.packing import encrypt_arrays, payload_to_arrays
from server.strategies.fd import SoftLabelFD
from tests.server.simtools import _cli

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "edgefd-digits.toml"
P, C = 20, 10


def _cfg(*extra: str) -> Config:
    return load_config(CONFIG, ["federation.clients=4", "federation.min_clients=2", "data.partition=iid",
                                f"fd.proxy_size={P}", *extra])


def _upload(votes: list[int], rows: dict[int, list[float]]) -> dict[str, np.ndarray]:
    labels = np.zeros((P, C), np.float32)
    for i, row in rows.items():
        labels[i, : len(row)] = row
    v = np.zeros(P, np.float32)
    v[votes] = 1
    return {LABELS: labels, VOTES: v}


A = _upload([0, 1], {0: [0.7, 0.3], 1: [0.2, 0.8]})
B = _upload([1, 2], {1: [0.6, 0.0, 0.4], 2: [0.0, 0.0, 1.0]})


def _reply(node: int, arrays: dict[str, np.ndarray] | None) -> Message:
    req = Message(RecordDict({}), dst_node_id=node, message_type="train")
    metrics = MetricRecord({"num-examples": 10, "epsilon": 1.0, "delta": 1e-5, "noise-multiplier": 1.1,
                            "sample-rate": 0.1, "steps": 4, "partition-id": node, "votes": 2.0})
    content = RecordDict({"metrics": metrics, "privacy": ConfigRecord({"dp": True, "accountant": "rdp"})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, reply_to=req)


def _strategy(tmp_path: Path, cfg: Config, he_context: object = None) -> tuple[SoftLabelFD, Store, str]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(to_dict(cfg), name="t", method="fd-kmeans", task="digits", he_enabled=cfg.he.enabled,
                              num_clients=8, num_rounds=1, seed=0)
    s = SoftLabelFD(mode="fd-kmeans", n_proxy=P, n_classes=C, he_context=he_context, store=store, run_id=run_id,
                    node_to_client={i: i for i in range(8)}, min_clients=2, max_payload_bytes=2**22,
                    max_grad_norm=1.0)
    s.open_round(range(8))
    return s, store, run_id


def _node_context(cfg: Config) -> Context:
    return Context(run_id=1, node_id=0, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config=to_run_config(cfg))  # type: ignore[arg-type]


@pytest.mark.parametrize("he", [False, True])
def test_aggregate_matches_hand_computation_and_drops_unvoted(tmp_path: Path, he: bool) -> None:
    expected_kept = [0, 1, 2]  # samples 3.. got no vote: dropped
    expected = np.zeros((3, C))
    expected[0, :2] = [0.7, 0.3]
    expected[1, :3] = [(0.2 + 0.6) / 2, 0.8 / 2, 0.4 / 2]
    expected[2, 2] = 1.0
    if he:
        keys = write_keys(tmp_path / "keys", "compact")
        cfg = _cfg("he.enabled=true", f"he.key_dir='{keys}'")
        secret = load_secret_context(keys / "secret.ctx")
        uploads = [{k: v for k, v in payload_to_arrays(encrypt_arrays(secret, up, weight=1 / 4)).items()}
                   for up in (A, B)]
        s, _, _ = _strategy(tmp_path, cfg, load_public_context(keys / "public.ctx"))
    else:
        cfg = _cfg("he.enabled=false")
        uploads = [A, B]
        s, _, _ = _strategy(tmp_path, cfg)
    aggregate, _ = s.aggregate_train(1, [_reply(0, uploads[0]), _reply(1, uploads[1])])
    assert aggregate is not None
    if not he:  # the server's plain sums, before any division
        assert np.allclose(aggregate[SUMS].numpy(), A[LABELS] + B[LABELS])
        assert np.array_equal(aggregate[COUNTS].numpy(), A[VOTES] + B[VOTES])
    node = load_node(_node_context(cfg))
    targets, kept, _ = received_targets(node, _node_context(cfg), aggregate, ConfigRecord({"he-clients": 4.0}))
    assert kept.tolist() == expected_kept
    assert np.allclose(targets, expected, atol=1e-3 if he else 1e-6)


def test_malformed_uploads_are_rejected_and_the_round_goes_on(tmp_path: Path) -> None:
    cfg = _cfg("he.enabled=false")
    s, store, run_id = _strategy(tmp_path, cfg)
    nan = {k: v.copy() for k, v in A.items()}
    nan[LABELS][0, 0] = np.nan
    two = {k: v.copy() for k, v in A.items()}
    two[VOTES][5] = 2
    unnormalised = {k: v.copy() for k, v in A.items()}
    unnormalised[LABELS][0] *= 0.5
    replies = [_reply(0, A), _reply(1, B),
               _reply(2, {LABELS: np.zeros((P, 9), np.float32), VOTES: np.zeros(P, np.float32)}),
               _reply(3, nan), _reply(4, two), _reply(5, unnormalised), _reply(6, None),
               _reply(7, {**A, "extra": np.zeros(2, np.float32)})]
    aggregate, _ = s.aggregate_train(1, replies)
    s.aggregate_evaluate(1, [])
    assert aggregate is not None
    assert np.allclose(aggregate[SUMS].numpy(), A[LABELS] + B[LABELS])
    run = store.get_run(run_id)
    reasons = {e["client_index"]: e["reason"] for e in run["events"] if e["kind"] == "rejected"}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert "shapes" in reasons[2] and "NaN" in reasons[3] and "0 or 1" in reasons[4]
    assert "sum to 1" in reasons[5] and "no ArrayRecord" in reasons[6] and "exactly" in reasons[7]
    assert run["rounds"][0]["status"] == "completed" and run["rounds"][0]["num_rejected"] == 6
    votes = [m for m in run["metrics"] if m["name"] == "votes"]
    assert {m["client"] for m in votes} == {0, 1, None}


def test_bad_ciphertexts_are_rejected_and_the_round_goes_on(tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "keys", "compact")
    other = write_keys(tmp_path / "other", "compact")
    cfg = _cfg("he.enabled=true", f"he.key_dir='{keys}'")
    secret = load_secret_context(keys / "secret.ctx")
    good = [payload_to_arrays(encrypt_arrays(secret, up, weight=1 / 4)) for up in (A, B)]
    garbled = {k: v.copy() for k, v in good[0].items()}
    garbled["he.chunks"][200:260] ^= 0x5A
    foreign = payload_to_arrays(encrypt_arrays(load_secret_context(other / "secret.ctx"), A, weight=1 / 4))
    s, store, run_id = _strategy(tmp_path, cfg, load_public_context(keys / "public.ctx"))
    aggregate, _ = s.aggregate_train(1, [_reply(0, good[0]), _reply(1, good[1]), _reply(2, garbled),
                                         _reply(3, foreign), _reply(4, A)])
    s.aggregate_evaluate(1, [])
    assert aggregate is not None
    run = store.get_run(run_id)
    reasons = {e["client_index"]: e["reason"] for e in run["events"] if e["kind"] == "rejected"}
    assert sorted(reasons) == [2, 3, 4]
    assert "corrupt" in reasons[2] and "wrong_key" in reasons[3] and "ciphertext rejected" in reasons[4]
    node = load_node(_node_context(cfg))
    targets, kept, _ = received_targets(node, _node_context(cfg), aggregate, ConfigRecord({"he-clients": 4.0}))
    assert kept.tolist() == [0, 1, 2]  # only A and B were added
    assert [h["client_index"] for h in run["he_records"]] == [None]


SMALL_RUN = ["--set", "federation.clients=4", "--set", "federation.min_clients=2", "--set", "federation.rounds=2",
             "--set", "data.partition=iid", "--set", "fd.proxy_size=60", "--set", "fd.warmup_epochs=1",
             "--set", "fd.local_epochs=1", "--set", "privacy.accountant=rdp"]


def _run(tmp_path: Path, *overrides: str) -> dict[str, object]:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    proc = _cli("run", "-c", str(CONFIG), *SMALL_RUN, *overrides, "--db", db, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads(_cli("runs", "--format", "json", "--db", db, cwd=tmp_path).stdout)
    shown: dict[str, object] = json.loads(_cli("show", runs[0]["id"], "--format", "json", "--db", db,
                                               cwd=tmp_path).stdout)
    return shown


def _check_rounds(shown: dict[str, object], clients: int) -> None:
    run: dict = shown["run"]  # type: ignore[assignment]
    assert run["status"] == "completed" and run["task"] == "digits"
    rounds: list = shown["rounds"]  # type: ignore[assignment]
    assert [(r["server_round"], r["status"], r["num_replied"]) for r in rounds] == \
        [(1, "completed", clients), (2, "completed", clients)]
    metrics: list = shown["metrics"]  # type: ignore[assignment]
    for rnd in (1, 2):
        per = [m for m in metrics if m["round"] == rnd]
        acc = [m["value"] for m in per if m["name"] == "accuracy" and m["client"] is None]
        client_acc = {m["client"]: m["value"] for m in per if m["name"] == "client-accuracy"}
        assert len(acc) == 1 and 0 <= acc[0] <= 1 and sorted(client_acc) == list(range(clients))
        assert acc[0] == pytest.approx(np.mean(list(client_acc.values())))
        votes = {m["client"]: m["value"] for m in per if m["name"] == "votes"}
        assert sorted(votes, key=str) == [*range(clients), None]
        assert votes[None] == sum(v for c, v in votes.items() if c is not None) > 0
    ledger: list = shown["privacy_ledger"]  # type: ignore[assignment]
    assert len(ledger) == 2 * clients
    for row in ledger:
        acc_ = RDPAccountant()
        acc_.history = [(row["noise_multiplier"], row["sample_rate"], row["steps"])]
        assert row["epsilon"] == pytest.approx(acc_.get_epsilon(delta=row["delta"]), rel=1e-6)
        assert 0 < row["epsilon"] <= 2.0 + 1e-9
    by_client: dict[int, list[float]] = {}
    for row in sorted(ledger, key=lambda r: r["server_round"]):
        by_client.setdefault(row["client_index"], []).append(row["epsilon"])
    assert all(e[0] < e[1] for e in by_client.values())
    assert "post-processing" in run["privacy_statement"] and "proxy" in run["privacy_statement"]


@pytest.mark.slow
def test_fd_run_without_he(tmp_path: Path) -> None:
    shown = _run(tmp_path, "--set", "he.enabled=false")
    _check_rounds(shown, 4)
    assert shown["he_records"] == [] and shown["events"] == []
    assert "Aggregation in plaintext" in shown["run"]["privacy_statement"]  # type: ignore[index]


@pytest.mark.slow
def test_fd_run_with_he_and_swing(tmp_path: Path) -> None:
    shown = _run(tmp_path, "--set", "he.enabled=true", "--set", "distill.swing=true", "--set",
                 "federation.clients=3")
    _check_rounds(shown, 3)
    he: list = shown["he_records"]  # type: ignore[assignment]
    for rnd in (1, 2):
        rows = [h for h in he if h["server_round"] == rnd]
        assert sorted(h["client_index"] for h in rows if h["client_index"] is not None) == [0, 1, 2]
        assert all(h["bytes_sent"] > 0 for h in rows)
        assert [h for h in rows if h["client_index"] is None][0]["aggregate_seconds"] >= 0
    statement = shown["run"]["privacy_statement"]  # type: ignore[index]
    assert "CKKS" in statement and "heuristic" in statement
