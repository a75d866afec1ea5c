"""Canary exposure, memorisation and ε lower bounds per training method (docs/METHODS.md §5, §8).

Usage::

    nice -n 10 .venv/bin/python bench/exposure_bench.py [--quick] [--seeds 2] [--data [PATH]]

One client holds the private set of ``lm_bench`` (synthetic records, or ``--data`` wikitext-2) with the
run's canary plan inserted (``audit.canary_repetitions`` = 1, 4, 16 copies, ``--canaries`` canaries
per count, never-inserted controls and the one-run canaries), planned exactly as ``fedveil run`` plans
them. A teacher is trained on it without DP (it sees the canaries); then every method trains the same
student from the same public initialisation for the same number of steps:

* at ε = 2 (DP-SGD, same σ, q, δ): DP-SFT, DP-KD (plain KD), DP-OPD, DP-OPD with swing-style targets;
* without DP, for ``--nondp-steps`` steps (default 480, so that the student absorbs what the teacher
  memorised; at the DP rows' 60 steps no non-private student memorises any canary): fine-tuning (the
  comparison run of §8), plain KD, KD with swing-style targets.

Swing-style targets take π from the PII detector **and** the known canary mask (docs/METHODS.md §5 step 1,
"in audits, the known canary mask"): the detector alone does not flag space-separated digit secrets,
so with it alone the canary tokens would be distilled exactly as in plain KD.

Measured for every student (and the teacher): rank exposure of every canary against
``--references`` never-inserted candidates (grouped by repetition count), the extraction memorisation
rate (greedy suffix equals the record's; the published 50 + 50-token window does not fit records of
``--max-length`` 64 tokens, so ``--memo-prefix``/``--memo-suffix`` tokens are used and named in the
result), the membership-inference and one-run ε lower bounds next to the accountant's ε.

Expected duration on one thread (shared 2-core machine): ``--quick`` < 1 min; synthetic with 2 seeds
~15 min; ``--data`` (wikitext) ~15 min.
"""

from __future__ import annotations

import json
import math
import sys
import time
from argparse import Namespace
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.common import mean_std, quiet_accountant, set_threads, write_result
from bench.lm_bench import build_parser, finish_args
from bench.lm_setup import (
    CPU,
    Corpus,
    Setup,
    perplexity,
    prepare,
    synthetic_corpus,
    train_student,
    wikitext_corpus,
)
from privacy.audit.measures import AuditData, audit_client_models, client_canaries
from privacy.dp import default_delta, plan_noise
from distill.textdata import tokenise
from client.trainers import KDConfig, OPDConfig, SFTConfig, TrainerConfig
from distill.models import build_lm
from distill.tokenizer import train_tokenizer
from fedveil.config import load_config
from privacy.audit.memorisation import extraction_check
from privacy.audit.plan import insert_planned, is_one_run, reference_candidates, run_canary_plan, training_encode
from privacy.pii import CanaryMaskSource, DetectorSource, MaxSource, PIIDetector

# name → (trainer config, teacher provenance, DP-SGD at ε, swing π from detector + canary mask)
Method = tuple[TrainerConfig, str, bool, bool]


def method_table(gen_length: int, prompt_length: int) -> dict[str, Method]:
    opd = OPDConfig(gen_length=gen_length, prompt_length=prompt_length)
    teacher = "private-non-dp"
    return {
        "dp-sft": (SFTConfig(), "none", True, False),
        "dp-kd": (KDConfig(), teacher, True, False),
        "dp-opd": (opd, teacher, True, False),
        "dp-opd+swing": (replace(opd, swing=True), teacher, True, True),
        "finetuned": (SFTConfig(), "none", False, False),
        "kd": (KDConfig(), teacher, False, False),
        "kd+swing": (KDConfig(swing=True), teacher, False, True),
    }


def exposure_by_repetitions(audit: dict[str, Any]) -> dict[str, list[float]]:
    rows = next(iter(audit.get("exposure", {}).values()), {"rows": []})["rows"]
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(str(row["repetitions"]), []).append(float(row["rank_exposure"]))
    return out


def audit_one(model: torch.nn.Module, name: str, data: AuditData, memo: list[list[int]], reference: torch.nn.Module,
              args: Any) -> dict[str, Any]:
    audit = audit_client_models({name: model}, data, ("exposure", "mia", "epsilon"), reference_model=reference)
    eps = audit["epsilon"][name]
    extraction = extraction_check(model, memo, args.memo_prefix, args.memo_suffix, batch_size=32)
    return {"exposure_by_repetitions": exposure_by_repetitions(audit),
            "exposure_rows": [{k: r[k] for k in ("canary_id", "repetitions", "rank_exposure", "log_perplexity_bits")}
                              for r in audit["exposure"][name]["rows"]],
            "mia_auc": {k: v["auc"] for k, v in audit["mia"][name]["attacks"].items()},
            "epsilon_lb_mia": (eps["clopper_pearson"] or {}).get("epsilon_lb"),
            "epsilon_lb_one_run": (eps["one_run"] or {}).get("epsilon_lb"),
            "memorised": int(sum(extraction.memorised)), "memo_audited": extraction.n_audited,
            "memo_approx_ned_0.1": extraction.approximate_rate(0.1) if extraction.n_audited else None}


