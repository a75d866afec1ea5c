"""A node's own state directory: its DP ledger and its artifacts (docs/METHODS.md §1, §2).

The node owns its privacy budget. Its accountant history lives in a file only the node writes,
``ledger.json`` in its state directory, written atomically (temporary file, fsync, ``os.replace``,
mode 0600) after local training and before the update leaves the node. A reply the server
rejects, loses or never records still counts. On a restart the node reads this file; a history
the server sends is only compared with it (:func:`reconcile`) and can never lower it.

The directory is :func:`fedveil.files.node_dir`: ``<$FEDVEIL_NODE_DIR or ~/.fedveil/nodes>/<run id>/
client-<partition id>/`` (mode 0700). ``fedveil run`` sets the variable for simulated nodes, a deployed
SuperNode gets it from its service file. Nothing of the server's run configuration chooses the root,
and the ServerApp never reads it. Teachers, local students, the audit-coin key and (in simulation) the
clients' HE secret context live below the same root.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedveil.files import node_dir, node_root, write_private
from privacy.dp.accounting import Ledger
from privacy.he.keys import SECRET_FILE

__all__ = ["HE_KEYS_DIR", "LEDGER_FILE", "LedgerCorrupt", "load_ledger", "load_round", "node_he_keys", "reconcile",
           "run_node_dir", "save_ledger", "save_round", "secret_context_path"]

log = logging.getLogger("fedveil.client")
SECRET_CONTEXT_KEY = "he-secret-context"  # node config key of a deployed node's secret context
HE_KEYS_DIR = "he-keys"
LEDGER_FILE = "ledger.json"
ROUND_FILE = "last-round.safetensors"  # the node's last released update, for a resumed run's repeat of that round


class LedgerCorrupt(RuntimeError):
    """The node's own ledger file cannot be read; the node refuses to train rather than reset ε."""


def run_node_dir(run_id: str, flower_run_id: int, partition_id: int) -> Path:
    """:func:`fedveil.files.node_dir` of the store's run id; a direct call without one keys by Flower's run id."""
    return node_dir(run_id or f"flwr-{int(flower_run_id)}", partition_id)


def node_he_keys(run_id: str) -> Path:
    """``<node root>/<run id>/he-keys``: where ``fedveil run`` puts the clients' key set in simulation."""
    return node_root() / run_id / HE_KEYS_DIR


def secret_context_path(node_config: Mapping[str, Any], run_id: str, key_dir: str) -> Path:
    """The clients' CKKS secret context, as this node finds it (docs/METHODS.md §1).

    Node config ``he-secret-context`` (a deployed SuperNode's own copy) wins; else the node-side key
    set of the run (:func:`node_he_keys`, simulation); else ``secret.ctx`` in an operator-provided
    ``he.key_dir`` that holds the secret too (a single-machine setup the operator chose).
    """
    if node_config.get(SECRET_CONTEXT_KEY):
        return Path(str(node_config[SECRET_CONTEXT_KEY]))
    own = node_he_keys(run_id) / SECRET_FILE if run_id else None
    if own is not None and own.is_file():
        return own
    if key_dir and (Path(key_dir) / SECRET_FILE).is_file():
        return Path(key_dir) / SECRET_FILE
    raise FileNotFoundError("he.enabled is true but this node holds no secret context: pass the node config key "
                            f"{SECRET_CONTEXT_KEY} (deployment) or let `fedveil run` provision the keys (simulation)")


def load_ledger(directory: Path, accountant: str) -> Ledger:
    """The node's ledger from ``directory`` (empty when the node has never trained in this run)."""
    ledger = Ledger(accountant)
    path = directory / LEDGER_FILE
    if not path.exists():
        return ledger
    try:
        ledger.load_state_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise LedgerCorrupt(f"the node's ledger {path} is unreadable ({exc}); refusing to train "
                            "rather than start from zero") from exc
    return ledger


def save_ledger(directory: Path, ledger: Ledger) -> None:
    """Write the full (σ, q, steps) history; called before the update leaves the node."""
    write_private(directory / LEDGER_FILE, json.dumps(ledger.state_dict(), indent=1))


def _extends(longer: Ledger, shorter: Ledger) -> bool:
    """``longer`` is ``shorter`` plus more steps (same (σ, q) entries, a longer tail): its ε is no lower."""
    a, b = longer.history_, shorter.history_
    if len(b) > len(a) or not b:
        return not b
    return a[:len(b) - 1] == b[:-1] and a[len(b) - 1][:2] == b[-1][:2] and a[len(b) - 1][2] >= b[-1][2]


def reconcile(own: Ledger, sent: Mapping[str, Any]) -> Ledger:
    """Compare a server-sent history with the node's own; the node's value wins.

    A sent history that is shorter, reset or different is logged and ignored. One that extends the
    node's own (the same entries plus more steps, e.g. the node lost its directory) is adopted: it
    can only raise ε, never lower it. Anything else keeps the node's own history.
    """
    theirs = Ledger(own.accountant)
    theirs.load_state_dict(sent)  # raises ValueError on a malformed history
    if theirs.history_ == own.history_:
        return own
    if _extends(theirs, own):
        log.warning("server-sent ledger has %d steps, more than this node's %d: adopting it (ε can only rise)",
                    theirs.steps, own.steps)
        return theirs
    log.warning("server-sent ledger (%d steps) differs from this node's own (%d steps): keeping the node's",
                theirs.steps, own.steps)
    return own


def save_round(directory: Path, server_round: int, input_digest: str, state: Mapping[str, torch.Tensor],
               stats: Mapping[str, float | int | str]) -> None:
    """Keep the update this node released in ``server_round`` (trained from the global state ``input_digest``).

    A resumed run repeats the round after the last checkpoint; when the server sends the same global
    state again, the node sends the same update again (post-processing of a released output costs no
    ε) instead of spending budget on a round whose first release the server lost.
    """
    from safetensors.torch import save

    meta = {"round": str(int(server_round)), "input": input_digest, "stats": json.dumps(dict(stats))}
    write_private(directory / ROUND_FILE, save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                                               metadata=meta))


def load_round(directory: Path, server_round: int,
               input_digest: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The update saved by :func:`save_round` if it answered this very round and global state, else None."""
    from safetensors import safe_open

    path = directory / ROUND_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("round") != str(int(server_round)) or meta.get("input") != input_digest:
            return None
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    return state, dict(json.loads(meta.get("stats", "{}")))
