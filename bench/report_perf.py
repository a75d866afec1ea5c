"""Performance rows of the benchmark report, and the detail tables (scale, PII detector).

Every figure here is a ratio measured side by side in one process by the benchmark that wrote it
(DP step vs non-private step, HE vs a numpy mean, KV cache vs none, batched vs batch-1 scoring, N
clients vs 4 clients), so a verdict depends little on how loaded the machine was; the scale runs follow
one another rather than interleave, so each records its load average.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.report_rows import DP_STEP_GOAL, FLARE_BYTES_PER_VALUE, SCALE_BOUND, Results, Row, _missing, _quick


def product_modes() -> tuple[str, ...]:
    """Per-sample gradient modes a run can use (``privacy.grad_sample_mode``); other variants are bench prototypes."""
    from dataclasses import fields

    from fedveil.config import PrivacyConfig

    field = next(f for f in fields(PrivacyConfig) if f.name == "grad_sample_mode")
    return tuple(field.metadata.get("choices") or ())


def perf_dpstep(results: Results, status: Mapping[str, str]) -> list[Row]:
    """DP-SGD step time over a non-private step, per model: every mode, and the fastest against the goal."""
    claim, goal = "DP-SGD step vs non-private step", f"≤ {DP_STEP_GOAL}× (fastest mode; Opacus hooks ≈ 2.8×)"
    res = results.get("dpstep")
    if res is None:
        return [_missing(claim, goal, "dpstep", status)]
    rows = []
    for model, m in res.get("models", {}).items():
        ratios = {v: r["ratio_vs_non_private"] for v, r in m["variants"].items() if v != "non-private"}
        fastest = m.get("fastest_dp_variant") or min(ratios, key=lambda v: ratios[v])
        ours = ", ".join(f"{v} {r:.2f}×" for v, r in ratios.items())
        product = {v: r for v, r in ratios.items() if v in product_modes()}
        best = min(product, key=lambda v: product[v]) if product else None
        held = ("yes" if best is not None and product[best] <= DP_STEP_GOAL
                else "partly" if ratios[fastest] <= DP_STEP_GOAL else "no")
        mem = m["variants"][fastest].get("peak_ratio_vs_non_private")
        shipped = (f"best mode fedveil runs with (privacy.grad_sample_mode): {best} {product[best]:.2f}×; "
                   if best is not None else "")
        analysis = (f"{shipped}fastest variant: {fastest} at {ratios[fastest]:.2f}× (peak memory ×{mem:.2f}); "
                    f"{m.get('parameters', 0) / 1e6:.1f}M parameters, batch {m.get('batch')}, sequence {m.get('seq')}, "
                    "median of interleaved steps." + _quick(res))
        rows.append(Row(f"{claim} [{model}]", goal, ours, held, analysis))
    return rows or [Row(claim, goal, "-", "not measured", "dpstep.json has no models")]


def perf_he(results: Results, status: Mapping[str, str]) -> list[Row]:
    """Bytes per value and HE/plaintext time per CKKS profile, at the largest payload measured."""
    claim, goal = "HE aggregation vs plaintext", f"< {FLARE_BYTES_PER_VALUE:.0f} B/value (NVIDIA FLARE default)"
    res = results.get("he")
    if res is None:
        return [_missing(claim, goal, "he", status)]
    rows = []
    for profile in dict.fromkeys(r["profile"] for r in res.get("results", [])):
        sel = [r for r in res["results"] if r["profile"] == profile]
        r = max(sel, key=lambda x: x["n_values"])
        held = "yes" if r["bytes_per_value_up"] < FLARE_BYTES_PER_VALUE else "no"
        ours = (f"{r['bytes_per_value_up']:.1f} B/value up; time ×{r['ratio_latency']:.0f} (one client) / "
                f"×{r['ratio_total']:.0f} (all {r['clients']}) vs numpy mean")
        fewer = FLARE_BYTES_PER_VALUE / r["bytes_per_value_up"]
        analysis = (f"{r['n_values']:,} values × {r['clients']} clients: encrypt "
                    f"{r['encrypt_s_per_client']:.2f} s/client, sum {r['validate_and_sum_s']:.2f} s, decrypt "
                    f"{r['decrypt_s']:.2f} s, max |err| {r['max_abs_error']:.1e}. {fewer:.1f}× fewer bytes than the "
                    "anchor; the time ratio is against a numpy mean, which is nearly free.")
        rows.append(Row(f"{claim} [{profile}]", goal, ours, held, analysis))
    return rows or [Row(claim, goal, "-", "not measured", "he.json has no results")]


def perf_rollout(results: Results, status: Mapping[str, str]) -> Row:
    """On-policy generation tokens/s with the KV cache vs without."""
    claim, goal = "rollout tokens/s, KV cache vs none", "> 1× (cache faster)"
    res = results.get("rollout")
    if res is None:
        return _missing(claim, goal, "rollout", status)
    r = res["results"]
    speed = res.get("speedup_cache_vs_no_cache") or r["kv_cache"]["tokens_per_s"] / r["no_cache"]["tokens_per_s"]
    st = res.get("settings", {})
    return Row(claim, goal, f"{r['kv_cache']['tokens_per_s']:.0f} vs {r['no_cache']['tokens_per_s']:.0f} tok/s "
               f"= {speed:.2f}×", "yes" if speed > 1 else "no",
               f"Batch {st.get('batch')}, {st.get('new_tokens')} new tokens after a {st.get('prompt_len')}-token "
               "prompt; the gain grows with generation length." + _quick(res))


def perf_audit(results: Results, status: Mapping[str, str]) -> Row:
    """Audit scoring throughput (candidates/s), batched vs one at a time; scores must agree."""
    claim, goal = "audit scoring candidates/s, batched vs batch 1", "> 1×, identical scores"
    res = results.get("audit")
    if res is None:
        return _missing(claim, goal, "audit", status)
    r = res["results"]
    speed = res.get("speedup_batched_vs_single") or r["batched"]["candidates_per_s"] / r["single"]["candidates_per_s"]
    diff = res.get("max_abs_diff_bits_batched_vs_single", 0.0)
    audit_s = r["batched"]["candidates"] / r["batched"]["candidates_per_s"]
    held = "yes" if speed > 1 and diff < 1e-3 else "no"
    return Row(claim, goal, f"{r['batched']['candidates_per_s']:.0f} vs {r['single']['candidates_per_s']:.0f} cand/s "
               f"= {speed:.1f}×", held,
               f"Batch {r['batched']['batch_size']}, {r['batched']['candidates']:,} candidates; max |Δ log-perplexity| "
               f"{diff:.1e} bits; scoring all candidates of one canary takes {audit_s:.1f} s."
               + _quick(res))


def _scale_rows(res: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in res.get("rows", []) if r.get("status") == "completed"]


def _per_sampled(r: Mapping[str, Any]) -> float:
    """Seconds per round per sampled client (later rounds): the 4-client baseline samples 4, the others 10."""
    return float(r["round_s_after_first_mean"]) / max(int(r["sampled"]), 1)


def perf_scale(results: Results, status: Mapping[str, str]) -> list[Row]:
    """Per-round time and memory of the largest federation vs 4 clients; the 100-client load check; the demo."""
    claim = "federation scale: per-round cost as clients grow"
    goal = f"≤ {SCALE_BOUND:.0f}× per sampled client and in memory (10 sampled per round)"
    res = results.get("scale")
    if res is None:
        return [_missing(claim, goal, "scale", status), _missing("load: 100 clients, 10 sampled, 5 rounds", "completes",
                                                                 "scale", status),
                _missing("default demo end to end", "-", "scale", status)]
    rows: list[Row] = []
    for he in (False, True):
        group = sorted((r for r in _scale_rows(res) if r["he"] == he), key=lambda r: r["clients"])
        failed = [r for r in res.get("rows", []) if r["he"] == he and r.get("status") != "completed"]
        label = f"{claim} [HE {'on' if he else 'off'}]"
        if not group:
            if failed:
                rows.append(Row(label, goal, "-", "no", f"runs failed: {', '.join(str(r['clients']) for r in failed)}"
                                " clients"))
            continue
        base, top = group[0], group[-1]
        t_raw = top["round_s_after_first_mean"] / base["round_s_after_first_mean"]
        t = _per_sampled(top) / _per_sampled(base)
        m = top["peak_tree_pss_mb"] / base["peak_tree_pss_mb"]
        same = [r for r in group if r["sampled"] == top["sampled"]]
        fixed = (f"; {top['clients']} vs {same[0]['clients']} clients, both {top['sampled']} sampled: ×"
                 f"{top['round_s_after_first_mean'] / same[0]['round_s_after_first_mean']:.2f}"
                 if len(same) > 1 else "")
        curve = "; ".join(f"{r['clients']} clients: {r['round_s_after_first_mean']:.0f} s/round "
                          f"({_per_sampled(r):.1f} s per sampled client), {r['peak_tree_pss_mb']:.0f} MiB"
                          for r in group)
        held = ("not measured" if len(group) < 2 else "yes" if t <= SCALE_BOUND and m <= SCALE_BOUND and not failed
                else "partly" if t <= SCALE_BOUND or m <= SCALE_BOUND else "no")
        fails = f" Failed: {', '.join(str(r['clients']) for r in failed)} clients." if failed else ""
        fails += "" if res.get("complete", True) else " The scale run is incomplete (still running or stopped)."
        analysis = (f"{top['clients']} vs {base['clients']} clients: round time ×{t_raw:.2f} (×{t:.2f} per sampled "
                    f"client{fixed}), run memory (PSS of all its processes) ×{m:.2f}, setup (start-up, greeting every "
                    f"node) {top['setup_s']:.0f} s vs {base['setup_s']:.0f} s.{fails}{_quick(res)}")
        rows.append(Row(label, goal, curve, held, analysis))
    load = res.get("load_check")
    pending = "pending: the scale run is incomplete" if not res.get("complete", True) else None
    if load is None:
        rows.append(Row("load: 100 clients, 10 sampled, 5 rounds", "completes", "-", "not run",
                        pending or "scale_bench ran with --no-load or --quick"))
    else:
        ok = bool(load.get("completed"))
        rows.append(Row("load: 100 clients, 10 sampled, 5 rounds", "completes",
                        f"{load.get('rounds_completed', 0)}/{load.get('rounds')} rounds in {load['wall_s']:.0f} s, "
                        f"peak {load['peak_tree_pss_mb']:.0f} MiB", "yes" if ok else "no",
                        f"status {load.get('status')}; replies per round {load.get('replied_per_round')}."))
    demo = res.get("demo")
    if demo is None:
        rows.append(Row("default demo end to end", "-", "-", "not run",
                        pending or "scale_bench ran with --no-demo or --quick"))
    else:
        rows.append(Row("default demo end to end", "-",
                        f"{demo['wall_s']:.0f} s wall, peak {demo['peak_tree_pss_mb']:.0f} MiB (PSS of its processes)",
                        "-" if demo.get("status") == "completed" else "no",
                        f"status {demo.get('status')}; system-wide used-memory increase "
                        f"{_f(demo.get('peak_system_mb'), 0)} MiB (includes other work on the machine); "
                        f"load average {_load(demo)}."))
    return rows


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _load(row: Mapping[str, Any]) -> str:
    avg = row.get("load_avg")
    return "n/a" if not avg else f"{avg[0]:.1f}"


def performance(results: Results, status: Mapping[str, str]) -> list[Row]:
    """Every performance row of issue 9, in the issue's order."""
    from bench.report_runtime import perf_coldstart, perf_demo

    scale = perf_scale(results, status)
    demo = perf_demo(results, status)
    if demo is not None:  # the dedicated demo run replaces the scale bench's demo row
        scale = [r for r in scale if r.claim != "default demo end to end"]
    return [*perf_dpstep(results, status), *perf_he(results, status), perf_rollout(results, status),
            perf_audit(results, status), perf_coldstart(results, status), *scale, *(demo or [])]


