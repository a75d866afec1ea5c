"""DP-SFT vs DP-KD vs DP-OPD (± swing-style targets) at equal ε: held-out perplexity of the student.

Usage::

    nice -n 10 .venv/bin/python bench/lm_bench.py [--quick] [--seeds 3] [--data [PATH]] [--public-teacher]

Everything runs in one process, without Flower: one client holds the whole private set; a teacher is
trained on it without DP (provenance ``private-non-dp``, as in the default config) and frozen; every
method then DP-trains the same student preset from the same initialisation with the same ε = 2, δ
(``default_delta``), batch size, learning rate, clipping norm and number of steps (docs/METHODS.md §2–§5).

* Data (a), the default: synthetic clinical records (``distill.data``), held-out records from another
  seed; the tokenizer and the optional student pre-training use the PII-free public corpus only.
* Data (b), ``--data [PATH]`` (default ``../shared/data/wikitext-2``): ``valid.txt`` is the private set,
  ``test.txt`` is split by article position: its first half is treated as public (tokenizer, student
  pre-training, teacher early stopping) and its second half is the held-out evaluation set, so no text is
  used both to fit anything and to evaluate.

The student starts from a checkpoint pre-trained (non-privately) on public text — the published DP-OPD
setting starts from a pre-trained DistilGPT-2 — unless ``--init scratch``. The teacher is early-stopped
on a validation set that is neither the private set nor the evaluation set. The shared DP
hyper-parameters (batch 32, 60 steps, Adam lr 2e-3, C = 1) were chosen for DP-SFT, the baseline, on
that validation set (synthetic data, equal compute B·steps; candidates B ∈ {16, 32, 64}, lr ∈ {1e-3,
2e-3, 5e-3, 1e-2}) before any distillation method was evaluated, and are used unchanged for every
method and for wikitext. OPD rollouts are as long as the median training continuation.

Also measured: every run's ε recomputed from (σ, q, steps, δ) with Opacus' PRV analysis functions
(asserted ≤ 2.0 and equal to the ledger's), and the student's mean NLL on the detector-flagged PII
tokens of its own training records, plain KD vs swing KD (the issue's swing check).

Expected duration on one thread (shared 2-core machine, ``nice -n 10``): ``--quick`` < 1 min; the full
synthetic run ~12 min; ``--data`` (wikitext, 3 seeds) ~15 min.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.common import mean_std, quiet_accountant, set_threads, write_result
from bench.lm_setup import (
    DEFAULT_WIKITEXT,
    Setup,
    perplexity,
    pii_nll,
    prepare,
    rollout_diagnostic,
    synthetic_corpus,
    train_student,
    wikitext_corpus,
)
from privacy.dp import DPPlan, default_delta, plan_noise
from client.trainers import KDConfig, OPDConfig, SFTConfig, TrainerConfig
from distill.models import build_lm, count_parameters


# --------------------------------------------------------------------------- methods
def methods(args: argparse.Namespace, gen_length: int) -> dict[str, tuple[TrainerConfig, str]]:
    """Method name → (trainer config, teacher provenance)."""
    opd = OPDConfig(gen_length=gen_length, prompt_length=args.prompt_length)
    table: dict[str, tuple[TrainerConfig, str]] = {
        "dp-sft": (SFTConfig(), "none"),
        "dp-kd": (KDConfig(), "private-non-dp"),
        "dp-kd+swing": (KDConfig(swing=True), "private-non-dp"),
        "dp-opd": (opd, "private-non-dp"),
        "dp-opd+swing": (replace(opd, swing=True), "private-non-dp"),
    }
    for lam in args.extra_opd_lam:  # on-policy fraction λ < 1, chosen on the validation split
        table[f"dp-opd(lam={lam:g})"] = (replace(opd, lam=lam), "private-non-dp")
    if args.public_teacher:
        table["dp-kd/public-teacher"] = (KDConfig(), "public")
        table["dp-opd/public-teacher"] = (opd, "public")
    return {k: v for k, v in table.items() if not args.methods or k in args.methods}


def run_one(setup: Setup, name: str, cfg: TrainerConfig, provenance: str, seed: int, plan: DPPlan,
            args: argparse.Namespace) -> dict[str, Any]:
    model, info = train_student(setup, cfg, provenance, seed, plan, args)
    return {"method": name, "seed": seed, "heldout_ppl": perplexity(model, setup.heldout),
            **pii_nll(model, setup.train, "train"), **pii_nll(model, setup.heldout, "heldout"), **info}


# --------------------------------------------------------------------------- report
STATS = ("heldout_ppl", "train_pii_nll", "train_other_nll", "heldout_pii_nll", "heldout_other_nll", "epsilon",
         "seconds", "cpu_seconds")


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of every statistic, per method."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == name]
        out[name] = {"seeds": len(rows)}
        for key in STATS:
            out[name][f"{key}_mean"], out[name][f"{key}_std"] = mean_std([float(r[key]) for r in rows])
    return out


def ordering(summary: dict[str, dict[str, float]], runs: list[dict[str, Any]], opd: str = "dp-opd") -> dict[str, Any]:
    """Whether mean perplexity orders DP-OPD < DP-KD < DP-SFT, and in how many seeds it did."""
    names = (opd, "dp-kd", "dp-sft")
    if not all(n in summary for n in names):
        return {"evaluated": False}
    ppl = [summary[n]["heldout_ppl_mean"] for n in names]
    per_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        per_seed.setdefault(r["seed"], {})[r["method"]] = r["heldout_ppl"]
    held = [v for v in per_seed.values() if all(n in v for n in names) and v[opd] < v["dp-kd"] < v["dp-sft"]]
    return {"evaluated": True, "opd_method": opd, "held": ppl[0] < ppl[1] < ppl[2], "opd_below_kd": ppl[0] < ppl[1],
            "kd_below_sft": ppl[1] < ppl[2], "seeds_where_held": len(held), "seeds": len(per_seed)}


def swing_check(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Training-record PII-token NLL, plain vs swing (likelihood ratio = exp(−ΔNLL)), and utility ratios.

    Utility is compared both as full held-out perplexity and as perplexity on the held-out tokens the
    detector does not flag (swing deliberately gives up the PII tokens, which also appear in held-out text).
    """
    out: dict[str, dict[str, float]] = {}
    for base in ("dp-kd", "dp-opd"):
        if base not in summary or f"{base}+swing" not in summary:
            continue
        p, w = summary[base], summary[f"{base}+swing"]
        if min(p["train_pii_nll_mean"], w["train_pii_nll_mean"]) <= 0.0:
            continue  # the detector flagged no training token (e.g. wikitext): nothing to compare
        d_train = w["train_pii_nll_mean"] - p["train_pii_nll_mean"]
        out[base] = {"plain_pii_nll": p["train_pii_nll_mean"], "swing_pii_nll": w["train_pii_nll_mean"],
                     "nll_ratio_swing_over_plain": w["train_pii_nll_mean"] / p["train_pii_nll_mean"],
                     "pii_likelihood_ratio_swing_over_plain": math.exp(-d_train),
                     "plain_pii_memorisation_gap": p["heldout_pii_nll_mean"] - p["train_pii_nll_mean"],
                     "swing_pii_memorisation_gap": w["heldout_pii_nll_mean"] - w["train_pii_nll_mean"],
                     "heldout_ppl_ratio_swing_over_plain": w["heldout_ppl_mean"] / p["heldout_ppl_mean"],
                     "heldout_non_pii_ppl_ratio_swing_over_plain":
                         math.exp(w["heldout_other_nll_mean"] - p["heldout_other_nll_mean"])}
    return out


