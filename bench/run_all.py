"""Run every benchmark (or some), each in its own subprocess, then write the report.

Usage::

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--data DIR] [--readme README.md]

A benchmark that fails does not stop the others: its exit code and the tail of its log are recorded in
``<results>/run_all.json`` (merged with earlier entries, so running one benchmark keeps the others'
status) and the report shows it. A benchmark whose data set is absent is skipped with a
``data not found`` entry. Logs go to ``bench/logs/<name>.log``.

Full results go to ``bench/results`` and the report to ``bench/REPORT.md``; ``--quick`` writes to
``bench/results/quick`` and ``bench/results/quick/REPORT.md`` so that a smoke run never replaces the
full numbers. ``--data DIR`` is the folder holding the data sets (default ``../shared/data`` relative
to the repository root); ``--data-path PATH`` overrides the data path of a single ``--only`` benchmark.

Expected duration on the shared 2-core machine (one thread each): quick ~10 min; full ~2.5–3 h
(lm ~15 min, lm-wikitext ~15 min, exposure and exposure-wikitext ~15 min each, coldstart ~2 min,
edgefd ~9 min, he ~8 min, dpstep ~3 min, audit/rollout/pii ~1 min each, demo (default run with HE on,
off and deployed) ~45 min,
scale ~80 min, measured at load average 9–15).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA_ROOT = ROOT.parent / "shared" / "data"
LOG_DIR = ROOT / "bench" / "logs"


@dataclass(frozen=True)
class Bench:
    """One benchmark: its script, result stem, extra arguments, and the data it needs (relative to the data root)."""

    name: str
    script: str
    result: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ("--quick",)
    data: str | None = None  # path under the data root passed as --data
    data_required: bool = True
    data_files: tuple[str, ...] = ()  # files that must exist inside a data directory


BENCHMARKS: tuple[Bench, ...] = (
    Bench("pii", "pii_bench.py", "pii", quick_args=(), data="presidio-synth-pii/synth_dataset_v2.json"),
    Bench("rollout", "rollout_bench.py", "rollout"),
    Bench("audit", "audit_bench.py", "audit"),
    Bench("he", "he_bench.py", "he"),
    Bench("dpstep", "dpstep_bench.py", "dpstep"),
    Bench("coldstart", "coldstart_bench.py", "coldstart"),
    Bench("edgefd", "edgefd_bench.py", "edgefd"),
    Bench("lm", "lm_bench.py", "lm"),
    Bench("lm-wikitext", "lm_bench.py", "lm-wikitext", data="wikitext-2", data_files=("valid.txt", "test.txt")),
    Bench("exposure", "exposure_bench.py", "exposure"),
    Bench("exposure-wikitext", "exposure_bench.py", "exposure-wikitext", data="wikitext-2",
          data_files=("valid.txt", "test.txt")),
    Bench("demo", "demo_bench.py", "demo", args=("--deploy", "4")),
    Bench("scale", "scale_bench.py", "scale"),
)
NAMES = tuple(b.name for b in BENCHMARKS)


class UnknownBenchmark(ValueError):
    """A benchmark name that is not one of :data:`NAMES` (or ``all``)."""


def select(names: list[str] | None) -> list[Bench]:
    """The benchmarks named (all when ``names`` is empty or contains ``all``), in suite order."""
    if not names or "all" in names:
        return list(BENCHMARKS)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise UnknownBenchmark(f"unknown benchmark {', '.join(map(repr, unknown))}; allowed: all, {', '.join(NAMES)}")
    return [b for b in BENCHMARKS if b.name in names]


def data_path(bench: Bench, data_root: Path, override: Path | None) -> tuple[Path | None, str | None]:
    """The data path to pass, and why the benchmark must be skipped (None when it can run)."""
    if bench.data is None:
        return None, None
    path = override if override is not None else data_root / bench.data
    missing = [f for f in bench.data_files if not (path / f).is_file()] if bench.data_files else []
    if not path.exists() or missing:
        what = f"{path} (missing {', '.join(missing)})" if path.exists() else str(path)
        return None, f"data not found: {what}" if bench.data_required else None
    return path, None


def command(bench: Bench, quick: bool, data: Path | None, out: Path) -> list[str]:
    """The subprocess command line of one benchmark."""
    cmd = [sys.executable, str(ROOT / "bench" / bench.script), *bench.args, *(bench.quick_args if quick else ())]
    if data is not None:
        cmd += ["--data", str(data)]
    return cmd + ["--out", str(out / f"{bench.result}.json")]


def run_one(bench: Bench, cmd: list[str], timeout: float | None) -> dict[str, Any]:
    """Run one benchmark with its output in ``bench/logs/<name>.log``; never raises for a failed benchmark."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{bench.name}.log"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False).returncode
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"failed (timeout after {timeout:.0f} s)"
        except OSError as exc:
            status = f"failed ({exc})"
    seconds = time.perf_counter() - start
    tail = "" if status == "ok" else log_path.read_text(errors="replace")[-2000:]
    return {"name": bench.name, "result": bench.result, "status": status, "seconds": seconds, "command": cmd,
            "log": str(log_path), "log_tail": tail}


