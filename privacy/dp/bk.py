"""Book-keeping DP-SGD: exact per-example clipping with one backward pass (docs/METHODS.md §2).

Opacus' ghost clipping runs two backward passes (one for the per-example norms, one for the
clipped sum); its hooks mode materialises every per-example gradient. Here one
``autograd.grad`` asks only for the gradients of each supported layer's *output*, so autograd
skips every weight-gradient product. For a layer ``y_t = W a_t`` the per-example gradient is
``G_i = Σ_t g_t a_tᵀ`` and its squared norm needs no ``G_i``:
``‖G_i‖² = Σ_{t,s} (a_t·a_s)(g_t·g_s)`` (ghost norm), or ``G_i`` is formed when that is cheaper.
With ``c_i = min(1, C/(‖∇ℓ_i‖ + 1e-6))`` (Opacus' factor) the clipped sum ``Σ_i c_i G_i`` is one
more product of the same (activation, output-gradient) pairs with ``g`` scaled by ``c``.

A parameter shared by two layers (tied embeddings) gets its per-example gradients materialised
and summed before its norm is taken, so the result stays exact. A layer called more than once per
forward pass is handled by joining its calls along the token axis (``G_i`` is a sum over tokens).

Supported layers are the registry :data:`RULES`, keyed by type; a trainable parameter outside
them is refused with a ``ValueError`` naming its layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Grads = dict[str, Tensor]


@dataclass(frozen=True)
class Rule:
    """How one layer type yields per-example gradient norms, clipped sums and materialised gradients.

    All three take the layer, its input ``a`` and output gradient ``g`` reshaped to
    ``(B, T, *features)``, and return one entry per (trainable) direct parameter name.
    """

    in_dims: Callable[[nn.Module], int]   # trailing feature dims of the input (0 for token ids)
    out_dims: Callable[[nn.Module], int]  # trailing feature dims of the output
    norms: Callable[[nn.Module, Tensor, Tensor], Grads]
    sums: Callable[[nn.Module, Tensor, Tensor], Grads]
    samples: Callable[[nn.Module, Tensor, Tensor], Grads]


def _one(_: nn.Module) -> int:
    return 1


# --- Linear (y = a Wᵀ + b) and GPT-2's Conv1D (y = a W + b, W stored transposed) ---------------

def _linear_norms(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    out: Grads = {}
    if a.shape[1] == 1:  # one token (an MLP on vectors): ‖g aᵀ‖ = ‖g‖‖a‖
        out["weight"] = g.pow(2).sum((1, 2)) * a.pow(2).sum((1, 2))
    elif 2 * a.shape[1] ** 2 < a.shape[2] * g.shape[2]:  # ghost norm is cheaper than forming G_i
        out["weight"] = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    else:
        out["weight"] = torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))
    out["bias"] = g.sum(1).pow(2).sum(-1)
    return out


def _linear_sums(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    w = g.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1])  # (out, in)
    return {"weight": w.t() if _is_conv1d(m) else w, "bias": g.sum((0, 1))}


def _linear_samples(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    w = torch.bmm(g.transpose(1, 2), a)  # (B, out, in)
    return {"weight": w.transpose(1, 2) if _is_conv1d(m) else w, "bias": g.sum(1)}


# --- Embedding (row a_t of W receives g_t) --------------------------------------------------------

def _emb_mask(m: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    pad = getattr(m, "padding_idx", None)
    return g if pad is None else g * (a != pad).unsqueeze(-1).to(g.dtype)


def _emb_norms(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    g = _emb_mask(m, a, g)
    same = (a.unsqueeze(2) == a.unsqueeze(1)).to(g.dtype)  # tokens t, s hit the same row
    return {"weight": (torch.bmm(g, g.transpose(1, 2)) * same).sum((1, 2))}


def _emb_sums(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    g = _emb_mask(m, a, g)
    weight: Tensor = m.weight  # type: ignore[assignment]
    return {"weight": torch.zeros_like(weight).index_add_(0, a.reshape(-1), g.reshape(-1, g.shape[-1]))}


def _emb_samples(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    g = _emb_mask(m, a, g)
    weight: Tensor = m.weight  # type: ignore[assignment]
    out = g.new_zeros(a.shape[0], *weight.shape)
    return {"weight": out.scatter_add_(1, a.unsqueeze(-1).expand(-1, -1, g.shape[-1]), g)}


# --- Normalisation layers (elementwise weight w·x̂ + b over the normalised shape) ----------------

def _ndims(m: nn.Module) -> int:
    shape = getattr(m, "normalized_shape", None)
    return len(shape) if shape is not None else 1  # LlamaRMSNorm normalises the last dim


def _normalised(m: nn.Module, a: Tensor) -> Tensor:
    if isinstance(m, nn.LayerNorm):
        return nn.functional.layer_norm(a, m.normalized_shape, None, None, m.eps)
    if isinstance(m, nn.RMSNorm):
        return nn.functional.rms_norm(a, m.normalized_shape, eps=m.eps)
    # LlamaRMSNorm: normalise in float32, cast back before the weight (exactly as its forward does)
    x = a.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)  # type: ignore[operator]
    return x.to(a.dtype)


def _norm_samples(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    return {"weight": (_normalised(m, a) * g).sum(1), "bias": g.sum(1)}


def _norm_norms(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    return {k: v.pow(2).flatten(1).sum(1) for k, v in _norm_samples(m, a, g).items()}


def _norm_sums(m: nn.Module, a: Tensor, g: Tensor) -> Grads:
    return {k: v.sum(0) for k, v in _norm_samples(m, a, g).items()}


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers")


_LINEAR = Rule(_one, _one, _linear_norms, _linear_sums, _linear_samples)
_EMBEDDING = Rule(lambda m: 0, _one, _emb_norms, _emb_sums, _emb_samples)
_NORM = Rule(_ndims, _ndims, _norm_norms, _norm_sums, _norm_samples)

RULES: dict[type[nn.Module], Rule] = {nn.Linear: _LINEAR, nn.Embedding: _EMBEDDING, nn.LayerNorm: _NORM,
                                      nn.RMSNorm: _NORM}
try:  # transformers' own layers (always installed with fedveil; guarded so torch-only use works)
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.pytorch_utils import Conv1D

    RULES[LlamaRMSNorm] = _NORM
    RULES[Conv1D] = _LINEAR
except ImportError:  # pragma: no cover
    pass


def _rule(m: nn.Module) -> Rule | None:
    return RULES.get(type(m))


def _check(name: str, m: nn.Module) -> None:
    """Refuse layer options whose gradient the rules do not model."""
    if isinstance(m, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq or m.sparse):
        raise ValueError(f"layer {name!r} ({type(m).__name__}) uses max_norm, scale_grad_by_freq or sparse "
                         "gradients, which grad_sample_mode 'bk' does not support")


class BKModule(nn.Module):
    """Wraps a model, recording (input, output) of every supported layer in grad-enabled forward passes.

    Mirrors Opacus' ``GradSampleModule`` surface the trainers use: call it like the model,
    ``disable_hooks``/``enable_hooks`` around forward passes that are not part of the private loss,
    ``remove_hooks`` when done.

    Raises
    ------
    ValueError
        When a trainable parameter sits in a layer type outside :data:`RULES` (names the layer).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._module = model
        self.layers: dict[nn.Module, str] = {}
        for name, m in model.named_modules():
            direct = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not direct:
                continue
            if _rule(m) is None:
                raise ValueError(f"layer {name or '<root>'!r} ({type(m).__module__}.{type(m).__qualname__}) has "
                                 f"trainable parameters but grad_sample_mode 'bk' does not support it; supported: "
                                 f"{', '.join(sorted(t.__name__ for t in RULES))} (use 'ghost' or 'hooks')")
            _check(name, m)
            self.layers[m] = name
        self._seen: list[tuple[nn.Module, Tensor, Tensor]] = []
        self._enabled = True
        self._handles = [m.register_forward_hook(self._capture) for m in self.layers]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        if self._enabled and torch.is_grad_enabled() and output.requires_grad:
            self._seen.append((module, inputs[0].detach(), output))

    def disable_hooks(self) -> None:
        self._enabled = False

    def enable_hooks(self) -> None:
        self._enabled = True

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._seen = [], []

    def clipped_backward(self, loss_per_example: Tensor, max_grad_norm: float) -> Tensor:
        """Set ``p.grad = Σ_i c_i ∇ℓ_i`` for every trainable parameter; return the per-example norms."""
        seen, self._seen = self._seen, []
        batch = loss_per_example.shape[0]
        if not seen:
            raise RuntimeError("no supported layer ran with gradients since the last step")
        outs = torch.autograd.grad(loss_per_example.sum(), [o for _, _, o in seen], allow_unused=True)
        calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}
        for (m, a, _o), g in zip(seen, outs):
            if g is None:  # this call did not reach the loss
                continue
            if a.shape[0] != batch:
                raise RuntimeError(f"layer {self.layers[m]!r} saw a batch of {a.shape[0]}, the loss has {batch}; "
                                   "(an input shared by the batch, e.g. position ids of shape (1, T), must be given "
                                   "per example; forward passes outside the private loss need disable_hooks())")
            rule = _rule(m)
            assert rule is not None
            ki, ko = rule.in_dims(m), rule.out_dims(m)
            a = a.reshape(batch, -1, *a.shape[a.dim() - ki:]) if ki else a.reshape(batch, -1)
            calls.setdefault(m, []).append((a, g.reshape(batch, -1, *g.shape[g.dim() - ko:])))
        pairs = {m: (torch.cat([a for a, _ in c], 1), torch.cat([g for _, g in c], 1)) for m, c in calls.items()}

        owners: dict[int, list[tuple[nn.Module, str]]] = {}
        for m in pairs:
            for pname, p in m.named_parameters(recurse=False):
                if p.requires_grad:
                    owners.setdefault(id(p), []).append((m, pname))
        shared = {pid for pid, o in owners.items() if len(o) > 1}

        norm2 = loss_per_example.new_zeros(batch, dtype=torch.float64)
        tied: dict[int, Tensor] = {}  # per-example gradients of shared parameters, summed over layers
        for m, (a, g) in pairs.items():
            rule = _rule(m)
            assert rule is not None
            params = dict(m.named_parameters(recurse=False))
            for pname, n2 in rule.norms(m, a, g).items():
                if pname in params and id(params[pname]) in owners and id(params[pname]) not in shared:
                    norm2 += n2.to(torch.float64)
            if any(id(p) in shared for p in params.values()):
                for pname, s in rule.samples(m, a, g).items():
                    pid = id(params[pname]) if pname in params else None
                    if pid in shared:
                        tied[pid] = tied[pid] + s if pid in tied else s
        for s in tied.values():
            norm2 += s.pow(2).flatten(1).sum(1).to(torch.float64)
        norms = norm2.sqrt()
        clip = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0).to(loss_per_example.dtype)

        grads: dict[int, Tensor] = {pid: torch.einsum("b,b...->...", clip, s) for pid, s in tied.items()}
        for m, (a, g) in pairs.items():
            rule = _rule(m)
            assert rule is not None
            params = dict(m.named_parameters(recurse=False))
            for pname, s in rule.sums(m, a, g * clip.view(-1, *([1] * (g.dim() - 1)))).items():
                if pname in params and id(params[pname]) in owners and id(params[pname]) not in shared:
                    grads[id(params[pname])] = s
        for p in self._module.parameters():
            if p.requires_grad:  # a layer that did not reach the loss has a zero per-example gradient
                p.grad = grads[id(p)].to(p.dtype) if id(p) in grads else torch.zeros_like(p)
        return norms


