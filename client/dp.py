"""The one DP-SGD loop every trainer shares (ALGORITHMS.md §2).

Poisson sampling is done here rather than by Opacus' data loader so that the number of
steps per round is exactly what the noise multiplier was planned for, and so that an
empty batch becomes an explicit noise-only step instead of a crash inside the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Opacus is imported inside the functions that use it: a ClientApp process that only answers a
# hello, evaluate or audit message never pays its ~1.6 s import (deployment starts one per message).

# Opacus' ghost clipping backward fires full backward hooks on integer inputs; harmless.
warnings.filterwarnings("ignore", message="Full backward hook is firing")

ACCOUNTANTS = ("prv", "rdp")


def _accountant(name: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"prv": PRVAccountant, "rdp": RDPAccountant}[name]()


class PrivacyBudgetExhausted(RuntimeError):
    """A client refused a round because it would exceed its privacy budget."""


def default_delta(n_records: int) -> float:
    """δ = 1/N rounded down to a power of ten, never above 1e-5 (ALGORITHMS.md §2)."""
    if n_records <= 0:
        raise ValueError("n_records must be positive")
    exponent = int(np.ceil(np.log10(n_records)))
    return min(1e-5, 10.0 ** (-exponent))


@dataclass(frozen=True)
class DPPlan:
    """Noise planned before round 1 for the whole federation run."""

    noise_multiplier: float
    sample_rate: float
    total_steps: int
    target_epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str


def plan_noise(*, target_epsilon: float, delta: float, n_records: int, batch_size: int,
               total_steps: int, max_grad_norm: float, accountant: str = "prv") -> DPPlan:
    """Compute σ so that ``total_steps`` Poisson-sampled steps end at ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    q = min(1.0, batch_size / n_records)
    sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                 steps=total_steps, accountant=accountant, epsilon_tolerance=0.005)
    return DPPlan(float(sigma), q, total_steps, target_epsilon, delta, max_grad_norm, accountant)


class Ledger:
    """A client's privacy accountant, persisted between rounds as plain lists.

    ``state_dict()`` is what travels in Flower's ``Context.state`` and what the store keeps,
    so ε accumulates across rounds and across resumed runs.
    """

    def __init__(self, accountant: str = "prv") -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}; allowed: {', '.join(ACCOUNTANTS)}")
        self.accountant = accountant
        self.history_: list[tuple[float, float, int]] = []

    def step(self, noise_multiplier: float, sample_rate: float, n: int = 1) -> None:
        """Record ``n`` steps of the subsampled Gaussian mechanism."""
        if self.history_ and self.history_[-1][:2] == (noise_multiplier, sample_rate):
            s, q, k = self.history_[-1]
            self.history_[-1] = (s, q, k + n)
        else:
            self.history_.append((noise_multiplier, sample_rate, n))

    @property
    def steps(self) -> int:
        return sum(k for _, _, k in self.history_)

    def epsilon(self, delta: float) -> float:
        """ε spent so far at δ, from the accountant's analysis over the full history."""
        if not self.history_:
            return 0.0
        acc = _accountant(self.accountant)
        acc.history = list(self.history_)
        return float(acc.get_epsilon(delta=delta))

    def epsilon_after(self, delta: float, noise_multiplier: float, sample_rate: float, n: int) -> float:
        """ε if ``n`` more steps were taken (used to refuse a round that would overspend)."""
        trial = Ledger(self.accountant)
        trial.history_ = list(self.history_)
        trial.step(noise_multiplier, sample_rate, n)
        return trial.epsilon(delta)

    def state_dict(self) -> dict[str, list[float] | list[int] | str]:
        return {"accountant": self.accountant,
                "sigma": [h[0] for h in self.history_], "q": [h[1] for h in self.history_],
                "steps": [h[2] for h in self.history_]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sig, q, st = state.get("sigma", []), state.get("q", []), state.get("steps", [])
        lists = isinstance(sig, list) and isinstance(q, list) and isinstance(st, list)
        if not lists or not len(sig) == len(q) == len(st):
            raise ValueError("corrupt ledger state: sigma, q and steps must be lists of one length")
        self.accountant = str(state.get("accountant", self.accountant))
        self.history_ = [(float(a), float(b), int(c)) for a, b, c in zip(sig, q, st)]


class DPSession:
    """Wraps a model for DP-SGD (or plain SGD when ``noise_multiplier`` is None).

    Parameters
    ----------
    model : the unwrapped module; ``session.module`` is what to call in forward passes.
    mode : "ghost" (fast gradient clipping) or "hooks" (materialised per-sample gradients).
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
        if mode not in ("ghost", "hooks"):
            raise ValueError(f"unknown grad_sample_mode {mode!r}; allowed: ghost, hooks")
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
        if self.mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            DPTensorFastGradientClipping(self.module, self.optimizer, loss_per_example, "mean").backward()  # type: ignore[arg-type]
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
        if self.module is not self.model:  # an Opacus wrapper: take its hooks and per-sample state off
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
