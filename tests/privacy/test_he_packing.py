"""Encrypted aggregation equals plaintext aggregation (docs/METHODS.md §7)."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from privacy.he import (
    PROFILES,
    EncryptedPayload,
    HETimings,
    decrypt_payload,
    divide_by_votes,
    encrypt_arrays,
    generate_contexts,
    get_profile,
    payload_from_arrays,
    payload_nbytes,
    payload_to_arrays,
    specs_of,
    sum_payloads,
    validate_payload,
)

N_CLIENTS = 10
TOL = 1e-4


@pytest.fixture(scope="module")
def contexts() -> dict[str, tuple[ts.Context, ts.Context]]:
    """(secret, public) per profile; seeded profiles share their base profile's keys."""
    out: dict[str, tuple[ts.Context, ts.Context]] = {}
    for base in ("compact", "conservative"):
        secret, public = generate_contexts(base)
        out[base] = (ts.context_from(secret), ts.context_from(public))
    for name, profile in PROFILES.items():
        if name not in out:
            base = next(b for b in ("compact", "conservative") if PROFILES[b].poly_modulus_degree
                        == profile.poly_modulus_degree and PROFILES[b].coeff_mod_bit_sizes
                        == profile.coeff_mod_bit_sizes)
            out[name] = out[base]
    return out