class BKOptimizer:
    """Adds ``N(0, σ²C²)`` once per step to the clipped sum, divides by the expected batch size, steps.

    The noise comes from ``generator`` (the session's: node-local randomness, docs/METHODS.md §2).
    ``attach_step_hook`` runs a function between noising and the inner step, as Opacus' does.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, generator: torch.Generator | None = None) -> None:
        self.original_optimizer = optimizer
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.expected_batch_size, self.generator = expected_batch_size, generator
        self.step_hook: Callable[[Any], None] | None = None
        self.state = optimizer.state

    @property
    def params(self) -> list[Tensor]:
        return [p for group in self.original_optimizer.param_groups for p in group["params"]]

    def attach_step_hook(self, fn: Callable[[Any], None]) -> None:
        self.step_hook = fn

    def add_noise(self) -> None:
        """``p.grad ← (p.grad + N(0, (σC)²)) / B_expected`` for every parameter (zero sum when grad is None)."""
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.grad if p.grad is not None else torch.zeros_like(p)
            noise = torch.normal(0.0, std, p.shape, device=p.device, dtype=p.dtype, generator=self.generator)
            p.grad = (summed + noise) / self.expected_batch_size

    def step(self) -> None:
        self.add_noise()
        if self.step_hook is not None:
            self.step_hook(self)
        self.original_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)
