"""fedveil: privacy/he — CKKS encrypted aggregation (ALGORITHMS.md §7)."""

from privacy.he.errors import REASONS, CiphertextError, KeyMaterialError
from privacy.he.keys import (
    generate_contexts,
    key_fingerprint,
    load_public_context,
    load_secret_context,
    read_manifest,
    write_keys,
)
from privacy.he.packing import (
    EncryptedPayload,
    HETimings,
    TensorSpec,
    aggregate_payloads,
    decrypt_payload,
    divide_by_votes,
    encrypt_arrays,
    payload_from_arrays,
    payload_nbytes,
    payload_to_arrays,
    specs_of,
    sum_payloads,
    validate_payload,
)
from privacy.he.profiles import DEFAULT_PROFILE, PROFILES, HEProfile, get_profile

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "REASONS",
    "CiphertextError",
    "EncryptedPayload",
    "HEProfile",
    "HETimings",
    "KeyMaterialError",
    "TensorSpec",
    "aggregate_payloads",
    "decrypt_payload",
    "divide_by_votes",
    "encrypt_arrays",
    "generate_contexts",
    "get_profile",
    "key_fingerprint",
    "load_public_context",
    "load_secret_context",
    "payload_from_arrays",
    "payload_nbytes",
    "payload_to_arrays",
    "read_manifest",
    "specs_of",
    "sum_payloads",
    "validate_payload",
    "write_keys",
]
