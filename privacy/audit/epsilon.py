"""Empirical lower bounds on ε from membership attacks (docs/METHODS.md §8).

Two audits: the classical one, Clopper–Pearson bounds on an attack's TPR/FPR over many members and
non-members, and the one-run audit of Steinke, Nasr and Jagielski (2023), which needs a single training
run with ``m`` canaries each included with probability 1/2. An ``ε_LB`` above the accountant's ε means
the guarantee is unsound (or the implementation has a bug).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import special, stats

__all__ = [
    "AttackCounts",
    "best_attack_epsilon",
    "clopper_pearson_bounds",
    "clopper_pearson_epsilon",
    "clopper_pearson_power",
    "one_run_canaries_for",
    "one_run_epsilon",
    "one_run_guesses",
    "one_run_p_value",
    "one_run_power",
    "power_note",
]


class AttackCounts(NamedTuple):
    """Confusion counts of a thresholded attack (predict member when score >= threshold)."""

    tp: int
    fn: int
    fp: int
    tn: int


def _check_counts(tp: int, fn: int, fp: int, tn: int) -> None:
    for name, value in (("tp", tp), ("fn", fn), ("fp", fp), ("tn", tn)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if tp + fn == 0 or fp + tn == 0:
        raise ValueError("need at least one member (tp + fn > 0) and one non-member (fp + tn > 0)")


def _check_alpha_delta(alpha: float, delta: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")


def clopper_pearson_bounds(
    tp: np.ndarray | int, fn: np.ndarray | int, fp: np.ndarray | int, tn: np.ndarray | int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper–Pearson ``TPR_lo`` and ``FPR_hi``, each at confidence ``1 − α/2``.

    ``TPR_lo = Beta⁻¹(α/2; TP, FN + 1)`` (0 when TP = 0) and ``FPR_hi = Beta⁻¹(1 − α/2; FP + 1, TN)``
    (1 when TN = 0). Vectorised over the counts.
    """
    tp_a, fn_a, fp_a, tn_a = (np.asarray(x, dtype=np.float64) for x in (tp, fn, fp, tn))
    half = alpha / 2.0
    with np.errstate(invalid="ignore"):
        tpr_lo = np.where(tp_a > 0, special.betaincinv(np.maximum(tp_a, 1.0), fn_a + 1.0, half), 0.0)
        fpr_hi = np.where(tn_a > 0, special.betaincinv(fp_a + 1.0, np.maximum(tn_a, 1.0), 1.0 - half), 1.0)
    return tpr_lo, fpr_hi


def _epsilon_from_bounds(tpr_lo: np.ndarray, fpr_hi: np.ndarray, delta: float) -> np.ndarray:
    """``max(0, log((TPR_lo − δ)/FPR_hi), log((TNR_lo − δ)/FNR_hi))`` with ``TNR_lo = 1 − FPR_hi``,
    ``FNR_hi = 1 − TPR_lo``; a ratio whose numerator is not positive contributes nothing."""
    tnr_lo = 1.0 - fpr_hi
    fnr_hi = 1.0 - tpr_lo
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where((tpr_lo - delta > 0) & (fpr_hi > 0), np.log((tpr_lo - delta) / fpr_hi), 0.0)
        second = np.where((tnr_lo - delta > 0) & (fnr_hi > 0), np.log((tnr_lo - delta) / fnr_hi), 0.0)
    return np.maximum(0.0, np.maximum(first, second))


def clopper_pearson_epsilon(tp: int, fn: int, fp: int, tn: int, alpha: float = 0.05, delta: float = 0.0) -> float:
    """ε lower bound from one attack's confusion counts, docs/METHODS.md §8.

    ``ε_LB = max(0, log((TPR_lo − δ)/FPR_hi), log((TNR_lo − δ)/FNR_hi))``.

    Split of α: the two one-sided Clopper–Pearson bounds (``TPR_lo`` and ``FPR_hi``) get ``α/2`` each,
    so by a union bound both hold with probability ``>= 1 − α``. ``TNR_lo = 1 − FPR_hi`` and
    ``FNR_hi = 1 − TPR_lo`` are the same two events, so the second ratio costs no extra confidence.
    This split reproduces the spec vector: N_in = N_out = 1000, α = 0.05, TP = 500, FP = 5 → 3.696.
    """
    _check_counts(tp, fn, fp, tn)
    _check_alpha_delta(alpha, delta)
    tpr_lo, fpr_hi = clopper_pearson_bounds(tp, fn, fp, tn, alpha)
    return float(_epsilon_from_bounds(tpr_lo, fpr_hi, delta))


