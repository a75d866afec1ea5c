"""Conformance: each configuration key that names an implementation accepts exactly what its registry holds.

A new method, accountant, HE profile or aggregator is one registration; forgetting the config's choices (or the
other way round) fails here, not in a user's run. The remaining choice keys (FD modes, audit kinds, DP
per-sample-gradient modes) are name tuples in the modules that branch on them; they are checked the same way.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from client.trainers import METHODS, LMTrainer
from fedveil import config
from fedveil.registry import Registry, UnknownName
from privacy.audit.measures import ALL_KINDS
from privacy.dp import accounting, session
from privacy.he.profiles import PROFILES, get_profile
from server import aggregation
from server.strategies import fd

REGISTRIES = {
    "train.method": METHODS,
    "privacy.accountant": accounting.ACCOUNTANTS,
    "he.profile": PROFILES,
    "federation.aggregator": aggregation.AGGREGATORS,
    "fd.mode": fd.MODES,
    "audit.kinds": ALL_KINDS,
    "privacy.grad_sample_mode": session.MODES,
}


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_config_choices_equal_registry_keys(key: str) -> None:
    assert config.choices(key), f"{key} is not a choice key in fedveil/config.py"
    assert set(config.choices(key)) == set(REGISTRIES[key]), key


def test_every_registered_entry_builds() -> None:
    for name in METHODS:
        assert METHODS[name](config.DistillConfig()).method == name
    for name in accounting.ACCOUNTANTS:
        assert hasattr(accounting.ACCOUNTANTS[name](), "get_epsilon")
    for name in PROFILES:
        assert get_profile(name).name == name
    for name in aggregation.AGGREGATORS:
        assert callable(aggregation.aggregator(name, 0.2))
    assert LMTrainer is not None


def test_unknown_name_lists_what_is_allowed() -> None:
    with pytest.raises(UnknownName, match="federation.aggregator = 'mode' is not registered; allowed: mean, "):
        aggregation.aggregator("mode")
    with pytest.raises(ValueError, match="allowed: prv, rdp"):
        accounting.Ledger("moments")
    reg: Registry[int] = Registry("x.y")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)
    assert "a" in reg and 3 not in reg and dict(reg) == {"a": 1}


def test_keys_init_help_names_every_profile() -> None:
    out = subprocess.run([sys.executable, "-m", "fedveil.commands.cli", "keys", "init", "--help"],
                         capture_output=True, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin",
                                                              "PYTHONPATH": "."}, timeout=120).stdout
    for name in PROFILES:
        assert name in out, (name, out)
