"""Membership-inference scores, ROC metrics and batched token log-probs (docs/METHODS.md §8)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from privacy.audit.mia import (
    loglog_roc_points,
    loss_score,
    mia_scores,
    min_k_score,
    reference_score,
    roc_metrics,
    zlib_score,
)
from privacy.audit.scoring import token_logprobs


def _tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


def test_score_formulas() -> None:
    lp = np.array([-0.5, -2.0, -0.1, -4.0, -1.0])
    assert loss_score(lp) == pytest.approx(-1.52)
    text = "hello hello hello"
    assert zlib_score(lp, text) == pytest.approx(-1.52 / len(zlib.compress(text.encode())))
    assert reference_score(lp, lp - 1.0) == pytest.approx(5.0)
    # k = 20% of 5 tokens -> the single lowest; 50% -> ceil(2.5) = 3 lowest.
    assert min_k_score(lp, 0.2) == pytest.approx(-4.0)
    assert min_k_score(lp, 0.5) == pytest.approx((-4.0 - 2.0 - 1.0) / 3)
    with pytest.raises(ValueError):
        min_k_score(lp, 0.0)
    with pytest.raises(ValueError, match="tokenizer"):
        reference_score(lp, lp[:3])


def test_higher_likelihood_means_higher_scores() -> None:
    member = np.full(10, -0.2)
    nonmember = np.full(10, -3.0)
    assert loss_score(member) > loss_score(nonmember)
    assert zlib_score(member, "abc def") > zlib_score(nonmember, "abc def")
    assert min_k_score(member) > min_k_score(nonmember)


def test_roc_separable_and_identical() -> None:
    rng = np.random.default_rng(0)
    separable = roc_metrics(rng.uniform(2, 3, 2000), rng.uniform(0, 1, 2000))
    assert separable.auc == 1.0
    assert separable.tpr_at_1pct == 1.0 and separable.tpr_at_01pct == 1.0
    same = roc_metrics(rng.normal(size=5000), rng.normal(size=5000))
    assert abs(same.auc - 0.5) < 0.03
    assert same.tpr_at_1pct is not None and same.tpr_at_1pct < 0.03
    few = roc_metrics(rng.normal(size=50), rng.normal(size=500))
    assert few.tpr_at_1pct is not None and few.tpr_at_01pct is None
    tiny = roc_metrics(rng.normal(size=50), rng.normal(size=99))
    assert tiny.tpr_at_1pct is None


def test_loglog_points() -> None:
    rng = np.random.default_rng(1)
    metrics = roc_metrics(rng.normal(1.0, 1.0, 20_000), rng.normal(size=20_000))
    points = loglog_roc_points(metrics.fpr, metrics.tpr, max_points=100)
    assert 2 <= len(points) <= 100
    fprs = [f for f, _ in points]
    tprs = [t for _, t in points]
    assert all(f > 0 for f in fprs) and all(t > 0 for t in tprs)
    assert fprs == sorted(fprs) and tprs == sorted(tprs)
    # Thinning keeps the low-FPR end: the smallest positive FPR of the curve is there.
    assert fprs[0] == pytest.approx(float(np.min(metrics.fpr[(metrics.fpr > 0) & (metrics.tpr > 0)])))


def test_token_logprobs_padding_invariant_and_mode_restored() -> None:
    model = _tiny_llama(0)
    rng = np.random.default_rng(2)
    sequences = [rng.integers(0, 64, size=int(n)).tolist() for n in rng.integers(1, 40, size=13)]
    batched = token_logprobs(model, sequences, batch_size=4)
    assert model.training
    single = [token_logprobs(model, [seq], batch_size=1)[0] for seq in sequences]
    for seq, got, alone in zip(sequences, batched, single, strict=True):
        assert got.shape == (len(seq) - 1,)
        np.testing.assert_allclose(got, alone, atol=1e-5)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sequences[0]])).logits[0].double()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(sequences[0]) - 1), torch.tensor(sequences[0][1:])]
    np.testing.assert_allclose(batched[0], expected.numpy(), atol=1e-5)


def test_mia_scores_end_to_end() -> None:
    model = _tiny_llama(0)
    reference = _tiny_llama(1)
    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, 64, size=20).tolist() for _ in range(6)]
    texts = [" ".join(map(str, seq)) for seq in sequences]
    scores = mia_scores(model, sequences, texts, reference_model=reference, batch_size=4)
    assert set(scores) == {"loss", "zlib", "min_k", "reference"}
    assert all(v.shape == (6,) and np.all(np.isfinite(v)) for v in scores.values())
    self_ref = mia_scores(model, sequences, texts, reference_model=model)
    np.testing.assert_allclose(self_ref["reference"], 0.0, atol=1e-9)
    assert np.all(scores["loss"] > -math.log(64) - 1.0)
