"""Packing named arrays into CKKS ciphertexts and adding them (docs/METHODS.md §7).

Clients flatten their arrays in the given order, multiply by their weight
``w_c = n_c / sum(n)`` *before* encryption and pack the values into full-slot
ciphertexts (``N/2`` values each). The server only adds ciphertexts: TenSEAL's
plaintext-scalar multiply rescales inexactly, so the weighting stays on the clients.
Soft labels travel as label sums plus vote counts; the division happens after
decryption (:func:`divide_by_votes`).

Each chunk is one TenSEAL ``CKKSVector`` serialization holding exactly one SEAL
ciphertext. A payload carries the key-set fingerprint (:func:`keys.key_fingerprint`)
so the server can reject ciphertexts made under another key set with the same
parameters, which SEAL cannot detect: such bytes deserialize fine and only decrypt
to noise. Other parameters (``N``, moduli, scale) fail the structural checks or
SEAL's own validation when a chunk is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from privacy.he.errors import CiphertextError
from privacy.he.keys import context_shape, key_fingerprint, private_tempdir, profile_matches, seeded_encryptor
from privacy.he.profiles import DEFAULT_PROFILE, HEProfile, get_profile, resolve_profile
from privacy.he.wire import (
    ALLOWED_DTYPES,
    EncryptedPayload,
    TensorSpec,
    ckks_vector_proto,
    inspect_chunk,
    payload_from_arrays,
    payload_nbytes,
    payload_to_arrays,
)

# Payload types and the ArrayRecord encoding live in wire.py; re-exported here for callers.
__all__ = [
    "EncryptedPayload",
    "HETimings",
    "TensorSpec",
    "aggregate_payloads",
    "decrypt_payload",
    "divide_by_votes",
    "encrypt_arrays",
    "expected_chunks",
    "payload_from_arrays",
    "payload_nbytes",
    "payload_to_arrays",
    "specs_of",
    "sum_payloads",
    "validate_payload",
]

@dataclass
class HETimings:
    """Wall-clock seconds spent in each HE stage; functions add to it when passed one."""

    encrypt_s: float = 0.0
    validate_s: float = 0.0
    aggregate_s: float = 0.0
    decrypt_s: float = 0.0


@contextmanager
def _timed(timings: HETimings | None, field: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            setattr(timings, field, getattr(timings, field) + time.perf_counter() - start)


def specs_of(arrays: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
    """Specs of a mapping of arrays, in iteration order (what the server expects back)."""
    out = []
    for name, value in arrays.items():
        arr = np.asarray(value)
        if not isinstance(name, str):
            raise TypeError(f"array names must be str, got {type(name).__name__}")
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise ValueError(
                f"array {name!r} has dtype {arr.dtype.name}; allowed: {ALLOWED_DTYPES} "
                "(cast masks/counts to float32: weighted sums are not integers)"
            )
        out.append(TensorSpec(name, tuple(int(d) for d in arr.shape), arr.dtype.name))
    return tuple(out)


def expected_chunks(n_values: int, profile: HEProfile) -> int:
    """Number of full-slot ciphertexts needed for ``n_values`` values."""
    return -(-n_values // profile.slots)


def _chunk_sizes(n_values: int, profile: HEProfile) -> list[int]:
    full, rest = divmod(n_values, profile.slots)
    return [profile.slots] * full + ([rest] if rest else [])


def _check_context(ctx: ts.Context, profile: HEProfile) -> None:
    if not profile_matches(ctx, profile):
        n, key_bits, _ = context_shape(ctx)
        raise ValueError(
            f"context (N={n}, {key_bits} coefficient bits) does not match profile {profile.name!r} "
            f"(N={profile.poly_modulus_degree}, {profile.key_bits} bits)"
        )


def encrypt_arrays(
    ctx: ts.Context,
    arrays: Mapping[str, Any],
    weight: float,
    profile: HEProfile | str = DEFAULT_PROFILE,
    *,
    clip: bool = False,
    timings: HETimings | None = None,
) -> EncryptedPayload:
    """Encrypt ``weight * x`` for the concatenation ``x`` of ``arrays`` (docs/METHODS.md §7).

    Parameters
    ----------
    ctx : tenseal.Context
        The clients' secret context (a public one works for non-seeded profiles).
    arrays : mapping of str to array
        Float arrays, flattened in iteration order.
    weight : float
        Pre-scaling weight in ``(0, 1]``, e.g. ``n_c / sum(n)``; the weights of one
        aggregation must sum to at most one so the sum stays within ``value_bound``.
    profile : HEProfile or str
        Must match ``ctx``; ``seeded_symmetric`` profiles need the secret context.
    clip : bool
        Clip values to ``[-value_bound, value_bound]`` instead of raising.
    timings : HETimings, optional
        ``encrypt_s`` is increased by the time spent here.
    """
    p = resolve_profile(profile)
    _check_context(ctx, p)
    if not (isinstance(weight, (int, float, np.floating)) and 0.0 < float(weight) <= 1.0):
        raise ValueError(f"weight must be in (0, 1] (pre-scale by n_c/sum(n), docs/METHODS.md §7); got {weight!r}")
    specs = specs_of(arrays)
    with _timed(timings, "encrypt_s"):
        parts = [np.asarray(arrays[s.name], dtype=np.float64).ravel() for s in specs]
        flat = np.concatenate(parts) if parts else np.zeros(0)
        if not np.all(np.isfinite(flat)):
            raise ValueError("arrays contain NaN or infinite values")
        peak = float(np.max(np.abs(flat))) if flat.size else 0.0
        if peak > p.value_bound:
            if not clip:
                raise ValueError(
                    f"max |value| {peak:.4g} exceeds profile {p.name!r} value_bound {p.value_bound:g}; "
                    "rescale, pass clip=True, or use the 'conservative' profile"
                )
            np.clip(flat, -p.value_bound, p.value_bound, out=flat)
        flat *= float(weight)
        chunks = _encrypt_flat(ctx, flat, p)
    return EncryptedPayload(chunks, specs, int(flat.size), p.name, key_fingerprint(ctx))


def _encrypt_flat(ctx: ts.Context, flat: np.ndarray, p: HEProfile) -> tuple[bytes, ...]:
    starts = range(0, flat.size, p.slots)
    if not p.seeded_symmetric:
        return tuple(ts.ckks_vector(ctx, flat[i : i + p.slots].tolist(), p.scale).serialize() for i in starts)
    if not ctx.is_private():
        raise ValueError(f"profile {p.name!r} encrypts with the secret key; pass the secret context")
    encryptor = seeded_encryptor(ctx)
    with private_tempdir() as scratch:
        out = []
        for i in starts:
            seg = flat[i : i + p.slots]
            out.append(ckks_vector_proto(seg.size, encryptor.encrypt_seeded(seg.tolist(), p.scale, scratch), p.scale))
    return tuple(out)


def _load_chunk(ctx: ts.Context, chunk: bytes, size: int, p: HEProfile, index: int) -> ts.CKKSVector:
    inspect_chunk(chunk, size, p, index)
    try:
        vec = ts.ckks_vector_from(ctx, chunk)
    except RuntimeError as exc:  # SEAL: "ciphertext data is invalid" = not valid for these parameters
        raise CiphertextError("wrong_params", f"chunk {index} rejected by SEAL for this context: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise CiphertextError("garbled", f"chunk {index} could not be parsed: {exc}") from None
    cts = vec.ciphertext()
    if vec.size() != size or len(cts) != 1 or cts[0].size() != 2:
        raise CiphertextError("wrong_length", f"chunk {index} holds {vec.size()} values, expected {size}")
    if list(cts[0].parms_id()) != list(ctx.data.seal_context().first_parms_id()):
        raise CiphertextError("wrong_params", f"chunk {index} is not at the context's top level")
    return vec


def _check_structure(ctx: ts.Context, payload: EncryptedPayload, expected: HEProfile | None) -> HEProfile:
    if not isinstance(payload, EncryptedPayload):
        raise CiphertextError("malformed", f"expected EncryptedPayload, got {type(payload).__name__}")
    try:
        p = get_profile(payload.profile)
    except ValueError as exc:
        raise CiphertextError("wrong_params", str(exc)) from None
    crypto = (p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.global_scale_bits)
    if expected is not None and crypto != (
        expected.poly_modulus_degree, expected.coeff_mod_bit_sizes, expected.global_scale_bits
    ):
        raise CiphertextError("wrong_params", f"payload profile {p.name!r} is not compatible with {expected.name!r}")
    if not profile_matches(ctx, p):
        raise CiphertextError("wrong_params", f"payload profile {p.name!r} does not match the server context")
    if payload.fingerprint != key_fingerprint(ctx):
        raise CiphertextError("wrong_key", "key fingerprint differs from this federation's key set")
    if payload.n_values != sum(s.size for s in payload.specs):
        raise CiphertextError("wrong_length", f"n_values {payload.n_values} disagrees with the specs")
    if len(payload.chunks) != expected_chunks(payload.n_values, p):
        raise CiphertextError(
            "wrong_length", f"{len(payload.chunks)} chunks for {payload.n_values} values "
            f"(expected {expected_chunks(payload.n_values, p)})"
        )
    return p


def _precheck(
    ctx: ts.Context, payload: Any, specs: Sequence[TensorSpec], max_bytes: int | None, expected: HEProfile | None
) -> HEProfile:
    """Every check that needs no SEAL deserialization; returns the payload's profile."""
    if not isinstance(payload, EncryptedPayload):
        raise CiphertextError("malformed", f"expected EncryptedPayload, got {type(payload).__name__}")
    if max_bytes is not None and payload_nbytes(payload) > max_bytes:
        raise CiphertextError("oversized", f"{payload_nbytes(payload)} ciphertext bytes > max_bytes={max_bytes}")
    p = _check_structure(ctx, payload, expected)
    if tuple(payload.specs) != tuple(specs):
        diff = next((f"{a} != {b}" for a, b in zip(payload.specs, specs) if a != b), "tensor count differs")
        raise CiphertextError("spec_mismatch", diff)
    for i, (chunk, size) in enumerate(zip(payload.chunks, _chunk_sizes(payload.n_values, p))):
        inspect_chunk(chunk, size, p, i)
    return p


