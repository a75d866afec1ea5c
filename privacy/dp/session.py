"""The one DP-SGD loop every trainer shares (docs/METHODS.md §2).

Poisson sampling is done here rather than by Opacus' data loader so that the number of
steps per round is exactly what the noise multiplier was planned for, and so that an
empty batch becomes an explicit noise-only step instead of a crash inside the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from privacy.dp.accounting import Ledger

# Opacus is imported inside the functions that use it: a ClientApp process that only answers a
# hello, evaluate or audit message never pays its ~1.6 s import (deployment starts one per message).

# Opacus' ghost clipping backward fires full backward hooks on integer inputs; harmless.
warnings.filterwarnings("ignore", message="Full backward hook is firing")

MODES = ("bk", "ghost", "hooks")  # privacy.grad_sample_mode


class DPSession:
    """Wraps a model for DP-SGD (or plain SGD when ``noise_multiplier`` is None).

    Parameters
    ----------
    model : the unwrapped module; ``session.module`` is what to call in forward passes.
    mode : "bk" (book-keeping: exact clipping in one backward pass, :mod:`privacy.dp.bk`), "ghost"
        (Opacus fast gradient clipping, two backward passes) or "hooks" (Opacus, materialised
        per-sample gradients).
    generator : where the Gaussian noise comes from (node-local randomness; every mode draws from it).
    """

    def __init__(self, model: torch.nn.Module, *, lr: float, noise_multiplier: float | None,
                 max_grad_norm: float, expected_batch_size: int, mode: str = "ghost",
                 generator: torch.Generator | None = None) -> None:
        self.model = model
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.mode = mode if noise_multiplier is not None else "non-private"
        self.generator = generator
        base = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        self.module: torch.nn.Module
        self.optimizer: torch.optim.Optimizer
        if noise_multiplier is None:  # plain Adam: no Opacus import at all
            self.module, self.optimizer, self._base = model, base, base
            return
        if mode not in MODES:
            raise ValueError(f"unknown grad_sample_mode {mode!r}; allowed: {', '.join(MODES)}")
        if mode == "bk":  # no Opacus import: the book-keeping step is ours (docs/METHODS.md §2)
            from privacy.dp.bk import BKModule, BKOptimizer

            self.module = BKModule(model)
            self.optimizer = BKOptimizer(base, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,  # type: ignore[assignment]
                                         expected_batch_size=expected_batch_size, generator=generator)
            self._base = base
            return
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

        if mode == "ghost":
            self.module = GradSampleModuleFastGradientClipping(
                model, max_grad_norm=max_grad_norm, use_ghost_clipping=True, loss_reduction="mean")
            self.optimizer = DPOptimizerFastGradientClipping(
                base, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch_size, loss_reduction="mean", generator=generator)
        else:
            self.module = GradSampleModule(model, loss_reduction="mean")
            self.optimizer = DPOptimizer(
                base, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch_size, loss_reduction="mean", generator=generator)
        self._base = base

    def step(self, loss_per_example: torch.Tensor) -> float:
        """One DP-SGD step on per-example losses (shape ``(B,)``); returns the mean loss."""
        if loss_per_example.dim() != 1:
            raise ValueError("DP-SGD needs one loss per example (a 1-D tensor)")
        if self.mode == "bk":
            self.module.clipped_backward(loss_per_example, self.max_grad_norm)  # type: ignore[operator]
        elif self.mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            DPTensorFastGradientClipping(self.module, self.optimizer, loss_per_example, "mean").backward()
        else:
            loss_per_example.mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss_per_example.detach().mean())

    def noise_only_step(self) -> None:
        """The mechanism's output for an empty Poisson batch: the clipped sum is 0, noise remains."""
        if self.noise_multiplier is None:
            return
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.model.parameters():
            if p.requires_grad:
                noise = torch.normal(0.0, std, p.shape, device=p.device, generator=self.generator)
                p.grad = noise / self.expected_batch_size
        self._base.step()
        self._base.zero_grad(set_to_none=True)

    def close(self) -> torch.nn.Module:
        """Remove Opacus hooks and return the plain model."""
        if self.module is not self.model:  # a bk or Opacus wrapper: take its hooks and per-sample state off
            wrapper: Any = self.module
            wrapper.remove_hooks()
            for p in self.model.parameters():
                for attr in ("grad_sample", "_forward_counter", "summed_grad"):
                    if hasattr(p, attr):
                        delattr(p, attr)
        return self.model


def poisson_batches(n_records: int, sample_rate: float, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of ``steps`` Poisson-sampled batches (each record in with probability q)."""
    return [np.flatnonzero(rng.random(n_records) < sample_rate) for _ in range(steps)]


def run_dp_steps(session: DPSession, batches: list[np.ndarray],
                 loss_fn: Callable[[np.ndarray], torch.Tensor],
                 ledger: Ledger | None, sample_rate: float,
                 progress: Callable[[int, float], None] | None = None) -> list[float]:
    """The shared loop: per batch, per-example losses → one DP-SGD step → ledger."""
    losses: list[float] = []
    for i, idx in enumerate(batches):
        if len(idx) == 0:
            session.noise_only_step()
        else:
            session.module.train()
            losses.append(session.step(loss_fn(idx)))
        if ledger is not None and session.noise_multiplier is not None:
            ledger.step(session.noise_multiplier, sample_rate)
        if progress is not None:
            progress(i, losses[-1] if losses else float("nan"))
    return losses
