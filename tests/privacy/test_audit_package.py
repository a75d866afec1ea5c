"""privacy.audit resolves its public names lazily (PEP 562) and still exposes all of them."""

from __future__ import annotations

import importlib

import pytest


def test_every_public_name_resolves_to_its_submodule() -> None:
    audit = importlib.import_module("privacy.audit")
    for name in audit.__all__:
        value = getattr(audit, name)
        module = importlib.import_module(f"privacy.audit.{audit._WHERE[name]}")
        assert value is getattr(module, name)
    assert set(audit.__all__) <= set(dir(audit))


def test_unknown_name_is_an_attribute_error() -> None:
    audit = importlib.import_module("privacy.audit")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        audit.nope  # noqa: B018
