"""Validation of values going into the store and JSON rendering of values coming out."""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping
from typing import Any

from fedveil.store.models import Base


def check_choice(value: str | None, allowed: tuple[str, ...], what: str, *, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed`` (or ``None`` when optional)."""
    if value is None and optional:
        return
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_count(value: int, what: str) -> int:
    """Raise ``ValueError`` unless ``value`` is a non-negative integer; return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise ValueError(f"{what} must be a non-negative integer; got {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"{what} must be a non-negative integer; got {value!r}")
    return number


def check_number(value: float, what: str) -> float:
    """Raise ``ValueError`` unless ``value`` is a real number that is not NaN; return it as ``float``.

    NaN is refused because SQLite silently turns it into NULL.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number; got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{what} must be a number; got NaN")
    return number


def opt_number(value: float | None, what: str) -> float | None:
    """Like :func:`check_number` but passes ``None`` through."""
    return None if value is None else check_number(value, what)


def nan_to_none(value: float) -> float | None:
    """NaN (which SQLite cannot store) as ``None``; any other number as ``float``."""
    number = float(value)
    return None if math.isnan(number) else number


def json_safe(obj: Any, where: str = "value") -> Any:
    """A copy of ``obj`` made only of JSON types, portable to every database's JSON column.

    Tuples become lists, path-like objects strings, numpy-style scalars Python
    numbers, and non-finite floats the strings ``"inf"``, ``"-inf"``, ``"nan"``
    (strict JSON has no such numbers; ``float()`` reads the strings back).

    Raises
    ------
    TypeError
        Some part is not representable; the message names where it is.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, item in obj.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"{where} has a non-string key {key!r}; JSON objects need string keys")
            out[str(key)] = json_safe(item, f"{where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(item, f"{where}[{i}]") for i, item in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item_method = getattr(obj, "item", None)
    if callable(item_method) and getattr(obj, "shape", None) == ():
        return json_safe(item_method(), where)
    raise TypeError(f"{where} is not JSON-serialisable: {type(obj).__name__} {obj!r:.80}")


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 text of a UTC timestamp (``None`` stays ``None``)."""
    return None if value is None else value.isoformat()


def out_value(value: Any) -> Any:
    """A column value rendered for JSON: datetimes as ISO text, non-finite floats as ``None``."""
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def row_dict(obj: Base, *, skip: tuple[str, ...] = ("run_id",)) -> dict[str, Any]:
    """Every column of an ORM object as JSON-ready ``{column: value}``, minus ``skip``."""
    return {
        col.key: out_value(getattr(obj, col.key))
        for col in obj.__table__.columns
        if col.key not in skip
    }
