"""Rollout throughput with and without the KV cache (distill/rollouts.py), same process, same model.

Usage::

    .venv/bin/python bench/rollout_bench.py [--quick] [--threads N] [--out bench/results/rollout.json]

Builds a small random Llama (no download), generates greedily with EOS stopping disabled so both
modes produce exactly ``batch × new_tokens`` tokens, and reports generated tokens per second for each
mode and their ratio (cache / no cache).
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

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.rollouts import sample_rollouts


def build_model(hidden: int, layers: int, vocab: int, seed: int = 0) -> LlamaForCausalLM:
    """A random Llama with ``hidden``/``layers``/``vocab`` (4 heads, MLP 2× hidden)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


def time_mode(
    model: LlamaForCausalLM, prompts: list[list[int]], new_tokens: int, use_cache: bool, repeats: int
) -> tuple[float, int]:
    """Median seconds of ``repeats`` runs (after one warm-up) and the generated-token count."""
    no_eos = model.config.vocab_size + 1
    sample_rollouts(model, prompts, 2, no_eos, 0, temperature=0.0, use_cache=use_cache)
    times = []
    generated = 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = sample_rollouts(model, prompts, new_tokens, no_eos, 0, temperature=0.0, use_cache=use_cache)
        times.append(time.perf_counter() - start)
        generated = int(out.continuation_mask.sum())
    return statistics.median(times), generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller run (16 new tokens, 1 repeat)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rollout.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.new_tokens, args.repeats = min(args.new_tokens, 16), 1
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.hidden, args.layers, args.vocab)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, args.vocab, (args.batch, args.prompt_len), generator=g).tolist()

    results = {}
    for name, use_cache in [("no_cache", False), ("kv_cache", True)]:
        seconds, tokens = time_mode(model, prompts, args.new_tokens, use_cache, args.repeats)
        results[name] = {"seconds": seconds, "generated_tokens": tokens, "tokens_per_s": tokens / seconds}
        print(f"{name:>9}: {tokens} tokens in {seconds:.3f} s -> {tokens / seconds:,.0f} tokens/s")
    ratio = results["kv_cache"]["tokens_per_s"] / results["no_cache"]["tokens_per_s"]
    print(f"KV-cache speed-up: {ratio:.2f}x")

    record = {
        "benchmark": "rollout",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "results": results,
        "speedup_cache_vs_no_cache": ratio,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
