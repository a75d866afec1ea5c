"""The privacy statement lists every release outside ε, and only the ones that happen (issue 13 item 3)."""

from __future__ import annotations

import pytest

from fedveil.config import load_config
from server.fd_coordinator import digits_privacy_statement
from server.statement import privacy_statement

LEDGER = {0: {"epsilon": 1.9, "delta": 1e-5, "noise_multiplier": 1.1, "sample_rate": 0.1, "steps": 64,
              "grad_sample_mode": "ghost"}}


def test_default_statement_names_relation_counter_and_every_release() -> None:
    text = privacy_statement(load_config(), LEDGER)
    assert "Neighbouring relation: add/remove one text record of one client" in text
    assert "own ledger" in text and "cannot reset it" in text
    released = next(line for line in text.splitlines() if line.startswith("Released outside epsilon"))
    for item in ("record count", "held-out NLL sums", "non-DP teacher", "audit summaries"):
        assert item in released, item
    # Off by default: they stay on the node, so the statement must not claim them either way.
    assert "training loss" not in released and "per-record audit statistics" not in released


@pytest.mark.parametrize(("key", "phrase"), [("privacy.release_train_loss", "training loss on private batches"),
                                             ("audit.release_scores", "per-record audit statistics")])
def test_opt_in_releases_are_listed(key: str, phrase: str) -> None:
    assert phrase in privacy_statement(load_config(None, [f"{key}=true"]), LEDGER)


def test_statement_follows_what_the_run_does() -> None:
    no_teacher = privacy_statement(load_config(None, ["train.method=dp-sft", "audit.enabled=false"]), LEDGER)
    assert "non-DP teacher" not in no_teacher and "audit summaries" not in no_teacher
    digits = digits_privacy_statement(load_config(None, ["data.task=digits"]), LEDGER)
    assert "add/remove one image" in digits and "own classes" in digits and "audit summaries" not in digits