def scale_table(results: Results) -> list[str]:
    """Markdown table of every scale run (time and memory per round vs clients)."""
    res = results.get("scale")
    if res is None:
        return ["_scale bench not run._"]
    lines = ["| clients | sampled | HE | status | round s (mean) | later rounds s | × 4 clients | s per sampled "
             "client | setup s | run PSS MiB | × 4 clients | system +MiB | load avg |", "|" + "---|" * 13]
    for r in res.get("rows", []):
        if r.get("status") != "completed":
            lines.append(f"| {r['clients']} | {r.get('sampled')} | {'on' if r['he'] else 'off'} | {r.get('status')} |"
                         + " |" * 9)
            continue
        lines.append(f"| {r['clients']} | {r['sampled']} | {'on' if r['he'] else 'off'} | {r['status']} | "
                     f"{r['round_s_mean']:.2f} | {r['round_s_after_first_mean']:.2f} | "
                     f"{_f(r.get('round_s_after_first_mean_ratio'))} | {_per_sampled(r):.2f} | {r['setup_s']:.1f} | "
                     f"{r['peak_tree_pss_mb']:.0f} | {_f(r.get('peak_tree_pss_mb_ratio'))} | "
                     f"{_f(r.get('peak_system_mb'), 0)} | {_load(r)} |")
    return lines


