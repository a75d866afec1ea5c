"""Typed reads of Flower record values, shared by the ServerApp and the ClientApp.

A ``MetricRecord`` value is ``int | float | list[int] | list[float]`` and a ``ConfigRecord`` value any of
Flower's scalar or list types. Code that wants one scalar used to write ``float(m["x"])  # type: ignore``;
these accessors make the narrowing explicit and fail with the key's name when a peer sent a list or a
string where a number belongs. Validation of ranges stays with the reader (server/validation.py,
client/protocol.py): this module only answers "is it the scalar type I need".
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["WireTypeError", "as_float", "as_int", "as_str", "int_or", "float_or", "str_or"]


class WireTypeError(TypeError):
    """A record value does not have the scalar type its reader needs."""


def as_float(record: Mapping[str, object], key: str) -> float:
    """``record[key]`` as a float (ints accepted, booleans and lists refused)."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireTypeError(f"{key!r} must be a number, got {type(value).__name__}")
    return float(value)


def as_int(record: Mapping[str, object], key: str) -> int:
    """``record[key]`` as an int (integral floats accepted, booleans and lists refused)."""
    value = record[key]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireTypeError(f"{key!r} must be an integer, got {type(value).__name__}")
    return value


def as_str(record: Mapping[str, object], key: str) -> str:
    """``record[key]`` as a str."""
    value = record[key]
    if not isinstance(value, str):
        raise WireTypeError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def float_or(record: Mapping[str, object], key: str, default: float) -> float:
    """:func:`as_float`, or ``default`` when ``key`` is absent."""
    return as_float(record, key) if key in record else default


def int_or(record: Mapping[str, object], key: str, default: int) -> int:
    """:func:`as_int`, or ``default`` when ``key`` is absent."""
    return as_int(record, key) if key in record else default


def str_or(record: Mapping[str, object], key: str, default: str) -> str:
    """:func:`as_str`, or ``default`` when ``key`` is absent."""
    return as_str(record, key) if key in record else default
