"""The shared DP-SGD loop: per-example gradients, noise planning, ledger, empty batches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant
from opacus.grad_sample import GradSampleModule

from privacy.dp import DPSession, Ledger, default_delta, plan_noise, poisson_batches, run_dp_steps
from distill.losses import causal_lm_ce, generalized_jsd
from distill.models import build_lm


def _batch(vocab: int = 64, b: int = 3, t: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (b, t), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 7:] = 0  # a padded row
    mask = attn.float()
    mask[:, :3] = 0  # prompt positions are not targets
    return ids, attn, mask


def _loss(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = (attn.cumsum(-1) - 1).clamp(min=0).contiguous()
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1]
    return causal_lm_ce(logits, ids[:, 1:], mask[:, 1:])


def test_per_example_gradient_equals_its_own_loss_gradient() -> None:
    """docs/METHODS.md §2: per-example losses, so Opacus' per-sample gradient i is ∇ℓ_i alone."""
    model = build_lm("student-xs", 64, seed=0, max_positions=32)
    reference = copy.deepcopy(model)
    ids, attn, mask = _batch()
    gsm = GradSampleModule(model, loss_reduction="mean")
    _loss(gsm, ids, attn, mask).mean().backward()
    params = dict(reference.named_parameters())
    for i in range(ids.shape[0]):
        reference.zero_grad()
        _loss(reference, ids[i: i + 1], attn[i: i + 1], mask[i: i + 1]).sum().backward()
        for name, p in model.named_parameters():
            expected = params[name].grad
            assert expected is not None
            torch.testing.assert_close(p.grad_sample[i], expected, atol=1e-5, rtol=1e-4)  # type: ignore[attr-defined]


def test_distillation_loss_is_per_example_too() -> None:
    """Changing example 1's teacher logits leaves example 0's loss untouched (no batch-level mixing)."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    mask = torch.ones(2, 5)
    base = generalized_jsd(s, t, mask, beta=0.5)
    t2 = t.clone()
    t2[1, :, 0] += 3.0  # (a constant shift of all logits would not change the softmax)
    moved = generalized_jsd(s, t2, mask, beta=0.5)
    assert moved[0] == base[0] and moved[1] != base[1]


def test_noise_plan_hits_target_epsilon_and_ledger_matches_accountant() -> None:
    plan = plan_noise(target_epsilon=2.0, delta=1e-5, n_records=1000, batch_size=10, total_steps=1000,
                      max_grad_norm=1.0, accountant="prv")
    assert plan.noise_multiplier == pytest.approx(0.9615, abs=0.01)  # docs/METHODS.md §2 reference (PRV)
    ledger = Ledger("prv")
    for _ in range(4):
        ledger.step(plan.noise_multiplier, plan.sample_rate, 250)
    acc = PRVAccountant()
    acc.history = [(plan.noise_multiplier, plan.sample_rate, 1000)]
    assert ledger.epsilon(1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)
    assert 1.95 < ledger.epsilon(1e-5) <= 2.0
    restored = Ledger()
    restored.load_state_dict(ledger.state_dict())
    assert restored.history_ == ledger.history_ and restored.steps == 1000
    with pytest.raises(ValueError, match="corrupt ledger"):
        Ledger().load_state_dict({"sigma": [1.0], "q": [], "steps": [1]})


def test_default_delta_rule() -> None:
    assert default_delta(160) == 1e-5 and default_delta(1_000_000) == 1e-6 and default_delta(2_000_000) == 1e-7


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_empty_poisson_batch_is_a_noise_only_step(mode: str) -> None:
    model = build_lm("student-xs", 64, seed=0, max_positions=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, attn, mask = _batch()
    session = DPSession(model, lr=1e-2, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=2, mode=mode,
                        generator=torch.Generator().manual_seed(0))
    ledger = Ledger()
    batches = [np.array([], dtype=int), np.array([0, 2])]
    losses = run_dp_steps(session, batches, lambda idx: _loss(session.module, ids[idx], attn[idx], mask[idx]),
                          ledger, 0.5)
    session.close()
    assert len(losses) == 1 and ledger.steps == 2  # the empty batch still counts as a mechanism step
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_poisson_batches_rate() -> None:
    batches = poisson_batches(1000, 0.05, 200, np.random.default_rng(0))
    assert len(batches) == 200
    assert np.mean([len(b) for b in batches]) == pytest.approx(50, rel=0.05)
