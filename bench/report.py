"""Write ``bench/REPORT.md`` (and PNG plots next to it) from ``bench/results/*.json``.

Usage::

    .venv/bin/python bench/report.py [--results bench/results] [--out bench/REPORT.md] [--readme README.md]

The report starts with the date, the machine (platform, cores, CPU, Python) and the commit, then has
one row per published claim (published number, fedveil's number with its spread over seeds, whether
the claim held and a one-line analysis), one row per performance ratio, the federation-scale table,
the PII detector table, the plots and the source of every figure (result file, its date, commit and
whether ``--quick`` produced it). Missing result files give ``not run`` rows; failures recorded by
``bench/run_all.py`` in ``results/run_all.json`` are shown as such.

A compact results section is also written to ``bench/README_RESULTS.md``; ``--readme PATH``
additionally replaces the text between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` in PATH.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report_exposure import exposure_table  # noqa: E402
from bench.report_perf import performance, pii_table, scale_table  # noqa: E402
from bench.report_plots import make_plots  # noqa: E402
from bench.report_rows import Results, Row, claims  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
RUN_LOG = "run_all"


class MarkerError(ValueError):
    """The README lacks the ``bench:begin`` / ``bench:end`` markers, or has them out of order."""


def load_results(directory: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Result files by stem, and a status per benchmark (from ``run_all.json``, or ``unreadable: …``)."""
    results: dict[str, dict[str, Any]] = {}
    status: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text())  # Python's json reads the NaN the benchmarks write
        except (OSError, ValueError) as exc:
            status[path.stem] = f"unreadable: {exc}"
            continue
        if path.stem == RUN_LOG:
            for entry in data.get("benchmarks", []):
                status[str(entry["result"])] = str(entry["status"])
        elif isinstance(data, dict):
            results[path.stem] = data
    return results, status


def git_short(root: Path = ROOT) -> str:
    """``git rev-parse --short HEAD``, suffixed ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def machine() -> dict[str, str]:
    """Platform, cores, CPU model, Python version and commit of this checkout."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cores": str(os.cpu_count()), "cpu": cpu,
            "python": platform.python_version(), "commit": git_short()}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def row_cells(rows: Sequence[Row], analysis: bool = True) -> list[list[str]]:
    """Cells of claim/performance rows, with or without the analysis column."""
    return [[r.claim, r.published, r.fedveil, f"**{r.held}**"] + ([r.analysis] if analysis else []) for r in rows]


def sources(results: Results, status: Mapping[str, str]) -> list[str]:
    """Where every figure came from: result file, its date, commit and mode, and the last run's status."""
    rows = []
    for name in sorted(set(results) | set(status)):
        res = results.get(name, {})
        mach = res.get("machine", {})
        quick = res.get("quick", (res.get("settings") or {}).get("quick"))
        rows.append([f"results/{name}.json" if name in results else "-", name, str(mach.get("date", "-")),
                     str(mach.get("git_commit", "-"))[:12], "quick" if quick else "full" if name in results else "-",
                     status.get(name, "-")])
    return table(["file", "benchmark", "date", "commit", "mode", "last run_all status"], rows)


def header(now: dt.datetime, mach: Mapping[str, str]) -> str:
    """One line: date, machine and commit."""
    return (f"Generated {now:%Y-%m-%d %H:%M} UTC on {mach['platform']}, {mach['cores']} cores ({mach['cpu']}), "
            f"Python {mach['python']}, commit `{mach['commit']}`.")


