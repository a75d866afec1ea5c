"""Owner-only files and directories: the one place fedveil writes anything secret.

Key material, canaries, node ledgers and exports of a run all go through :func:`write_private`, which
creates a 0600 file *with* that mode (never readable by others, not even between creation and a later
``chmod``), writes it completely, fsyncs and renames it over the target, so a reader sees the old file or
the new one and never half of one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["private_dir", "write_private"]

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
