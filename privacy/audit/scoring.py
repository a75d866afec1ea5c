"""Batched per-token log-probabilities of causal language models (shared by the audits).

Every audit in docs/METHODS.md §8 reduces to "how likely does the model find these tokens": exposure needs
the log-perplexity of the secret tokens of a canary, membership inference needs per-token log-probs of
whole records, extraction needs greedy decoding. This module holds the batched forward passes; the
formulas built on them live in ``exposure.py``, ``mia.py`` and ``memorisation.py``.

A model is any transformers causal LM that can be called as
``model(input_ids=..., attention_mask=...).logits``.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = [
    "cache_keyword",
    "eval_mode",
    "model_device",
    "output_cache",
    "secret_log_perplexity",
    "token_logprobs",
]

_LN2 = math.log(2.0)


def model_device(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` if given, else the device of the model's first parameter (CPU if it has none)."""
    if device is not None:
        return torch.device(device)
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode and under ``no_grad`` for the block, then restore its training flag.

    Audits run on models that may be mid-training (a DP-wrapped student); leaving one in eval mode
    would silently change the next training step, so the previous mode is always restored.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_keyword(model: torch.nn.Module) -> str:
    """Name of the forward argument that takes the KV cache.

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name still works but warns);
    older models and releases only know ``past_key_values``.
    """
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache returned by a forward pass with ``use_cache=True`` (either attribute name)."""
    for key in ("cache", "past_key_values"):
        value = output.get(key) if hasattr(output, "get") else getattr(output, key, None)
        if value is not None:
            return value
    raise ValueError("the model returned no KV cache although use_cache=True was passed")


def _supports_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in _forward_parameters(model)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


def _gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` without materialising the full log-softmax tensor twice."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> list[np.ndarray]:
    """Natural-log probability of every token given its prefix, ``log p(x_t | x_<t)`` for ``t >= 1``.

    Sequences are sorted by length and right-padded within each batch (an attention mask hides the
    padding, and right padding keeps every real token at its true position), so the result of a
    sequence does not depend on which other sequences share its batch. Runs under ``no_grad`` in eval
    mode; the model's previous mode is restored.

    Parameters
    ----------
    model
        Causal LM returning ``.logits`` of shape ``(B, T, V)``.
    sequences
        Token-id sequences of length >= 1 (a length-1 sequence yields an empty array).
    batch_size
        Sequences per forward pass; lower it for large vocabularies (the logits are ``B·T·V`` floats).
    device
        Where to run; default: the model's device.

    Returns
    -------
    list of np.ndarray
        One float64 array of length ``len(sequence) - 1`` per input sequence, in input order.
    """
    _check_batch_size(batch_size)
    lengths = [len(seq) for seq in sequences]
    if any(length == 0 for length in lengths):
        raise ValueError("token_logprobs: every sequence needs at least one token; got an empty sequence")
    run_device = model_device(model, device)
    order = sorted(range(len(sequences)), key=lambda i: lengths[i])
    results: list[np.ndarray] = [np.zeros(0)] * len(sequences)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            batch_indices = order[start : start + batch_size]
            width = max(lengths[i] for i in batch_indices)
            if width < 2:
                for i in batch_indices:
                    results[i] = np.zeros(0)
                continue
            ids = torch.zeros((len(batch_indices), width), dtype=torch.long)
            mask = torch.zeros((len(batch_indices), width), dtype=torch.long)
            for row, i in enumerate(batch_indices):
                ids[row, : lengths[i]] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
                mask[row, : lengths[i]] = 1
            ids, mask = ids.to(run_device), mask.to(run_device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            logprobs = _gather_logprobs(logits[:, :-1, :], ids[:, 1:]).double().cpu().numpy()
            for row, i in enumerate(batch_indices):
                results[i] = logprobs[row, : lengths[i] - 1].copy()
    return results


def _secret_span(secret_positions: np.ndarray, width: int) -> tuple[int, int]:
    """First and one-past-last secret position, checking the mask is usable."""
    if secret_positions.dtype != np.bool_ or secret_positions.ndim != 1:
        raise ValueError("secret_positions must be a 1-D boolean array with one entry per token position")
    if secret_positions.shape[0] != width:
        raise ValueError(
            f"secret_positions has {secret_positions.shape[0]} entries but the sequences have {width} tokens"
        )
    where = np.flatnonzero(secret_positions)
    if where.size == 0:
        raise ValueError("secret_positions marks no token; at least one secret token is required")
    if where[0] == 0:
        raise ValueError(
            "secret_positions marks position 0, which has no prefix to condition on; use a template with "
            "text before {secret} or an encode that prepends a BOS token"
        )
    return int(where[0]), int(where[-1]) + 1


def _shared_prefix_length(ids: np.ndarray, limit: int) -> int:
    """Number of leading columns identical in every row, at most ``limit``."""
    if ids.shape[0] == 0:
        return 0
    same = np.all(ids[:, :limit] == ids[:1, :limit], axis=0)
    return int(limit if same.all() else np.argmin(same))


def _prefix_cache(model: torch.nn.Module, prefix: torch.Tensor) -> Any | None:
    """KV cache of one copy of the shared template prefix, or None when the model's cache cannot be
    replicated along the batch (then every candidate recomputes the prefix)."""
    output = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
    try:
        cache = output_cache(output)
    except ValueError:
        return None
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    return cache


def secret_log_perplexity(
    model: torch.nn.Module,
    ids: np.ndarray,
    secret_positions: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
    share_prefix: bool = True,
) -> np.ndarray:
    """Log-perplexity in bits of the secret tokens of equal-length candidates (docs/METHODS.md §8).

    ``logppl(x) = Σ_{t ∈ secret} −log2 p(x_t | x_<t)``.

    Three savings keep 10,000 candidates at seconds on a CPU, none of which changes the result:
    tokens after the last secret token cannot change any secret token's probability in a causal
    model, so they are dropped; the template prefix shared by all candidates is run once and its
    KV cache replicated over each batch (``share_prefix``); and where the model supports
    ``logits_to_keep`` only the logits that predict secret tokens are computed.

    Parameters
    ----------
    model
        Causal LM returning ``.logits``.
    ids
        ``(N, T)`` integer token ids, all candidates of one canary format (same length by construction).
    secret_positions
        ``(T,)`` boolean mask of the secret tokens; position 0 must be False.
    batch_size
        Candidates per forward pass.
    device
        Where to run; default: the model's device.
    progress
        Show a tqdm progress bar over batches.
    share_prefix
        Reuse the KV cache of the common prefix (falls back to full passes when the model's cache
        cannot be replicated).

    Returns
    -------
    np.ndarray
        ``(N,)`` float64 log-perplexities in bits.
    """
    _check_batch_size(batch_size)
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 2-D integer array (N candidates, T tokens), got shape {ids.shape}")
    secret_positions = np.asarray(secret_positions)
    first, end = _secret_span(secret_positions, ids.shape[1])
    # Logits at position t predict token t + 1: inputs up to end - 2 suffice to score tokens up to end - 1.
    inputs = torch.as_tensor(ids[:, : end - 1], dtype=torch.long)
    targets = torch.as_tensor(ids[:, first:end], dtype=torch.long)
    # Mask relative to the kept logits, which predict tokens first .. end - 1.
    keep = torch.as_tensor(secret_positions[first:end])
    n_keep = end - first
    use_keep = _supports_logits_to_keep(model)
    run_device = model_device(model, device)
    keyword = cache_keyword(model)
    out = np.zeros(ids.shape[0], dtype=np.float64)
    starts: Any = range(0, ids.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="scoring candidates", unit="batch")
    with eval_mode(model):
        # The position predicting the first secret token (first - 1) must be recomputed, not cached.
        accepts_cache = bool({"cache", "past_key_values"} & _forward_parameters(model))
        shared = _shared_prefix_length(ids, first - 1) if share_prefix and accepts_cache else 0
        base_cache = _prefix_cache(model, inputs[:1, :shared].to(run_device)) if shared > 0 else None
        if base_cache is None:
            shared = 0
        for start in starts:
            batch = inputs[start : start + batch_size].to(run_device)
            rows = batch.shape[0]
            kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(batch)}
            if base_cache is not None:
                cache = copy.deepcopy(base_cache)
                cache.batch_repeat_interleave(rows)
                kwargs[keyword] = cache
                kwargs["use_cache"] = True
            if use_keep:
                kwargs["logits_to_keep"] = n_keep
                logits = model(input_ids=batch[:, shared:], **kwargs).logits
            else:
                logits = model(input_ids=batch[:, shared:], **kwargs).logits[:, first - 1 - shared : end - 1 - shared]
            logprobs = _gather_logprobs(logits, targets[start : start + batch_size].to(run_device))
            bits = -(logprobs[:, keep.to(run_device)].double().sum(dim=1)) / _LN2
            out[start : start + rows] = bits.cpu().numpy()
    return out
