"""``fedveil deploy``: run an experiment on Flower's Deployment Engine instead of the simulation.

``fedveil deploy local`` starts a whole federation on loopback (TLS, SuperNode authentication,
CKKS keys, one private data file per node; see :mod:`fedveil.commands.deploy_local`), runs the
experiment through ``flwr run``, records it in the same store as ``fedveil run`` and stops every
process it started. Real edge nodes: deploy/EDGE_NODE_GUIDE.md.
"""

from __future__ import annotations

import dataclasses
import signal
import time
import tomllib
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from fedveil.config import Config, ConfigError, load_config

deploy_app = typer.Typer(no_args_is_help=True,
                         help="Run on Flower's Deployment Engine (SuperLink + SuperNodes, TLS, node auth).")

MAX_LOCAL_NODES = 8
SUPPORTED_TASKS = ("synthetic-text", "text-file")


@deploy_app.callback()
def _group() -> None:
    """Run on Flower's Deployment Engine (SuperLink + SuperNodes, TLS, node auth)."""


def _sets_key(config: Path | None, sets: list[str], section: str, key: str) -> bool:
    """Whether the user chose ``section.key`` themselves (in the file or with --set)."""
    if any(s.split("=", 1)[0].strip() == f"{section}.{key}" for s in sets):
        return True
    if config is None:
        return False
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False  # load_config reports the problem with its own message
    body = data.get(section)
    return isinstance(body, dict) and key in body


def deploy_config(config: Path | None, sets: list[str], *, nodes: int, rounds: int | None) -> Config:
    """The experiment for a deployment of ``nodes`` SuperNodes.

    HE is on unless the user turned it off; ``federation.clients`` is the number of nodes and
    ``federation.min_clients`` is capped by it.

    Raises
    ------
    ConfigError
        A bad key or value, an unsupported task, or an ``he.key_dir`` (deployments make their own keys).
    """
    if not 1 <= nodes <= MAX_LOCAL_NODES:
        raise ConfigError(f"--nodes {nodes} is not allowed; expected an integer in [1, {MAX_LOCAL_NODES}]")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"--rounds {rounds} is not allowed; expected a positive integer")
    pre = [] if _sets_key(config, sets, "he", "enabled") else ["he.enabled=true"]
    pre += [f"federation.clients={nodes}"]
    if not _sets_key(config, sets, "federation", "min_clients"):
        pre.append(f"federation.min_clients={min(2, nodes)}")
    extra = [f"federation.rounds={rounds}"] if rounds is not None else []
    cfg = load_config(config, [*pre, *sets, f"federation.clients={nodes}", *extra])
    if cfg.data.task not in SUPPORTED_TASKS:
        raise ConfigError(f"data.task = {cfg.data.task!r} is not supported by `fedveil deploy local`; "
                          f"choose one of: {', '.join(SUPPORTED_TASKS)}")
    if cfg.he.key_dir:
        raise ConfigError(f"he.key_dir = {cfg.he.key_dir!r} is not allowed here; `fedveil deploy local` creates "
                          "the federation's keys in its work directory (leave he.key_dir empty)")
    return cfg


