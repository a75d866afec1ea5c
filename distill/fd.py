"""Federated distillation on a proxy set: soft labels, votes, aggregation, loss.

Pure functions for docs/METHODS.md §6 (KMeans-filtered FD, EdgeFD-style) with the
optional §5 swing-style per-sample temperature and logit noise.

Data flow of one round::

    client c:  labels_c, votes_c = client_soft_labels(logits_c, accept_c, τ, ...)
    server:    sums, counts = sum_client_uploads(labels, votes)    # under HE: ciphertext sums
    client:    targets, kept = aggregate_soft_labels(sums, counts) # division after decryption
    client:    loss = distillation_loss(f(x_priv), y_priv, f(proxy[kept]), targets, μ, τ)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]


class SwingLike(Protocol):
    """Anything carrying the four §5 swing parameters."""

    tau0: float
    tau_max: float
    s0: float
    s1: float


@dataclass(frozen=True)
class SwingParams:
    """Swing-style settings (docs/METHODS.md §5, ours): ``τ_n = τ0 + (τmax−τ0)π_n``, ``s_n = s0 + s1·π_n``."""

    tau0: float = 1.0
    tau_max: float = 8.0
    s0: float = 0.0
    s1: float = 0.0


def _softmax(z: FloatArray) -> FloatArray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def swing_temperature(privacy: npt.ArrayLike, tau0: float, tau_max: float) -> FloatArray:
    """Per-sample temperature ``τ_n = τ0 + (τmax − τ0)·π_n`` (docs/METHODS.md §5, item 2)."""
    pi = np.asarray(privacy, dtype=np.float64)
    out: FloatArray = tau0 + (tau_max - tau0) * pi
    return out


def swing_noise_scale(privacy: npt.ArrayLike, s0: float, s1: float) -> FloatArray:
    """Per-sample logit-noise std ``s_n = s0 + s1·π_n`` (docs/METHODS.md §5, item 3)."""
    pi = np.asarray(privacy, dtype=np.float64)
    out: FloatArray = s0 + s1 * pi
    return out


def client_soft_labels(
    logits: npt.ArrayLike,
    accept_mask: npt.ArrayLike,
    temperature: float,
    privacy: npt.ArrayLike | None = None,
    swing: SwingLike | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[FloatArray, FloatArray]:
    """A client's upload for one round: soft labels on accepted proxy samples + votes.

    docs/METHODS.md §6: ``q(x) = softmax(z_c(x)/τ)`` for proxy ``x`` with ``ID_c(x)``,
    vote 1; other rows are zero with vote 0 (so that server-side sums need no mask).

    With ``swing`` (§5, ours): each accepted sample ``n`` gets its own temperature
    ``τ_n = τ0 + (τmax−τ0)·π_n`` — replacing ``temperature`` — and Gaussian noise
    ``N(0, s_n²)``, ``s_n = s0 + s1·π_n``, on its logits before the softmax.  This is
    a heuristic that blurs what the labels say about records close to the proxy
    sample; it is **not** a differential-privacy guarantee.

    Parameters
    ----------
    logits : (P, C) array
        Client model logits on the proxy set.
    accept_mask : (P,) bool array
        Filter decision ``ID_c(x)`` (all True for unfiltered FD).
    temperature : float
        τ (> 0), used when ``swing`` is None.
    privacy : (P,) array in [0, 1], optional
        ``π_n``, closeness of each proxy sample to the private data; required with ``swing``.
    swing : object with ``tau0, tau_max, s0, s1``, optional
        Swing settings, e.g. :class:`SwingParams`.
    rng : numpy.random.Generator, optional
        Required when the swing noise is non-zero (no hidden global randomness).

    Returns
    -------
    labels : (P, C) float array
        Soft labels; rows sum to 1 where accepted, 0 elsewhere.
    votes : (P,) float array of 0/1
    """
    z = np.asarray(logits, dtype=np.float64)
    mask = np.asarray(accept_mask)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (P, C), got {z.shape}")
    if mask.shape != (z.shape[0],) or mask.dtype != np.bool_:
        raise ValueError(f"accept_mask must be a bool array of shape ({z.shape[0]},), got {mask.dtype} {mask.shape}")
    if swing is None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        tau: FloatArray = np.full(z.shape[0], float(temperature))
    else:
        if privacy is None:
            raise ValueError("swing needs the per-sample privacy likelihoods `privacy` (P,)")
        pi = np.asarray(privacy, dtype=np.float64)
        if pi.shape != (z.shape[0],) or np.any(pi < 0) or np.any(pi > 1) or not np.all(np.isfinite(pi)):
            raise ValueError(f"privacy must be a (P,) array with values in [0, 1], got shape {pi.shape}")
        if not swing.tau0 > 0 or swing.tau_max < swing.tau0:
            raise ValueError(f"swing needs 0 < tau0 <= tau_max, got {swing.tau0}, {swing.tau_max}")
        if swing.s0 < 0 or swing.s1 < 0:
            raise ValueError(f"swing noise scales must be >= 0, got s0={swing.s0}, s1={swing.s1}")
        tau = swing_temperature(pi, swing.tau0, swing.tau_max)
        s = swing_noise_scale(pi, swing.s0, swing.s1)
        if np.any(s[mask] > 0):
            if rng is None:
                raise ValueError("swing noise is non-zero: pass rng (numpy Generator) for reproducibility")
            z = z + rng.standard_normal(z.shape) * s[:, None]
    labels = _softmax(z / tau[:, None])
    labels[~mask] = 0.0
    votes: FloatArray = mask.astype(np.float64)
    return labels, votes


def sum_client_uploads(
    labels: Sequence[npt.ArrayLike], votes: Sequence[npt.ArrayLike]
) -> tuple[FloatArray, FloatArray]:
    """Server aggregation in plaintext: ``Σ_c labels_c`` and ``Σ_c votes_c`` (§6).

    Under HE (§7) the same two sums are computed on ciphertexts; only additions.

    Returns
    -------
    label_sums : (P, C) array
    vote_counts : (P,) array
    """
    if len(labels) == 0 or len(labels) != len(votes):
        raise ValueError(f"need one votes array per labels array (>= 1 client), got {len(labels)} and {len(votes)}")
    L = [np.asarray(x, dtype=np.float64) for x in labels]
    V = [np.asarray(v, dtype=np.float64) for v in votes]
    shape = L[0].shape
    if len(shape) != 2:
        raise ValueError(f"labels must be (P, C) arrays, got shape {shape}")
    for i, (lab, vot) in enumerate(zip(L, V)):
        if lab.shape != shape or vot.shape != (shape[0],):
            raise ValueError(f"client {i}: labels {lab.shape} / votes {vot.shape} do not match {shape} / ({shape[0]},)")
    label_sums: FloatArray = np.sum(L, axis=0)
    vote_counts: FloatArray = np.sum(V, axis=0)
    return label_sums, vote_counts


def aggregate_soft_labels(
    label_sums: npt.ArrayLike, vote_counts: npt.ArrayLike, min_votes: float = 0.5
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Mean soft label per voted proxy sample: ``ŷ(x) = Σ_c q_c(x) / Σ_c v_c(x)`` (§6).

    Samples with zero votes are dropped.  ``min_votes = 0.5`` treats counts as
    integers while tolerating the small CKKS decryption error (§7).  This runs on
    clients after decryption when HE is on.

    Returns
    -------
    targets : (P', C) array
        Mean soft labels of the kept samples.
    kept : (P',) int array
        Indices (into the proxy set) of the kept samples, ascending.
    """
    S = np.asarray(label_sums, dtype=np.float64)
    n = np.asarray(vote_counts, dtype=np.float64)
    if S.ndim != 2 or n.shape != (S.shape[0],):
        raise ValueError(f"need label_sums (P, C) and vote_counts (P,), got {S.shape} and {n.shape}")
    kept = np.flatnonzero(n >= min_votes).astype(np.int64)
    targets: FloatArray = S[kept] / n[kept, None]
    return targets, kept


