"""Exceptions raised by the CKKS aggregation layer (docs/METHODS.md §7).

Both exceptions subclass :class:`ValueError` so callers that only know "bad input"
can still catch them, while the server can tell key problems (fatal, operator
action needed) from a single client's bad ciphertext (drop that client, go on).
"""

from __future__ import annotations

from typing import Final

#: Reason codes carried by :class:`CiphertextError`. The server logs the code and
#: drops the client for the round (docs/METHODS.md §7, "rejected with a logged reason").
REASONS: Final[frozenset[str]] = frozenset(
    {
        "oversized",  # payload or one chunk larger than allowed
        "malformed",  # header/array structure unreadable (not JSON, missing keys, bad types)
        "corrupt",  # header/chunk digest does not match the bytes received
        "truncated",  # a chunk ends before its declared length
        "garbled",  # chunk bytes are not a TenSEAL/SEAL ciphertext
        "wrong_key",  # produced under another key set (fingerprint mismatch)
        "wrong_params",  # produced under other encryption parameters (N, moduli, scale)
        "wrong_length",  # chunk count or value count does not match the specs
        "spec_mismatch",  # tensor names/shapes/dtypes differ from what the server expects
    }
)


class KeyMaterialError(ValueError):
    """Key files are missing, unreadable, too permissive or of the wrong kind.

    Raised by :mod:`privacy.he.keys` loaders, e.g. when a public (server) context
    is given where the clients' secret context is expected.
    """


class CiphertextError(ValueError):
    """A client's encrypted payload was rejected.

    Parameters
    ----------
    reason : str
        One of :data:`REASONS`; stable, machine-readable, safe to store in the SQL log.
    detail : str
        Human-readable explanation (never contains plaintext or key bytes).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown CiphertextError reason {reason!r}; allowed: {sorted(REASONS)}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