def validate_payload(
    public_ctx: ts.Context,
    payload: EncryptedPayload,
    expected_specs: Sequence[TensorSpec],
    max_bytes: int | None = None,
    *,
    expected_profile: HEProfile | str | None = None,
    timings: HETimings | None = None,
) -> None:
    """Reject a client's payload unless every chunk is a well-formed ciphertext for this key set.

    Raises
    ------
    CiphertextError
        With ``reason`` one of ``oversized``, ``malformed``, ``truncated``, ``garbled``,
        ``wrong_key``, ``wrong_params``, ``wrong_length``, ``spec_mismatch``.
    """
    with _timed(timings, "validate_s"):
        expected = resolve_profile(expected_profile) if expected_profile is not None else None
        p = _precheck(public_ctx, payload, expected_specs, max_bytes, expected)
        for i, (chunk, size) in enumerate(zip(payload.chunks, _chunk_sizes(payload.n_values, p))):
            _load_chunk(public_ctx, chunk, size, p, i)


def aggregate_payloads(
    public_ctx: ts.Context,
    payloads: Sequence[EncryptedPayload],
    expected_specs: Sequence[TensorSpec],
    max_bytes: int | None = None,
    *,
    expected_profile: HEProfile | str | None = None,
    timings: HETimings | None = None,
) -> tuple[EncryptedPayload | None, dict[int, CiphertextError]]:
    """Validate and add client payloads in one pass (each chunk is deserialized once).

    Same checks as :func:`validate_payload`; rejected payloads are left out of the
    sum and returned by index with their error, so the round can go on without them
    (docs/METHODS.md §7). Additions (and, to take back a client rejected half-way,
    subtractions) of ciphertexts only. Returns ``(None, rejected)`` if none is valid.
    """
    rejected: dict[int, CiphertextError] = {}
    with _timed(timings, "aggregate_s"):
        p = resolve_profile(expected_profile) if expected_profile is not None else None
        live: list[int] = []
        for k, payload in enumerate(payloads):
            try:
                p = _precheck(public_ctx, payload, expected_specs, max_bytes, p)
                live.append(k)
            except CiphertextError as exc:
                rejected[k] = exc
        if p is None or not live:
            return None, rejected
        first = payloads[live[0]]
        sizes = _chunk_sizes(first.n_values, p)
        sums: list[ts.CKKSVector] = []
        for i, size in enumerate(sizes):
            acc: ts.CKKSVector | None = None
            for k in list(live):
                try:
                    vec = _load_chunk(public_ctx, payloads[k].chunks[i], size, p, i)
                except CiphertextError as exc:
                    rejected[k] = exc
                    live.remove(k)
                    for j in range(i):
                        sums[j].sub_(_load_chunk(public_ctx, payloads[k].chunks[j], sizes[j], p, j))
                    continue
                if acc is None:
                    acc = vec
                else:
                    acc.add_(vec)
            if acc is None:
                return None, rejected
            sums.append(acc)
        if not live:
            return None, rejected
        base = payloads[live[0]]
        chunks = tuple(vec.serialize() for vec in sums)
    return EncryptedPayload(chunks, base.specs, base.n_values, base.profile, base.fingerprint), rejected


