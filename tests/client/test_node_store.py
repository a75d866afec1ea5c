"""The node's own ledger file: where it lives, how it is written, and that a server cannot lower it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from client import node_store
from client.node_store import LedgerCorrupt, load_ledger, reconcile, save_ledger, secret_context_path
from fedveil.files import NODE_DIR_ENV, node_dir, node_root
from privacy.he.keys import SECRET_FILE
from privacy.dp.accounting import Ledger

DELTA = 1e-5


def _ledger(*entries: tuple[float, float, int]) -> Ledger:
    led = Ledger("rdp")
    for s, q, k in entries:
        led.step(s, q, k)
    return led


def test_node_dir_from_the_environment_and_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NODE_DIR_ENV, str(tmp_path / "env"))
    d = node_dir("run1", 3)
    assert d == tmp_path / "env" / "run1" / "client-3"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert node_store.run_node_dir("", 7, 3) == tmp_path / "env" / "flwr-7" / "client-3"
    monkeypatch.delenv(NODE_DIR_ENV)
    assert node_root() == Path.home() / ".fedveil" / "nodes"
    with pytest.raises(ValueError):
        node_dir("../x", 0)


def test_secret_context_is_found_on_the_node_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node config beats the node-side key set, which beats an operator's he.key_dir; no secret: a clear error."""
    monkeypatch.setenv(NODE_DIR_ENV, str(tmp_path / "nodes"))
    server_keys = tmp_path / "server-keys"
    server_keys.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no secret context"):
        secret_context_path({}, "r1", str(server_keys))  # a server key dir with public.ctx only
    (server_keys / SECRET_FILE).write_bytes(b"x")
    assert secret_context_path({}, "r1", str(server_keys)) == server_keys / SECRET_FILE
    own = node_store.node_he_keys("r1")
    own.mkdir(parents=True)
    (own / SECRET_FILE).write_bytes(b"x")
    assert secret_context_path({}, "r1", str(server_keys)) == own / SECRET_FILE
    assert secret_context_path({"he-secret-context": "/n/s.ctx"}, "r1", "") == Path("/n/s.ctx")


def test_save_is_atomic_0600_and_keeps_full_history(tmp_path: Path) -> None:
    led = _ledger((1.2, 0.1, 4), (0.9, 0.2, 2), (1.2, 0.1, 3))
    save_ledger(tmp_path, led)
    path = tmp_path / node_store.LEDGER_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    back = load_ledger(tmp_path, "rdp")
    assert back.history_ == [(1.2, 0.1, 4), (0.9, 0.2, 2), (1.2, 0.1, 3)] and back.steps == 9
    assert back.epsilon(DELTA) == pytest.approx(led.epsilon(DELTA))
    save_ledger(tmp_path, _ledger((1.2, 0.1, 10)))  # replaced, not appended
    assert load_ledger(tmp_path, "rdp").steps == 10
    assert load_ledger(tmp_path / "missing", "rdp").steps == 0


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({"sigma": [1.0], "q": [], "steps": [1]})])
def test_corrupt_ledger_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / node_store.LEDGER_FILE).write_text(text)
    with pytest.raises(LedgerCorrupt, match="refusing to train"):
        load_ledger(tmp_path, "rdp")


def test_reconcile_never_lowers_steps_or_epsilon() -> None:
    own = _ledger((1.0, 0.1, 6), (1.5, 0.1, 4))
    for sent in ({}, _ledger((1.0, 0.1, 6)).state_dict(),          # reset, truncated
                 _ledger((1.0, 0.1, 2)).state_dict(),             # fewer steps
                 _ledger((5.0, 0.01, 40)).state_dict()):          # more steps, far more noise: lower ε
        kept = reconcile(own, sent)
        assert kept.history_ == own.history_
        assert kept.steps >= own.steps and kept.epsilon(DELTA) >= own.epsilon(DELTA)
    longer = _ledger((1.0, 0.1, 6), (1.5, 0.1, 7))  # the node's history plus steps it forgot: only raises ε
    adopted = reconcile(own, longer.state_dict())
    assert adopted.steps == 13 and adopted.epsilon(DELTA) > own.epsilon(DELTA)
    assert reconcile(Ledger("rdp"), longer.state_dict()).steps == 13
    with pytest.raises(ValueError):
        reconcile(own, {"sigma": [1.0], "q": [0.1, 0.2], "steps": [1]})
