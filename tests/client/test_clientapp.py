"""Direct ClientApp calls (no Ray): hello, DP training with a persistent ledger, evaluation."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import PRVAccountant

from client.app import app as client_app
from client.node_store import LEDGER_FILE, run_node_dir
from privacy.dp import PrivacyBudgetExhausted
from distill.textdata import public_corpus
from distill.models import build_lm
from distill.tokenizer import tokenizer_to_json, train_tokenizer
from fedveil.config import load_config, to_run_config

OVERRIDES = ["federation.clients=2", "federation.rounds=2", "data.records_per_client=24", "data.public_records=200",
             "data.heldout_records=8", "data.max_length=48", "data.vocab_size=400", "train.local_steps=2",
             "train.batch_size=8", "train.teacher_steps=3", "distill.gen_length=6", "distill.prompt_length=8",
             "he.enabled=false"]


@pytest.fixture(scope="module")
def setup() -> tuple:
    cfg = load_config(None, OVERRIDES)
    tok = train_tokenizer(public_corpus(0, 200), vocab_size=400)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 11, 1
    return cfg, tok


def _msg(kind: str, arrays: ArrayRecord | None, tok: object, server_round: int = 1) -> Message:
    tj = tokenizer_to_json(tok)
    content = RecordDict({"config": ConfigRecord({"server-round": server_round, "tokenizer": tj, "he-scale": 48.0,
                                                   "tokenizer-sha256": hashlib.sha256(tj.encode()).hexdigest()})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, dst_node_id=11, message_type=kind)


def _context(cfg: object, tok: object = None) -> Context:
    ctx = Context(run_id=1, node_id=11, node_config={"partition-id": 0, "num-partitions": 2},
                  state=RecordDict(), run_config=to_run_config(cfg))  # type: ignore[arg-type]
    if tok is not None:  # what the hello query leaves behind
        ctx.state.config_records["tokenizer"] = ConfigRecord({"json": tokenizer_to_json(tok)})
    return ctx


def test_hello_reports_partition(setup: tuple) -> None:
    cfg, tok = setup
    reply = client_app(_msg("query.hello", None, tok), _context(cfg))
    hello = reply.content.config_records["hello"]
    assert hello["partition-id"] == 0 and hello["num-examples"] == 24


@pytest.mark.parametrize("method", ["dp-sft", "dp-opd"])
def test_train_accumulates_epsilon_and_refuses_over_budget(setup: tuple, method: str) -> None:
    cfg, tok = setup
    cfg = load_config(None, [*OVERRIDES, f"train.method={method}"])
    ctx = _context(cfg, tok)
    model = build_lm(cfg.model.student, len(tok))
    arrays = ArrayRecord(model.state_dict())
    eps = []
    for r in (1, 2):
        reply = client_app(_msg("train", arrays, tok, r), ctx)
        m = reply.content.metric_records["metrics"]
        out = reply.content.array_records["arrays"].to_torch_state_dict()
        assert set(out) == set(model.state_dict())
        assert all(out[k].shape == v.shape for k, v in model.state_dict().items())
        # Independent recomputation of ε from (σ, q, steps, δ) with the accountant's analysis.
        acc = PRVAccountant()
        acc.history = [(m["noise-multiplier"], m["sample-rate"], m["steps"])]
        assert m["epsilon"] == pytest.approx(acc.get_epsilon(delta=m["delta"]), rel=1e-6)
        assert m["steps"] == 2 * r
        eps.append(m["epsilon"])
        arrays = reply.content.array_records["arrays"]
    assert eps[0] < eps[1] <= cfg.privacy.target_epsilon + 1e-9
    # The node's own ledger file holds the full history, owner-only (client.node_store).
    ledger_file = run_node_dir(cfg.run.run_id, ctx.run_id, 0) / LEDGER_FILE
    assert ledger_file.stat().st_mode & 0o777 == 0o600
    assert sum(json.loads(ledger_file.read_text())["steps"]) == 4
    if method == "dp-opd":
        assert m["on-policy-steps"] >= 1
    # The plan covered exactly `rounds` rounds: a third round would overspend, so it is refused.
    with pytest.raises(PrivacyBudgetExhausted, match="refusing"):
        client_app(_msg("train", arrays, tok, 3), ctx)


def test_evaluate_returns_nll_and_tokens(setup: tuple) -> None:
    cfg, tok = setup
    model = build_lm(cfg.model.student, len(tok))
    reply = client_app(_msg("evaluate", ArrayRecord(model.state_dict()), tok), _context(cfg, tok))
    m = reply.content.metric_records["metrics"]
    assert m["tokens"] > 0
    # An untrained model is close to uniform: perplexity near the vocabulary size.
    ppl = math.exp(m["nll-sum"] / m["tokens"])
    assert 0.5 * len(tok) < ppl < 2 * len(tok)


def test_missing_partition_id_is_a_clear_error(setup: tuple) -> None:
    cfg, tok = setup
    ctx = Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config=to_run_config(cfg))
    with pytest.raises(ValueError, match="partition-id"):
        client_app(_msg("query.hello", None, tok), ctx)


def test_malformed_request_is_refused(setup: tuple) -> None:
    cfg, tok = setup
    model = build_lm(cfg.model.student, len(tok))
    bad = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "config": ConfigRecord({"server-round": "one"})}), dst_node_id=11, message_type="train")
    with pytest.raises(ValueError, match="server-round"):
        client_app(bad, _context(cfg, tok))
    torch.manual_seed(0)