def _state_dict(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "embed.weight": rng.uniform(-1, 1, (50, 100)).astype(np.float32),  # spans 3 ciphertexts at N=4096
        "embed.bias": rng.uniform(-1, 1, (100,)),
        "head.weight": rng.uniform(-1, 1, (3, 5, 7)).astype(np.float32),
        "head.scale": np.asarray(rng.uniform(-1, 1), dtype=np.float64),
    }


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_he_weighted_mean_equals_plaintext(profile: str, contexts: dict[str, tuple[ts.Context, ts.Context]]) -> None:
    secret, public = contexts[profile]
    rng = np.random.default_rng(7)
    updates = [_state_dict(rng) for _ in range(N_CLIENTS)]
    n = rng.integers(5, 500, N_CLIENTS).astype(np.float64)
    weights = n / n.sum()
    timings = HETimings()

    payloads = [encrypt_arrays(secret, u, float(w), profile, timings=timings) for u, w in zip(updates, weights)]
    specs = specs_of(updates[0])
    for pl in payloads:
        validate_payload(public, pl, specs)
    total = sum_payloads(public, payloads, timings=timings)
    result = decrypt_payload(secret, total, timings=timings)

    assert list(result) == list(updates[0])
    for name, ref in updates[0].items():
        expected = sum(w * u[name].astype(np.float64) for u, w in zip(updates, weights))
        assert result[name].shape == ref.shape and result[name].dtype == ref.dtype
        np.testing.assert_allclose(result[name].astype(np.float64), expected, atol=TOL, rtol=0)
    assert timings.encrypt_s > 0 and timings.aggregate_s > 0 and timings.decrypt_s > 0


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_soft_labels_and_votes_divide_after_decryption(
    profile: str, contexts: dict[str, tuple[ts.Context, ts.Context]]
) -> None:
    secret, public = contexts[profile]
    rng = np.random.default_rng(11)
    n_rows, n_classes = 40, 6
    votes = (rng.random((N_CLIENTS, n_rows)) < 0.7).astype(np.float32)
    votes[:, :2] = 0.0  # nobody labelled these rows
    votes[:3, 2:] = 1.0  # every other row has at least three voters
    logits = rng.normal(size=(N_CLIENTS, n_rows, n_classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = (probs * votes[..., None]).astype(np.float32)
    weight = 1.0 / N_CLIENTS  # keeps the sums within value_bound; cancels in the division

    payloads = [
        encrypt_arrays(secret, {"labels": labels[c], "votes": votes[c]}, weight, profile) for c in range(N_CLIENTS)
    ]
    out = decrypt_payload(secret, sum_payloads(public, payloads))

    np.testing.assert_allclose(out["labels"], labels.sum(0, dtype=np.float64) * weight, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["votes"], votes.sum(0, dtype=np.float64) * weight, atol=TOL, rtol=0)
    mean = divide_by_votes(out["labels"], out["votes"], min_votes=0.5 * weight)
    expected = labels.sum(0, dtype=np.float64)[2:] / votes.sum(0, dtype=np.float64)[2:, None]
    assert np.isnan(mean[:2]).all()
    np.testing.assert_allclose(mean[2:], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_values_are_packed_into_full_slot_ciphertexts(
    profile: str, contexts: dict[str, tuple[ts.Context, ts.Context]]
) -> None:
    secret, _ = contexts[profile]
    p = get_profile(profile)
    values = {"x": np.random.default_rng(0).uniform(-1, 1, 2 * p.slots + 1)}
    payload = encrypt_arrays(secret, values, 0.5, profile)
    assert len(payload.chunks) == 3 and payload.n_values == 2 * p.slots + 1
    full = encrypt_arrays(secret, {"x": values["x"][: 2 * p.slots]}, 0.5, profile)
    per_value = payload_nbytes(full) / full.n_values
    bound = {"compact": 17.0, "compact-seeded": 8.6}.get(profile, 64.0)  # 64 = uncompressed size at N=8192
    assert per_value < bound


def test_transport_round_trip(contexts: dict[str, tuple[ts.Context, ts.Context]]) -> None:
    secret, public = contexts["compact"]
    state = _state_dict(np.random.default_rng(3))
    payload = encrypt_arrays(secret, state, 0.25, "compact")
    arrays = payload_to_arrays(payload)
    assert all(a.dtype == np.uint8 and a.ndim == 1 for a in arrays.values())
    back = payload_from_arrays({k: np.array(v) for k, v in arrays.items()})
    assert back == payload
    validate_payload(public, back, specs_of(state), max_bytes=payload_nbytes(payload))


def test_seeded_upload_sums_with_ordinary_ciphertexts(contexts: dict[str, tuple[ts.Context, ts.Context]]) -> None:
    secret, public = contexts["compact"]
    x = {"x": np.linspace(-1, 1, 300)}
    mixed = [encrypt_arrays(secret, x, 0.5, "compact"), encrypt_arrays(secret, x, 0.5, "compact-seeded")]
    out = decrypt_payload(secret, sum_payloads(public, mixed))
    np.testing.assert_allclose(out["x"], x["x"], atol=TOL, rtol=0)


def test_bad_inputs_are_rejected(contexts: dict[str, tuple[ts.Context, ts.Context]]) -> None:
    secret, public = contexts["compact"]
    ok = {"x": np.zeros(4, dtype=np.float32)}
    for weight in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="weight"):
            encrypt_arrays(secret, ok, weight, "compact")
    with pytest.raises(ValueError, match="dtype"):
        encrypt_arrays(secret, {"m": np.ones(3, dtype=np.int64)}, 0.5, "compact")
    with pytest.raises(ValueError, match="NaN"):
        encrypt_arrays(secret, {"x": np.array([0.0, np.nan])}, 0.5, "compact")
    with pytest.raises(ValueError, match="value_bound"):
        encrypt_arrays(secret, {"x": np.array([0.5, 3.0])}, 0.5, "compact")
    with pytest.raises(ValueError, match="does not match profile"):
        encrypt_arrays(secret, ok, 0.5, "conservative")
    with pytest.raises(ValueError, match="secret"):
        encrypt_arrays(public, ok, 0.5, "compact-seeded")
    with pytest.raises(ValueError, match="unknown HE profile"):
        encrypt_arrays(secret, ok, 0.5, "bogus")
    clipped = encrypt_arrays(secret, {"x": np.array([0.5, 3.0, -9.0])}, 0.5, "compact", clip=True)
    np.testing.assert_allclose(decrypt_payload(secret, clipped)["x"], [0.25, 0.5, -0.5], atol=TOL)


def test_empty_and_scalar_arrays(contexts: dict[str, tuple[ts.Context, ts.Context]]) -> None:
    secret, public = contexts["compact"]
    arrays = {"empty": np.zeros((0, 3), dtype=np.float32), "s": np.asarray(0.5)}
    payload = encrypt_arrays(secret, arrays, 1.0, "compact")
    assert isinstance(payload, EncryptedPayload) and payload.n_values == 1
    out = decrypt_payload(secret, sum_payloads(public, [payload]))
    assert out["empty"].shape == (0, 3) and out["s"].shape == ()
    assert abs(float(out["s"]) - 0.5) < TOL
