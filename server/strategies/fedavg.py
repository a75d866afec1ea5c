"""PrivateFedAvg: Flower's FedAvg with reply validation and a per-round record in the store.

It keeps Flower's round loop (``Strategy.start``) and sampling, and changes three things:
every reply is validated before use (a bad one is rejected with a logged reason while the
round goes on), a round with fewer usable replies than ``min_clients`` fails cleanly, and
each round — metrics, privacy ledger, HE costs, drop-outs — is written to the store in one
transaction.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedveil.wire import as_float, as_int, float_or, int_or, str_or
from fedveil.store import EventRow, HERow, LedgerRow, MetricRow, Store
from server import aggregation
from server.validation import (
    ArraySpec,
    NodeRecord,
    RejectedReply,
    ReplyPolicy,
    check_ledger,
    check_metrics,
    check_nonce,
    check_plain_arrays,
)

log = logging.getLogger("fedveil.server")
CLIENT_METRICS = ("train-loss", "epsilon", "seconds", "num-examples", "steps", "on-policy-steps", "empty-batches")


def _superlink_unavailable(msg: Message) -> bool:
    """An error reply the SuperLink itself sends for a node that stopped answering."""
    return bool(msg.has_error() and msg.metadata.src_node_id == SUPERLINK_NODE_ID
                and msg.error.code == ErrorCode.NODE_UNAVAILABLE)


def _renumber(messages: Iterable[Message], offset: int) -> list[Message]:
    """After a resume, Flower's round k is the run's round k + offset."""
    out = list(messages)
    if offset:
        for msg in out:
            conf = msg.content.config_records["config"]
            conf["server-round"] = as_int(conf, "server-round") + offset
    return out


def save_arrays(arrays: ArrayRecord, path: Path, server_round: int) -> None:
    """Atomically write the global state (plaintext weights or ciphertext bytes) after a round."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        blobs: dict[str, Any] = {f"a:{k}": v.numpy() for k, v in arrays.items()}
        np.savez(fh, **blobs, __round__=np.array([server_round]))
    os.replace(tmp, path)


def load_arrays(path: Path) -> tuple[ArrayRecord, int]:
    """The checkpoint written by :func:`save_arrays` and the round it closed."""
    with np.load(path) as data:
        arrays = {k[2:]: Array(np.array(data[k])) for k in data.files if k.startswith("a:")}
        return ArrayRecord(arrays), int(data["__round__"][0])


def pending_path(checkpoint: Path) -> Path:
    """Where a round's checkpoint waits until the store has recorded that round."""
    return checkpoint.with_name(checkpoint.name + ".pending")


def resume_point(checkpoint: Path, last_complete_round: int) -> tuple[ArrayRecord, int] | None:
    """The checkpoint a resumed run continues from, consistent with the store.

    A round's checkpoint is written as ``.pending``, the round row is recorded, then the checkpoint is
    promoted (:meth:`PrivateFedAvg._flush`). A pending file whose round the store recorded was
    interrupted just before promotion and is promoted now; one the store never recorded is dropped:
    the run repeats that round, so the store never claims fewer rounds than the checkpoint holds.
    """
    pending = pending_path(checkpoint)
    if pending.exists():
        if load_arrays(pending)[1] <= last_complete_round:
            os.replace(pending, checkpoint)
        else:
            pending.unlink()
    if not checkpoint.exists():
        return None
    arrays, done = load_arrays(checkpoint)
    if done > last_complete_round:  # cannot happen with the order above; never trust it over the store
        raise RuntimeError(f"checkpoint {checkpoint} closes round {done} but the store recorded only "
                           f"{last_complete_round}; refusing to resume from an unrecorded round")
    return arrays, done


class RoundFailed(RuntimeError):
    """Fewer usable replies than the configured minimum."""


@dataclass
class RoundLog:
    """What one round produced, flushed to the store when the round ends."""

    started_at: datetime
    t0: float
    sampled: int = 0
    replied: int = 0
    metrics: list[MetricRow] = field(default_factory=list)
    ledger: list[LedgerRow] = field(default_factory=list)
    he: list[HERow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)


