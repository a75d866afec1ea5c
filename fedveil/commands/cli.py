"""The ``fedveil`` command line.

Every command takes ``--db URL`` (else ``$FEDVEIL_DB``, else ``sqlite:///runs/fedveil.db``).
Errors a user can fix (a bad config key, an unreadable file, an unknown run id) print one
line and exit with status 2; no traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedveil.commands.audit_cmd import audit_command
from fedveil.commands.export_cmd import export_command
from fedveil.commands.common import (
    CONFIG_HELP,
    DB_HELP,
    SET_HELP,
    console,
    db_url,
    err,
    fail,
    open_store,
    print_summary,
)
from fedveil.config import ConfigError, choices, load_config, reference_markdown, to_dict, to_run_config
from fedveil.store import mask_url

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fedveil: private federated distillation with DP-SGD, CKKS aggregation and leakage audits.")
keys_app = typer.Typer(no_args_is_help=True, help="CKKS key material for encrypted aggregation.")
app.add_typer(keys_app, name="keys")
@app.command()
def run(config: Path | None = typer.Option(None, "-c", "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        db: str | None = typer.Option(None, "--db", help=DB_HELP),
        resume: str | None = typer.Option(None, "--resume", metavar="RUN_ID",
                                             help="continue a failed or interrupted run from its last complete round "
                                                  "(its stored configuration is reused; epsilon continues)"),
        quiet: bool = typer.Option(False, "--quiet", help="do not stream Flower's logs")) -> None:
    """Run a federated experiment in a local Flower simulation and record it in the store."""
    from fedveil.commands.launch import PeakMemory, absolutise, run_flwr_home, run_simulation
    from fedveil.store import RunNotFound, StoreError
    from fedveil.store.lease import LeaseKeeper, RunLeased
    if resume:
        if config is not None or set_:
            fail("--resume reuses the run's stored configuration; -c/--set are not allowed with it")
        cfg = _resume_config(resume, db)
    else:
        try:
            cfg = load_config(config, set_)
        except ConfigError as exc:
            fail(str(exc))
    _check_inputs(cfg)  # before absolutise, which provisions HE keys: a bad input leaves nothing behind
    url = db or cfg.store.url or db_url(None)
    cfg = absolutise(cfg)
    store = open_store(url)
    run_id = cfg.run.run_id
    console.print(f"[bold]fedveil run[/] {run_id}: {cfg.train.method}, {cfg.federation.clients} clients x "
                  f"{cfg.federation.rounds} rounds, HE {'on' if cfg.he.enabled else 'off'}; store {mask_url(url)}")
    t0 = time.perf_counter()
    try:
        # One launcher per run (a second --resume is refused); its own FLWR_HOME, so stopping this
        # run's SuperLink never touches another run's processes.
        with LeaseKeeper(store, run_id), PeakMemory() as mem:
            code = run_simulation(cfg, flwr_home=run_flwr_home(cfg), db_url=url, stream=not quiet)
    except RunLeased as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(f"run {run_id}: the store failed around the run: {exc}")
    wall = time.perf_counter() - t0
    try:
        store.set_resources(run_id, wall_seconds=wall, peak_rss_mb=mem.peak_increase_mb)  # RunNotFound if unrecorded
        result = store.get_run(run_id)
    except RunNotFound:
        fail(f"flwr run exited with code {code} before the run was recorded (see the log above)")
    except StoreError as exc:
        _mark_failed(store, run_id, f"store error after the run: {exc}")
        fail(f"run {run_id}: the store failed at the end of the run ({exc}); `fedveil run --resume {run_id}` "
             "continues it from its last stored round")
    print_summary(result, url, wall, mem.peak_increase_mb)
    if code != 0 or result["run"]["status"] != "completed":
        fail(f"run {run_id} {result['run']['status']}: {result['run'].get('error') or f'flwr exit code {code}'}")


def _mark_failed(store: Any, run_id: str, error: str) -> None:
    """Mark an unfinished run failed if the database allows it now (never a completed one); a run left
    ``running`` is resumable either way."""
    from fedveil.store import StoreError
    try:
        if store.get_run(run_id)["run"]["status"] != "completed":
            store.fail_run(run_id, error)
    except StoreError:
        pass


def _resume_config(run_id: str, db: str | None) -> Any:
    """The stored configuration of an unfinished run, marked for resumption."""
    import dataclasses

    from fedveil.config import from_dict
    from fedveil.store import RunNotFound
    store = open_store(db)
    try:
        stored = store.get_run(run_id)["run"]
    except RunNotFound as exc:
        fail(str(exc))
    if stored["status"] == "completed":
        fail(f"run {run_id} is already completed; nothing to resume")
    cfg = from_dict(stored["config"])
    # The stored config never holds the URL (credentials): resume writes to the store it was read from.
    cfg = cfg.replace(store=dataclasses.replace(cfg.store, url=db_url(db)))
    console.print(f"resuming run {run_id} after round {stored['last_complete_round']} of {cfg.federation.rounds}")
    return cfg.replace(run=dataclasses.replace(cfg.run, run_id=run_id, resume=True))


def _check_inputs(cfg: Any) -> None:
    """Fail before any work on data files that cannot be read and models that cannot be used."""
    from distill.hf import preflight
    try:
        preflight(cfg)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    if cfg.data.task == "text-file":
        from distill.loaders import DataFileError, load_text_records
        for path in filter(None, [cfg.data.path, cfg.data.heldout_path]):
            try:
                load_text_records(path, field=cfg.data.field)
            except DataFileError as exc:
                fail(str(exc))


@app.command()
def runs(fmt: str = typer.Option("table", "--format", help="table or json"),
         db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """List recorded runs."""
    rows = open_store(db).list_runs()
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
        return
    if fmt != "table":
        fail(f"--format {fmt!r} is not allowed; choose table or json")
    table = Table()
    # The id is what a user pastes into `show`: never wrapped or cut; the other columns give way instead.
    table.add_column("id", no_wrap=True, min_width=max((len(r["id"]) for r in rows), default=2))
    for col in ("name", "status", "method", "he", "clients", "rounds", "utility", "max eps", "created"):
        table.add_column(col)
    for r in rows:
        util = r.get("final_perplexity") or r.get("final_accuracy")
        table.add_row(r["id"], r["name"], r["status"], r["method"], "on" if r["he_enabled"] else "off",
                      str(r["num_clients"]), str(r["num_rounds"]), f"{util:.3f}" if util else "-",
                      f"{r['max_epsilon']:.3f}" if r.get("max_epsilon") is not None else "-", str(r["created_at"])[:19])
    # Piped or redirected output has no terminal width to respect: print every column in full.
    if console.is_terminal:
        console.print(table)
        return
    width = console.width  # print() caps its width at the console's, so widen the console itself
    console.width = max(width, 200)
    try:
        console.print(table)
    finally:
        console.width = width


@app.command()
def show(run_id: str = typer.Argument(..., help="run id (see `fedveil runs`)"),
         fmt: str = typer.Option("table", "--format", help="table or json (shape documented in README)"),
         db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Show one run: configuration, per-round metrics, privacy ledger, HE records and audits."""
    from fedveil.store import RunNotFound
    store = open_store(db)
    try:
        result = store.get_run(run_id)
    except RunNotFound as exc:
        fail(str(exc))
    if fmt == "json":
        print(json.dumps(result, indent=2, default=str))
        return
    if fmt != "table":
        fail(f"--format {fmt!r} is not allowed; choose table or json")
    r = result["run"]
    he = "on" if r["he_enabled"] else "off"
    console.print(f"[bold]{r['id']}[/] {r['name']} — {r['status']} ({r['method']}, HE {he})")
    if r.get("error"):
        console.print(f"[red]error:[/] {r['error']}")
    console.print(r.get("privacy_statement") or "")
    print_summary(result, db_url(db), r.get("wall_seconds") or 0.0, r.get("peak_rss_mb") or 0.0)


