"""Cost of one DP-SGD step relative to a non-private step of the same model, per grad-sample mode.

Usage::

    nice -n 10 .venv/bin/python bench/dpstep_bench.py [--quick] [--threads 1] [--repeats 7]

For each model (an ~8.4M-parameter Llama, and the default student preset ``student-xs``) every
variant gets its own copy of the same initial weights, wrapped by :class:`privacy.dp.DPSession`
exactly as the trainers wrap students: ``non-private`` (plain Adam), ``ghost`` (fast gradient
clipping) and ``hooks`` (materialised per-sample gradients). Steps of the variants are interleaved
round by round so that load from other processes hits them alike; the median is reported.

``+nn-rmsnorm`` variants swap ``LlamaRMSNorm`` for the mathematically identical ``torch.nn.RMSNorm``,
for which Opacus has a registered grad sampler, so its per-sample gradients come from one einsum
instead of the functorch (vmap) fallback. The bench checks that the swap keeps per-sample gradients
equal (max abs difference, printed) before timing it.

Peak memory is the peak of tensor allocations during one step above what was live before it
(torch profiler memory events), plus the bytes of parameters and Adam state, so it is comparable
across variants in one process. Expected duration: ~3 min full, < 20 s ``--quick``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.common import median, set_threads, write_result
from privacy.dp import DPSession
from distill.losses import causal_lm_ce
from distill.models import build_lm, count_parameters

GOAL = 1.5


def llama_8m(vocab: int = 4096, seed: int = 0) -> LlamaForCausalLM:
    """~8.4M-parameter Llama (hidden 256, 8 layers, untied embeddings, vocabulary 4096)."""
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                      tie_word_embeddings=False, attention_dropout=0.0, rms_norm_eps=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def swap_rmsnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``LlamaRMSNorm`` by ``torch.nn.RMSNorm`` with the same weight and ε (in place).

    Same function in float32: ``w · x / sqrt(mean(x²) + ε)``.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "LlamaRMSNorm":
                eps: float = child.variance_epsilon  # type: ignore[assignment]
                weight: torch.nn.Parameter = child.weight  # type: ignore[assignment]
                norm = torch.nn.RMSNorm(int(weight.shape[0]), eps=eps)
                norm.weight = weight
                setattr(parent, name, norm)
    return model


class BookKeepingDP:
    """Exact DP-SGD step with one backward pass: book-keeping ghost clipping (after Bu et al. 2023).

    Prototype measured here, not used by the trainers. Ghost clipping as Opacus runs it needs two
    backward passes (one for per-sample norms, one for the clipped sum). Here a single
    ``autograd.grad`` asks only for the gradients of every layer's *output*, so autograd skips all
    weight-gradient products; per-sample norms come from (activation, output-gradient) pairs
    (docs/METHODS.md §2: ‖Σ_t g_t a_tᵀ‖² = Σ_{t,s}(a_t·a_s)(g_t·g_s)), and the clipped sum
    ``Σ_i c_i ∇ℓ_i`` is then formed directly from the same pairs, ``c_i = min(1, C/(‖∇ℓ_i‖ + 1e-6))``
    as in Opacus. Supports ``nn.Linear``, ``nn.Embedding`` and ``nn.RMSNorm`` (swap ``LlamaRMSNorm`` first).
    """

    LAYERS = (torch.nn.Linear, torch.nn.Embedding, torch.nn.RMSNorm)

    def __init__(self, model: torch.nn.Module, *, lr: float, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, generator: torch.Generator | None = None) -> None:
        self.model, self.module = model, model
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.expected_batch_size, self.generator = expected_batch_size, generator
        self.layers = [m for m in model.modules() if isinstance(m, self.LAYERS)
                       and any(p.requires_grad for p in m.parameters(recurse=False))]
        covered = {id(p) for m in self.layers for p in m.parameters(recurse=False)}
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in covered:
                raise ValueError(f"parameter {name!r} is in a layer the book-keeping step does not support; "
                                 f"supported: {', '.join(t.__name__ for t in self.LAYERS)}")
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        self._seen: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
        self._handles = [m.register_forward_hook(self._capture) for m in self.layers]

    def _capture(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and module.training:
            self._seen.append((module, inputs[0].detach(), output))

    def clipped_sum(self, loss_per_example: torch.Tensor) -> list[torch.Tensor]:
        """``Σ_i c_i ∇ℓ_i`` for every trainable parameter, in ``model.parameters()`` order."""
        seen, self._seen = self._seen, []
        if len({id(m) for m, _, _ in seen}) != len(seen):
            raise RuntimeError("a layer ran twice in one forward pass; the book-keeping step needs one call each")
        grads = torch.autograd.grad(loss_per_example.sum(), [out for _, _, out in seen])
        norm2 = torch.zeros(loss_per_example.shape[0], dtype=torch.float64)
        for (m, a, _), g in zip(seen, grads):
            norm2 += self._norm2(m, a, g).double()
        clip = (self.max_grad_norm / (norm2.sqrt() + 1e-6)).clamp(max=1.0).to(loss_per_example.dtype)
        found: dict[int, torch.Tensor] = {}
        for (m, a, _), g in zip(seen, grads):
            found.update(self._weighted(m, a, g * clip.view(-1, *([1] * (g.dim() - 1)))))
        return [found[id(p)] for p in self.model.parameters() if p.requires_grad]

    @staticmethod
    def _norm2(m: torch.nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if isinstance(m, torch.nn.Embedding):
            if m.padding_idx is not None:
                g = g * (a != m.padding_idx).unsqueeze(-1)
            same = (a.unsqueeze(2) == a.unsqueeze(1)).to(g.dtype)
            return (torch.bmm(g, g.transpose(1, 2)) * same).sum((1, 2))
        if isinstance(m, torch.nn.RMSNorm):
            ps = (torch.nn.functional.rms_norm(a, m.normalized_shape, eps=m.eps) * g).flatten(1, -2).sum(1)
            return ps.pow(2).sum(-1)
        if a.dim() == 2:
            return g.pow(2).sum(-1) * a.pow(2).sum(-1)
        a, g = a.flatten(1, -2), g.flatten(1, -2)
        if 2 * a.shape[1] ** 2 < a.shape[2] * g.shape[2]:  # ghost norm is cheaper than materialising
            return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        return torch.einsum("bto,bti->boi", g, a).pow(2).sum((1, 2))

    @staticmethod
    def _weighted(m: torch.nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[int, torch.Tensor]:
        if isinstance(m, torch.nn.Embedding):
            rows = g.reshape(-1, g.shape[-1])
            out = torch.zeros_like(m.weight).index_add_(0, a.reshape(-1), rows)
            if m.padding_idx is not None:
                out[m.padding_idx] = 0
            return {id(m.weight): out}
        if isinstance(m, torch.nn.RMSNorm):
            normed = torch.nn.functional.rms_norm(a, m.normalized_shape, eps=m.eps)
            return {id(m.weight): (normed * g).reshape(-1, g.shape[-1]).sum(0)}
        found = {id(m.weight): g.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1])}
        if m.bias is not None:
            found[id(m.bias)] = g.reshape(-1, g.shape[-1]).sum(0)
        return found

    def step(self, loss_per_example: torch.Tensor) -> float:
        """Clipped sum + N(0, σ²C²), divided by the expected batch size, then Adam."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        std = self.noise_multiplier * self.max_grad_norm
        for p, s in zip(params, self.clipped_sum(loss_per_example)):
            noise = torch.normal(0.0, std, p.shape, generator=self.generator) if std > 0 else 0.0
            p.grad = (s + noise) / self.expected_batch_size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss_per_example.detach().mean())

    def close(self) -> torch.nn.Module:
        for h in self._handles:
            h.remove()
        return self.model


