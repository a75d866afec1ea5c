"""Tests for distill.data: seeded synthetic private records and PII-free public text."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from distill.data import (
    ENTITY_TYPES,
    PrivateRecord,
    generate_private_records,
    generate_public_corpus,
    luhn_valid,
    records_fingerprint,
    topic_names,
)

EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
PHONE_RE = re.compile(r"^(\+1 )?(\(\d{3}\) |\d{3}[-. ])\d{3}[-. ]\d{4}$")
SSN_RE = re.compile(r"^(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}$")
ACCOUNT_RE = re.compile(r"^\d{8,12}$")
CARD_RE = re.compile(r"^\d{4}([- ]?)(\d{4}\1\d{4}\1\d{4}|\d{6}\1\d{5})$")
DATE_RE = re.compile(r"^(\d{2}/\d{2}/\d{4}|[A-Z][a-z]+ \d{1,2}, \d{4})$")
PERSON_RE = re.compile(r"^[A-Z][A-Za-z'\-]+( [A-Z][A-Za-z'\-]+)*$")

PLAUSIBLE = {
    "EMAIL_ADDRESS": EMAIL_RE,
    "PHONE_NUMBER": PHONE_RE,
    "US_SSN": SSN_RE,
    "ACCOUNT_NUMBER": ACCOUNT_RE,
    "CREDIT_CARD": CARD_RE,
    "DATE_TIME": DATE_RE,
    "PERSON": PERSON_RE,
}

# Shapes that must never occur anywhere in public text (searched, not anchored).
EMAIL_SHAPE = re.compile(r"[\w.+-]+@[\w-]+\.\w+")
PHONE_SHAPE = re.compile(r"\(?\b\d{3}\)?[-. ]\d{3}[-. ]\d{4}\b")
SSN_SHAPE = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
CARD_SHAPE = re.compile(r"\b\d{4}[- ]?\d{4,6}[- ]?\d{4,5}")
LONG_DIGITS = re.compile(r"\d{6,}")
DATE_SHAPE = re.compile(r"\b\d{1,2}/\d{1,2}/\d{2,4}\b")


@pytest.fixture(scope="module", params=["clinical", "support"])
def records(request: pytest.FixtureRequest) -> list[PrivateRecord]:
    return generate_private_records(300, seed=11, kind=request.param, n_topics=4)


def test_same_seed_identical_different_seed_differs() -> None:
    for kind in ("clinical", "support"):
        a = generate_private_records(40, seed=3, kind=kind)
        b = generate_private_records(40, seed=3, kind=kind)
        c = generate_private_records(40, seed=4, kind=kind)
        assert a == b
        assert [r.text for r in a] != [r.text for r in c]
        # different seeds should share almost no record text (callers split train/held-out by seed)
        assert len({r.text for r in a} & {r.text for r in c}) == 0
    assert generate_public_corpus(30, seed=1) == generate_public_corpus(30, seed=1)
    assert generate_public_corpus(30, seed=1) != generate_public_corpus(30, seed=2)


def test_deterministic_across_processes() -> None:
    code = (
        "from distill.data import generate_private_records, generate_public_corpus, records_fingerprint;"
        "print(records_fingerprint(generate_private_records(25, 7, 'support')));"
        "print(records_fingerprint(generate_public_corpus(25, 7)))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert out == [
        records_fingerprint(generate_private_records(25, 7, "support")),
        records_fingerprint(generate_public_corpus(25, 7)),
    ]


def test_at_least_two_pii_spans_each_plausible(records: list[PrivateRecord]) -> None:
    seen_types: Counter[str] = Counter()
    for record in records:
        assert len(record.spans) >= 2
        previous_end = 0
        for start, end, entity in record.spans:
            assert entity in ENTITY_TYPES
            assert previous_end <= start < end <= len(record.text), "spans are ordered and disjoint"
            previous_end = end
            value = record.text[start:end]
            assert value == value.strip()
            assert PLAUSIBLE[entity].match(value), f"{entity} span {value!r} is not plausible"
            if entity == "CREDIT_CARD":
                assert luhn_valid(value), value
            seen_types[entity] += 1
    assert set(seen_types) == set(ENTITY_TYPES)


def test_spans_are_complete_for_email_phone_ssn_card(records: list[PrivateRecord]) -> None:
    # Every value of these shapes in the text is covered by a span (no unannotated leakage).
    for record in records:
        covered = {(s, e) for s, e, _ in record.spans}
        for shape in (EMAIL_SHAPE, SSN_SHAPE, PHONE_SHAPE):
            for match in shape.finditer(record.text):
                assert any(s <= match.start() and match.end() <= e for s, e in covered), (
                    record.text, match.group()
                )


def test_luhn_reference_values() -> None:
    assert luhn_valid("4539 1488 0343 6467")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("4")


def test_record_length_and_topics(records: list[PrivateRecord]) -> None:
    words = [len(r.text.split()) for r in records]
    assert min(words) >= 15 and max(words) <= 90
    topics = Counter(r.topic for r in records)
    assert set(topics) == {0, 1, 2, 3}
    assert min(topics.values()) >= 40  # roughly uniform over 300 records


def test_topics_are_learnable_from_vocabulary() -> None:
    # A trivial bag-of-words nearest-centroid classifier beats chance by far on held-out records.
    train = generate_private_records(400, seed=0, n_topics=4)
    test = generate_private_records(200, seed=1, n_topics=4)
    counts: dict[int, Counter[str]] = {t: Counter() for t in range(4)}
    for r in train:
        counts[r.topic].update(re.findall(r"[a-z]+", r.text.lower()))

    def predict(text: str) -> int:
        words = re.findall(r"[a-z]+", text.lower())
        return max(counts, key=lambda t: sum(counts[t][w] / sum(counts[t].values()) for w in words))

    accuracy = sum(predict(r.text) == r.topic for r in test) / len(test)
    assert accuracy > 0.9


def test_n_topics_and_kind_validation() -> None:
    assert {r.topic for r in generate_private_records(200, 0, "support", n_topics=6)} == set(range(6))
    assert {r.topic for r in generate_private_records(50, 0, n_topics=1)} == {0}
    assert len(topic_names("clinical", 4)) == 4
    with pytest.raises(ValueError, match="n_topics"):
        generate_private_records(5, 0, n_topics=0)
    with pytest.raises(ValueError, match="n_topics"):
        generate_private_records(5, 0, n_topics=99)
    with pytest.raises(ValueError, match="kind"):
        generate_private_records(5, 0, kind="legal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        generate_private_records(-1, 0)
    assert generate_private_records(0, 0) == []


def test_public_corpus_is_pii_free_but_has_symbols() -> None:
    texts = generate_public_corpus(600, seed=5)
    joined = "\n".join(texts)
    for shape in (EMAIL_SHAPE, PHONE_SHAPE, SSN_SHAPE, CARD_SHAPE, LONG_DIGITS, DATE_SHAPE):
        assert shape.search(joined) is None, shape.search(joined)
    for ch in "@-.:/0123456789":
        assert ch in joined
    # no private values: none of the names used in private records appear in public text
    private = generate_private_records(200, seed=5)
    names = {r.text[s:e] for r in private for s, e, t in r.spans if t == "PERSON"}
    assert not any(name in joined for name in names if len(name) > 8)
    for kind in ("clinical", "support"):
        assert len(generate_public_corpus(5, 0, kind=kind)) == 5  # type: ignore[arg-type]


def test_public_corpus_shares_private_vocabulary() -> None:
    public_words = set(re.findall(r"[a-z]{4,}", " ".join(generate_public_corpus(1000, 0)).lower()))
    private = generate_private_records(300, seed=1)
    pii_free = []
    for r in private:
        text, last = [], 0
        for s, e, _ in r.spans:
            text.append(r.text[last:s])
            last = e
        text.append(r.text[last:])
        pii_free.append(" ".join(text))
    private_words = set(re.findall(r"[a-z]{4,}", " ".join(pii_free).lower()))
    assert len(private_words - public_words) / len(private_words) < 0.05


def test_records_fingerprint() -> None:
    records = generate_private_records(10, 0)
    fp = records_fingerprint(records)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert fp == records_fingerprint([r.text for r in records])
    assert fp != records_fingerprint(records[:-1])
    assert records_fingerprint(["ab", "c"]) != records_fingerprint(["a", "bc"])
