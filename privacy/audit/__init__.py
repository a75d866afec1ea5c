"""fedveil: privacy/audit — canaries, exposure, membership inference, empirical ε, memorisation (docs/METHODS.md §8).

Names are resolved on first use (PEP 562): importing one submodule, e.g. ``privacy.audit.canaries`` for
the training data, does not import scikit-learn, SciPy and the scoring code that only audits need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privacy.audit.canaries import (
        Canary,
        CanaryFormat,
        candidate_token_ids,
        equal_length_candidates,
        insert_canaries,
        plan_canaries,
        plan_one_run_canaries,
        sample_secrets,
    )
    from privacy.audit.epsilon import best_attack_epsilon, clopper_pearson_epsilon, one_run_epsilon, one_run_guesses
    from privacy.audit.exposure import ExtrapolatedExposure, exposure_report, rank_exposure, skewnorm_exposure
    from privacy.audit.memorisation import MemorisationResult, extraction_check, inherited_count
    from privacy.audit.mia import RocMetrics, loglog_roc_points, mia_scores, roc_metrics
    from privacy.audit.scoring import secret_log_perplexity, token_logprobs

_SUBMODULES = {
    "canaries": ("Canary", "CanaryFormat", "candidate_token_ids", "equal_length_candidates", "insert_canaries",
                 "plan_canaries", "plan_one_run_canaries", "sample_secrets"),
    "epsilon": ("best_attack_epsilon", "clopper_pearson_epsilon", "one_run_epsilon", "one_run_guesses"),
    "exposure": ("ExtrapolatedExposure", "exposure_report", "rank_exposure", "skewnorm_exposure"),
    "memorisation": ("MemorisationResult", "extraction_check", "inherited_count"),
    "mia": ("RocMetrics", "loglog_roc_points", "mia_scores", "roc_metrics"),
    "scoring": ("secret_log_perplexity", "token_logprobs"),
}
_WHERE = {name: module for module, names in _SUBMODULES.items() for name in names}

__all__ = [
    "Canary",
    "CanaryFormat",
    "ExtrapolatedExposure",
    "MemorisationResult",
    "RocMetrics",
    "best_attack_epsilon",
    "candidate_token_ids",
    "clopper_pearson_epsilon",
    "equal_length_candidates",
    "exposure_report",
    "extraction_check",
    "inherited_count",
    "insert_canaries",
    "loglog_roc_points",
    "mia_scores",
    "one_run_epsilon",
    "one_run_guesses",
    "plan_canaries",
    "plan_one_run_canaries",
    "rank_exposure",
    "roc_metrics",
    "sample_secrets",
    "secret_log_perplexity",
    "skewnorm_exposure",
    "token_logprobs",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
