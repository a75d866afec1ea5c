"""Bad client replies are rejected with a logged reason and the round goes on (real Messages, real store)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from fedveil.config import load_config, to_dict
from fedveil.store import Store
from privacy.he.keys import write_keys
from server.strategies.fedavg import PrivateFedAvg, RoundFailed, RoundLog
from server.validation import weighted_mean

SHAPES = {"w": (3, 4), "b": (4,)}
DP = ConfigRecord({"dp": True, "accountant": "prv"})


def _arrays(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, dtype=np.float32) for k, s in SHAPES.items()}


def _metrics(client: int, n: int = 10, **extra: float) -> MetricRecord:
    base = {"num-examples": n, "epsilon": 1.0, "delta": 1e-5, "noise-multiplier": 1.1, "sample-rate": 0.1,
            "steps": 4, "partition-id": client, "train-loss": 2.0}
    base.update(extra)
    return MetricRecord(base)  # type: ignore[arg-type]


def _reply(node: int, content: RecordDict | None = None, error: str | None = None) -> Message:
    req = Message(RecordDict({}), dst_node_id=node, message_type="train")
    if error is not None:
        return Message(Error(code=0, reason=error), reply_to=req)
    assert content is not None
    return Message(content, reply_to=req)


def _good(node: int, value: float, n: int = 10) -> Message:
    return _reply(node, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in _arrays(value).items()}),
                                    "metrics": _metrics(node, n),
                                    "privacy": ConfigRecord({"dp": True, "accountant": "prv"})}))


@pytest.fixture()
def strategy(tmp_path: Path) -> tuple[PrivateFedAvg, Store, str]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(to_dict(load_config()), name="t", method="dp-sft", task="synthetic-text",
                              he_enabled=False, num_clients=6, num_rounds=1, seed=0)
    s = PrivateFedAvg(store=store, run_id=run_id, node_to_client={i: i for i in range(6)}, min_clients=2,
                      max_payload_bytes=10_000, max_grad_norm=1.0,
                      num_examples={0: 10, 1: 30, 2: 10, 3: 10, 4: 10, 5: 10})  # weights fixed at hello
    s.spec = __import__("server.validation", fromlist=["ArraySpec"]).ArraySpec(dict(SHAPES))
    s.round = RoundLog(started_at=datetime.now(UTC), t0=0.0)
    s._sampled_nodes = set(range(6))
    return s, store, run_id


def test_bad_replies_are_rejected_and_round_goes_on(strategy: tuple[PrivateFedAvg, Store, str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    s, store, run_id = strategy
    nan = _arrays(1.0)
    nan["w"][0, 0] = np.nan
    wrong = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(4, np.float32)}
    big = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32), "x": np.zeros(5000, np.float32)}
    replies = [
        _good(0, 1.0, n=10),
        _good(1, 3.0, n=30),
        _reply(2, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in nan.items()}), "metrics": _metrics(2),
                              "privacy": DP})),
        _reply(3, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in wrong.items()}), "metrics": _metrics(3),
                              "privacy": DP})),
        _reply(4, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in big.items()}), "metrics": _metrics(4),
                              "privacy": DP})),
        _reply(5, error="PrivacyBudgetExhausted: round 4 would raise epsilon to 2.3 > budget 2.0; refusing"),
    ]
    with caplog.at_level("WARNING", logger="fedveil.server"):
        arrays, metrics = s.aggregate_train(1, replies)
        s.aggregate_evaluate(1, [])
    assert arrays is not None and metrics is not None
    expected = weighted_mean([(_arrays(1.0), 10.0), (_arrays(3.0), 30.0)])  # only the two good clients
    for k, v in arrays.items():
        np.testing.assert_allclose(v.numpy(), expected[k])
    np.testing.assert_allclose(expected["w"], 2.5)
    run = store.get_run(run_id)
    events = {e["client_index"]: e for e in run["events"]}
    assert events[2]["kind"] == "rejected" and "NaN" in events[2]["reason"]
    assert events[3]["kind"] == "rejected" and "shape" in events[3]["reason"]
    assert events[4]["kind"] == "rejected" and "exceeds the limit" in events[4]["reason"]
    assert events[5]["kind"] == "refused-budget"
    assert run["rounds"][0]["num_rejected"] == 3 and run["rounds"][0]["status"] == "completed"
    assert len(run["privacy_ledger"]) == 2
    assert "rejected reply from client 2" in caplog.text


def test_missing_reply_is_recorded_as_dropped(strategy: tuple[PrivateFedAvg, Store, str]) -> None:
    s, store, run_id = strategy
    s._sampled_nodes = {0, 1, 2}
    s.aggregate_train(1, [_good(0, 1.0), _good(1, 1.0)])
    s.aggregate_evaluate(1, [])
    events = store.get_run(run_id)["events"]
    assert [(e["client_index"], e["kind"]) for e in events] == [(2, "dropped")]


def test_too_few_usable_replies_fail_the_round_cleanly(strategy: tuple[PrivateFedAvg, Store, str]) -> None:
    s, store, run_id = strategy
    s._sampled_nodes = {0, 1}
    bad = _reply(1, RecordDict({"metrics": _metrics(1), "privacy": DP}))  # no arrays at all
    with pytest.raises(RoundFailed, match="1 usable replies, fewer than min_clients = 2"):
        s.aggregate_train(1, [_good(0, 1.0), bad])
    run = store.get_run(run_id)
    assert run["rounds"][0]["status"] == "failed"
    assert run["events"][0]["reason"] == "reply has no ArrayRecord 'arrays'"
    assert run["privacy_ledger"] == []  # nothing half-written from a failed round


def test_non_finite_metrics_are_rejected(strategy: tuple[PrivateFedAvg, Store, str]) -> None:
    s, store, run_id = strategy
    s._sampled_nodes = {0, 1, 2}
    inf = _reply(2, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in _arrays(1.0).items()}),
                                "metrics": _metrics(2, epsilon=float("inf")), "privacy": DP}))
    s.aggregate_train(1, [_good(0, 1.0), _good(1, 1.0), inf])
    s.aggregate_evaluate(1, [])
    assert store.get_run(run_id)["events"][0]["reason"] == "metric 'epsilon' is not finite"


def test_unknown_message_type_is_refused_by_the_client() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 11, 1
    from flwr.app import Context
    ctx = Context(run_id=1, node_id=11, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    assert isinstance(client_app, ClientApp)
    with pytest.raises(ValueError, match="No query function registered"):
        client_app(Message(RecordDict({}), dst_node_id=11, message_type="query.nope"), ctx)


def test_tampered_ciphertext_is_rejected_by_he_strategy(tmp_path: Path) -> None:
    """A garbled payload from one client is rejected; the others are summed."""
    from privacy.he.layout import payload_arrays
    from privacy.he.keys import load_secret_context
    from privacy.he.packing import encrypt_arrays, payload_to_arrays
    from server.strategies.he_fedavg import HEFedAvg
    keys = tmp_path / "keys"
    write_keys(keys, "compact")
    cfg = load_config(None, ["he.enabled=true", f"he.key_dir='{keys}'"])
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(to_dict(cfg), name="t", method="dp-sft", task="synthetic-text", he_enabled=True,
                              num_clients=3, num_rounds=1, seed=0)
    s = HEFedAvg(cfg=cfg, run_dir=tmp_path, template=_arrays(0.0), store=store, run_id=run_id,
                 node_to_client={0: 0, 1: 1, 2: 2}, min_clients=2, max_payload_bytes=10**8, max_grad_norm=1.0)
    s.round = RoundLog(started_at=datetime.now(UTC), t0=0.0)
    s._sampled_nodes = {0, 1, 2}
    secret = load_secret_context(keys / "secret.ctx")
    replies = []
    for node, value in ((0, 0.5), (1, -0.25), (2, 0.1)):
        payload = encrypt_arrays(secret, payload_arrays(_arrays(value), cfg.he.value_scale, True), weight=1 / 3)
        wire = payload_to_arrays(payload)
        if node == 2:
            chunks = wire["he.chunks"].copy()
            chunks[100:200] = 7  # garbled in transit
            wire["he.chunks"] = chunks
        replies.append(_reply(node, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in wire.items()}),
                                                "metrics": _metrics(node), "privacy": DP})))
    arrays, _ = s.aggregate_train(1, replies)
    assert arrays is not None
    from client.he_client import decrypt_mean
    node = type("N", (), {"cfg": cfg, "extra": {"node-config": {"he-secret-context": str(keys / "secret.ctx")}}})()
    mean = decrypt_mean(node, arrays)
    np.testing.assert_allclose(mean["w"], (0.5 - 0.25) / 2, atol=1e-4)  # client 2 left out, weights re-normalised
    assert node.extra["he-verify-error"] < 1e-4
    s.aggregate_evaluate(1, [])
    events = store.get_run(run_id)["events"]
    assert [(e["client_index"], e["kind"]) for e in events] == [(2, "rejected")]
    assert "ciphertext rejected" in events[0]["reason"]
