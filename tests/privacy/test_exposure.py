"""Exposure (rank and skew-normal) and secret log-perplexity scoring (docs/METHODS.md §8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import LlamaConfig, LlamaForCausalLM

from privacy.audit.canaries import CanaryFormat, candidate_token_ids, equal_length_candidates, plan_canaries
from privacy.audit.exposure import (
    exposure_report,
    fit_reference_skewnorm,
    rank_exposure,
    skewnorm_exposure,
    skewnorm_exposure_from_params,
)
from privacy.audit.scoring import secret_log_perplexity

REFERENCES = np.arange(1.0, 17.0)


def _tiny_llama(vocab: int = 128, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize(("canary", "expected"), [(0.0, 4.0), (0.1, 4.0), (3.5, 2.0), (20.0, 4.0 - math.log2(17))])
def test_rank_exposure_spec_vector(canary: float, expected: float) -> None:
    assert rank_exposure(canary, REFERENCES) == pytest.approx(expected, abs=1e-12)


def test_rank_exposure_ties_count_against_canary() -> None:
    assert rank_exposure(3.0, REFERENCES) == pytest.approx(4.0 - math.log2(4))


def test_rank_exposure_never_above_log2_n() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        refs = rng.normal(size=n)
        value = rank_exposure(float(rng.normal() * 3), refs)
        assert value <= math.log2(n) + 1e-12
        assert value >= math.log2(n) - math.log2(n + 1) - 1e-12
    with pytest.raises(ValueError):
        rank_exposure(1.0, np.array([]))


def test_skewnorm_matches_normal_tail() -> None:
    rng = np.random.default_rng(1)
    refs = rng.normal(40.0, 5.0, size=20_000)
    for sigmas in (2.0, 3.0):
        result = skewnorm_exposure(40.0 - sigmas * 5.0, refs)
        expected = -math.log2(stats.norm.cdf(-sigmas))
        assert not result.is_bound
        assert result.value == pytest.approx(expected, rel=0.06)
        assert result.display() == f"{result.value:.2f}"


def test_skewnorm_bound_when_cdf_underflows() -> None:
    rng = np.random.default_rng(2)
    refs = rng.normal(40.0, 2.0, size=5000)
    params = fit_reference_skewnorm(refs)
    result = skewnorm_exposure_from_params(-1000.0, params)
    assert result.is_bound
    assert math.isfinite(result.value) and result.value > 1000.0
    assert result.display().startswith("> ")
    # A bound is a lower bound: an exactly computable exposure nearer the tail must not exceed it.
    nearer = skewnorm_exposure_from_params(params[1] - 8 * params[2], params)
    assert not nearer.is_bound and nearer.value < result.value
    # Right-skewed references: the CDF's left tail vanishes fast, and the bound uses both Φ factors.
    skewed = skewnorm_exposure_from_params(0.0, (20.0, 40.0, 2.0))
    assert skewed.is_bound and math.isfinite(skewed.value)
    assert skewed.value > -math.log2(2 * stats.norm.cdf(-20.0))


def test_exposure_report_fields() -> None:
    fmt = CanaryFormat("code {secret}", length=4)
    plan = plan_canaries([fmt], [0], repetitions=(1, 4), n_never_inserted=2, rng=0)
    ppl = {c.canary_id: float(i) for i, c in enumerate(plan)}
    refs = np.random.default_rng(3).normal(10.0, 2.0, size=1000)
    rows = exposure_report(plan, ppl, {0: refs}, formats=[fmt])
    assert [row["canary_id"] for row in rows] == [c.canary_id for c in plan]
    first = rows[0]
    assert first["n_ref"] == 1000 and first["space_size"] == 10_000
    assert first["log2_space_size"] == pytest.approx(math.log2(10_000))
    assert first["method"] == "rank+skewnorm"
    assert set(first["skewnorm_params"]) == {"a", "loc", "scale"}
    assert first["rank_exposure"] == pytest.approx(rank_exposure(0.0, refs))
    assert [row["repetitions"] for row in rows] == [c.repetitions for c in plan]
    flat = exposure_report(plan, ppl, {0: np.ones(10)}, extrapolate=True)
    assert flat[0]["skewnorm_display"] == "n/a"


def _manual_bits(model: LlamaForCausalLM, ids: np.ndarray, mask: np.ndarray) -> float:
    total = 0.0
    with torch.no_grad():
        for t in np.flatnonzero(mask):
            prefix = torch.as_tensor(ids[None, :t])
            logits = model(input_ids=prefix).logits[0, -1]
            total -= float(torch.log_softmax(logits.double(), dim=-1)[int(ids[t])]) / math.log(2)
    return total


class _PlainForward(torch.nn.Module):
    """Exposes only ``forward(input_ids, attention_mask)``, exercising the path without ``logits_to_keep``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_secret_log_perplexity_matches_one_at_a_time() -> None:
    model = _tiny_llama()
    model.train()
    fmt = CanaryFormat("acct {secret} ok.", length=5, separator="")

    def encode(text: str) -> list[int]:
        return [ord(ch) % 128 for ch in text]

    texts = equal_length_candidates(fmt, 37, encode, 0)
    ids, mask = candidate_token_ids(fmt, texts, encode)
    batched = secret_log_perplexity(model, ids, mask, batch_size=8)
    plain = secret_log_perplexity(_PlainForward(model), ids, mask, batch_size=5)
    unshared = secret_log_perplexity(model, ids, mask, batch_size=16, share_prefix=False)
    assert model.training, "the model's training mode must be restored"
    model.eval()
    manual = np.array([_manual_bits(model, row, mask) for row in ids[:6]])
    np.testing.assert_allclose(batched[:6], manual, rtol=1e-4)
    np.testing.assert_allclose(plain, batched, rtol=1e-4)
    np.testing.assert_allclose(unshared, batched, rtol=1e-4)
    assert batched.shape == (37,) and np.all(batched > 0)
    with pytest.raises(ValueError, match="position 0"):
        secret_log_perplexity(model, ids, np.r_[True, np.zeros(ids.shape[1] - 1, dtype=bool)])