def build(corpus: Corpus, args: Any) -> tuple[Setup, Setup, AuditData, dict[str, Any]]:
    """Setups (plain and canary-masked π), the audit data and the canary plan summary."""
    tok = train_tokenizer(corpus.public, vocab_size=args.vocab)
    cfg = load_config(None, [f"run.seed={args.data_seed}", "federation.clients=1", "federation.min_clients=1",
                             "audit.canary_clients=1",
                             f"audit.canaries_per_setting={args.canaries}", f"audit.n_references={args.references}"])
    encode = training_encode(tok)
    plan = run_canary_plan(cfg, encode)
    private = insert_planned(cfg, 0, list(corpus.private), plan)
    setup = prepare(replace(corpus, private=private), args, tokenizer=tok)
    secrets = [c.secret for c in plan if c.inserted]
    source = MaxSource(DetectorSource(PIIDetector()), CanaryMaskSource(secrets))
    masked = replace(setup, train=tokenise(tok, private, max_length=args.max_length, prompt_length=args.prompt_length,
                                           source=source))
    data = AuditData(encode=encode, members=list(corpus.private), nonmembers=list(corpus.heldout),
                     max_length=args.max_length, canaries=client_canaries(plan, 0),
                     references=reference_candidates(cfg, encode, plan), delta=default_delta(len(private)))
    info = {"inserted_exposure": sum(1 for c in plan if c.inserted and not is_one_run(c)),
            "never_inserted": sum(1 for c in plan if not c.inserted and not is_one_run(c)),
            "one_run": sum(1 for c in plan if is_one_run(c)), "copies": sum(c.repetitions for c in plan),
            "repetitions": list(cfg.audit.canary_repetitions), "references_per_format": args.references,
            "canary_tokens_masked": int((masked.train.privacy > 0.5).sum() - (setup.train.privacy > 0.5).sum())}
    return setup, masked, data, info


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == name]
        reps = sorted({k for r in rows for k in r["exposure_by_repetitions"]}, key=int)
        out[name] = {"dp": rows[0]["dp"], "seeds": len(rows),
                     "exposure": {k: mean_std([v for r in rows for v in r["exposure_by_repetitions"].get(k, [])])
                                  for k in reps},
                     "heldout_ppl": mean_std([r["heldout_ppl"] for r in rows]),
                     "memorised": sum(r["memorised"] for r in rows),
                     "memo_audited": sum(r["memo_audited"] for r in rows),
                     "epsilon": max((r.get("epsilon") or 0.0) for r in rows) if rows[0]["dp"] else None,
                     "epsilon_lb": max(max(r["epsilon_lb_mia"] or 0.0, r["epsilon_lb_one_run"] or 0.0) for r in rows)}
    return out


def comparisons(summary: dict[str, dict[str, Any]], top: str) -> dict[str, Any]:
    """Swing vs plain exposure: excess over the never-inserted controls, per repetition count and summed.

    The summed excess over every inserted count is the headline: at ``top`` (16×) a non-private
    student often reaches the cap log2(n_ref), where no reduction can show.
    """
    out: dict[str, Any] = {}
    for plain, swing in (("kd", "kd+swing"), ("dp-opd", "dp-opd+swing")):
        if plain not in summary or swing not in summary:
            continue
        p, s = summary[plain], summary[swing]
        floor_p, floor_s = p["exposure"].get("0", (0.0, 0.0))[0], s["exposure"].get("0", (0.0, 0.0))[0]
        reps = sorted((k for k in p["exposure"] if k != "0" and k in s["exposure"]), key=int)
        per = {k: {"plain": p["exposure"][k][0], "swing": s["exposure"][k][0],
                   "plain_excess": max(p["exposure"][k][0] - floor_p, 0.0),
                   "swing_excess": max(s["exposure"][k][0] - floor_s, 0.0)} for k in reps}
        excess_p = sum(v["plain_excess"] for v in per.values())
        excess_s = sum(v["swing_excess"] for v in per.values())
        out[f"{swing} vs {plain}"] = {
            "repetitions": int(top), "plain_exposure": p["exposure"][top][0], "swing_exposure": s["exposure"][top][0],
            "by_repetitions": per, "plain_excess": excess_p, "swing_excess": excess_s,
            "excess_ratio": excess_s / excess_p if excess_p > 0 else None,
            "ppl_ratio": s["heldout_ppl"][0] / p["heldout_ppl"][0]}
    if "finetuned" in summary:
        f = summary["finetuned"]
        out["memorisation"] = {name: {"memorised": s["memorised"], "audited": s["memo_audited"]}
                               for name, s in summary.items()}
        out["memorisation"]["finetuned_rate"] = f["memorised"] / f["memo_audited"] if f["memo_audited"] else None
    return out


