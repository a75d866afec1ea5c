"""Regex/checksum PII recognisers, overlap resolution, token mapping and privacy sources."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from privacy.pii import (
    PRIVACY_SOURCES,
    RECOGNIZERS,
    CanaryMaskSource,
    DetectorSource,
    MaxSource,
    PIIDetector,
    PIISpan,
    PrivacySource,
    iban_valid,
    luhn_valid,
    make_privacy_source,
    register_recognizer,
    spans_to_token_privacy,
)


def found(entity: str, text: str) -> list[str]:
    return [s.text for s in PIIDetector([entity]).detect(text)]


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")
    assert not luhn_valid("4111-1111")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33") and not iban_valid("GB82")


def test_email() -> None:
    assert found("EMAIL_ADDRESS", "write to Uta.Kortig+x@mail.jourrapide.com.") == ["Uta.Kortig+x@mail.jourrapide.com"]
    assert found("EMAIL_ADDRESS", "a@b, name@host, @handle, user@site.c0m") == []


@pytest.mark.parametrize(
    "phone",
    [
        "(579)888-3058", "905-674-3793", "259.735.7502x459", "+1-903-140-4508x769", "+46 (0)8 928 571 38",
        "+41 (0)96 471 07 95", "+447700677662", "0490 75 40 81", "03.93.92.16.85", "(71) 4233-6306",
        "001-518-640-0854", "0393 1144137",
    ],
)
def test_phone_positive(phone: str) -> None:
    assert found("PHONE_NUMBER", f"call me at {phone} today") == [phone]


@pytest.mark.parametrize("text", ["on 2001-04-16 we met", "on 12.05.2023 we met", "zip 75534-030 here",
                                  "1.5 3", "+12 34"])
def test_phone_negative(text: str) -> None:
    assert found("PHONE_NUMBER", text) == []


def test_phone_two_groups_need_trunk_zero_or_context() -> None:
    assert found("PHONE_NUMBER", "room 467 3395") == []
    assert found("PHONE_NUMBER", "my phone is 467 3395") == ["467 3395"]


def test_credit_card() -> None:
    assert found("CREDIT_CARD", "card 4111 1111 1111 1111 exp") == ["4111 1111 1111 1111"]
    assert found("CREDIT_CARD", "card 4111-1111-1111-1111.") == ["4111-1111-1111-1111"]
    assert found("CREDIT_CARD", "amex 378282246310005 and 4454794511390933") == ["378282246310005", "4454794511390933"]
    assert found("CREDIT_CARD", "cvv 123 4111 1111 1111 1111") == ["4111 1111 1111 1111"]
    # Luhn-invalid, too short, too long, wrong industry digit, glued to letters: rejected.
    for text in ["4111111111111112", "411111111111", "41111111111111111111", "7111111111111114", "x4111111111111111"]:
        assert found("CREDIT_CARD", text) == [], text


def test_us_ssn() -> None:
    assert found("US_SSN", "SSN: 460-89-9847.") == ["460-89-9847"]
    for bad in ["000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000", "1234-56-7890",
                "460 89 9847"]:
        assert found("US_SSN", f"ssn {bad}") == [], bad


def test_iban() -> None:
    assert found("IBAN_CODE", "IBAN GB82 WEST 1234 5698 7654 32 is mine") == ["GB82 WEST 1234 5698 7654 32"]
    assert found("IBAN_CODE", "send to gb42nawi04454264788619.") == ["gb42nawi04454264788619"]
    assert found("IBAN_CODE", "bad GB82 WEST 1234 5698 7654 33 here") == []
    assert found("IBAN_CODE", "AB12 is not an iban") == []


def test_ip_addresses() -> None:
    text = ("hosts 192.168.1.254, 10.0.0.1. and 6e40:4041:c617:e898:c11:40d2:c669:2eb4 "
            "or ::1 or fe80::1ff:fe23:4567:890a")
    assert found("IP_ADDRESS", text) == [
        "192.168.1.254", "10.0.0.1", "6e40:4041:c617:e898:c11:40d2:c669:2eb4", "::1", "fe80::1ff:fe23:4567:890a",
    ]
    assert found("IP_ADDRESS", "256.1.1.1 1.2.3 1.2.3.4.5 at 12:30:45 or std::vector") == []


def test_digit_run_and_overlap_resolution() -> None:
    det = PIIDetector()
    text = "id 1234567 card 4111111111111111 bad 4111111111111112 ssn 460-89-9847 ip 10.1.2.3 n 12345"
    spans = det.detect(text)
    assert [(s.entity_type, s.text) for s in spans] == [
        ("DIGIT_RUN", "1234567"),
        ("CREDIT_CARD", "4111111111111111"),
        ("DIGIT_RUN", "4111111111111112"),
        ("US_SSN", "460-89-9847"),
        ("IP_ADDRESS", "10.1.2.3"),
    ]
    for s in spans:
        assert text[s.start : s.end] == s.text
    # Longest wins: the email swallows the digits inside it.
    assert [s.entity_type for s in det.detect("mail 123456789@example.org")] == ["EMAIL_ADDRESS"]


def test_detector_entity_validation_and_registry() -> None:
    with pytest.raises(ValueError, match="allowed"):
        PIIDetector(["EMAIL_ADDRESS", "PASSPORT"])
    assert PIIDetector().entities == tuple(RECOGNIZERS)
    with pytest.raises(ValueError, match="already registered"):
        register_recognizer("EMAIL_ADDRESS")(lambda text: [])
    try:
        register_recognizer("TEST_WORD", priority=3)(lambda text: [(i, i + 6) for i in [text.find("secret")] if i >= 0])
        assert PIIDetector(["TEST_WORD"]).detect("my secret!") == [PIISpan(3, 9, "TEST_WORD", "secret")]
    finally:
        RECOGNIZERS.pop("TEST_WORD", None)


def test_spans_to_token_privacy() -> None:
    offsets = [(0, 0), (0, 3), (3, 8), (8, 9), (9, 12), (12, 12)]
    spans = [PIISpan(4, 9, "X", "abcde")]
    np.testing.assert_array_equal(spans_to_token_privacy(offsets, spans), [0, 0, 1, 1, 0, 0])
    out = spans_to_token_privacy(offsets, [(8, 9), (11, 20)])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 1, 0])
    assert spans_to_token_privacy([], spans).shape == (0,)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = [
        "My card number is 4111 1111 1111 1111 and my email is jane.doe@example.com.",
        "Call me at +1-903-140-4508 or write to john@mail.org tomorrow.",
        "The server at 192.168.1.254 answered; my SSN is 460-89-9847.",
        "Nothing private in this sentence at all, just words and more words.",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def test_offsets_with_bytelevel_bpe(tokenizer: Tokenizer) -> None:
    text = "Hi, my card is 4111 1111 1111 1111 and mail jane.doe@example.com ok"
    enc = tokenizer.encode(text)
    pi = DetectorSource().token_privacy(text, enc.offsets)
    assert pi.shape == (len(enc.ids),) and pi.dtype == np.float32
    card = (text.index("4111"), text.index("1111 and") + 4)
    mail = (text.index("jane"), text.index(".com") + 4)
    for (s, e), p in zip(enc.offsets, pi, strict=True):
        inside = any(s < b and e > a for a, b in (card, mail))
        assert p == (1.0 if inside else 0.0), (text[s:e], p)
    private_text = "".join(text[s:e] for (s, e), p in zip(enc.offsets, pi, strict=True) if p)
    assert "4111" in private_text and "example" in private_text and "Hi" not in private_text
    assert pi.sum() > 0 and pi[0] == 0.0


def test_canary_source(tokenizer: Tokenizer) -> None:
    secret = "8842-1937"
    text = f"the code is {secret}; again {secret}. other 8842"
    enc = tokenizer.encode(text)
    source = CanaryMaskSource([secret, "zzz-not-present"])
    spans = source.spans(text)
    assert [(s.start, s.end) for s in spans] == [(12, 21), (29, 38)]
    pi = source.token_privacy(text, enc.offsets)
    for (s, e), p in zip(enc.offsets, pi, strict=True):
        inside = any(s < b and e > a for a, b in [(12, 21), (29, 38)])
        assert p == float(inside)
    assert CanaryMaskSource(["aa"]).spans("aaa") == [PIISpan(0, 2, "CANARY", "aa"), PIISpan(1, 3, "CANARY", "aa")]
    with pytest.raises(ValueError):
        CanaryMaskSource([])
    with pytest.raises(TypeError):
        CanaryMaskSource("secret")


def test_max_source_takes_the_larger_privacy_per_token(tokenizer: Tokenizer) -> None:
    text = "ssn 123-45-6789 and account 3 8 1 9"
    enc = tokenizer.encode(text)
    detector, canary = DetectorSource(PIIDetector(["US_SSN"])), CanaryMaskSource(["3 8 1 9"])
    both = MaxSource(detector, canary).token_privacy(text, enc.offsets)
    d, c = detector.token_privacy(text, enc.offsets), canary.token_privacy(text, enc.offsets)
    assert d.sum() > 0 and c.sum() > 0 and not np.any((d > 0) & (c > 0))  # disjoint spans
    np.testing.assert_array_equal(both, np.maximum(d, c))
    with pytest.raises(ValueError):
        MaxSource()


def test_source_registry() -> None:
    assert set(PRIVACY_SOURCES) == {"detector", "canary"}
    det = make_privacy_source("detector", detector=PIIDetector(["US_SSN"]))
    can = make_privacy_source("canary", secret_substrings=["abc"])
    assert isinstance(det, PrivacySource) and isinstance(can, PrivacySource)
    np.testing.assert_array_equal(det.token_privacy("ssn 460-89-9847", [(0, 3), (4, 15)]), [0.0, 1.0])
    with pytest.raises(ValueError, match="allowed"):
        make_privacy_source("presidio")
