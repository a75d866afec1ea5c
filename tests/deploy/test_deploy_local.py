"""Deployment: key scripts, deploy files, and a real loopback Flower federation (TLS, node auth, HE).

The slow tests start real processes (``flower-superlink``, ``flower-supernode``, ``flwr run``):
one SuperLink that refuses an unregistered and a plaintext node, and one full ``fedveil deploy
local`` run with HE in which a node is killed after round 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedveil.config import ConfigError
from fedveil.commands.deploy_cmd import deploy_config
from fedveil.commands.deploy_local import READY_MARK, REFUSED_EXIT_CODE, LocalDeployment, NodeSpec
from fedveil.commands.launch import PROJECT_DIR, _superlink_pids

DEPLOY = PROJECT_DIR / "deploy"
PY = sys.executable
FEDVEIL = str(Path(PY).with_name("fedveil"))
SMALL = """
[run]
name = "deploy-e2e"
[federation]
rounds = 2
[data]
records_per_client = 24
public_records = 200
heldout_records = 8
max_length = 48
vocab_size = 400
[train]
method = "dp-opd"
local_steps = 2
batch_size = 8
teacher_steps = 3
public_steps = 5
[distill]
gen_length = 6
prompt_length = 8
[audit]
enabled = false
"""
# Generous: every message cold-starts a ClientApp (torch import) on a shared 2-core machine.
ROUND_TIMEOUT = 300
RUN_LIMIT = 1800


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _sh(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", *argv], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env=dict(os.environ, FEDVEIL=FEDVEIL))


# --------------------------------------------------------------------------- key scripts
def test_certs_script_makes_verifiable_tls_and_ecdsa_node_keys(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    proc = _sh(str(DEPLOY / "certs.sh"), "all", "--out", str(out), "--nodes", "2", "--san", "DNS:link.example.org")
    assert proc.returncode == 0, proc.stderr
    for private in ("ca.key", "superlink.key", "nodes/node-0", "nodes/node-1"):
        assert _mode(out / private) == 0o600, private
    assert _mode(out) == 0o700
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "superlink.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    san = subprocess.run(["openssl", "x509", "-in", str(out / "superlink.pem"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True).stdout
    for name in ("IP Address:127.0.0.1", "DNS:localhost", "DNS:link.example.org", f"DNS:{os.uname().nodename}"):
        assert name in san
    manifest = (out / "manifest.txt").read_text()
    for node in ("node-0", "node-1"):
        listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(out / "nodes" / f"{node}.pub")],
                                capture_output=True, text=True).stdout.split()
        assert listed[0] == "384" and listed[-1] == "(ECDSA)"  # Flower accepts ECDSA node keys only
        assert f"nodes/{node}.pub\t{listed[1]}" in manifest
    fp = subprocess.run(["openssl", "x509", "-in", str(out / "ca.crt"), "-noout", "-fingerprint", "-sha256"],
                        capture_output=True, text=True).stdout.strip().split("=")[1]
    assert f"ca.crt\t{fp}" in manifest
    again = _sh(str(DEPLOY / "certs.sh"), "all", "--out", str(out))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert _sh(str(DEPLOY / "certs.sh"), "all", "--out", str(tmp_path / "x"), "--san", "bad").returncode == 2


def test_keys_script_keeps_the_secret_context_away_from_the_server(tmp_path: Path) -> None:
    from privacy.he.keys import key_fingerprint, load_public_context, load_secret_context, read_manifest
    out = tmp_path / "he"
    proc = _sh(str(DEPLOY / "keys.sh"), "--out", str(out), "--profile", "compact")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "server").iterdir()) == ["manifest.json", "public.ctx"]
    assert sorted(p.name for p in (out / "client").iterdir()) == ["manifest.json", "secret.ctx"]
    assert all(_mode(p) == 0o600 for p in out.rglob("*") if p.is_file())
    public = load_public_context(out / "server")
    secret = load_secret_context(out / "client" / "secret.ctx")
    assert key_fingerprint(public) == key_fingerprint(secret) == read_manifest(out)["key_fingerprint"]
    assert read_manifest(out)["key_fingerprint"] in proc.stdout
    assert _sh(str(DEPLOY / "keys.sh"), "--out", str(out)).returncode == 2  # never overwrites keys


# --------------------------------------------------------------------------- configuration
def test_deploy_config_turns_he_on_and_sizes_the_federation(tmp_path: Path) -> None:
    cfg = deploy_config(None, [], nodes=3, rounds=2)
    assert cfg.he.enabled and cfg.federation.clients == 3 and cfg.federation.rounds == 2
    assert cfg.federation.min_clients == 2
    assert not deploy_config(None, ["he.enabled=false"], nodes=2, rounds=None).he.enabled
    f = tmp_path / "c.toml"
    f.write_text("[he]\nenabled = false\n[federation]\nmin_clients = 1\n")
    cfg = deploy_config(f, [], nodes=2, rounds=None)
    assert not cfg.he.enabled and cfg.federation.min_clients == 1
    with pytest.raises(ConfigError, match="data.task = 'digits' is not supported"):
        deploy_config(None, ["data.task=digits"], nodes=2, rounds=None)
    with pytest.raises(ConfigError, match="he.key_dir"):
        deploy_config(None, ["he.key_dir=/tmp/k"], nodes=2, rounds=None)
    with pytest.raises(ConfigError, match="--nodes 0"):
        deploy_config(None, [], nodes=0, rounds=None)
    with pytest.raises(ConfigError, match="min_clients = 3"):
        deploy_config(None, ["federation.min_clients=3"], nodes=2, rounds=None)


def test_node_config_is_what_the_clientapp_reads(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args
    d = tmp_path / "odd dir"
    spec = NodeSpec(1, "node-1", d / "k", d / "k.pub", d, d / "records.jsonl", d / "secret.ctx", 9999)
    parsed = parse_config_args([spec.node_config("cuda")])  # Flower's own --node-config parser
    assert parsed == {"partition-id": 1, "data-path": str(d / "records.jsonl"), "device": "cuda",
                      "he-secret-context": str(d / "secret.ctx")}


# --------------------------------------------------------------------------- deploy files
def test_deploy_files_pass_the_linters_present_here(tmp_path: Path) -> None:
    scripts = sorted(str(p) for p in DEPLOY.glob("*.sh"))
    assert len(scripts) >= 2
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    if shutil.which("docker-compose"):
        proc = subprocess.run(["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
                              capture_output=True, text=True, cwd=DEPLOY)
        assert proc.returncode == 0, proc.stderr
    for dockerfile in ("Dockerfile.server", "Dockerfile.client"):
        text = (DEPLOY / dockerfile).read_text()
        pins = set(re.findall(r"flwr(?:\[[a-z]+\])?==([0-9.]+)", text))
        assert pins == {"1.42.0"}, f"{dockerfile} pins {pins}"  # same Flower on both ends
    units = sorted(DEPLOY.glob("systemd/*.service"))
    assert units
    if shutil.which("systemd-analyze"):
        # verify checks ExecStart binaries, so point the units at stand-ins for /opt/fedveil.
        root = tmp_path / "opt"
        for unit in units:
            text = unit.read_text()
            for exe in set(re.findall(r"^ExecStart=(/opt/fedveil/\S+)", text, re.M)):
                stand_in = root / exe.removeprefix("/opt/fedveil/")
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("#!/bin/sh\n")
                stand_in.chmod(0o755)
            (tmp_path / unit.name).write_text(text.replace("/opt/fedveil/", f"{root}/"))
        proc = subprocess.run(["systemd-analyze", "verify", *[str(tmp_path / u.name) for u in units]],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr  # warnings too (unknown keys)


# --------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def tls_superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    work = tmp_path_factory.mktemp("refusals")
    (work / "small.toml").write_text(SMALL)
    cfg = deploy_config(work / "small.toml", ["he.enabled=false", f"run.run_dir='{work}'"], nodes=3, rounds=None)
    with LocalDeployment(cfg, work / "dep", nodes=3, device="cpu") as dep:
        dep.prepare()
        dep.start_superlink()
        yield dep
    assert _superlink_pids(dep.flwr_home) == []


def _exit_of(dep: LocalDeployment, name: str, timeout: float = 180) -> tuple[int, str]:
    m = dep.procs.running[name]
    code = m.proc.wait(timeout=timeout)
    dep.procs.stop(name)
    return code, m.log.read_text(errors="replace")


@pytest.mark.slow
def test_unregistered_and_plaintext_nodes_are_refused(tls_superlink: LocalDeployment) -> None:
    dep = tls_superlink
    registered, unregistered, plaintext = dep.specs
    dep.register(registered)
    good = dep.start_node(registered)
    deadline = time.monotonic() + 180
    while READY_MARK not in good.log.read_text(errors="replace"):  # the set-up itself accepts a good node
        assert good.proc.poll() is None and time.monotonic() < deadline, good.log.read_text()[-2000:]
        time.sleep(0.5)
    # A key the SuperLink never registered: refused at activation.
    dep.start_node(unregistered)
    code, log = _exit_of(dep, unregistered.name)
    assert code != 0 and f"Exit Code: {REFUSED_EXIT_CODE}" in log and READY_MARK not in log
    # Plaintext against the TLS SuperLink: never connects; gives up after its retries.
    dep.start_node(plaintext, tls=False, max_retries=2)
    code, log = _exit_of(dep, plaintext.name)
    assert code != 0 and f"Exit Code: {REFUSED_EXIT_CODE}" in log and READY_MARK not in log
    assert good.proc.poll() is None  # the registered node is still connected


# --------------------------------------------------------------------------- full deployment
def _completed_rounds(db: Path, run_id: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute("SELECT COUNT(*) FROM rounds WHERE run_id = ? AND status = 'completed'",
                              (run_id,)).fetchone()
        return int(row[0])
    except sqlite3.Error:  # tables not created yet
        return 0


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """``fedveil deploy local`` with HE; node-1 is killed (whole process group) once round 1 is stored."""
    work = tmp_path_factory.mktemp("deploy")
    (work / "small.toml").write_text(SMALL)
    db, run_id, dep_dir = work / "store.db", "deploye2e01", work / "dep"
    argv = [FEDVEIL, "deploy", "local", "--nodes", "2", "-c", "small.toml",
            "--set", "federation.min_clients=1", "--set", f"federation.round_timeout={ROUND_TIMEOUT}",
            "--set", f"run.run_id='{run_id}'", "--db", f"sqlite:///{db}", "--work", str(dep_dir), "--quiet",
            "--timeout", str(RUN_LIMIT)]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_at_round = None
    deadline = time.monotonic() + RUN_LIMIT + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if killed_at_round is None and (done := _completed_rounds(db, run_id)) >= 1:
                state = json.loads((dep_dir / "deployment.json").read_text())
                os.killpg(state["processes"]["node-1"]["pid"], signal.SIGKILL)  # the node vanishes
                killed_at_round = done + 1
            time.sleep(1.0)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the CLI stops what it started
            proc.wait(timeout=120)
    return {"code": proc.returncode, "out": out, "db": f"sqlite:///{db}", "run_id": run_id, "dir": dep_dir,
            "killed_at_round": killed_at_round, "work": work}


@pytest.mark.slow
def test_deployment_completes_with_he_and_is_stored(deployed: dict[str, object]) -> None:
    from fedveil.store import Store
    assert deployed["code"] == 0, str(deployed["out"])[-4000:]
    dep_dir = Path(str(deployed["dir"]))
    result = Store(str(deployed["db"])).get_run(str(deployed["run_id"]))
    run = result["run"]
    assert run["status"] == "completed" and run["he_enabled"] and run["num_clients"] == 2
    assert [r["server_round"] for r in result["rounds"]] == [1, 2]
    assert result["rounds"][0]["num_replied"] == 2
    # Encrypted updates from both nodes in round 1, decrypted by the clients only.
    he_clients = {h["client_index"] for h in result["he_records"] if h["server_round"] == 1}
    assert he_clients - {None} == {0, 1}  # None: the server's aggregation row
    assert sorted(p.name for p in (dep_dir / "he-keys" / "server").iterdir()) == ["manifest.json", "public.ctx"]
    assert run["config"]["he"]["key_dir"] == str(dep_dir / "he-keys" / "server")
    # Each node trained on its own file only: the record counts it announced are its file's lines.
    for c in result["clients"]:
        records = dep_dir / "nodes" / f"node-{c['client_index']}" / "records.jsonl"
        assert c["num_examples"] == len(records.read_text().splitlines()) > 0
        assert _mode(records) == 0o600
    ppl = [m for m in result["metrics"] if m["name"] == "perplexity"]
    assert [m["round"] for m in ppl] == [0, 1, 2] and all(m["value"] > 1 for m in ppl)
    assert result["privacy_ledger"] and all(0 < row["epsilon"] <= 2.0 for row in result["privacy_ledger"])
    listed = subprocess.run([FEDVEIL, "runs", "--format", "json", "--db", str(deployed["db"])],
                            capture_output=True, text=True, cwd=str(deployed["work"]))
    assert listed.returncode == 0, listed.stderr
    assert deployed["run_id"] in [r["id"] for r in json.loads(listed.stdout)]
    assert _superlink_pids(dep_dir / "flwr-home") == []  # every process stopped
    assert json.loads((dep_dir / "deployment.json").read_text())["processes"] == {}


@pytest.mark.slow
def test_node_killed_mid_round_is_recorded_dropped(deployed: dict[str, object]) -> None:
    from fedveil.store import Store
    assert deployed["killed_at_round"] == 2, str(deployed["out"])[-4000:]
    result = Store(str(deployed["db"])).get_run(str(deployed["run_id"]))
    assert result["run"]["status"] == "completed"
    second = result["rounds"][1]
    assert second["status"] == "completed" and second["num_sampled"] == 2 and second["num_replied"] == 1
    events = [e for e in result["events"] if e["server_round"] == 2]
    dropped = [e for e in events if e["kind"] == "dropped"]
    assert [e["client_index"] for e in dropped] == [1], events
    assert not [e for e in result["events"] if e["client_index"] == 0]  # the live node is never blamed
    trained = {m["client"] for m in result["metrics"] if m["name"] == "seconds" and m["round"] == 2}
    assert trained == {0}


@pytest.mark.slow
def test_unavailable_node_is_counted_once(deployed: dict[str, object]) -> None:
    """The SuperLink answers for a node that missed its heartbeats with an error reply of its own
    (sender: the SuperLink); that is the same drop-out, not a second failure of an unknown client."""
    from fedveil.store import Store
    result = Store(str(deployed["db"])).get_run(str(deployed["run_id"]))
    second = result["rounds"][1]
    assert second["num_failed"] == 1, result["events"]
    assert all(e["client_index"] is not None for e in result["events"]), result["events"]
