"""Dashboard test data, written through the real :class:`fedveil.store.Store` API.

``filled_db`` holds two finished runs with realistic values: a DP-OPD text run with HE records,
client events and every kind of audit (one ε lower bound exceeds the claim), and a non-DP
digits run with accuracy only. ``states_db`` holds a run in progress and a failed run.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from typing import Any

import numpy as np

from fedveil.config import load_config, to_dict
from fedveil.store import (
    CanaryRow,
    EventRow,
    ExposureRow,
    HERow,
    LedgerRow,
    MetricRow,
    Store,
)

TEXT_RUN = "textrun0001"
DIGITS_RUN = "digitsrun01"
RUNNING_RUN = "running0001"
FAILED_RUN = "failed00001"
TEXT_PPL = [48.21, 31.66, 25.43]
DIGITS_ACC = [0.712, 0.853, 0.904]
FAIL_MESSAGE = "RuntimeError: client 1 ran out of memory in round 2"
STATEMENT = ("Mechanism: DP-SGD (Opacus, per-example clipping C = 1.0), PRV accountant, target epsilon = 2.0.\n"
             "Unit protected: one record of one client.\n"
             "Not covered: each client's teacher was trained WITHOUT differential privacy.")


def base_config() -> dict[str, Any]:
    """The embedded default configuration as the nested dict runs store."""
    return to_dict(load_config(None, []))


def _t(minutes: float) -> dt.datetime:
    return dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)


def add_text_round(store: Store, run_id: str, rnd: int, clients: int, *, he: bool) -> None:
    ppl = TEXT_PPL[rnd - 1]
    metrics = [MetricRow("perplexity", ppl, rnd), MetricRow("train-loss", 4.1 - 0.45 * rnd, rnd),
               MetricRow("round-seconds", 61.5 + rnd, rnd)]
    ledger, he_rows = [], []
    for c in range(clients):
        eps = 0.62 * rnd + 0.04 * c
        metrics += [MetricRow("client-perplexity", ppl * (1.0 + 0.05 * (c - 1)), rnd, c),
                    MetricRow("epsilon", eps, rnd, c), MetricRow("steps", 8 * rnd, rnd, c)]
        ledger.append(LedgerRow(client_index=c, epsilon=eps, delta=1e-5, noise_multiplier=1.1234, sample_rate=0.1,
                                steps=8 * rnd, accountant="prv", max_grad_norm=1.0, grad_sample_mode="ghost"))
        if he:
            he_rows.append(HERow(profile="compact", bytes_sent=3_355_443 + 1000 * c, client_index=c,
                                 encrypt_seconds=0.412 + 0.01 * c))
    if he:
        he_rows.append(HERow(profile="compact", bytes_sent=3_355_443, aggregate_seconds=0.093,
                             decrypt_seconds=0.051, max_abs_error=3.1e-7))
    events = [EventRow("rejected", "payload of 301.2 MB exceeds max_payload_mb = 256", client_index=2,
                       node_id="9001")] if rnd == 2 else []
    store.record_round(run_id, rnd, status="completed", started_at=_t(rnd), finished_at=_t(rnd + 1),
                       num_sampled=clients, num_replied=clients - len(events), num_rejected=len(events),
                       metrics=metrics, ledger=ledger, he=he_rows, events=events)


def _mia_attack(rng: np.random.Generator, shift: float, curve: float) -> dict[str, Any]:
    """One attack's values in the shape ``server/audits.py`` stores (ROC points, histogram counts)."""
    members, nonmembers = rng.normal(shift, 1.0, 400), rng.normal(0.0, 1.0, 400)
    edges = np.histogram_bin_edges(np.concatenate([members, nonmembers]), bins=20)
    fpr = np.geomspace(1e-3, 1.0, 40)
    return {"auc": 0.5 + shift / 3, "tpr_at_1pct": 0.01 + shift / 10, "tpr_at_01pct": None,
            "roc_points": [[float(f), float(min(1.0, f ** curve))] for f in fpr],
            "histogram": {"edges": edges.tolist(), "members": np.histogram(members, edges)[0].tolist(),
                          "nonmembers": np.histogram(nonmembers, edges)[0].tolist()},
            "epsilon_lb": 0.1 + shift}


