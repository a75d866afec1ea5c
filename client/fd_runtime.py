"""Client side of the digits task: soft-label federated distillation (docs/METHODS.md §5–§7).

Message protocol (``data.task = "digits"``; every field is checked before use)

``query.hello``  → ConfigRecord "hello": partition-id, num-examples, device.
``train``        ← "arrays": the aggregate of the previous round — empty in round 1 or for
                   ``local``; plaintext ``label-sums`` (P, C) + ``vote-counts`` (P,); a CKKS
                   payload of the same two arrays (each client weighted 1/K); or, for ``fedavg``,
                   the global MLP weights — and "config" (server-round, he-clients = K).
                 → "arrays": this client's soft labels + 0/1 vote mask (plaintext or one CKKS
                   payload; MLP weights for ``fedavg``; empty for ``local``), "metrics", "privacy".
``evaluate``     ← "config" (and the global weights for ``fedavg``);
                 → "metrics": accuracy-global (fixed test set), accuracy-own (test images of
                   the client's classes).

State kept in ``Context.state`` between rounds: the classifier (``fd-model``), the fitted
KMeans filter (``fd-filter``) and whether warm-up is done; the DP ledger is the node's own file
(:mod:`client.node_store`).
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.node_store import load_ledger, run_node_dir, save_ledger, secret_context_path
from privacy.dp import PrivacyBudgetExhausted
from privacy.dp.randomness import noise_source, reproducible_key
from client.fd_train import DigitsNode, dp_plan, fit_filter, load_node, train_classifier
from client.protocol import ProtocolError, echo_nonce, require_config, require_int
from distill.classifier import MLPClassifier, accuracy, make_classifier, predict_logits
from distill.fd import SwingLike, SwingParams, aggregate_soft_labels, client_soft_labels
from distill.kmeans_filter import KMeansDensityFilter

SOFT_LABEL_MODES = ("fd", "fd-kmeans")
MetricValue = int | float | list[int] | list[float]
LABELS, VOTES = "labels", "votes"
SUMS, COUNTS = "label-sums", "vote-counts"


# ----------------------------------------------------------------------------- state
def _model_from_state(node: DigitsNode, context: Context) -> MLPClassifier | None:
    if "fd-model" not in context.state.array_records:
        return None
    model = make_classifier(node.cfg.fd.hidden, seed=0)
    model.load_state_dict(context.state.array_records["fd-model"].to_torch_state_dict())
    return model


def _model_from_message(node: DigitsNode, arrays: ArrayRecord) -> MLPClassifier:
    """FedAvg: the global weights, checked against this node's architecture before loading."""
    model = make_classifier(node.cfg.fd.hidden, seed=0)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in arrays.items()}
    if got != expected:
        raise ProtocolError(f"global weights do not match the digits MLP (hidden={node.cfg.fd.hidden}): "
                            f"got {sorted(got.items())[:4]}, expected {sorted(expected.items())[:4]}")
    state = arrays.to_torch_state_dict()
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise ProtocolError("global weights contain NaN or inf")
    model.load_state_dict(state)
    return model


def _filter_from_state(context: Context) -> KMeansDensityFilter | None:
    if "fd-filter" not in context.state.config_records:
        return None
    state = json.loads(str(context.state.config_records["fd-filter"]["json"]))
    return KMeansDensityFilter().load_state_dict(state)


# ----------------------------------------------------------------------------- HE
@lru_cache(maxsize=4)
def _secret_context(path: str) -> Any:
    from privacy.he.keys import load_secret_context
    return load_secret_context(path)


def _secret_path(node: DigitsNode, context: Context) -> Path:
    return secret_context_path(context.node_config, node.cfg.run.run_id, node.cfg.he.key_dir)


