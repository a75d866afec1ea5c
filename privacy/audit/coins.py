"""The node's secret audit coins (docs/METHODS.md §8): canary inclusion and the MIA member split.

A one-run audit is only sound when each canary's inclusion is an independent fair coin that the
model's trainer cannot steer, and a membership-inference audit only when members and non-members are
a random split of one pool. Both coins come from one 32-byte key drawn from OS entropy
(``os.urandom``) on the node and kept in a 0600 file in the node's own directory
(:func:`fedveil.files.node_dir`), so that training, a resumed run and
a later ``fedveil audit`` on the same node agree, while nothing the server or the store holds (the run
seed included) predicts them. Coin ``x`` is a bit (or a uniform number) of ``HMAC-SHA256(key, x)``.

After training the node reveals the canaries' coins in its audit reply: canaries are synthetic, so
their inclusion says nothing about a private record. The member split of private records is never
revealed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from fedveil.files import node_dir

__all__ = ["KEY_BYTES", "coin_key", "coin_key_path", "included", "uniform"]

KEY_BYTES = 32
KEY_FILE = "audit-coins.key"
# A configuration without a run id (tests, notebooks) gets one key per process and node, never a file.
_EPHEMERAL: dict[int, bytes] = {}


def coin_key_path(run_id: str, partition_id: int) -> Path | None:
    """``<node root>/<run id>/client-<partition-id>/audit-coins.key``; None without a run id."""
    if not run_id:
        return None
    return node_dir(run_id, partition_id) / KEY_FILE


def coin_key(run_id: str, partition_id: int) -> bytes:
    """The node's audit key: read from its file, or drawn from ``os.urandom`` and written 0600 once.

    The file is created with ``O_EXCL`` so that two processes of one node racing to create it end up
    with the same key (the loser reads the winner's).
    """
    path = coin_key_path(run_id, partition_id)
    if path is None:
        return _EPHEMERAL.setdefault(partition_id, os.urandom(KEY_BYTES))
    if path.is_file():
        return _read(path)
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"audit coin key {path} has {len(key)} bytes, expected {KEY_BYTES}; delete it to redraw "
                         "(only before training: the coins decide which canaries were inserted)")
    return key


def _digest(key: bytes, name: str) -> bytes:
    return hmac.new(key, name.encode(), hashlib.sha256).digest()


def included(key: bytes, name: str) -> bool:
    """A fair coin for ``name`` (e.g. a canary id): the low bit of its HMAC."""
    return bool(_digest(key, name)[0] & 1)


def uniform(key: bytes, name: str) -> float:
    """A uniform number in [0, 1) for ``name``, from 53 bits of its HMAC."""
    return (int.from_bytes(_digest(key, name)[:8], "big") >> 11) / float(1 << 53)
