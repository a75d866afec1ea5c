"""Server-side checks on client replies, before anything from them is used.

A reply that fails a check is rejected with a reason; the round goes on with the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fedveil.config import Config

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


NONCE_RECORD, NONCE_KEY = "binding", "round-nonce"


@dataclass(frozen=True)
class ReplyPolicy:
    """What the server already knows about a correct train reply, fixed before round 1.

    Attributes
    ----------
    dp : the run's ``privacy.enabled``; a reply must say the same.
    epsilon_budget : ``privacy.target_epsilon``; a reported ε above it is a lie or a bug.
    delta_max : the configured δ, or the largest δ the client's default can pick (1e-5).
    local_steps : DP-SGD steps planned per node and round; ``None`` where a round's step count is not
        fixed in advance (the digits task counts epochs), then only monotonicity is checked.
    """

    dp: bool
    epsilon_budget: float
    delta_max: float
    local_steps: int | None = None

    @classmethod
    def of(cls, cfg: Config, local_steps: int | None = None) -> ReplyPolicy:
        """The policy of a run configuration (δ = 0 lets clients pick 1/N, never above 1e-5)."""
        p = cfg.privacy
        return cls(dp=p.enabled, epsilon_budget=p.target_epsilon, delta_max=p.delta or 1e-5,
                   local_steps=local_steps)


@dataclass
class NodeRecord:
    """One registered node: fixed at hello (client, weight), updated by each accepted reply (ledger)."""

    client: int
    num_examples: int
    steps: int = 0
    epsilon: float = 0.0
    # DP steps the node took beyond the rounds the store recorded (a reply lost before a resume): its
    # later replies may count them, so the "at most" bound grows by as much (docs/METHODS.md §2).
    surplus: int = 0


def check_nonce(msg: Message, nonce: str | None) -> None:
    """The reply must echo this round's nonce: a reply replayed from another round carries another one."""
    if nonce is None:
        return
    record = msg.content.config_records.get(NONCE_RECORD)
    got = record.get(NONCE_KEY) if record is not None else None
    if got != nonce:
        raise RejectedReply("reply is not bound to this round (round nonce missing or different: "
                            "a replayed or cross-round reply)")


def _num(m: MetricRecord, key: str) -> float:
    value = m[key]
    if isinstance(value, list):
        raise RejectedReply(f"metric {key!r} must be a number, got a list")
    return float(value)


def check_ledger(msg: Message, m: MetricRecord, policy: ReplyPolicy, node: NodeRecord | None,
                 server_round: int) -> None:
    """Identity and ledger fields against the registration and the plan (docs/METHODS.md §2).

    The node's identity is Flower's ``src_node_id`` mapped through the hello registration; the
    reply's ``partition-id`` must agree with it. With DP on: 0 ≤ ε ≤ budget and ε never below
    the node's last accepted ε, 0 < δ ≤ δ_max, σ > 0, 0 < q ≤ 1, and the cumulative step count
    advanced by at least the planned steps (more is possible after a dropped reply) but never
    beyond ``server_round`` rounds' worth.

    Raises
    ------
    RejectedReply
        Naming the field, its value and what was allowed.
    """
    if node is None:
        raise RejectedReply(f"node {msg.metadata.src_node_id} did not register at hello")
    pid = m["partition-id"]
    if isinstance(pid, list) or float(pid) != node.client:
        raise RejectedReply(f"partition-id {pid!r} differs from the client this node registered as ({node.client})")
    priv = msg.content.config_records.get("privacy")
    dp = priv.get("dp") if priv is not None else None
    if dp is not policy.dp:
        raise RejectedReply(f"privacy.dp = {dp!r} differs from the run's setting ({policy.dp})")
    if not policy.dp:
        return
    eps, delta = _num(m, "epsilon"), _num(m, "delta")
    sigma, q, steps = _num(m, "noise-multiplier"), _num(m, "sample-rate"), _num(m, "steps")
    if not 0.0 <= eps <= policy.epsilon_budget * (1 + 1e-9):
        raise RejectedReply(f"epsilon = {eps} is outside [0, budget {policy.epsilon_budget}]")
    if eps < node.epsilon - 1e-9:
        raise RejectedReply(f"epsilon = {eps} is below this node's previous {node.epsilon} (ε never decreases)")
    if not 0.0 < delta <= policy.delta_max:
        raise RejectedReply(f"delta = {delta} is outside (0, {policy.delta_max}]")
    if not sigma > 0.0:
        raise RejectedReply(f"noise-multiplier = {sigma} must be positive with DP on")
    if not 0.0 < q <= 1.0:
        raise RejectedReply(f"sample-rate = {q} is outside (0, 1]")
    if steps != int(steps):
        raise RejectedReply(f"steps = {steps} is not an integer")
    planned = policy.local_steps or 0  # without a fixed plan: at least never backwards
    most = server_round * policy.local_steps + node.surplus if policy.local_steps else math.inf
    if not node.steps + planned <= steps <= most:
        raise RejectedReply(f"steps = {int(steps)} is not what was planned (at least {node.steps + planned}"
                            + (f", at most {int(most)})" if math.isfinite(most) else ")"))
    if policy.local_steps and "round-steps" in m and _num(m, "round-steps") != policy.local_steps:
        raise RejectedReply(f"round-steps = {m['round-steps']} differs from the planned {policy.local_steps}")
