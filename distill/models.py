"""Model factories: small causal LMs built from ``transformers`` configs, never downloaded.

Students and teachers are Llama-family models (``nn.Linear`` projections, RMSNorm) because
Opacus computes their per-sample gradients in hooks and ghost modes (docs/METHODS.md §2).
Input and output embeddings are untied: tied embeddings break ghost clipping. Dropout is off
so per-example losses are deterministic functions of the parameters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class LMPreset:
    """Size of a causal LM preset."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


PRESETS: dict[str, LMPreset] = {
    "student-xs": LMPreset(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=176),
    "student-s": LMPreset(hidden_size=128, num_layers=3, num_heads=4, intermediate_size=352),
    "teacher-s": LMPreset(hidden_size=160, num_layers=4, num_heads=5, intermediate_size=432),
}


def lm_config(preset: str, vocab_size: int, *, max_positions: int = 512, pad_id: int = 0,
              bos_id: int = 1, eos_id: int = 2) -> LlamaConfig:
    """Return the ``LlamaConfig`` of a named preset for a given vocabulary."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; allowed: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=False, attention_dropout=0.0, pad_token_id=pad_id,
        bos_token_id=bos_id, eos_token_id=eos_id, rms_norm_eps=1e-6,
    )


def build_lm(preset: str, vocab_size: int, *, seed: int = 0, max_positions: int = 512) -> LlamaForCausalLM:
    """Build a freshly initialised causal LM (deterministic for a seed)."""
    cfg = lm_config(preset, vocab_size, max_positions=max_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.config.use_cache = True
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU; asking for CUDA without one is an error."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_checkpoint(model: LlamaForCausalLM, directory: str | Path, *, meta: dict[str, object] | None = None) -> Path:
    """Save weights and the model's own config (``save_pretrained``) plus fedveil metadata."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "fedveil.json").write_text(json.dumps(meta or {}, indent=2, sort_keys=True))
    return out


def load_checkpoint(directory: str | Path, device: torch.device | None = None) -> LlamaForCausalLM:
    """Load a checkpoint written by :func:`save_checkpoint` (config travels with the weights)."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (config.json missing)")
    model = LlamaForCausalLM.from_pretrained(path, local_files_only=True)
    model.to(device or torch.device("cpu"))  # type: ignore[arg-type]
    return model


def preset_summary(preset: str) -> dict[str, int]:
    """Plain-dict description of a preset, for the store."""
    return asdict(PRESETS[preset])
