"""Hostile replies fed into the real PrivateFedAvg with a real store: each rejected with its reason, round goes on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedveil.config import ConfigError, load_config, to_dict
from fedveil.store import Store
from server.strategies.fedavg import PrivateFedAvg, RoundLog
from server.validation import ArraySpec, ReplyPolicy

SHAPES = {"w": (3, 4), "b": (4,)}
NONCE = "n-round-1"
POLICY = ReplyPolicy(dp=True, epsilon_budget=2.0, delta_max=1e-5, local_steps=4)


def _reply(node: int, value: float, *, nonce: str = NONCE, dp: bool = True, **metrics: float) -> Message:
    base: dict[str, float | int] = {"num-examples": 10, "epsilon": 1.0, "delta": 1e-5, "noise-multiplier": 1.1,
                                    "sample-rate": 0.1, "steps": 4, "round-steps": 4, "partition-id": node,
                                    "train-loss": 2.0}
    base.update(metrics)  # type: ignore[arg-type]
    arrays = ArrayRecord({k: Array(np.full(s, value, np.float32)) for k, s in SHAPES.items()})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(base),  # type: ignore[arg-type]
                          "privacy": ConfigRecord({"dp": dp, "accountant": "prv"}),
                          "binding": ConfigRecord({"round-nonce": nonce})})
    return Message(content, reply_to=Message(RecordDict({}), dst_node_id=node, message_type="train"))


def _strategy(tmp_path: Path, aggregator: str = "mean") -> tuple[PrivateFedAvg, Store, str]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(to_dict(load_config()), name="t", method="dp-sft", task="synthetic-text",
                              he_enabled=False, num_clients=8, num_rounds=1, seed=0)
    s = PrivateFedAvg(store=store, run_id=run_id, node_to_client={i: i for i in range(8)}, min_clients=2,
                      max_payload_bytes=10_000, max_grad_norm=1.0, num_examples={i: 10 for i in range(8)},
                      policy=POLICY, aggregator=aggregator)
    s.spec = ArraySpec(dict(SHAPES))
    s.round = RoundLog(started_at=datetime.now(UTC), t0=0.0)
    s._sampled_nodes = set(range(8))
    s.nonce = NONCE
    return s, store, run_id


def test_hostile_replies_are_rejected_with_reasons_and_round_completes(tmp_path: Path) -> None:
    s, store, run_id = _strategy(tmp_path)
    replies = [
        _reply(0, 1.0), _reply(1, 3.0),
        _reply(2, 9.0, **{"partition-id": 0}),            # spoofs client 0's identity
        _reply(3, 9.0, epsilon=-5.0),                     # ε below zero
        _reply(4, 9.0, delta=5.0),                        # δ above the configured δ
        _reply(5, 9.0, steps=-3),                         # fewer steps than planned
        _reply(6, 9.0, dp=False),                         # claims no DP in a DP run
        _reply(7, 9.0, nonce="n-round-0", **{"num-examples": 10**12}),  # replayed, huge weight
    ]
    arrays, _ = s.aggregate_train(1, replies)
    s.aggregate_evaluate(1, [])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)  # only 0 and 1, equal hello weights
    run = store.get_run(run_id)
    reasons = {e["client_index"]: e["reason"] for e in run["events"] if e["kind"] == "rejected"}
    assert "partition-id" in reasons[2] and "registered" in reasons[2]
    assert "epsilon = -5.0" in reasons[3]
    assert "delta = 5.0" in reasons[4]
    assert "steps = -3" in reasons[5]
    assert "privacy.dp = False" in reasons[6]
    assert "not bound to this round" in reasons[7]
    assert run["rounds"][0]["status"] == "completed" and run["rounds"][0]["num_rejected"] == 6
    assert sorted(r["client_index"] for r in run["privacy_ledger"]) == [0, 1]  # only honest ε rows


def test_weight_comes_from_hello_not_from_the_reply(tmp_path: Path) -> None:
    s, _, _ = _strategy(tmp_path)
    arrays, _ = s.aggregate_train(1, [_reply(0, 1.0), _reply(1, 3.0, **{"num-examples": 10**12})])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)  # not ≈ 3.0, the attacker's update


def test_epsilon_above_budget_and_decreasing_epsilon_are_rejected(tmp_path: Path) -> None:
    s, store, run_id = _strategy(tmp_path)
    s.aggregate_train(1, [_reply(0, 1.0, epsilon=1.5), _reply(1, 1.0), _reply(2, 1.0, epsilon=1e9)])
    s.aggregate_evaluate(1, [])
    s.round, s.nonce = RoundLog(started_at=datetime.now(UTC), t0=0.0), "n-round-2"
    s._sampled_nodes = {0, 1}
    s.aggregate_train(2, [_reply(0, 1.0, epsilon=0.5, steps=8, nonce="n-round-2"),
                          _reply(1, 1.0, epsilon=1.2, steps=8, nonce="n-round-2"),
                          _reply(2, 1.0, epsilon=1.3, steps=8, nonce="n-round-2")])
    s.aggregate_evaluate(2, [])
    reasons = [e["reason"] for e in store.get_run(run_id)["events"]]
    assert any("epsilon = 1000000000.0 is outside" in r for r in reasons)
    assert any("below this node's previous 1.5" in r for r in reasons)


@pytest.mark.parametrize("aggregator", ["median", "trimmed-mean"])
def test_robust_aggregator_bounds_one_malicious_client(tmp_path: Path, aggregator: str) -> None:
    s, _, _ = _strategy(tmp_path, aggregator)
    arrays, _ = s.aggregate_train(1, [_reply(0, 1.0), _reply(1, 2.0), _reply(2, 3.0), _reply(3, 1e6)])
    assert arrays is not None
    w = arrays["w"].numpy()
    assert np.all((w >= 1.0) & (w <= 3.0))  # within the honest range despite the 1e6 update
    mean, _, _ = _strategy(tmp_path / "m")[0], None, None
    arrays_mean, _ = mean.aggregate_train(1, [_reply(0, 1.0), _reply(1, 2.0), _reply(2, 3.0), _reply(3, 1e6)])
    assert arrays_mean is not None and float(arrays_mean["w"].numpy()[0, 0]) > 1e5  # the power: mean is moved


@pytest.mark.parametrize("override, message", [
    ("run.run_id='../..'", "run.run_id"),
    ("privacy.target_epsilon=inf", "finite budget"),
    ("federation.aggregator='median'", "cannot sort ciphertexts"),
])
def test_config_rejections(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"[run]\nname = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


@pytest.mark.parametrize("args, shown", [
    (["--set", "federation.rounds=[/bold]"], "federation.rounds"),
    (["--set", "run.run_id='../..'"], "run.run_id"),
    (["--set", "privacy.target_epsilon=inf"], "finite budget"),
    (["--set", "nope.x=1"], "[nope]"),  # a section name in brackets survives (markup escaped)
])
def test_cli_errors_are_one_line_with_exit_2(args: list[str], shown: str) -> None:
    from typer.testing import CliRunner

    from fedveil.commands.cli import app
    result = CliRunner().invoke(app, ["config", *args])
    assert result.exit_code == 2, result.output
    assert shown in result.output and "Traceback" not in result.output


def test_cli_non_utf8_config_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedveil.commands.cli import app
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"[run]\nname = \"\xff\"\n")
    result = CliRunner().invoke(app, ["config", "-c", str(bad)])
    assert result.exit_code == 2 and "not UTF-8" in result.output
