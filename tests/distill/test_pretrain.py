"""The public warm start: it learns, it is cached by its recipe, and it never runs for a random-init config."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from client.trainers import heldout_nll
from distill.models import build_lm
from distill.pretrain import public_student, train_plain, warm_start_key
from distill.textdata import heldout_texts, public_corpus, tokenise
from distill.tokenizer import train_tokenizer
from fedveil.config import Config, load_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return train_tokenizer(public_corpus(0, 200), vocab_size=400)


def _cfg(steps: int = 40) -> Config:
    cfg = load_config(None, [])
    return cfg.replace(train=dataclasses.replace(cfg.train, public_steps=steps, batch_size=16),
                       data=dataclasses.replace(cfg.data, public_records=200, max_length=48))


def _ppl(model: torch.nn.Module, tok, cfg: Config) -> float:  # type: ignore[no-untyped-def]
    data = tokenise(tok, list(heldout_texts(cfg))[:40], max_length=cfg.data.max_length,
                    prompt_length=cfg.distill.prompt_length, with_privacy=False)
    nll, n = heldout_nll(model, data, CPU)
    return math.exp(nll / n)


def test_train_plain_lowers_the_loss(tok) -> None:  # type: ignore[no-untyped-def]
    model = build_lm("student-xs", len(tok), seed=0)
    data = tokenise(tok, list(public_corpus(0, 200)), max_length=48, prompt_length=8, with_privacy=False)
    losses = train_plain(model, data, steps=30, lr=3e-3, batch_size=16, rng=np.random.default_rng(0), device=CPU)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0  # nats: far from noise


def test_warm_start_beats_random_on_private_style_heldout_and_is_cached(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg()
    fresh, none = public_student(cfg.replace(train=dataclasses.replace(cfg.train, public_steps=0)), tok, tmp_path)
    assert none is None and not any(tmp_path.iterdir())  # public_steps = 0: nothing trained, nothing cached
    warm, info = public_student(cfg, tok, tmp_path)
    assert info is not None and not info["cached"] and info["key"] == warm_start_key(cfg, tok)
    # held-out perplexity on the (synthetic private-style) held-out records: far below the random init
    assert _ppl(warm, tok, cfg) < 0.5 * _ppl(fresh, tok, cfg)
    again, info2 = public_student(cfg, tok, tmp_path)
    assert info2 is not None and info2["cached"] and info2["key"] == info["key"]
    for (k, a), (_, b) in zip(warm.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # a different recipe is a different key and a different cache entry
    other = _cfg(steps=41)
    assert warm_start_key(other, tok) != info["key"]
    _, info3 = public_student(other, tok, tmp_path)
    assert info3 is not None and not info3["cached"] and len(list(tmp_path.iterdir())) == 2
