"""Distillation losses against the docs/METHODS.md §3/§5 test vectors and hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import (
    batch_token_mean,
    causal_lm_ce,
    generalized_jsd,
    kd_loss,
    masked_example_mean,
    swing_kd_loss,
    token_ce,
    token_generalized_jsd,
    token_kd,
    token_swing_kd,
)

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]


def _rand(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hand-written KL(P||Q) = sum P (log P - log Q) over the last dim, probabilities in."""
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("beta", BETAS)
def test_identical_logits_give_zero(beta: float) -> None:
    z = _rand(2, 5, 11)
    out = token_generalized_jsd(z, z.clone(), beta)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)


def test_disjoint_one_hot_half_beta_is_log2() -> None:
    vocab = 6
    neg = float("-inf")
    teacher = torch.full((1, 3, vocab), neg)
    student = torch.full((1, 3, vocab), neg)
    for t in range(3):
        teacher[0, t, t] = 0.0
        student[0, t, t + 3] = 0.0
    student.requires_grad_(True)
    out = token_generalized_jsd(student, teacher, 0.5)
    torch.testing.assert_close(out, torch.full((1, 3), math.log(2.0)))
    out.sum().backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    # Large finite logits approach the same limit.
    big_t = torch.zeros(1, 1, 4)
    big_s = torch.zeros(1, 1, 4)
    big_t[..., 0] = 60.0
    big_s[..., 1] = 60.0
    torch.testing.assert_close(token_generalized_jsd(big_s, big_t, 0.5), torch.full((1, 1), math.log(2.0)))


def test_beta_zero_is_forward_kl_and_beta_one_reverse_kl() -> None:
    zs, zt = _rand(3, 4, 9, seed=1), _rand(3, 4, 9, seed=2)
    p, q = torch.softmax(zt, -1), torch.softmax(zs, -1)
    torch.testing.assert_close(token_generalized_jsd(zs, zt, 0.0), _kl(p, q))
    torch.testing.assert_close(token_generalized_jsd(zs, zt, 1.0), _kl(q, p))


@pytest.mark.parametrize("beta", [0.2, 0.5, 0.7])
def test_interior_beta_matches_mixture_formula(beta: float) -> None:
    zs, zt = _rand(2, 3, 7, seed=3), _rand(2, 3, 7, seed=4)
    tau = 2.0
    p, q = torch.softmax(zt / tau, -1), torch.softmax(zs / tau, -1)
    m = beta * p + (1 - beta) * q
    expected = beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    torch.testing.assert_close(token_generalized_jsd(zs, zt, beta, temperature=tau), expected)


@pytest.mark.parametrize("beta", BETAS)
def test_symmetry(beta: float) -> None:
    a, b = _rand(2, 4, 8, seed=5), _rand(2, 4, 8, seed=6)
    # JSD_beta(P||Q) with P = teacher = b, Q = student = a; swapping roles flips beta.
    lhs = token_generalized_jsd(a, b, beta)
    rhs = token_generalized_jsd(b, a, 1.0 - beta)
    torch.testing.assert_close(lhs, rhs, atol=1e-6, rtol=1e-5)


def test_non_negative_on_random_logits() -> None:
    for seed in range(20):
        zs, zt = _rand(3, 6, 13, seed=100 + seed, scale=5.0), _rand(3, 6, 13, seed=200 + seed, scale=5.0)
        beta = [0.0, 0.3, 0.5, 1.0][seed % 4]
        tau = [0.5, 1.0, 3.0][seed % 3]
        assert (token_generalized_jsd(zs, zt, beta, tau) >= -1e-6).all()
        assert (token_kd(zs, zt, tau) >= -1e-6).all()


def test_masking_ignores_masked_positions_and_empty_rows_give_zero() -> None:
    zs, zt = _rand(3, 6, 10, seed=7), _rand(3, 6, 10, seed=8)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    base = generalized_jsd(zs, zt, mask, 0.5)
    zs2, zt2 = zs.clone(), zt.clone()
    zs2[mask == 0] = _rand(int((mask == 0).sum()), 10, seed=9)
    zt2[mask == 0] = float("nan")
    torch.testing.assert_close(generalized_jsd(zs2, zt2, mask.bool(), 0.5), base)
    assert base[2].item() == 0.0
    tok = token_generalized_jsd(zs, zt, 0.5)
    torch.testing.assert_close(base[0], tok[0, 2:5].mean())
    torch.testing.assert_close(base[1], tok[1].mean())
    torch.testing.assert_close(batch_token_mean(tok, mask), tok[mask.bool()].mean())
    assert batch_token_mean(tok, torch.zeros_like(mask)).item() == 0.0


