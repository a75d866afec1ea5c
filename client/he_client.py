"""Client side of encrypted aggregation (ALGORITHMS.md §7).

Each client sends ``Enc(w_c·θ_c)`` and ``Enc(w_c)`` with ``w_c = n_c / S`` where ``S`` is a
public scale broadcast by the server (the federation's total record count). The server only
adds ciphertexts; a decrypting client divides the summed update by the summed weight, so the
result is the exact weighted mean over the clients whose payloads were accepted — drop-outs
and rejected payloads do not bias it, and no plaintext scalar multiplication is ever needed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

COUNT_KEY = "__weight__"
HE_MARKER = "he-header"


def is_encrypted(arrays: ArrayRecord) -> bool:
    """Whether an ArrayRecord carries a CKKS payload rather than plaintext weights."""
    return HE_MARKER in arrays


def secret_context_path(node: Any) -> Path:
    """Where this node's secret context lives: node config in deployment, the run dir in simulation."""
    cfg = node.cfg
    if node.extra.get("he-secret"):
        return Path(node.extra["he-secret"])
    key_dir = Path(cfg.he.key_dir) if cfg.he.key_dir else Path(cfg.run.run_dir) / cfg.run.run_id / "keys"
    return key_dir / "secret.ctx"


def _secret_context(node: Any) -> Any:
    from privacy.he.keys import load_secret_context
    path = secret_context_path(node)
    cache = node.extra.setdefault("he-ctx", {})
    if str(path) not in cache:
        cache[str(path)] = load_secret_context(path)
    return cache[str(path)]


def global_state(node: Any, request: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plaintext global weights, decrypting the encrypted aggregate when needed."""
    if not is_encrypted(request.arrays):
        return request.arrays.to_torch_state_dict()  # type: ignore[no-any-return]
    from privacy.he.packing import decrypt_payload, payload_from_arrays
    t0 = time.perf_counter()
    payload = payload_from_arrays({k: v.numpy() for k, v in request.arrays.items()})
    summed = decrypt_payload(_secret_context(node), payload)
    weight = float(np.asarray(summed.pop(COUNT_KEY)).reshape(-1)[0])
    if not weight > 0:
        raise ValueError("encrypted aggregate carries no weight (no client contributed)")
    reference = model.state_dict()
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float64) / weight).to(reference[k].dtype)
             for k, v in summed.items()}
    node.extra["he-decrypt-s"] = time.perf_counter() - t0
    return state


def encode_update(node: Any, request: Any, model: torch.nn.Module, n_examples: int) -> tuple[ArrayRecord, dict[str, float]]:
    """The reply payload: plaintext weights, or the CKKS-encrypted weighted update."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not node.cfg.he.enabled:
        return ArrayRecord(state), {}
    from flwr.app import Array

    from privacy.he.packing import encrypt_arrays, payload_nbytes, payload_to_arrays
    arrays = {k: v.numpy().astype(np.float32) for k, v in state.items()}
    arrays[COUNT_KEY] = np.ones(1, dtype=np.float64)
    t0 = time.perf_counter()
    payload = encrypt_arrays(_secret_context(node), arrays, weight=n_examples / request.he_scale,
                             profile=node.cfg.he.profile)
    enc_s = time.perf_counter() - t0
    record = ArrayRecord({k: Array(v) for k, v in payload_to_arrays(payload).items()})
    return record, {"he-encrypt-s": enc_s, "he-bytes": float(payload_nbytes(payload)),
                    "he-decrypt-s": float(node.extra.get("he-decrypt-s", 0.0))}