def build_report(results: Results, status: Mapping[str, str], now: dt.datetime, mach: Mapping[str, str],
                 plots: Sequence[Path] = (), plots_note: str = "") -> str:
    """The whole REPORT.md text."""
    lines = ["# fedveil benchmark report", "", header(now, mach), "",
             "Every performance figure is a ratio against a baseline measured in the same process. Claims are "
             "checked at small scale (tiny models, CPU), so a published number is a reference point, not a target: "
             "what is reproduced is the ordering or the direction of the effect. Regenerate with `make bench` "
             "(full) or `fedveil bench all --quick` (smoke).", "",
             "## Claims", ""]
    lines += table(["claim", "published", "fedveil (mean ± std over seeds)", "held", "analysis"],
                   row_cells(claims(results, status)))
    lines += ["", "## Performance", ""]
    lines += table(["measurement", "goal / anchor", "fedveil", "held", "analysis"],
                   row_cells(performance(results, status)))
    lines += ["", "## Canary exposure by method", "",
              "Mean rank exposure (bits) of the inserted canaries by repetition count (0× = never-inserted "
              "controls, the floor), same teacher and public initialisation for every student; DP rows at ε = 2 "
              "(`--steps`, 60), non-private rows for `--nondp-steps` (480).", ""]
    lines += exposure_table(results)
    lines += ["", "## Federation scale", "",
              "`fedveil run` subprocesses (DP-SFT, student-xs, audits off), 10 clients sampled per round. "
              "Round times are wall-clock on a shared machine (load average per run in the last column); "
              "run PSS is the summed proportional memory of the run's own processes.", ""]
    lines += scale_table(results)
    scale = results.get("scale")
    if scale is not None:
        lines += ["", f"Load average before/after the scale bench: {_loads(scale.get('load_average_before'))} / "
                      f"{_loads(scale.get('load_average_after'))}."]
    lines += ["", "## PII detector (presidio synthetic PII dataset)", ""]
    lines += pii_table(results)
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] or [plots_note or "_no plots_"]
    lines += ["", "## Sources", ""]
    lines += sources(results, status)
    return "\n".join(lines) + "\n"


def _loads(avg: Sequence[float] | None) -> str:
    return "n/a" if not avg else ", ".join(f"{a:.1f}" for a in avg)


def readme_fragment(results: Results, status: Mapping[str, str], now: dt.datetime, mach: Mapping[str, str]) -> str:
    """The compact results section that goes between the README's bench markers."""
    lines = ["### Benchmark results", "", f"_{header(now, mach)} Full report with analysis and plots: "
             "[bench/REPORT.md](bench/REPORT.md); regenerate with `make bench`._", ""]
    lines += table(["claim", "published", "fedveil", "held"], row_cells(claims(results, status), analysis=False))
    lines += [""]
    lines += table(["measurement", "goal / anchor", "fedveil", "held"],
                   row_cells(performance(results, status), analysis=False))
    return "\n".join(lines) + "\n"


def replace_markers(text: str, fragment: str) -> str:
    """``text`` with everything between the bench markers replaced by ``fragment`` (markers kept)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise MarkerError(f"the README must contain {BEGIN} followed by {END} on their own lines; found "
                          f"begin={'yes' if start >= 0 else 'no'}, end={'yes' if end >= 0 else 'no'}")
    return text[: start + len(BEGIN)] + "\n" + fragment.rstrip("\n") + "\n" + text[end:]


def write_report(results_dir: Path, out: Path, readme: Path | None = None, plots: bool = True,
                 now: dt.datetime | None = None) -> Path:
    """Load results, write the report, its plots and the README fragment; returns the report path."""
    results, status = load_results(results_dir)
    now = now or dt.datetime.now(dt.UTC)
    mach = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs = make_plots(results, out.parent) if plots else []
    note = "" if pngs or not plots else "_matplotlib is not installed: no plots (pip install matplotlib)._"
    out.write_text(build_report(results, status, now, mach, pngs, note))
    fragment = readme_fragment(results, status, now, mach)
    (out.parent / "README_RESULTS.md").write_text(fragment)
    if readme is not None:
        readme.write_text(replace_markers(readme.read_text(), fragment))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="directory of <name>.json result files")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "REPORT.md")
    p.add_argument("--readme", type=Path, default=None, help="README whose bench markers get the results section")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    try:
        path = write_report(args.results, args.out, args.readme, plots=not args.no_plots)
    except (MarkerError, OSError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
