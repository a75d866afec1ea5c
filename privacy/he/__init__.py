"""fedveil: privacy/he — CKKS encrypted aggregation (docs/METHODS.md §7).

Names resolve lazily (PEP 562): importing ``privacy.he.layout`` or ``privacy.he.wire`` must not load TenSEAL.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "REASONS": "errors", "CiphertextError": "errors", "KeyMaterialError": "errors",
    "generate_contexts": "keys", "key_fingerprint": "keys", "load_public_context": "keys",
    "load_secret_context": "keys", "read_manifest": "keys", "write_keys": "keys",
    "EncryptedPayload": "packing", "HETimings": "packing", "TensorSpec": "packing",
    "aggregate_payloads": "packing", "decrypt_payload": "packing", "divide_by_votes": "packing",
    "encrypt_arrays": "packing", "payload_from_arrays": "packing", "payload_nbytes": "packing",
    "payload_to_arrays": "packing", "specs_of": "packing", "sum_payloads": "packing",
    "validate_payload": "packing",
    "DEFAULT_PROFILE": "profiles", "PROFILES": "profiles", "HEProfile": "profiles", "get_profile": "profiles",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'privacy.he' has no attribute {name!r}")
    return getattr(import_module(f"privacy.he.{_HOMES[name]}"), name)
