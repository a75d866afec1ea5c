"""Owner-only files and directories: the one place fedveil writes anything secret.

Key material, canaries, node ledgers and exports of a run all go through :func:`write_private`, which
creates a 0600 file *with* that mode (never readable by others, not even between creation and a later
``chmod``), writes it completely, fsyncs and renames it over the target, so a reader sees the old file or
the new one and never half of one.

A node's own directory (:func:`node_dir`) holds what never leaves the node: its DP ledger, its last
released update, its audit-coin key, its teacher and local student, and in simulation the clients'
HE secret context (docs/METHODS.md §1, §2). The root is ``$FEDVEIL_NODE_DIR`` in the node's environment
(``fedveil run`` sets it for simulated nodes, the SuperNode's service file for a deployed one), else
``~/.fedveil/nodes``. Nothing in the server's run configuration chooses it, and the ServerApp never reads it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["NODE_DIR_ENV", "node_dir", "node_root", "private_dir", "write_private"]

NODE_DIR_ENV = "FEDVEIL_NODE_DIR"

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def private_dir(path: Path) -> Path:
    """``path`` as a 0700 directory (created with its parents; an existing one of ours is tightened)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes | str) -> Path:
    """Write ``data`` atomically to ``path`` as a 0600 file; returns ``path``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, _FLAGS, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def node_root(default: Path | None = None) -> Path:
    """The node-local root: ``$FEDVEIL_NODE_DIR``, else ``default``, else ``~/.fedveil/nodes`` (not created here)."""
    env = os.environ.get(NODE_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return default if default is not None else Path.home() / ".fedveil" / "nodes"


def node_dir(run_id: str, partition_id: int) -> Path:
    """``<node root>/<run id>/client-<partition id>``, created with mode 0700."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ValueError(f"run id {run_id!r} cannot name a node state directory")
    return private_dir(node_root() / run_id / f"client-{int(partition_id)}")
