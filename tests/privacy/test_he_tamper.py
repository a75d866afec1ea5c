"""Malformed, truncated or wrong-context client ciphertexts are rejected with a reason (docs/METHODS.md §7)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal as ts

from privacy.he import (
    REASONS,
    CiphertextError,
    EncryptedPayload,
    TensorSpec,
    aggregate_payloads,
    decrypt_payload,
    encrypt_arrays,
    generate_contexts,
    key_fingerprint,
    payload_from_arrays,
    payload_nbytes,
    payload_to_arrays,
    specs_of,
    sum_payloads,
    validate_payload,
)
from privacy.he.wire import CHUNKS_KEY, HEADER_KEY

Keys = dict[str, tuple[ts.Context, ts.Context]]
State = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Server key set, a second key set with the same N, and one with a different N."""
    out = {}
    for label, profile in (("ours", "compact"), ("same_n", "compact"), ("other_n", "conservative")):
        secret, public = generate_contexts(profile)
        out[label] = (ts.context_from(secret), ts.context_from(public))
    return out


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"w": rng.uniform(-1, 1, (60, 70)).astype(np.float32), "b": rng.uniform(-1, 1, 70)}


@pytest.fixture(scope="module")
def good(keys: Keys, state: State) -> EncryptedPayload:
    return encrypt_arrays(keys["ours"][0], state, 0.3, "compact")


def _reject(public: ts.Context, payload: EncryptedPayload, specs: tuple[TensorSpec, ...], *reasons: str,
            max_bytes: int | None = None) -> CiphertextError:
    with pytest.raises(CiphertextError) as info:
        validate_payload(public, payload, specs, max_bytes=max_bytes)
    assert info.value.reason in REASONS
    assert info.value.reason in reasons, str(info.value)
    return info.value


def _with_chunk(payload: EncryptedPayload, index: int, chunk: bytes) -> EncryptedPayload:
    chunks = list(payload.chunks)
    chunks[index] = chunk
    return dataclasses.replace(payload, chunks=tuple(chunks))


def test_untampered_payload_passes(keys: Keys, state: State, good: EncryptedPayload) -> None:
    validate_payload(keys["ours"][1], good, specs_of(state), max_bytes=payload_nbytes(good))
    assert len(good.chunks) == 3


