"""Book-keeping DP-SGD (privacy.dp.bk): exact clipped sums for every supported layer, refusals, the product step."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.pytorch_utils import Conv1D

from distill.losses import causal_lm_ce
from distill.models import build_lm
from privacy.dp import DPSession, Ledger, run_dp_steps
from privacy.dp.bk import BKModule, BKOptimizer

B, T, D = 6, 5, 8
Loss = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _reference(model: nn.Module, loss: Loss, x: torch.Tensor, c: float) -> list[torch.Tensor]:
    """Σ_i min(1, C/(‖∇ℓ_i‖+1e-6)) ∇ℓ_i with every ∇ℓ_i from its own backward pass."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(loss(model, x[i: i + 1]).sum(), params, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))  # type: ignore[arg-type]
        factor = min(1.0, c / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads)]
    return total


def _per_example_norms(model: nn.Module, loss: Loss, x: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(loss(model, x[i: i + 1]).sum(), params, allow_unused=True)
        out.append(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)))  # type: ignore[arg-type]
    return torch.stack(out)


def _assert_exact(model: nn.Module, loss: Loss, x: torch.Tensor) -> None:
    model = model.double()
    if x.is_floating_point():
        x = x.double()
    norms = _per_example_norms(model, loss, x)
    c = float(norms.median())  # about half of the examples get clipped, half do not
    assert float(norms.min()) < c < float(norms.max())
    reference = _reference(model, loss, x, c)
    wrapped = BKModule(model)
    got_norms = wrapped.clipped_backward(loss(wrapped, x), c)
    wrapped.remove_hooks()
    torch.testing.assert_close(got_norms, norms, rtol=1e-9, atol=1e-12)
    params = [p for p in model.parameters() if p.requires_grad]
    for p, ref in zip(params, reference):
        assert p.grad is not None
        assert float((p.grad - ref).abs().max()) <= 1e-6 * max(1.0, float(ref.abs().max()))