@dataclass(frozen=True)
class DistillLossParts:
    """Result of :func:`distillation_loss`; ``total`` is the scalar to back-propagate."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def kd_per_example(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """``τ²·KL(ŷ || softmax(z_S/τ))`` per row (docs/METHODS.md §3 temperature KD, §6)."""
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    # xlogy gives 0·log 0 = 0 for targets with exact zeros.
    kl = (torch.xlogy(targets, targets) - targets * log_q).sum(dim=-1)
    return kl * temperature**2


def distillation_loss(
    private_logits: torch.Tensor | None,
    y_true: torch.Tensor | None,
    proxy_logits: torch.Tensor | None,
    proxy_targets: torch.Tensor | None,
    mu: float = 1.0,
    temperature: float = 1.0,
) -> DistillLossParts:
    """Client loss of §6: ``mean CE(f(x_priv), y) + μ · mean τ²·KL(ŷ || softmax(f(x)/τ))``.

    Either part may be omitted by passing ``None`` for its pair of arguments (its
    per-example tensor is then empty and it contributes 0).

    Parameters
    ----------
    private_logits : (B, C) tensor or None
        Student logits on a private batch.
    y_true : (B,) int tensor or None
        Private labels.
    proxy_logits : (B', C) tensor or None
        Student logits on voted proxy samples.
    proxy_targets : (B', C) tensor or None
        Aggregated soft labels ``ŷ`` (rows sum to 1).
    mu : float
        Weight μ of the distillation term.
    temperature : float
        Student temperature τ (> 0).

    Returns
    -------
    DistillLossParts
        ``total`` scalar; ``ce`` (B,) and ``kd`` (B',) per-example terms (``kd``
        already includes τ², not μ).
    """
    if not temperature > 0 or mu < 0:
        raise ValueError(f"need temperature > 0 and mu >= 0, got {temperature}, {mu}")
    if (private_logits is None) != (y_true is None) or (proxy_logits is None) != (proxy_targets is None):
        raise ValueError("pass private_logits with y_true, and proxy_logits with proxy_targets (or both None)")
    if private_logits is None and proxy_logits is None:
        raise ValueError("distillation_loss needs a private batch, a proxy batch, or both")
    ref = private_logits if private_logits is not None else proxy_logits
    assert ref is not None
    empty = ref.new_zeros(0)
    zero = ref.new_zeros(())
    ce, kd = empty, empty
    total = zero
    if private_logits is not None and y_true is not None:
        ce = torch.nn.functional.cross_entropy(private_logits, y_true, reduction="none")
        total = total + ce.mean()
    if proxy_logits is not None and proxy_targets is not None:
        if proxy_logits.shape != proxy_targets.shape:
            raise ValueError(
                f"proxy logits {tuple(proxy_logits.shape)} and targets {tuple(proxy_targets.shape)} differ"
            )
        kd = kd_per_example(proxy_logits, proxy_targets.to(proxy_logits.dtype), temperature)
        if len(kd):
            total = total + mu * kd.mean()
    return DistillLossParts(total=total, ce=ce, kd=kd)
