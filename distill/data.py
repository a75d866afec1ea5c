"""Seeded synthetic corpora: private records with ground-truth PII spans, and PII-free public text.

The private generator produces short clinical notes or support tickets built from templates whose
placeholders are filled either with topic vocabulary (so a small LM can learn the topic from the text)
or with PII values whose character spans are recorded as they are inserted. The public generator
reuses the same topic vocabulary in PII-free sentences, so a tokenizer trained on it (and only on it)
still tokenises private records sensibly.

Both generators are deterministic functions of their arguments: every random choice comes from a
``random.Random`` and a ``Faker`` instance seeded inside the call, never from global state or the clock.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from faker import Faker

from distill.data_phrases import (
    CLINICAL_EXTRAS,
    CLINICAL_PUBLIC_TEMPLATES,
    CLINICAL_TEMPLATES,
    CLINICAL_TOPICS,
    GENERIC_FILLERS,
    PUBLIC_GENERAL,
    SUPPORT_EXTRAS,
    SUPPORT_PUBLIC_TEMPLATES,
    SUPPORT_TEMPLATES,
    SUPPORT_TOPICS,
)

__all__ = [
    "ENTITY_TYPES",
    "PrivateRecord",
    "generate_private_records",
    "generate_public_corpus",
    "luhn_valid",
    "records_fingerprint",
    "topic_names",
]

RecordKind = Literal["clinical", "support"]

#: Entity types that can appear in :attr:`PrivateRecord.spans`.
ENTITY_TYPES: tuple[str, ...] = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "ACCOUNT_NUMBER",
    "US_SSN",
    "CREDIT_CARD",
    "DATE_TIME",
)

_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\}")

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)


@dataclass(frozen=True)
class PrivateRecord:
    """One synthetic private record.

    Attributes
    ----------
    text : str
        The record text.
    spans : tuple of (start, end, entity_type)
        Character spans ``text[start:end]`` of every PII value inserted, in order of position.
    topic : int
        Topic class in ``0 .. n_topics - 1`` (clinic department or ticket category).
    """

    text: str
    spans: tuple[tuple[int, int, str], ...]
    topic: int


def luhn_valid(number: str) -> bool:
    """Return whether the digits of ``number`` pass the Luhn (mod 10) checksum.

    Non-digit characters (spaces, dashes) are ignored; fewer than two digits is never valid.
    """
    digits = [int(ch) for ch in number if ch.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for pos, digit in enumerate(reversed(digits)):
        if pos % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    """Extend ``prefix`` with random digits and a final Luhn check digit up to ``length`` digits."""
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    for check in range(10):
        if luhn_valid(body + str(check)):
            return body + str(check)
    raise AssertionError("unreachable: one check digit always satisfies Luhn")


class _PiiFactory:
    """Draws PII values for one record; the record's main person is fixed at construction."""

    def __init__(self, fake: Faker, rng: random.Random) -> None:
        self.fake = fake
        self.rng = rng
        self.first = str(fake.first_name())
        self.last = str(fake.last_name())

    def other_person(self) -> str:
        return f"{self.fake.first_name()} {self.fake.last_name()}"

    def email(self) -> str:
        first = re.sub(r"[^a-z]", "", self.first.lower())
        last = re.sub(r"[^a-z]", "", self.last.lower())
        local = self.rng.choice(
            (f"{first}.{last}", f"{first[:1]}{last}", f"{first}{last}{self.rng.randint(1, 99)}",
             f"{first}_{last[:1]}")
        )
        return f"{local}@{self.fake.free_email_domain()}"

    def phone(self) -> str:
        area = f"{self.rng.randint(2, 9)}{self.rng.randint(0, 9)}{self.rng.randint(0, 9)}"
        exchange = f"{self.rng.randint(2, 9)}{self.rng.randint(0, 9)}{self.rng.randint(0, 9)}"
        line = f"{self.rng.randint(0, 9999):04d}"
        fmt = self.rng.randrange(4)
        if fmt == 0:
            return f"({area}) {exchange}-{line}"
        if fmt == 1:
            return f"{area}-{exchange}-{line}"
        if fmt == 2:
            return f"{area}.{exchange}.{line}"
        return f"+1 {area} {exchange} {line}"

    def ssn(self) -> str:
        area = self.rng.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{self.rng.randint(1, 99):02d}-{self.rng.randint(1, 9999):04d}"

    def account(self) -> str:
        # 10 digits is skipped so an account number never reads as an unformatted phone number.
        length = self.rng.choice((8, 9, 11, 12))
        return str(self.rng.randint(1, 9)) + "".join(str(self.rng.randrange(10)) for _ in range(length - 1))

    def credit_card(self) -> str:
        brand = self.rng.randrange(3)
        if brand == 2:  # 15-digit, grouped 4-6-5
            digits = _luhn_complete(self.rng.choice(("34", "37")), 15, self.rng)
            groups = [digits[:4], digits[4:10], digits[10:]]
        else:
            digits = _luhn_complete("4" if brand == 0 else str(self.rng.randint(51, 55)), 16, self.rng)
            groups = [digits[i:i + 4] for i in range(0, 16, 4)]
        return self.rng.choice((" ", "-", "")).join(groups)

    def date(self, first_year: int, last_year: int) -> str:
        year = self.rng.randint(first_year, last_year)
        month = self.rng.randint(1, 12)
        day = self.rng.randint(1, 28)
        if self.rng.random() < 0.5:
            return f"{month:02d}/{day:02d}/{year}"
        return f"{_MONTHS[month - 1]} {day}, {year}"

    def generators(self) -> dict[str, tuple[str, Callable[[], str]]]:
        """Placeholder name -> (entity type, value generator)."""
        return {
            "PERSON": ("PERSON", lambda: f"{self.first} {self.last}"),
            "LAST": ("PERSON", lambda: self.last),
            "CLINICIAN": ("PERSON", self.other_person),
            "CONTACT": ("PERSON", self.other_person),
            "AGENT": ("PERSON", lambda: str(self.fake.first_name())),
            "EMAIL": ("EMAIL_ADDRESS", self.email),
            "PHONE": ("PHONE_NUMBER", self.phone),
            "SSN": ("US_SSN", self.ssn),
            "ACCOUNT": ("ACCOUNT_NUMBER", self.account),
            "CREDIT_CARD": ("CREDIT_CARD", self.credit_card),
            "DOB": ("DATE_TIME", lambda: self.date(1940, 2005)),
            "DATE": ("DATE_TIME", lambda: self.date(2019, 2024)),
        }


