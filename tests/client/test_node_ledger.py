"""The node owns its budget (issue 13 item 2): what the server sends or loses cannot lower a node's ε.

Everything here goes through the real ClientApp with real DP-SGD steps and the real accountant; the
"server" is the test, which may send a reset history, lose replies or restart the node's process.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client import he_client
from client.app import app as client_app
from client.node_store import LEDGER_FILE, load_ledger, run_node_dir
from distill.models import build_lm
from distill.textdata import public_corpus
from distill.tokenizer import tokenizer_to_json, train_tokenizer
from fedveil.config import load_config, to_run_config

OVERRIDES = ["federation.clients=2", "federation.rounds=3", "data.records_per_client=24", "data.public_records=200",
             "data.heldout_records=8", "data.max_length=48", "data.vocab_size=400", "train.local_steps=2",
             "train.batch_size=8", "train.method=dp-sft", "he.enabled=false", "run.run_id='ledgertest'"]


@pytest.fixture(scope="module")
def setup() -> tuple:
    cfg = load_config(None, OVERRIDES)
    return cfg, train_tokenizer(public_corpus(0, 200), vocab_size=400)


def _context(cfg: object, tok: object) -> Context:
    """A node process as Flower starts it: empty state, then the hello query's tokenizer."""
    ctx = Context(run_id=1, node_id=11, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config=to_run_config(cfg))  # type: ignore[arg-type]
    ctx.state.config_records["tokenizer"] = ConfigRecord({"json": tokenizer_to_json(tok)})
    return ctx


def _train(ctx: Context, arrays: ArrayRecord, tok: object, server_round: int) -> Message:
    tj = tokenizer_to_json(tok)
    conf = ConfigRecord({"server-round": server_round, "he-scale": 48.0, "round-nonce": f"n{server_round}",
                         "tokenizer-sha256": hashlib.sha256(tj.encode()).hexdigest()})
    return client_app(Message(RecordDict({"config": conf, "arrays": arrays}), dst_node_id=11, message_type="train"),
                      ctx)


def _restore(ctx: Context, state: dict) -> Message:
    return client_app(Message(RecordDict({"ledger": ConfigRecord(state)}), dst_node_id=11,
                              message_type="query.restore"), ctx)


def _steps(ctx: Context, cfg: object) -> int:
    return load_ledger(run_node_dir("ledgertest", ctx.run_id, 0), "prv").steps


@pytest.mark.parametrize("sent", [
    {"accountant": "prv", "sigma": [], "q": [], "steps": []},           # a reset
    {"accountant": "prv", "sigma": [5.0], "q": [0.33], "steps": [1]},   # a lowered, different history
])
def test_server_cannot_reset_or_lower_the_ledger_on_resume(setup: tuple, sent: dict) -> None:
    cfg, tok = setup
    ctx = _context(cfg, tok)
    first = _train(ctx, ArrayRecord(build_lm(cfg.model.student, len(tok)).state_dict()), tok, 1)
    eps1 = first.content.metric_records["metrics"]["epsilon"]
    # The node's process restarts (Context.state is gone) and the server sends a reset history.
    ctx = _context(cfg, tok)
    reply = _restore(ctx, sent)
    assert reply.content.config_records["restored"]["steps"] == 2  # the node's own count, not the sent one
    second = _train(ctx, first.content.array_records["arrays"], tok, 2).content.metric_records["metrics"]
    assert second["steps"] == 4 and second["epsilon"] > eps1  # continued from the node's own history


def test_a_sent_history_that_extends_the_nodes_own_is_adopted(setup: tuple) -> None:
    cfg, tok = setup
    ctx = _context(cfg, tok)
    reply = _restore(ctx, {"accountant": "prv", "sigma": [1.2], "q": [0.33], "steps": [2]})
    assert reply.content.config_records["restored"]["steps"] == 2  # the node lost its files: ε only rises
    assert _steps(ctx, cfg) == 2


def test_every_step_counts_and_a_repeated_round_costs_nothing(setup: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger is on disk before the update leaves; the same round for the same global state is
    answered with the same update and no new steps; a round trained for another global state pays."""
    cfg, tok = setup
    ctx = _context(cfg, tok)
    seen: list[int] = []
    encode = he_client.encode_update

    def spy(node, request, model, n):  # type: ignore[no-untyped-def]
        seen.append(_steps(ctx, cfg))  # what the node's file says when the update is being sent
        return encode(node, request, model, n)

    monkeypatch.setattr(he_client, "encode_update", spy)
    start = ArrayRecord(build_lm(cfg.model.student, len(tok)).state_dict())
    a = _train(ctx, start, tok, 1)
    b = _train(_context(cfg, tok), start, tok, 1)  # a resumed server repeats round 1 from the same checkpoint
    ua, ub = (m.content.array_records["arrays"].to_numpy_ndarrays() for m in (a, b))
    assert all(np.array_equal(x, y) for x, y in zip(ua, ub, strict=True))  # the same released update
    assert b.content.metric_records["metrics"]["steps"] == 2 and seen == [2, 2]
    changed = build_lm(cfg.model.student, len(tok)).state_dict()
    changed["model.norm.weight"] = changed["model.norm.weight"] * 2
    other = ArrayRecord(changed)
    c = _train(ctx, other, tok, 1)  # same round, another global state: new steps, paid for
    assert c.content.metric_records["metrics"]["steps"] == 4 and seen == [2, 2, 4]
    path = run_node_dir("ledgertest", ctx.run_id, 0) / LEDGER_FILE
    assert path.stat().st_mode & 0o777 == 0o600


def test_train_loss_stays_on_the_node_unless_asked(setup: tuple) -> None:
    cfg, tok = setup
    start = ArrayRecord(build_lm(cfg.model.student, len(tok)).state_dict())
    quiet = _train(_context(cfg, tok), start, tok, 1).content.metric_records["metrics"]
    assert "train-loss" not in quiet
    loud_cfg = load_config(None, [*OVERRIDES, "run.run_id='ledgertest2'", "privacy.release_train_loss=true"])
    loud = _train(_context(loud_cfg, tok), start, tok, 1).content.metric_records["metrics"]
    assert np.isfinite(loud["train-loss"]) and loud["train-loss"] > 0
