"""Validation of what a client reads from a message: presence, type and range, before use."""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict


class ProtocolError(ValueError):
    """A message field is missing, of the wrong type or out of range."""


def require_config(content: RecordDict, key: str) -> ConfigRecord:
    """The ConfigRecord ``key`` of a message, or a ProtocolError naming it."""
    if key not in content.config_records:
        raise ProtocolError(f"message has no ConfigRecord {key!r}")
    return content.config_records[key]


def require_int(conf: ConfigRecord, key: str, *, lo: int | None = None) -> int:
    """An integer field (booleans refused) at least ``lo``."""
    if key not in conf:
        raise ProtocolError(f"config field {key!r} is missing")
    value = conf[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"config field {key!r} must be an integer, got {type(value).__name__}")
    if lo is not None and value < lo:
        raise ProtocolError(f"config field {key!r} = {value} is below {lo}")
    return value


def require_str(conf: ConfigRecord, key: str) -> str:
    """A non-empty string field."""
    value = conf.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"config field {key!r} must be a non-empty string")
    return value


def echo_nonce(conf: ConfigRecord) -> dict[str, ConfigRecord]:
    """The reply record binding a train reply to its round: the server's ``round-nonce``, echoed back."""
    nonce = conf.get("round-nonce")
    if nonce is None:
        return {}
    if not isinstance(nonce, str):
        raise ProtocolError("config field 'round-nonce' must be a string")
    return {"binding": ConfigRecord({"round-nonce": nonce})}
