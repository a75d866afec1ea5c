"""Local checkpoints as students/teachers (distill.hf): tokenizers, Opacus treatments and DP-LoRA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.hf import (
    check_student_layers,
    is_lora,
    load_checkpoint_tokenizer,
    load_travelling_state,
    merged,
    run_tokenizer,
    student_lm,
    teacher_lm,
    travelling_state,
)
from distill.models import PRESETS
from distill.tokenizer import tokenizer_fingerprint, tokenizer_from_json, tokenizer_to_json
from fedveil.config import MODEL_PRESETS, ConfigError, from_dict
from privacy.dp import DPSession
from tests.distill.checkpoints import save_tiny, tiny_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {family: save_tiny(root / family, family) for family in ("gpt2", "llama")}


def _cfg(student: str, *, teacher: str = "teacher-s", rank: int = 0, mode: str = "ghost") -> object:
    return from_dict({"model": {"student": student, "teacher": teacher, "lora_rank": rank},
                      "privacy": {"grad_sample_mode": mode}})


def test_presets_agree_with_the_config_schema() -> None:
    assert set(PRESETS) == set(MODEL_PRESETS)


@pytest.mark.parametrize("name", ["gpt2", "distilgpt2", ""])
def test_hub_style_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        _cfg(name)


def test_a_path_that_is_not_a_local_checkpoint_is_refused(tmp_path: Path) -> None:
    cfg = _cfg("meta-llama/Llama-3.2-1B")  # looks like a path: accepted by the schema, refused on use
    with pytest.raises(FileNotFoundError, match="no such directory.*nothing is downloaded"):
        student_lm(cfg, 400)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="tokenizer.json missing"):
        student_lm(_cfg(str(tmp_path)), 400)


@pytest.mark.parametrize("family,eos", [("gpt2", "<|endoftext|>"), ("llama", "</s>")])
def test_checkpoint_tokenizer_keeps_its_specials_and_travels(ckpt: dict[str, Path], family: str, eos: str) -> None:
    tok = load_checkpoint_tokenizer(str(ckpt[family]))
    assert tok.eos_token == eos and tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left"
    again = tokenizer_from_json(tokenizer_to_json(tok))
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    text = "Patient reports mild pain."
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_malformed_specials_are_refused(ckpt: dict[str, Path]) -> None:
    wire = tokenizer_to_json(load_checkpoint_tokenizer(str(ckpt["llama"])))
    with pytest.raises(ValueError, match="not a serialised tokenizer"):
        tokenizer_from_json(wire.replace('"</s>"', '"<nope>"'))


def test_run_tokenizer_prefers_checkpoints_and_refuses_mismatch(ckpt: dict[str, Path], tmp_path: Path) -> None:
    trained = object()
    assert run_tokenizer("student-xs", "teacher-s", lambda: trained) is trained
    tok = run_tokenizer("student-xs", str(ckpt["llama"]), lambda: trained)
    assert tok.eos_token == "</s>"  # a preset student takes the teacher checkpoint's tokenizer
    other = save_tiny(tmp_path / "other", "llama", tokenizer=tiny_tokenizer("llama", vocab_size=390))
    with pytest.raises(ValueError, match="share one tokenizer") as err:
        run_tokenizer(str(other), str(ckpt["llama"]), lambda: trained)
    assert "390 tokens" in str(err.value) and "400 tokens" in str(err.value)


def test_ghost_unties_gpt2_embeddings_bk_keeps_them(ckpt: dict[str, Path]) -> None:
    ghost = student_lm(_cfg(str(ckpt["gpt2"]), mode="ghost"), 400)
    assert ghost.lm_head.weight is not ghost.transformer.wte.weight
    assert torch.equal(ghost.lm_head.weight, ghost.transformer.wte.weight)  # same function, separate parameters
    bk = student_lm(_cfg(str(ckpt["gpt2"]), mode="bk"), 400)
    assert bk.lm_head.weight is bk.transformer.wte.weight
    assert all(m.p == 0.0 for m in bk.modules() if isinstance(m, torch.nn.Dropout))


def test_teacher_checkpoint_is_loaded_not_reinitialised(ckpt: dict[str, Path]) -> None:
    cfg = _cfg("student-xs", teacher=str(ckpt["llama"]))
    a, b = teacher_lm(cfg, 400, seed=1), teacher_lm(cfg, 400, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bk_refuses_a_layer_without_a_rule_before_any_work(tmp_path: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM
    MistralForCausalLM(MistralConfig(vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    tiny_tokenizer("llama").save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="MistralRMSNorm"):
        check_student_layers(_cfg(str(tmp_path), mode="bk"), 400)
    check_student_layers(_cfg(str(tmp_path), mode="hooks"), 400)  # Opacus' own per-sample rules: accepted


def _ce(module: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(ids.shape[1]).repeat(ids.shape[0], 1).contiguous()
    logits = module(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").mean(1)


@pytest.mark.parametrize("mode", ["bk", "ghost", "hooks"])
@pytest.mark.parametrize("student", ["gpt2", "llama", "student-xs"])
def test_dp_lora_updates_every_adapter_every_step_and_nothing_else(ckpt: dict[str, Path], mode: str,
                                                                    student: str) -> None:
    name = str(ckpt[student]) if student in ckpt else student
    model = student_lm(_cfg(name, rank=2, mode=mode), 400)
    assert is_lora(model)
    adapters = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    session = DPSession(model, lr=1e-2, noise_multiplier=0.5, max_grad_norm=1.0, expected_batch_size=4, mode=mode,
                        generator=torch.Generator().manual_seed(0))
    ids = torch.from_numpy(np.random.default_rng(0).integers(4, 400, (4, 12)))
    for step in range(3):
        session.step(_ce(session.module, ids))
        now = {n: p.detach().clone() for n, p in session.model.named_parameters()}
        changed = {n for n in now if not torch.equal(now[n], before[n])}
        assert changed == adapters, f"step {step}: {sorted(adapters - changed)[:3]} did not move, " \
                                    f"{sorted(changed - adapters)[:3]} moved but are frozen"
        before = now
    session.close()


def test_only_adapters_travel_and_merge_back(ckpt: dict[str, Path]) -> None:
    cfg = _cfg(str(ckpt["llama"]), rank=2)
    full = travelling_state(student_lm(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora_rank=0)),
                                       400))
    lora_model = student_lm(cfg, 400)
    lora = travelling_state(lora_model)
    assert all("lora_" in k for k in lora)
    assert sum(v.numel() for v in lora.values()) < sum(v.numel() for v in full.values()) / 10
    again = student_lm(cfg, 400)  # every party builds the same adapters for the seed
    assert all(torch.equal(lora[k], v) for k, v in travelling_state(again).items())
    bumped = {k: v + 0.1 for k, v in lora.items()}
    load_travelling_state(again, bumped)
    with pytest.raises(ValueError, match="do not match"):
        load_travelling_state(again, full)
    plain = merged(again)
    assert not is_lora(plain) and set(plain.state_dict()) <= set(full) | {"lm_head.weight"}
