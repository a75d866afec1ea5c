"""A real Flower deployment on loopback: SuperLink with TLS and SuperNode auth, N SuperNodes.

:class:`LocalDeployment` does what an operator does on real machines (deploy/EDGE_NODE_GUIDE.md),
with every process on 127.0.0.1:

1. key material in the work directory: a CA, a SuperLink certificate and ECDSA node keys
   (``deploy/certs.sh``), CKKS keys split into a server copy and a client copy (``deploy/keys.sh``);
2. each node's private records as its own JSONL file (nodes read only their ``data-path``);
3. ``flower-superlink`` with TLS and ``--enable-supernode-auth``; a private ``FLWR_HOME`` whose
   ``config.toml`` names it; ``flwr supernode register`` for every node's public key;
4. ``flower-supernode`` per node with ``--root-certificates``, ``--auth-supernode-private-key``,
   ``--node-config`` and its own ``--port``;
5. ``flwr run <project> <superlink> --stream -c <override>``.

Every process is started in its own session and stopped by PID (process group) when the
deployment closes, also on errors and Ctrl-C; a last sweep stops anything still running under
the deployment's ``FLWR_HOME`` (Flower's SuperExec detaches into its own session).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tomli_w

from fedveil.config import Config, to_flower_tables
from fedveil.files import NODE_DIR_ENV, write_private
from fedveil.commands.launch import PROJECT_DIR, flwr_env, stop_superlink

DEPLOY_DIR = PROJECT_DIR / "deploy"
CONNECTION = "fedveil-local"
#: What Flower logs ("Exit Code: 305") when a SuperNode is refused; the process itself exits 1.
REFUSED_EXIT_CODE = 305
READY_MARK = "SuperNode ID:"  # a SuperNode logs this once the SuperLink accepted it


class DeploymentError(RuntimeError):
    """A deployment step failed; the message names the step and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def flwr_bin(name: str) -> str:
    """A Flower console script of this interpreter's environment."""
    return str(Path(sys.executable).with_name(name))