def merge_log(path: Path, entries: list[dict[str, Any]], quick: bool) -> None:
    """Update ``run_all.json`` with this invocation's entries, keeping the other benchmarks' last status."""
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = {e["result"]: e for e in json.loads(path.read_text()).get("benchmarks", [])}
        except (ValueError, KeyError, AttributeError):
            previous = {}
    for e in entries:
        previous[e["result"]] = e
    order = {b.result: i for i, b in enumerate(BENCHMARKS)}
    merged = sorted(previous.values(), key=lambda e: order.get(e["result"], len(order)))
    path.write_text(json.dumps({"quick": quick, "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                "benchmarks": merged}, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke sizes (results to <results>/quick)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"any of: all, {', '.join(NAMES)}")
    p.add_argument("--data", type=Path, default=DATA_ROOT, help="folder holding the data sets")
    p.add_argument("--data-path", type=Path, default=None, help="data path of the single --only benchmark")
    p.add_argument("--results", type=Path, default=None, help="results folder (default bench/results[/quick])")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark (default: none)")
    p.add_argument("--readme", type=Path, default=None, help="README whose bench markers get the results section")
    p.add_argument("--no-report", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        benches = select(args.only)
    except UnknownBenchmark as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        return 2
    if args.data_path is not None and (len(benches) != 1 or benches[0].data is None):
        print("run_all: --data-path needs exactly one --only benchmark that takes data "
              f"({', '.join(b.name for b in BENCHMARKS if b.data)})", file=sys.stderr)
        return 2
    results = args.results or (ROOT / "bench" / "results" / ("quick" if args.quick else ""))
    results.mkdir(parents=True, exist_ok=True)
    entries = []
    for bench in benches:
        data, skip = data_path(bench, args.data, args.data_path)
        if skip:
            entry: dict[str, Any] = {"name": bench.name, "result": bench.result, "status": "data not found",
                                     "seconds": 0.0, "command": [], "log": None, "log_tail": skip}
        else:
            print(f"[run_all] {bench.name} ...", flush=True)
            entry = run_one(bench, command(bench, args.quick, data, results), args.timeout)
        print(f"[run_all] {bench.name}: {entry['status']} ({entry['seconds']:.0f} s)"
              + (f" — {entry['log_tail'][-300:]}" if entry["status"] not in ("ok",) else ""), flush=True)
        entries.append(entry)
        merge_log(results / "run_all.json", entries, args.quick)
    if not args.no_report:
        from bench.report import MarkerError, write_report
        out = results / "REPORT.md" if args.quick else ROOT / "bench" / "REPORT.md"
        try:
            print(f"[run_all] wrote {write_report(results, out, args.readme)}")
        except MarkerError as exc:
            write_report(results, out)
            print(f"[run_all] wrote {out}; README not updated: {exc}", file=sys.stderr)
    return 1 if any(e["status"].startswith("failed") for e in entries) else 0


if __name__ == "__main__":
    raise SystemExit(main())
