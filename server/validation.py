"""Server-side checks on client replies, before anything from them is used.

A reply that fails a check is rejected with a reason; the round goes on with the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

REQUIRED_TRAIN_METRICS = ("num-examples", "epsilon", "delta", "noise-multiplier", "sample-rate", "steps",
                          "partition-id")


class RejectedReply(ValueError):
    """A reply that cannot be used; ``str(exc)`` is the logged reason."""


@dataclass(frozen=True)
class ArraySpec:
    """Expected name → (shape, dtype) of the global model."""

    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, arrays: ArrayRecord) -> ArraySpec:
        return cls({k: tuple(v.shape) for k, v in arrays.items()})


def check_metrics(msg: Message, required: tuple[str, ...] = REQUIRED_TRAIN_METRICS) -> MetricRecord:
    """The reply's 'metrics' record: present, required keys present, every value finite."""
    content = msg.content
    if "metrics" not in content.metric_records:
        raise RejectedReply("reply has no MetricRecord 'metrics'")
    metrics = content.metric_records["metrics"]
    for key in required:
        if key not in metrics:
            raise RejectedReply(f"metric {key!r} is missing")
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(not math.isfinite(float(v)) for v in values):
            raise RejectedReply(f"metric {key!r} is not finite")
    n = metrics["num-examples"]
    if not isinstance(n, int) or n <= 0:
        raise RejectedReply(f"num-examples must be a positive integer, got {n!r}")
    return metrics


def check_plain_arrays(msg: Message, spec: ArraySpec, max_bytes: int) -> dict[str, np.ndarray]:
    """Plaintext weights: the expected names and shapes, finite values, under the size limit."""
    content = msg.content
    if "arrays" not in content.array_records:
        raise RejectedReply("reply has no ArrayRecord 'arrays'")
    record = content.array_records["arrays"]
    size = record.count_bytes()
    if size > max_bytes:
        raise RejectedReply(f"payload of {size} bytes exceeds the limit of {max_bytes} bytes")
    names = set(record.keys())
    if names != set(spec.shapes):
        missing, extra = sorted(set(spec.shapes) - names), sorted(names - set(spec.shapes))
        raise RejectedReply(f"array names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})")
    out = {}
    for name, arr in record.items():
        value = arr.numpy()
        if tuple(value.shape) != spec.shapes[name]:
            raise RejectedReply(f"array {name!r} has shape {tuple(value.shape)}, expected {spec.shapes[name]}")
        if not np.issubdtype(value.dtype, np.floating):
            raise RejectedReply(f"array {name!r} has dtype {value.dtype}, expected a float type")
        if not np.all(np.isfinite(value)):
            raise RejectedReply(f"array {name!r} contains NaN or inf")
        out[name] = value
    return out


def weighted_mean(updates: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """FedAvg: Σ w_c θ_c / Σ w_c, accumulated in float64 and cast back to each array's dtype."""
    total = sum(w for _, w in updates)
    first = updates[0][0]
    acc = {k: np.zeros(v.shape, dtype=np.float64) for k, v in first.items()}
    for arrays, w in updates:
        for k, v in arrays.items():
            acc[k] += v.astype(np.float64) * (w / total)
    return {k: acc[k].astype(first[k].dtype) for k in acc}
