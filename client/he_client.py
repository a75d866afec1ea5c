"""Client side of encrypted aggregation (docs/METHODS.md §7).

Each client sends one CKKS payload holding ``w_c·θ_c/K``, ``w_c`` and ``w_c·v/K`` where

* ``w_c = n_c / S`` with ``S`` a public scale broadcast by the server (the federation's
  total record count), so that every weight is in (0, 1] and sums stay in range;
* ``K`` (``he.value_scale``) is a public constant bringing model weights into the
  profile's value range;
* ``v`` is a public pseudo-random verification block, the same for every client.

The server only adds ciphertexts. A decrypting client divides the summed update by the
summed weight, so the result is the exact weighted mean over the clients whose payloads
were accepted — drop-outs and rejected payloads do not bias it, and no plaintext scalar
multiplication is needed. Decrypting the summed ``v`` block must give back ``v``: the
difference is the measured end-to-end HE error of that aggregation.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from client.node_store import secret_context_path
from privacy.he.layout import (
    CHECK_TOLERANCE,
    NONCE_KEY,
    VERIFY_KEY,
    WEIGHT_KEY,
    is_encrypted,
    nonce_values,
    payload_arrays,
    verification_block,
)


class AggregateRefused(ValueError):
    """The decrypted aggregate fails a check only key holders can make; the node does not use it."""

def _secret_context(node: Any) -> Any:
    from privacy.he.keys import load_secret_context
    path = secret_context_path(node.extra.get("node-config", {}), node.cfg.run.run_id, node.cfg.he.key_dir)
    cache = node.extra.setdefault("he-ctx", {})
    if str(path) not in cache:
        cache[str(path)] = load_secret_context(path)
    return cache[str(path)]


def decrypt_mean(node: Any, arrays: ArrayRecord, expect: tuple[str, float] | None = None) -> dict[str, np.ndarray]:
    """Decrypt a summed payload, check it, divide by the summed weight; records timing and HE error.

    Checks (docs/METHODS.md §7, "What a decrypting client checks"), each within ``CHECK_TOLERANCE``:
    the verification block's mean is the public block (a ciphertext made under another key decrypts to
    noise: key binding that a copied header cannot fake); and, when the server says what it aggregated
    (``expect`` = its round nonce and the summed hello-declared weight of the replies it accepted), the
    summed weight equals that weight (a client that lied about its weight, or a payload scaled as a
    whole, moves it) and the nonce slots' mean equals that round's nonce values (a replayed or
    cross-round ciphertext carries another round's). A failed check raises :class:`AggregateRefused`.
    """
    from privacy.he.packing import decrypt_payload, payload_from_arrays
    t0 = time.perf_counter()
    payload = payload_from_arrays({k: v.numpy() for k, v in arrays.items()})
    summed = decrypt_payload(_secret_context(node), payload)
    weight = float(np.asarray(summed.pop(WEIGHT_KEY)).reshape(-1)[0])
    if not weight > 1e-9:
        raise AggregateRefused(f"encrypted aggregate carries no usable weight ({weight:.3g})")
    k = node.cfg.he.value_scale
    nonce_mean = np.asarray(summed.pop(NONCE_KEY), dtype=np.float64) / weight if NONCE_KEY in summed else None
    mean = {name: np.asarray(v, dtype=np.float64) * (k / weight) for name, v in summed.items()}
    if VERIFY_KEY in mean:
        error = float(np.max(np.abs(mean.pop(VERIFY_KEY) - verification_block())))
        node.extra["he-verify-error"] = error
        if not error <= CHECK_TOLERANCE:
            raise AggregateRefused(f"verification block off by {error:.3g} (> {CHECK_TOLERANCE}): a contribution "
                                   "was not made under the federation's key, or is corrupt")
    if expect is not None:
        nonce, expected_weight = expect
        if not abs(weight - expected_weight) <= CHECK_TOLERANCE:
            raise AggregateRefused(f"summed weight {weight:.6f} differs from the {expected_weight:.6f} the server "
                                   "accepted (hello-declared record counts): a contribution lied about its weight")
        off = float(np.max(np.abs(nonce_mean - nonce_values(nonce)))) if nonce_mean is not None else float("inf")
        if not off <= CHECK_TOLERANCE:
            raise AggregateRefused(f"nonce slots off by {off:.3g}: a contribution answers another round "
                                   "(replayed or cross-round ciphertext)")
    node.extra["he-decrypt-s"] = time.perf_counter() - t0
    return mean


def global_state(node: Any, request: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plaintext global weights, decrypting the encrypted aggregate when needed."""
    if not is_encrypted(request.arrays):
        return request.arrays.to_torch_state_dict()
    from distill.hf import travelling_state
    reference = travelling_state(model)
    mean = decrypt_mean(node, request.arrays, request.he_expect)
    if set(mean) != set(reference):
        raise ValueError("decrypted aggregate does not match the student's parameter names")
    return {name: torch.from_numpy(mean[name]).to(reference[name].dtype).reshape(reference[name].shape)
            for name in reference}


def encode_update(
    node: Any, request: Any, model: torch.nn.Module, n_examples: int
) -> tuple[ArrayRecord, dict[str, float]]:
    """The reply payload: plaintext weights, or the CKKS-encrypted weighted update."""
    from distill.hf import travelling_state
    state = travelling_state(model)
    if not node.cfg.he.enabled:
        return ArrayRecord(state), {}
    from privacy.he.packing import encrypt_arrays, payload_nbytes, payload_to_arrays
    he = node.cfg.he
    arrays = payload_arrays({k: v.numpy() for k, v in state.items()}, he.value_scale, he.verify_every > 0,
                            request.round_nonce)
    t0 = time.perf_counter()
    payload = encrypt_arrays(_secret_context(node), arrays, weight=min(1.0, n_examples / request.he_scale),
                             profile=he.profile)
    enc_s = time.perf_counter() - t0
    record = ArrayRecord({k: Array(v) for k, v in payload_to_arrays(payload).items()})
    metrics = {"he-encrypt-s": enc_s, "he-bytes": float(payload_nbytes(payload)),
               "he-values": float(payload.n_values)}
    if "he-decrypt-s" in node.extra:
        metrics["he-decrypt-s"] = float(node.extra["he-decrypt-s"])
    return record, metrics
