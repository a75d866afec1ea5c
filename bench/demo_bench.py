"""The default run end to end, and its federated rounds with vs without HE (issue 4's round-time ratio).

Usage::

    .venv/bin/python bench/demo_bench.py [--quick] [--he on,off]

Runs ``fedveil run`` with the shipped default configuration (4 clients, 3 rounds, DP-OPD with
swing-style targets, CKKS aggregation, audits) as a subprocess, then the same configuration with
``--set he.enabled=false``, one after the other. Each run's per-round wall time comes from the store
(``rounds.wall_seconds``: from sending the round's train messages to storing its result), the run's
memory is the summed PSS of its processes (:class:`bench.scale_bench.TreeMemory`). The ratio of the
mean round time with HE over without is the issue's "whole federated round with and without HE"; the
first (HE) run is also the "default demo end to end" figure. Run it on an otherwise idle machine:
wall times include whatever else runs.

``--deploy NODES`` adds a third run of the same configuration on Flower's Deployment Engine
(``fedveil deploy local``: TLS SuperLink, authenticated SuperNodes, one ClientApp process per message)
and reports its per-round time over the simulation's (HE on in both).

``--quick``: 2 clients, 1 round, small data, audits off (a smoke test of the script, not a measurement).

Expected duration on the 2-core machine: ~10–15 min per run, ~25 min in all; ``--quick`` ~2 min.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.common import write_result
from bench.scale_bench import measure

QUICK = ["--set", "federation.clients=2", "--set", "federation.rounds=1", "--set", "data.records_per_client=24",
         "--set", "data.public_records=200", "--set", "data.heldout_records=16", "--set", "data.vocab_size=400",
         "--set", "train.local_steps=2", "--set", "train.teacher_steps=3", "--set", "audit.enabled=false"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run, audits off (smoke test, not a measurement)")
    p.add_argument("--he", default="on,off", help="order of the HE settings to run")
    p.add_argument("--deploy", type=int, default=0, metavar="NODES",
                   help="also run the same configuration with `fedveil deploy local --nodes NODES` (4 = default)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    order = [s.strip() for s in args.he.split(",") if s.strip()]
    if not order or any(s not in ("on", "off") for s in order):
        raise SystemExit(f"demo_bench: --he must list on/off, got {args.he!r}")
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedveil-demo-") as tmp:
        db = f"sqlite:///{Path(tmp) / 'demo.db'}"
        for setting in order:
            run_dir = Path(tmp) / f"he-{setting}"
            run_dir.mkdir()
            extra = (QUICK if args.quick else []) + (["--set", "he.enabled=false"] if setting == "off" else [])
            row = measure(extra, run_dir=run_dir, db=db, run_id=f"demo-he-{setting}", timeout=args.timeout,
                          audits=setting == "on")
            row["load_avg"] = list(os.getloadavg())
            runs[setting] = row
            print(f"HE {setting}: status {row.get('status')}, rounds {row.get('round_s')}, "
                  f"ppl {row.get('perplexity')}, wall {row['wall_s']:.0f} s, peak {row['peak_tree_pss_mb']:.0f} MiB, "
                  f"load {row['load_avg'][0]:.1f}", flush=True)
        if args.deploy:
            run_dir = Path(tmp) / "deploy"
            run_dir.mkdir()
            # TLS SuperLink, authenticated SuperNodes, one ClientApp process per message; same configuration.
            deploy_args = ["--nodes", str(args.deploy), *(QUICK if args.quick else []), "--timeout", str(args.timeout)]
            row = measure(deploy_args, run_dir=run_dir, db=db, run_id="demo-deploy", timeout=args.timeout,
                          command=("deploy", "local"))
            row.update(nodes=args.deploy, load_avg=list(os.getloadavg()))
            runs["deploy"] = row
            print(f"deployment: status {row.get('status')}, rounds {row.get('round_s')}, wall {row['wall_s']:.0f} s",
                  flush=True)
    record: dict[str, Any] = {"runs": runs, "quick": args.quick, "order": order,
                              "wall_seconds": time.perf_counter() - started}
    on, off = runs.get("on", {}), runs.get("off", {})
    if on.get("round_s") and off.get("round_s"):
        record["round_s_ratio_he_over_plain"] = statistics.fmean(on["round_s"]) / statistics.fmean(off["round_s"])
        record["per_round_ratio"] = [a / b for a, b in zip(on["round_s"], off["round_s"])]
        print(f"mean round time HE / plain: x{record['round_s_ratio_he_over_plain']:.2f} "
              f"(per round {[round(r, 2) for r in record['per_round_ratio']]})")
    dep = runs.get("deploy", {})
    if on.get("round_s") and dep.get("round_s"):
        record["round_s_ratio_deploy_over_simulation"] = statistics.fmean(dep["round_s"]) / statistics.fmean(
            on["round_s"])
        print(f"mean round time deployment / simulation (HE on): x{record['round_s_ratio_deploy_over_simulation']:.2f}")
    path = write_result("demo", record, args.out)
    print(f"wrote {path} ({record['wall_seconds']:.0f} s)")
    return 0 if all(r.get("status") == "completed" for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
