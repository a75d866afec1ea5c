"""Swing-style temperature and soft-target noise (docs/METHODS.md §5)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from privacy.swing import (
    SwingConfig,
    noisy_teacher_logits,
    swing_noise_scale,
    swing_temperature,
)


def test_temperature_formula() -> None:
    pi = torch.tensor([[0.0, 0.25, 1.0], [0.5, 0.1, 0.9]])
    tau = swing_temperature(pi, tau0=1.0, tau_max=8.0)
    torch.testing.assert_close(tau, torch.tensor([[1.0, 2.75, 8.0], [4.5, 1.7, 7.3]]))
    torch.testing.assert_close(swing_temperature(pi, 2.0, 2.0), torch.full_like(pi, 2.0))
    # Works for classification proxies too: one pi per sample.
    torch.testing.assert_close(swing_temperature(torch.tensor([0.0, 1.0]), 1.0, 3.0), torch.tensor([1.0, 3.0]))


def test_noise_scale_formula() -> None:
    pi = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(swing_noise_scale(pi, s0=0.5, s1=2.0), torch.tensor([0.5, 1.5, 2.5]))


def test_zero_scale_means_no_noise_and_input_untouched() -> None:
    z = torch.randn(2, 3, 7)
    z_copy = z.clone()
    out = noisy_teacher_logits(z, torch.zeros(2, 3), s0=0.0, s1=5.0)
    torch.testing.assert_close(out, z)
    noisy = noisy_teacher_logits(z, torch.ones(2, 3), s0=0.0, s1=5.0)
    assert not torch.allclose(noisy, z)
    torch.testing.assert_close(z, z_copy)


def test_noise_std_follows_privacy_per_position() -> None:
    vocab = 20_000
    z = torch.zeros(1, 3, vocab)
    pi = torch.tensor([[0.0, 0.5, 1.0]])
    g = torch.Generator().manual_seed(0)
    out = noisy_teacher_logits(z, pi, s0=0.5, s1=3.0, generator=g)
    std = out[0].std(dim=-1)
    expected = torch.tensor([0.5, 2.0, 3.5])
    torch.testing.assert_close(std, expected, rtol=0.03, atol=0.0)
    assert out[0].mean(dim=-1).abs().max() < 0.1


def test_generator_reproducible() -> None:
    z = torch.randn(2, 4, 5)
    pi = torch.rand(2, 4, generator=torch.Generator().manual_seed(1))
    a = noisy_teacher_logits(z, pi, 0.1, 1.0, generator=torch.Generator().manual_seed(7))
    b = noisy_teacher_logits(z, pi, 0.1, 1.0, generator=torch.Generator().manual_seed(7))
    c = noisy_teacher_logits(z, pi, 0.1, 1.0, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_config_validation_and_frozen() -> None:
    cfg = SwingConfig()
    assert (cfg.tau0, cfg.tau_max, cfg.s0, cfg.s1) == (1.0, 8.0, 0.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tau0 = 2.0  # type: ignore[misc]
    bad_settings: list[dict[str, float]] = [
        {"tau0": 0.0},
        {"tau0": 2.0, "tau_max": 1.0},
        {"s0": -1.0},
        {"s1": float("nan")},
    ]
    for bad in bad_settings:
        with pytest.raises(ValueError):
            SwingConfig(**bad)
    pi = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(SwingConfig(tau0=1.0, tau_max=5.0).temperature(pi), torch.tensor([1.0, 5.0]))
    z = torch.zeros(2, 3)
    torch.testing.assert_close(SwingConfig(s0=0.0, s1=0.0).add_noise(z, pi), z)


def test_bad_privacy_rejected() -> None:
    z = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        noisy_teacher_logits(z, torch.full((2, 3), -0.1))
    with pytest.raises(ValueError, match="shape"):
        noisy_teacher_logits(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="floating"):
        swing_temperature(torch.zeros(3, dtype=torch.long))


def test_docstrings_say_heuristic() -> None:
    from privacy import swing

    for obj in (swing, swing.noisy_teacher_logits, swing.SwingConfig, swing.swing_temperature):
        assert "not a DP guarantee" in " ".join((obj.__doc__ or "").split()) or "not a differential-privacy" in (
            obj.__doc__ or ""
        )
