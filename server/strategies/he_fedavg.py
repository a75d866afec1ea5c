"""HEFedAvg: FedAvg in which the server only adds CKKS ciphertexts (docs/METHODS.md §1, §7).

The server loads the public/evaluation context only (no secret key exists in its process).
Clients pre-scale by their weight and add an encrypted weight (see :mod:`client.he_client`),
so the server neither multiplies by scalars nor learns the aggregate: it returns the summed
ciphertext to the clients, who decrypt, divide and evaluate. Each reply is validated —
truncated, garbled, wrong-context or wrong-length payloads are rejected with a reason and
the round goes on with the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from privacy.he.layout import payload_arrays
from fedveil.config import Config
from fedveil.store import HERow, MetricRow
from privacy.he.errors import CiphertextError
from privacy.he.keys import load_public_context
from privacy.he.packing import (
    EncryptedPayload,
    payload_from_arrays,
    payload_nbytes,
    payload_to_arrays,
    specs_of,
    sum_payloads,
    validate_payload,
)
from server.strategies.fedavg import PrivateFedAvg
from server.validation import RejectedReply


class HEFedAvg(PrivateFedAvg):
    """Encrypted FedAvg; same validation, recording and round loop as :class:`PrivateFedAvg`.

    Parameters
    ----------
    cfg : the run configuration (``he.*``).
    run_dir : the run's directory (checkpoints).
    template : the student's parameters (shapes and dtypes only matter).
    """

    def __init__(self, *, cfg: Config, run_dir: Path, template: dict[str, np.ndarray], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending_server_row: HERow | None = None  # the aggregate's HE row, completed after evaluate
        # (round nonce, summed hello-declared weight) of the last aggregate; None before the first one (and on
        # resume, whose checkpointed aggregate is then checked by its verification block only).
        self._aggregated: tuple[str, float] | None = None
        if not cfg.he.key_dir:
            raise FileNotFoundError("he.enabled is true but he.key_dir is empty: create keys with "
                                    "`fedveil keys init --out DIR` and set he.key_dir (fedveil run does this)")
        self.profile = cfg.he.profile
        self.value_scale = cfg.he.value_scale
        self.verify = cfg.he.verify_every > 0
        self.public_ctx = load_public_context(Path(cfg.he.key_dir) / "public.ctx")
        # What every client's payload must look like, from the student's (public) parameter shapes.
        self.expected_specs = specs_of(payload_arrays(template, self.value_scale, self.verify))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        aggregated = self._aggregated
        messages = super().configure_train(server_round, arrays, config, grid)
        self.spec = None  # plaintext shape checks do not apply to ciphertext replies
        return self._expect(messages, aggregated)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        return self._expect(super().configure_evaluate(server_round, arrays, config, grid), self._aggregated)

    @staticmethod
    def _expect(messages: Iterable[Message], aggregated: tuple[str, float] | None) -> list[Message]:
        """Tell the key holders what the aggregate they receive must decrypt to (client.he_client.decrypt_mean)."""
        out = list(messages)
        if aggregated is not None:
            for msg in out:
                conf = msg.content.config_records["config"]
                conf["he-aggregate-nonce"], conf["he-aggregate-weight"] = aggregated
        return out

    def validate_update(self, msg: Message) -> EncryptedPayload:
        content = msg.content
        if "arrays" not in content.array_records:
            raise RejectedReply("reply has no ArrayRecord 'arrays'")
        t0 = time.perf_counter()
        try:
            payload = payload_from_arrays({k: v.numpy() for k, v in content.array_records["arrays"].items()})
            validate_payload(self.public_ctx, payload, self.expected_specs or (), self.max_payload_bytes,
                             expected_profile=self.profile)
        except CiphertextError as exc:
            raise RejectedReply(f"ciphertext rejected ({exc.reason}): {exc}") from None
        self._validate_s = getattr(self, "_validate_s", 0.0) + time.perf_counter() - t0
        return payload

    def combine(self, server_round: int, accepted: list[tuple[Message, Any, MetricRecord]]) -> ArrayRecord:
        """Ciphertext additions only; the summed payload goes back to the clients."""
        assert self.round is not None
        t0 = time.perf_counter()
        total = sum_payloads(self.public_ctx, [payload for _, payload, _ in accepted])
        scale = float(max(sum(r.num_examples for r in self.nodes.values()), 1))  # = the he-scale clients use
        self._aggregated = (self.nonce or "", float(sum(self.weight_of(msg) for msg, _, _ in accepted)) / scale)
        agg_s = time.perf_counter() - t0 + getattr(self, "_validate_s", 0.0)
        self._validate_s = 0.0
        for msg, payload, m in accepted:
            self.round.he.append(HERow(
                profile=self.profile, bytes_sent=payload_nbytes(payload),
                client_index=self.nodes[msg.metadata.src_node_id].client,
                encrypt_seconds=float(m.get("he-encrypt-s", 0.0)),  # type: ignore[arg-type]
                decrypt_seconds=float(m["he-decrypt-s"]) if "he-decrypt-s" in m else None,  # type: ignore[arg-type]
                server_round=server_round))
        self._pending_server_row = HERow(profile=self.profile, bytes_sent=payload_nbytes(total), client_index=None,
                                         aggregate_seconds=agg_s, server_round=server_round)
        self.round.metrics.append(MetricRow("he-bytes-per-value", float(np.mean(
            [payload_nbytes(p) / max(p.n_values, 1) for _, p, _ in accepted])), server_round))
        return ArrayRecord({k: Array(v) for k, v in payload_to_arrays(total).items()})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Also record the HE error the clients measured when decrypting this round's aggregate."""
        replies = list(replies)
        this_round = server_round + self.round_offset
        errors = [float(r.content.metric_records["metrics"]["he-verify-error"]) for r in replies  # type: ignore[arg-type]
                  if not r.has_error() and "metrics" in r.content.metric_records
                  and "he-verify-error" in r.content.metric_records["metrics"]]
        decrypt = [float(r.content.metric_records["metrics"]["he-decrypt-s"]) for r in replies  # type: ignore[arg-type]
                   if not r.has_error() and "metrics" in r.content.metric_records
                   and "he-decrypt-s" in r.content.metric_records["metrics"]]
        row = self._pending_server_row
        if row is not None and self.round is not None:
            self.round.he.append(HERow(
                profile=row.profile, bytes_sent=row.bytes_sent, client_index=None,
                aggregate_seconds=row.aggregate_seconds, server_round=this_round,
                decrypt_seconds=float(np.mean(decrypt)) if decrypt else None,
                max_abs_error=max(errors) if errors else None))
            self._pending_server_row = None
        return super().aggregate_evaluate(server_round, replies)
