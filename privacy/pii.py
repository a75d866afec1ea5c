"""Private-token detection for Swing-style distillation (docs/METHODS.md §5 step 1).

Regex and checksum recognisers find character spans of personal data in text; the spans are mapped to
tokens through a fast tokenizer's character offsets, giving the per-token privacy likelihood ``π``.
The detector is pluggable: anything implementing :class:`PrivacySource` can supply ``π`` (e.g. the known
canary mask in audits).

Recognisers (all written for this project; no external PII library): ``EMAIL_ADDRESS``,
``PHONE_NUMBER`` (international ``+CC`` forms, NANP, separated national forms), ``CREDIT_CARD``
(13–19 digits, Luhn), ``US_SSN`` (``ddd-dd-dddd``, invalid areas rejected), ``IBAN_CODE`` (mod-97),
``IP_ADDRESS`` (IPv4 with octet ranges, IPv6) and ``DIGIT_RUN`` (≥ 6 consecutive digits not covered by
a more specific entity). They favour precision on structured identifiers; names, addresses and other
free-text PII are out of their reach and need another source.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "PRIVACY_SOURCES",
    "RECOGNIZERS",
    "CanaryMaskSource",
    "DetectorSource",
    "PIIDetector",
    "PIISpan",
    "PrivacySource",
    "Recognizer",
    "iban_valid",
    "luhn_valid",
    "make_privacy_source",
    "register_recognizer",
    "spans_to_token_privacy",
]

FindFn = Callable[[str], Iterable[tuple[int, int]]]


@dataclass(frozen=True)
class PIISpan:
    """A detected entity: ``text[start:end]`` is of type ``entity_type``."""

    start: int
    end: int
    entity_type: str
    text: str


@dataclass(frozen=True)
class Recognizer:
    """A named span finder; ``priority`` breaks ties between equally long overlapping spans."""

    entity_type: str
    find: FindFn
    priority: int


RECOGNIZERS: dict[str, Recognizer] = {}


def register_recognizer(entity_type: str, priority: int = 1) -> Callable[[FindFn], FindFn]:
    """Decorator registering ``find(text) -> iterable of (start, end)`` under ``entity_type``.

    Higher ``priority`` means more specific (checksummed identifiers highest, ``DIGIT_RUN`` lowest).
    """

    def decorate(find: FindFn) -> FindFn:
        if entity_type in RECOGNIZERS:
            raise ValueError(f"a recogniser for {entity_type!r} is already registered")
        RECOGNIZERS[entity_type] = Recognizer(entity_type, find, priority)
        return find

    return decorate


# --------------------------------------------------------------------------- checksums
def luhn_valid(digits: str) -> bool:
    """Luhn (mod-10) checksum of a digit string, as used by payment card numbers (ISO/IEC 7812)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """IBAN check (ISO 13616): move the first four characters to the end, letters → 10..35, mod 97 == 1."""
    compact = iban.replace(" ", "").upper()
    if not (15 <= len(compact) <= 34 and compact.isalnum() and compact.isascii()):
        return False
    if not (compact[:2].isalpha() and compact[2:4].isdigit()):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# --------------------------------------------------------------------------- recognisers
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)


@register_recognizer("EMAIL_ADDRESS", priority=4)
def find_emails(text: str) -> Iterable[tuple[int, int]]:
    """``local@domain.tld`` with an alphabetic top-level domain."""
    return (m.span() for m in _EMAIL.finditer(text))


