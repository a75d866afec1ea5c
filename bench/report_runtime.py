"""Report rows of the run-time benchmarks: the default run with and without HE and in deployment
(``demo.json``), and the ClientApp cold start (``coldstart.json``)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from bench.report_rows import Results, Row, _missing, _quick


def perf_coldstart(results: Results, status: Mapping[str, str]) -> Row:
    """ClientApp cold start with lazy Opacus / audit imports vs the eager imports they replaced."""
    claim, goal = "ClientApp cold start (fresh process per message), lazy vs eager imports", "< 1× (faster)"
    res = results.get("coldstart")
    if res is None:
        return _missing(claim, goal, "coldstart", status)
    v = res["variants"]
    lazy, eager = v["lazy (now)"], v["eager (before)"]
    ratio = res["ratio_wall_lazy_over_eager"]
    return Row(claim, goal, f"{lazy['wall_median_s']:.2f} s vs {eager['wall_median_s']:.2f} s = ×{ratio:.2f}",
               "yes" if ratio < 1 and not res.get("opacus_imported_by_client_app") else "no",
               f"Median of {res['repeats']} fresh interpreters each; CPU ×{res['ratio_cpu_lazy_over_eager']:.2f} "
               f"({res['saved_cpu_s']:.2f} CPU-s saved per hello/evaluate message); torch and transformers "
               "remain the bulk of the start-up." + _quick(res))


def _mean(values: list[float] | None) -> float | None:
    return statistics.fmean(values) if values else None


def _ppl(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def perf_demo(results: Results, status: Mapping[str, str]) -> list[Row] | None:
    """Rows from ``demo.json``; None when it is absent (the scale bench's demo row is used instead)."""
    res = results.get("demo")
    if res is None:
        return None
    runs: Mapping[str, Any] = res.get("runs", {})
    on, off, dep = runs.get("on", {}), runs.get("off", {}), runs.get("deploy")
    rows = []
    ratio = res.get("round_s_ratio_he_over_plain")
    ppl_on, ppl_off = (on.get("perplexity") or [None])[-1], (off.get("perplexity") or [None])[-1]
    ours = ("-" if ratio is None else
            f"{_mean(on['round_s']):.0f} s vs {_mean(off['round_s']):.0f} s per round = ×{ratio:.2f}")
    rows.append(Row("whole federated round with vs without HE [default run]", "-", ours,
                    "-" if ratio is not None else "not measured",
                    f"Rounds {[round(r) for r in on.get('round_s', [])]} s with CKKS vs "
                    f"{[round(r) for r in off.get('round_s', [])]} s without (round 1 trains the teachers); final "
                    f"perplexity {_ppl(ppl_on)} vs {_ppl(ppl_off)}. Same config and seed, run one after the other."
                    + _quick(res)))
    if dep is not None:
        d_ratio = res.get("round_s_ratio_deploy_over_simulation")
        rows.append(Row("deployment vs simulation per round [default run, HE on]", "-",
                        "-" if d_ratio is None else f"{_mean(dep['round_s']):.0f} s vs {_mean(on['round_s']):.0f} s "
                        f"= ×{d_ratio:.2f}", "-" if dep.get("status") == "completed" else "no",
                        f"fedveil deploy local --nodes {dep.get('nodes')}: TLS SuperLink, authenticated SuperNodes, "
                        f"one ClientApp process per message; status {dep.get('status')}, rounds "
                        f"{[round(r) for r in dep.get('round_s', [])]} s, final perplexity "
                        f"{_ppl((dep.get('perplexity') or [None])[-1])}." + _quick(res)))
    load = on.get("load_avg") or [float("nan")]
    rows.append(Row("default demo end to end", "-",
                    f"{on.get('wall_s', float('nan')):.0f} s wall, peak {on.get('peak_tree_pss_mb', float('nan')):.0f} "
                    "MiB (PSS of its processes)", "-" if on.get("status") == "completed" else "no",
                    f"status {on.get('status')}; load average {load[0]:.1f} at its end." + _quick(res)))
    return rows
