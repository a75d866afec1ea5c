"""Differential privacy: accounting (noise plan, ledger) and the DP-SGD step (docs/METHODS.md §2)."""

from privacy.dp.accounting import (
    ACCOUNTANTS,
    DPPlan,
    Ledger,
    PrivacyBudgetExhausted,
    default_delta,
    plan_noise,
)
from privacy.dp.session import DPSession, poisson_batches, run_dp_steps

__all__ = [
    "ACCOUNTANTS",
    "DPPlan",
    "DPSession",
    "Ledger",
    "PrivacyBudgetExhausted",
    "default_delta",
    "plan_noise",
    "poisson_batches",
    "run_dp_steps",
]
