"""``fedveil audit RUN_ID --export DIR``: a run's audit data in a portable format (docs/AUDIT_EXPORT.md).

Three kinds of files, all plain CSV / JSON so that an external auditor can recompute every bound:

* ``canary_scores.csv`` — one row per one-run canary and audited model: ``model, client, canary_id,
  score, included`` (score = −log-perplexity of the secret, higher = more member-like; included = the
  node's revealed coin). The in/out score arrays of a canary-score auditor are the two halves.
* ``mia.csv`` — one row per (model, client, attack): AUC and TPR at 1 % / 0.1 % FPR; and, only for
  runs with ``audit.release_scores = true``, ``mia_scores.csv`` with ``model, client, attack, score,
  member`` (1 = member) per record, the input of ML Privacy Meter style analyses.
* ``bounds.json`` — every stored ε lower bound with its parameters (method, m, r, v, k, α or β, δ,
  power, counts, the claimed ε), and ``manifest.json`` naming the run, the files and the format version.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FORMAT_VERSION", "export_run"]

FORMAT_VERSION = 1


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    count = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def _canary_rows(audits: Sequence[Mapping[str, Any]]) -> Iterable[list[Any]]:
    for audit in audits:
        if audit.get("kind") != "epsilon":
            continue
        one_run = (audit.get("summary") or {}).get("one_run") or {}
        for canary_id, (score, included) in sorted((one_run.get("canaries") or {}).items()):
            yield [audit.get("model"), audit.get("client_index"), canary_id, float(score), int(bool(included))]


def _attacks(audit: Mapping[str, Any]) -> Mapping[str, Any]:
    summary = audit.get("summary") or {}
    nested = summary.get("attacks")
    return nested if isinstance(nested, Mapping) else summary


def _mia_rows(audits: Sequence[Mapping[str, Any]]) -> Iterable[list[Any]]:
    for audit in audits:
        if audit.get("kind") != "mia":
            continue
        for attack, values in sorted(_attacks(audit).items()):
            if isinstance(values, Mapping) and "auc" in values:
                yield [audit.get("model"), audit.get("client_index"), attack, values.get("auc"),
                       values.get("tpr_at_1pct"), values.get("tpr_at_01pct"), values.get("epsilon_lb"),
                       values.get("power")]


def _mia_score_rows(audits: Sequence[Mapping[str, Any]]) -> Iterable[list[Any]]:
    for audit in audits:
        if audit.get("kind") != "mia":
            continue
        for attack, values in sorted(_attacks(audit).items()):
            if not isinstance(values, Mapping):
                continue
            for label, key in ((1, "member_scores"), (0, "nonmember_scores")):
                for score in values.get(key) or []:
                    yield [audit.get("model"), audit.get("client_index"), attack, float(score), label]


def export_run(run_id: str, db_url: str, directory: Path) -> list[Path]:
    """Write the audit data of ``run_id`` to ``directory`` (created); returns the files written.

    Raises
    ------
    fedveil.store.RunNotFound
        Unknown run id.
    ValueError
        The run holds no audit data.
    """
    from fedveil.store import Store

    with Store(db_url) as store:
        run = store.get_run(run_id)
    audits = run.get("audits", [])
    bounds = run.get("epsilon_bounds", [])
    if not audits and not bounds:
        raise ValueError(f"run {run_id} has no audit data to export (audits run with audit.enabled = true)")
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, int] = {}
    files["canary_scores.csv"] = _write_csv(directory / "canary_scores.csv",
                                            ["model", "client", "canary_id", "score", "included"],
                                            _canary_rows(audits))
    files["mia.csv"] = _write_csv(directory / "mia.csv", ["model", "client", "attack", "auc", "tpr_at_1pct",
                                                          "tpr_at_01pct", "epsilon_lb", "power"], _mia_rows(audits))
    scores = list(_mia_score_rows(audits))
    if scores:
        files["mia_scores.csv"] = _write_csv(directory / "mia_scores.csv",
                                             ["model", "client", "attack", "score", "member"], scores)
    keep = ("id", "method", "client_index", "epsilon_lb", "accountant_epsilon", "flagged", "details")
    (directory / "bounds.json").write_text(json.dumps([{k: b.get(k) for k in keep} for b in bounds], indent=1,
                                                      default=str))
    files["bounds.json"] = len(bounds)
    manifest = {"format": "fedveil-audit-export", "version": FORMAT_VERSION, "run_id": run_id,
                "score_direction": "higher = more likely a member", "files": files,
                "claimed_epsilon": {str(e["client_index"]): e.get("epsilon") for e in run.get("privacy_ledger", [])}}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return [directory / name for name in (*files, "manifest.json")]