def test_truncated_chunk(keys: Keys, state: State, good: EncryptedPayload) -> None:
    public = keys["ours"][1]
    for cut in (len(good.chunks[0]) - 3, len(good.chunks[0]) // 2, 40, 5):
        _reject(public, _with_chunk(good, 0, good.chunks[0][:cut]), specs_of(state), "truncated")


def test_random_garbage_chunk(keys: Keys, state: State, good: EncryptedPayload) -> None:
    junk = np.random.default_rng(1).integers(0, 256, len(good.chunks[1]), dtype=np.uint8).tobytes()
    _reject(keys["ours"][1], _with_chunk(good, 1, junk), specs_of(state), "garbled", "truncated")
    _reject(keys["ours"][1], _with_chunk(good, 1, b""), specs_of(state), "garbled")


def test_every_flipped_header_byte_is_caught(good: EncryptedPayload) -> None:
    arrays = payload_to_arrays(good)
    header = arrays[HEADER_KEY]
    for i in range(header.size):
        flipped = header.copy()
        flipped[i] ^= 0x04
        with pytest.raises(CiphertextError) as info:
            payload_from_arrays({HEADER_KEY: flipped, CHUNKS_KEY: arrays[CHUNKS_KEY]})
        assert info.value.reason in ("malformed", "corrupt", "truncated"), i


def test_flipped_ciphertext_byte_is_caught_in_transit(good: EncryptedPayload) -> None:
    arrays = payload_to_arrays(good)
    body = arrays[CHUNKS_KEY].copy()
    body[body.size // 2] ^= 0xFF
    with pytest.raises(CiphertextError, match="corrupt"):
        payload_from_arrays({HEADER_KEY: arrays[HEADER_KEY], CHUNKS_KEY: body})


def test_malformed_transport_arrays(good: EncryptedPayload) -> None:
    arrays = payload_to_arrays(good)
    cases = [
        {HEADER_KEY: arrays[HEADER_KEY]},
        {HEADER_KEY: arrays[HEADER_KEY].astype(np.float32), CHUNKS_KEY: arrays[CHUNKS_KEY]},
        {HEADER_KEY: arrays[HEADER_KEY].reshape(1, -1), CHUNKS_KEY: arrays[CHUNKS_KEY]},
        {HEADER_KEY: np.frombuffer(b"[1, 2]", dtype=np.uint8), CHUNKS_KEY: arrays[CHUNKS_KEY]},
        {HEADER_KEY: np.frombuffer(b"\xff\xfe", dtype=np.uint8), CHUNKS_KEY: arrays[CHUNKS_KEY]},
    ]
    for case in cases:
        with pytest.raises(CiphertextError, match="malformed"):
            payload_from_arrays(case)
    with pytest.raises(CiphertextError, match="truncated"):
        payload_from_arrays({HEADER_KEY: arrays[HEADER_KEY], CHUNKS_KEY: arrays[CHUNKS_KEY][:-10]})


def test_payload_from_a_key_set_with_different_n(keys: Keys, state: State) -> None:
    foreign = encrypt_arrays(keys["other_n"][0], state, 0.3, "conservative")
    _reject(keys["ours"][1], foreign, specs_of(state), "wrong_params", "wrong_key")
    # Relabelled as ours, the bytes still fail: SEAL refuses ciphertexts of other parameters.
    for n, bits in ((2048, [36, 18]), (4096, [34, 30])):
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=bits)
        chunk = ts.ckks_vector(ctx, [0.1] * 100, 2.0**30).serialize()
        forged = EncryptedPayload((chunk,), (TensorSpec("x", (100,), "float64"),), 100, "compact",
                                  key_fingerprint(keys["ours"][1]))
        _reject(keys["ours"][1], forged, forged.specs, "wrong_params")


def test_payload_from_a_key_set_with_same_n_is_caught_by_fingerprint(keys: Keys, state: State) -> None:
    secret_other = keys["same_n"][0]
    foreign = encrypt_arrays(secret_other, state, 0.3, "compact")
    _reject(keys["ours"][1], foreign, specs_of(state), "wrong_key")
    with pytest.raises(CiphertextError, match="wrong_key"):
        decrypt_payload(keys["ours"][0], foreign)
    # Why the fingerprint is needed: SEAL accepts the foreign bytes, which decrypt to noise.
    relabelled = dataclasses.replace(foreign, fingerprint=key_fingerprint(keys["ours"][1]))
    validate_payload(keys["ours"][1], relabelled, specs_of(state))
    noise = decrypt_payload(keys["ours"][0], relabelled)["b"]
    assert np.abs(noise - 0.3 * state["b"]).max() > 1.0


def test_wrong_chunk_count(keys: Keys, state: State, good: EncryptedPayload) -> None:
    public = keys["ours"][1]
    _reject(public, dataclasses.replace(good, chunks=good.chunks[:-1]), specs_of(state), "wrong_length")
    _reject(public, dataclasses.replace(good, chunks=(*good.chunks, good.chunks[0])), specs_of(state), "wrong_length")
    # A full chunk where the short last one belongs.
    _reject(public, _with_chunk(good, 2, good.chunks[0]), specs_of(state), "wrong_length")


def test_wrong_spec(keys: Keys, state: State, good: EncryptedPayload) -> None:
    public, specs = keys["ours"][1], specs_of(state)
    renamed = (dataclasses.replace(specs[0], name="other"), *specs[1:])
    _reject(public, good, renamed, "spec_mismatch")
    _reject(public, good, tuple(reversed(specs)), "spec_mismatch")
    _reject(public, good, (dataclasses.replace(specs[0], dtype="float64"), *specs[1:]), "spec_mismatch")
    _reject(public, dataclasses.replace(good, n_values=good.n_values - 1), specs, "wrong_length")
    reshaped = (dataclasses.replace(specs[0], shape=(70, 60)), *specs[1:])
    _reject(public, dataclasses.replace(good, specs=reshaped), specs, "spec_mismatch")


def test_wrong_scale(keys: Keys) -> None:
    secret, public = keys["ours"]
    chunk = ts.ckks_vector(secret, [0.1] * 10, 2.0**25).serialize()
    forged = EncryptedPayload((chunk,), (TensorSpec("x", (10,), "float64"),), 10, "compact", key_fingerprint(public))
    _reject(public, forged, forged.specs, "wrong_params")


def test_over_max_bytes(keys: Keys, state: State, good: EncryptedPayload) -> None:
    _reject(keys["ours"][1], good, specs_of(state), "oversized", max_bytes=payload_nbytes(good) - 1)
    huge = _with_chunk(good, 0, good.chunks[0] * 3)
    _reject(keys["ours"][1], huge, specs_of(state), "oversized")


def test_sum_refuses_a_bad_payload(keys: Keys, state: State, good: EncryptedPayload) -> None:
    public = keys["ours"][1]
    bad = _with_chunk(good, 1, good.chunks[1][:100])
    with pytest.raises(CiphertextError, match="truncated"):
        sum_payloads(public, [good, bad])
    other_specs = encrypt_arrays(keys["ours"][0], {"w": state["w"], "c": state["b"]}, 0.3, "compact")
    with pytest.raises(CiphertextError, match="spec_mismatch"):
        sum_payloads(public, [good, other_specs])


def test_aggregate_drops_bad_clients_and_keeps_the_rest(keys: Keys, state: State) -> None:
    secret, public = keys["ours"]
    specs = specs_of(state)
    weights = [0.1, 0.2, 0.3, 0.15, 0.25]
    clean = [encrypt_arrays(secret, state, w, "compact") for w in weights]
    sent: list[object] = list(clean)
    # Passes every framing check but SEAL refuses its last chunk, after two chunks were added: taken back.
    other_params = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[34, 30])
    last = ts.ckks_vector(other_params, [0.5] * 174, 2.0**30).serialize()
    sent[0] = _with_chunk(clean[0], 2, last)
    sent[2] = encrypt_arrays(keys["same_n"][0], state, 0.3, "compact")
    sent[3] = "not a payload"
    total, rejected = aggregate_payloads(public, sent, specs)  # type: ignore[arg-type]
    assert {k: e.reason for k, e in rejected.items()} == {0: "wrong_params", 2: "wrong_key", 3: "malformed"}
    assert total is not None
    out = decrypt_payload(secret, total)
    for name, ref in state.items():
        expected = (weights[1] + weights[4]) * ref.astype(np.float64)
        np.testing.assert_allclose(out[name].astype(np.float64), expected, atol=1e-4, rtol=0)
    nothing, all_bad = aggregate_payloads(public, sent[2:4], specs)  # type: ignore[arg-type]
    assert nothing is None and set(all_bad) == {0, 1}


def test_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown CiphertextError reason"):
        CiphertextError("because")
