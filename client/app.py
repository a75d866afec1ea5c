"""fedveil ClientApp: local DP training of the student, federated evaluation, hello query.

Message protocol (every field is validated by :mod:`client.protocol` before use)

``query.hello``  ← "config" (the run's tokenizer as JSON, kept in Context.state);
                 → reply ConfigRecord "hello": partition-id, num-examples, device.
``query.restore`` ← "ledger" (the store's copy of this node's history, on resume);
                 → "restored": ok, steps (the node's own count; its own ledger wins).
``query.audit``  ← "arrays" (final global weights), "config" (server-round, tokenizer sha256, kinds);
                 → ConfigRecord "audit": JSON strings of exposure / memorisation / MIA / ε results.
``train``        ← "arrays" (global weights, plaintext or CKKS payload), "config" (server-round,
                   tokenizer sha256, HE weight scale, round-nonce); → "arrays", "metrics", "privacy",
                   "binding" (the round-nonce echoed: a reply is only valid for the round it answers).
``evaluate``     ← "arrays", "config"; → "metrics" with nll-sum and tokens on the client's
                   held-out shard (the server combines them into one exact perplexity).
"""

from __future__ import annotations

import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.app.typing import MetricRecordValues

from client import runtime
from client.protocol import echo_nonce, require_config

app = ClientApp()
log = logging.getLogger("fedveil.client")


def _is_digits(context: Context) -> bool:
    """The digits task (soft-label FD, docs/METHODS.md §6) has its own client runtime."""
    return str(context.run_config.get("data.task", "")) == "digits"


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Announce which partition this node holds and how many records (for weights and the store)."""
    if _is_digits(context):
        from client import fd_runtime
        return fd_runtime.handle_hello(msg, context)
    node = runtime.NodeState.from_context(context)
    runtime.remember_tokenizer(msg, context)
    info = ConfigRecord({"partition-id": node.partition_id, "num-examples": node.num_examples(),
                         "device": str(node.device)})
    return Message(RecordDict({"hello": info}), reply_to=msg)


@app.query("restore")
def restore(msg: Message, context: Context) -> Message:
    """On resume: check the server's copy of this node's history against the node's own ledger, which
    wins; reply with the node's step count (the server checks later replies against it)."""
    steps = runtime.restore_ledger(msg, context)
    return Message(RecordDict({"restored": ConfigRecord({"ok": True, "steps": steps})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local DP training; refuses rounds that would overspend ε."""
    if _is_digits(context):
        from client import fd_runtime
        return fd_runtime.handle_train(msg, context)
    t0 = time.perf_counter()
    node = runtime.NodeState.from_context(context)
    request = runtime.parse_request(msg, context)
    result = runtime.train_round(node, request, context)
    result.metrics["seconds"] = time.perf_counter() - t0
    content = RecordDict({"arrays": result.arrays, "metrics": MetricRecord(result.metrics),
                          "privacy": ConfigRecord(result.privacy),
                          **echo_nonce(require_config(msg.content, "config"))})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Held-out NLL of the global model on this client's shard."""
    if _is_digits(context):
        from client import fd_runtime
        return fd_runtime.handle_evaluate(msg, context)
    node = runtime.NodeState.from_context(context)
    request = runtime.parse_request(msg, context, first_round=0)
    held_out = runtime.evaluate_global(node, request, context)
    values: dict[str, MetricRecordValues] = {"num-examples": max(int(held_out["tokens"]), 1)}
    values.update({k: int(v) if k.endswith("tokens") else float(v) for k, v in held_out.items()})
    for key in ("he-verify-error", "he-decrypt-s"):  # measured while decrypting the encrypted aggregate
        if key in node.extra:
            values[key] = float(node.extra[key])
    metrics = MetricRecord(values)
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("audit")
def audit(msg: Message, context: Context) -> Message:
    """End-of-run audits of this node's models (docs/METHODS.md §8); replies with numbers only."""
    from client.audit_client import handle_audit
    return handle_audit(msg, context)


__all__ = ["ArrayRecord", "app"]
