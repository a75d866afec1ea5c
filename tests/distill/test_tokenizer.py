"""Tests for distill.tokenizer: byte-level BPE trained on public text, offsets, save/load."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from distill.data import PrivateRecord, generate_private_records, generate_public_corpus
from distill.tokenizer import (
    SPECIAL_TOKENS,
    encode_records,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
)

VOCAB = 512


@pytest.fixture(scope="module")
def public() -> list[str]:
    return generate_public_corpus(300, seed=0)


@pytest.fixture(scope="module")
def private() -> list[PrivateRecord]:
    return generate_private_records(100, seed=1, kind="clinical") + generate_private_records(
        100, seed=2, kind="support"
    )


@pytest.fixture(scope="module")
def tok(public: list[str]) -> PreTrainedTokenizerFast:
    return train_tokenizer(public, vocab_size=VOCAB)


def test_special_tokens_and_settings(tok: PreTrainedTokenizerFast) -> None:
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    assert len(tok) <= VOCAB
    assert len(tok) > 300  # merges were actually learned
    batch = tok(["a", "a longer text"], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id  # left padded
    assert batch["attention_mask"][0][-1] == 1


def test_round_trip(tok: PreTrainedTokenizerFast, public: list[str], private: list[PrivateRecord]) -> None:
    texts = public[:50] + [r.text for r in private] + ["  leading, trailing  ", "tabs\tand\nnewlines", "émoji ✓ 5 mg"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_offsets_cover_text(tok: PreTrainedTokenizerFast, private: list[PrivateRecord]) -> None:
    for record in private[:60]:
        text = record.text
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        assert len(offsets) == len(enc["input_ids"])
        covered = [False] * len(text)
        previous_end = 0
        for start, end in offsets:
            assert 0 <= start <= end <= len(text)
            assert start >= previous_end  # monotone, non-overlapping
            previous_end = end
            for i in range(start, end):
                covered[i] = True
        assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
        # trimmed offsets: a token's span never starts with the space it carries
        assert all(not text[s:e][:1].isspace() for s, e in offsets if e > s)
        # each PII span maps to the tokens overlapping it, and they reproduce the value
        for s, e, _ in record.spans:
            ids = [i for i, (a, b) in zip(enc["input_ids"], offsets) if a < e and b > s]
            assert str(tok.decode(ids)).strip() == text[s:e]


def test_save_load_equality(tok: PreTrainedTokenizerFast, tmp_path: Path, private: list[PrivateRecord]) -> None:
    directory = save_tokenizer(tok, tmp_path / "tok")
    assert (directory / "tokenizer.json").is_file()
    loaded = load_tokenizer(directory)
    assert loaded.get_vocab() == tok.get_vocab()
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tok)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert loaded.padding_side == "left"
    texts = [r.text for r in private[:20]]
    assert encode_records(loaded, texts, 64) == encode_records(tok, texts, 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_json_round_trip(tok: PreTrainedTokenizerFast, private: list[PrivateRecord]) -> None:
    again = tokenizer_from_json(tokenizer_to_json(tok))
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    texts = [r.text for r in private[:20]]
    assert encode_records(again, texts, 64) == encode_records(tok, texts, 64)
    with pytest.raises(ValueError, match="not a serialised tokenizer"):
        tokenizer_from_json("{not json")


def test_fingerprint_stable_and_sensitive(tok: PreTrainedTokenizerFast, public: list[str]) -> None:
    fp = tokenizer_fingerprint(tok)
    tok(["x", "longer text here"], padding=True, truncation=True, max_length=3)  # mutates backend state
    assert tokenizer_fingerprint(tok) == fp
    assert tokenizer_fingerprint(train_tokenizer(public, vocab_size=VOCAB)) == fp  # deterministic training
    assert tokenizer_fingerprint(train_tokenizer(public, vocab_size=400)) != fp


def test_encode_records(tok: PreTrainedTokenizerFast) -> None:
    texts = ["Plan: start 5 mg daily.", "ok"]
    plain = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    full = encode_records(tok, texts, max_length=1000)
    assert full == [[1, *ids, 2] for ids in plain]
    assert encode_records(tok, texts, 1000, add_bos=False, add_eos=False) == plain
    assert encode_records(tok, texts, 1000, add_bos=False) == [[*ids, 2] for ids in plain]
    short = encode_records(tok, texts, max_length=4)
    assert short[0] == [1, *plain[0][:3]]
    assert all(len(row) <= 4 for row in short)
    assert encode_records(tok, [], 8) == []
    with pytest.raises(ValueError, match="max_length"):
        encode_records(tok, texts, 0)


def test_private_names_are_not_vocabulary_tokens(
    tok: PreTrainedTokenizerFast, public: list[str], private: list[PrivateRecord]
) -> None:
    public_text = "\n".join(public).lower()
    names = [r.text[s:e] for r in private for s, e, t in r.spans if t == "PERSON"]
    words = Counter(w for name in names for w in name.split())
    private_only = [w for w in words if len(w) >= 4 and w.lower() not in public_text]
    assert len(private_only) > 50
    vocab = tok.get_vocab()
    for word in private_only:
        assert word not in vocab and "Ġ" + word not in vocab
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) > 1
    # Control: the same trainer on the private records does turn a recurring name into a token,
    # which is exactly the leak that training on public text avoids.
    leaky = train_tokenizer([r.text for r in private], vocab_size=2048).get_vocab()
    frequent = [w for w, c in words.most_common() if w in private_only and c >= 5]
    assert frequent and any(w in leaky or "Ġ" + w in leaky for w in frequent)


def test_argument_errors(public: list[str]) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(public, vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(public, min_frequency=0)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([], vocab_size=VOCAB)
    with pytest.raises(TypeError, match="texts"):
        train_tokenizer(["ok", 3], vocab_size=VOCAB)  # type: ignore[list-item]