def per_example_ce(module: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per-example next-token cross-entropy, as the trainers compute it (contiguous position_ids)."""
    attn = torch.ones_like(ids)
    pos = (attn.cumsum(-1) - 1).contiguous()
    logits = module(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1]
    return causal_lm_ce(logits, ids[:, 1:], attn[:, 1:].float())


def make_session(model: torch.nn.Module, variant: str, batch: int) -> DPSession | BookKeepingDP:
    mode = variant.split("+")[0]
    if mode == "bk":
        return BookKeepingDP(model, lr=1e-4, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch,
                             generator=torch.Generator().manual_seed(0))
    sigma = None if mode == "non-private" else 1.0
    return DPSession(model, lr=1e-4, noise_multiplier=sigma, max_grad_norm=1.0, expected_batch_size=batch,
                     mode="ghost" if mode == "non-private" else mode, generator=torch.Generator().manual_seed(0))


def step_fn(session: DPSession | BookKeepingDP, ids: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        session.module.train()
        session.step(per_example_ce(session.module, ids))
    return run


def peak_step_bytes(fn: Callable[[], None]) -> int:
    """Peak of the running sum of allocations during ``fn`` (torch profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
                    if e.name() == "[memory]")
    peak = running = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def state_bytes(session: DPSession | BookKeepingDP) -> int:
    """Parameters plus optimizer state (Adam moments) held between steps."""
    total = sum(p.numel() * p.element_size() for p in session.model.parameters())
    for state in session.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def max_grad_sample_diff(base: torch.nn.Module, swapped: torch.nn.Module, ids: torch.Tensor) -> float:
    """Largest |difference| between hooks-mode per-sample gradients of two models with equal weights."""
    from opacus.grad_sample import GradSampleModule

    samples = []
    for model in (copy.deepcopy(base), copy.deepcopy(swapped)):
        gsm = GradSampleModule(model, loss_reduction="sum")
        per_example_ce(gsm, ids).sum().backward()
        samples.append([p.grad_sample.detach().clone() for p in model.parameters()])  # type: ignore[attr-defined]
        gsm.remove_hooks()
    return max(float((a - b).abs().max()) for a, b in zip(*samples))


def bk_max_rel_error(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Book-keeping clipped sum vs per-example gradients computed one example at a time (relative max error).

    ``C`` is set to the median per-example norm so that about half of the examples are clipped. Runs in
    float64 so that the comparison is not drowned in float32 rounding.
    """
    model = copy.deepcopy(model).double().train()
    params = [p for p in model.parameters() if p.requires_grad]
    singles = []
    for i in range(ids.shape[0]):
        grads = torch.autograd.grad(per_example_ce(model, ids[i: i + 1]).sum(), params)
        singles.append(torch.cat([g.flatten() for g in grads]))
    per = torch.stack(singles)
    norms = per.norm(dim=1)
    c_max = float(norms.median())
    reference = ((c_max / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1) * per).sum(0)
    bk = BookKeepingDP(model, lr=0.0, noise_multiplier=0.0, max_grad_norm=c_max, expected_batch_size=1)
    got = torch.cat([g.flatten() for g in bk.clipped_sum(per_example_ce(model, ids))])
    bk.close()
    return float((got - reference).abs().max() / reference.abs().max())


def bench_model(name: str, model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    vocab: int = model.config.vocab_size  # type: ignore[union-attr, assignment]
    ids = torch.randint(4, vocab, (args.batch, args.seq), generator=gen)
    swapped = swap_rmsnorm(copy.deepcopy(model))
    exact = max_grad_sample_diff(model, swapped, ids[: min(4, args.batch)])
    with_bk = any(v.startswith("bk") for v in args.variants)
    bk_error = bk_max_rel_error(swapped, ids[: min(6, args.batch)]) if with_bk else None
    sessions = {v: make_session(copy.deepcopy(swapped if "nn-rmsnorm" in v else model), v, args.batch)
                for v in args.variants}
    fns = {v: step_fn(s, ids) for v, s in sessions.items()}
    for fn in fns.values():  # warm-up: allocator, Opacus hook set-up, Adam state
        fn()
    times: dict[str, list[float]] = {v: [] for v in fns}
    for _ in range(args.repeats):
        for v, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[v].append(time.perf_counter() - start)
    base = median(times["non-private"])
    results: dict[str, Any] = {}
    for v, fn in fns.items():
        peak = peak_step_bytes(fn) + state_bytes(sessions[v])
        med = median(times[v])
        results[v] = {"median_s": med, "times_s": times[v], "ratio_vs_non_private": med / base,
                      "peak_mb": peak / 2**20, "peak_ratio_vs_non_private": None}
    for value in results.values():
        value["peak_ratio_vs_non_private"] = value["peak_mb"] / results["non-private"]["peak_mb"]
    for s in sessions.values():
        s.close()
    dp = {v: r["ratio_vs_non_private"] for v, r in results.items() if v != "non-private"}
    fastest = min(dp, key=lambda v: dp[v])
    print(f"\n{name}: {count_parameters(model) / 1e6:.2f}M parameters, batch {args.batch}, sequence {args.seq}; "
          f"nn.RMSNorm swap max |Δ per-sample grad| = {exact:.2e}; book-keeping vs one-at-a-time clipped sum "
          f"max rel. error = {bk_error if bk_error is None else f'{bk_error:.1e}'}")
    print(f"  {'variant':<22}{'median step':>12}{'× non-private':>15}{'peak MB':>10}{'× mem':>8}")
    for v, r in results.items():
        print(f"  {v:<22}{r['median_s'] * 1e3:>10.1f}ms{r['ratio_vs_non_private']:>15.2f}"
              f"{r['peak_mb']:>10.1f}{r['peak_ratio_vs_non_private']:>8.2f}")
    verdict = "meets" if dp[fastest] <= GOAL else "misses"
    print(f"  fastest DP variant: {fastest} at {dp[fastest]:.2f}× ({verdict} the ≤ {GOAL}× goal)")
    return {"parameters": count_parameters(model), "batch": args.batch, "seq": args.seq,
            "rmsnorm_swap_max_abs_diff": exact, "bk_max_rel_error": bk_error, "variants": results,
            "fastest_dp_variant": fastest, "fastest_dp_ratio": dp[fastest], "meets_goal": dp[fastest] <= GOAL}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model, batch 8, sequence 32, 2 repeats")
    p.add_argument("--models", nargs="*", default=["llama-8m", "student-xs"], choices=["llama-8m", "student-xs"])
    p.add_argument("--variants", nargs="*", default=["non-private", "ghost", "hooks", "ghost+nn-rmsnorm",
                                                      "hooks+nn-rmsnorm", "bk+nn-rmsnorm"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--student-vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if "non-private" not in args.variants:
        args.variants = ["non-private", *args.variants]
    if args.quick:
        args.models, args.batch, args.seq, args.repeats = ["student-xs"], 8, 32, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    models: dict[str, Callable[[], torch.nn.Module]] = {
        "llama-8m": llama_8m, "student-xs": lambda: build_lm("student-xs", args.student_vocab)}
    out = {name: bench_model(name, models[name](), args) for name in args.models}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_result("dpstep", {"settings": settings, "goal_ratio": GOAL, "models": out}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