@dataclass
class Managed:
    """One process this deployment started."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """Processes started in their own sessions, so a whole process tree is stopped by one PID."""

    env: dict[str, str]
    running: dict[str, Managed] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], *, cwd: Path, log: Path,
              extra_env: dict[str, str] | None = None) -> Managed:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, cwd=cwd, env={**self.env, **(extra_env or {})}, stdout=fh,
                                    stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[name] = Managed(name, proc, log)
        return self.running[name]

    def stop(self, name: str, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group led by ``name``'s PID; SIGKILL what is left after ``grace`` s."""
        m = self.running.pop(name, None)
        if m is None:
            return
        _signal_group(m.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.proc.wait(timeout=grace)
        _signal_group(m.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a process stuck in the kernel
            m.proc.wait(timeout=5)

    def stop_all(self, grace: float = 10.0) -> None:
        # Nodes first, so they do not spin reconnecting to a SuperLink that is already gone.
        for name in sorted(self.running, key=lambda n: n == "superlink"):
            self.stop(name, grace)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its key pair, files and Runtime API port."""

    index: int
    name: str
    key: Path
    pub: Path
    directory: Path
    data_path: Path
    secret_context: Path | None
    port: int

    def node_config(self, device: str) -> str:
        """``--node-config`` as Flower parses it: space-separated ``key=TOML-value`` pairs."""
        items: dict[str, Any] = {"partition-id": self.index, "data-path": str(self.data_path), "device": device}
        if self.secret_context is not None:
            items["he-secret-context"] = str(self.secret_context)
        return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


class LocalDeployment:
    """A loopback federation; use as a context manager so that every process is stopped.

    Parameters
    ----------
    cfg : the experiment, already validated and absolutised (run id, run dir).
    work_dir : the deployment's private directory (keys, logs, FLWR_HOME, node files).
    nodes : number of SuperNodes.
    device : the nodes' ``device`` node config (auto, cpu or cuda).
    """

    def __init__(self, cfg: Config, work_dir: Path, *, nodes: int, device: str = "auto", db_url: str = "") -> None:
        self.cfg = cfg
        self.db_url = db_url
        self.work = work_dir.resolve()
        self.n_nodes = nodes
        self.device = device
        self.flwr_home = self.work / "flwr-home"
        self.certs = self.work / "certs"
        self.he_dir = self.work / "he-keys"
        self.logs = self.work / "logs"
        self.procs = Processes(flwr_env(self.flwr_home))
        self.superlink_port = 0
        self.node_ids: dict[str, int] = {}
        self.specs: list[NodeSpec] = []

    # -- context management ---------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this deployment started, then anything left under its FLWR_HOME."""
        self.procs.stop_all()
        stop_superlink(self.flwr_home)
        self._write_state()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    # -- 1. key material and node files ----------------------------------------------------
    def prepare(self) -> None:
        """Certificates, node keys, HE keys, node data files and the Flower CLI's config."""
        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.flwr_home, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._script("certs", [str(DEPLOY_DIR / "certs.sh"), "all", "--out", str(self.certs),
                               "--nodes", str(self.n_nodes)])
        secret: Path | None = None
        if self.cfg.he.enabled:
            self._script("keys", [str(DEPLOY_DIR / "keys.sh"), "--out", str(self.he_dir),
                                  "--profile", self.cfg.he.profile])
            secret = self.he_dir / "client" / "secret.ctx"
        ports = self._ports(self.n_nodes + 1)
        self.superlink_port = ports[0]
        for i in range(self.n_nodes):
            node_dir = self.work / "nodes" / f"node-{i}"
            node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            spec = NodeSpec(i, f"node-{i}", self.certs / "nodes" / f"node-{i}",
                            self.certs / "nodes" / f"node-{i}.pub", node_dir, node_dir / "records.jsonl",
                            None, ports[i + 1])
            if secret is not None:  # each node keeps its own copy, as it would on its own disk
                own = node_dir / "secret.ctx"
                own.write_bytes(secret.read_bytes())
                own.chmod(0o600)
                spec = dataclasses.replace(spec, secret_context=own)
            self._write_records(spec)
            self.specs.append(spec)
        conf = {"superlink": {"default": CONNECTION,
                              CONNECTION: {"address": self.address,
                                           "root-certificates": str(self.certs / "ca.crt")}}}
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(conf))

    def server_key_dir(self) -> str:
        """``he.key_dir`` for the ServerApp: the public context only."""
        return str(self.he_dir / "server") if self.cfg.he.enabled else ""

    @staticmethod
    def _ports(n: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < n:
            if (p := free_port()) not in ports:
                ports.append(p)
        return ports

    def _write_records(self, spec: NodeSpec) -> None:
        """The node's private records, generated for its partition (synthetic) or split from data.path."""
        from distill.textdata import client_texts
        texts = client_texts(self.cfg, spec.index)
        fld = self.cfg.data.field
        fd = os.open(spec.data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for text in texts:
                fh.write(json.dumps({fld: text}, ensure_ascii=False) + "\n")

    def _script(self, name: str, argv: list[str]) -> None:
        env = dict(self.procs.env, FEDVEIL=flwr_bin("fedveil"))
        log = self.logs / f"{name}.log"
        with open(log, "ab") as fh:
            code = subprocess.run(["bash", *argv], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, check=False).returncode
        if code != 0:
            raise DeploymentError(f"{Path(argv[0]).name} failed (exit {code}); log {log}:\n{tail(log)}")

    # -- 2. SuperLink ------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 120.0) -> None:
        """Start the SuperLink with TLS and SuperNode authentication; wait until it accepts TCP."""
        link_dir = self.work / "superlink"
        link_dir.mkdir(exist_ok=True)
        c = self.certs
        argv = [flwr_bin("flower-superlink"), "--ssl-ca-certfile", str(c / "ca.crt"),
                "--ssl-certfile", str(c / "superlink.pem"), "--ssl-keyfile", str(c / "superlink.key"),
                "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.superlink_port), "--database", str(link_dir / "state.db")]
        # Only the SuperLink (whose ServerApp writes the store) learns the store URL, by environment.
        m = self.procs.start("superlink", argv, cwd=link_dir, log=self.logs / "superlink.log",
                             extra_env={"FEDVEIL_DB": self.db_url} if self.db_url else None)
        deadline = time.monotonic() + timeout
        while not _accepts(self.superlink_port):
            if m.proc.poll() is not None:
                raise DeploymentError(f"flower-superlink exited with {m.proc.returncode}; log {m.log}:\n{tail(m.log)}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"flower-superlink did not listen on {self.address} within {timeout:.0f}s")
            time.sleep(0.5)
        self._write_state()

    def flwr_cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this deployment's FLWR_HOME."""
        return subprocess.run([flwr_bin("flwr"), *args], env=self.procs.env, cwd=self.work, capture_output=True,
                              text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def register(self, spec: NodeSpec, tries: int = 5) -> int:
        """``flwr supernode register <pub> <superlink> --name <name>``; returns the node id."""
        out = ""
        for attempt in range(tries):
            proc = self.flwr_cli("supernode", "register", str(spec.pub), CONNECTION, "--name", spec.name,
                                 "--format", "json")
            out = proc.stdout + proc.stderr
            try:
                reply = json.loads(proc.stdout)
            except json.JSONDecodeError:
                reply = {}
            if proc.returncode == 0 and reply.get("success"):
                self.node_ids[spec.name] = int(reply["node-id"])
                return self.node_ids[spec.name]
            time.sleep(1.0 + attempt)  # the SuperLink may still be starting its Control API
        raise DeploymentError(f"flwr supernode register {spec.pub} failed after {tries} tries:\n{out[-2000:]}")

    # -- 3. SuperNodes -----------------------------------------------------------------------
    def supernode_argv(self, spec: NodeSpec, *, tls: bool = True, max_retries: int | None = None) -> list[str]:
        """The ``flower-supernode`` command line of one node."""
        argv = [flwr_bin("flower-supernode"), "--superlink", self.address, "--port", str(spec.port),
                "--node-config", spec.node_config(self.device)]
        argv += ["--root-certificates", str(self.certs / "ca.crt"), "--auth-supernode-private-key", str(spec.key)] \
            if tls else ["--insecure"]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        return argv

    def start_node(self, spec: NodeSpec, **kwargs: Any) -> Managed:
        # The node's own directory (ledger, coins, models) via its environment, as a service file sets it.
        return self.procs.start(spec.name, self.supernode_argv(spec, **kwargs), cwd=spec.directory,
                                log=self.logs / f"{spec.name}.log",
                                extra_env={NODE_DIR_ENV: str(spec.directory / "state")})

    def start_nodes(self, timeout: float = 300.0) -> None:
        """Register and start every node; wait until the SuperLink has accepted each of them."""
        for spec in self.specs:
            self.register(spec)
        started = [self.start_node(spec) for spec in self.specs]
        self._write_state()
        deadline = time.monotonic() + timeout
        pending = list(started)
        while pending:
            for m in list(pending):
                if READY_MARK in m.log.read_text(errors="replace"):
                    pending.remove(m)
                elif m.proc.poll() is not None:
                    raise DeploymentError(f"{m.name} exited with {m.proc.returncode} before joining; "
                                          f"log {m.log}:\n{tail(m.log)}")
            if pending and time.monotonic() > deadline:
                raise DeploymentError(f"{', '.join(m.name for m in pending)} did not join within {timeout:.0f}s")
            time.sleep(0.5)

    # -- 4. the run ------------------------------------------------------------------------
    def run(self, *, stream: bool = True, timeout: float | None = None) -> int:
        """``flwr run`` the experiment on this federation; returns flwr's exit code."""
        override = write_private(self.work / f"run-{self.cfg.run.run_id}.toml",
                                 tomli_w.dumps(to_flower_tables(self.cfg)))
        argv = [flwr_bin("flwr"), "run", str(PROJECT_DIR), CONNECTION, "--stream", "-c", str(override)]
        log = self.logs / "flwr-run.log"
        with open(log, "ab") as fh:
            out: IO[bytes] | None = None if stream else fh
            try:
                return subprocess.run(argv, env=self.procs.env, cwd=PROJECT_DIR, stdout=out, stderr=out,
                                      stdin=subprocess.DEVNULL, timeout=timeout, check=False).returncode
            except subprocess.TimeoutExpired:
                raise DeploymentError(f"flwr run did not finish within {timeout:.0f}s; logs in {self.logs}") from None

    # -- state file --------------------------------------------------------------------------
    def _write_state(self) -> None:
        """``deployment.json``: addresses, PIDs and logs of what runs now (for operators and tests)."""
        state = {
            "superlink": {"address": self.address, "ca": str(self.certs / "ca.crt"), "connection": CONNECTION},
            "flwr_home": str(self.flwr_home), "run_id": self.cfg.run.run_id, "logs": str(self.logs),
            "processes": {n: {"pid": m.proc.pid, "log": str(m.log)} for n, m in self.procs.running.items()},
            "nodes": [{"name": s.name, "node_id": self.node_ids.get(s.name), "port": s.port,
                       "data_path": str(s.data_path), "key": str(s.key),
                       "node_config": s.node_config(self.device)} for s in self.specs],
        }
        if self.work.exists():
            (self.work / "deployment.json").write_text(json.dumps(state, indent=2))


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False