def reanalyse(path: Path) -> int:
    """Recompute ``summary`` and ``comparisons`` of a stored result from its runs (no training)."""
    record = json.loads(path.read_text())
    record["summary"] = summarise(record["runs"])
    record["comparisons"] = comparisons(record["summary"], str(max(record["canaries"]["repetitions"])))
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"re-analysed {path}: {record['comparisons']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build_parser(__doc__)
    p.add_argument("--canaries", type=int, default=3, help="canaries per repetition count")
    p.add_argument("--references", type=int, default=1000, help="reference candidates per canary format")
    p.add_argument("--nondp-steps", type=int, default=480,
                   help="steps of the non-private rows (long enough for a student to absorb what the teacher knows)")
    p.add_argument("--memo-prefix", type=int, default=16)
    p.add_argument("--memo-suffix", type=int, default=16)
    p.add_argument("--reanalyse", type=Path, default=None, metavar="JSON",
                   help="recompute summary and comparisons of a stored result from its runs, then exit")
    p.set_defaults(seeds=2)
    args = finish_args(p.parse_args(argv))
    if args.reanalyse is not None:
        return reanalyse(args.reanalyse)
    if args.quick:
        args.canaries, args.references, args.memo_prefix, args.memo_suffix, args.nondp_steps = 1, 64, 8, 8, 8
    set_threads(args.threads)
    started = time.perf_counter()
    corpus = wikitext_corpus(args.data, args) if args.data is not None else synthetic_corpus(args)
    setup, masked, data, plan_info = build(corpus, args)
    gen_length = int(max(8, setup.train.target_mask.sum(1).median().item()))
    table = {k: v for k, v in method_table(gen_length, args.prompt_length).items()
             if not args.methods or k in args.methods}
    reference = build_lm(args.student, len(setup.tokenizer), seed=args.data_seed + 2)
    if setup.student_init is not None:
        reference.load_state_dict(setup.student_init)  # the public-only model: the MIA reference attack
    memo = [data.encode(t)[: args.max_length - 1] for t in data.members]
    memo = [m for m in memo if len(m) >= args.memo_prefix + args.memo_suffix][:256]
    n = len(setup.train)
    with quiet_accountant():
        plan = plan_noise(target_epsilon=args.epsilon, delta=default_delta(n), n_records=n,
                          batch_size=args.batch_size, total_steps=args.steps, max_grad_norm=args.max_grad_norm)
    teacher = {"heldout_ppl": perplexity(setup.teachers["private-non-dp"], setup.heldout),
               **audit_one(setup.teachers["private-non-dp"], "teacher", data, memo, reference, args)}
    print(f"teacher: exposure {teacher['exposure_by_repetitions']}", flush=True)
    runs = []
    for seed in range(args.seeds):
        for name, (tconf, provenance, dp, swing_mask) in table.items():
            run_args = args if dp else Namespace(**{**vars(args), "steps": args.nondp_steps})
            model, info = train_student(masked if swing_mask else setup, tconf, provenance, seed,
                                        plan if dp else None, run_args)
            with torch.no_grad():
                row = {"method": name, "seed": seed, "dp": dp, "heldout_ppl": perplexity(model, setup.heldout),
                       **info, **audit_one(model, "student", data, memo, reference, args)}
            runs.append(row)
            means = {k: round(float(np.mean(v)), 2) for k, v in row["exposure_by_repetitions"].items()}
            print(f"seed {seed} {name:<14} ppl {row['heldout_ppl']:8.2f} exposure {means} "
                  f"memorised {row['memorised']}/{row['memo_audited']} ε_LB {row['epsilon_lb_mia']} "
                  f"ε {row.get('epsilon', math.inf):.3f}", flush=True)
    summary = summarise(runs)
    top = str(max(plan_info["repetitions"]))
    record = {"data": corpus.name, "data_note": corpus.note,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "canaries": plan_info, "memo_window": [args.memo_prefix, args.memo_suffix], "memo_records": len(memo),
              "teacher": teacher, "summary": summary, "comparisons": comparisons(summary, top), "runs": runs,
              "device": str(CPU), "wall_seconds": time.perf_counter() - started, "quick": args.quick}
    for key, value in record["comparisons"].items():
        print(f"{key}: {value}")
    path = write_result("exposure" if args.data is None else "exposure-wikitext", record, args.out)
    print(f"wrote {path} ({record['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