def test_per_example_independence_and_gradients() -> None:
    zs = _rand(4, 5, 9, seed=10).float().requires_grad_(True)
    zt = _rand(4, 5, 9, seed=11).float()
    mask = torch.ones(4, 5)
    loss = generalized_jsd(zs, zt, mask, 0.0)
    changed_s, changed_t = zs.detach().clone(), zt.clone()
    changed_s[2] += 5 * torch.randn(5, 9)
    changed_t[2] -= 3.0 * torch.arange(9.0)
    loss2 = generalized_jsd(changed_s, changed_t, mask, 0.0)
    keep = torch.tensor([0, 1, 3])
    torch.testing.assert_close(loss[keep], loss2[keep])
    assert not torch.allclose(loss[2], loss2[2])
    # The gradient of example i's loss touches only example i's logits.
    (grad,) = torch.autograd.grad(loss[1], zs)
    assert grad[1].abs().sum() > 0
    assert grad[[0, 2, 3]].abs().sum() == 0


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_tau_squared_scaling(tau: float) -> None:
    zs, zt = _rand(2, 3, 6, seed=12), _rand(2, 3, 6, seed=13)
    mask = torch.ones(2, 3)
    p, q = torch.softmax(zt / tau, -1), torch.softmax(zs / tau, -1)
    expected = (tau**2 * _kl(p, q)).mean(dim=1)
    torch.testing.assert_close(kd_loss(zs, zt, mask, temperature=tau), expected)


def test_kd_alpha_mixes_ce() -> None:
    zs, zt = _rand(2, 4, 6, seed=14), _rand(2, 4, 6, seed=15)
    labels = torch.tensor([[1, 2, 3, -100], [0, 5, 4, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    log_q = torch.log_softmax(zs, -1)
    ce_tok = -log_q.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_ce(zs, labels)[:, :3], ce_tok[:, :3])
    ce = causal_lm_ce(zs, labels, mask)
    torch.testing.assert_close(ce, masked_example_mean(ce_tok, mask))
    kd = kd_loss(zs, zt, mask, temperature=2.0)
    mixed = kd_loss(zs, zt, mask, temperature=2.0, labels=labels, alpha=0.25)
    torch.testing.assert_close(mixed, 0.75 * ce + 0.25 * kd)
    torch.testing.assert_close(kd_loss(zs, zt, mask, labels=labels, alpha=0.0), ce)
    with pytest.raises(ValueError, match="labels are required"):
        kd_loss(zs, zt, mask, alpha=0.5)


def test_swing_with_zero_privacy_equals_kd() -> None:
    zs, zt = _rand(3, 5, 8, seed=16), _rand(3, 5, 8, seed=17)
    labels = torch.randint(0, 8, (3, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 5)
    mask[0, :2] = 0
    pi = torch.zeros(3, 5)
    for tau0, alpha in [(1.0, 1.0), (2.0, 1.0), (1.5, 0.4)]:
        swing = swing_kd_loss(zs, zt, mask, pi, tau0=tau0, tau_max=8.0, labels=labels, alpha=alpha)
        kd = kd_loss(zs, zt, mask, temperature=tau0, labels=labels, alpha=alpha)
        torch.testing.assert_close(swing, kd)


def test_swing_per_token_temperature_formula() -> None:
    zs, zt = _rand(2, 3, 5, seed=18), _rand(2, 3, 5, seed=19)
    pi = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.75, 0.1]])
    tau0, tau_max = 1.0, 8.0
    out = token_swing_kd(zs, zt, pi, tau0, tau_max)
    for b in range(2):
        for t in range(3):
            tau = tau0 + (tau_max - tau0) * pi[b, t].item()
            p, q = torch.softmax(zt[b, t] / tau, -1), torch.softmax(zs[b, t] / tau, -1)
            assert out[b, t].item() == pytest.approx(tau**2 * _kl(p, q).item(), rel=1e-5)


def test_swing_drops_ce_on_private_tokens() -> None:
    zs, zt = _rand(1, 4, 6, seed=20), _rand(1, 4, 6, seed=21)
    labels = torch.tensor([[0, 1, 2, 3]])
    mask = torch.ones(1, 4)
    pi = torch.tensor([[0.0, 0.5, 0.51, 1.0]])
    alpha = 0.3
    out = swing_kd_loss(zs, zt, mask, pi, labels=labels, alpha=alpha)
    kd_tok = token_swing_kd(zs, zt, pi)
    ce_tok = token_ce(zs, labels)
    keep = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # CE dropped only where pi > 0.5
    expected = (alpha * kd_tok + (1 - alpha) * ce_tok * keep).mean(dim=1)
    torch.testing.assert_close(out, expected)
    # A lower threshold drops more CE terms.
    out_low = swing_kd_loss(zs, zt, mask, pi, labels=labels, alpha=alpha, ce_drop_threshold=0.0)
    expected_low = (alpha * kd_tok + (1 - alpha) * ce_tok * torch.tensor([[1.0, 0, 0, 0]])).mean(dim=1)
    torch.testing.assert_close(out_low, expected_low)


def test_bad_inputs_raise() -> None:
    z = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="beta"):
        token_generalized_jsd(z, z, 1.5)
    with pytest.raises(ValueError, match="temperature"):
        token_generalized_jsd(z, z, 0.5, temperature=0.0)
    with pytest.raises(ValueError, match="same"):
        token_generalized_jsd(z, torch.zeros(2, 3, 5), 0.5)
    with pytest.raises(ValueError, match="mask"):
        generalized_jsd(z, z, torch.ones(2, 4), 0.5)
    with pytest.raises(ValueError, match="privacy"):
        swing_kd_loss(z, z, torch.ones(2, 3), torch.full((2, 3), 1.5))