def print_report(summary: dict[str, dict[str, float]], orders: list[dict[str, Any]],
                 swing: dict[str, dict[str, float]], setup: Setup) -> None:
    print(f"\n{'method':<22}{'held-out ppl':>16}{'non-PII ppl':>12}{'train PII NLL':>18}{'ε':>7}{'cpu s':>7}")
    for name, s in summary.items():
        print(f"{name:<22}{s['heldout_ppl_mean']:>9.2f} ± {s['heldout_ppl_std']:<4.2f}"
              f"{math.exp(s['heldout_other_nll_mean']):>12.2f}"
              f"{s['train_pii_nll_mean']:>11.3f} ± {s['train_pii_nll_std']:<4.3f}"
              f"{s['epsilon_mean']:>7.3f}{s['cpu_seconds_mean']:>7.0f}")
    for prov, info in setup.teacher_info.items():
        print(f"teacher ({prov}): held-out ppl {info['heldout_ppl']:.2f}; PII NLL train {info['train_pii_nll']:.3f}"
              f" / held-out {info['heldout_pii_nll']:.3f}")
    if setup.pretrain_heldout_ppl is not None:
        print(f"student init (public pre-training): held-out ppl {setup.pretrain_heldout_ppl:.2f}")
    for order in orders:
        if order.get("evaluated"):
            print(f"published ordering {order['opd_method']} < dp-kd < dp-sft (mean ppl): "
                  f"{'HELD' if order['held'] else 'did NOT hold'} (OPD<KD {order['opd_below_kd']}, "
                  f"KD<SFT {order['kd_below_sft']}; per seed {order['seeds_where_held']}/{order['seeds']})")
    if not swing:
        print("swing check: not evaluated (no swing rows, or the detector flagged no PII token in the training data)")
    for base, s in swing.items():
        print(f"swing check ({base}): train PII NLL plain {s['plain_pii_nll']:.3f} vs swing {s['swing_pii_nll']:.3f}"
              f" (PII likelihood x{s['pii_likelihood_ratio_swing_over_plain']:.3f}; memorisation gap "
              f"{s['plain_pii_memorisation_gap']:+.3f} -> {s['swing_pii_memorisation_gap']:+.3f} nats); held-out "
              f"ppl x{s['heldout_ppl_ratio_swing_over_plain']:.3f}, "
              f"non-PII ppl x{s['heldout_non_pii_ppl_ratio_swing_over_plain']:.3f}")