def _he_clients(conf: ConfigRecord) -> float:
    """K, the public number of clients: each upload is weighted 1/K so every sum stays within [0, 1]."""
    value = conf.get("he-clients")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise ProtocolError(f"config field 'he-clients' must be a number >= 1 under HE, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- aggregate in
def clean_targets(targets: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Clip the tiny negative entries CKKS noise leaves and renormalise rows to sum to 1."""
    t = np.clip(targets, 0.0, None)
    sums = t.sum(axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = np.where(sums > 0, t / np.maximum(sums, 1e-12), 1.0 / t.shape[1])
    return out


def received_targets(node: DigitsNode, context: Context, arrays: ArrayRecord, conf: ConfigRecord
                     ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], float]:
    """Mean soft labels of the voted proxy samples, their indices, and decryption seconds (§6, §7)."""
    P, C = node.task.X_proxy.shape[0], node.task.n_classes
    empty = (np.zeros((0, C)), np.zeros(0, np.int64), 0.0)
    if len(arrays) == 0:
        return empty
    from privacy.he.wire import HEADER_KEY
    t0 = time.perf_counter()
    if HEADER_KEY in arrays:
        if not node.cfg.he.enabled:
            raise ProtocolError("received an encrypted aggregate but he.enabled is false")
        from privacy.he.packing import decrypt_payload, divide_by_votes, payload_from_arrays
        payload = payload_from_arrays({k: v.numpy() for k, v in arrays.items()})
        summed = decrypt_payload(_secret_context(str(_secret_path(node, context))), payload)
        label_sums, votes = summed.get(LABELS), summed.get(VOTES)
        if label_sums is None or votes is None or label_sums.shape != (P, C) or votes.shape != (P,):
            raise ProtocolError(f"encrypted aggregate must hold {LABELS!r} ({P}, {C}) and {VOTES!r} ({P},)")
        # Each vote was weighted 1/K; half the smallest possible non-empty sum separates 0 from >= 1 vote.
        mean = divide_by_votes(label_sums, votes, min_votes=0.5 / _he_clients(conf))
        kept = np.flatnonzero(~np.isnan(mean[:, 0])).astype(np.int64)
        return clean_targets(mean[kept]), kept, time.perf_counter() - t0
    if node.cfg.he.enabled:
        raise ProtocolError("received a plaintext aggregate but he.enabled is true")
    if set(arrays.keys()) != {SUMS, COUNTS}:
        raise ProtocolError(f"aggregate must hold exactly {SUMS!r} and {COUNTS!r}, got {sorted(arrays.keys())}")
    S, n = arrays[SUMS].numpy().astype(np.float64), arrays[COUNTS].numpy().astype(np.float64)
    if S.shape != (P, C) or n.shape != (P,):
        raise ProtocolError(f"aggregate shapes {S.shape} / {n.shape} differ from the proxy set ({P}, {C}) / ({P},)")
    if not (np.all(np.isfinite(S)) and np.all(np.isfinite(n))) or S.min() < 0 or n.min() < 0:
        raise ProtocolError("aggregate holds negative, NaN or infinite values")
    targets, kept = aggregate_soft_labels(S, n)
    return clean_targets(targets), kept, 0.0


# ----------------------------------------------------------------------------- upload out
def soft_label_upload(node: DigitsNode, model: torch.nn.Module, filt: KMeansDensityFilter | None,
                      rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                                         dict[str, float]]:
    """Soft labels on the accepted proxy samples + vote mask, and filter statistics (§5, §6)."""
    cfg, X_proxy = node.cfg, node.task.X_proxy
    accept = filt.in_distribution(X_proxy) if cfg.fd.mode == "fd-kmeans" and filt is not None \
        else np.ones(len(X_proxy), dtype=bool)
    swing: SwingLike | None = None
    privacy = None
    if cfg.distill.swing and filt is not None:
        d = cfg.distill
        # A frozen dataclass has read-only fields, which mypy does not match to SwingLike's attributes.
        swing = cast(SwingLike, SwingParams(tau0=d.tau0, tau_max=d.tau_max, s0=d.noise_s0, s1=d.noise_s1))
        privacy = filt.privacy_likelihood(X_proxy)
    labels, votes = client_soft_labels(predict_logits(model, X_proxy), accept, cfg.fd.temperature,
                                       privacy=privacy, swing=swing, rng=rng)
    # Measurement only: the proxy labels never enter training, they score the filter's decision.
    own = np.isin(node.task.y_proxy, node.data.classes)
    tp = float(np.sum(accept & own))
    stats = {"votes": float(accept.sum()), "accepted-share": float(accept.mean()),
             "filter-recall": tp / float(own.sum()) if own.any() else 0.0}
    if accept.any():
        stats["filter-precision"] = tp / float(accept.sum())
    return labels, votes, stats


def encode_upload(node: DigitsNode, context: Context, conf: ConfigRecord, arrays: dict[str, np.ndarray],
                  server_round: int) -> tuple[ArrayRecord, dict[str, float]]:
    """Plaintext ArrayRecord, or one CKKS payload with every value weighted 1/K (docs/METHODS.md §7)."""
    if not node.cfg.he.enabled:
        return ArrayRecord({k: Array(v) for k, v in arrays.items()}), {}
    from privacy.he.packing import HETimings, decrypt_payload, encrypt_arrays, payload_nbytes, payload_to_arrays
    ctx = _secret_context(str(_secret_path(node, context)))
    weight = 1.0 / _he_clients(conf)
    timings = HETimings()
    payload = encrypt_arrays(ctx, arrays, weight=weight, profile=node.cfg.he.profile, timings=timings)
    metrics = {"he-encrypt-s": timings.encrypt_s, "he-bytes": float(payload_nbytes(payload))}
    every = node.cfg.he.verify_every
    if every and server_round % every == 0:
        # Round-trip error of this client's own upload, in label units (the aggregate's own error
        # is this times at most K, minus cancellations).
        back = decrypt_payload(ctx, payload)
        metrics["he-max-abs-error"] = max(float(np.max(np.abs(back[k] / weight - v), initial=0.0))
                                          for k, v in arrays.items())
    return ArrayRecord({k: Array(v) for k, v in payload_to_arrays(payload).items()}), metrics


# ----------------------------------------------------------------------------- handlers
def handle_hello(msg: Message, context: Context) -> Message:
    """Partition id and private-record count of this node."""
    node = load_node(context)
    info = ConfigRecord({"partition-id": node.partition_id, "num-examples": len(node.data.y), "device": "cpu"})
    return Message(RecordDict({"hello": info}), reply_to=msg)


def _round_seed(node: DigitsNode, server_round: int) -> int:
    text = f"digits/{node.cfg.run.seed}/{node.partition_id}/{server_round}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def handle_train(msg: Message, context: Context) -> Message:
    """One round: distil from the received aggregate, then share soft labels + votes (or weights)."""
    t0 = time.perf_counter()
    node = load_node(context)
    cfg, mode = node.cfg, node.cfg.fd.mode
    conf = require_config(msg.content, "config")
    server_round = require_int(conf, "server-round", lo=1)
    if "arrays" not in msg.content.array_records:
        raise ProtocolError("request has no ArrayRecord 'arrays'")
    arrays = msg.content.array_records["arrays"]
    if cfg.he.enabled and mode in SOFT_LABEL_MODES:
        _he_clients(conf)  # checked before any work: the upload cannot be encrypted without it
    seed = _round_seed(node, server_round)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    first = "fd-state" not in context.state.config_records

    targets, kept, decrypt_s = np.zeros((0, node.task.n_classes)), np.zeros(0, np.int64), 0.0
    if mode == "fedavg":
        model = _model_from_message(node, arrays)
    else:
        stored = _model_from_state(node, context)
        model = stored if stored is not None else make_classifier(cfg.fd.hidden,
                                                                  seed=cfg.run.seed * 1000 + node.partition_id)
        if mode in SOFT_LABEL_MODES:
            targets, kept, decrypt_s = received_targets(node, context, arrays, conf)

    directory = run_node_dir(cfg.run.run_id, context.run_id, node.partition_id)
    ledger = load_ledger(directory, cfg.privacy.accountant)  # the node's own (client.node_store)
    plan = dp_plan(cfg, len(node.data.y))
    epochs = cfg.fd.warmup_epochs if first else cfg.fd.local_epochs
    proxy = (node.task.X_proxy[kept], targets) if len(kept) else None
    # DP noise and Poisson batches: node-local OS entropy unless the test switch asks (docs/METHODS.md §2).
    noise = noise_source(reproducible=reproducible_key("digits", cfg.run.seed, node.partition_id, server_round)
                         if cfg.privacy.reproducible_noise else None)
    result = train_classifier(model, node, epochs, plan, ledger, proxy, rng, noise, server_round)

    save_ledger(directory, ledger)  # spent: recorded on the node before the upload leaves it
    context.state.config_records["fd-state"] = ConfigRecord({"last-round": server_round})
    metrics: dict[str, MetricValue] = {"num-examples": len(node.data.y), "partition-id": node.partition_id,
                                       "proxy-kept": len(kept), "epochs": epochs, **result.metrics}
    he_metrics: dict[str, float] = {}
    if mode == "fedavg":
        upload = ArrayRecord(model.state_dict())
    else:
        context.state.array_records["fd-model"] = ArrayRecord(model.state_dict())
        upload = ArrayRecord()
    if mode in SOFT_LABEL_MODES:
        filt = _filter_from_state(context)
        if filt is None and (mode == "fd-kmeans" or cfg.distill.swing):
            filt = fit_filter(node)
            context.state.config_records["fd-filter"] = ConfigRecord({"json": json.dumps(filt.state_dict())})
        labels, votes, stats = soft_label_upload(node, model, filt, rng)
        upload, he_metrics = encode_upload(node, context, conf, {LABELS: labels.astype(np.float32),
                                                                 VOTES: votes.astype(np.float32)}, server_round)
        metrics.update(stats)
        if cfg.he.enabled:
            he_metrics["he-decrypt-s"] = decrypt_s
    metrics.update(he_metrics)
    metrics["seconds"] = time.perf_counter() - t0
    privacy = ConfigRecord({"dp": plan is not None, "accountant": cfg.privacy.accountant,
                            "grad-sample-mode": result.mode})
    return Message(RecordDict({"arrays": upload, "metrics": MetricRecord(metrics), "privacy": privacy,
                               **echo_nonce(conf)}), reply_to=msg)


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the model this client would use now, on the fixed test set and on its own classes."""
    node = load_node(context)
    conf = require_config(msg.content, "config")
    require_int(conf, "server-round", lo=1)
    if node.cfg.fd.mode == "fedavg":
        if "arrays" not in msg.content.array_records:
            raise ProtocolError("fedavg evaluation needs the global weights in ArrayRecord 'arrays'")
        model: MLPClassifier | None = _model_from_message(node, msg.content.array_records["arrays"])
    else:
        model = _model_from_state(node, context)
        if model is None:
            raise ProtocolError("this node has no trained classifier yet (it took part in no train round)")
    assert model is not None
    metrics = MetricRecord({"num-examples": len(node.data.y_test), "partition-id": node.partition_id,
                            "accuracy-global": accuracy(model, node.task.X_test, node.task.y_test),
                            "accuracy-own": accuracy(model, node.data.X_test, node.data.y_test)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


__all__ = [
    "PrivacyBudgetExhausted",
    "clean_targets",
    "encode_upload",
    "handle_evaluate",
    "handle_hello",
    "handle_train",
    "received_targets",
    "soft_label_upload",
]
