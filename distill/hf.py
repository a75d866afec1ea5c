"""Bring-your-own models: local Hugging Face checkpoints as students and teachers, and DP-LoRA.

``model.student`` and ``model.teacher`` name a built-in preset (:data:`distill.models.PRESETS`) or a
local directory holding a ``transformers`` causal-LM checkpoint (``config.json`` + safetensors) and
its fast tokenizer (``tokenizer.json``). Loading is ``local_files_only``: nothing is downloaded.

Constraints this module enforces (README "Your own models and data"):

* Teacher and student share one tokenizer (distillation compares their next-token distributions
  id by id); the run's tokenizer is the student checkpoint's, else the teacher checkpoint's, else a
  byte-level BPE trained on public text.
* Tied input/output embeddings (GPT-2) are refused by Opacus ghost clipping; under
  ``privacy.grad_sample_mode = ghost`` the student's output layer gets its own copy of the input
  embedding (untied, logged). ``bk`` and ``hooks`` train tied weights exactly (docs/METHODS.md §2).
* Per-sample gradients need a rule per layer type: ``bk`` supports Linear, Embedding, LayerNorm,
  RMSNorm and GPT-2 Conv1D and refuses anything else by name; :func:`check_student_layers` runs that
  check on a weightless (meta-device) copy before any work.
* Dropout is switched off so per-example losses are deterministic functions of the weights.
* ``model.lora_rank = r > 0``: the student's base weights are frozen and only PEFT LoRA adapters
  (rank r, alpha 2r, no dropout) are trained; only they travel, encrypted when HE is on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.models import PRESETS, build_lm
from distill.tokenizer import tokenizer_fingerprint, wrap_tokenizer

log = logging.getLogger("fedveil.models")

# Families whose checkpoints the test suite runs end to end (others may work; they are not promised).
TESTED_FAMILIES = ("gpt2", "llama")


def is_preset(name: str) -> bool:
    """True when ``name`` is a built-in preset, False when it names a checkpoint directory."""
    return name in PRESETS


def checkpoint_dir(name: str, key: str) -> Path:
    """The checkpoint directory ``name`` (configured as ``key``), checked for a config and a tokenizer."""
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{key} = {name!r}: no such directory (a checkpoint is a local directory with "
                                "config.json, model.safetensors and tokenizer.json; nothing is downloaded)")
    for needed in ("config.json", "tokenizer.json"):
        if not (path / needed).is_file():
            raise FileNotFoundError(f"{key} = {name!r}: {needed} missing (save the model and its fast tokenizer "
                                    "with save_pretrained into that directory)")
    return path


def load_checkpoint_tokenizer(name: str, key: str = "model") -> Any:
    """The fast tokenizer saved with a checkpoint, wrapped with its own special tokens.

    A tokenizer without a padding token (GPT-2, Llama) pads with its EOS token: every padded
    position is masked out of attention and of the loss, so the choice does not change any result.
    """
    from transformers import AutoTokenizer

    path = checkpoint_dir(name, key)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{key} = {name!r}: the tokenizer is not a fast (tokenizer.json) tokenizer")
    eos = tok.eos_token
    if eos is None:
        raise ValueError(f"{key} = {name!r}: the tokenizer has no EOS token; records need one to end")
    specials = {"bos": tok.bos_token or eos, "eos": eos, "unk": tok.unk_token or eos, "pad": tok.pad_token or eos}
    return wrap_tokenizer(tok.backend_tokenizer, specials)


def _describe(tok: Any, name: str) -> str:
    return f"{name} ({len(tok)} tokens, bos/eos {tok.bos_token!r}/{tok.eos_token!r}, sha256 " \
           f"{tokenizer_fingerprint(tok)[:12]})"


def run_tokenizer(student: str, teacher: str, train: Any) -> Any:
    """The run's tokenizer: the student checkpoint's, else the teacher checkpoint's, else ``train()``.

    Raises ``ValueError`` (one line, naming both vocabularies) when both are checkpoints whose
    tokenizers differ.
    """
    s_tok = None if is_preset(student) else load_checkpoint_tokenizer(student, "model.student")
    t_tok = None if is_preset(teacher) else load_checkpoint_tokenizer(teacher, "model.teacher")
    if s_tok is not None and t_tok is not None and tokenizer_fingerprint(s_tok) != tokenizer_fingerprint(t_tok):
        raise ValueError(f"teacher and student must share one tokenizer: model.teacher has "
                         f"{_describe(t_tok, teacher)}, model.student has {_describe(s_tok, student)}")
    if s_tok is not None:
        return s_tok
    if t_tok is not None:
        return t_tok
    return train()


def _no_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0  # type: ignore[assignment]


def untie_embeddings(model: Any, reason: str) -> bool:
    """Give the output layer its own copy of a tied input embedding; returns whether it was tied."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone())
    model.config.tie_word_embeddings = False
    log.warning("untied the input/output embeddings of %s: %s", type(model).__name__, reason)
    return True


