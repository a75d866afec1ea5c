"""Batched, left-padded, KV-cached sampling (docs/METHODS.md §4 rollouts) on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.rollouts import Rollout, left_pad, positions_from_mask, sample_rollouts

VOCAB = 64
PAD = 0
NO_EOS = VOCAB + 1  # never produced, so rows run to max_new_tokens

PROMPTS = [[5, 9, 13, 2, 7], [11, 3], [40, 41, 42], [8]]


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        # Larger init than the default gives peaked logits, so greedy ties cannot flip on rounding.
        initializer_range=0.2,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


def test_left_pad() -> None:
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [1, 1, 0]]
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []], 0)
    with pytest.raises(ValueError, match="at least one"):
        left_pad([], 0)


def test_shapes_and_masks_without_eos(model: LlamaForCausalLM) -> None:
    out = sample_rollouts(model, PROMPTS, 6, eos_id=NO_EOS, pad_id=PAD, temperature=0.0)
    assert isinstance(out, Rollout)
    assert out.prompt_length == 5 and out.generated_length == 6
    assert out.input_ids.shape == out.attention_mask.shape == out.continuation_mask.shape == (4, 11)
    assert out.input_ids.dtype == torch.long and out.continuation_mask.dtype == torch.float32
    assert not out.input_ids.requires_grad
    assert (out.continuation_mask[:, :5] == 0).all() and (out.continuation_mask[:, 5:] == 1).all()
    assert out.attention_mask[1].tolist() == [0, 0, 0, 1, 1] + [1] * 6
    assert out.input_ids[1, :3].tolist() == [PAD] * 3


def test_greedy_cache_matches_no_cache(model: LlamaForCausalLM) -> None:
    cached = sample_rollouts(model, PROMPTS, 12, NO_EOS, PAD, temperature=0.0, use_cache=True)
    uncached = sample_rollouts(model, PROMPTS, 12, NO_EOS, PAD, temperature=0.0, use_cache=False)
    assert torch.equal(cached.input_ids, uncached.input_ids)
    assert torch.equal(cached.attention_mask, uncached.attention_mask)
    assert torch.equal(cached.continuation_mask, uncached.continuation_mask)
    # Greedy ids are the argmax of a full forward pass over each prefix.
    full = model(input_ids=cached.input_ids[:1, :-1]).logits
    row0 = cached.input_ids[0]
    assert torch.equal(full[0, 4:].argmax(-1), row0[5:])


def test_left_padded_row_equals_prompt_alone(model: LlamaForCausalLM) -> None:
    batch = sample_rollouts(model, PROMPTS, 10, NO_EOS, PAD, temperature=0.0)
    width = batch.prompt_length
    for row, prompt in enumerate(PROMPTS):
        alone = sample_rollouts(model, [prompt], 10, NO_EOS, PAD, temperature=0.0)
        assert torch.equal(batch.input_ids[row, width:], alone.input_ids[0, len(prompt) :]), row


def test_sampling_reproducible_with_generator(model: LlamaForCausalLM) -> None:
    def run(seed: int, use_cache: bool = True) -> Rollout:
        g = torch.Generator().manual_seed(seed)
        return sample_rollouts(model, PROMPTS, 8, NO_EOS, PAD, temperature=1.5, use_cache=use_cache, generator=g)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert torch.equal(a.input_ids, run(1, use_cache=False).input_ids)


def test_eos_stops_rows_and_masks(model: LlamaForCausalLM) -> None:
    free = sample_rollouts(model, PROMPTS, 10, NO_EOS, PAD, temperature=0.0)
    width = free.prompt_length
    gen = free.input_ids[:, width:]
    eos = int(gen[0, 2])  # row 0 emits this token at step 2 (or earlier)
    out = sample_rollouts(model, PROMPTS, 10, eos, PAD, temperature=0.0)
    for row in range(len(PROMPTS)):
        hits = (gen[row] == eos).nonzero().flatten().tolist()
        stop = hits[0] + 1 if hits else gen.shape[1]
        got = out.input_ids[row, width:]
        cont = out.continuation_mask[row, width:]
        assert torch.equal(got[:stop], gen[row, :stop])
        assert (got[stop:] == PAD).all()
        assert cont[:stop].eq(1).all() and cont[stop:].eq(0).all()
        assert torch.equal(out.attention_mask[row, width:].float(), cont)
        if hits:
            assert int(got[stop - 1]) == eos
    assert out.continuation_mask[0, width:].sum() <= 3


def test_early_stop_when_all_rows_finish(model: LlamaForCausalLM) -> None:
    prompt = [[3, 4, 5]]
    free = sample_rollouts(model, prompt, 5, NO_EOS, PAD, temperature=0.0)
    first = int(free.input_ids[0, 3])
    out = sample_rollouts(model, prompt, 5, first, PAD, temperature=0.0)
    assert out.generated_length == 1
    assert out.continuation_mask.tolist() == [[0.0, 0.0, 0.0, 1.0]]


def test_training_mode_restored(model: LlamaForCausalLM) -> None:
    model.train()
    try:
        out = sample_rollouts(model, PROMPTS, 3, NO_EOS, PAD, temperature=0.0)
        assert model.training and all(m.training for m in model.modules())
        # Rollout tensors are ordinary tensors: usable in a later forward pass with gradients.
        loss = model(input_ids=out.input_ids, attention_mask=out.attention_mask).logits.sum()
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    sample_rollouts(model, PROMPTS, 3, NO_EOS, PAD, temperature=0.0)
    assert not model.training


def test_bad_arguments(model: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample_rollouts(model, PROMPTS, 0, NO_EOS, PAD)
    with pytest.raises(ValueError, match="temperature"):
        sample_rollouts(model, PROMPTS, 2, NO_EOS, PAD, temperature=-1.0)


def test_gpt2_left_padding_and_cache() -> None:
    # GPT-2 uses learned absolute positions, so wrong position ids under left padding would show here.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2,
    )
    gpt2 = GPT2LMHeadModel(config).eval()
    cached = sample_rollouts(gpt2, PROMPTS, 8, NO_EOS, PAD, temperature=0.0)
    uncached = sample_rollouts(gpt2, PROMPTS, 8, NO_EOS, PAD, temperature=0.0, use_cache=False)
    assert torch.equal(cached.input_ids, uncached.input_ids)
    for row, prompt in enumerate(PROMPTS):
        alone = sample_rollouts(gpt2, [prompt], 8, NO_EOS, PAD, temperature=0.0)
        assert torch.equal(cached.input_ids[row, cached.prompt_length :], alone.input_ids[0, len(prompt) :])
