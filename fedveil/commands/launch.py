"""Launch a configured experiment through ``flwr run`` on a local simulation SuperLink.

``fedveil run`` and ``flwr run .`` run the same experiment: this module writes the full,
validated configuration as a run-config override file and calls ``flwr run`` on the
project directory. Paths are made absolute first because the ServerApp runs in the
SuperLink's working directory, not ours. ``FLWR_HOME`` is private to fedveil so its
SuperLink state never mixes with another project's, and the detached local SuperLink that
``flwr run`` starts is stopped by PID when the run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import tomli_w

from fedveil.config import Config, to_flower_tables
from fedveil.files import NODE_DIR_ENV, node_root, private_dir, write_private

PROJECT_DIR = Path(__file__).resolve().parents[2]


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: offline, no telemetry, no per-run dependency install."""
    env = dict(os.environ)
    env.pop("FEDVEIL_DB", None)  # the store URL goes only to the process that writes the store, explicitly
    env.update(FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", RAY_DEDUP_LOGS="0",
               TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH", "")])))
    return env


def absolutise(cfg: Config) -> Config:
    """Resolve the run id and run directory before the config leaves this process; the store URL is
    dropped (it travels only in ``$FEDVEIL_DB`` to the process that writes the store)."""
    run = dataclasses.replace(cfg.run, run_id=cfg.run.run_id or uuid.uuid4().hex[:12],
                              run_dir=str(Path(cfg.run.run_dir).resolve()))
    data = dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).resolve()) if cfg.data.path else "",
                               heldout_path=str(Path(cfg.data.heldout_path).resolve()) if cfg.data.heldout_path else "")
    model = dataclasses.replace(cfg.model, student=_model_path(cfg.model.student),
                                teacher=_model_path(cfg.model.teacher))
    key_dir = str(Path(cfg.he.key_dir).resolve()) if cfg.he.key_dir else ""
    if cfg.he.enabled and not key_dir:
        key_dir = str(provision_keys(run.run_dir, run.run_id, cfg.he.profile))
    he = dataclasses.replace(cfg.he, key_dir=key_dir)
    store = dataclasses.replace(cfg.store, url="")
    return cfg.replace(run=run, data=data, model=model, he=he, store=store)


def _model_path(name: str) -> str:
    """A checkpoint directory made absolute (``flwr run`` starts the apps elsewhere); presets unchanged."""
    from fedveil.config import MODEL_PRESETS
    return name if name in MODEL_PRESETS else str(Path(name).expanduser().resolve())


class PeakMemory:
    """Samples system-wide used memory (MemTotal − MemAvailable) to report a run's peak increase."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.base_ = self._used()
        self.peak_ = self.base_
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _used() -> int:
        try:
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
            return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024
        except (OSError, KeyError, ValueError):
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_ = max(self.peak_, self._used())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_increase_mb(self) -> float:
        return max(0, self.peak_ - self.base_) / 2**20


def _superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of processes started with this FLWR_HOME (the detached local SuperLink and its children)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FLWR_HOME={flwr_home}".encode() in env:
            pids.append(int(proc.name))
    return pids


def stop_superlink(flwr_home: Path, grace: float = 5.0) -> int:
    """Stop every process that runs under this FLWR_HOME; returns how many were signalled."""
    pids = _superlink_pids(flwr_home)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def sync_default_files() -> list[Path]:
    """Regenerate the two TOML copies of the defaults (tests check they agree with the schema)."""
    from fedveil.config import to_dict
    default = PROJECT_DIR / "configs" / "default.toml"
    text = default.read_text()
    default.write_text(text[: text.index("[run]")] + tomli_w.dumps(to_dict(Config())))
    pyproject = PROJECT_DIR / "pyproject.toml"
    text = pyproject.read_text()
    tables = tomli_w.dumps({"tool": {"flwr": {"app": {"config": to_flower_tables(Config())}}}})
    pyproject.write_text(text[: text.index("[tool.flwr.app.config.run]")] + tables)
    return [default, pyproject]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_local_superlink(flwr_home: Path, env: dict[str, str], timeout: float = 180.0) -> None:
    """Start the simulation SuperLink ``flwr run`` would start, but wait for it patiently.

    ``flwr run`` gives its managed SuperLink 15 s to come up, which a busy 2-core machine
    can exceed; once one answers on the configured port, ``flwr run`` uses it as it is.
    """
    import urllib.request
    state = flwr_home / "local-superlink"
    state.mkdir(parents=True, exist_ok=True)
    port, control = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"], env["FLWR_LOCAL_CONTROL_API_PORT"]
    cmd = [str(Path(sys.executable).with_name("flower-superlink")), "--insecure", "--simulation", "--isolation",
           "subprocess", "--control-api-address", f"127.0.0.1:{control}", "--host", "127.0.0.1", "--port", port,
           "--database", str(state / "state.db"), "--log-file", str(state / "superlink.log")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see {state / 'superlink.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the local SuperLink did not answer within {timeout:.0f}s; see {state / 'superlink.log'}")


def run_flwr_home(cfg: Config) -> Path:
    """``<run_dir>/.flwr-home/<run id>``: a run's own FLWR_HOME (its SuperLink state and processes)."""
    return Path(cfg.run.run_dir) / ".flwr-home" / cfg.run.run_id