def best_attack_epsilon(
    member_scores: np.ndarray | Sequence[float],
    nonmember_scores: np.ndarray | Sequence[float],
    alpha: float = 0.05,
    delta: float = 0.0,
) -> tuple[float, float, AttackCounts]:
    """Best ε lower bound over every threshold of an attack score (higher = member), docs/METHODS.md §8.

    Every distinct score value is tried as a threshold (member iff score >= threshold); since the
    threshold is chosen on the same data, each bound uses ``α / (number of thresholds)`` (Bonferroni).

    Returns
    -------
    (epsilon_lb, threshold, counts)
        The best bound, its threshold and its confusion counts.
    """
    _check_alpha_delta(alpha, delta)
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("best_attack_epsilon needs at least one member and one non-member score")
    if not (np.all(np.isfinite(members)) and np.all(np.isfinite(nonmembers))):
        raise ValueError("attack scores must be finite")
    thresholds = np.unique(np.concatenate([members, nonmembers]))
    sorted_members = np.sort(members)
    sorted_nonmembers = np.sort(nonmembers)
    tp = members.size - np.searchsorted(sorted_members, thresholds, side="left")
    fp = nonmembers.size - np.searchsorted(sorted_nonmembers, thresholds, side="left")
    fn = members.size - tp
    tn = nonmembers.size - fp
    tpr_lo, fpr_hi = clopper_pearson_bounds(tp, fn, fp, tn, alpha / thresholds.size)
    epsilons = _epsilon_from_bounds(tpr_lo, fpr_hi, delta)
    best = int(np.argmax(epsilons))
    counts = AttackCounts(int(tp[best]), int(fn[best]), int(fp[best]), int(tn[best]))
    return float(epsilons[best]), float(thresholds[best]), counts


def one_run_p_value(epsilon: float, m: int, r: int, v: int, delta: float = 0.0) -> float:
    """``p(ε)`` of the one-run audit, docs/METHODS.md §8 (Steinke, Nasr, Jagielski 2023).

    ``q = e^ε / (1 + e^ε)``,
    ``p(ε) = P[Bin(r, q) >= v] + 2 m δ · max_{i=1..v} P[v − i <= Bin(r, q) < v] / i``.
    """
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0.0 or v == 0:
        return tail
    i = np.arange(1, v + 1)
    below_v = stats.binom.cdf(v - 1, r, q)
    window = below_v - stats.binom.cdf(v - i - 1, r, q)
    return tail + 2.0 * m * delta * float(np.max(window / i))


