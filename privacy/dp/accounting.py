"""Privacy accounting: the noise plan, the δ rule and the per-node ledger (docs/METHODS.md §2).

Pure bookkeeping with no model code, so the server, the clients, the audits and the benchmarks
can all share one home for the ε arithmetic. Opacus is imported inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedveil.registry import Registry

# privacy.accountant: name -> a fresh Opacus accountant (imported lazily: the server needs no Opacus to read a ledger).
ACCOUNTANTS: Registry[Callable[[], Any]] = Registry("privacy.accountant")


@ACCOUNTANTS.register("prv")
def _prv() -> Any:
    from opacus.accountants import PRVAccountant

    return PRVAccountant()


@ACCOUNTANTS.register("rdp")
def _rdp() -> Any:
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


def _accountant(name: str) -> Any:
    return ACCOUNTANTS[name]()


class PrivacyBudgetExhausted(RuntimeError):
    """A client refused a round because it would exceed its privacy budget."""


def default_delta(n_records: int) -> float:
    """δ = 1/N rounded down to a power of ten, never above 1e-5 (docs/METHODS.md §2)."""
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