_EXT = r"(?:\s?(?:x|ext\.?|#)\s?\d{1,6})?"
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+\d{1,15}(?:(?:[ .-]|[ .-]?\(\d{1,4}\)[ .-]?)\d{1,12})*" + _EXT + r"(?!\d)"
)
_PHONE_PAREN = re.compile(r"(?<![\w(])\(\d{2,4}\)[ .-]?\d{2,5}(?:[ .-]\d{2,5}){0,3}" + _EXT + r"(?!\d)")
_PHONE_NATIONAL = [
    re.compile(r"(?<![\w+.-])\d{1,5}(?:" + sep + r"\d{1,8})+" + _EXT + r"(?![\w]|[.-]\d)")
    for sep in (r"-", r" ", r"\.")
]
_DATE = re.compile(r"^(?:\d{4}[-. ]\d{1,2}[-. ]\d{1,2}|\d{1,2}[-. ]\d{1,2}[-. ]\d{2,4})$")
_PHONE_CONTEXT = re.compile(r"(?i)(?:phone|tel|call|mobile|cell|fax|contact|reach|number|dial|whatsapp)")


def _n_digits(s: str) -> int:
    return sum(ch.isdigit() for ch in s)


def _strip_ext(s: str) -> str:
    return re.split(r"\s?(?:x|ext\.?|#)", s, maxsplit=1)[0]


@register_recognizer("PHONE_NUMBER", priority=2)
def find_phones(text: str) -> Iterable[tuple[int, int]]:
    """International (``+CC …``, 8–15 digits), ``(area) …`` and separated national forms.

    National forms use one separator kind (``-``, space or ``.``), 7–12 digits (15 after a ``00``
    international prefix) and three or more groups;
    two-group numbers count only with a leading trunk ``0`` or a phone word (``call``, ``tel`` …) just
    before them, because bare pairs such as ``75534-030`` are more often postal codes. Date-shaped
    candidates (``2001-04-16``, ``12.05.2023``) are rejected.
    """
    for m in _PHONE_INTL.finditer(text):
        if 8 <= _n_digits(_strip_ext(m.group())) <= 15:
            yield m.span()
    for m in _PHONE_PAREN.finditer(text):
        if 7 <= _n_digits(_strip_ext(m.group())) <= 12:
            yield m.span()
    for pattern in _PHONE_NATIONAL:
        for m in pattern.finditer(text):
            core = _strip_ext(m.group())
            groups = re.findall(r"\d+", core)
            # A leading 00 is the international call prefix, which allows longer numbers.
            max_digits = 15 if core.startswith("00") else 12
            if not 7 <= _n_digits(core) <= max_digits or _DATE.match(core):
                continue
            context = _PHONE_CONTEXT.search(text[max(0, m.start() - 30) : m.start()]) is not None
            if len(groups) >= 3 or (groups[0].startswith("0") and _n_digits(core) >= 9) or context:
                yield m.span()


_DIGIT_CHUNKS = re.compile(r"(?<![\w.])\d+(?:[ -]\d+)*(?![\w])")


@register_recognizer("CREDIT_CARD", priority=5)
def find_credit_cards(text: str) -> Iterable[tuple[int, int]]:
    """13–19 digits, optionally grouped by single spaces or dashes, passing the Luhn check.

    Candidates are runs of whole digit groups (so ``cvv 123 4111 1111 1111 1111`` still finds the
    card); the first digit must be 1–6, the major-industry identifiers of payment networks.
    """
    for chunk in _DIGIT_CHUNKS.finditer(text):
        groups = [(g.start(), g.end()) for g in re.finditer(r"\d+", chunk.group())]
        base = chunk.start()
        i = 0
        while i < len(groups):
            found = None
            for j in range(len(groups), i, -1):
                digits = "".join(chunk.group()[s:e] for s, e in groups[i:j])
                if 13 <= len(digits) <= 19 and digits[0] in "123456" and luhn_valid(digits):
                    found = j
                    break
            if found is None:
                i += 1
                continue
            yield base + groups[i][0], base + groups[found - 1][1]
            i = found


_SSN = re.compile(r"(?<![\w-])(\d{3})-(\d{2})-(\d{4})(?![\w-])")


