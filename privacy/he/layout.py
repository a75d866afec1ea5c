"""The layout of one encrypted update, shared by the clients that build it and the server that checks its shape.

A payload holds ``w_c·θ_c/K``, the weight ``w_c`` itself, ``w_c·v/K`` for a public verification block ``v`` and
``w_c·u(nonce)`` for the round's nonce (docs/METHODS.md §7, "What a decrypting client checks"). Only numpy,
hashlib and the wire constants are imported, so the server and a ClientApp that never encrypts can read this
without loading TenSEAL.
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import ArrayRecord

from privacy.he.wire import HEADER_KEY

WEIGHT_KEY = "__weight__"
VERIFY_KEY = "__verify__"
NONCE_KEY = "__nonce__"
VERIFY_SIZE = 2048
NONCE_SLOTS = 8
#: Largest deviation a decrypting client accepts in the summed weight, the nonce slots and the verification
#: block (after dividing by the summed weight). CKKS error at the built-in profiles is below 1e-5 (README
#: Results); a replayed, re-weighted or wrong-key contribution moves these values by far more.
CHECK_TOLERANCE = 1e-3


def is_encrypted(arrays: ArrayRecord) -> bool:
    """Whether an ArrayRecord carries a CKKS payload rather than plaintext weights."""
    return HEADER_KEY in arrays


def verification_block(seed: int = 20261128) -> np.ndarray:
    """The public block every client adds; its decrypted mean must equal itself."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, VERIFY_SIZE)


def nonce_values(nonce: str) -> np.ndarray:
    """``NONCE_SLOTS`` values in [0.5, 1) derived from a round nonce (SHA-256): what the nonce slots carry."""
    digest = hashlib.sha256(f"fedveil-he-nonce/{nonce}".encode()).digest()
    raw = np.frombuffer(digest[: 2 * NONCE_SLOTS], dtype=np.uint16).astype(np.float64)
    return 0.5 + raw / 2**17


def payload_arrays(state: dict[str, np.ndarray], value_scale: float, verify: bool,
                   nonce: str = "") -> dict[str, np.ndarray]:
    """What is encrypted (before weighting): scaled weights, a unit weight, the verification block and
    the nonce slots of the round the update answers (the same shapes for every nonce)."""
    arrays = {k: (np.asarray(v, dtype=np.float64) / value_scale).astype(v.dtype) for k, v in state.items()}
    arrays[WEIGHT_KEY] = np.ones(1, dtype=np.float64)
    if verify:
        arrays[VERIFY_KEY] = verification_block() / value_scale
    arrays[NONCE_KEY] = nonce_values(nonce)
    return arrays
