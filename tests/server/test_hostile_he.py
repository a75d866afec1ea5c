"""Hostile clients under HE (issue 14 items 2-4): real CKKS payloads through the real HEFedAvg, checked by
the key holders' decrypt (client.he_client.decrypt_mean). The server cannot see weights or nonces inside a
ciphertext; what it accepted is what it tells the clients, and honest clients refuse an aggregate that
does not decrypt to it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.he_client import AggregateRefused, decrypt_mean
from fedveil.config import load_config, to_dict
from fedveil.store import Store
from privacy.he.keys import load_secret_context, write_keys
from privacy.he.layout import payload_arrays
from privacy.he.packing import EncryptedPayload, encrypt_arrays, payload_to_arrays
from server.strategies.fedavg import RoundLog
from server.strategies.he_fedavg import HEFedAvg

SHAPE = (4, 3)
COUNTS = {0: 10, 1: 20, 2: 30}  # hello-declared record counts: the only weights the server uses
SCALE = sum(COUNTS.values())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("he")
    write_keys(root / "fed", "compact")
    write_keys(root / "other", "compact")
    return {"fed": root / "fed", "other": root / "other"}


def _strategy(tmp_path: Path, keys: dict[str, Path]) -> tuple[HEFedAvg, Any, Store, str]:
    cfg = load_config(None, ["he.enabled=true", f"he.key_dir='{keys['fed']}'"])
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(to_dict(cfg), name="t", method="dp-sft", task="synthetic-text", he_enabled=True,
                              num_clients=3, num_rounds=2, seed=0)
    s = HEFedAvg(cfg=cfg, run_dir=tmp_path, template={"w": np.zeros(SHAPE, np.float32)}, store=store,
                 run_id=run_id, node_to_client={n: n for n in COUNTS}, min_clients=2, max_payload_bytes=10**8,
                 max_grad_norm=1.0, num_examples=dict(COUNTS))
    return s, cfg, store, run_id


def _payload(cfg: Any, key_dir: Path, value: float, weight: float, nonce: str) -> EncryptedPayload:
    arrays = payload_arrays({"w": np.full(SHAPE, value, np.float32)}, cfg.he.value_scale, True, nonce)
    return encrypt_arrays(load_secret_context(key_dir / "secret.ctx"), arrays, weight=weight, profile="compact")


def _reply(node: int, payload: EncryptedPayload, nonce: str) -> Message:
    metrics = MetricRecord({"num-examples": COUNTS[node], "epsilon": 1.0, "delta": 1e-5, "noise-multiplier": 1.1,
                            "sample-rate": 0.1, "steps": 4, "partition-id": node})
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in payload_to_arrays(payload).items()}),
                          "metrics": metrics, "privacy": ConfigRecord({"dp": True, "accountant": "prv"}),
                          "binding": ConfigRecord({"round-nonce": nonce})})
    return Message(content, reply_to=Message(RecordDict({}), dst_node_id=node, message_type="train"))


def _round(s: HEFedAvg, rnd: int, nonce: str, replies: list[Message]) -> ArrayRecord:
    s.round, s.nonce, s._sampled_nodes = RoundLog(started_at=datetime.now(UTC), t0=0.0), nonce, set(COUNTS)
    arrays, _ = s.aggregate_train(rnd, replies)
    assert arrays is not None
    return arrays


def _decrypt(cfg: Any, keys: dict[str, Path], arrays: ArrayRecord, expect: tuple[str, float] | None) -> dict:
    secret = {"he-secret-context": str(keys["fed"] / "secret.ctx")}
    node = type("N", (), {"cfg": cfg, "extra": {"node-config": secret}})()
    return decrypt_mean(node, arrays, expect)


def _honest(cfg: Any, keys: dict[str, Path], nonce: str, values: dict[int, float]) -> list[Message]:
    return [_reply(n, _payload(cfg, keys["fed"], v, COUNTS[n] / SCALE, nonce), nonce) for n, v in values.items()]


def test_honest_aggregate_decrypts_to_the_hello_weighted_mean(tmp_path: Path, keys: dict[str, Path]) -> None:
    s, cfg, _, _ = _strategy(tmp_path, keys)
    arrays = _round(s, 1, "n1", _honest(cfg, keys, "n1", {0: 0.6, 1: -0.3, 2: 0.9}))
    assert s._aggregated == ("n1", pytest.approx(1.0))
    mean = _decrypt(cfg, keys, arrays, s._aggregated)
    np.testing.assert_allclose(mean["w"], (10 * 0.6 - 20 * 0.3 + 30 * 0.9) / 60, atol=1e-4)
    # the server tells every client what it aggregated, in train and evaluate instructions alike
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 2})}), dst_node_id=0, message_type="train")
    (told,) = HEFedAvg._expect([msg], s._aggregated)
    assert told.content.config_records["config"]["he-aggregate-nonce"] == "n1"


@pytest.mark.parametrize("lie", [1.0, 0.9, 1e-3])
def test_a_weight_lie_makes_every_honest_client_refuse(tmp_path: Path, keys: dict[str, Path], lie: float) -> None:
    """Weight 1.0 or 0.9 instead of 1/2, or almost nothing: refused."""
    s, cfg, _, _ = _strategy(tmp_path, keys)
    replies = _honest(cfg, keys, "n1", {0: 0.6, 1: -0.3})
    replies.append(_reply(2, _payload(cfg, keys["fed"], 3.0, lie, "n1"), "n1"))
    arrays = _round(s, 1, "n1", replies)
    with pytest.raises(AggregateRefused, match="summed weight"):
        _decrypt(cfg, keys, arrays, s._aggregated)


def test_a_replayed_round_1_ciphertext_is_refused_in_round_2(tmp_path: Path, keys: dict[str, Path]) -> None:
    s, cfg, _, _ = _strategy(tmp_path, keys)
    old = _payload(cfg, keys["fed"], 0.9, COUNTS[2] / SCALE, "n1")
    _round(s, 1, "n1", _honest(cfg, keys, "n1", {0: 0.6, 1: -0.3}) + [_reply(2, old, "n1")])
    # round 2: client 2 replays its round-1 ciphertext, with the new plaintext binding copied in
    arrays = _round(s, 2, "n2", _honest(cfg, keys, "n2", {0: 0.5, 1: -0.2}) + [_reply(2, old, "n2")])
    with pytest.raises(AggregateRefused, match="another round"):
        _decrypt(cfg, keys, arrays, s._aggregated)


def test_a_ciphertext_under_another_key_with_a_copied_fingerprint_is_refused(tmp_path: Path,
                                                                            keys: dict[str, Path]) -> None:
    s, cfg, _, _ = _strategy(tmp_path, keys)
    honest = _honest(cfg, keys, "n1", {0: 0.6, 1: -0.3})
    fed_fp = _payload(cfg, keys["fed"], 0.0, 0.5, "n1").fingerprint
    forged = dataclasses.replace(_payload(cfg, keys["other"], 0.9, COUNTS[2] / SCALE, "n1"), fingerprint=fed_fp)
    arrays = _round(s, 1, "n1", honest + [_reply(2, forged, "n1")])  # the header filter is fooled ...
    assert not s.round or not [e for e in s.round.events if e.client_index == 2]
    with pytest.raises(AggregateRefused):  # ... the key holders are not: garbage weight or verification block
        _decrypt(cfg, keys, arrays, s._aggregated)


def test_truncated_ciphertext_is_rejected_and_the_rest_still_decrypts(tmp_path: Path, keys: dict[str, Path]) -> None:
    s, cfg, store, run_id = _strategy(tmp_path, keys)
    bad = _payload(cfg, keys["fed"], 0.9, COUNTS[2] / SCALE, "n1")
    truncated = dataclasses.replace(bad, chunks=bad.chunks[: len(bad.chunks) // 2])
    arrays = _round(s, 1, "n1", _honest(cfg, keys, "n1", {0: 0.6, 1: -0.3}) + [_reply(2, truncated, "n1")])
    mean = _decrypt(cfg, keys, arrays, s._aggregated)  # the server's expectation counts accepted replies only
    np.testing.assert_allclose(mean["w"], (10 * 0.6 - 20 * 0.3) / 30, atol=1e-4)
    s.aggregate_evaluate(1, [])
    (event,) = store.get_run(run_id)["events"]
    assert event["client_index"] == 2 and event["kind"] == "rejected"
