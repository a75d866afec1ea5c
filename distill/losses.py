"""Distillation losses (docs/METHODS.md §3, §4, §5).

Conventions
-----------
Every function takes **aligned** tensors: ``student_logits[:, t]`` and ``teacher_logits[:, t]`` are the
distributions for target position ``t`` (shape ``(B, T, V)``), ``labels[:, t]`` is the true token there
(``(B, T)`` long) and ``mask[:, t]`` (``(B, T)``, float or bool) is 1 where ``t`` is a continuation
target. The caller does the causal shift.

* ``token_*`` functions return per-token losses ``(B, T)``.
* Sequence losses return a per-example vector ``(B,)``: the mean over that example's unmasked tokens
  (0 for an example with no unmasked token). DP-SGD needs one loss per example, never a token mean
  flattened across the batch (docs/METHODS.md §2).
* :func:`batch_token_mean` gives the batch figure for reporting (sum over unmasked tokens / count).

``KL(P||Q) = Σ_v P(v)(log P(v) − log Q(v))`` is computed directly from log-probabilities rather than
through ``F.kl_div``, whose argument order is the reverse of the maths (``F.kl_div(log Q, log P,
log_target=True)`` gives ``KL(P||Q)``); writing it out keeps P and Q where the equations put them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from privacy.swing import check_privacy, swing_temperature

__all__ = [
    "batch_token_mean",
    "causal_lm_ce",
    "generalized_jsd",
    "kd_loss",
    "masked_example_mean",
    "swing_kd_loss",
    "token_ce",
    "token_generalized_jsd",
    "token_kd",
    "token_kl",
    "token_swing_kd",
]


# --------------------------------------------------------------------------- validation helpers
def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must have shape (B, T, V), got {tuple(student_logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same (B, T, V) shape"
        )


def _check_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    if mask.shape != shape:
        raise ValueError(f"mask must have shape (B, T) = {tuple(shape)}, got {tuple(mask.shape)}")
    return mask.bool() if mask.dtype != torch.bool else mask


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def _upcast(x: Tensor) -> Tensor:
    # Half-precision softmax/KL loses too much accuracy; float32/float64 inputs are kept as they are.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_alpha(alpha: float, labels: Tensor | None) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if alpha < 1.0 and labels is None:
        raise ValueError(f"alpha={alpha} < 1 mixes in cross-entropy, so labels are required")


# --------------------------------------------------------------------------- reductions
def masked_example_mean(token_losses: Tensor, mask: Tensor) -> Tensor:
    """Per-example mean over unmasked tokens (docs/METHODS.md §3 "sequence loss").

    Parameters
    ----------
    token_losses : Tensor
        ``(B, T)`` per-token losses.
    mask : Tensor
        ``(B, T)`` float or bool, 1 on continuation targets.

    Returns
    -------
    Tensor
        ``(B,)``; an example with no unmasked token gets 0 (not NaN). Masked positions are excluded with
        ``where``, so a non-finite value there cannot leak into the result or its gradient.
    """
    keep = _check_mask(mask, token_losses.shape)
    total = torch.where(keep, token_losses, torch.zeros_like(token_losses)).sum(dim=1)
    count = keep.sum(dim=1).clamp(min=1).to(token_losses.dtype)
    return total / count


def batch_token_mean(token_losses: Tensor, mask: Tensor) -> Tensor:
    """Batch loss for reporting: sum over unmasked tokens / number of unmasked tokens (docs/METHODS.md §3).

    Returns a scalar tensor; 0 when nothing is unmasked.
    """
    keep = _check_mask(mask, token_losses.shape)
    total = torch.where(keep, token_losses, torch.zeros_like(token_losses)).sum()
    return total / keep.sum().clamp(min=1).to(token_losses.dtype)


# --------------------------------------------------------------------------- token-level formulas
def token_kl(p_log: Tensor, q_log: Tensor) -> Tensor:
    """``KL(P||Q) = Σ_v P(v)(log P(v) − log Q(v))`` over the last dimension, from log-probabilities.

    Terms with ``P(v) = 0`` count as 0 (the ``0·log 0`` convention), so ``-inf`` logits are safe and
    produce no NaN gradient.
    """
    p = p_log.exp()
    diff = torch.where(p > 0, p_log - q_log, torch.zeros_like(p_log))
    return (p * diff).sum(dim=-1)


def token_generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, beta: float, temperature: float = 1.0
) -> Tensor:
    """Generalized JSD per token, GKD (Agarwal et al. 2023) Eq. 1; docs/METHODS.md §3.

    With ``P = softmax(z_T/τ)`` (teacher) and ``Q = softmax(z_S/τ)`` (student),
    ``M = β·P + (1−β)·Q`` and ``JSD_β(P||Q) = β·KL(P||M) + (1−β)·KL(Q||M)`` for ``0 < β < 1``.
    ``β = 0`` is *defined* as the forward KL ``KL(P||Q)`` and ``β = 1`` as the reverse KL ``KL(Q||P)``
    (special cases, not limits: the mixture form would give 0 there). ``log M`` is computed with
    ``logsumexp`` in log space.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor
        Aligned ``(B, T, V)`` logits.
    beta : float
        Interpolation weight in ``[0, 1]``.
    temperature : float
        ``τ`` applied to both distributions (> 0).

    Returns
    -------
    Tensor
        ``(B, T)`` per-token divergences (>= 0 up to rounding).
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    p_log = F.log_softmax(_upcast(teacher_logits) / temperature, dim=-1)
    q_log = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    if beta == 0.0:
        return token_kl(p_log, q_log)
    if beta == 1.0:
        return token_kl(q_log, p_log)
    # Where P(v) = Q(v) = 0 the logsumexp gradient is exp(-inf - -inf) = NaN; such entries never
    # contribute to either KL, so they are replaced by a finite dummy before the logsumexp.
    both_zero = torch.isneginf(p_log) & torch.isneginf(q_log)
    zero = torch.zeros_like(p_log)
    stacked = torch.stack(
        [torch.where(both_zero, zero, p_log) + math.log(beta), torch.where(both_zero, zero, q_log) + math.log1p(-beta)]
    )
    m_log = torch.logsumexp(stacked, dim=0)
    return beta * token_kl(p_log, m_log) + (1.0 - beta) * token_kl(q_log, m_log)