def pii_table(results: Results) -> list[str]:
    """Markdown table of the PII detector's span-level precision / recall / F1 per entity type."""
    res = results.get("pii")
    if res is None:
        return ["_PII bench not run._"]
    det = res["detector"]
    lines = ["| entity type | gold | precision | recall | F1 |", "|---|---|---|---|---|"]
    for name, t in det["per_type"].items():
        lines.append(f"| {name} | {t['gold']} | {_f(t['precision'], 3)} | {_f(t['recall'], 3)} | {_f(t['f1'], 3)} |")
    mic = det["micro"]
    lines.append(f"| **micro** | {mic['tp'] + mic['fn']} | {_f(mic['precision'], 3)} | {_f(mic['recall'], 3)} | "
                 f"{_f(mic['f1'], 3)} |")
    anyc = det.get("any_pii_char", {})
    base = res.get("baseline_digit_run_only", {}).get("any_pii_char", {})
    lines += ["", f"{res.get('n_texts')} texts. Character-level recall of any PII on the supported types: "
              f"{_f(anyc.get('recall_on_supported_types'), 3)} (digit-run-only baseline "
              f"{_f(base.get('recall_on_supported_types'), 3)}); on all gold types, including names and addresses "
              f"the detector does not target: {_f(anyc.get('recall'), 3)}. "
              f"Throughput {det.get('texts_per_s', 0):.0f} texts/s."]
    return lines
