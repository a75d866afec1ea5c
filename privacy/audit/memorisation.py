"""Extraction-style memorisation audit (docs/METHODS.md §8).

For every audited training record of at least ``prefix_len + suffix_len`` tokens the model is prompted
with the first ``prefix_len`` tokens and greedily decodes ``suffix_len`` more; the record counts as
memorised when all decoded tokens equal the record's. Decoding is batched with a KV cache: all
prompts have the same length, so no padding is needed and one cached step per token suffices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from privacy.audit.scoring import cache_keyword, eval_mode, model_device, output_cache

__all__ = [
    "MemorisationResult",
    "extraction_check",
    "greedy_continuations",
    "inherited_count",
    "normalised_edit_distance",
]


@dataclass(frozen=True)
class MemorisationResult:
    """Outcome of ``extraction_check``.

    ``memorised`` and ``normalised_edit_distance`` have one entry per audited record, in input order;
    ``audited_indices`` maps them back to the input records. ``rate`` is NaN when nothing was audited.
    """

    rate: float
    memorised: list[bool]
    n_audited: int
    normalised_edit_distance: list[float]
    n_skipped: int = 0
    audited_indices: list[int] = field(default_factory=list)

    def approximate_rate(self, threshold: float = 0.1) -> float:
        """Share of audited records with normalised edit distance ``<= threshold`` (ours); NaN when
        nothing was audited."""
        if self.n_audited == 0:
            return float("nan")
        return float(np.mean(np.asarray(self.normalised_edit_distance) <= threshold))


def normalised_edit_distance(decoded: Sequence[int], target: Sequence[int]) -> float:
    """Levenshtein distance between two token sequences divided by the target length (ours)."""
    if len(target) == 0:
        raise ValueError("normalised_edit_distance: target must not be empty")
    previous = list(range(len(target) + 1))
    for i, token in enumerate(decoded, start=1):
        current = [i] + [0] * len(target)
        for j, expected in enumerate(target, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != expected))
        previous = current
    return previous[-1] / len(target)


def greedy_continuations(
    model: torch.nn.Module,
    prompts: np.ndarray,
    n_tokens: int,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Greedy (argmax) continuations of ``n_tokens`` tokens for equal-length ``prompts`` ``(N, P)``.

    One forward pass over the prompts fills the KV cache; every further token costs one cached
    single-token step. Runs in eval mode under ``no_grad`` and restores the model's mode.
    """
    prompts = np.asarray(prompts)
    if prompts.ndim != 2 or prompts.shape[1] == 0:
        raise ValueError(f"prompts must be a non-empty (N, P) array of token ids, got shape {prompts.shape}")
    if n_tokens < 1 or batch_size < 1:
        raise ValueError(f"n_tokens and batch_size must be >= 1, got {n_tokens} and {batch_size}")
    run_device = model_device(model, device)
    keyword = cache_keyword(model)
    out = np.zeros((prompts.shape[0], n_tokens), dtype=np.int64)
    with eval_mode(model):
        for start in range(0, prompts.shape[0], batch_size):
            batch = torch.as_tensor(prompts[start : start + batch_size], dtype=torch.long, device=run_device)
            rows, width = batch.shape
            step = model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=True)
            cache = output_cache(step)
            token = step.logits[:, -1, :].argmax(dim=-1)
            generated = [token]
            for position in range(1, n_tokens):
                mask = torch.ones((rows, width + position), dtype=torch.long, device=run_device)
                step = model(input_ids=token[:, None], attention_mask=mask, use_cache=True, **{keyword: cache})
                cache = output_cache(step)
                token = step.logits[:, -1, :].argmax(dim=-1)
                generated.append(token)
            out[start : start + rows] = torch.stack(generated, dim=1).cpu().numpy()
    return out


def extraction_check(
    model: torch.nn.Module,
    records: Sequence[Sequence[int]],
    prefix_len: int = 50,
    suffix_len: int = 50,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> MemorisationResult:
    """Extraction memorisation audit, docs/METHODS.md §8.

    Prompt with the first ``prefix_len`` tokens of each record, greedily decode ``suffix_len`` tokens,
    count the record as memorised when they all match the record exactly. Records shorter than
    ``prefix_len + suffix_len`` are skipped and counted in ``n_skipped``. The
    ``normalised_edit_distance`` column (ours) is not part of the published extraction criterion.
    """
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError(f"prefix_len and suffix_len must be >= 1, got {prefix_len} and {suffix_len}")
    needed = prefix_len + suffix_len
    audited = [i for i, record in enumerate(records) if len(record) >= needed]
    n_skipped = len(records) - len(audited)
    if not audited:
        return MemorisationResult(float("nan"), [], 0, [], n_skipped, [])
    windows = np.asarray([list(records[i][:needed]) for i in audited], dtype=np.int64)
    decoded = greedy_continuations(model, windows[:, :prefix_len], suffix_len, batch_size, device)
    targets = windows[:, prefix_len:]
    memorised = [bool(flag) for flag in np.all(decoded == targets, axis=1)]
    distances = [normalised_edit_distance(d.tolist(), t.tolist()) for d, t in zip(decoded, targets, strict=True)]
    return MemorisationResult(
        rate=float(np.mean(memorised)),
        memorised=memorised,
        n_audited=len(audited),
        normalised_edit_distance=distances,
        n_skipped=n_skipped,
        audited_indices=audited,
    )


def inherited_count(teacher_memorised: Sequence[bool], student_memorised: Sequence[bool]) -> int:
    """Records memorised by the teacher and also by the student (docs/METHODS.md §8); both lists must
    describe the same audited records in the same order."""
    if len(teacher_memorised) != len(student_memorised):
        raise ValueError(
            f"teacher and student results cover different records ({len(teacher_memorised)} vs "
            f"{len(student_memorised)}); audit both on the same records"
        )
    return sum(1 for t, s in zip(teacher_memorised, student_memorised, strict=True) if t and s)
