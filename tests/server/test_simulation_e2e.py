"""One small real Flower simulation end to end (`fedveil run`), and the CLI's one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant

from fedveil.files import NODE_DIR_ENV
from fedveil.store import Store
from tests.server.simtools import _cli


@pytest.mark.slow
def test_simulation_stores_a_complete_run(small_run: tuple[Path, str, str]) -> None:
    work, db, stdout = small_run
    # Other tests (resume) add their own runs to this store: look at the fixture's run only.
    runs = [r for r in json.loads(_cli("runs", "--format", "json", "--db", db, cwd=work).stdout)
            if r["name"] == "e2e"]
    assert len(runs) == 1 and runs[0]["status"] == "completed"
    run_id = runs[0]["id"]
    assert run_id in stdout and "final perplexity" in stdout
    shown = json.loads(_cli("show", run_id, "--format", "json", "--db", db, cwd=work).stdout)
    assert {"run", "clients", "rounds", "metrics", "privacy_ledger", "he_records", "events", "audits",
            "epsilon_bounds", "artifacts"} <= set(shown)
    assert shown["run"]["config"]["federation"]["clients"] == 2
    assert [r["server_round"] for r in shown["rounds"]] == [1, 2]
    assert all(r["status"] == "completed" and r["num_replied"] == 2 for r in shown["rounds"])
    assert sorted(c["client_index"] for c in shown["clients"]) == [0, 1]
    assert {c["teacher_provenance"] for c in shown["clients"]} == {"private-non-dp"}
    ppl = [m for m in shown["metrics"] if m["name"] == "perplexity"]
    # round 0: the public warm start every client started from, measured like the trained rounds
    assert [m["round"] for m in ppl] == [0, 1, 2] and all(m["value"] > 1 for m in ppl)
    assert "public-student" in {a["kind"] for a in shown["artifacts"]}
    ledger = shown["privacy_ledger"]
    assert len(ledger) == 4
    for row in ledger:
        assert 0 < row["epsilon"] <= 2.0
        acc = PRVAccountant()
        acc.history = [(row["noise_multiplier"], row["sample_rate"], row["steps"])]
        assert row["epsilon"] == pytest.approx(acc.get_epsilon(delta=row["delta"]), rel=1e-6)
    assert "Not covered" in shown["run"]["privacy_statement"]
    assert {a["kind"] for a in shown["artifacts"]} >= {"tokenizer", "global-student"}
    assert shown["run"]["wall_seconds"] > 0
    # No leftover SuperLink / simulation processes from this run's FLWR_HOME.
    from fedveil.commands.launch import _superlink_pids
    assert _superlink_pids((work / "runs" / ".flwr-home" / run_id).resolve()) == []


@pytest.mark.slow
def test_he_run_matches_plaintext_run(small_run: tuple[Path, str, str]) -> None:
    """Same seed with HE on: the server only adds ciphertexts, the result equals the plaintext run's."""
    work, db, _ = small_run
    proc = _cli("run", "-c", "small.toml", "--set", "he.enabled=true", "--set", "run.name='e2e-he'", "--db", db,
                "--quiet", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["name"]: r for r in json.loads(_cli("runs", "--format", "json", "--db", db, cwd=work).stdout)}
    plain = json.loads(_cli("show", runs["e2e"]["id"], "--format", "json", "--db", db, cwd=work).stdout)
    he = json.loads(_cli("show", runs["e2e-he"]["id"], "--format", "json", "--db", db, cwd=work).stdout)
    ppl = {name: [m["value"] for m in run["metrics"] if m["name"] == "perplexity"]
           for name, run in (("plain", plain), ("he", he))}
    assert ppl["he"] == pytest.approx(ppl["plain"], rel=1e-3)
    rows = he["he_records"]
    clients = [r for r in rows if r["client_index"] is not None]
    server = [r for r in rows if r["client_index"] is None]
    assert len(clients) == 4 and all(r["bytes_sent"] > 0 and r["encrypt_seconds"] > 0 for r in clients)
    assert len(server) == 2 and all(r["aggregate_seconds"] > 0 for r in server)
    assert all(r["max_abs_error"] is not None and r["max_abs_error"] < 1e-4 for r in server)
    bpv = [m["value"] for m in he["metrics"] if m["name"] == "he-bytes-per-value"]
    assert bpv and all(v < 17.5 for v in bpv)  # compact profile: ~16.6 bytes per value
    # The server holds only ciphertext: no plaintext global model is written.
    assert not any(a["kind"] == "global-student" for a in he["artifacts"])
    # The server's key directory holds the public side only; the secret lives with the nodes, 0600.
    key_dir = Path(he["run"]["config"]["he"]["key_dir"])
    assert sorted(p.name for p in key_dir.iterdir()) == ["manifest.json", "public.ctx"]
    secret_path = Path(os.environ[NODE_DIR_ENV]) / he["run"]["id"] / "he-keys" / "secret.ctx"
    assert oct(secret_path.stat().st_mode & 0o777) == "0o600"
    # No fragment of the secret context reaches the store or the run's log.
    secret = secret_path.read_bytes()
    db_file = Path(db.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in (db_file, db_file.with_name(db_file.name + "-wal")) if p.exists())
    log_bytes = (Path(he["run"]["run_dir"]).parent / f"{he['run']['id']}.log").read_bytes()
    for start in range(len(secret) // 4, len(secret) - 64, len(secret) // 8):
        window = secret[start:start + 48]
        assert window not in stored and window not in log_bytes


def test_wrong_config_key_is_one_line(tmp_path: Path) -> None:
    proc = _cli("run", "--set", "federation.clientz=3", "--db", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown key 'federation.clientz'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


def test_unreadable_data_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "records.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    proc = _cli("run", "--set", "data.task=text-file", "--set", f"data.path='{bad}'", "--db",
                f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{bad}:2:" in proc.stderr.replace("\n", "")
    assert "Traceback" not in proc.stderr


def test_unknown_run_id_is_one_line(tmp_path: Path) -> None:
    Store(f"sqlite:///{tmp_path / 's.db'}").close()
    proc = _cli("show", "nope", "--db", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown run id 'nope'" in proc.stderr and "Traceback" not in proc.stderr
