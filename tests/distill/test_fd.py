"""Federated-distillation formulas: soft labels, votes, aggregation, loss (§5, §6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.fd import (
    SwingParams,
    aggregate_soft_labels,
    client_soft_labels,
    distillation_loss,
    sum_client_uploads,
)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)


def test_soft_labels_rows_sum_to_one_where_accepted() -> None:
    logits = np.random.default_rng(0).normal(size=(6, 4)) * 3
    mask = np.array([True, False, True, True, False, False])
    labels, votes = client_soft_labels(logits, mask, temperature=2.0)
    np.testing.assert_allclose(labels[mask].sum(axis=1), 1.0)
    assert np.all(labels[~mask] == 0.0)
    assert votes.tolist() == [1, 0, 1, 1, 0, 0]
    z = logits[0] / 2.0
    np.testing.assert_allclose(labels[0], np.exp(z) / np.exp(z).sum())


def test_swing_temperature_raises_entropy_for_private_samples() -> None:
    logits = np.tile(np.array([[4.0, 1.0, 0.0, -1.0]]), (3, 1))
    pi = np.array([0.0, 0.5, 1.0])
    swing = SwingParams(tau0=1.0, tau_max=8.0, s0=0.0, s1=0.0)
    labels, _ = client_soft_labels(logits, np.ones(3, bool), 1.0, privacy=pi, swing=swing)
    h = _entropy(labels)
    assert h[0] < h[1] < h[2]
    # π = 1 uses τ_max = 8; π = 0.5 uses τ = 4.5.
    np.testing.assert_allclose(labels[2], np.exp(logits[2] / 8) / np.exp(logits[2] / 8).sum())
    np.testing.assert_allclose(labels[1], np.exp(logits[1] / 4.5) / np.exp(logits[1] / 4.5).sum())


def test_swing_noise_scales_with_privacy_and_needs_rng() -> None:
    logits = np.zeros((2000, 3))
    logits[:, 0] = 5.0
    pi = np.r_[np.zeros(1000), np.ones(1000)]
    swing = SwingParams(tau0=1.0, tau_max=1.0, s0=0.0, s1=3.0)
    with pytest.raises(ValueError, match="rng"):
        client_soft_labels(logits, np.ones(2000, bool), 1.0, privacy=pi, swing=swing)
    labels, _ = client_soft_labels(
        logits,
        np.ones(2000, bool),
        1.0,
        privacy=pi,
        swing=swing,
        rng=np.random.default_rng(0),
    )
    clean = labels[:1000]
    assert np.allclose(clean, clean[0])  # π = 0: no noise
    assert labels[1000:, 0].std() > 0.05
    with pytest.raises(ValueError, match="privacy"):
        client_soft_labels(logits, np.ones(2000, bool), 1.0, swing=swing)


def test_aggregation_matches_hand_computation_with_dropped_samples() -> None:
    # 3 clients, 4 proxy samples, 2 classes; sample 2 gets no vote.
    a = (
        np.array([[0.8, 0.2], [0.0, 0.0], [0.0, 0.0], [0.5, 0.5]]),
        np.array([1, 0, 0, 1]),
    )
    b = (
        np.array([[0.6, 0.4], [0.3, 0.7], [0.0, 0.0], [0.0, 0.0]]),
        np.array([1, 1, 0, 0]),
    )
    c = (
        np.array([[0.0, 0.0], [0.1, 0.9], [0.0, 0.0], [0.9, 0.1]]),
        np.array([0, 1, 0, 1]),
    )
    sums, counts = sum_client_uploads([a[0], b[0], c[0]], [a[1], b[1], c[1]])
    np.testing.assert_allclose(counts, [2, 2, 0, 2])
    targets, kept = aggregate_soft_labels(sums, counts)
    assert kept.tolist() == [0, 1, 3]
    np.testing.assert_allclose(targets, [[0.7, 0.3], [0.2, 0.8], [0.7, 0.3]])
    # Tolerates HE-style decryption noise on the counts.
    t2, k2 = aggregate_soft_labels(sums + 1e-5, counts + np.array([1e-5, -1e-5, 2e-5, 0.0]))
    assert k2.tolist() == [0, 1, 3]
    np.testing.assert_allclose(t2, targets, atol=1e-4)


def test_aggregate_end_to_end_with_filters() -> None:
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(5, 3)) for _ in range(2)]
    masks = [np.array([1, 1, 0, 0, 0], bool), np.array([0, 1, 1, 0, 0], bool)]
    ups = [client_soft_labels(z, m, 1.5) for z, m in zip(logits, masks)]
    targets, kept = aggregate_soft_labels(*sum_client_uploads([u[0] for u in ups], [u[1] for u in ups]))
    assert kept.tolist() == [0, 1, 2]
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    np.testing.assert_allclose(targets[1], (ups[0][0][1] + ups[1][0][1]) / 2)


def test_upload_shape_errors() -> None:
    with pytest.raises(ValueError, match="client 1"):
        sum_client_uploads([np.zeros((3, 2)), np.zeros((4, 2))], [np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="accept_mask"):
        client_soft_labels(np.zeros((3, 2)), np.ones(3), 1.0)


def test_distillation_loss_formula() -> None:
    torch.manual_seed(0)
    priv = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1])
    prox = torch.randn(5, 3, requires_grad=True)
    tgt = torch.softmax(torch.randn(5, 3), dim=-1)
    tgt[0] = torch.tensor([1.0, 0.0, 0.0])  # exact zeros must not give NaN
    tau, mu = 2.0, 0.7
    parts = distillation_loss(priv, y, prox, tgt, mu=mu, temperature=tau)
    ce = -torch.log_softmax(priv, -1)[torch.arange(4), y]
    q = torch.softmax(prox.detach() / tau, -1).double().numpy()
    t = tgt.double().numpy()
    kl_np = np.array([sum(ti * (np.log(ti) - np.log(qi)) for ti, qi in zip(tr, qr) if ti > 0) for tr, qr in zip(t, q)])
    kl = torch.as_tensor(kl_np, dtype=torch.float32)
    torch.testing.assert_close(parts.ce.detach(), ce.detach())
    torch.testing.assert_close(parts.kd.detach(), tau**2 * kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        parts.total.detach(),
        ce.detach().mean() + mu * tau**2 * kl.mean(),
        rtol=1e-5,
        atol=1e-6,
    )
    parts.total.backward()
    assert prox.grad is not None and torch.isfinite(prox.grad).all()
    # Identical distributions: zero KD.
    same = distillation_loss(
        None,
        None,
        prox.detach(),
        torch.softmax(prox.detach() / tau, -1),
        temperature=tau,
    )
    assert float(same.total) == pytest.approx(0.0, abs=1e-6)
    assert same.ce.numel() == 0
    only_ce = distillation_loss(priv, y, None, None)
    torch.testing.assert_close(only_ce.total, ce.mean())
    with pytest.raises(ValueError):
        distillation_loss(priv, None, None, None)
