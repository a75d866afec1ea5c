"""DP-SFT vs DP-KD vs DP-OPD (± swing-style targets) at equal ε: held-out perplexity of the student.

Usage::

    nice -n 10 .venv/bin/python bench/lm_bench.py [--quick] [--seeds 3] [--data [PATH]] [--public-teacher]

Everything runs in one process, without Flower: one client holds the whole private set; a teacher is
trained on it without DP (provenance ``private-non-dp``, as in the default config) and frozen; every
method then DP-trains the same student preset from the same initialisation with the same ε = 2, δ
(``default_delta``), batch size, learning rate, clipping norm and number of steps (ALGORITHMS.md §2–§5).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.common import mean_std, quiet_accountant, recompute_epsilon, set_threads, write_result
from client.dp import DPPlan, DPSession, Ledger, default_delta, plan_noise, poisson_batches, run_dp_steps
from client.textdata import TokenisedRecords, public_corpus, tokenise
from client.trainers import KDConfig, LMTrainer, OPDConfig, SFTConfig, TrainerConfig, heldout_nll, train_teacher
from distill.data import generate_private_records
from distill.loaders import load_text_records
from distill.models import build_lm, count_parameters
from distill.rollouts import sample_rollouts
from distill.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"
HELDOUT_SEED, VALIDATION_SEED = 104729, 15485863
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Corpus:
    """Texts by role; ``public`` and ``validation`` never overlap ``private`` or ``heldout``."""

    name: str
    private: list[str]
    heldout: list[str]
    public: list[str]
    validation: list[str]
    note: str


@dataclass
class Setup:
    """Everything the methods share: tokenizer, tokenised sets, frozen teachers, student init."""

    tokenizer: Any
    train: TokenisedRecords
    heldout: TokenisedRecords
    teachers: dict[str, torch.nn.Module]
    teacher_info: dict[str, dict[str, float | int]]
    student_init: dict[str, torch.Tensor] | None
    pretrain_heldout_ppl: float | None


# --------------------------------------------------------------------------- data
def synthetic_corpus(args: argparse.Namespace) -> Corpus:
    records = generate_private_records(args.records, args.data_seed)
    heldout = generate_private_records(args.heldout, args.data_seed + HELDOUT_SEED)
    validation = generate_private_records(args.validation, args.data_seed + VALIDATION_SEED)
    return Corpus("synthetic-clinical", [r.text for r in records], [r.text for r in heldout],
                  list(public_corpus(args.data_seed, args.public)), [r.text for r in validation],
                  "private: generate_private_records(seed); held-out and validation: other seeds; "
                  "public: generate_public_corpus (PII-free)")


def _wikitext_lines(path: Path) -> list[str]:
    # One record per paragraph line; ' = Heading = ' lines carry no running text.
    return [t for t in load_text_records(path) if not (t.startswith("=") and t.endswith("="))]


def wikitext_corpus(directory: Path, args: argparse.Namespace) -> Corpus:
    valid, test = directory / "valid.txt", directory / "test.txt"
    missing = [str(p) for p in (valid, test) if not p.is_file()]
    if missing:
        raise SystemExit(f"lm_bench: wikitext-2 files not found: {', '.join(missing)} "
                         f"(pass --data DIR with valid.txt and test.txt)")
    private = _wikitext_lines(valid)[: args.records]
    test_lines = _wikitext_lines(test)
    half = len(test_lines) // 2
    public, evaluation = test_lines[:half], test_lines[half:]
    return Corpus("wikitext-2", private, evaluation[: args.heldout], public[args.validation:],
                  public[: args.validation],
                  "private: valid.txt paragraphs; held-out: second half of test.txt; public (tokenizer, "
                  "student pre-training) and teacher validation: first half of test.txt (disjoint)")


# --------------------------------------------------------------------------- models
def perplexity(model: torch.nn.Module, data: TokenisedRecords) -> float:
    total, count = heldout_nll(model, data, CPU)
    return math.exp(total / max(count, 1))


def fit_early_stopped(model: torch.nn.Module, data: TokenisedRecords, validation: TokenisedRecords, *,
                      steps: int, lr: float, batch_size: int, seed: int, every: int) -> tuple[float, int]:
    """Non-private CE training, keeping the checkpoint with the best validation perplexity."""
    rng = np.random.default_rng(seed)
    best, best_step = perplexity(model, validation), 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for done in range(every, steps + every, every):
        train_teacher(model, data, steps=every, lr=lr, batch_size=batch_size, rng=rng, device=CPU)
        ppl = perplexity(model, validation)
        if ppl < best:
            best, best_step = ppl, min(done, steps)
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return best, best_step


def prepare(corpus: Corpus, args: argparse.Namespace, tokenizer: Any = None) -> Setup:
    """Tokenise every set, train the frozen teacher(s) and the public student initialisation."""
    tok = tokenizer if tokenizer is not None else train_tokenizer(corpus.public, vocab_size=args.vocab)
    kw = {"max_length": args.max_length, "prompt_length": args.prompt_length}
    train = tokenise(tok, corpus.private, **kw)  # type: ignore[arg-type]
    heldout = tokenise(tok, corpus.heldout, with_privacy=True, **kw)  # type: ignore[arg-type]
    validation = tokenise(tok, corpus.validation, with_privacy=False, **kw)  # type: ignore[arg-type]
    public = tokenise(tok, corpus.public, with_privacy=False, **kw)  # type: ignore[arg-type]
    teachers: dict[str, torch.nn.Module] = {}
    info: dict[str, dict[str, float | int]] = {}
    sources = {"private-non-dp": train, **({"public": public} if args.public_teacher else {})}
    for provenance, source in sources.items():
        teacher = build_lm(args.teacher, len(tok), seed=args.data_seed + 1)
        val_ppl, step = fit_early_stopped(teacher, source, validation, steps=args.teacher_steps, lr=args.teacher_lr,
                                          batch_size=16, seed=args.data_seed, every=args.eval_every)
        teachers[provenance] = teacher.eval()
        info[provenance] = {"validation_ppl": val_ppl, "best_step": step, "heldout_ppl": perplexity(teacher, heldout),
                            "parameters": count_parameters(teacher), **pii_nll(teacher, train, "train"),
                            **pii_nll(teacher, heldout, "heldout")}
        print(f"teacher ({provenance}): held-out ppl {info[provenance]['heldout_ppl']:.2f} "
              f"(best validation step {step})", flush=True)
    init, pre_ppl = None, None
    if args.init == "public":
        student = build_lm(args.student, len(tok), seed=args.data_seed + 2)
        fit_early_stopped(student, public, validation, steps=args.pretrain_steps, lr=args.teacher_lr,
                          batch_size=16, seed=args.data_seed + 2, every=args.eval_every)
        init, pre_ppl = {k: v.clone() for k, v in student.state_dict().items()}, perplexity(student, heldout)
        print(f"student pre-trained on public text: held-out ppl {pre_ppl:.2f}", flush=True)
    return Setup(tok, train, heldout, teachers, info, init, pre_ppl)


@torch.no_grad()
def pii_nll(model: torch.nn.Module, data: TokenisedRecords, prefix: str) -> dict[str, float | int]:
    """Mean next-token NLL on PII target tokens (π > 0.5) and on the other target tokens."""
    model.eval()
    sums, counts = np.zeros(2), np.zeros(2)
    for s in range(0, len(data), 32):
        ids, attn = data.input_ids[s: s + 32], data.attention_mask[s: s + 32]
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        target, pii = data.target_mask[s: s + 32, 1:], data.privacy[s: s + 32, 1:] > 0.5
        for k, m in enumerate((target * pii, target * ~pii)):
            sums[k] += float((nll * m).sum())
            counts[k] += float(m.sum())
    mean = sums / np.maximum(counts, 1)
    return {f"{prefix}_pii_nll": float(mean[0]), f"{prefix}_other_nll": float(mean[1]),
            f"{prefix}_pii_tokens": int(counts[0])}


@torch.no_grad()
def rollout_diagnostic(student: torch.nn.Module, teacher: torch.nn.Module, data: TokenisedRecords, tok: Any,
                       gen_length: int, prompt_length: int, n: int = 32) -> dict[str, float]:
    """Teacher NLL per token of student rollouts vs of the real continuations of the same prompts.

    On-policy distillation only transfers if the student's samples look like the data the teacher knows.
    """
    prompts = [row[:prompt_length].tolist() for row in data.input_ids[:n]]
    roll = sample_rollouts(student, prompts, gen_length, tok.eos_token_id, tok.pad_token_id,
                           generator=torch.Generator().manual_seed(0))
    out: dict[str, float] = {}
    for key, ids, attn, mask in (("rollouts", roll.input_ids, roll.attention_mask, roll.continuation_mask),
                                 ("real", data.input_ids[:n], data.attention_mask[:n], data.target_mask[:n])):
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logp = teacher(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        out[f"teacher_nll_{key}"] = float((nll * mask[:, 1:]).sum() / mask[:, 1:].sum())
    out["rollout_tokens_per_row"] = float(roll.continuation_mask.sum(1).mean())
    return out


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


def train_student(setup: Setup, cfg: TrainerConfig, provenance: str, seed: int, plan: DPPlan | None,
                  args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one student with ``cfg`` (DP-SGD under ``plan``; plain Adam when ``plan`` is None)."""
    n = len(setup.train)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    student = build_lm(args.student, len(setup.tokenizer), seed=args.data_seed + 2 if setup.student_init else seed)
    if setup.student_init is not None:
        student.load_state_dict(setup.student_init)
    trainer = LMTrainer(cfg, setup.train, teacher=setup.teachers.get(provenance), tokenizer=setup.tokenizer,
                        device=CPU, generator=gen, rng=rng)
    sigma = plan.noise_multiplier if plan is not None else None
    q = plan.sample_rate if plan is not None else min(1.0, args.batch_size / n)
    session = DPSession(student, lr=args.lr, noise_multiplier=sigma, max_grad_norm=args.max_grad_norm,
                        expected_batch_size=args.batch_size, mode=args.mode, generator=gen)
    ledger = Ledger(plan.accountant) if plan is not None else None
    start, cpu = time.perf_counter(), time.process_time()
    losses = run_dp_steps(session, poisson_batches(n, q, args.steps, rng), lambda idx: trainer.loss(session, idx),
                          ledger, q)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    info = {"grad_sample_mode": session.mode, "teacher_provenance": provenance,
            "on_policy_steps": trainer.on_policy_steps, "final_loss": float(np.mean(losses[-10:])),
            "steps": ledger.steps if ledger is not None else len(losses), "seconds": seconds, "cpu_seconds": cpu}
    if ledger is not None and plan is not None:
        with quiet_accountant():
            eps = ledger.epsilon(plan.delta)
            check = recompute_epsilon(plan.noise_multiplier, plan.sample_rate, ledger.steps, plan.delta)
        if not (eps <= args.epsilon and check["prv"] <= args.epsilon and abs(check["prv"] - eps) < 1e-6):
            raise AssertionError(f"ledger ε {eps} vs recomputed {check['prv']} (budget {args.epsilon})")
        info.update({"epsilon": eps, "epsilon_recomputed_prv": check["prv"], "epsilon_rdp": check["rdp"],
                     "delta": plan.delta, "sigma": plan.noise_multiplier, "q": plan.sample_rate})
    return session.close(), info


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
