"""Swing-style per-token temperature and soft-target noise (docs/METHODS.md §5, ours).

The published Swing Distillation idea is that the distillation temperature of a token grows with the
likelihood that the token is private, and that noise is added to the soft targets. The exact published
formula is not available, so the rules here are the project's own choice.

.. warning::
   This is a **heuristic**, not a differential-privacy guarantee. Neither the temperature schedule nor
   the logit noise is calibrated to a sensitivity, so no (ε, δ) follows from them. Their effect is
   measured empirically by the canary-exposure audit (docs/METHODS.md §8), and every privacy statement
   that mentions them must say so.

All functions are elementwise over the leading dimensions: ``privacy`` has the shape of the logits
without their last (vocabulary / class) dimension, e.g. ``(B, T)`` for token logits ``(B, T, V)`` or
``(N,)`` for proxy-sample logits ``(N, C)`` in classification distillation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SwingConfig",
    "check_privacy",
    "noisy_teacher_logits",
    "swing_noise_scale",
    "swing_temperature",
]


def check_privacy(privacy: Tensor, leading_shape: torch.Size | None = None) -> None:
    """Validate a privacy-likelihood tensor ``π`` (docs/METHODS.md §5 step 1: ``π_n ∈ [0, 1]``).

    Parameters
    ----------
    privacy : Tensor
        Privacy likelihoods, floating point, every value in ``[0, 1]``.
    leading_shape : torch.Size, optional
        Required shape (the logits' shape without the last dimension).

    Raises
    ------
    ValueError
        If the tensor is not floating point, has the wrong shape, or has values outside ``[0, 1]``.
    """
    if not torch.is_floating_point(privacy):
        raise ValueError(f"privacy must be a floating-point tensor in [0, 1], got dtype {privacy.dtype}")
    if leading_shape is not None and privacy.shape != leading_shape:
        raise ValueError(
            f"privacy has shape {tuple(privacy.shape)}; it must match the logits without their last "
            f"dimension, {tuple(leading_shape)}"
        )
    if privacy.numel() and (bool(torch.isnan(privacy).any()) or privacy.min() < 0 or privacy.max() > 1):
        raise ValueError("privacy values must lie in [0, 1] (no NaN)")


def _check_temperatures(tau0: float, tau_max: float) -> None:
    if not (math.isfinite(tau0) and tau0 > 0):
        raise ValueError(f"tau0 must be a finite number > 0, got {tau0}")
    if not (math.isfinite(tau_max) and tau_max >= tau0):
        raise ValueError(f"tau_max must be finite and >= tau0 ({tau0}), got {tau_max}")


def _check_noise(s0: float, s1: float) -> None:
    if not (math.isfinite(s0) and s0 >= 0):
        raise ValueError(f"s0 must be a finite number >= 0, got {s0}")
    if not (math.isfinite(s1) and s1 >= 0):
        raise ValueError(f"s1 must be a finite number >= 0, got {s1}")


def swing_temperature(privacy: Tensor, tau0: float = 1.0, tau_max: float = 8.0) -> Tensor:
    """Per-token distillation temperature, docs/METHODS.md §5 step 2: ``τ_n = τ_0 + (τ_max − τ_0)·π_n``.

    Heuristic (not a DP guarantee): private-looking tokens get flatter soft targets.

    Parameters
    ----------
    privacy : Tensor
        Privacy likelihoods ``π_n`` in ``[0, 1]``, any shape.
    tau0 : float
        Temperature of a token with ``π = 0`` (> 0).
    tau_max : float
        Temperature of a token with ``π = 1`` (>= ``tau0``).

    Returns
    -------
    Tensor
        ``τ_n``, same shape and dtype as ``privacy``.
    """
    _check_temperatures(tau0, tau_max)
    check_privacy(privacy)
    return tau0 + (tau_max - tau0) * privacy


def swing_noise_scale(privacy: Tensor, s0: float = 0.0, s1: float = 1.0) -> Tensor:
    """Per-token noise standard deviation, docs/METHODS.md §5 step 3: ``s_n = s_0 + s_1·π_n``.

    Heuristic (not a DP guarantee).
    """
    _check_noise(s0, s1)
    check_privacy(privacy)
    return s0 + s1 * privacy


def noisy_teacher_logits(
    teacher_logits: Tensor,
    privacy: Tensor,
    s0: float = 0.0,
    s1: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian noise on the teacher logits, docs/METHODS.md §5 step 3: ``z̃_T = z_T + N(0, s_n²)``.

    Every logit of position ``n`` receives independent noise of standard deviation
    ``s_n = s_0 + s_1·π_n``. This is a **heuristic, not a DP guarantee**: the noise is not calibrated
    to any sensitivity.

    Parameters
    ----------
    teacher_logits : Tensor
        Teacher logits ``(..., V)``.
    privacy : Tensor
        ``π`` with shape ``teacher_logits.shape[:-1]``.
    s0, s1 : float
        Base and privacy-proportional noise scales (both >= 0).
    generator : torch.Generator, optional
        Source of randomness (on the logits' device) for reproducible noise.

    Returns
    -------
    Tensor
        Noisy logits, same shape and dtype as ``teacher_logits``; the input is not modified.
    """
    if teacher_logits.dim() < 1 or not torch.is_floating_point(teacher_logits):
        raise ValueError("teacher_logits must be a floating-point tensor with a last (vocabulary) dimension")
    check_privacy(privacy, teacher_logits.shape[:-1])
    scale = swing_noise_scale(privacy, s0, s1).to(teacher_logits.dtype)
    noise = torch.randn(
        teacher_logits.shape, generator=generator, dtype=teacher_logits.dtype, device=teacher_logits.device
    )
    return teacher_logits + noise * scale.unsqueeze(-1)


@dataclass(frozen=True)
class SwingConfig:
    """Settings of Swing-style distillation (docs/METHODS.md §5; a heuristic, not a DP guarantee).

    Parameters
    ----------
    tau0 : float
        Temperature for non-private tokens (> 0).
    tau_max : float
        Temperature for tokens with ``π = 1`` (>= ``tau0``).
    s0 : float
        Noise standard deviation added to every teacher logit (>= 0).
    s1 : float
        Additional noise standard deviation per unit of ``π`` (>= 0).
    """

    tau0: float = 1.0
    tau_max: float = 8.0
    s0: float = 0.0
    s1: float = 1.0

    def __post_init__(self) -> None:
        _check_temperatures(self.tau0, self.tau_max)
        _check_noise(self.s0, self.s1)

    def temperature(self, privacy: Tensor) -> Tensor:
        """``τ_n`` for these settings (see :func:`swing_temperature`)."""
        return swing_temperature(privacy, self.tau0, self.tau_max)

    def add_noise(
        self, teacher_logits: Tensor, privacy: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Noisy teacher logits for these settings (see :func:`noisy_teacher_logits`)."""
        return noisy_teacher_logits(teacher_logits, privacy, self.s0, self.s1, generator)
