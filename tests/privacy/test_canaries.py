"""Canary planning ground truth, insertion and equal-length candidates (docs/METHODS.md §8)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from privacy.audit.canaries import (
    CanaryFormat,
    candidate_token_ids,
    equal_length_candidates,
    insert_canaries,
    plan_canaries,
    plan_one_run_canaries,
    sample_secrets,
    target_token_length,
)


def _bpe_encode() -> Tokenizer:
    """A tiny byte-level BPE whose merges join some digit pairs, so token lengths of secrets vary."""
    rng = np.random.default_rng(1)
    sentences = ["my account number is 12 34 56", "the pin is 1234 and 5678", "call 555 0101 now"]
    sentences += ["".join(str(d) for d in rng.integers(0, 10, size=8)) for _ in range(30)]
    sentences += ["1212 3434 11 22 33 44 55 66 77 88 99 00"] * 5
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(sentences, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return _bpe_encode()


def test_format_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        CanaryFormat("no field here")
    with pytest.raises(ValueError, match="exactly one"):
        CanaryFormat("{secret} and {secret}")
    with pytest.raises(ValueError, match="repeated"):
        CanaryFormat("pin {secret}", alphabet="001")
    with pytest.raises(ValueError, match="length"):
        CanaryFormat("pin {secret}", length=0)
    fmt = CanaryFormat("pin {secret} ok", alphabet="ab", length=3, separator="-")
    assert fmt.space_size == 8
    assert fmt.render("a-b-a") == "pin a-b-a ok"


def test_sample_secrets_distinct_and_well_formed() -> None:
    fmt = CanaryFormat("my account number is {secret}")
    secrets = sample_secrets(fmt, 500, np.random.default_rng(0), exclude={"0 0 0 0 0 0"})
    assert len(set(secrets)) == 500
    assert "0 0 0 0 0 0" not in secrets
    for secret in secrets:
        symbols = secret.split(" ")
        assert len(symbols) == 6 and all(s in fmt.alphabet for s in symbols)
    small = CanaryFormat("x {secret}", alphabet="ab", length=3)
    assert sorted(sample_secrets(small, 8, 0)) == sorted(
        {a + " " + b + " " + c for a in "ab" for b in "ab" for c in "ab"}
    )
    with pytest.raises(ValueError, match="distinct secrets"):
        sample_secrets(small, 9, 0)


def test_plan_canaries_ground_truth() -> None:
    formats = [
        CanaryFormat("my account number is {secret}"),
        CanaryFormat("pin {secret} end", alphabet="abcdef", length=4),
    ]
    clients = [0, 3, 5]
    plan = plan_canaries(formats, clients, repetitions=(1, 4, 16), per_setting=2, n_never_inserted=5, rng=7)
    assert len(plan) == len(formats) * (len(clients) * 3 * 2 + 5)
    assert len({c.canary_id for c in plan}) == len(plan)
    for format_index, fmt in enumerate(formats):
        mine = [c for c in plan if c.format_index == format_index]
        assert len({c.secret for c in mine}) == len(mine)
        assert all(c.text == fmt.render(c.secret) for c in mine)
        inserted = [c for c in mine if c.inserted]
        never = [c for c in mine if not c.inserted]
        assert len(never) == 5
        assert all(c.client_index is None and c.repetitions == 0 for c in never)
        settings = Counter((c.client_index, c.repetitions) for c in inserted)
        assert settings == Counter({(client, r): 2 for client in clients for r in (1, 4, 16)})
    again = plan_canaries(formats, clients, repetitions=(1, 4, 16), per_setting=2, n_never_inserted=5, rng=7)
    assert again == plan


def test_insert_canaries_counts_and_order() -> None:
    fmt = CanaryFormat("my account number is {secret}")
    plan = plan_canaries([fmt], [0, 1], repetitions=(1, 4, 16), n_never_inserted=3, rng=1)
    records = [f"record {i}" for i in range(100)]
    copy = list(records)
    out = insert_canaries(records, plan, client_index=1, rng=np.random.default_rng(2))
    assert records == copy
    counts = Counter(out)
    for canary in plan:
        expected = canary.repetitions if canary.client_index == 1 else 0
        assert counts[canary.text] == expected
    assert len(out) == 100 + 1 + 4 + 16
    assert [r for r in out if r.startswith("record")] == records
    # Copies are spread, not appended as a block.
    positions = [i for i, r in enumerate(out) if not r.startswith("record")]
    assert positions != list(range(100, 121))
    assert insert_canaries(records, plan, client_index=9, rng=0) == records


def test_one_run_plan() -> None:
    fmt = CanaryFormat("the code is {secret}")
    canaries = plan_one_run_canaries(fmt, 400, client_index=2, rng=np.random.default_rng(3))
    assert len(canaries) == 400
    assert len({c.secret for c in canaries}) == 400
    included = np.array([c.inserted for c in canaries])
    assert 0.4 < included.mean() < 0.6
    assert all(c.repetitions == (1 if c.inserted else 0) for c in canaries)
    assert all(c.client_index == 2 for c in canaries)
    out = insert_canaries(["a", "b"], canaries, client_index=2, rng=0)
    assert len(out) == 2 + int(included.sum())


def test_equal_token_lengths_with_bpe(bpe: Tokenizer) -> None:
    def encode(text: str) -> list[int]:
        return list(bpe.encode(text).ids)

    fmt = CanaryFormat("my account number is {secret}", separator="")
    raw = [len(encode(fmt.render(s))) for s in sample_secrets(fmt, 300, 0)]
    assert len(set(raw)) > 1, "the test tokenizer should merge some digit pairs"
    plan = plan_canaries([fmt], [0], repetitions=(1, 4), n_never_inserted=4, rng=5, encode=encode)
    references = equal_length_candidates(fmt, 2000, encode, 6, exclude={c.secret for c in plan})
    assert len(set(references)) == 2000
    assert not {c.text for c in plan} & set(references)
    texts = [c.text for c in plan] + references
    target = target_token_length(fmt, encode)
    assert {len(encode(t)) for t in texts} == {target}
    ids, mask = candidate_token_ids(fmt, texts, encode)
    assert ids.shape == (len(texts), target)
    prefix_len = len(encode("my account number is"))
    assert not mask[:prefix_len].any() and mask[prefix_len:].all()
    with pytest.raises(ValueError, match="target token length"):
        equal_length_candidates(fmt, 10, encode, 0, target_length=1)
    with pytest.raises(ValueError, match="token lengths"):
        candidate_token_ids(fmt, [fmt.render("1"), fmt.render("123456")], encode)


def test_candidate_mask_char_level() -> None:
    fmt = CanaryFormat("pin: {secret}!", alphabet="abc", length=3, separator="")

    def encode(text: str) -> list[int]:
        return [ord(ch) for ch in text]

    texts = equal_length_candidates(fmt, 20, encode, 0)
    ids, mask = candidate_token_ids(fmt, texts, encode)
    assert ids.shape == (20, len("pin: abc!"))
    assert mask.tolist() == [False] * 5 + [True] * 3 + [False]
