"""The warm worker's Flower version guard (issue 19): it relies on Flower's internal runtime API."""

from __future__ import annotations

import re
import tomllib

import flwr
import pytest

from fedveil.commands.launch import PROJECT_DIR
from fedveil.node.worker import FLOWER_VERSION, WrongFlowerVersion, check_flower_version


def test_pin_is_the_projects_flower() -> None:
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["flwr-version-target"] == FLOWER_VERSION
    dep = next(d for d in project["project"]["dependencies"] if d.startswith("flwr"))
    low, high = re.findall(r">=([0-9.]+),<([0-9.]+)", dep)[0]
    def as_tuple(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))
    assert low == FLOWER_VERSION and as_tuple(FLOWER_VERSION) < as_tuple(high)
    for dockerfile in ("Dockerfile.server", "Dockerfile.client"):
        assert set(re.findall(r"flwr(?:\[[a-z]+\])?==([0-9.]+)", (PROJECT_DIR / "deploy" / dockerfile).read_text())) \
            == {FLOWER_VERSION}


def test_other_flower_versions_are_refused_with_the_way_out() -> None:
    check_flower_version()  # the installed Flower is the pinned one
    assert flwr.__version__ == FLOWER_VERSION
    for other in ("1.42.1", "1.43.0", "1.41.0"):
        with pytest.raises(WrongFlowerVersion, match=r"needs flwr==1\.42\.0 exactly \(found .*stock executor"):
            check_flower_version(other)