#: Markers that replace PII placeholders in the de-identified public notes.
def _constant(value: str) -> Callable[[], str]:
    return lambda: value


_REDACTED: dict[str, tuple[str, Callable[[], str]]] = {
    name: ("REDACTED", _constant(marker))
    for name, marker in (
        ("PERSON", "[NAME]"), ("LAST", "[NAME]"), ("CLINICIAN", "[NAME]"), ("CONTACT", "[NAME]"),
        ("AGENT", "[NAME]"), ("EMAIL", "[EMAIL]"), ("PHONE", "[PHONE]"), ("SSN", "[SSN]"),
        ("ACCOUNT", "[ID]"), ("CREDIT_CARD", "[CARD]"), ("DOB", "[DATE]"), ("DATE", "[DATE]"),
    )
}


def _fill(
    template: str,
    fillers: dict[str, tuple[str, ...]],
    rng: random.Random,
    pii: dict[str, tuple[str, Callable[[], str]]] | None = None,
) -> tuple[str, list[tuple[int, int, str]]]:
    """Expand ``{name}`` placeholders; PII placeholders (ALL CAPS) record their spans.

    A placeholder written ``{Name}`` takes a filler of ``name`` with its first letter capitalised,
    so one vocabulary entry serves both mid-sentence and sentence-initial positions.
    """
    parts: list[str] = []
    spans: list[tuple[int, int, str]] = []
    length = 0
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        literal = template[pos:match.start()]
        parts.append(literal)
        length += len(literal)
        name = match.group(1)
        if pii is not None and name in pii:
            entity, make = pii[name]
            value = make()
            spans.append((length, length + len(value), entity))
        elif name.lower() in fillers:
            value = rng.choice(fillers[name.lower()])
            if name[0].isupper():
                value = value[:1].upper() + value[1:]
        else:
            raise KeyError(f"template placeholder {{{name}}} has no filler or PII generator")
        parts.append(value)
        length += len(value)
        pos = match.end()
    parts.append(template[pos:])
    return "".join(parts), spans


def _topics(kind: str) -> Sequence[tuple[str, dict[str, tuple[str, ...]]]]:
    if kind == "clinical":
        return CLINICAL_TOPICS
    if kind == "support":
        return SUPPORT_TOPICS
    raise ValueError(f"kind must be 'clinical' or 'support', got {kind!r}")


def topic_names(kind: RecordKind = "clinical", n_topics: int = 4) -> list[str]:
    """Human-readable names of topics ``0 .. n_topics - 1`` for ``kind``."""
    topics = _topics(kind)
    _check_n_topics(n_topics, len(topics), kind)
    return [name for name, _ in topics[:n_topics]]


