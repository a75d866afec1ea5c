"""Local trainers for the language-model task: DP-SFT, DP-KD (off-policy) and DP-OPD.

Each trainer is a ``Config`` dataclass plus a per-example loss over a batch of record
indices; all of them run through the one DP-SGD loop in :mod:`privacy.dp`
(docs/METHODS.md §2–§5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedveil.config import DistillConfig
from fedveil.registry import Registry
from privacy.dp import DPSession
from distill.textdata import TokenisedRecords, record_prompt_length
from distill.losses import causal_lm_ce, generalized_jsd, swing_kd_loss
from distill.pretrain import forward_logits
from distill.rollouts import sample_rollouts
from privacy.pii import DetectorSource, PIIDetector
from privacy.swing import noisy_teacher_logits


@dataclass(frozen=True)
class SFTConfig:
    """DP-SFT: next-token cross-entropy on the true continuation."""

    method: str = "dp-sft"


@dataclass(frozen=True)
class KDConfig:
    """DP-KD off-policy (λ = 0) and the shared distillation settings."""

    method: str = "dp-kd"
    beta: float = 0.0
    temperature: float = 1.0
    swing: bool = False
    tau0: float = 1.0
    tau_max: float = 8.0
    noise_s0: float = 0.0
    noise_s1: float = 1.0


@dataclass(frozen=True)
class OPDConfig(KDConfig):
    """DP-OPD: with probability λ per step the student's own rollouts are distilled on."""

    method: str = "dp-opd"
    lam: float = 1.0
    gen_temperature: float = 1.0
    gen_length: int = 24
    prompt_length: int = 16


TrainerConfig = SFTConfig | KDConfig | OPDConfig

# train.method: name -> the trainer Config built from the run's `distill` section. A new method is its Config
# dataclass, its branch of LMTrainer.loss and one registration here.
METHODS: Registry[Callable[[DistillConfig], TrainerConfig]] = Registry("train.method")


def _kd_settings(d: DistillConfig) -> dict[str, Any]:
    return dict(beta=d.beta, temperature=d.temperature, swing=d.swing, tau0=d.tau0, tau_max=d.tau_max,
                noise_s0=d.noise_s0, noise_s1=d.noise_s1)


METHODS.add("dp-sft", lambda d: SFTConfig())
METHODS.add("dp-kd", lambda d: KDConfig(**_kd_settings(d)))
METHODS.add("dp-opd", lambda d: OPDConfig(lam=d.lam, gen_temperature=d.gen_temperature, gen_length=d.gen_length,
                                          prompt_length=d.prompt_length, **_kd_settings(d)))


class LMTrainer:
    """Per-example losses for one client's records under one method."""

    def __init__(self, config: TrainerConfig, data: TokenisedRecords, *, teacher: torch.nn.Module | None,
                 tokenizer: object, device: torch.device, generator: torch.Generator | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if not isinstance(config, SFTConfig) and teacher is None:
            raise ValueError(f"method {config.method!r} needs a teacher")
        self.config = config
        self.data = data
        self.teacher = teacher.eval() if teacher is not None else None
        self.tokenizer = tokenizer
        self.device = device
        self.generator = generator
        self.rng = rng or np.random.default_rng(0)
        self._detector = DetectorSource(PIIDetector())
        self.on_policy_steps = 0

    def loss(self, session: DPSession, idx: np.ndarray) -> torch.Tensor:
        """Per-example loss ``(B,)`` for the records ``idx``."""
        cfg = self.config
        ids = self.data.input_ids[idx].to(self.device)
        attn = self.data.attention_mask[idx].to(self.device)
        tmask = self.data.target_mask[idx].to(self.device)
        priv = self.data.privacy[idx].to(self.device)
        if isinstance(cfg, OPDConfig) and self.rng.random() < cfg.lam:
            ids, attn, tmask, priv = self._rollout(session, ids, attn)
            self.on_policy_steps += 1
        # Checkpoints may pad their embedding past the tokenizer; only real tokens are distributions' support.
        vocab = len(self.tokenizer)  # type: ignore[arg-type]
        logits = forward_logits(session.module, ids, attn)[:, :-1, :vocab]
        labels, mask, pi = ids[:, 1:], tmask[:, 1:], priv[:, 1:]
        if isinstance(cfg, SFTConfig):
            return causal_lm_ce(logits, labels, mask)
        assert self.teacher is not None
        with torch.no_grad():
            t_logits = forward_logits(self.teacher, ids, attn)[:, :-1, :vocab]
        if cfg.swing:
            t_logits = noisy_teacher_logits(t_logits, pi, cfg.noise_s0, cfg.noise_s1, generator=self.generator)
            return swing_kd_loss(logits, t_logits, mask, pi, tau0=cfg.tau0, tau_max=cfg.tau_max)
        return generalized_jsd(logits, t_logits, mask, cfg.beta, temperature=cfg.temperature)

    def _rollout(self, session: DPSession, ids: torch.Tensor,
                 attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample continuations from the unwrapped student (no grad, eval mode, KV cache)."""
        cfg = self.config
        assert isinstance(cfg, OPDConfig)
        tok = self.tokenizer
        prompts = [row[: record_prompt_length(int(a.sum()), cfg.prompt_length)].tolist() for row, a in zip(ids, attn)]
        roll = sample_rollouts(session.model, prompts, cfg.gen_length, eos_id=tok.eos_token_id,  # type: ignore[attr-defined]
                               pad_id=tok.pad_token_id, temperature=cfg.gen_temperature,  # type: ignore[attr-defined]
                               use_cache=True, generator=self.generator)
        r_ids, r_attn = roll.input_ids.to(self.device), roll.attention_mask.to(self.device)
        priv = torch.zeros_like(roll.continuation_mask)
        if cfg.swing:
            priv = self._rollout_privacy(r_ids, r_attn)
        return r_ids, r_attn, roll.continuation_mask.to(self.device), priv.to(self.device)

    def _rollout_privacy(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """π for generated text: run the detector on the decoded rollout (docs/METHODS.md §5.1)."""
        out = torch.zeros(ids.shape)
        for i in range(ids.shape[0]):
            pos = torch.nonzero(attn[i]).flatten().tolist()
            pieces = [self.tokenizer.decode([int(ids[i, p])]) for p in pos]  # type: ignore[attr-defined]
            offsets, start = [], 0
            for piece in pieces:
                offsets.append((start, start + len(piece)))
                start += len(piece)
            pi = self._detector.token_privacy("".join(pieces), offsets)
            out[i, pos] = torch.from_numpy(np.asarray(pi, dtype=np.float32))
        return out


@torch.no_grad()
def heldout_nll(model: torch.nn.Module, data: TokenisedRecords, device: torch.device,
                batch_size: int = 32) -> tuple[float, int]:
    """Sum of next-token NLL (nats) over continuation targets and their count."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(data), batch_size):
        ids = data.input_ids[s: s + batch_size].to(device)
        attn = data.attention_mask[s: s + batch_size].to(device)
        mask = data.target_mask[s: s + batch_size, 1:].to(device)
        logits = forward_logits(model, ids, attn)[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        total += float((nll * mask).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total, count
