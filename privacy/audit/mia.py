"""Membership-inference scores and ROC metrics (docs/METHODS.md §8).

Every score is oriented so that higher means "member". Scores are computed from per-token natural-log
probabilities ``log p(x_t | x_<t)`` (``scoring.token_logprobs``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from privacy.audit.scoring import token_logprobs

__all__ = [
    "RocMetrics",
    "loglog_roc_points",
    "loss_score",
    "mia_scores",
    "min_k_score",
    "reference_score",
    "roc_metrics",
    "tpr_at_fpr",
    "zlib_score",
]


def _logprobs(token_logprobs: np.ndarray | Sequence[float]) -> np.ndarray:
    values = np.asarray(token_logprobs, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("a membership score needs at least one scored token (sequences of length >= 2)")
    return values


def loss_score(token_logprobs: np.ndarray | Sequence[float]) -> float:
    """Mean-loss attack score, docs/METHODS.md §8: ``−mean loss = mean_t log p(x_t | x_<t)``."""
    return float(np.mean(_logprobs(token_logprobs)))


def zlib_score(token_logprobs: np.ndarray | Sequence[float], text: str) -> float:
    """zlib-ratio score, docs/METHODS.md §8: ``−log PPL / len(zlib.compress(text))``.

    ``log PPL`` is the mean per-token negative log-likelihood (nats). A low perplexity relative to the
    text's zlib entropy suggests memorisation, so the ratio is negated to make higher mean "member".
    """
    compressed = len(zlib.compress(text.encode("utf-8")))
    log_ppl = -float(np.mean(_logprobs(token_logprobs)))
    return -log_ppl / compressed


def reference_score(
    token_logprobs: np.ndarray | Sequence[float], reference_logprobs: np.ndarray | Sequence[float]
) -> float:
    """Reference-model score, docs/METHODS.md §8: ``log p_M(x) − log p_ref(x)`` (sums of token log-probs).

    Both models must use the same tokenisation of ``x``.
    """
    target = _logprobs(token_logprobs)
    reference = _logprobs(reference_logprobs)
    if target.shape != reference.shape:
        raise ValueError(
            f"target and reference token log-probs differ in length ({target.size} vs {reference.size}); "
            "the reference model must share the tokenizer"
        )
    return float(target.sum() - reference.sum())


def min_k_score(token_logprobs: np.ndarray | Sequence[float], k: float = 0.2) -> float:
    """Min-K% score, docs/METHODS.md §8: mean of the lowest ``ceil(k · n)`` token log-probs (at least one)."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"min_k_score: k must be in (0, 1], got {k}")
    values = _logprobs(token_logprobs)
    count = max(1, math.ceil(k * values.size))
    return float(np.mean(np.sort(values)[:count]))


def mia_scores(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    texts: Sequence[str],
    reference_model: torch.nn.Module | None = None,
    k: float = 0.2,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """All §8 membership scores of each sequence: ``loss``, ``zlib``, ``min_k`` and, with a reference
    model, ``reference``. ``texts[i]`` is the text of ``sequences[i]`` (for the zlib length)."""
    if len(sequences) != len(texts):
        raise ValueError(f"mia_scores: {len(sequences)} sequences but {len(texts)} texts; they must pair up")
    logprobs = token_logprobs(model, sequences, batch_size=batch_size, device=device)
    scores = {
        "loss": np.array([loss_score(lp) for lp in logprobs]),
        "zlib": np.array([zlib_score(lp, text) for lp, text in zip(logprobs, texts, strict=True)]),
        "min_k": np.array([min_k_score(lp, k) for lp in logprobs]),
    }
    if reference_model is not None:
        reference = token_logprobs(reference_model, sequences, batch_size=batch_size, device=device)
        scores["reference"] = np.array([reference_score(lp, ref) for lp, ref in zip(logprobs, reference, strict=True)])
    return scores


@dataclass(frozen=True)
class RocMetrics:
    """ROC summary of an attack; a TPR at a target FPR is None (n/a) with fewer than 1/FPR non-members."""

    auc: float
    tpr_at_1pct: float | None
    tpr_at_01pct: float | None
    fpr: np.ndarray
    tpr: np.ndarray


def _scores(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty; ROC metrics need members and non-members")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite scores")
    return array


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float, n_nonmembers: int) -> float | None:
    """Largest TPR among ROC points with ``FPR <= target``; None when ``n_nonmembers < 1/target``."""
    if n_nonmembers < round(1.0 / target):
        return None
    allowed = fpr <= target + 1e-12
    return float(np.max(tpr[allowed])) if np.any(allowed) else 0.0


def roc_metrics(
    member_scores: np.ndarray | Sequence[float], nonmember_scores: np.ndarray | Sequence[float]
) -> RocMetrics:
    """ROC AUC, TPR at FPR 1% and 0.1%, and the full curve (docs/METHODS.md §8; higher score = member)."""
    members = _scores(member_scores, "member_scores")
    nonmembers = _scores(nonmember_scores, "nonmember_scores")
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    scores = np.concatenate([members, nonmembers])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return RocMetrics(
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_1pct=tpr_at_fpr(fpr, tpr, 0.01, nonmembers.size),
        tpr_at_01pct=tpr_at_fpr(fpr, tpr, 0.001, nonmembers.size),
        fpr=np.asarray(fpr, dtype=np.float64),
        tpr=np.asarray(tpr, dtype=np.float64),
    )


def loglog_roc_points(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 200) -> list[tuple[float, float]]:
    """ROC points for a log-log plot: only ``fpr > 0`` and ``tpr > 0``, thinned to about ``max_points``.

    Thinning keeps, for each of ``max_points`` log-spaced FPR levels, the best TPR reached at or below
    that level (the ROC is a step function), so the low-FPR region keeps its detail.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape:
        raise ValueError("fpr and tpr must have the same shape")
    keep = (fpr > 0) & (tpr > 0)
    fpr, tpr = fpr[keep], tpr[keep]
    if fpr.size <= max_points:
        return [(float(f), float(t)) for f, t in zip(fpr, tpr, strict=True)]
    order = np.argsort(fpr, kind="stable")
    fpr, tpr = fpr[order], np.maximum.accumulate(tpr[order])
    levels = np.geomspace(fpr[0], fpr[-1], max_points)
    index = np.searchsorted(fpr, levels, side="right") - 1
    index = np.unique(np.clip(index, 0, fpr.size - 1))
    return [(float(fpr[i]), float(tpr[i])) for i in index]
