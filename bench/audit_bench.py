"""Canary-scoring throughput of the exposure audit (privacy/audit/scoring.py), batched vs one at a time.

Usage::

    .venv/bin/python bench/audit_bench.py [--quick] [--threads N] [--device cpu|cuda] [--data PATH]
                                          [--out bench/results/audit.json]

Trains a small byte-level BPE tokenizer (on ``--data`` if given, else on generated sentences), builds a
small random Llama student (no download), draws equal-length reference candidates of one canary format
and reports candidates per second of ``secret_log_perplexity`` with the batched path over all of them
and with batch size 1 over a subset, and their ratio. The rank and skew-normal exposure of one canary
against all references are timed too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privacy.audit.canaries import CanaryFormat, candidate_token_ids, equal_length_candidates
from privacy.audit.exposure import rank_exposure, skewnorm_exposure
from privacy.audit.scoring import secret_log_perplexity


def build_tokenizer(data: Path | None, vocab: int) -> Tokenizer:
    """Byte-level BPE trained on ``data`` lines, or on generated account/pin sentences."""
    if data is not None:
        lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rng = np.random.default_rng(0)
        words = [
            "my",
            "account",
            "number",
            "is",
            "the",
            "pin",
            "code",
            "for",
            "client",
            "record",
            "name",
            "address",
            "phone",
            "call",
        ]
        lines = [
            " ".join(rng.choice(words, size=6)) + " " + " ".join(str(d) for d in rng.integers(0, 10, 6))
            for _ in range(2000)
        ]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def build_model(vocab: int, hidden: int, layers: int, seed: int = 0) -> LlamaForCausalLM:
    """A random Llama student (4 heads, MLP 2× hidden, untied embeddings as DP students use)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def timed(fn: object, repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` (a zero-argument callable)."""
    assert callable(fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 candidates, 50 at batch size 1, 1 repeat")
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--subset", type=int, default=200, help="candidates scored at batch size 1")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=None, help="text file (one record a line) for the tokenizer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "audit.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.candidates, args.subset, args.repeats = min(args.candidates, 2000), min(args.subset, 50), 1
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = build_tokenizer(args.data, args.vocab)

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text).ids)

    fmt = CanaryFormat("my account number is {secret}")
    start = time.perf_counter()
    texts = equal_length_candidates(fmt, args.candidates, encode, np.random.default_rng(1))
    sampling_s = time.perf_counter() - start
    ids, mask = candidate_token_ids(fmt, texts, encode)
    model = build_model(tokenizer.get_vocab_size(), args.hidden, args.layers).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.candidates} candidates of {ids.shape[1]} tokens ({int(mask.sum())} secret), "
        f"{n_params:,}-parameter Llama on {args.device}; candidates drawn in {sampling_s:.2f} s"
    )

    subset = ids[: args.subset]
    secret_log_perplexity(model, ids[: args.batch_size], mask, batch_size=args.batch_size)  # warm-up
    batched_s = timed(lambda: secret_log_perplexity(model, ids, mask, batch_size=args.batch_size), args.repeats)
    single_s = timed(lambda: secret_log_perplexity(model, subset, mask, batch_size=1), args.repeats)
    batched_rate = args.candidates / batched_s
    single_rate = args.subset / single_s
    ratio = batched_rate / single_rate
    print(
        f" batched (bs={args.batch_size}): {args.candidates} in {batched_s:.3f} s -> {batched_rate:,.0f} candidates/s"
    )
    print(f"   single (bs=1): {args.subset} in {single_s:.3f} s -> {single_rate:,.0f} candidates/s")
    print(f"batched / single speed-up: {ratio:.1f}x")

    # Batched and one-at-a-time must agree: the speed-up is not bought with a different answer.
    check = secret_log_perplexity(model, subset, mask, batch_size=1)
    batched_subset = secret_log_perplexity(model, subset, mask, batch_size=args.batch_size)
    max_diff = float(np.max(np.abs(check - batched_subset)))

    references = secret_log_perplexity(model, ids, mask, batch_size=args.batch_size)
    start = time.perf_counter()
    rank = rank_exposure(float(references[0]), references[1:])
    rank_s = time.perf_counter() - start
    start = time.perf_counter()
    extrapolated = skewnorm_exposure(float(references[0]), references[1:])
    fit_s = time.perf_counter() - start
    print(
        f"exposure of one candidate vs {references.size - 1} refs: rank {rank:.3f} ({rank_s * 1e3:.1f} ms), "
        f"skew-normal {extrapolated.display()} ({fit_s:.2f} s)"
    )

    machine: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": args.device,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if str(args.device).startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    record = {
        "benchmark": "audit_scoring",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": n_params,
        "tokens_per_candidate": int(ids.shape[1]),
        "secret_tokens": int(mask.sum()),
        "candidate_sampling_s": sampling_s,
        "results": {
            "batched": {
                "batch_size": args.batch_size,
                "candidates": args.candidates,
                "seconds": batched_s,
                "candidates_per_s": batched_rate,
            },
            "single": {
                "batch_size": 1,
                "candidates": args.subset,
                "seconds": single_s,
                "candidates_per_s": single_rate,
            },
        },
        "speedup_batched_vs_single": ratio,
        "max_abs_diff_bits_batched_vs_single": max_diff,
        "exposure": {"rank_s": rank_s, "skewnorm_fit_s": fit_s},
        "machine": machine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