def _check_n_topics(n_topics: int, available: int, kind: str) -> None:
    if not 1 <= n_topics <= available:
        raise ValueError(f"n_topics must be in 1..{available} for kind {kind!r}, got {n_topics}")


def generate_private_records(
    n: int, seed: int, kind: RecordKind = "clinical", n_topics: int = 4
) -> list[PrivateRecord]:
    """Generate ``n`` synthetic private records with ground-truth PII spans.

    Parameters
    ----------
    n : int
        Number of records (>= 0).
    seed : int
        Seed; the same ``(n, seed, kind, n_topics)`` always gives identical records, in any process.
        Callers make held-out sets by using another seed.
    kind : {"clinical", "support"}
        Clinical notes or customer-support tickets.
    n_topics : int
        Number of topic classes (clinic departments / ticket categories), 1..6. The topic of each
        record is drawn uniformly and shapes its vocabulary, so it is learnable from the text.

    Returns
    -------
    list of PrivateRecord
        Each record holds at least two PII values (roughly 40-120 tokens of text).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    topics = _topics(kind)
    _check_n_topics(n_topics, len(topics), kind)
    templates = CLINICAL_TEMPLATES if kind == "clinical" else SUPPORT_TEMPLATES
    extras = CLINICAL_EXTRAS if kind == "clinical" else SUPPORT_EXTRAS
    rng = random.Random(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)
    records: list[PrivateRecord] = []
    for _ in range(n):
        topic = rng.randrange(n_topics)
        fillers = {**GENERIC_FILLERS, **topics[topic][1]}
        pii = _PiiFactory(fake, rng).generators()
        pieces = [rng.choice(templates)] + rng.sample(extras, int(rng.random() < 0.25))
        text = ""
        spans: list[tuple[int, int, str]] = []
        for piece in pieces:
            chunk, chunk_spans = _fill(piece, fillers, rng, pii)
            offset = len(text) + (1 if text else 0)
            spans.extend((s + offset, e + offset, t) for s, e, t in chunk_spans)
            text = f"{text} {chunk}" if text else chunk
        records.append(PrivateRecord(text=text, spans=tuple(spans), topic=topic))
    return records


def generate_public_corpus(
    n: int, seed: int, kind: Literal["clinical", "support", "both"] = "both"
) -> list[str]:
    """Generate ``n`` PII-free texts in the style and vocabulary of the private records.

    The texts contain no names, e-mail addresses, phone-, SSN-, card- or id-shaped numbers, or
    calendar dates; they do contain digits, '@', '-', '.', ':' and '/' in harmless forms (dosages,
    clock times, version numbers, forum handles) so a tokenizer trained on them has those bytes and
    merges. ``kind="both"`` mixes clinical and support text.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if kind not in ("clinical", "support", "both"):
        raise ValueError(f"kind must be 'clinical', 'support' or 'both', got {kind!r}")
    rng = random.Random(seed)
    kinds: tuple[str, ...] = ("clinical", "support") if kind == "both" else (kind,)
    texts: list[str] = []
    for _ in range(n):
        this_kind = rng.choice(kinds)
        topics = _topics(this_kind)
        fillers = {**GENERIC_FILLERS, **rng.choice(topics)[1]}
        if rng.random() < 0.5:
            templates = CLINICAL_PUBLIC_TEMPLATES if this_kind == "clinical" else SUPPORT_PUBLIC_TEMPLATES
            pieces = [rng.choice(templates)] + rng.sample(PUBLIC_GENERAL, rng.randint(0, 2))
            texts.append(" ".join(_fill(piece, fillers, rng)[0] for piece in pieces))
        else:
            # De-identified notes (PII replaced by markers, as in public redacted corpora) carry the
            # private templates' wording, so those words get merges without any private value.
            templates = CLINICAL_TEMPLATES if this_kind == "clinical" else SUPPORT_TEMPLATES
            extras = CLINICAL_EXTRAS if this_kind == "clinical" else SUPPORT_EXTRAS
            pieces = [rng.choice(templates)] + rng.sample(extras, rng.randint(0, 1))
            texts.append(" ".join(_fill(piece, fillers, rng, _REDACTED)[0] for piece in pieces))
    return texts


def records_fingerprint(records: Sequence[PrivateRecord | str]) -> str:
    """SHA-256 hex digest over the record texts, in order (length-prefixed, so it is unambiguous).

    Accepts records or plain strings; a list of records and the list of their texts fingerprint alike.
    """
    digest = hashlib.sha256()
    for record in records:
        text = record.text if isinstance(record, PrivateRecord) else record
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()