def add_audits(store: Store, run_id: str) -> None:
    """End-of-run audits of clients 0 and 1 as ``server/audits.py`` writes them, and per-round global exposure.

    Client 0's one-run bound on the global student (2.07) exceeds its accountant ε (1.86): flagged.
    """
    reps = {"c1": 1, "c4": 4, "c16": 16, "ctl": 0}
    canaries = [CanaryRow(cid, 0, "my account number is {d}{d}{d}{d}{d}{d}", f"{r:06d}", r, r > 0,
                          0 if r else None) for cid, r in reps.items()]
    store.add_canaries(run_id, canaries)
    rng = np.random.default_rng(0)
    for client in (0, 1):
        for model, gain in (("teacher", 3.0), ("student", 1.2), ("global", 1.0)):
            rows = [ExposureRow(cid, r, 40.0 - gain * r, min(10.97, gain * math.log2(1 + r) + 0.2 * client), 2000,
                                exposure_extrapolated=gain * math.log2(1 + r) + 0.3, extrapolated_is_bound=r == 16)
                    for cid, r in reps.items()]
            store.add_audit(run_id, "exposure", model, client_index=client, params={"n_ref": {"0": 2000}},
                            summary={"n_canaries": 4}, exposures=rows)
        for model, rate in (("teacher", 0.125), ("student", 0.03125), ("global", 0.015625), ("finetuned", 0.125)):
            summary: dict[str, Any] = {"rate": rate, "n_audited": 64, "n_memorised": round(rate * 64),
                                       "approx_rate_ned_0.1_ours": rate + 0.04}
            if model != "teacher":
                summary |= {"inherited_from_teacher": 1 if model == "student" else 0, "teacher_memorised": 8}
            store.add_audit(run_id, "memorisation", model, client_index=client, summary=summary)
        for model, shift in (("teacher", 0.8), ("student", 0.3), ("global", 0.2), ("finetuned", 0.6)):
            attacks = {name: _mia_attack(rng, shift * k, 0.9 - shift / 2) for name, k in (("loss", 1.0), ("zlib", 0.8))}
            store.add_audit(run_id, "mia", model, client_index=client, params={"k": 0.2, "n_nonmembers": 400},
                            summary=attacks)
        claim = 1.86 + 0.04 * client
        for model in ("student", "global"):
            store.add_audit(run_id, "epsilon", model, client_index=client, params={"accountant_epsilon": claim},
                            summary={"dp_claimed": True})
            store.add_epsilon_bound(run_id, method="clopper-pearson", epsilon_lb=0.41, accountant_epsilon=claim,
                                    client_index=client, details={"model": model, "alpha": 0.05})
        store.add_epsilon_bound(run_id, method="one-run", epsilon_lb=2.07 if client == 0 else 1.2,
                                accountant_epsilon=claim, client_index=client,
                                details={"model": "global", "m": 1000, "r": 200, "v": 190})
    for rnd in (1, 2, 3):  # audit.every_round: the server audits the global student each round
        rows = [ExposureRow(cid, r, 40.0 - r, 0.5 * rnd * math.log2(1 + r), 2000) for cid, r in reps.items()]
        store.add_audit(run_id, "exposure", "global", server_round=rnd, params={"n_ref": {"0": 2000}}, exposures=rows)


def fill_text_run(store: Store, run_id: str = TEXT_RUN, *, rounds: int = 3, finish: bool = True) -> None:
    """A DP-OPD text run with HE, 3 clients, an event and every kind of audit."""
    cfg = base_config()
    cfg["run"]["name"], cfg["federation"]["clients"], cfg["he"]["enabled"] = "dp-opd-clinical", 3, True
    store.create_run(cfg, run_id=run_id, name="dp-opd-clinical", method="dp-opd", task="synthetic-text",
                     he_enabled=True, num_clients=3, num_rounds=3, seed=0)
    store.mark_running(run_id)
    for c in range(3):
        store.register_client(run_id, c, node_id=str(9000 + c), num_examples=160, teacher_provenance="private-non-dp")
    for rnd in range(1, rounds + 1):
        add_text_round(store, run_id, rnd, 3, he=True)
    if finish:
        store.set_privacy_statement(run_id, STATEMENT)
        add_audits(store, run_id)
        store.complete_run(run_id, wall_seconds=212.4, peak_rss_mb=1834.0)


def fill_digits_run(store: Store, run_id: str = DIGITS_RUN) -> None:
    """A non-DP federated-distillation digits run: accuracy only, no ledger, no HE, no audits."""
    cfg = copy.deepcopy(base_config())
    cfg["run"]["name"], cfg["data"]["task"], cfg["privacy"]["enabled"] = "digits-fd-kmeans", "digits", False
    store.create_run(cfg, run_id=run_id, name="digits-fd-kmeans", method="fd-kmeans", task="digits",
                     he_enabled=False, num_clients=4, num_rounds=3, seed=1,
                     privacy_statement="No differential privacy: no formal guarantee holds.")
    store.mark_running(run_id)
    for rnd, acc in enumerate(DIGITS_ACC, start=1):
        metrics = [MetricRow("accuracy", acc, rnd)] + [
            MetricRow("client-accuracy", acc - 0.02 * c, rnd, c) for c in range(4)]
        store.record_round(run_id, rnd, status="completed", started_at=_t(10 + rnd), finished_at=_t(11 + rnd),
                           num_sampled=4, num_replied=4, metrics=metrics)
    store.complete_run(run_id, wall_seconds=35.2)