class PrivateFedAvg(FedAvg):
    """FedAvg over validated plaintext weights, recording every round.

    Parameters
    ----------
    store, run_id : where rounds are recorded.
    node_to_client : node id → client (partition) index, from the hello query.
    min_clients : usable replies needed for a round to count.
    max_payload_bytes : replies larger than this are rejected.
    num_examples : node id → record count declared at hello; the only weight FedAvg uses.
    policy : what a correct reply's ledger fields must satisfy (:class:`ReplyPolicy`).
    aggregator : ``federation.aggregator`` (plaintext rule, :mod:`server.aggregation`).
    ledger : client → (steps, ε) already recorded, so that a resumed run checks replies against them.
    restored : node → the DP steps the node itself counted at resume (may exceed the store's).
    """

    def __init__(self, *, store: Store, run_id: str, node_to_client: dict[int, int], min_clients: int,
                 max_payload_bytes: int, max_grad_norm: float, fraction_train: float = 1.0,
                 fraction_evaluate: float | None = None, round_offset: int = 0,
                 checkpoint: Path | None = None, num_examples: dict[int, int] | None = None,
                 policy: ReplyPolicy | None = None, aggregator: str = "mean", trim_fraction: float = 0.2,
                 ledger: dict[int, tuple[int, float]] | None = None, restored: dict[int, int] | None = None) -> None:
        fraction_evaluate = fraction_train if fraction_evaluate is None else fraction_evaluate
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=min_clients, min_evaluate_nodes=min_clients,
                         min_available_nodes=min_clients)
        self.store, self.run_id = store, run_id
        self.node_to_client = node_to_client
        counts = num_examples or {}
        ledger = ledger or {}
        # Identity and weight are fixed here, from the hello registration; a reply can change neither.
        self.nodes = {node: NodeRecord(client, int(counts.get(node, 1)), *ledger.get(client, (0, 0.0)))
                      for node, client in node_to_client.items()}
        self.policy = policy or ReplyPolicy(dp=True, epsilon_budget=math.inf, delta_max=1e-2)
        for node, steps in (restored or {}).items():  # a node's own count at resume (server.nodes.restore_ledgers)
            if node in self.nodes:
                self.nodes[node].surplus = max(0, steps - round_offset * (self.policy.local_steps or 0))
        self.aggregate_fn = aggregation.aggregator(aggregator, trim_fraction)
        self.nonce: str | None = None  # this round's nonce; None until configure_train (direct tests set it)
        self.min_clients = min_clients
        self.max_payload_bytes = max_payload_bytes
        self.max_grad_norm = max_grad_norm
        self.round_offset = round_offset  # rounds already completed before a resume
        self.checkpoint = checkpoint
        self._latest: ArrayRecord | None = None
        self.spec: ArraySpec | None = None
        self.round: RoundLog | None = None
        self.history: list[dict[str, float]] = []
        self._provenance_recorded: set[int] = set()

    # -- helpers ---------------------------------------------------------------------------
    def client_of(self, msg: Message) -> int | None:
        return self.node_to_client.get(msg.metadata.src_node_id)

    def _event(self, server_round: int, msg: Message, kind: str, reason: str) -> None:
        assert self.round is not None
        client = self.client_of(msg)
        log.warning("round %d: %s reply from client %s (node %s): %s", server_round, kind, client,
                    msg.metadata.src_node_id, reason)
        self.round.events.append(EventRow(kind=kind, reason=reason, client_index=client,
                                          node_id=str(msg.metadata.src_node_id), server_round=server_round))

    def _split_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Drop error replies (recorded as failed / refused / dropped) and keep the rest."""
        assert self.round is not None
        ok: list[Message] = []
        for msg in replies:
            if _superlink_unavailable(msg):
                continue  # the SuperLink's stand-in reply for a lost node, already recorded as dropped
            if msg.has_error():
                reason = msg.error.reason or "unknown error"
                kind = "refused-budget" if "PrivacyBudgetExhausted" in reason or "budget" in reason else "failed"
                if "timed out" in reason.lower() or "timeout" in reason.lower():
                    kind = "dropped"
                self._event(server_round, msg, kind, reason.strip().splitlines()[-1][:500])
            else:
                ok.append(msg)
        self.round.replied = len(ok)
        return ok

    # -- Flower hooks ----------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round = RoundLog(started_at=datetime.now(UTC), t0=time.perf_counter())
        if self.spec is None:
            self.spec = ArraySpec.of(arrays)
        messages = _renumber(super().configure_train(server_round, arrays, config, grid), self.round_offset)
        # A fresh nonce per round; a reply must echo it (server.validation.check_nonce), so one replayed
        # from an earlier round — or answering another round's instruction — is rejected.
        self.nonce = secrets.token_hex(16)
        for msg in messages:
            msg.content.config_records["config"]["round-nonce"] = self.nonce
        self.round.sampled = len(messages)
        self._sampled_nodes = {m.metadata.dst_node_id for m in messages}
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return _renumber(super().configure_evaluate(server_round, arrays, config, grid), self.round_offset)

    def validate_update(self, msg: Message) -> Any:
        """Return the usable update of one reply or raise RejectedReply."""
        assert self.spec is not None
        return check_plain_arrays(msg, self.spec, self.max_payload_bytes)

    def weight_of(self, msg: Message) -> int:
        """The record count the node declared at hello (never the reply's own ``num-examples``)."""
        return self.nodes[msg.metadata.src_node_id].num_examples

    def combine(self, server_round: int, accepted: list[tuple[Message, Any, MetricRecord]]) -> ArrayRecord:
        """Aggregate accepted updates: ``federation.aggregator`` over hello-declared weights."""
        mean = self.aggregate_fn([(upd, float(self.weight_of(msg))) for msg, upd, _ in accepted])
        return ArrayRecord({k: Array(v) for k, v in mean.items()})

    def check_reply(self, server_round: int, msg: Message) -> tuple[Any, MetricRecord]:
        """Every field of a train reply against what the server knows; the usable update or RejectedReply."""
        metrics = check_metrics(msg)
        check_nonce(msg, self.nonce)
        check_ledger(msg, metrics, self.policy, self.nodes.get(msg.metadata.src_node_id), server_round)
        return self.validate_update(msg), metrics

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.round is not None
        server_round += self.round_offset
        replies = list(replies)
        seen = {m.metadata.src_node_id for m in replies}
        for node in sorted(self._sampled_nodes - seen):
            self.round.events.append(EventRow(kind="dropped", reason="no reply before the round timeout",
                                              client_index=self.node_to_client.get(node), node_id=str(node),
                                              server_round=server_round))
        accepted: list[tuple[Message, Any, MetricRecord]] = []
        for msg in self._split_replies(server_round, replies):
            if msg.metadata.src_node_id in {a[0].metadata.src_node_id for a in accepted}:
                self._event(server_round, msg, "rejected", "a second reply from this node in one round")
                continue
            try:
                update, metrics = self.check_reply(server_round, msg)
                accepted.append((msg, update, metrics))
            except RejectedReply as exc:
                self._event(server_round, msg, "rejected", str(exc))
        if len(accepted) < self.min_clients:
            self._flush(server_round, "failed")
            raise RoundFailed(f"round {server_round}: {len(accepted)} usable replies, "
                              f"fewer than min_clients = {self.min_clients}")
        for msg, _, m in accepted:
            self._record_client(server_round, msg, m)
        t0 = time.perf_counter()
        arrays = self.combine(server_round, accepted)
        self.round.metrics.append(MetricRow("aggregate-seconds", time.perf_counter() - t0, server_round))
        agg = MetricRecord({"clients": len(accepted)})
        if all("train-loss" in m for _, _, m in accepted):  # only with privacy.release_train_loss (stated)
            n = [float(self.weight_of(msg)) for msg, _, _ in accepted]
            agg["train-loss"] = float(np.average([as_float(m, "train-loss") for _, _, m in accepted], weights=n))
            self.round.metrics.append(MetricRow("train-loss", as_float(agg, "train-loss"), server_round))
        self._latest = arrays
        return arrays, agg

    def _record_client(self, server_round: int, msg: Message, m: MetricRecord) -> None:
        assert self.round is not None
        node = self.nodes[msg.metadata.src_node_id]  # check_ledger made sure the reply agrees with it
        client = node.client
        node.steps, node.epsilon = as_int(m, "steps"), max(node.epsilon, as_float(m, "epsilon"))
        for key in CLIENT_METRICS:
            if key in m:
                self.round.metrics.append(MetricRow(key, as_float(m, key), server_round, client))
        priv = msg.content.config_records.get("privacy", ConfigRecord())
        provenance = priv.get("teacher-provenance")
        if isinstance(provenance, str) and client not in self._provenance_recorded:
            # The teacher's provenance decides what the student's ε covers (docs/METHODS.md §2): keep it per client.
            # num_examples stays as the greeting reported it: the training count includes audit canaries.
            self.store.register_client(self.run_id, client, node_id=str(msg.metadata.src_node_id),
                                       teacher_provenance=provenance)
            self._provenance_recorded.add(client)
        if bool(priv.get("dp", False)):
            self.round.ledger.append(LedgerRow(
                client_index=client, epsilon=as_float(m, "epsilon"), delta=as_float(m, "delta"),
                noise_multiplier=as_float(m, "noise-multiplier"), sample_rate=as_float(m, "sample-rate"),
                steps=as_int(m, "steps"), accountant=str_or(priv, "accountant", "prv"),
                max_grad_norm=self.max_grad_norm, grad_sample_mode=str_or(priv, "grad-sample-mode", ""),
                server_round=server_round))

    def held_out_rows(self, server_round: int, replies: Iterable[Message]) -> list[MetricRow]:
        """Exact perplexities, exp(Σ NLL / Σ tokens) over the clients' held-out shards, as metric rows.

        ``perplexity`` (global student) and ``client-perplexity`` always; ``teacher-perplexity`` (the clients'
        non-private teachers, a reference that is never released) when the replies carry it.
        """
        sums: dict[str, list[float]] = {"perplexity": [0.0, 0], "teacher-perplexity": [0.0, 0]}
        rows: list[MetricRow] = []
        for msg in replies:
            if _superlink_unavailable(msg):
                continue
            if msg.has_error():
                reason = (msg.error.reason or "unknown error").strip()[-300:]
                self._event(server_round, msg, "failed", f"evaluate: {reason}")
                continue
            try:
                m = check_metrics(msg, ("nll-sum", "tokens"))
                c_nll, c_tok = as_float(m, "nll-sum"), as_int(m, "tokens")
                t_nll, t_tok = float_or(m, "teacher-nll-sum", 0.0), int_or(m, "teacher-tokens", 0)
                if min(c_nll, c_tok, t_nll, t_tok) < 0:
                    raise RejectedReply("negative NLL or token count")
            except RejectedReply as exc:
                self._event(server_round, msg, "rejected", f"evaluate: {exc}")
                continue
            for name, nll, tok in (("perplexity", c_nll, c_tok), ("teacher-perplexity", t_nll, t_tok)):
                sums[name][0] += nll
                sums[name][1] += tok
            if c_tok:
                rows.append(MetricRow("client-perplexity", math.exp(c_nll / c_tok), server_round,
                                      self.client_of(msg)))
        for name, (total, count) in sums.items():
            if count:
                rows.append(MetricRow(name, math.exp(total / count), server_round))
                log.info("round %d: %s %.3f over %d held-out tokens", server_round, name, math.exp(total / count),
                         count)
        return rows

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Held-out perplexities of the round (:meth:`held_out_rows`), then the round is recorded."""
        server_round += self.round_offset
        assert self.round is not None
        rows = self.held_out_rows(server_round, replies)
        self.round.metrics.extend(rows)
        self._flush(server_round, "completed")
        ppl = [r.value for r in rows if r.name == "perplexity" and r.client_index is None]
        return MetricRecord({"perplexity": ppl[0]}) if ppl else None

    def evaluate_initial(self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, timeout: float) -> None:
        """Held-out perplexity of the initial global student (round 0: the public warm start, or random)."""
        self.round = RoundLog(started_at=datetime.now(UTC), t0=time.perf_counter())
        replies = grid.send_and_receive(self.configure_evaluate(0, arrays, config, grid), timeout=timeout)
        rows = [r for r in self.held_out_rows(0, replies) if r.name != "teacher-perplexity"]
        self.store.add_metrics(self.run_id, rows)
        if self.round.events:
            self.store.add_events(self.run_id, self.round.events)
        self.round = None

    def _flush(self, server_round: int, status: str) -> None:
        assert self.round is not None
        r = self.round
        pending = None
        if status == "completed" and self.checkpoint is not None and self._latest is not None:
            # Pending until the round row is recorded, then promoted (resume_point): the checkpoint never
            # runs ahead of the store, so a resumed run never skips a round whose ε the store lacks.
            pending = pending_path(self.checkpoint)
            save_arrays(self._latest, pending, server_round)
        self.store.record_round(
            self.run_id, server_round, status=status, started_at=r.started_at,
            finished_at=datetime.now(UTC), num_sampled=r.sampled, num_replied=r.replied,
            num_failed=sum(1 for e in r.events if e.kind in ("failed", "dropped", "refused-budget")),
            num_rejected=sum(1 for e in r.events if e.kind == "rejected"),
            metrics=r.metrics + [MetricRow("round-seconds", time.perf_counter() - r.t0, server_round)],
            ledger=r.ledger, he=r.he, events=r.events)
        if pending is not None and self.checkpoint is not None:
            os.replace(pending, self.checkpoint)
