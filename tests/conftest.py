"""Shared test set-up."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Node ledgers (client.node_store) never go to the home directory of whoever runs the tests.
os.environ["FEDVEIL_NODE_DIR"] = tempfile.mkdtemp(prefix="fedveil-nodes-")


@pytest.fixture(autouse=True)
def _node_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's nodes start with no ledger: no budget carried over from another test."""
    monkeypatch.setenv("FEDVEIL_NODE_DIR", str(tmp_path / "nodes"))


@pytest.fixture(autouse=True)
def _flower_task_identity() -> None:
    """Flower Messages built outside a running app need a task identity (FLOWER.md, unit-testing a ClientApp)."""
    from flwr.supercore.task_identity import TaskIdentity
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 11, 1
