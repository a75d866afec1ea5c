"""Partitioners: disjoint covers, class constraints, determinism (docs/METHODS.md §6)."""

from __future__ import annotations

import numpy as np
import pytest

from distill.partition import (
    PARTITIONERS,
    classes_partition,
    dirichlet_partition,
    iid_partition,
    partition,
)


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    allix = np.concatenate(parts)
    assert len(allix) == n
    assert np.array_equal(np.sort(allix), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64


def _labels(n_per_class: int = 23, n_classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.permutation(np.repeat(np.arange(n_classes), n_per_class))


def test_iid_cover_sizes_and_determinism() -> None:
    parts = iid_partition(103, 10, np.random.default_rng(1))
    _assert_disjoint_cover(parts, 103)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = iid_partition(103, 10, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = iid_partition(103, 10, np.random.default_rng(2))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_classes_partition_holds_consecutive_classes(k: int) -> None:
    y = _labels()
    parts = classes_partition(y, 10, k, np.random.default_rng(0))
    _assert_disjoint_cover(parts, len(y))
    for i, p in enumerate(parts):
        assert set(y[p].tolist()) == {(i + j) % 10 for j in range(k)}
    # A class held by k clients is split evenly among them.
    for c in range(10):
        counts = [int(np.sum(y[p] == c)) for p in parts if np.any(y[p] == c)]
        assert len(counts) == k and max(counts) - min(counts) <= 1


def test_classes_partition_string_labels_and_no_rng_deterministic() -> None:
    y = np.array(["b", "a", "c", "a", "b", "c", "a", "b", "c"])
    parts = classes_partition(y, 3, 1)
    _assert_disjoint_cover(parts, len(y))
    assert [set(y[p].tolist()) for p in parts] == [{"a"}, {"b"}, {"c"}]
    assert all(np.array_equal(a, b) for a, b in zip(parts, classes_partition(y, 3, 1)))


def test_classes_partition_more_clients_than_classes() -> None:
    y = _labels(n_per_class=10, n_classes=5)
    parts = classes_partition(y, 10, 1, np.random.default_rng(0))
    _assert_disjoint_cover(parts, len(y))
    assert [set(y[p].tolist()) for p in parts] == [{i % 5} for i in range(10)]


def test_classes_partition_rejects_uncovered_classes() -> None:
    with pytest.raises(ValueError, match="cover only"):
        classes_partition(_labels(), 5, 1)
    with pytest.raises(ValueError, match="classes_per_client"):
        classes_partition(_labels(), 10, 11)


def test_dirichlet_sizes_sum_and_skew() -> None:
    y = _labels(n_per_class=50)
    parts = dirichlet_partition(y, 10, 0.1, np.random.default_rng(3), min_size=5)
    _assert_disjoint_cover(parts, len(y))
    assert sum(len(p) for p in parts) == len(y)
    assert min(len(p) for p in parts) >= 5
    # Small alpha: most clients are dominated by few classes.
    top_share = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    assert np.median(top_share) > 0.4
    again = dirichlet_partition(y, 10, 0.1, np.random.default_rng(3), min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    iidish = dirichlet_partition(y, 10, 1000.0, np.random.default_rng(3))
    assert max(np.bincount(y[p], minlength=10).max() / len(p) for p in iidish) < 0.3


def test_partition_dispatch_and_errors() -> None:
    y = _labels()
    for kind, kw in [
        ("iid", {}),
        ("weak", {}),
        ("strong", {}),
        ("classes", {"classes_per_client": 2}),
        ("dirichlet", {"alpha": 0.5}),
    ]:
        assert kind in PARTITIONERS
        _assert_disjoint_cover(partition(kind, y, 10, np.random.default_rng(0), **kw), len(y))
    weak = partition("weak", y, 10, np.random.default_rng(0))
    direct = classes_partition(y, 10, 2, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(weak, direct))
    with pytest.raises(ValueError, match="allowed"):
        partition("zipf", y, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unexpected parameter"):
        partition("iid", y, 10, np.random.default_rng(0), alpha=0.5)
    with pytest.raises(ValueError, match="needs parameter"):
        partition("dirichlet", y, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha"):
        partition("dirichlet", y, 10, np.random.default_rng(0), alpha=0.0)
    with pytest.raises(ValueError, match="n_clients"):
        iid_partition(5, 0, np.random.default_rng(0))
