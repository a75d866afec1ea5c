"""Client-side audits (docs/METHODS.md §8): the canary plan, a direct ClientApp ``query.audit`` call, and
the issue's check that a non-private model trained with 16-fold canaries exposes them while a strongly
private one does not (in-process, no Flower, the same audit functions as the ClientApp)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from client.audit_client import parse_kinds
from privacy.audit.measures import AuditData, audit_client_models, client_canaries
from privacy.dp import DPSession, Ledger, poisson_batches, run_dp_steps
from privacy.he.layout import is_encrypted
from client.protocol import ProtocolError
from distill.textdata import client_texts, heldout_shard, public_corpus, tokenise, with_canaries
from client.trainers import LMTrainer, SFTConfig
from distill.pretrain import train_plain
from distill.models import build_lm
from distill.tokenizer import tokenizer_from_json, tokenizer_to_json, train_tokenizer
from fedveil.files import node_dir, write_private
from privacy.audit import coins
from fedveil.config import load_config, to_run_config
from privacy.he.keys import write_keys
from privacy.audit.plan import (
    EXPOSURE_FORMATS,
    is_one_run,
    mia_split,
    node_plan,
    one_run_per_client,
    reference_candidates,
    run_canary_plan,
    training_encode,
)

SMALL = ["federation.clients=2", "federation.rounds=1", "data.records_per_client=24", "data.public_records=200",
         "data.heldout_records=16", "data.vocab_size=400", "train.local_steps=2", "train.batch_size=8",
         "train.teacher_steps=3", "train.method=dp-kd", "audit.n_references=64", "he.enabled=false"]


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tokenizer(public_corpus(0, 200), vocab_size=400)


def test_plan_is_deterministic_and_only_for_canary_clients(tok: Any) -> None:
    cfg = load_config(None, [*SMALL, "audit.canary_clients=1"])
    encode = training_encode(tok)
    plan = run_canary_plan(cfg, encode)
    assert plan == run_canary_plan(cfg, encode)
    # Clients rebuild the tokenizer from the JSON the server sends: they must plan the same canaries.
    assert plan == run_canary_plan(cfg, training_encode(tokenizer_from_json(tokenizer_to_json(tok))))
    exposure = [c for c in plan if not is_one_run(c)]
    inserted = [c for c in exposure if c.inserted]
    assert sorted(c.repetitions for c in inserted) == [1, 4, 16] and {c.client_index for c in inserted} == {0}
    assert all(c.client_index is None and c.repetitions == 0 for c in exposure if not c.inserted)
    one_run = [c for c in plan if is_one_run(c)]
    # One-run canaries: every client, the designed number each, and no coin in the server's copy.
    assert len(one_run) == 2 * one_run_per_client(cfg) and {c.client_index for c in one_run} == {0, 1}
    assert not any(c.inserted or c.repetitions for c in one_run)
    refs = reference_candidates(cfg, encode, plan)[0]
    lengths = {len(encode(t)) for t in refs + [c.text for c in exposure]}
    assert len(refs) == 64 and len(lengths) == 1  # every candidate of the format has one token length
    assert not {c.text for c in exposure} & set(refs)
    # Insertion: each client trains on its secret member split, its exposure copies (client 0 only) and the
    # one-run canaries its own coins include; the original records keep their order.
    for pid in (0, 1):
        members, held = mia_split(cfg, pid, client_texts(cfg, pid))
        resolved = node_plan(cfg, pid, len(client_texts(cfg, pid)), plan)
        train = with_canaries(cfg, pid, client_texts(cfg, pid), tok)
        copies = sum(c.repetitions for c in resolved if c.inserted and c.client_index == pid)
        assert len(train) == len(members) + copies and [t for t in train if t in members] == members
        assert not set(held) & set(train)
        expected = sum(c.repetitions for c in resolved if c.client_index == pid and not is_one_run(c)) + sum(
            0.5 for c in resolved if is_one_run(c))
        # Capped in expectation over the public record count (the secret split's size is itself random).
        trained = len(client_texts(cfg, pid)) * (1.0 - cfg.audit.mia_holdout)
        assert expected / (trained + expected) <= cfg.audit.max_canary_share + 1e-9
    # Client 0's 16-fold canary no longer fits 24 records under the 30 % cap: withdrawn, kept as a control.
    resolved = node_plan(cfg, 0, len(client_texts(cfg, 0)), plan)
    assert [c.repetitions for c in resolved if c.client_index == 0 and not is_one_run(c)] == [1, 4, 0]
    # No exposure audit configured: no canary inserted anywhere.
    assert run_canary_plan(load_config(None, [*SMALL, "audit.kinds=['mia']"]), encode) == []
    assert run_canary_plan(load_config(None, [*SMALL, "audit.enabled=false"]), encode) == []


def test_parse_kinds_refuses_unknown() -> None:
    assert parse_kinds("exposure, mia") == ("exposure", "mia")
    with pytest.raises(ProtocolError, match="unknown audit kinds"):
        parse_kinds("exposure,leak")


def _message(kind: str, arrays: ArrayRecord, tok: Any, **extra: str | int) -> Message:
    tj = tokenizer_to_json(tok)
    digest = hashlib.sha256(tj.encode()).hexdigest()
    conf = ConfigRecord({"server-round": 1, "he-scale": 48.0, "tokenizer-sha256": digest, **extra})
    return Message(RecordDict({"config": conf, "arrays": arrays}), dst_node_id=11, message_type=kind)


def test_audit_query_replies_numbers_only(tok: Any, tmp_path: Path) -> None:
    # Under HE (the default) the audit query carries a CKKS aggregate that the client decrypts.
    write_keys(tmp_path / "keys", "compact")
    cfg = load_config(None, [*SMALL, "data.max_length=112", f"run.run_dir='{tmp_path}'", "run.run_id='r1'",
                             "he.enabled=true", f"he.key_dir='{tmp_path / 'keys'}'"])
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 11, 1
    ctx = Context(run_id=1, node_id=11, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                  run_config=to_run_config(cfg))  # type: ignore[arg-type]
    ctx.state.config_records["tokenizer"] = ConfigRecord({"json": tokenizer_to_json(tok)})
    reply = client_app(_message("train", ArrayRecord(build_lm(cfg.model.student, len(tok)).state_dict()), tok), ctx)
    arrays = reply.content.array_records["arrays"]  # encrypted; a one-client sum is the aggregate itself
    assert is_encrypted(arrays)

    reply = client_app(_message("query.audit", arrays, tok, kinds="exposure,memorisation,mia,epsilon"), ctx)
    record = reply.content.config_records["audit"]
    assert set(record) == {"exposure", "memorisation", "mia", "epsilon", "meta"}
    raw = " ".join(str(v) for v in record.values())
    plan = run_canary_plan(cfg, training_encode(tok))
    for canary in plan:  # ids and numbers only: no canary text, no secret, no template
        assert canary.secret not in raw and canary.text not in raw
    assert EXPOSURE_FORMATS[0].prefix.strip() not in raw
    result = {k: json.loads(str(v)) for k, v in record.items()}
    models = {"teacher", "student", "global", "finetuned"}
    assert set(result["meta"]["models"]) == models and result["meta"]["dp_steps"] == 2

    own = {c.canary_id for c in client_canaries(plan, 0) if not is_one_run(c)}
    for model in models:
        rows = result["exposure"][model]["rows"]
        assert {r["canary_id"] for r in rows} == own
        assert all(r["n_ref"] == 64 and r["rank_exposure"] <= math.log2(64) + 1e-12 for r in rows)
        memo = result["memorisation"][model]
        assert memo["n_audited"] > 0 and 0.0 <= memo["rate"] <= 1.0
        attacks = result["mia"][model]["attacks"]
        assert set(attacks) == {"loss", "zlib", "min_k", "reference"}
        assert all(0.0 <= a["auc"] <= 1.0 and a["tpr_at_01pct"] is None for a in attacks.values())
        eps = result["epsilon"][model]
        assert eps["clopper_pearson"]["epsilon_lb"] >= 0.0 and eps["one_run"]["m"] >= 4
        assert eps["one_run"]["epsilon_lb"] <= eps["one_run"]["power"]
        assert eps["dp_claimed"] == (model in ("student", "global"))
    assert "inherited_from_teacher" in result["memorisation"]["global"]
    # The decrypted global student is this client's own update (up to CKKS error): same exposures.
    local = {r["canary_id"]: r["log_perplexity_bits"] for r in result["exposure"]["student"]["rows"]}
    glob = {r["canary_id"]: r["log_perplexity_bits"] for r in result["exposure"]["global"]["rows"]}
    assert glob == pytest.approx(local, abs=0.05)
    for name in ("teacher", "student"):  # kept in the node's own directory, nowhere under the server's run dir
        assert (node_dir("r1", 0) / name / "config.json").is_file()
    assert not (tmp_path / "r1").exists()


# -- the issue's end-to-end property, in-process -----------------------------------------------------

ISSUE = ["federation.clients=2", "data.records_per_client=24", "data.public_records=200", "data.heldout_records=64",
         "data.max_length=32", "data.vocab_size=400", "audit.canary_repetitions=[16]", "audit.canaries_per_setting=4",
         "audit.n_references=256", "he.enabled=false", "audit.one_run_canaries=64", "audit.max_canary_share=0.9",
         "audit.mia_holdout=0"]
STEPS = 80


@pytest.fixture(scope="module")
def issue_setup(tok: Any) -> tuple:
    # One fixed draw of the node's secret coins, so the test does not depend on luck: over fresh OS-entropy
    # keys the one-run bound at this size (m = 32) came out 0 for one key in eight (eight keys tried on
    # 2026-12-06): a limit of a small audit's power, which a test must not turn into a flaky failure.
    cfg = load_config(None, [*ISSUE, "run.run_id='issue-setup'"])
    key = coins.coin_key_path(cfg.run.run_id, 0)
    assert key is not None
    write_private(key, hashlib.sha256(b"fedveil test coins").digest())
    encode = training_encode(tok)
    plan = run_canary_plan(cfg, encode)
    own = client_texts(cfg, 0)
    train = tokenise(tok, with_canaries(cfg, 0, own, tok), max_length=32, prompt_length=1, with_privacy=False)
    data = AuditData(encode=encode, members=own, nonmembers=heldout_shard(cfg, 0), max_length=32,
                     canaries=client_canaries(node_plan(cfg, 0, len(own), plan), 0),
                     references=reference_candidates(cfg, encode, plan), delta=1e-5)
    return cfg, train, data


def _sixteen_fold(result: dict) -> list[float]:
    return [r["rank_exposure"] for r in result["exposure"]["global"]["rows"] if r["repetitions"] == 16]


def test_non_private_model_exposes_16_fold_canaries(tok: Any, issue_setup: tuple) -> None:
    _, train, data = issue_setup
    model = build_lm("student-xs", len(tok), seed=0)
    train_plain(model, train, steps=STEPS, lr=3e-3, batch_size=16, rng=np.random.default_rng(0),
                  device=torch.device("cpu"))
    result = audit_client_models({"global": model}, data, ("exposure", "epsilon"))
    exposures = _sixteen_fold(result)
    assert len(exposures) == 4 and min(exposures) >= 0.9 * math.log2(256)  # found among 256 references
    eps = result["epsilon"]["global"]
    assert eps["clopper_pearson"]["epsilon_lb"] > 0 and eps["one_run"]["epsilon_lb"] > 0


def test_strongly_private_model_shows_low_exposure(tok: Any, issue_setup: tuple) -> None:
    _, train, data = issue_setup
    model = build_lm("student-xs", len(tok), seed=0)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    q = 16 / len(train)
    session = DPSession(model, lr=3e-3, noise_multiplier=20.0, max_grad_norm=1.0, expected_batch_size=16,
                        generator=gen)
    trainer = LMTrainer(SFTConfig(), train, teacher=None, tokenizer=tok, device=torch.device("cpu"), generator=gen,
                        rng=rng)
    ledger = Ledger("prv")
    run_dp_steps(session, poisson_batches(len(train), q, STEPS, rng), lambda idx: trainer.loss(session, idx), ledger, q)
    private = session.close()
    epsilon = ledger.epsilon(1e-5)
    assert epsilon < 0.5
    result = audit_client_models({"global": private}, data, ("exposure", "epsilon"))
    assert float(np.mean(_sixteen_fold(result))) < 0.5 * math.log2(256)
    eps = result["epsilon"]["global"]
    assert eps["clopper_pearson"]["epsilon_lb"] <= epsilon and eps["one_run"]["epsilon_lb"] <= epsilon


def test_mia_reply_carries_summaries_unless_scores_are_released(tok: Any, issue_setup: tuple) -> None:
    """Issue 13 item 3: ROC points, histograms and thresholds (statistics of single records) stay on the node
    unless ``audit.release_scores``; every TPR cell that is undefined says why; the bound carries its power."""
    import dataclasses

    from privacy.audit.epsilon import clopper_pearson_power

    _, _, data = issue_setup
    model = build_lm("student-xs", len(tok), seed=0)
    kept = audit_client_models({"global": model}, data, ("mia", "epsilon"))
    for attack in kept["mia"]["global"]["attacks"].values():
        assert "roc_points" not in attack and "histogram" not in attack
        assert attack["tpr_at_1pct_na"] == f"needs >= 100 non-members, has {len(data.nonmembers)}"
    best = kept["epsilon"]["global"]["clopper_pearson"]
    assert "threshold" not in best and best["epsilon_lb"] <= best["power"]
    assert best["power"] == pytest.approx(clopper_pearson_power(
        best["n_members"], best["n_nonmembers"], best["alpha_per_attack"] / best["thresholds_tried"], data.delta))
    released = audit_client_models({"global": model}, dataclasses.replace(data, release_scores=True), ("mia",))
    attack = released["mia"]["global"]["attacks"]["loss"]
    assert attack["roc_points"] and sum(attack["histogram"]["members"]) == released["mia"]["global"]["n_members"]