def _close_unfinished(store: Any, run_id: str, reason: str) -> None:
    """A run whose processes were stopped must not stay "running" in the store."""
    from fedveil.store import RunNotFound
    try:
        status = store.get_run(run_id)["run"]["status"]
    except RunNotFound:
        return
    if status not in ("completed", "failed"):
        store.fail_run(run_id, reason[:2000])


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@deploy_app.command("local")
def local(nodes: int = typer.Option(2, "--nodes", help=f"SuperNodes to start (1 to {MAX_LOCAL_NODES})"),
          config: Path | None = typer.Option(None, "-c", "--config", help="TOML config file (default: defaults)"),
          set_: list[str] = typer.Option([], "--set", help="override one key, e.g. --set he.enabled=false"),
          db: str | None = typer.Option(None, "--db", help="SQLAlchemy URL of the store"),
          rounds: int | None = typer.Option(None, "--rounds", help="federated rounds (federation.rounds)"),
          work: Path | None = typer.Option(None, "--work", help="deployment directory (default: "
                                              "<run_dir>/deploy-<run_id>): keys, logs, FLWR_HOME, node files"),
          device: str = typer.Option("auto", "--device", help="the nodes' device node config: auto, cpu or cuda"),
          timeout: float | None = typer.Option(None, "--timeout", help="give up on `flwr run` after this many s"),
          quiet: bool = typer.Option(False, "--quiet", help="write Flower's log to the work dir, not here")) -> None:
    """Deploy on loopback: TLS SuperLink, authenticated SuperNodes, HE keys; run, record, stop."""
    from fedveil.commands.common import console, db_url, fail, open_store, print_summary
    from fedveil.commands.deploy_local import DeploymentError, LocalDeployment
    from fedveil.commands.launch import PeakMemory, absolutise
    from fedveil.store import mask_url
    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device {device!r} is not allowed; choose auto, cpu or cuda")
    try:
        cfg = deploy_config(config, set_, nodes=nodes, rounds=rounds)
    except ConfigError as exc:
        fail(str(exc))
    url = db or cfg.store.url or db_url(None)
    run_id = cfg.run.run_id or uuid.uuid4().hex[:12]
    cfg = cfg.replace(run=dataclasses.replace(cfg.run, run_id=run_id))
    work_dir = (work or Path(cfg.run.run_dir) / f"deploy-{run_id}").resolve()
    if cfg.he.enabled:  # keys are made by the deployment; the server only ever sees the public context
        cfg = cfg.replace(he=dataclasses.replace(cfg.he, key_dir=str(work_dir / "he-keys" / "server")))
    cfg = absolutise(cfg)
    store = open_store(url)
    console.print(f"[bold]fedveil deploy local[/] {run_id}: {nodes} SuperNodes, {cfg.federation.rounds} rounds, "
                  f"{cfg.train.method}, HE {'on' if cfg.he.enabled else 'off'}; work dir {work_dir}; "
                  f"store {mask_url(url)}")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.perf_counter()
    code = 1
    try:
        with PeakMemory() as mem, LocalDeployment(cfg, work_dir, nodes=nodes, device=device,
                                                   db_url=url) as dep:
            dep.prepare()
            dep.start_superlink()
            console.print(f"SuperLink with TLS and SuperNode authentication on {dep.address}")
            dep.start_nodes()
            console.print(f"{nodes} SuperNodes registered and connected: "
                          + ", ".join(f"{s.name} (node {dep.node_ids[s.name]})" for s in dep.specs))
            code = dep.run(stream=not quiet, timeout=timeout)
    except DeploymentError as exc:
        _close_unfinished(store, run_id, f"deployment failed: {exc}")
        fail(str(exc))
    except KeyboardInterrupt:
        _close_unfinished(store, run_id, "deployment interrupted")
        console.print("interrupted; every process this deployment started has been stopped")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - t0
    from fedveil.store import RunNotFound
    try:
        result = store.get_run(run_id)
    except RunNotFound:
        fail(f"flwr run exited with code {code} before the run was recorded (logs in {work_dir / 'logs'})")
    store.set_resources(run_id, wall_seconds=wall, peak_rss_mb=mem.peak_increase_mb)
    result = store.get_run(run_id)
    print_summary(result, url, wall, mem.peak_increase_mb)
    per_round = sorted((m["round"], m["value"]) for m in result["metrics"]
                       if m["name"] == "round-seconds" and m["client"] is None)
    if per_round:
        console.print("round wall time: " + ", ".join(f"round {r}: {v:.1f} s" for r, v in per_round))
    if code != 0 or result["run"]["status"] != "completed":
        fail(f"run {run_id} {result['run']['status']}: {result['run'].get('error') or f'flwr exit code {code}'}"
             f" (logs in {work_dir / 'logs'})")


if __name__ == "__main__":  # `python -m fedveil.commands.deploy_cmd local ...` before the sub-app is wired into the CLI
    deploy_app()
