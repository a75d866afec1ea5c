"""What the language-model benchmarks share (``lm_bench``, ``exposure_bench``): the corpora, the frozen
teacher and public student initialisation, perplexity and PII-token NLL, and one student's training run
under DP-SGD (or plain Adam) with its ε checked against an independent recomputation.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.common import quiet_accountant, recompute_epsilon
from privacy.dp import DPPlan, DPSession, Ledger, poisson_batches, run_dp_steps
from distill.textdata import TokenisedRecords, public_corpus, tokenise
from client.trainers import LMTrainer, TrainerConfig, heldout_nll
from distill.pretrain import train_plain
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
        train_plain(model, data, steps=every, lr=lr, batch_size=batch_size, rng=rng, device=CPU)
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


# --------------------------------------------------------------------------- training
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