def sum_payloads(
    public_ctx: ts.Context, payloads: Sequence[EncryptedPayload], *, timings: HETimings | None = None
) -> EncryptedPayload:
    """Add payloads ciphertext by ciphertext; additions only, no scalar multiplication (docs/METHODS.md §7).

    Strict form of :func:`aggregate_payloads`: all payloads must share the first
    one's specs, profile parameters and key set, else :class:`CiphertextError`.
    """
    if not payloads:
        raise ValueError("sum_payloads needs at least one payload")
    if not isinstance(payloads[0], EncryptedPayload):
        raise CiphertextError("malformed", f"payload 0 is {type(payloads[0]).__name__}")
    total, rejected = aggregate_payloads(public_ctx, payloads, payloads[0].specs, timings=timings)
    if rejected:
        k = min(rejected)
        raise CiphertextError(rejected[k].reason, f"payload {k}: {rejected[k].detail}")
    assert total is not None
    return total


def decrypt_payload(
    secret_ctx: ts.Context, payload: EncryptedPayload, *, timings: HETimings | None = None
) -> dict[str, np.ndarray]:
    """Decrypt a (summed) payload back to named arrays with their shapes and dtypes."""
    if not secret_ctx.is_private():
        raise ValueError("decrypt_payload needs the clients' secret context")
    with _timed(timings, "decrypt_s"):
        p = _check_structure(secret_ctx, payload, None)
        values = [
            np.asarray(_load_chunk(secret_ctx, chunk, size, p, i).decrypt(), dtype=np.float64)
            for i, (chunk, size) in enumerate(zip(payload.chunks, _chunk_sizes(payload.n_values, p)))
        ]
        flat = np.concatenate(values) if values else np.zeros(0)
        out: dict[str, np.ndarray] = {}
        offset = 0
        for spec in payload.specs:
            out[spec.name] = flat[offset : offset + spec.size].reshape(spec.shape).astype(spec.dtype)
            offset += spec.size
    return out


def divide_by_votes(label_sum: np.ndarray, vote_sum: np.ndarray, min_votes: float) -> np.ndarray:
    """Soft-label mean ``sum_c w_c y_c / sum_c w_c m_c`` per row, after decryption (docs/METHODS.md §7).

    Rows whose vote sum is below ``min_votes`` (choose half the smallest client
    weight: CKKS noise keeps empty rows near, not at, zero) come back as NaN.
    """
    votes = np.asarray(vote_sum, dtype=np.float64)
    labels = np.asarray(label_sum, dtype=np.float64)
    ok = votes >= min_votes
    out = np.full(labels.shape, np.nan)
    out[ok] = labels[ok] / votes[ok].reshape((-1,) + (1,) * (labels.ndim - 1))
    return out


