"""Audits that could fail: the DP run's ε lower bound, the audit's power and the non-DP control, side by side.

Usage::

    .venv/bin/python bench/audit_power_bench.py [--dataset synthetic|wikitext-2|both] [--data DIR]
                                                [--out bench/results/audit_power.json] [--set KEY=VALUE ...]

For each dataset: ``fedveil run`` of the default configuration (DP on, target ε = 2), then
``fedveil audit RUN --control`` (same configuration, DP off, same canary design). Reported per dataset:
the claimed ε (largest client ε), the pooled one-run ε_LB of the released global student and its power
(the bound a perfect attack would reach with the same m, r, δ, β), the control's ε_LB and whether it
exceeds the claim, the per-client Clopper–Pearson bounds with their power, the canary share of each
client's training set, and the wall time of the DP run and of the control (the audit's extra cost).
wikitext-2: 160 paragraphs per client from ``valid.txt``, held-out paragraphs from ``test.txt``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEDVEIL = str(Path(sys.executable).with_name("fedveil"))
DEFAULT_WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"


def _cli(*args: str, cwd: Path, timeout: float = 3600) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), COLUMNS="200")
    proc = subprocess.run([FEDVEIL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"fedveil {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                         f"\n{proc.stderr[-2000:]}")
    return proc.stdout


def _wikitext_files(directory: Path, work: Path, per_client: int, clients: int) -> list[str]:
    def paragraphs(path: Path) -> list[str]:
        lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines()]
        return [t for t in lines if len(t) > 40 and not (t.startswith("=") and t.endswith("="))]

    private = paragraphs(directory / "valid.txt")[: per_client * clients]
    heldout = paragraphs(directory / "test.txt")[:200]
    for name, rows in (("private.jsonl", private), ("heldout.jsonl", heldout)):
        (work / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return ["data.task='text-file'", f"data.path='{work / 'private.jsonl'}'",
            f"data.heldout_path='{work / 'heldout.jsonl'}'", "data.field='text'"]


def _summary(shown: dict[str, Any]) -> dict[str, Any]:
    bounds = shown["epsilon_bounds"]
    pooled = [b for b in bounds if b["client_index"] is None and not b["details"].get("control")]
    control = [b for b in bounds if b["details"].get("control")]
    cp = [b for b in bounds if b["method"] == "clopper-pearson" and b["details"].get("model") == "global"]
    shares = {str(a["client_index"]): a["params"].get("canary_share") for a in shown["audits"]
              if a["kind"] == "epsilon" and a["model"] == "global"}
    audit_seconds = sum(float(a["params"].get("meta", {}).get("audit_seconds") or 0.0) for a in shown["audits"]
                        if a["kind"] == "exposure" and a["model"] == "global")
    out: dict[str, Any] = {
        "claimed_epsilon": max((float(e["epsilon"]) for e in shown["privacy_ledger"]), default=None),
        "canary_share": shares, "audit_seconds_exposure_meta": audit_seconds,
        "clopper_pearson_global": [{"client": b["client_index"], "epsilon_lb": b["epsilon_lb"],
                                    "power": b["details"].get("power")} for b in cp],
    }
    if pooled:
        p = pooled[-1]
        out["dp"] = {"epsilon_lb": p["epsilon_lb"], "power": p["details"]["power"], "m": p["details"]["m"],
                     "r": p["details"]["r"], "v": p["details"]["v"], "delta": p["details"]["delta"],
                     "flagged": p["flagged"]}
    if control:
        c = control[-1]
        out["control"] = {"epsilon_lb": c["epsilon_lb"], "power": c["details"]["power"], "m": c["details"]["m"],
                          "r": c["details"]["r"], "v": c["details"]["v"],
                          "exceeds_claim": c["details"].get("control_exceeds_claim"),
                          "run": c["details"]["control_run"]}
    return out


def measure(dataset: str, sets: list[str], work: Path) -> dict[str, Any]:
    db = f"sqlite:///{work / 'store.db'}"
    flags = [a for s in sets for a in ("--set", s)]
    t0 = time.perf_counter()
    _cli("run", "-c", str(ROOT / "configs" / "default.toml"), *flags, "--set", f"run.run_dir='{work / 'runs'}'",
         "--set", f"run.name='{dataset}'", "--db", db, "--quiet", cwd=work)
    dp_seconds = time.perf_counter() - t0
    run_id = json.loads(_cli("runs", "--format", "json", "--db", db, cwd=work))[0]["id"]
    t1 = time.perf_counter()
    _cli("audit", run_id, "--control", "--db", db, cwd=work)
    control_seconds = time.perf_counter() - t1
    shown = json.loads(_cli("show", run_id, "--format", "json", "--db", db, cwd=work))
    return {"dataset": dataset, "run_id": run_id, "dp_run_seconds": dp_seconds,
            "control_run_seconds": control_seconds, **_summary(shown)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("synthetic", "wikitext-2", "both"), default="both")
    parser.add_argument("--data", type=Path, default=DEFAULT_WIKITEXT)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "audit_power.json")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    results = []
    for dataset in (("synthetic", "wikitext-2") if args.dataset == "both" else (args.dataset,)):
        with tempfile.TemporaryDirectory(prefix=f"audit-power-{dataset}-") as tmp:
            work = Path(tmp)
            sets = list(args.sets)
            if dataset == "wikitext-2":
                sets = _wikitext_files(args.data, work, 160, 4) + sets
            result = measure(dataset, sets, work)
        print(json.dumps(result, indent=1), flush=True)
        results.append(result)
    report = {"benchmark": "audit_power", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cpus)",
              "python": platform.python_version(), "overrides": args.sets, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
