"""SoftLabelFD: federated distillation on a public proxy set, one Flower strategy for the digits task.

docs/METHODS.md §6: each client uploads soft labels on the proxy samples it accepts plus a 0/1
vote mask; the server sums both per proxy sample and sends the two sums back; clients divide
(samples nobody voted for are dropped there).  Under HE (§7) each client encrypts labels and
votes as one CKKS payload pre-scaled by ``1/K`` (K = the public number of clients), the server
only adds ciphertexts, and the clients decrypt and divide — the ``1/K`` cancels.

The same class runs the baselines of the §6 protocol so that every mode is recorded alike:
``local`` (nothing is shared; rounds only collect metrics) and ``fedavg`` (weighted mean of the
MLP weights, as :class:`PrivateFedAvg`).  Accuracy comes from the evaluate phase; votes,
accepted share, filter precision/recall, ε and HE costs from the train replies.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from distill.fd import sum_client_uploads
from fedveil.store import HERow, MetricRow
from server.strategies.fedavg import PrivateFedAvg, RoundFailed, RoundLog
from server.validation import ArraySpec, RejectedReply, check_metrics

log = logging.getLogger("fedveil.server")

MODES = ("local", "fedavg", "fd", "fd-kmeans")
LABELS, VOTES = "labels", "votes"
SUMS, COUNTS = "label-sums", "vote-counts"
FD_CLIENT_METRICS = ("votes", "accepted-share", "filter-precision", "filter-recall", "proxy-kept", "epochs")
EVAL_METRICS = ("accuracy-global", "accuracy-own", "partition-id")


def _num(m: MetricRecord, key: str) -> float:
    """A scalar metric (``check_metrics`` already refused non-finite values)."""
    value = m[key]
    if isinstance(value, list):
        raise RejectedReply(f"metric {key!r} must be a number, got a list")
    return float(value)


def check_label_upload(record: ArrayRecord, n_proxy: int, n_classes: int,
                       tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """A plaintext upload: ``labels`` (P, C) and ``votes`` (P,), finite, votes in {0, 1}, rows consistent.

    A voted row must be a probability vector (sums to 1 within ``tol``); an unvoted row must be 0,
    so that the server's plain sums need no mask (docs/METHODS.md §6).

    Raises
    ------
    RejectedReply
        With the reason, naming what was wrong and what is allowed.
    """
    if set(record.keys()) != {LABELS, VOTES}:
        raise RejectedReply(f"upload must hold exactly {LABELS!r} and {VOTES!r}, got {sorted(record.keys())}")
    try:
        labels = np.asarray(record[LABELS].numpy(), dtype=np.float64)
        votes = np.asarray(record[VOTES].numpy(), dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise RejectedReply(f"upload arrays unreadable: {exc}") from None
    if labels.shape != (n_proxy, n_classes) or votes.shape != (n_proxy,):
        raise RejectedReply(f"upload shapes {labels.shape} / {votes.shape}, expected ({n_proxy}, {n_classes}) / "
                            f"({n_proxy},)")
    if not (np.all(np.isfinite(labels)) and np.all(np.isfinite(votes))):
        raise RejectedReply("upload contains NaN or inf")
    if not np.all((votes == 0) | (votes == 1)):
        raise RejectedReply("votes must be 0 or 1")
    if labels.min() < -tol or labels.max() > 1 + tol:
        raise RejectedReply("soft labels must lie in [0, 1]")
    rows = labels.sum(axis=1)
    if np.any(np.abs(rows - votes) > tol):
        raise RejectedReply("each voted row must sum to 1 and each unvoted row to 0")
    return labels, votes


class SoftLabelFD(PrivateFedAvg):
    """Soft-label FD (and its local / FedAvg baselines) over validated uploads, recording every round.

    Parameters
    ----------
    mode : {"local", "fedavg", "fd", "fd-kmeans"}
    n_proxy, n_classes : shape of the soft-label table (P, C).
    he_context : the server's public CKKS context, or None for plaintext aggregation.
    he_profile : CKKS profile name the payloads must use.
    **kwargs : as :class:`PrivateFedAvg` (store, run_id, node_to_client, min_clients, ...).
    """

    def __init__(self, *, mode: str, n_proxy: int, n_classes: int, he_context: Any = None,
                 he_profile: str = "compact", **kwargs: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fd mode {mode!r}; allowed: {', '.join(MODES)}")
        if he_context is not None and mode == "fedavg":
            raise ValueError("encrypted aggregation is implemented for the soft-label modes fd and fd-kmeans, "
                             "not for the fedavg baseline; set he.enabled = false or fd.mode = fd-kmeans")
        super().__init__(**kwargs)
        self.mode, self.n_proxy, self.n_classes = mode, n_proxy, n_classes
        self.he_context, self.he_profile = he_context, he_profile
        self._values: dict[str, list[float]] = defaultdict(list)
        if he_context is not None:
            from privacy.he.packing import specs_of
            self.he_specs = specs_of({LABELS: np.zeros((n_proxy, n_classes), np.float32),
                                      VOTES: np.zeros(n_proxy, np.float32)})

    @property
    def shares_labels(self) -> bool:
        return self.mode in ("fd", "fd-kmeans")

    def open_round(self, sampled_nodes: Iterable[int], arrays: ArrayRecord | None = None) -> None:
        """Start a round's log without a Grid (what ``configure_train`` does; used by direct tests)."""
        if self.spec is None and arrays is not None:
            self.spec = ArraySpec.of(arrays)
        self.round = RoundLog(started_at=datetime.now(UTC), t0=time.perf_counter())
        self._sampled_nodes = set(sampled_nodes)
        self.round.sampled = len(self._sampled_nodes)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._values.clear()
        return super().configure_train(server_round, arrays, config, grid)

    # -- train -----------------------------------------------------------------------------
    def validate_update(self, msg: Message) -> Any:
        """Plaintext labels + votes, a structurally valid CKKS payload, MLP weights, or nothing (local)."""
        if self.mode == "local":
            return None
        if self.mode == "fedavg":
            return super().validate_update(msg)
        if "arrays" not in msg.content.array_records:
            raise RejectedReply("reply has no ArrayRecord 'arrays'")
        record = msg.content.array_records["arrays"]
        if record.count_bytes() > self.max_payload_bytes:
            raise RejectedReply(f"payload of {record.count_bytes()} bytes exceeds the limit of "
                                f"{self.max_payload_bytes} bytes")
        if self.he_context is None:
            return check_label_upload(record, self.n_proxy, self.n_classes)
        from privacy.he.packing import payload_from_arrays, validate_payload
        try:
            payload = payload_from_arrays({k: v.numpy() for k, v in record.items()})
            validate_payload(self.he_context, payload, self.he_specs, self.max_payload_bytes,
                             expected_profile=self.he_profile)
        except (ValueError, TypeError) as exc:  # CiphertextError is a ValueError
            raise RejectedReply(f"ciphertext rejected: {exc}") from None
        return payload

    def combine(self, server_round: int, accepted: list[tuple[Message, Any, MetricRecord]]) -> ArrayRecord:
        """Per proxy sample: Σ soft labels and Σ votes (plaintext or ciphertext additions only)."""
        assert self.round is not None
        if self.mode == "local":
            return ArrayRecord()
        if self.mode == "fedavg":
            return super().combine(server_round, accepted)
        if self.he_context is None:
            sums, counts = sum_client_uploads([u[0] for _, u, _ in accepted], [u[1] for _, u, _ in accepted])
            self.round.metrics.append(MetricRow("aggregate-kept", float(np.sum(counts >= 0.5)), server_round))
            return ArrayRecord({SUMS: Array(sums), COUNTS: Array(counts)})
        from privacy.he.packing import HETimings, aggregate_payloads, payload_nbytes, payload_to_arrays
        timings = HETimings()
        total, rejected = aggregate_payloads(self.he_context, [u for _, u, _ in accepted], self.he_specs,
                                             self.max_payload_bytes, expected_profile=self.he_profile,
                                             timings=timings)
        for k, exc in sorted(rejected.items()):
            self._event(server_round, accepted[k][0], "rejected", f"ciphertext rejected while adding: {exc}")
        if total is None or len(accepted) - len(rejected) < self.min_clients:
            raise RoundFailed(f"round {server_round}: too few valid ciphertexts to aggregate")
        self.round.he.append(HERow(profile=self.he_profile, bytes_sent=payload_nbytes(total), client_index=None,
                                   aggregate_seconds=timings.aggregate_s, server_round=server_round))
        return ArrayRecord({k: Array(v) for k, v in payload_to_arrays(total).items()})

    def _record_client(self, server_round: int, msg: Message, m: MetricRecord) -> None:
        super()._record_client(server_round, msg, m)
        assert self.round is not None
        client = int(_num(m, "partition-id"))
        for key in FD_CLIENT_METRICS:
            if key in m:
                self.round.metrics.append(MetricRow(key, _num(m, key), server_round, client))
                self._values[key].append(_num(m, key))
        if "he-bytes" in m:
            def opt(key: str) -> float | None:
                return _num(m, key) if key in m else None
            self.round.he.append(HERow(profile=self.he_profile, bytes_sent=int(_num(m, "he-bytes")),
                                       client_index=client, encrypt_seconds=opt("he-encrypt-s"),
                                       decrypt_seconds=opt("he-decrypt-s"), max_abs_error=opt("he-max-abs-error"),
                                       server_round=server_round))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, agg = super().aggregate_train(server_round, replies)
        assert self.round is not None
        server_round += self.round_offset
        if self.shares_labels and self._values["votes"]:
            v = self._values
            self.round.metrics.append(MetricRow("votes", float(np.sum(v["votes"])), server_round))
            for key in ("accepted-share", "filter-precision", "filter-recall"):
                if v[key]:
                    self.round.metrics.append(MetricRow(key, float(np.mean(v[key])), server_round))
        return arrays, agg

    # -- evaluate --------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        # Only FedAvg clients evaluate what the server holds; FD clients evaluate their own model.
        sent = arrays if self.mode == "fedavg" else ArrayRecord()
        return super().configure_evaluate(server_round, sent, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Mean client accuracy on the fixed global test set ("accuracy") and on own classes."""
        assert self.round is not None
        server_round += self.round_offset
        acc: list[float] = []
        own: list[float] = []
        for msg in replies:
            if msg.has_error():
                reason = (msg.error.reason or "unknown error").strip()[-300:]
                self._event(server_round, msg, "failed", f"evaluate: {reason}")
                continue
            try:
                m = check_metrics(msg, EVAL_METRICS)
                a, o = _num(m, "accuracy-global"), _num(m, "accuracy-own")
                if not (0 <= a <= 1 and 0 <= o <= 1):
                    raise RejectedReply(f"accuracies must lie in [0, 1], got {a}, {o}")
            except RejectedReply as exc:
                self._event(server_round, msg, "rejected", f"evaluate: {exc}")
                continue
            client = self.client_of(msg)
            self.round.metrics += [MetricRow("client-accuracy", a, server_round, client),
                                   MetricRow("client-own-accuracy", o, server_round, client)]
            acc.append(a)
            own.append(o)
        result = None
        if acc:
            result = MetricRecord({"accuracy": float(np.mean(acc)), "own-accuracy": float(np.mean(own)),
                                   "clients": len(acc)})
            self.round.metrics += [MetricRow("accuracy", float(np.mean(acc)), server_round),
                                   MetricRow("own-accuracy", float(np.mean(own)), server_round)]
            log.info("round %d: mean client accuracy %.4f on the global test set (%.4f on own classes), "
                     "%d clients", server_round, np.mean(acc), np.mean(own), len(acc))
        self._flush(server_round, "completed")
        return result
