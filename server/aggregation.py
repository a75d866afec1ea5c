"""Plaintext aggregators selected by ``federation.aggregator`` (docs/METHODS.md §1).

``mean`` is FedAvg (weights fixed at hello). ``median`` and ``trimmed-mean`` are the coordinate-wise
robust rules of Flower's ``FedMedian`` / ``FedTrimmedAvg`` (the trimmed mean is Flower's own
``trim_mean``); they ignore weights. The bound they give, per coordinate, with ``n`` accepted replies
of which ``f`` are malicious:

* ``median``: for ``f < n/2`` the result lies between the smallest and largest honest value;
* ``trimmed-mean`` cutting ``k = max(1, floor(trim_fraction·n))`` values at each end: for ``f ≤ k``
  the result lies between the smallest and largest honest value.

So one client cannot push a coordinate outside the honest range once ``n ≥ 3``. Under HE the server
cannot sort ciphertexts: only ``mean`` exists there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedveil.registry import Registry
from server.validation import weighted_mean

Update = dict[str, np.ndarray]
Aggregate = Callable[[list[tuple[Update, float]]], Update]
# federation.aggregator: name -> factory(trim_fraction) of the aggregation function.
AGGREGATORS: Registry[Callable[[float], Aggregate]] = Registry("federation.aggregator")
AGGREGATORS.add("mean", lambda _trim: weighted_mean)


@AGGREGATORS.register("median")
def _median(_trim: float) -> Aggregate:
    return median


def median(updates: list[tuple[Update, float]]) -> Update:
    """Coordinate-wise median (as Flower's FedMedian), cast back to each array's dtype."""
    first = updates[0][0]
    return {k: np.median(np.stack([u[k].astype(np.float64) for u, _ in updates]), axis=0).astype(first[k].dtype)
            for k in first}


@AGGREGATORS.register("trimmed-mean")
def trimmed(trim_fraction: float) -> Aggregate:
    """Coordinate-wise trimmed mean cutting at least one value at each end (needs 3 or more replies)."""
    def aggregate(updates: list[tuple[Update, float]]) -> Update:
        n = len(updates)
        if n < 3:
            raise ValueError(f"trimmed-mean needs at least 3 accepted replies, got {n}")
        k = min(max(1, int(trim_fraction * n)), (n - 1) // 2)
        cut = (k + 1e-6) / n  # Flower's trim_mean cuts int(cut·n) = k values at each end
        first = updates[0][0]
        return {k: np.asarray(trim_mean(np.stack([u[k].astype(np.float64) for u, _ in updates]), cut))
                .astype(first[k].dtype) for k in first}
    return aggregate


def aggregator(name: str, trim_fraction: float = 0.2) -> Aggregate:
    """The aggregation function registered under ``name`` (an unknown name is a ValueError listing the allowed)."""
    return AGGREGATORS[name](trim_fraction)
