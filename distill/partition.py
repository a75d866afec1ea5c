"""Federated data partitioners (docs/METHODS.md §6 evaluation protocol).

Every partitioner returns one integer index array per client.  The arrays form a
disjoint cover of ``range(n)`` (each index appears exactly once) and depend only on
the inputs and the seed of ``rng``.  Labels may be any hashable, sortable values
(ints for images, strings for text records); classes are ordered by ``np.unique``.

* ``iid``       -- uniform random split into near-equal sizes.
* ``classes``   -- client ``i`` holds classes ``{i, ..., i+k-1} mod C`` (``k = 2``
  is "weak non-IID", ``k = 1`` "strong non-IID" in Selective-FD / EdgeFD).
* ``weak`` / ``strong`` -- aliases of ``classes`` with ``k = 2`` / ``k = 1``.
* ``dirichlet`` -- per-class client shares drawn from ``Dir(alpha)`` (our extension).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.int64]


class PartitionError(ValueError):
    """Raised for invalid partition requests (bad kind, parameter or data)."""


def _check_n_clients(n_clients: int, n_items: int) -> None:
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise PartitionError(f"n_clients must be a positive int, got {n_clients!r}")
    if n_items < n_clients:
        raise PartitionError(f"cannot give each of {n_clients} clients at least one item from {n_items} items")


def iid_partition(n_items: int, n_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    """Split ``range(n_items)`` uniformly at random into ``n_clients`` near-equal parts.

    Parameters
    ----------
    n_items : int
        Number of items to distribute.
    n_clients : int
        Number of clients; client sizes differ by at most one.
    rng : numpy.random.Generator
        Source of the permutation.

    Returns
    -------
    list of numpy.ndarray
        Sorted index arrays, one per client.
    """
    _check_n_clients(n_clients, n_items)
    perm = rng.permutation(n_items).astype(np.int64)
    return [np.sort(part) for part in np.array_split(perm, n_clients)]


def _class_indices(labels: npt.ArrayLike) -> tuple[np.ndarray, list[IndexArray]]:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise PartitionError(f"labels must be one-dimensional, got shape {arr.shape}")
    classes, inverse = np.unique(arr, return_inverse=True)
    per_class = [np.flatnonzero(inverse == c).astype(np.int64) for c in range(len(classes))]
    return classes, per_class


def dirichlet_partition(
    labels: npt.ArrayLike,
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 1000,
) -> list[IndexArray]:
    """Label-skewed split: for each class, client shares ``p ~ Dir(alpha · 1)``.

    Each class's (shuffled) samples are cut at the cumulative shares, so sizes sum to
    ``len(labels)``.  The whole draw is repeated until every client holds at least
    ``min_size`` samples (smaller ``alpha`` = more skew).  Our extension of the §6
    protocol.

    Parameters
    ----------
    labels : array-like of shape (n,)
        Class label of each item.
    n_clients : int
        Number of clients.
    alpha : float
        Dirichlet concentration (> 0).
    rng : numpy.random.Generator
        Source of randomness.
    min_size : int, default 1
        Minimum number of samples per client.
    max_tries : int, default 1000
        Number of redraws before giving up.

    Returns
    -------
    list of numpy.ndarray
        Sorted index arrays, one per client.
    """
    _, per_class = _class_indices(labels)
    n = sum(len(ix) for ix in per_class)
    _check_n_clients(n_clients, n)
    if not alpha > 0:
        raise PartitionError(f"alpha must be > 0, got {alpha!r}")
    if min_size < 0 or min_size * n_clients > n:
        raise PartitionError(f"min_size={min_size} impossible for {n} items over {n_clients} clients")
    for _ in range(max_tries):
        parts: list[list[IndexArray]] = [[] for _ in range(n_clients)]
        for ix in per_class:
            shuffled = rng.permutation(ix)
            shares = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(ix)).astype(np.int64)
            for c, chunk in enumerate(np.split(shuffled, cuts)):
                parts[c].append(chunk)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) draw gave every client >= {min_size} samples "
        f"in {max_tries} tries; raise alpha or lower min_size"
    )


def classes_partition(
    labels: npt.ArrayLike,
    n_clients: int,
    classes_per_client: int,
    rng: np.random.Generator | None = None,
) -> list[IndexArray]:
    """Pathological label split: client ``i`` holds classes ``{i, …, i+k−1} mod C``.

    docs/METHODS.md §6: ``k = 2`` is weak non-IID, ``k = 1`` strong non-IID.  The
    samples of a class held by ``m`` clients are split evenly (sizes differ by at
    most one) among them, in client order.  Every class must be held by some client,
    i.e. ``n_clients + k − 1 >= C``, so the result is a cover.

    Parameters
    ----------
    labels : array-like of shape (n,)
        Class label of each item; classes are ordered as ``np.unique`` orders them.
    n_clients : int
        Number of clients.
    classes_per_client : int
        ``k``, number of consecutive classes per client (1 <= k <= C).
    rng : numpy.random.Generator, optional
        If given, each class's samples are shuffled before being split; otherwise
        they are split in index order (fully deterministic).

    Returns
    -------
    list of numpy.ndarray
        Sorted index arrays, one per client.
    """
    classes, per_class = _class_indices(labels)
    n_classes = len(classes)
    n = sum(len(ix) for ix in per_class)
    _check_n_clients(n_clients, n)
    k = classes_per_client
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n_classes:
        raise PartitionError(f"classes_per_client must be an int in [1, {n_classes}] (number of classes), got {k!r}")
    if n_clients + k - 1 < n_classes:
        raise PartitionError(
            f"{n_clients} clients with {k} classes each cover only {n_clients + k - 1} "
            f"of {n_classes} classes; need n_clients + classes_per_client - 1 >= {n_classes}"
        )
    holders: list[list[int]] = [[] for _ in range(n_classes)]
    for i in range(n_clients):
        for j in range(k):
            cls = (i + j) % n_classes
            if i not in holders[cls]:
                holders[cls].append(i)
    parts: list[list[IndexArray]] = [[] for _ in range(n_clients)]
    for cls, ix in enumerate(per_class):
        order = rng.permutation(ix) if rng is not None else ix
        for client, chunk in zip(holders[cls], np.array_split(order, len(holders[cls]))):
            parts[client].append(chunk)
    out: list[IndexArray] = []
    for i, p in enumerate(parts):
        merged = np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64)
        if len(merged) == 0:
            raise PartitionError(f"client {i} received no samples (too few samples per class)")
        out.append(merged)
    return out


@dataclass(frozen=True)
class _Partitioner:
    build: Callable[..., list[IndexArray]]
    params: frozenset[str]
    doc: str


def _iid(labels: npt.ArrayLike, n_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    return iid_partition(len(np.asarray(labels)), n_clients, rng)


def _classes(
    labels: npt.ArrayLike,
    n_clients: int,
    rng: np.random.Generator,
    classes_per_client: int,
) -> list[IndexArray]:
    return classes_partition(labels, n_clients, classes_per_client, rng)


def _weak(labels: npt.ArrayLike, n_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    return classes_partition(labels, n_clients, 2, rng)


def _strong(labels: npt.ArrayLike, n_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    return classes_partition(labels, n_clients, 1, rng)


def _dirichlet(
    labels: npt.ArrayLike,
    n_clients: int,
    rng: np.random.Generator,
    alpha: float,
    min_size: int = 1,
) -> list[IndexArray]:
    return dirichlet_partition(labels, n_clients, alpha, rng, min_size=min_size)


PARTITIONERS: dict[str, _Partitioner] = {
    "iid": _Partitioner(_iid, frozenset(), "uniform random split"),
    "classes": _Partitioner(
        _classes,
        frozenset({"classes_per_client"}),
        "client i holds classes i..i+k-1 mod C",
    ),
    "weak": _Partitioner(_weak, frozenset(), "classes with k=2 (weak non-IID)"),
    "strong": _Partitioner(_strong, frozenset(), "classes with k=1 (strong non-IID)"),
    "dirichlet": _Partitioner(_dirichlet, frozenset({"alpha", "min_size"}), "per-class shares ~ Dir(alpha)"),
}
_REQUIRED: dict[str, frozenset[str]] = {
    "classes": frozenset({"classes_per_client"}),
    "dirichlet": frozenset({"alpha"}),
}


def partition(
    kind: str,
    labels: npt.ArrayLike,
    n_clients: int,
    rng: np.random.Generator,
    **kw: Any,
) -> list[IndexArray]:
    """Dispatch to a registered partitioner by name (see ``PARTITIONERS``).

    Parameters
    ----------
    kind : str
        One of ``PARTITIONERS`` (``iid``, ``classes``, ``weak``, ``strong``, ``dirichlet``).
    labels : array-like of shape (n,)
        Class label of each item (ignored by ``iid`` except for its length).
    n_clients : int
        Number of clients.
    rng : numpy.random.Generator
        Source of randomness.
    **kw
        Partitioner parameters: ``classes_per_client`` for ``classes``;
        ``alpha`` and optional ``min_size`` for ``dirichlet``.

    Returns
    -------
    list of numpy.ndarray
        Disjoint sorted index arrays covering ``range(len(labels))``.
    """
    if kind not in PARTITIONERS:
        raise PartitionError(f"unknown partition kind {kind!r}; allowed: {sorted(PARTITIONERS)}")
    spec = PARTITIONERS[kind]
    bad = set(kw) - spec.params
    if bad:
        allowed = sorted(spec.params) or "none"
        raise PartitionError(f"partition kind {kind!r} got unexpected parameter(s) {sorted(bad)}; allowed: {allowed}")
    missing = _REQUIRED.get(kind, frozenset()) - set(kw)
    if missing:
        raise PartitionError(f"partition kind {kind!r} needs parameter(s) {sorted(missing)}")
    return spec.build(labels, n_clients, rng, **kw)
