"""Report rows and table from the exposure benchmark (``exposure[-wikitext].json``).

Exposure is the rank exposure of docs/METHODS.md §8 against ``n_ref`` never-inserted candidates
(at most log2(n_ref) bits). Never-inserted controls ("0 repetitions") measure its floor: a model that
learned nothing about a canary still ranks it somewhere, so reductions are computed on the excess
over that floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bench.report_rows import Results, Row, _missing, _quick, pm

EXPOSURE_RESULTS = ("exposure", "exposure-wikitext")
SWING_GOAL = 0.8  # published: exposure more than 80 % lower than plain KD
MEMO_GOAL = 0.5   # published: distilled students memorise more than 50 % less than fine-tuned ones
MIN_MEMORISED = 5  # below this many memorised records of the fine-tuned model, no rate comparison is made


def _label(res: Mapping[str, Any], name: str) -> str:
    return str(res.get("data", name))


def swing_rows(results: Results, status: Mapping[str, str]) -> list[Row]:
    """Swing-style vs plain KD canary exposure, one row per corpus that has an exposure result."""
    claim, published = "swing-style vs plain KD canary exposure", "> 80% lower"
    rows = []
    for name in EXPOSURE_RESULTS:
        res = results.get(name)
        if res is None:
            if name == "exposure":
                rows.append(_missing(claim, published, name, status))
            continue
        comp = res.get("comparisons", {})
        main, dp = comp.get("kd+swing vs kd"), comp.get("dp-opd+swing vs dp-opd")
        if main is None:
            rows.append(Row(f"{claim} [{_label(res, name)}]", published, "-", "not measured",
                            "kd / kd+swing missing"))
            continue
        ratio = main["excess_ratio"]
        drop = None if ratio is None else 1.0 - ratio
        held = ("inconclusive" if drop is None else "yes" if drop > SWING_GOAL else "partly" if drop > 0 else "no")
        per = main.get("by_repetitions") or {str(main["repetitions"]): {"plain": main["plain_exposure"],
                                                                       "swing": main["swing_exposure"]}}
        reps = sorted(per, key=int)
        ours = (f"exposure at {'/'.join(reps)}×: KD " + "/".join(f"{per[r]['plain']:.2f}" for r in reps)
                + " → swing " + "/".join(f"{per[r]['swing']:.2f}" for r in reps) + " bits"
                + ("" if drop is None else f" (summed excess over controls {drop * 100:.0f}% lower)"))
        dp_text = ""
        if dp is not None:
            dp_drop = None if dp["excess_ratio"] is None else 1 - dp["excess_ratio"]
            dp_text = (f" Under DP (ε = 2): DP-OPD {dp['plain_exposure']:.2f} vs +swing {dp['swing_exposure']:.2f} "
                       "bits" + ("" if dp_drop is None else f" ({dp_drop * 100:.0f}% lower excess)") + ".")
        analysis = (f"Non-private KD from the same teacher, same steps; π from the detector plus the canary mask "
                    f"(§5). Held-out ppl ×{main['ppl_ratio']:.3f} with swing.{dp_text}"
                    f" Seeds: {res['summary']['kd']['seeds']}; references: {res['canaries']['references_per_format']}."
                    + (" No excess exposure under plain KD: nothing to reduce." if drop is None else "") + _quick(res))
        rows.append(Row(f"{claim} [{_label(res, name)}]", published, ours, held, analysis))
    return rows


def memorisation_rows(results: Results) -> list[Row]:
    """Distillation vs fine-tuning memorisation from the exposure benchmark's extraction audits."""
    claim, published = "distillation vs fine-tuning memorisation", "> 50% lower"
    rows = []
    for name in EXPOSURE_RESULTS:
        res = results.get(name)
        if res is None or "finetuned" not in res.get("summary", {}) or "kd" not in res["summary"]:
            continue
        s, window = res["summary"], res.get("memo_window", ["?", "?"])
        ft, kd = s["finetuned"], s["kd"]
        teacher = res.get("teacher", {})
        rate = {k: (v["memorised"] / v["memo_audited"] if v["memo_audited"] else None) for k, v in s.items()}
        ours = (f"extracted: fine-tuned {ft['memorised']}/{ft['memo_audited']}, KD {kd['memorised']}/"
                f"{kd['memo_audited']}, teacher {teacher.get('memorised', '?')}/{teacher.get('memo_audited', '?')}")
        if not rate["finetuned"]:
            held, why = "inconclusive", "the fine-tuned model memorised no record either: no reduction to measure"
        elif ft["memorised"] < MIN_MEMORISED:
            held, why = "inconclusive", (f"the fine-tuned model memorised only {ft['memorised']} record(s), too few "
                                         "to compare rates")
        else:
            drop = 1 - (rate["kd"] or 0.0) / rate["finetuned"]
            held = "yes" if drop > MEMO_GOAL else "partly" if drop > 0 else "no"
            why = f"KD {drop * 100:.0f}% lower than fine-tuning"
        dp = ", ".join(f"{k} {v['memorised']}/{v['memo_audited']}" for k, v in s.items() if v["dp"])
        rows.append(Row(f"{claim} [{_label(res, name)}]", published, ours, held,
                        f"Greedy extraction of a {window[1]}-token suffix after a {window[0]}-token prefix (scaled "
                        f"down from 50 + 50: records are ≤ {res['settings']['max_length']} tokens), non-private "
                        f"students, same steps; {why}. DP students: {dp}." + _quick(res)))
    return rows


