"""The pooled one-run audit of the global model, the non-DP control's bound and the portable export
(docs/METHODS.md §8, docs/AUDIT_EXPORT.md), on replies as clients send them (no simulation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedveil.commands.audit_export import export_run
from fedveil.config import load_config, to_dict
from fedveil.store import LedgerRow, Store
from privacy.audit.epsilon import one_run_epsilon, one_run_guesses, one_run_power
from server.audits import pooled_one_run, store_pooled


def _replies(separation: float, m_per_client: int = 100, clients: int = 4, seed: int = 0) -> dict[int, Any]:
    rng = np.random.default_rng(seed)
    out: dict[int, Any] = {}
    for client in range(clients):
        flags = rng.random(m_per_client) < 0.5
        scores = rng.normal(0.0, 1.0, m_per_client) + separation * flags
        canaries = {f"onerun-f1-c{client}-{k}": [float(s), bool(f)] for k, (s, f) in enumerate(zip(scores, flags))}
        out[client] = {"epsilon": {"global": {"one_run": {"canaries": canaries, "delta": 1e-5}}}}
    return out


def test_pooled_bound_is_the_one_run_bound_of_all_canaries() -> None:
    replies = _replies(separation=6.0)
    pooled = pooled_one_run(replies)
    assert pooled is not None and pooled["m"] == 400 and pooled["k_pos"] == pooled["k_neg"] == 100
    scores = [s for c in sorted(replies) for _, (s, _) in sorted(replies[c]["epsilon"]["global"]["one_run"][
        "canaries"].items())]
    flags = [f for c in sorted(replies) for _, (_, f) in sorted(replies[c]["epsilon"]["global"]["one_run"][
        "canaries"].items())]
    r, v = one_run_guesses(scores, flags, 100, 100)
    assert (pooled["r"], pooled["v"]) == (r, v)
    assert pooled["epsilon_lb"] == pytest.approx(one_run_epsilon(400, r, v, 1e-5))
    assert pooled["power"] == pytest.approx(one_run_power(400, 200, 1e-5)) and pooled["power"] >= 4.0
    assert pooled["epsilon_lb"] > 2.0  # a leaky model is caught at the default claim
    chance = pooled_one_run(_replies(separation=0.0))
    assert chance is not None and chance["epsilon_lb"] < 1.0
    assert pooled_one_run({0: {"epsilon": {}}}) is None


def _store(tmp_path: Path) -> tuple[Store, str, str]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    cfg = load_config(None, ["he.enabled=false"])
    runs = []
    for name in ("dp", "control"):
        runs.append(store.create_run(to_dict(cfg), name=name, method="dp-opd", task="synthetic-text",
                                     he_enabled=False, num_clients=4, num_rounds=3, seed=0))
    store.add_ledger(runs[0], [LedgerRow(c, 1.9 + 0.02 * c, 1e-5, 0.96, 0.01, 24, "prv", 1.0, "ghost", 3)
                               for c in range(4)])
    return store, runs[0], runs[1]


def test_control_bound_is_stored_in_the_dp_run_without_flagging_it(tmp_path: Path) -> None:
    from server.audits import control_target

    store, dp_run, control = _store(tmp_path)
    with store:
        cfg_dp = load_config(None, ["he.enabled=false"])
        stored = store_pooled(store, dp_run, cfg_dp, _replies(0.2), store.latest_ledger(dp_run))
        assert stored is not None and stored["epsilon_lb"] <= 1.96
        cfg_control = load_config(None, ["he.enabled=false", "privacy.enabled=false", f"audit.control_of='{dp_run}'"])
        target = control_target(store, dp_run)
        assert target == {"run_id": dp_run, "claimed_epsilon": pytest.approx(1.96)}
        bit = store_pooled(store, control, cfg_control, _replies(6.0), {}, control_of=target)
        assert bit is not None and bit["control_exceeds_claim"]
        run = store.get_run(dp_run)
        control_row = next(b for b in run["epsilon_bounds"] if b["details"].get("control"))
        assert control_row["details"]["control_run"] == control and control_row["details"]["control_exceeds_claim"]
        assert not run["run"]["flags"]  # the DP run's own claim is not contradicted by its control
        # Export: canary scores with coins, MIA summaries, every bound's parameters, a manifest.
        store.add_audit(dp_run, "epsilon", "global", client_index=0,
                        summary={"one_run": _replies(1.0, 8, 1)[0]["epsilon"]["global"]["one_run"]})
        store.add_audit(dp_run, "mia", "global", client_index=0,
                        summary={"attacks": {"loss": {"auc": 0.55, "tpr_at_1pct": None, "epsilon_lb": 0.0}}})
    files = export_run(dp_run, f"sqlite:///{tmp_path / 's.db'}", tmp_path / "export")
    assert {f.name for f in files} == {"canary_scores.csv", "mia.csv", "bounds.json", "manifest.json"}
    with open(tmp_path / "export" / "canary_scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["included"] for r in rows} <= {"0", "1"}
    bounds = json.loads((tmp_path / "export" / "bounds.json").read_text())
    assert {b["details"].get("control", False) for b in bounds} == {False, True}
    assert all({"m", "r", "v", "delta", "beta", "power"} <= set(b["details"]) for b in bounds)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["files"]["canary_scores.csv"] == 8