def simulation_node_root(run_dir: str | Path) -> Path:
    """Root of the simulated nodes' own directories: ``$FEDVEIL_NODE_DIR``, else ``<run_dir>/nodes``.

    Beside the server's run directories (``<run_dir>/<run id>``), never inside one: the ServerApp
    never reads it (docs/METHODS.md §1).
    """
    return node_root(Path(run_dir).resolve() / "nodes")


def provision_keys(run_dir: str, run_id: str, profile: str) -> Path:
    """Simulation: the federation's CKKS key set, made before the server starts (docs/METHODS.md §1).

    The full set (secret included) goes to the nodes' side, ``<node root>/<run id>/he-keys``, where
    :func:`client.node_store.secret_context_path` finds it; the server's ``<run_dir>/<run id>/keys``
    gets only ``public.ctx`` and the manifest. Returns the server's key directory.
    """
    from privacy.he.keys import MANIFEST_FILE, PUBLIC_FILE, write_keys
    nodes = write_keys(simulation_node_root(run_dir) / run_id / "he-keys", profile)
    server = private_dir(Path(run_dir) / run_id / "keys")
    for name in (PUBLIC_FILE, MANIFEST_FILE):
        write_private(server / name, (nodes / name).read_bytes())
    return server


def run_simulation(cfg: Config, *, flwr_home: Path, db_url: str = "", stream: bool = True,
                   timeout: float | None = None) -> int:
    """Run the experiment via ``flwr run`` with a local simulation; returns flwr's exit code.

    ``db_url`` reaches the ServerApp as ``$FEDVEIL_DB`` only, never in a file or the run_config.
    With ``stream=False`` Flower's log goes to ``<run_dir>/<run_id>.log`` instead of the terminal.
    """
    private_dir(flwr_home)
    override = write_private(flwr_home / f"run-{cfg.run.run_id}.toml", tomli_w.dumps(to_flower_tables(cfg)))
    cpus = cfg.federation.cpus_per_client
    cpus_str = int(cpus) if cpus.is_integer() else cpus
    fed = f"num-supernodes={cfg.federation.clients} client-resources-num-cpus={cpus_str}"
    gpus = 0.0
    if cfg.model.device != "cpu":
        import torch
        gpus = 1.0 / max(cfg.federation.clients, 1) if torch.cuda.is_available() else 0.0
    fed += f" client-resources-num-gpus={gpus}"
    flwr = str(Path(sys.executable).with_name("flwr"))
    # --stream also makes `flwr run` wait for the run to finish; without it, it returns at once.
    cmd = [flwr, "run", str(PROJECT_DIR), "-c", str(override), "--federation-config", fed, "--stream"]
    log_path = Path(cfg.run.run_dir) / f"{cfg.run.run_id}.log"
    env = flwr_env(flwr_home)
    if db_url:
        env["FEDVEIL_DB"] = db_url
    # The simulated nodes' own directories (ledgers, keys, teachers): beside the server's run
    # directories, never inside one; an operator's $FEDVEIL_NODE_DIR wins.
    env[NODE_DIR_ENV] = str(simulation_node_root(cfg.run.run_dir))
    # Flower's managed local SuperLink listens on fixed default ports; two runs at once (or
    # another project's) would share one SuperLink. Give each launch its own ports.
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    try:
        start_local_superlink(flwr_home, env)
        with open(log_path, "w") as log:
            out = None if stream else log
            proc = subprocess.run(cmd, env=env, cwd=str(PROJECT_DIR), timeout=timeout,
                                  check=False, stdout=out, stderr=out)
        return proc.returncode
    finally:
        stop_superlink(flwr_home)
