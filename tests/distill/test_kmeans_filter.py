"""KMeans density filter (docs/METHODS.md §6) and the RBF density-ratio baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.kmeans_filter import (
    KMeansDensityFilter,
    NotFittedError,
    RBFDensityRatioFilter,
)


def _mixture(n_per_class: int, seed: int, n_classes: int = 10, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated isotropic Gaussian classes (means on a scaled simplex-like grid)."""
    means = np.random.default_rng(123).normal(0.0, 4.0, size=(n_classes, dim))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = means[y] + rng.normal(0.0, 1.0, size=(len(y), dim))
    return X, y


def _precision_recall(accept: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    tp = float(np.sum(accept & positive))
    return tp / max(float(accept.sum()), 1.0), tp / float(positive.sum())


@pytest.fixture(scope="module")
def local_and_proxy() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = _mixture(120, seed=0)
    held = np.isin(y, [2, 7])
    Xp, yp = _mixture(60, seed=1)
    return X[held], y[held], Xp, yp


def test_filter_accepts_held_in_rejects_other_classes(local_and_proxy: tuple) -> None:
    X, y, Xp, yp = local_and_proxy
    f = KMeansDensityFilter(quantile=0.75).fit(X, y)
    assert f.n_clusters_ == 3 * 2
    assert f.cluster_centers_.shape == (6, 8)
    precision, recall = _precision_recall(f.in_distribution(Xp), np.isin(yp, [2, 7]))
    assert precision >= 0.9
    assert recall >= 0.6
    # Quantile controls the acceptance rate of held-in data.
    f_wide = KMeansDensityFilter(quantile=0.95).fit(X, y)
    assert f_wide.threshold_ > f.threshold_


def test_filter_without_labels_uses_ten_clusters(local_and_proxy: tuple) -> None:
    X, _, Xp, yp = local_and_proxy
    f = KMeansDensityFilter().fit(X)
    assert f.n_clusters_ == 10
    precision, recall = _precision_recall(f.in_distribution(Xp), np.isin(yp, [2, 7]))
    assert precision >= 0.9 and recall >= 0.6


def test_clusters_capped_by_fit_size() -> None:
    X, _ = _mixture(2, seed=0, n_classes=2)
    f = KMeansDensityFilter(n_clusters=50).fit(X)
    assert f.n_clusters_ == 3  # 4 samples: 3 fit + 1 calibration


def test_state_dict_round_trip_identical_decisions(local_and_proxy: tuple) -> None:
    X, y, Xp, _ = local_and_proxy
    f = KMeansDensityFilter(random_state=3).fit(X, y)
    state = json.loads(json.dumps(f.state_dict()))
    g = KMeansDensityFilter().load_state_dict(state)
    assert np.array_equal(f.in_distribution(Xp), g.in_distribution(Xp))
    assert np.array_equal(f.score(Xp), g.score(Xp))
    assert g.random_state == 3 and g.threshold_ == f.threshold_


def test_privacy_likelihood_mapping(local_and_proxy: tuple) -> None:
    X, y, Xp, _ = local_and_proxy
    f = KMeansDensityFilter().fit(X, y)
    pi = f.privacy_likelihood(Xp)
    assert pi.min() >= 0.0 and pi.max() <= 1.0
    assert np.all(pi[~f.in_distribution(Xp)] == 0.0)
    np.testing.assert_allclose(f.privacy_likelihood(f.cluster_centers_), 1.0)
    d = f.score(Xp)
    np.testing.assert_allclose(pi, 1.0 - np.minimum(d / f.threshold_, 1.0))


def test_embed_hook_is_l2_normalised(local_and_proxy: tuple) -> None:
    X, y, Xp, _ = local_and_proxy
    f = KMeansDensityFilter(embed=lambda a: 5.0 * a[:, :4]).fit(X, y)
    assert f.n_features_in_ == 4
    assert np.all(f.score(Xp) <= 2.0 + 1e-9)  # distances between unit vectors
    with pytest.raises(ValueError, match="embed"):
        KMeansDensityFilter().load_state_dict(f.state_dict())


def test_errors() -> None:
    with pytest.raises(NotFittedError):
        KMeansDensityFilter().score(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="quantile"):
        KMeansDensityFilter(quantile=1.5).fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        KMeansDensityFilter().fit(np.zeros((1, 2)))
    f = KMeansDensityFilter().fit(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="features"):
        f.score(np.zeros((2, 4)))


def test_rbf_density_ratio_makes_same_kind_of_decision(local_and_proxy: tuple) -> None:
    X, _, Xp, yp = local_and_proxy
    f = RBFDensityRatioFilter(quantile=0.75).fit(X, Xp)
    precision, recall = _precision_recall(f.in_distribution(Xp), np.isin(yp, [2, 7]))
    assert precision >= 0.9 and recall >= 0.6