def token_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton temperature KD per token: ``τ²·KL(softmax(z_T/τ) || softmax(z_S/τ))`` (docs/METHODS.md §3).

    The ``τ²`` factor keeps gradient magnitudes comparable across temperatures. Returns ``(B, T)``.
    """
    return temperature**2 * token_generalized_jsd(student_logits, teacher_logits, 0.0, temperature)


def token_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy per token, ``−log softmax(z)[y]`` (docs/METHODS.md §4, DP-SFT).

    ``labels`` may hold any value (e.g. ``-100``) where the caller masks the position out; such
    labels are clamped into range here and must be excluded by the mask. Returns ``(B, T)``.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    vocab = logits.shape[-1]
    safe = labels.long().clamp(0, vocab - 1)
    log_probs = F.log_softmax(_upcast(logits), dim=-1)
    return -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)


def token_swing_kd(
    student_logits: Tensor, teacher_logits: Tensor, privacy: Tensor, tau0: float = 1.0, tau_max: float = 8.0
) -> Tensor:
    """Swing-style KD per token, docs/METHODS.md §5 step 2 (ours; a heuristic, not a DP guarantee).

    ``τ_n = τ_0 + (τ_max − τ_0)·π_n``, ``q_n = softmax(z_T,n/τ_n)`` and the term is
    ``τ_n²·KL(q_n || softmax(z_S,n/τ_n))``. Returns ``(B, T)``.
    """
    _check_logits(student_logits, teacher_logits)
    check_privacy(privacy, student_logits.shape[:2])
    teacher, student = _upcast(teacher_logits), _upcast(student_logits)
    tau = swing_temperature(privacy.to(teacher.dtype), tau0, tau_max).unsqueeze(-1)
    q_log = F.log_softmax(teacher / tau, dim=-1)
    s_log = F.log_softmax(student / tau, dim=-1)
    return tau.squeeze(-1) ** 2 * token_kl(q_log, s_log)


# --------------------------------------------------------------------------- per-example losses
def generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, beta: float, temperature: float = 1.0
) -> Tensor:
    """Per-example GKD loss: mean of :func:`token_generalized_jsd` over continuation tokens.

    docs/METHODS.md §3 (GKD Eq. 1) and §4 (``ℓ_i``). Returns ``(B,)``.
    """
    token = token_generalized_jsd(student_logits, teacher_logits, beta, temperature)
    return masked_example_mean(token, mask)


def causal_lm_ce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-example next-token cross-entropy (DP-SFT baseline, docs/METHODS.md §4). Returns ``(B,)``."""
    return masked_example_mean(token_ce(logits, labels), mask)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    """Per-example temperature KD mixed with CE: ``(1−α)·CE + α·τ²·KL(p_T^τ || p_S^τ)`` (docs/METHODS.md §3).

    The cross-entropy uses the untempered student logits. ``labels`` is required when ``alpha < 1``.
    Returns ``(B,)``.
    """
    _check_alpha(alpha, labels)
    token = alpha * token_kd(student_logits, teacher_logits, temperature)
    if alpha < 1.0:
        assert labels is not None  # guaranteed by _check_alpha
        token = token + (1.0 - alpha) * token_ce(student_logits, labels)
    return masked_example_mean(token, mask)


