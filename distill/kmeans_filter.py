"""Client-side proxy-sample filters for federated distillation (docs/METHODS.md §6).

:class:`KMeansDensityFilter` is the EdgeFD-style filter the platform uses: a proxy
sample is "in distribution" for a client when its distance to the nearest KMeans
centroid of the client's data is at most the ρ-quantile of that distance on a held-out
calibration split.

:class:`RBFDensityRatioFilter` is a kernel density-ratio estimator (uLSIF, Kanamori et
al. 2009) making the same decision, in the spirit of Selective-FD.  It exists only as
the cost baseline of ``bench/edgefd_bench.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.cluster import KMeans

FloatArray = npt.NDArray[np.float64]
Embed = Callable[[np.ndarray], np.ndarray]


class NotFittedError(ValueError):
    """Raised when a filter is used before ``fit`` / ``load_state_dict``."""


def _split_fit_calibration(
    n: int, calibration_fraction: float, random_state: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Random fit/calibration split; both parts non-empty."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to fit a filter (fit + calibration), got {n}")
    n_cal = min(max(1, round(calibration_fraction * n)), n - 1)
    perm = np.random.default_rng(random_state).permutation(n).astype(np.int64)
    return perm[n_cal:], perm[:n_cal]


def _l2_normalise(F: FloatArray) -> FloatArray:
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    out: FloatArray = F / np.maximum(norms, 1e-12)
    return out


def nearest_centroid_distance(F: FloatArray, centers: FloatArray) -> FloatArray:
    """``d(x) = min_j ||x − c_j||₂`` (docs/METHODS.md §6), computed blockwise."""
    c_sq = np.sum(centers**2, axis=1)
    out = np.empty(len(F), dtype=np.float64)
    for s in range(0, len(F), 4096):
        blk = F[s : s + 4096]
        d2 = np.sum(blk**2, axis=1)[:, None] - 2.0 * blk @ centers.T + c_sq[None, :]
        out[s : s + 4096] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


class KMeansDensityFilter:
    """EdgeFD-style KMeans in-distribution filter (docs/METHODS.md §6).

    ``fit``: features ``F`` (raw, or ``embed(X)`` L2-normalised) are split 80/20 into
    fit/calibration parts; ``KMeans(k).fit(F_fit)``; ``threshold_ = quantile_ρ`` of the
    nearest-centroid distance on the calibration part.  ``ID(x) = d(x) <= threshold_``.

    Parameters
    ----------
    n_clusters : int, optional
        ``k``.  Default: ``clusters_per_class × number of local classes`` when labels
        are given, else 10.  Capped at the size of the fit split.
    clusters_per_class : int, default 3
    quantile : float, default 0.75
        ρ; about a fraction ρ of held-in data is accepted.
    calibration_fraction : float, default 0.2
    random_state : int, default 0
        Seed of the split and of KMeans.
    n_init : int, default 3
        KMeans restarts (best inertia kept).
    embed : callable, optional
        Maps raw inputs to embeddings; outputs are L2-normalised.  Not part of the
        state dict: pass the same ``embed`` to the filter that loads it.
    """

    def __init__(
        self,
        n_clusters: int | None = None,
        clusters_per_class: int = 3,
        quantile: float = 0.75,
        calibration_fraction: float = 0.2,
        random_state: int = 0,
        n_init: int = 3,
        embed: Embed | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.clusters_per_class = clusters_per_class
        self.quantile = quantile
        self.calibration_fraction = calibration_fraction
        self.random_state = random_state
        self.n_init = n_init
        self.embed = embed

    def _validate_settings(self) -> None:
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1 or None, got {self.n_clusters!r}")
        if self.clusters_per_class < 1:
            raise ValueError(f"clusters_per_class must be >= 1, got {self.clusters_per_class!r}")
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile!r}")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction!r}")

    def _features(self, X: npt.ArrayLike) -> FloatArray:
        if self.embed is not None:
            F = _l2_normalise(np.asarray(self.embed(np.asarray(X)), dtype=np.float64))
        else:
            F = np.asarray(X, dtype=np.float64)
        if F.ndim != 2:
            raise ValueError(f"features must be 2-D (n, d), got shape {F.shape}")
        if not np.all(np.isfinite(F)):
            raise ValueError("features contain NaN or infinite values")
        return F

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike | None = None) -> KMeansDensityFilter:
        """Fit centroids on 80% of ``X`` and calibrate the threshold on the rest."""
        self._validate_settings()
        F = self._features(X)
        if self.n_clusters is not None:
            k = int(self.n_clusters)
        elif y is not None:
            yv = np.asarray(y)
            if yv.shape != (len(F),):
                raise ValueError(f"y must have shape ({len(F)},), got {yv.shape}")
            k = self.clusters_per_class * len(np.unique(yv))
        else:
            k = 10
        fit_ix, cal_ix = _split_fit_calibration(len(F), self.calibration_fraction, self.random_state)
        k = min(k, len(fit_ix))
        km = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state).fit(F[fit_ix])
        centers = np.asarray(km.cluster_centers_, dtype=np.float64)
        d_cal = nearest_centroid_distance(F[cal_ix], centers)
        self.cluster_centers_: FloatArray = centers
        self.threshold_: float = float(np.quantile(d_cal, self.quantile))
        self.n_clusters_: int = k
        self.n_features_in_: int = F.shape[1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("KMeansDensityFilter is not fitted: call fit() or load_state_dict() first")

    def score(self, X: npt.ArrayLike) -> FloatArray:
        """Nearest-centroid distance ``d(x)`` of each row (lower = closer to local data)."""
        self._check_fitted()
        F = self._features(X)
        if F.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {F.shape[1]} features, filter was fitted on {self.n_features_in_}")
        return nearest_centroid_distance(F, self.cluster_centers_)

    def in_distribution(self, X: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """``ID(x) = d(x) <= threshold_`` (docs/METHODS.md §6)."""
        out: npt.NDArray[np.bool_] = self.score(X) <= self.threshold_
        return out

    def privacy_likelihood(self, X: npt.ArrayLike) -> FloatArray:
        """``π(x) = 1 − min(d(x)/threshold_, 1)`` in [0, 1] (ours; feeds §5 swing).

        1 on a centroid, falling linearly to 0 at the acceptance threshold and 0 for
        every rejected sample (which is never uploaded anyway).  A zero threshold
        (degenerate data) gives 1 exactly on the centroids and 0 elsewhere.
        """
        d = self.score(X)
        if self.threshold_ <= 0:
            return (d <= 0).astype(np.float64)
        out: FloatArray = 1.0 - np.minimum(d / self.threshold_, 1.0)
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings and learned state (``embed`` excluded)."""
        self._check_fitted()
        return {
            "n_clusters": self.n_clusters,
            "clusters_per_class": self.clusters_per_class,
            "quantile": self.quantile,
            "calibration_fraction": self.calibration_fraction,
            "random_state": self.random_state,
            "n_init": self.n_init,
            "uses_embed": self.embed is not None,
            "cluster_centers_": self.cluster_centers_.tolist(),
            "threshold_": self.threshold_,
            "n_clusters_": self.n_clusters_,
            "n_features_in_": self.n_features_in_,
        }

    def load_state_dict(self, state: dict[str, Any]) -> KMeansDensityFilter:
        """Restore from :meth:`state_dict` output; returns ``self``."""
        required = {"cluster_centers_", "threshold_", "n_clusters_", "n_features_in_"}
        missing = required - set(state)
        if missing:
            raise ValueError(f"state dict lacks keys {sorted(missing)}")
        if bool(state.get("uses_embed", False)) != (self.embed is not None):
            raise ValueError(
                "state was saved with%s an embed hook; construct the filter the same way"
                % ("" if state.get("uses_embed") else "out")
            )
        centers = np.asarray(state["cluster_centers_"], dtype=np.float64)
        if (
            centers.ndim != 2
            or centers.shape[0] != int(state["n_clusters_"])
            or centers.shape[1] != int(state["n_features_in_"])
        ):
            raise ValueError(f"cluster_centers_ shape {centers.shape} disagrees with n_clusters_/n_features_in_")
        for key in (
            "n_clusters",
            "clusters_per_class",
            "quantile",
            "calibration_fraction",
            "random_state",
            "n_init",
        ):
            if key in state:
                setattr(self, key, state[key])
        self.cluster_centers_ = centers
        self.threshold_ = float(state["threshold_"])
        self.n_clusters_ = int(state["n_clusters_"])
        self.n_features_in_ = int(state["n_features_in_"])
        return self


