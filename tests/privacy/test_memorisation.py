"""Extraction memorisation audit with KV-cached greedy decoding (docs/METHODS.md §8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from privacy.audit.memorisation import (
    extraction_check,
    greedy_continuations,
    inherited_count,
    normalised_edit_distance,
)

VOCAB = 64


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def trained() -> tuple[LlamaForCausalLM, np.ndarray]:
    """A tiny Llama trained to memorise three random 110-token sequences."""
    rng = np.random.default_rng(0)
    secrets = rng.integers(0, VOCAB, size=(3, 110))
    model = _tiny_llama()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = torch.as_tensor(secrets)
    model.train()
    for _ in range(300):
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if loss.item() < 0.01:
            break
    return model, secrets


def test_kv_cached_greedy_matches_full_recompute() -> None:
    model = _tiny_llama(1)
    prompts = np.random.default_rng(1).integers(0, VOCAB, size=(5, 12))
    cached = greedy_continuations(model, prompts, n_tokens=8, batch_size=2)
    model.eval()
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            ids = torch.as_tensor(prompt)[None]
            for step in range(8):
                token = model(input_ids=ids).logits[0, -1].argmax()
                assert int(token) == cached[row, step]
                ids = torch.cat([ids, token.view(1, 1)], dim=1)


def test_extraction_finds_memorised_records(trained: tuple[LlamaForCausalLM, np.ndarray]) -> None:
    model, secrets = trained
    model.train()
    rng = np.random.default_rng(5)
    random_records = rng.integers(0, VOCAB, size=(6, 100)).tolist()
    short = [list(range(60))]
    records = [s.tolist() for s in secrets] + random_records + short
    result = extraction_check(model, records, prefix_len=50, suffix_len=50, batch_size=4)
    assert model.training, "the model's training mode must be restored"
    assert result.n_audited == 9 and result.n_skipped == 1
    assert result.audited_indices == list(range(9))
    assert result.memorised[:3] == [True, True, True]
    assert not any(result.memorised[3:])
    assert result.rate == pytest.approx(3 / 9)
    assert result.normalised_edit_distance[:3] == [0.0, 0.0, 0.0]
    assert min(result.normalised_edit_distance[3:]) > 0.5
    assert result.approximate_rate(0.1) == pytest.approx(3 / 9)


def test_untrained_model_memorises_nothing() -> None:
    records = np.random.default_rng(7).integers(0, VOCAB, size=(4, 100)).tolist()
    result = extraction_check(_tiny_llama(2), records)
    assert result.memorised == [False] * 4 and result.rate == 0.0
    empty = extraction_check(_tiny_llama(2), [[1, 2, 3]])
    assert empty.n_audited == 0 and empty.n_skipped == 1 and math.isnan(empty.rate)


def test_edit_distance_and_inherited_count() -> None:
    assert normalised_edit_distance([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert normalised_edit_distance([1, 9, 3, 4], [1, 2, 3, 4]) == 0.25
    assert normalised_edit_distance([2, 3, 4, 5], [1, 2, 3, 4]) == 0.5
    assert normalised_edit_distance([], [1, 2]) == 1.0
    assert inherited_count([True, True, False, False], [True, False, True, False]) == 1
    with pytest.raises(ValueError, match="same records"):
        inherited_count([True], [True, False])