def load_pretrained(name: str, vocab_size: int, key: str = "model") -> Any:
    """A checkpoint's causal LM in float32 on CPU, dropout off; its vocabulary must cover ``vocab_size``."""
    from transformers import AutoModelForCausalLM

    path = checkpoint_dir(name, key)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    family = str(getattr(model.config, "model_type", "?"))
    if family not in TESTED_FAMILIES:
        log.warning("%s = %s is a %r model; only %s are tested end to end", key, name, family,
                    ", ".join(TESTED_FAMILIES))
    rows = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if rows < vocab_size:
        raise ValueError(f"{key} = {name!r} has {rows} embedding rows, fewer than the run's {vocab_size} tokens")
    _no_dropout(model)
    model.config.use_cache = True
    return model


def _lora(model: Any, rank: int) -> Any:
    """Freeze ``model`` and add PEFT LoRA adapters on the family's default attention projections."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2")
    return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    """True for a PEFT-wrapped student (only its adapters train and travel)."""
    return hasattr(model, "peft_config")


def student_lm(cfg: Any, vocab_size: int) -> Any:
    """The run's student, as every party builds it (same structure, same initial weights for a seed).

    Used by the server (initial global weights, final checkpoint, audits) and every client.
    """
    m = cfg.model
    if is_preset(m.student):
        model = build_lm(m.student, vocab_size, seed=cfg.run.seed)
    else:
        model = load_pretrained(m.student, vocab_size, "model.student")
        if m.lora_rank == 0 and cfg.privacy.grad_sample_mode == "ghost":
            untie_embeddings(model, "Opacus ghost clipping refuses tied parameters (grad_sample_mode = ghost)")
    if m.lora_rank > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed)  # adapter init (lora_A) is the same on every party
            model = _lora(model, m.lora_rank)
    return model


def teacher_lm(cfg: Any, vocab_size: int, seed: int) -> Any:
    """The teacher: a fresh preset (trained by the caller) or the checkpoint, frozen by the caller."""
    if is_preset(cfg.model.teacher):
        return build_lm(cfg.model.teacher, vocab_size, seed=seed)
    return load_pretrained(cfg.model.teacher, vocab_size, "model.teacher")


def travelling_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What leaves a node (and what the server averages): the full state, or only the LoRA adapters."""
    if is_lora(model):
        return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_travelling_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`travelling_state`: every expected tensor present, nothing else."""
    expected = set(travelling_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"weights do not match the student: missing {missing}, unexpected {extra}")
    model.load_state_dict(state, strict=not is_lora(model))


def check_student_layers(cfg: Any, vocab_size: int) -> None:
    """Refuse, before any work, a student whose trainable layers the DP mode has no per-sample rule for."""
    if cfg.privacy.grad_sample_mode != "bk" or not cfg.privacy.enabled or is_preset(cfg.model.student):
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from privacy.dp.bk import BKModule

    conf = AutoConfig.from_pretrained(str(checkpoint_dir(cfg.model.student, "model.student")), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
        if cfg.model.lora_rank > 0:
            model = _lora(model, cfg.model.lora_rank)
    try:
        BKModule(model).remove_hooks()
    except ValueError as exc:
        raise ValueError(f"model.student = {cfg.model.student!r}: {exc}") from None


def preflight(cfg: Any) -> None:
    """All model checks ``fedveil run`` does before any work (exit 2 on failure)."""
    tok = run_tokenizer(cfg.model.student, cfg.model.teacher, lambda: None)
    if tok is not None:
        check_student_layers(cfg, len(tok))


def merged(model: nn.Module) -> Any:
    """A LoRA student with its adapters merged into the base weights (a plain checkpoint); others unchanged."""
    return model.merge_and_unload() if is_lora(model) else model  # type: ignore[operator]
