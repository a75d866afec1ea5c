"""Canary exposure, rank and skew-normal-extrapolated forms (docs/METHODS.md §8, Secret Sharer).

Inputs are log-perplexities in bits of the secret tokens (``scoring.secret_log_perplexity``): a lower
log-perplexity than most references means the model prefers the canary's secret, i.e. it was exposed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from privacy.audit.canaries import Canary, CanaryFormat, log2_space_size

__all__ = [
    "ExtrapolatedExposure",
    "exposure_report",
    "fit_reference_skewnorm",
    "rank_exposure",
    "skewnorm_exposure",
    "skewnorm_exposure_from_params",
]

_LN2 = math.log(2.0)


def _references(reference_ppl: np.ndarray | Sequence[float]) -> np.ndarray:
    refs = np.asarray(reference_ppl, dtype=np.float64).ravel()
    if refs.size == 0:
        raise ValueError("exposure needs at least one reference log-perplexity")
    if not np.all(np.isfinite(refs)):
        raise ValueError("reference log-perplexities must all be finite")
    return refs


def _canary_value(canary_ppl: float) -> float:
    value = float(canary_ppl)
    if not math.isfinite(value):
        raise ValueError(f"canary log-perplexity must be finite, got {canary_ppl}")
    return value


def rank_exposure(canary_ppl: float, reference_ppl: np.ndarray | Sequence[float]) -> float:
    """Rank exposure, docs/METHODS.md §8: ``log2 N_ref − log2 rank``.

    ``rank = 1 + #{references with log-perplexity <= the canary's}``; ties count against the canary,
    so the exposure never exceeds ``log2 N_ref`` and can go slightly negative (``log2 N − log2(N+1)``)
    when every reference beats the canary.
    """
    refs = _references(reference_ppl)
    rank = 1 + int(np.count_nonzero(refs <= _canary_value(canary_ppl)))
    return math.log2(refs.size) - math.log2(rank)


@dataclass(frozen=True)
class ExtrapolatedExposure:
    """Skew-normal exposure: ``value`` is exact unless ``is_bound``, then the true exposure is ``> value``.

    ``params`` are the fitted ``(a, loc, scale)`` of ``scipy.stats.skewnorm``.
    """

    value: float
    is_bound: bool
    params: tuple[float, float, float]

    def display(self, digits: int = 2) -> str:
        """Human-readable value, ``"> bound"`` when the CDF underflowed."""
        text = f"{self.value:.{digits}f}"
        return f"> {text}" if self.is_bound else text


def fit_reference_skewnorm(reference_ppl: np.ndarray | Sequence[float]) -> tuple[float, float, float]:
    """Maximum-likelihood skew-normal ``(a, loc, scale)`` of the reference log-perplexities."""
    refs = _references(reference_ppl)
    if refs.size < 3 or float(np.ptp(refs)) == 0.0:
        raise ValueError(
            "a skew-normal fit needs at least 3 references with non-zero spread; "
            f"got {refs.size} references with range {float(np.ptp(refs))}"
        )
    a, loc, scale = stats.skewnorm.fit(refs)
    return float(a), float(loc), float(scale)


def _log_cdf_upper_bound(z: float, a: float) -> float:
    """Natural log of an upper bound on the skew-normal CDF at standardised ``z``.

    The density is ``2 φ(t) Φ(a t)``. ``Φ(a t) <= 1`` always, and for ``a > 0`` and ``t <= z`` also
    ``Φ(a t) <= Φ(a z)``, so ``CDF(z) <= 2 Φ(z) · Φ(a z)`` (``a > 0``) or ``2 Φ(z)`` (``a <= 0``);
    ``log_ndtr`` keeps both factors accurate far into the tail where the CDF itself underflows.
    """
    bound = _LN2 + float(special.log_ndtr(z))
    if a > 0:
        bound += float(special.log_ndtr(a * z))
    return min(bound, 0.0)


def skewnorm_exposure_from_params(canary_ppl: float, params: tuple[float, float, float]) -> ExtrapolatedExposure:
    """Extrapolated exposure ``−log2 CDF(canary)`` under a fitted skew-normal (docs/METHODS.md §8).

    When the CDF underflows (or loses all precision) the result is a guaranteed lower bound built
    from ``_log_cdf_upper_bound`` with ``is_bound=True``; it is never ``inf``.
    """
    a, loc, scale = params
    if not scale > 0:
        raise ValueError(f"skew-normal scale must be positive, got {scale}")
    value = _canary_value(canary_ppl)
    cdf = float(stats.skewnorm.cdf(value, a, loc=loc, scale=scale))
    if math.isfinite(cdf) and cdf >= np.finfo(np.float64).tiny:
        return ExtrapolatedExposure(value=max(0.0, -math.log2(min(cdf, 1.0))), is_bound=False, params=params)
    bound = -_log_cdf_upper_bound((value - loc) / scale, a) / _LN2
    return ExtrapolatedExposure(value=bound, is_bound=True, params=params)


def skewnorm_exposure(canary_ppl: float, reference_ppl: np.ndarray | Sequence[float]) -> ExtrapolatedExposure:
    """Fit a skew-normal to the references and return the extrapolated exposure (docs/METHODS.md §8)."""
    return skewnorm_exposure_from_params(canary_ppl, fit_reference_skewnorm(reference_ppl))


def exposure_report(
    canaries: Sequence[Canary],
    canary_ppl: Mapping[str, float],
    reference_ppl: Mapping[int, np.ndarray | Sequence[float]],
    formats: Sequence[CanaryFormat] | None = None,
    extrapolate: bool = True,
) -> list[dict[str, Any]]:
    """Exposure of every canary, with what §8 says to store (``N_ref``, ``|R|``, method, fit, insertions).

    Parameters
    ----------
    canaries
        The plan (inserted and never-inserted canaries).
    canary_ppl
        Log-perplexity in bits of each canary, by ``canary_id``; canaries missing here are skipped.
    reference_ppl
        Reference log-perplexities by ``format_index``.
    formats
        The formats, to report ``|R|`` and ``log2 |R|``.
    extrapolate
        Also fit a skew-normal per format and report the extrapolated exposure.

    Returns
    -------
    list of dict
        One dict per scored canary, in plan order.
    """
    fits: dict[int, tuple[float, float, float] | None] = {}
    rows: list[dict[str, Any]] = []
    for canary in canaries:
        if canary.canary_id not in canary_ppl:
            continue
        if canary.format_index not in reference_ppl:
            raise ValueError(f"no reference log-perplexities for format {canary.format_index} ({canary.canary_id})")
        refs = _references(reference_ppl[canary.format_index])
        ppl = _canary_value(canary_ppl[canary.canary_id])
        row: dict[str, Any] = {
            "canary_id": canary.canary_id,
            "format_index": canary.format_index,
            "client_index": canary.client_index,
            "inserted": canary.inserted,
            "repetitions": canary.repetitions,
            "log_perplexity_bits": ppl,
            "n_ref": int(refs.size),
            "rank_exposure": rank_exposure(ppl, refs),
            "method": "rank",
        }
        if formats is not None:
            fmt = formats[canary.format_index]
            row["space_size"] = fmt.space_size
            row["log2_space_size"] = log2_space_size(fmt)
        if extrapolate:
            if canary.format_index not in fits:
                try:
                    fits[canary.format_index] = fit_reference_skewnorm(refs)
                except ValueError:
                    fits[canary.format_index] = None
            params = fits[canary.format_index]
            row["method"] = "rank+skewnorm"
            if params is None:
                row.update(skewnorm_exposure=None, skewnorm_is_bound=None, skewnorm_display="n/a", skewnorm_params=None)
            else:
                extrapolated = skewnorm_exposure_from_params(ppl, params)
                row.update(
                    skewnorm_exposure=extrapolated.value,
                    skewnorm_is_bound=extrapolated.is_bound,
                    skewnorm_display=extrapolated.display(),
                    skewnorm_params={"a": params[0], "loc": params[1], "scale": params[2]},
                )
        rows.append(row)
    return rows
