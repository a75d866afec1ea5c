"""Non-private language-model training, and the student's public warm start (docs/METHODS.md §4, "Warm start").

:func:`train_plain` is the one plain cross-entropy loop of the project: a client's teacher on its own
records, the audit's fine-tuned baseline and public reference model, and the server's warm start all use it.

:func:`public_student` pre-trains the built-in student on the public corpus before federated DP training,
so that DP-SGD's few noisy steps refine a model that already speaks the language instead of starting
from uniform guesses. Only public text is read, so the warm start costs no ε and may run on the server.
It is cached by the hash of everything that determines its weights (the student preset, the
tokenizer's fingerprint, the corpus' seed and size, the record length, steps, learning rate and batch
size, and :data:`WARM_START_VERSION`): it runs once per configuration, and a run records the cache key
and the provenance written next to the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.hf import student_lm
from distill.losses import causal_lm_ce
from distill.models import PRESETS, build_lm, load_checkpoint, save_checkpoint
from distill.textdata import TokenisedRecords, public_corpus, tokenise
from distill.tokenizer import tokenizer_fingerprint
from fedveil.config import Config

__all__ = ["WARM_START_VERSION", "forward_logits", "public_student", "train_plain", "warm_start_key"]

log = logging.getLogger("fedveil.pretrain")

WARM_START_VERSION = 1  # bump when train_plain or the corpus changes what a key's weights are
_SEED_SALT = 7_000


def forward_logits(module: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Logits of a causal LM on a left- or right-padded batch."""
    # position_ids as a contiguous (B, T) tensor: Opacus' per-sample hooks need it (docs/METHODS.md §2).
    pos = (attn.cumsum(-1) - 1).clamp(min=0).contiguous()
    return module(input_ids=ids, attention_mask=attn, position_ids=pos).logits


def train_plain(model: torch.nn.Module, data: TokenisedRecords, *, steps: int, lr: float,
                batch_size: int, rng: np.random.Generator, device: torch.device) -> list[float]:
    """Non-private training on all positions of the records (cross-entropy, Adam); the per-step losses."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(data), size=min(batch_size, len(data)), replace=False)
        ids, attn = data.input_ids[idx].to(device), data.attention_mask[idx].to(device)
        logits = forward_logits(model, ids, attn)[:, :-1]
        loss = causal_lm_ce(logits, ids[:, 1:], attn[:, 1:].float()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _recipe(cfg: Config, tokenizer: Any) -> dict[str, Any]:
    t = cfg.train
    return {"version": WARM_START_VERSION, "student": cfg.model.student, "tokenizer": tokenizer_fingerprint(tokenizer),
            "corpus_seed": cfg.run.seed, "public_records": cfg.data.public_records, "max_length": cfg.data.max_length,
            "steps": t.public_steps, "lr": t.public_lr, "batch_size": t.batch_size, "init_seed": cfg.run.seed}


def warm_start_key(cfg: Config, tokenizer: Any) -> str:
    """SHA-256 of the warm start's recipe: equal keys, equal weights."""
    return hashlib.sha256(json.dumps(_recipe(cfg, tokenizer), sort_keys=True).encode()).hexdigest()


def public_student(cfg: Config, tokenizer: Any, cache_root: Path,
                   device: torch.device | None = None) -> tuple[Any, dict[str, Any] | None]:
    """The initial global student and its provenance (None when it is a fresh random initialisation).

    ``train.public_steps = 0``, a student that is not a built-in preset, or ``model.lora_rank > 0`` gives
    :func:`distill.hf.student_lm` unchanged: the warm start is for fully fine-tuned built-in students.
    """
    if cfg.train.public_steps == 0 or cfg.model.student not in PRESETS or cfg.model.lora_rank > 0:
        # A checkpoint is pre-trained already; under LoRA only adapters travel, so every party must build the
        # same base from the seed and a server-side warm start of the base would never reach the clients.
        return student_lm(cfg, len(tokenizer)), None
    model = build_lm(cfg.model.student, len(tokenizer), seed=cfg.run.seed)
    key = warm_start_key(cfg, tokenizer)
    cached = cache_root / f"public-student-{key[:16]}"
    meta_file = cached / "fedveil.json"
    if meta_file.is_file():
        provenance: dict[str, Any] = json.loads(meta_file.read_text())
        if provenance.get("key") == key:
            log.info("public warm start: cached %s", cached)
            return load_checkpoint(cached).eval(), {**provenance, "cached": True, "path": str(cached)}
    texts = list(public_corpus(cfg.run.seed, cfg.data.public_records))
    data = tokenise(tokenizer, texts, max_length=cfg.data.max_length, prompt_length=cfg.distill.prompt_length,
                    with_privacy=False)
    t0 = time.perf_counter()
    log.info("public warm start: %d steps on %d public texts", cfg.train.public_steps, len(texts))
    losses = train_plain(model, data, steps=cfg.train.public_steps, lr=cfg.train.public_lr,
                         batch_size=cfg.train.batch_size, rng=np.random.default_rng(cfg.run.seed + _SEED_SALT),
                         device=device or torch.device("cpu"))
    model.cpu().eval()
    provenance = {"key": key, "recipe": _recipe(cfg, tokenizer), "source": "public corpus (distill.textdata)",
                  "final_train_loss": losses[-1] if losses else None, "seconds": round(time.perf_counter() - t0, 2)}
    save_checkpoint(model, cached, meta=provenance)
    return model, {**provenance, "cached": False, "path": str(cached)}
