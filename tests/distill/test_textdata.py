"""Records → training tensors: where the prompt x ends and the learned continuation y begins (docs/METHODS.md §4)."""

from __future__ import annotations

import pytest

from distill.textdata import public_corpus, record_prompt_length, tokenise
from distill.tokenizer import train_tokenizer


@pytest.mark.parametrize(("n_tokens", "expected"), [(60, 16), (32, 16), (31, 15), (15, 7), (3, 1), (2, 1)])
def test_prompt_is_at_most_half_the_record(n_tokens: int, expected: int) -> None:
    assert record_prompt_length(n_tokens, 16) == expected


def test_a_canary_sized_record_keeps_its_secret_in_the_targets() -> None:
    tok = train_tokenizer(list(public_corpus(0, 200)), vocab_size=400)
    canary = "my account number is 3 8 1 9 0 2"
    long = " ".join(["the patient was seen in clinic today and reported no new symptoms"] * 4)
    data = tokenise(tok, [canary, long], max_length=64, prompt_length=16, with_privacy=False)
    n_canary = int(data.attention_mask[0].sum())
    assert n_canary < 2 * 16  # shorter than two prompts: the rule applies
    targets = data.target_mask[0].nonzero().flatten().tolist()
    assert targets == list(range(n_canary // 2, n_canary))  # the second half, EOS included
    secret_ids = tok(" 2", add_special_tokens=False)["input_ids"]
    assert int(data.input_ids[0, n_canary - 2]) == secret_ids[-1]  # the last digit is a target token
    assert data.target_mask[1].nonzero().flatten()[0].item() == 16  # a long record: the configured prompt
    assert int(data.target_mask[1].sum()) == int(data.attention_mask[1].sum()) - 16
