"""PII recogniser accuracy on the presidio synthetic PII dataset (privacy/pii.py).

Usage::

    .venv/bin/python bench/pii_bench.py [--data PATH] [--out bench/results/pii.json]

``--data`` defaults to ``../shared/data/presidio-synth-pii/synth_dataset_v2.json`` relative to the
repository root (a JSON list of records with ``full_text`` and gold ``spans``).

For every entity type we support: gold count, span-level TP/FP/FN (a prediction matches a gold span of
the same type when their character ranges overlap; one-to-one), precision and recall; and char-level
precision/recall. Also reported: char-level "any PII" scores (our spans of any type vs gold spans of
any type, including types we cannot detect such as PERSON), which is what Swing distillation consumes,
compared with a baseline in the same process: the ``DIGIT_RUN``-only detector.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privacy.pii import RECOGNIZERS, PIIDetector, PIISpan

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "presidio-synth-pii" / "synth_dataset_v2.json"
SUPPORTED = [name for name in RECOGNIZERS if name != "DIGIT_RUN"]


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * p * r / (p + r) if tp else 0.0
    return {"precision": p, "recall": r, "f1": f1}


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _chars(spans: list[tuple[int, int]]) -> set[int]:
    return {i for s, e in spans for i in range(s, e)}


def evaluate(records: list[dict[str, Any]], detector: PIIDetector) -> dict[str, Any]:
    """Span- and char-level scores of ``detector`` against the gold spans of ``records``."""
    span_counts: dict[str, Counter[str]] = defaultdict(Counter)
    char_counts: dict[str, Counter[str]] = defaultdict(Counter)
    any_chars: Counter[str] = Counter()
    fp_overlaps: dict[str, Counter[str]] = defaultdict(Counter)
    fn_examples: dict[str, list[str]] = defaultdict(list)
    start = time.perf_counter()
    for record in records:
        text = record["full_text"]
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in record["spans"]]
        pred: list[PIISpan] = detector.detect(text)
        for etype in SUPPORTED:
            g = [(s, e) for s, e, t in gold if t == etype]
            p = [(x.start, x.end) for x in pred if x.entity_type == etype]
            span_counts[etype]["gold"] += len(g)
            used: set[int] = set()
            for ps in p:
                match = next((i for i, gs in enumerate(g) if i not in used and _overlap(ps, gs)), None)
                if match is None:
                    span_counts[etype]["fp"] += 1
                    hit = [t for s, e, t in gold if _overlap(ps, (s, e))]
                    fp_overlaps[etype][hit[0] if hit else "none"] += 1
                else:
                    used.add(match)
                    span_counts[etype]["tp"] += 1
            missed = [text[s:e] for i, (s, e) in enumerate(g) if i not in used]
            span_counts[etype]["fn"] += len(missed)
            fn_examples[etype].extend(missed)
            gc, pc = _chars(g), _chars(p)
            char_counts[etype].update(tp=len(gc & pc), fp=len(pc - gc), fn=len(gc - pc))
        gc_all = _chars([(s, e) for s, e, _ in gold])
        pc_all = _chars([(x.start, x.end) for x in pred])
        gc_sup = _chars([(s, e) for s, e, t in gold if t in SUPPORTED])
        any_chars.update(
            tp=len(gc_all & pc_all), fp=len(pc_all - gc_all), fn=len(gc_all - pc_all),
            sup_tp=len(gc_sup & pc_all), sup_fn=len(gc_sup - pc_all),
        )
    seconds = time.perf_counter() - start
    per_type = {}
    for etype in SUPPORTED:
        c, cc = span_counts[etype], char_counts[etype]
        per_type[etype] = {
            "gold": c["gold"], "tp": c["tp"], "fp": c["fp"], "fn": c["fn"],
            **_prf(c["tp"], c["fp"], c["fn"]),
            "char": {"tp": cc["tp"], "fp": cc["fp"], "fn": cc["fn"], **_prf(cc["tp"], cc["fp"], cc["fn"])},
            "fp_overlapping_gold_type": dict(fp_overlaps[etype].most_common()),
            "fn_examples": fn_examples[etype][:8],
        }
    total = Counter[str]()
    for etype in SUPPORTED:
        total.update({k: span_counts[etype][k] for k in ("tp", "fp", "fn")})
    return {
        "per_type": per_type,
        "micro": {**dict(total), **_prf(total["tp"], total["fp"], total["fn"])},
        "any_pii_char": {
            **_prf(any_chars["tp"], any_chars["fp"], any_chars["fn"]),
            "recall_on_supported_types": _ratio(any_chars["sup_tp"], any_chars["sup_tp"] + any_chars["sup_fn"]),
        },
        "texts_per_s": len(records) / seconds if seconds else float("nan"),
    }


def _fmt(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{x:5.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="synth_dataset_v2.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pii.json")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(
            f"error: dataset not found at {args.data}. Pass --data PATH to presidio's synth_dataset_v2.json "
            "(a JSON list of records with 'full_text' and 'spans').",
            file=sys.stderr,
        )
        return 2
    records = json.loads(args.data.read_text())
    full = evaluate(records, PIIDetector())
    baseline = evaluate(records, PIIDetector(["DIGIT_RUN"]))

    print(f"{len(records)} texts from {args.data}")
    header = (f"{'entity':<14}{'gold':>6}{'tp':>6}{'fp':>6}{'fn':>6}{'prec':>7}{'rec':>7}{'f1':>7}  "
              f"{'char P':>7}{'char R':>7}")
    print(header)
    print("-" * len(header))
    for etype, r in full["per_type"].items():
        print(
            f"{etype:<14}{r['gold']:>6}{r['tp']:>6}{r['fp']:>6}{r['fn']:>6}  {_fmt(r['precision'])}  "
            f"{_fmt(r['recall'])}  {_fmt(r['f1'])}    {_fmt(r['char']['precision'])}  {_fmt(r['char']['recall'])}"
        )
    m = full["micro"]
    print(f"{'micro':<14}{'':>6}{m['tp']:>6}{m['fp']:>6}{m['fn']:>6}  {_fmt(m['precision'])}  "
          f"{_fmt(m['recall'])}  {_fmt(m['f1'])}")
    a, b = full["any_pii_char"], baseline["any_pii_char"]
    print("\nchar-level, any PII type (gold includes PERSON, addresses ... that no recogniser targets):")
    for name, r in (("detector", a), ("DIGIT_RUN baseline", b)):
        print(
            f"  {name:<20} precision {_fmt(r['precision'])}  recall {_fmt(r['recall'])}  "
            f"recall on supported types {_fmt(r['recall_on_supported_types'])}"
        )
    ratio = _ratio_f(a["recall_on_supported_types"], b["recall_on_supported_types"])
    print(f"  recall on supported types, detector / baseline: {ratio:.2f}x")
    print(f"  throughput: {full['texts_per_s']:,.0f} texts/s")

    record = {
        "benchmark": "pii",
        "data": str(args.data),
        "n_texts": len(records),
        "gold_type_counts": dict(Counter(s["entity_type"] for r in records for s in r["spans"]).most_common()),
        "detector": full,
        "baseline_digit_run_only": baseline,
        "recall_supported_ratio_vs_baseline": ratio,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    return 0


def _ratio_f(num: float, den: float) -> float:
    return num / den if den else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