def swing_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    privacy: Tensor,
    tau0: float = 1.0,
    tau_max: float = 8.0,
    labels: Tensor | None = None,
    alpha: float = 1.0,
    ce_drop_threshold: float = 0.5,
) -> Tensor:
    """Per-example Swing-style KD, docs/METHODS.md §5 (ours; a heuristic, not a DP guarantee).

    Token term: ``α·τ_n²·KL(q_n || softmax(z_S,n/τ_n)) + (1−α)·CE_n·1[π_n ≤ threshold]``: the
    cross-entropy on the true token is dropped where ``π_n > ce_drop_threshold`` (default 0.5), so a
    private token is never fitted exactly. The per-example value is the mean over unmasked tokens
    (dropped CE terms count as 0, the KD term still applies). With ``π ≡ 0`` this equals
    :func:`kd_loss` at ``temperature = tau0``.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor
        Aligned ``(B, T, V)`` logits; add §5 step 3 noise to the teacher beforehand if wanted
        (:func:`privacy.swing.noisy_teacher_logits`).
    mask : Tensor
        ``(B, T)`` continuation mask.
    privacy : Tensor
        ``(B, T)`` privacy likelihoods ``π_n`` in ``[0, 1]``.
    tau0, tau_max : float
        Temperature range (``0 < tau0 <= tau_max``).
    labels : Tensor, optional
        ``(B, T)`` true tokens, required when ``alpha < 1``.
    alpha : float
        Weight of the KD term in ``[0, 1]``.
    ce_drop_threshold : float
        CE is kept only where ``π_n <= ce_drop_threshold``.

    Returns
    -------
    Tensor
        ``(B,)`` per-example losses.
    """
    _check_alpha(alpha, labels)
    token = alpha * token_swing_kd(student_logits, teacher_logits, privacy, tau0, tau_max)
    if alpha < 1.0:
        assert labels is not None  # guaranteed by _check_alpha
        keep_ce = privacy <= ce_drop_threshold
        ce = torch.where(keep_ce, token_ce(student_logits, labels), torch.zeros_like(token))
        token = token + (1.0 - alpha) * ce
    return masked_example_mean(token, mask)