@register_recognizer("US_SSN", priority=4)
def find_us_ssns(text: str) -> Iterable[tuple[int, int]]:
    """``ddd-dd-dddd``; area 000, 666 and 900–999, group 00 and serial 0000 are never issued."""
    for m in _SSN.finditer(text):
        area, group, serial = m.groups()
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        yield m.span()


_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?=[ ]?[A-Za-z0-9])")
_ALNUM_GROUP = re.compile(r"[A-Za-z0-9]+")


@register_recognizer("IBAN_CODE", priority=5)
def find_ibans(text: str) -> Iterable[tuple[int, int]]:
    """Country code + check digits + BBAN (15–34 characters, optionally space-grouped), mod-97 valid.

    The longest space-separated prefix that validates is taken, so trailing words are not swallowed.
    """
    pos = 0
    while (m := _IBAN_START.search(text, pos)) is not None:
        ends = []
        cursor, length = m.start(), 0
        while (g := _ALNUM_GROUP.match(text, cursor)) is not None and length + len(g.group()) <= 34:
            length += len(g.group())
            ends.append(g.end())
            cursor = g.end() + 1 if text[g.end() : g.end() + 1] == " " else len(text) + 1
        hit = next((e for e in reversed(ends) if iban_valid(text[m.start() : e])), None)
        if hit is not None:
            yield m.start(), hit
            pos = hit
        else:
            pos = m.start() + 1


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?(?![\w:])"
)


@register_recognizer("IP_ADDRESS", priority=4)
def find_ip_addresses(text: str) -> Iterable[tuple[int, int]]:
    """IPv4 dotted quads with octets 0–255 (no leading zeros) and IPv6 addresses (validated)."""
    yield from (m.span() for m in _IPV4.finditer(text))
    for m in _IPV6_CANDIDATE.finditer(text):
        candidate = m.group()
        if not any(c in "0123456789abcdefABCDEF" for c in candidate):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield m.span()


_DIGIT_RUN = re.compile(r"(?<!\d)\d{6,}(?!\d)")


@register_recognizer("DIGIT_RUN", priority=0)
def find_digit_runs(text: str) -> Iterable[tuple[int, int]]:
    """Six or more consecutive digits (account numbers, IDs); loses to any overlapping entity."""
    return (m.span() for m in _DIGIT_RUN.finditer(text))


# --------------------------------------------------------------------------- detector
class PIIDetector:
    """Run the selected recognisers and resolve overlaps.

    Parameters
    ----------
    entities : sequence of str, optional
        Entity types to detect (keys of :data:`RECOGNIZERS`); all registered ones when ``None``.

    Notes
    -----
    Overlaps are resolved greedily: the longest span wins, ties go to the more specific recogniser
    (higher ``priority``), then to the earlier start.
    """

    def __init__(self, entities: Sequence[str] | None = None) -> None:
        self.entities = tuple(RECOGNIZERS) if entities is None else tuple(entities)
        unknown = [e for e in self.entities if e not in RECOGNIZERS]
        if unknown or not self.entities:
            raise ValueError(
                f"unknown or empty entity types {unknown}; allowed: {sorted(RECOGNIZERS)}"
            )

    def detect(self, text: str) -> list[PIISpan]:
        """All non-overlapping PII spans in ``text``, sorted by start."""
        candidates: list[tuple[int, int, Recognizer]] = []
        for name in self.entities:
            recognizer = RECOGNIZERS[name]
            candidates.extend((s, e, recognizer) for s, e in recognizer.find(text) if e > s)
        candidates.sort(key=lambda c: (-(c[1] - c[0]), -c[2].priority, c[0]))
        taken = np.zeros(len(text), dtype=bool)
        spans = []
        for start, end, recognizer in candidates:
            if not taken[start:end].any():
                taken[start:end] = True
                spans.append(PIISpan(start, end, recognizer.entity_type, text[start:end]))
        return sorted(spans, key=lambda s: s.start)


