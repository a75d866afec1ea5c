"""Small registries keyed by the strings the configuration accepts (Opacus-style).

Every extension point (training methods, accountants, HE profiles, FD modes, audit kinds, aggregators) is one
:class:`Registry`. Adding an implementation is one file plus one ``@REGISTRY.register("name")``; the configuration
keeps the allowed strings as plain data (it must stay importable without torch) and ``tests/test_registries.py``
checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A configuration string names nothing registered (a KeyError for mappings, a ValueError for callers)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T]):
    """A name → implementation map for one configuration key.

    Parameters
    ----------
    key
        The configuration key whose values name the entries (e.g. ``"train.method"``); used in errors.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (a name can be registered once)."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``."""
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is already registered")
        self._entries[name] = obj

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(f"{self.key} = {name!r} is not registered; allowed: {', '.join(self)}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self)})"