def _sq_dists(A: FloatArray, B: FloatArray) -> FloatArray:
    out: FloatArray = np.maximum(
        np.sum(A**2, axis=1)[:, None] - 2.0 * A @ B.T + np.sum(B**2, axis=1)[None, :],
        0.0,
    )
    return out


class RBFDensityRatioFilter:
    """uLSIF density-ratio filter ``r(x) ≈ p_local(x) / p_ref(x)`` (benchmark baseline only).

    Model ``r(x) = Σ_l α_l exp(−||x − c_l||²/(2σ²))`` with centres ``c_l`` = the local
    fit samples (all of them unless ``max_centers`` caps it); least-squares fit
    ``α = max(0, (H + λI)⁻¹ h)``, ``H = mean_ref φφᵀ``, ``h = mean_local φ``; ``σ`` by the
    median heuristic on local pairwise distances.  Decision as for the KMeans filter:
    ``ID(x) = r(x) >= quantile_{1−ρ}(r on the local calibration split)``.  Our simple
    fixed-λ variant (no cross-validation over σ, λ, which would only add cost).

    Parameters
    ----------
    quantile : float, default 0.75
    calibration_fraction : float, default 0.2
    reg : float, default 1e-3
        λ.
    max_centers : int, optional
    random_state : int, default 0
    """

    def __init__(
        self,
        quantile: float = 0.75,
        calibration_fraction: float = 0.2,
        reg: float = 1e-3,
        max_centers: int | None = None,
        random_state: int = 0,
    ) -> None:
        self.quantile = quantile
        self.calibration_fraction = calibration_fraction
        self.reg = reg
        self.max_centers = max_centers
        self.random_state = random_state

    def _phi(self, X: FloatArray) -> FloatArray:
        out: FloatArray = np.exp(-_sq_dists(X, self.centers_) / (2.0 * self.sigma_**2))
        return out

    def fit(self, X: npt.ArrayLike, X_ref: npt.ArrayLike) -> RBFDensityRatioFilter:
        """Estimate ``p_local/p_ref`` from local ``X`` (80%) and reference ``X_ref``; calibrate on 20%."""
        F = np.asarray(X, dtype=np.float64)
        R = np.asarray(X_ref, dtype=np.float64)
        if F.ndim != 2 or R.ndim != 2 or F.shape[1] != R.shape[1] or len(R) == 0:
            raise ValueError(f"need X (n, d) and non-empty X_ref (m, d), got {F.shape} and {R.shape}")
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile!r}")
        fit_ix, cal_ix = _split_fit_calibration(len(F), self.calibration_fraction, self.random_state)
        centers = F[fit_ix]
        if self.max_centers is not None and len(centers) > self.max_centers:
            pick = np.random.default_rng(self.random_state).choice(len(centers), self.max_centers, replace=False)
            centers = centers[pick]
        self.centers_: FloatArray = centers
        d2 = _sq_dists(centers, centers)
        med = float(np.sqrt(np.median(d2[np.triu_indices(len(centers), k=1)]))) if len(centers) > 1 else 1.0
        self.sigma_: float = med if med > 0 else 1.0
        Phi_ref = self._phi(R)
        H = Phi_ref.T @ Phi_ref / len(R)
        h = self._phi(F[fit_ix]).mean(axis=0)
        alpha = np.linalg.solve(H + self.reg * np.eye(len(centers)), h)
        self.alpha_: FloatArray = np.maximum(alpha, 0.0)
        r_cal = self.score(F[cal_ix])
        self.threshold_: float = float(np.quantile(r_cal, 1.0 - self.quantile))
        return self

    def score(self, X: npt.ArrayLike) -> FloatArray:
        """Estimated density ratio ``r(x)`` (higher = closer to local data)."""
        if not hasattr(self, "alpha_"):
            raise NotFittedError("RBFDensityRatioFilter is not fitted")
        out: FloatArray = self._phi(np.asarray(X, dtype=np.float64)) @ self.alpha_
        return out

    def in_distribution(self, X: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """``ID(x) = r(x) >= threshold_``."""
        out: npt.NDArray[np.bool_] = self.score(X) >= self.threshold_
        return out