# --------------------------------------------------------------------------- token mapping
def spans_to_token_privacy(
    offsets: Sequence[tuple[int, int]] | np.ndarray, spans: Iterable[PIISpan | tuple[int, int]]
) -> np.ndarray:
    """Per-token privacy ``π`` (docs/METHODS.md §5 step 1) from character spans.

    A token gets 1.0 when its character range ``[start, end)`` overlaps any span, else 0.0; tokens
    with empty offsets (special tokens, ``(0, 0)``) get 0.

    Parameters
    ----------
    offsets : sequence of (start, end)
        Fast-tokenizer character offsets, one pair per token.
    spans : iterable of PIISpan or (start, end)
        Private character ranges.

    Returns
    -------
    np.ndarray
        ``float32`` array of shape ``(n_tokens,)``.
    """
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = off[:, 0], off[:, 1]
    privacy = np.zeros(len(off), dtype=np.float32)
    nonempty = ends > starts
    for span in spans:
        s, e = (span.start, span.end) if isinstance(span, PIISpan) else span
        privacy[nonempty & (starts < e) & (ends > s)] = 1.0
    return privacy


@runtime_checkable
class PrivacySource(Protocol):
    """Anything that gives a per-token privacy likelihood for a text and its token offsets."""

    def token_privacy(self, text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
        """``π`` for each token, ``float32`` in ``[0, 1]``, shape ``(len(offsets),)``."""
        ...


class DetectorSource:
    """:class:`PrivacySource` backed by a :class:`PIIDetector` (all recognisers by default)."""

    def __init__(self, detector: PIIDetector | None = None) -> None:
        self.detector = detector

    def token_privacy(self, text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
        detector = self.detector if self.detector is not None else PIIDetector()
        return spans_to_token_privacy(offsets, detector.detect(text))


class CanaryMaskSource:
    """:class:`PrivacySource` marking tokens that overlap any occurrence of a known canary secret.

    Used by audits (docs/METHODS.md §5 step 1, §8), where the planted secrets are known exactly.
    """

    def __init__(self, secret_substrings: Sequence[str]) -> None:
        if isinstance(secret_substrings, str):
            raise TypeError("secret_substrings must be a sequence of strings, not a single string")
        if not secret_substrings or any(not s for s in secret_substrings):
            raise ValueError("secret_substrings must be a non-empty sequence of non-empty strings")
        self.secret_substrings = tuple(secret_substrings)

    def spans(self, text: str) -> list[PIISpan]:
        """Every (possibly overlapping) occurrence of every secret, as ``CANARY`` spans."""
        found = []
        for secret in self.secret_substrings:
            pos = text.find(secret)
            while pos != -1:
                found.append(PIISpan(pos, pos + len(secret), "CANARY", secret))
                pos = text.find(secret, pos + 1)
        return found

    def token_privacy(self, text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
        return spans_to_token_privacy(offsets, self.spans(text))


class MaxSource:
    """:class:`PrivacySource` taking, per token, the largest π of several sources (e.g. the detector
    and, in audits, the known canary mask: docs/METHODS.md §5 step 1)."""

    def __init__(self, *sources: PrivacySource) -> None:
        if not sources:
            raise ValueError("MaxSource needs at least one source")
        self.sources = sources

    def token_privacy(self, text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
        return np.maximum.reduce([s.token_privacy(text, offsets) for s in self.sources])


PRIVACY_SOURCES: dict[str, Callable[..., PrivacySource]] = {
    "detector": DetectorSource,
    "canary": CanaryMaskSource,
}


def make_privacy_source(name: str, **kwargs: object) -> PrivacySource:
    """Build a registered privacy source by name (``"detector"`` or ``"canary"``)."""
    if name not in PRIVACY_SOURCES:
        raise ValueError(f"unknown privacy source {name!r}; allowed: {sorted(PRIVACY_SOURCES)}")
    return PRIVACY_SOURCES[name](**kwargs)