def exposure_bounds(results: Results) -> list[tuple[float, float]]:
    """(ε_LB, accountant ε) of every DP student of the exposure benchmark."""
    pairs = []
    for name in EXPOSURE_RESULTS:
        for run in (results.get(name) or {}).get("runs", []):
            if run.get("dp") and run.get("epsilon") is not None:
                for key in ("epsilon_lb_mia", "epsilon_lb_one_run"):
                    if run.get(key) is not None:
                        pairs.append((float(run[key]), float(run["epsilon"])))
    return pairs


def exposure_table(results: Results) -> list[str]:
    """Mean rank exposure (bits) by repetition count, held-out ppl, extraction and ε per method and corpus."""
    lines: list[str] = []
    for name in EXPOSURE_RESULTS:
        res = results.get(name)
        if res is None:
            continue
        s = res["summary"]
        reps = sorted({k for v in s.values() for k in v["exposure"]}, key=int)
        n_ref = int(res["canaries"]["references_per_format"])
        lines += [f"**{_label(res, name)}** ({n_ref} references per format, at most {math.log2(n_ref):.1f} bits; "
                  f"{next(iter(s.values()))['seeds']} seeds){_quick(res)}", "",
                  "| method | DP | " + " | ".join(f"exposure {r}×" for r in reps) + " | held-out ppl | extracted | "
                  "ε | max ε_LB |", "|" + "---|" * (len(reps) + 6)]
        teacher = res.get("teacher", {})
        t_exp = teacher.get("exposure_by_repetitions", {})
        lines.append("| teacher (non-DP, all private data) | no | " + " | ".join(
            pm(sum(t_exp[r]) / len(t_exp[r])) if t_exp.get(r) else "n/a" for r in reps)
            + f" | {pm(teacher.get('heldout_ppl'))} | "
            f"{teacher.get('memorised', '?')}/{teacher.get('memo_audited', '?')} | - | - |")
        for method, v in s.items():
            cells = [pm(*v["exposure"][r]) if r in v["exposure"] else "n/a" for r in reps]
            eps = "∞" if v["epsilon"] is None else f"{v['epsilon']:.2f}"
            lines.append(f"| {method} | {'ε=2' if v['dp'] else 'no'} | " + " | ".join(cells)
                         + f" | {pm(*v['heldout_ppl'])} | {v['memorised']}/{v['memo_audited']} | {eps} | "
                         f"{v['epsilon_lb']:.2f} |")
        lines.append("")
    return lines or ["_exposure bench not run._"]
