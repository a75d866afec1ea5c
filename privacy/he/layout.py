"""The layout of one encrypted update, shared by the clients that build it and the server that checks its shape.

A payload holds ``w_c·θ_c/K``, the weight ``w_c`` itself and ``w_c·v/K`` for a public verification block ``v``
(docs/METHODS.md §7). Only numpy and the wire constants are imported, so the server and a ClientApp that never
encrypts can read this without loading TenSEAL.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from privacy.he.wire import HEADER_KEY

WEIGHT_KEY = "__weight__"
VERIFY_KEY = "__verify__"
VERIFY_SIZE = 2048


def is_encrypted(arrays: ArrayRecord) -> bool:
    """Whether an ArrayRecord carries a CKKS payload rather than plaintext weights."""
    return HEADER_KEY in arrays


def verification_block(seed: int = 20261128) -> np.ndarray:
    """The public block every client adds; its decrypted mean must equal itself."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, VERIFY_SIZE)


def payload_arrays(state: dict[str, np.ndarray], value_scale: float, verify: bool) -> dict[str, np.ndarray]:
    """What is encrypted (before weighting): scaled weights, a unit weight, the verification block."""
    arrays = {k: (np.asarray(v, dtype=np.float64) / value_scale).astype(v.dtype) for k, v in state.items()}
    arrays[WEIGHT_KEY] = np.ones(1, dtype=np.float64)
    if verify:
        arrays[VERIFY_KEY] = verification_block() / value_scale
    return arrays