def one_run_epsilon(m: int, r: int, v: int, delta: float = 0.0, beta: float = 0.05) -> float:
    """One-run ε lower bound: the largest ε with ``p(ε) < β`` (docs/METHODS.md §8), by bisection.

    ``p`` grows with ε (a larger ε makes ``v`` correct guesses less surprising), so the set
    ``{ε : p(ε) < β}`` is an interval starting at 0; 0 is returned when even ``p(0) >= β``.

    Vectors (β = 0.05): m = r = v = 100 → 3.4930 (δ = 0); m = 1000, r = 200, v = 190 → 2.3936 (δ = 1e-5).
    """
    if not (0 <= v <= r <= m):
        raise ValueError(f"one-run audit needs 0 <= v <= r <= m, got m={m}, r={r}, v={v}")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if r == 0 or one_run_p_value(0.0, m, r, v, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    # At ε = 700 expit is exactly 1, so p = 1 >= β and the doubling always stops.
    while one_run_p_value(high, m, r, v, delta) < beta:
        low, high = high, high * 2.0
        if high > 700.0:
            return low
    while high - low > 1e-9 * max(1.0, high):
        middle = 0.5 * (low + high)
        if one_run_p_value(middle, m, r, v, delta) < beta:
            low = middle
        else:
            high = middle
    return low


def one_run_guesses(
    scores: np.ndarray | Sequence[float], included: np.ndarray | Sequence[bool], k_pos: int, k_neg: int
) -> tuple[int, int]:
    """Guesses of a one-run audit: IN for the ``k_pos`` highest scores, OUT for the ``k_neg`` lowest.

    Ties are broken by canary order (a stable sort), which is independent of the random inclusion.

    Returns
    -------
    (r, v)
        Number of guesses ``r = k_pos + k_neg`` and number of correct guesses ``v``.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(included, dtype=bool).ravel()
    if values.shape != truth.shape:
        raise ValueError(f"scores ({values.size}) and included ({truth.size}) must have one entry per canary")
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > values.size:
        raise ValueError(f"need k_pos, k_neg >= 0 and k_pos + k_neg <= m = {values.size}; got {k_pos}, {k_neg}")
    order = np.argsort(-values, kind="stable")
    positives = order[:k_pos]
    negatives = order[values.size - k_neg :] if k_neg > 0 else order[:0]
    correct = int(np.count_nonzero(truth[positives])) + int(np.count_nonzero(~truth[negatives]))
    return k_pos + k_neg, correct


# -- audit power: what the same audit could certify with a perfect attack (docs/METHODS.md §8) ----------


def one_run_power(m: int, r: int, delta: float = 0.0, beta: float = 0.05) -> float:
    """Power of a one-run audit: its ε lower bound when all ``r`` guesses are correct (``v = r``).

    No attack on the same canaries (same ``m``, ``r``, δ, β) can certify more, since ``p(ε)`` only
    shrinks as ``v`` grows; an ε above this value is out of the audit's reach whatever the model does.
    """
    return one_run_epsilon(m, r, r, delta=delta, beta=beta)


def clopper_pearson_power(n_members: int, n_nonmembers: int, alpha: float = 0.05, delta: float = 0.0) -> float:
    """Power of a Clopper–Pearson audit: its bound for a perfect attack (TP = all members, FP = 0).

    ``alpha`` is the confidence spent on the bound that is reported, after every Bonferroni split
    (per attack, per threshold tried), so that the power is that of the same audit.
    """
    return clopper_pearson_epsilon(n_members, 0, 0, n_nonmembers, alpha=alpha, delta=delta)


def one_run_canaries_for(target: float, delta: float = 0.0, beta: float = 0.05, guess_fraction: float = 0.5,
                         limit: int = 1 << 16) -> int:
    """Smallest ``m`` whose one-run audit, guessing ``guess_fraction · m`` canaries, has power >= ``target``.

    The power grows with ``m`` at fixed δ and β (more correct guesses are more surprising), which the
    doubling-then-bisection search relies on; ``ValueError`` when even ``limit`` canaries fall short
    (a δ so large that ``2 m δ`` alone exceeds β).
    """
    if not 0.0 < guess_fraction <= 1.0:
        raise ValueError(f"guess_fraction must be in (0, 1], got {guess_fraction}")

    def power(m: int) -> float:
        return one_run_power(m, max(1, int(m * guess_fraction)), delta=delta, beta=beta)

    high = 4
    while power(high) < target:
        high *= 2
        if high > limit:
            raise ValueError(f"no one-run audit with <= {limit} canaries reaches power {target} at delta={delta}")
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if power(middle) < target else (low, middle)
    return high


def power_note(power: float | None, claimed: float | None) -> str | None:
    """The sentence a display must show when an audit cannot reach the claim, else None."""
    if power is None or claimed is None or power >= claimed:
        return None
    return f"this audit cannot detect leaks above ε = {power:.2f} (claimed ε = {claimed:.2f})"
