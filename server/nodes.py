"""Node registration: waiting for nodes, the hello round and, on resume, the ledger hand-back.

One home for what every server-side task (language models and digits) does before round 1.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedveil.store import Store

log = logging.getLogger("fedveil.server")


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Node ids once at least ``minimum`` are connected (deployment nodes may come late)."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} nodes connected after {timeout:.0f}s; need {minimum}")
        time.sleep(1.0)
    return nodes


def greet(grid: Grid, nodes: list[int], timeout: float, payload: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Send every node ``payload`` (e.g. the run's tokenizer).

    Asks each node its partition id and record count (``query.hello``).
    """
    msgs = [Message(RecordDict({"config": ConfigRecord(payload)}), dst_node_id=n, message_type="query.hello")
            for n in nodes]
    info: dict[int, dict[str, Any]] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error() or "hello" not in reply.content.config_records:
            log.warning("node %s did not answer hello: %s", reply.metadata.src_node_id,
                        reply.error.reason if reply.has_error() else "no 'hello' record")
            continue
        info[reply.metadata.src_node_id] = dict(reply.content.config_records["hello"])
    return info


def register(store: Store, run_id: str, hello: dict[int, dict[str, Any]],
             **extra: Any) -> tuple[dict[int, int], dict[int, int]]:
    """Fix each node's client index and weight from its hello reply, once, and record them.

    A second node claiming an already-registered partition id, or a record count that is not a
    positive integer, is left out with a logged reason (it would otherwise break the store's
    UNIQUE constraint or the weights); the run goes on with the others.

    Returns
    -------
    node_to_client, num_examples : node id → client index, node id → declared record count.
    """
    node_to_client: dict[int, int] = {}
    num_examples: dict[int, int] = {}
    for node in sorted(hello):
        h = hello[node]
        pid, n = h.get("partition-id"), h.get("num-examples")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
            log.warning("node %s left out: hello partition-id %r is not a non-negative integer", node, pid)
        elif isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            log.warning("node %s left out: hello num-examples %r is not a positive integer", node, n)
        elif pid in node_to_client.values():
            log.warning("node %s left out: partition-id %d is already registered by another node", node, pid)
        else:
            node_to_client[node], num_examples[node] = pid, n
            store.register_client(run_id, pid, node_id=str(node), num_examples=n, **extra)
    return node_to_client, num_examples


def restore_ledgers(grid: Grid, store: Store, run_id: str, node_to_client: dict[int, int],
                    timeout: float) -> dict[int, int]:
    """On resume, show each node the store's copy of its accountant history; returns node → its own steps.

    The node keeps its own ledger (it wins over the copy, :mod:`client.node_store`); its reply says how
    many DP steps it has taken, which may exceed the store's count when a round's reply was lost.
    """
    ledger = store.latest_ledger(run_id)
    msgs = []
    for node, client in node_to_client.items():
        row = ledger.get(client)
        state = {"accountant": str(row["accountant"]), "sigma": [float(row["noise_multiplier"])],
                 "q": [float(row["sample_rate"])], "steps": [int(row["steps"])]} if row else \
            {"accountant": "prv", "sigma": [], "q": [], "steps": []}
        msgs.append(Message(RecordDict({"ledger": ConfigRecord(state)}), dst_node_id=node,  # type: ignore[arg-type]
                            message_type="query.restore"))
    steps: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} could not restore its ledger: {reply.error.reason}")
        value = reply.content.config_records.get("restored", ConfigRecord()).get("steps")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            steps[reply.metadata.src_node_id] = value
    return steps