@app.command("config")
def config_cmd(config: Path | None = typer.Option(None, "-c", "--config", help=CONFIG_HELP),
               set_: list[str] = typer.Option([], "--set", help=SET_HELP),
               reference: bool = typer.Option(False, "--reference", help="print the key reference as Markdown"),
               flat: bool = typer.Option(False, "--flat", help="print Flower's flat run_config"),
               sync_files: bool = typer.Option(False, "--sync-files", help="rewrite configs/default.toml and "
                                               "pyproject's [tool.flwr.app.config] from the schema defaults")) -> None:
    """Validate and print the resolved configuration."""
    if reference:
        print(reference_markdown())
        return
    if sync_files:
        from fedveil.commands.launch import sync_default_files
        for path in sync_default_files():
            console.print(f"wrote {path}")
        return
    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        fail(str(exc))
    import tomli_w
    print(json.dumps(to_run_config(cfg), indent=2) if flat else tomli_w.dumps(to_dict(cfg)))


@app.command()
def dashboard(db: str | None = typer.Option(None, "--db", help=DB_HELP),
              port: int = typer.Option(8501, "--port", help="TCP port"),
              address: str = typer.Option("127.0.0.1", "--address",
                                          help="interface to bind (0.0.0.0 = all; "
                                               "the audit page shows canaries)")) -> None:
    """Start the Streamlit dashboard over the store (read-only)."""
    from fedveil.commands.dashboard_cmd import launch
    raise typer.Exit(launch(db_url(db), port, address=address))


app.command("audit")(audit_command)
app.command("export")(export_command)


@app.command("bench")
def bench_cmd(name: str = typer.Argument(..., help="benchmark name (pii, rollout, audit, he, dpstep, coldstart, "
                                                    "edgefd, lm, lm-wikitext, exposure, exposure-wikitext, demo, "
                                                    "scale) or 'all'"),
              data: str | None = typer.Option(None, "--data",
                                              help="path to a real corpus where the benchmark takes one"),
              quick: bool = typer.Option(False, "--quick",
                                         help="smoke-test sizes (minutes, not a measurement)")) -> None:
    """Run benchmarks; results go to bench/results/*.json and bench/REPORT.md."""
    from fedveil.commands.bench_cmd import BenchError, bench
    try:
        code = bench(name, data, quick)
    except BenchError as exc:
        fail(str(exc))
    raise typer.Exit(code)


def _register_deploy() -> None:
    from fedveil.commands.deploy_cmd import deploy_app
    app.add_typer(deploy_app, name="deploy", help="Run fedveil on Flower's Deployment Engine (TLS, node auth).")


_register_deploy()


@keys_app.command("init")
def keys_init(out: Path = typer.Option(..., "--out", help="directory for secret.ctx, public.ctx, manifest.json"),
              profile: str = typer.Option("compact", "--profile",
                                          help="CKKS profile: " + ", ".join(choices("he.profile")))) -> None:
    """Create the clients' secret CKKS context and the server's public one (files 0600)."""
    from privacy.he.errors import KeyMaterialError
    from privacy.he.keys import write_keys
    from privacy.he.profiles import PROFILES
    if profile not in PROFILES:
        fail(f"--profile {profile!r} is not allowed; choose one of: {', '.join(PROFILES)}")
    try:
        manifest = write_keys(out, profile)
    except (KeyMaterialError, OSError) as exc:
        fail(str(exc))
    console.print(f"keys written to {out} (manifest {manifest})")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