class _Seq(nn.Module):
    """Tokens or vectors through the given layers, then a per-example nonlinear loss."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x)) if isinstance(layer, (nn.Linear, Conv1D)) else layer(x)
        return x


def _sq_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return (out - 0.3).pow(2).flatten(1).sum(1) + out.flatten(1)[:, 0].exp()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_linear_on_sequences_with_and_without_bias() -> None:
    torch.manual_seed(0)
    _assert_exact(_Seq(nn.Linear(D, 7), nn.Linear(7, 5, bias=False)), _sq_loss, torch.randn(B, T, D, generator=_gen()))


def test_linear_on_vectors_and_a_frozen_bias() -> None:
    torch.manual_seed(1)
    model = _Seq(nn.Linear(D, 7), nn.Linear(7, 3))
    model.layers[1].bias.requires_grad_(False)  # type: ignore[union-attr]
    _assert_exact(model, _sq_loss, torch.randn(B, D, generator=_gen(1)))


def test_linear_ghost_norm_branch() -> None:
    torch.manual_seed(2)  # two tokens, wide layer: 2T² < d_in·d_out takes the ghost-norm product
    _assert_exact(_Seq(nn.Linear(32, 32)), _sq_loss, torch.randn(B, 2, 32, generator=_gen(2)))


def test_embedding_with_repeated_tokens_and_padding() -> None:
    torch.manual_seed(3)
    ids = torch.randint(0, 4, (B, 7), generator=_gen(3))  # vocabulary 6, ids < 4: many repeats, some padding (0)
    ids[:, 0] = 0
    _assert_exact(_Seq(nn.Embedding(6, D, padding_idx=0), nn.Linear(D, 3)), _sq_loss, ids)


@pytest.mark.parametrize("norm", ["nn.RMSNorm", "LlamaRMSNorm", "nn.LayerNorm", "nn.LayerNorm-2d"])
def test_normalisation_layers(norm: str) -> None:
    torch.manual_seed(4)
    layer: nn.Module = {"nn.RMSNorm": lambda: nn.RMSNorm(D, eps=1e-6), "LlamaRMSNorm": lambda: LlamaRMSNorm(D),
                        "nn.LayerNorm": lambda: nn.LayerNorm(D),
                        "nn.LayerNorm-2d": lambda: nn.LayerNorm((T, D))}[norm]()
    with torch.no_grad():  # weights away from their initial ones, so each per-example gradient differs
        for p in layer.parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    _assert_exact(_Seq(nn.Linear(D, D), layer, nn.Linear(D, 3)), _sq_loss, torch.randn(B, T, D, generator=_gen(4)))


def test_gpt2_conv1d() -> None:
    torch.manual_seed(5)
    conv = Conv1D(7, D)
    nn.init.normal_(conv.bias, std=0.5)
    _assert_exact(_Seq(conv, Conv1D(3, 7)), _sq_loss, torch.randn(B, T, D, generator=_gen(5)))


def test_layer_called_twice_and_tied_weights() -> None:
    torch.manual_seed(6)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mix, self.head = nn.Embedding(9, D), nn.Linear(D, D), nn.Linear(D, 9, bias=False)
            self.head.weight = self.emb.weight  # GPT-2's tied input/output embedding

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.emb(ids)
            return self.head(torch.tanh(self.mix(torch.tanh(self.mix(h)))))  # mix runs twice

    ids = torch.randint(0, 9, (B, T), generator=_gen(6))
    _assert_exact(Tied(), lambda m, x: torch.log_softmax(m(x), -1)[..., 0].neg().sum(1), ids)


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(ids.shape[1]).expand_as(ids)  # per example, as the trainers pass them
    logits = model(input_ids=ids, position_ids=pos).logits[:, :-1]
    return causal_lm_ce(logits, ids[:, 1:], torch.ones_like(ids[:, 1:], dtype=logits.dtype))


def test_default_student_preset() -> None:
    ids = torch.randint(3, 64, (B, 12), generator=_gen(7))
    _assert_exact(build_lm("student-xs", 64, seed=0, max_positions=32), _lm_loss, ids)


def test_gpt2_style_model_with_tied_embeddings() -> None:
    torch.manual_seed(8)
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    _assert_exact(model, _lm_loss, torch.randint(0, 50, (B, 10), generator=_gen(8)))


def test_lora_layers() -> None:
    peft = pytest.importorskip("peft")
    model = build_lm("student-xs", 64, seed=0, max_positions=32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       lora_dropout=0.0, init_lora_weights="gaussian"))
    for name, p in model.named_parameters():  # lora_B starts at zero: move it so lora_A gets a gradient
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    assert any(p.requires_grad for p in model.parameters())
    _assert_exact(model, _lm_loss, torch.randint(3, 64, (B, 12), generator=_gen(9)))


def test_unsupported_layer_is_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(ValueError, match=r"'1\.0'.*Conv2d"):
        BKModule(model)
    model[1][0].requires_grad_(False)  # frozen, so nothing of it is trained: accepted
    BKModule(model).remove_hooks()
    with pytest.raises(ValueError, match="'0'.*max_norm"):
        BKModule(nn.Sequential(nn.Embedding(5, 4, max_norm=1.0)))


def test_noise_is_sigma_c_over_batch_from_the_given_generator() -> None:
    p = nn.Parameter(torch.zeros(20000, dtype=torch.float64))
    grads = []
    for _ in range(2):
        opt = BKOptimizer(torch.optim.SGD([p], lr=0.0), noise_multiplier=1.5, max_grad_norm=2.0,
                          expected_batch_size=4, generator=_gen(11))
        p.grad = torch.full_like(p, 8.0)  # the clipped sum
        opt.add_noise()
        grads.append(p.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)  # all randomness is the generator's
    noise = grads[0] - 2.0
    assert abs(float(noise.mean())) < 0.02 and float(noise.std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.03)


def test_product_step_on_the_default_student() -> None:
    model = build_lm("student-xs", 64, seed=0, max_positions=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(3, 64, (8, 12), generator=_gen(12))
    session = DPSession(model, lr=1e-2, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, mode="bk",
                        generator=_gen(13))
    assert session.mode == "bk"
    ledger = Ledger()
    batches = [np.array([], dtype=int), np.array([0, 3, 5]), np.array([1, 2, 4, 6, 7])]
    losses = run_dp_steps(session, batches, lambda idx: _lm_loss(session.module, ids[torch.as_tensor(idx)]),
                          ledger, 0.5)
    plain = session.close()
    assert plain is model and len(losses) == 2 and ledger.steps == 3
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "rotary" not in k)
    assert all(p.grad is None for p in model.parameters())
    model(input_ids=ids)  # hooks are gone: nothing recorded after close
    assert not session.module._seen  # type: ignore[union-attr]
