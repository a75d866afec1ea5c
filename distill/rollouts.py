"""On-policy rollouts for DP-OPD (docs/METHODS.md §4): batched, left-padded sampling with a KV cache.

The student samples continuations ``ŷ ~ p_S(·|x)`` with gradients off and dropout off, so the rollout
adds no per-sample-gradient state to a DP step (docs/METHODS.md §2: "generate under no_grad", and the
Opacus wrapper has no ``.generate``, so the *unwrapped* module is passed here). The sampling loop is
written out rather than delegated to ``model.generate`` so that left padding, position ids, per-row EOS
stopping and the continuation mask are under our control and testable.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Rollout", "left_pad", "positions_from_mask", "sample_rollouts"]


@dataclass(frozen=True)
class Rollout:
    """A batch of prompts with sampled continuations.

    Attributes
    ----------
    input_ids : Tensor
        ``(B, P+L)`` long: left-padded prompts followed by the generated tokens (pad after EOS).
    attention_mask : Tensor
        ``(B, P+L)`` long: 1 on real prompt tokens and on generated tokens up to and including the
        first EOS, 0 on padding.
    continuation_mask : Tensor
        ``(B, P+L)`` float: 1 on generated tokens up to and including the first EOS, 0 on prompt,
        padding and everything after EOS. Shifted by the caller to mask the distillation targets.
    prompt_length : int
        ``P``, the padded prompt width; generation starts at this column.
    """

    input_ids: Tensor
    attention_mask: Tensor
    continuation_mask: Tensor
    prompt_length: int

    @property
    def generated_length(self) -> int:
        """``L``, the number of generated columns (at most ``max_new_tokens``)."""
        return int(self.input_ids.shape[1]) - self.prompt_length


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token-id prompts to a common width.

    Left padding keeps the last prompt token of every row in the last column, so one forward pass gives
    the next-token distribution of every row at the same index.

    Parameters
    ----------
    prompts : sequence of sequences of int
        Non-empty batch of non-empty prompts.
    pad_id : int
        Token id used for padding.

    Returns
    -------
    input_ids, attention_mask : Tensor
        Both ``(B, P)`` long, ``P`` = longest prompt; the mask is 0 on padding.
    """
    if len(prompts) == 0:
        raise ValueError("prompts must contain at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"every prompt needs at least one token; prompt {lengths.index(0)} is empty")
    width = max(lengths)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that start at 0 on each row's first real token (left padding).

    Padding columns get position 1, an arbitrary valid index; they are masked out of attention anyway.
    """
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _forward_options(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """Name of the KV-cache argument and optional speed-ups that this model's ``forward`` accepts.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated); both are
    supported so the loop works across versions. ``logits_to_keep=1`` skips the LM head on all but the
    last position, which matters for the prompt pass.
    """
    params = inspect.signature(model.forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    extra: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return cache_kwarg, extra


def _next_token(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def sample_rollouts(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample continuations from a causal LM, ``ŷ ~ p_S(·|x)`` (docs/METHODS.md §4, sampling temperature γ).

    Runs under ``torch.no_grad()`` with the model in eval mode; its previous training mode is restored
    afterwards (also on error). Rows stop at their first EOS; later columns hold ``pad_id`` with masks 0.
    The loop stops early once every row has finished, so ``L <= max_new_tokens``.

    Parameters
    ----------
    model : nn.Module
        An unwrapped transformers causal LM taking ``input_ids, attention_mask, position_ids,
        use_cache`` and a KV cache (``cache`` in transformers 5.x, else ``past_key_values``), and
        returning ``.logits`` and the updated cache. Checked with Llama, Qwen2 and GPT-2.
    prompts : sequence of sequences of int
        Prompt token ids (left-padded here).
    max_new_tokens : int
        ``L_gen`` >= 1.
    eos_id : int
        End-of-sequence id; an id the model never produces disables EOS stopping.
    pad_id : int
        Padding id for prompts and finished rows.
    temperature : float
        Sampling temperature ``γ`` >= 0; ``0`` means greedy argmax.
    use_cache : bool
        Reuse the key/value cache (one new token per step) instead of re-running the whole sequence.
    generator : torch.Generator, optional
        Random source on the model's device, for reproducible sampling.

    Returns
    -------
    Rollout
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature, use_cache, generator)
    finally:
        model.train(was_training)


def _sample(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float,
    use_cache: bool,
    generator: torch.Generator | None,
) -> Rollout:
    device = _model_device(model)
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    batch, prompt_len = prompt_ids.shape

    ids = prompt_ids
    attn = prompt_mask
    positions = positions_from_mask(prompt_mask)
    # Per-row position of the next token: real prompt length, independent of padding.
    next_pos = prompt_mask.sum(dim=1, keepdim=True)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    past: Any = None
    step_ids, step_pos = ids, positions
    new_tokens: list[Tensor] = []
    new_mask: list[Tensor] = []

    cache_kwarg, extra = _forward_options(model)
    for _ in range(max_new_tokens):
        if use_cache:
            out = model(
                input_ids=step_ids,
                attention_mask=attn,
                position_ids=step_pos,
                use_cache=True,
                **{cache_kwarg: past},
                **extra,
            )
            past = getattr(out, cache_kwarg)
        else:
            out = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False, **extra)
        token = _next_token(out.logits[:, -1, :], temperature, generator)
        alive = ~finished
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        new_tokens.append(token)
        new_mask.append(alive.long())
        finished = finished | (alive & (token == eos_id))

        # A finished row's pad token is masked out so it never becomes attended context.
        step_ids = token.unsqueeze(1)
        step_pos = next_pos.clone()
        next_pos = next_pos + 1
        ids = torch.cat([ids, step_ids], dim=1)
        attn = torch.cat([attn, alive.long().unsqueeze(1)], dim=1)
        positions = torch.cat([positions, step_pos], dim=1)
        if bool(finished.all()):
            break

    gen_mask = torch.stack(new_mask, dim=1)
    continuation = torch.cat([torch.zeros_like(prompt_mask), gen_mask], dim=1).float()
    return Rollout(input_ids=ids, attention_mask=attn, continuation_mask=continuation, prompt_length=prompt_len)