def build_parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    """The shared options of the LM benchmarks (this one and ``exposure_bench``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (< 1 min)")
    p.add_argument("--data", type=Path, nargs="?", const=DEFAULT_WIKITEXT, default=None,
                   help=f"wikitext-2 directory (default when given without a value: {DEFAULT_WIKITEXT})")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", nargs="*", default=None, help="subset of method names to run")
    p.add_argument("--extra-opd-lam", type=float, nargs="*", default=[0.25],
                   help="extra DP-OPD rows with these on-policy fractions λ (0.25: best of 0.25/0.5/1 on validation)")
    p.add_argument("--public-teacher", action="store_true", help="add KD/OPD variants with a public teacher")
    p.add_argument("--init", choices=("public", "scratch"), default="public",
                   help="student initialisation: pre-trained on public text, or random")
    p.add_argument("--records", type=int, default=1280, help="private records (one client holds all)")
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--validation", type=int, default=200, help="teacher/pre-training validation records")
    p.add_argument("--public", type=int, default=1500, help="public texts (synthetic data)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--prompt-length", type=int, default=16)
    p.add_argument("--student", default="student-xs")
    p.add_argument("--teacher", default="teacher-s")
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--steps", type=int, default=60, help="DP-SGD steps per method")
    p.add_argument("--batch-size", type=int, default=32, help="expected Poisson batch size")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--epsilon", type=float, default=2.0)
    p.add_argument("--mode", choices=("ghost", "hooks"), default="ghost")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/lm[-wikitext].json)")
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Apply ``--quick`` sizes and check the counts."""
    if args.quick:
        args.records, args.heldout, args.validation, args.public = 64, 16, 16, 200
        args.teacher_steps, args.pretrain_steps, args.eval_every, args.steps = 10, 5, 5, 4
        args.max_length, args.prompt_length, args.seeds = 32, 8, 1
    if args.seeds < 1 or args.steps < 1:
        raise SystemExit("lm_bench: --seeds and --steps must be >= 1")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return finish_args(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    started = time.perf_counter()
    corpus = wikitext_corpus(args.data, args) if args.data is not None else synthetic_corpus(args)
    setup = prepare(corpus, args)
    # On-policy rollouts as long as a typical training continuation (fixed from the data, not tuned).
    lengths = setup.train.target_mask.sum(1)
    gen_length = int(max(8, lengths.median().item()))
    table = methods(args, gen_length)
    init = build_lm(args.student, len(setup.tokenizer), seed=args.data_seed + 2)
    if setup.student_init is not None:
        init.load_state_dict(setup.student_init)
    diag = rollout_diagnostic(init, setup.teachers["private-non-dp"], setup.train, setup.tokenizer, gen_length,
                              args.prompt_length)
    print(f"teacher NLL/token of the initial student's rollouts {diag['teacher_nll_rollouts']:.2f} vs of the real "
          f"continuations {diag['teacher_nll_real']:.2f}", flush=True)
    n = len(setup.train)
    # σ depends only on (ε, δ, q, steps), identical for every method: plan it once.
    with quiet_accountant():
        plan = plan_noise(target_epsilon=args.epsilon, delta=default_delta(n), n_records=n,
                          batch_size=args.batch_size, total_steps=args.steps, max_grad_norm=args.max_grad_norm)
    print(f"DP plan: σ={plan.noise_multiplier:.4f} q={plan.sample_rate:.4f} steps={plan.total_steps} "
          f"δ={plan.delta:g} C={plan.max_grad_norm}", flush=True)
    runs = []
    for seed in range(args.seeds):
        for name, (cfg, provenance) in table.items():
            r = run_one(setup, name, cfg, provenance, seed, plan, args)
            runs.append(r)
            print(f"seed {seed} {name:<22} ppl {r['heldout_ppl']:8.2f}  PII NLL {r['train_pii_nll']:.3f}  "
                  f"ε {r['epsilon']:.3f}  {r['seconds']:.1f}s", flush=True)
    summary = summarise(runs)
    orders = [ordering(summary, runs, m) for m in table if m.startswith("dp-opd") and "swing" not in m and "/" not in m]
    swing = swing_check(summary)
    print_report(summary, orders, swing, setup)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = {"data": corpus.name, "data_note": corpus.note, "settings": settings, "gen_length": gen_length,
              "private_records": len(setup.train), "heldout_records": len(setup.heldout),
              "student_parameters": count_parameters(build_lm(args.student, len(setup.tokenizer))),
              "teachers": setup.teacher_info, "student_init_heldout_ppl": setup.pretrain_heldout_ppl,
              "rollout_diagnostic_at_init": diag,
              "summary": summary, "ordering": orders[0] if orders else {"evaluated": False},
              "ordering_all_opd_variants": orders, "swing_check": swing, "runs": runs,
              "wall_seconds": time.perf_counter() - started}
    name = "lm" if args.data is None else "lm-wikitext"
    path = write_result(name, record, args.out)
    print(f"wrote {path} ({record['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
