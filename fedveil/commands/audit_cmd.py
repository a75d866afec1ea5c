"""``fedveil audit RUN_ID``: re-run the audits of a stored run from its checkpoints (docs/METHODS.md §8).

The end-of-run audits happen inside ``fedveil run``; this command repeats them on demand, in this
process, as the nodes of a simulation (docs/METHODS.md §8): the server's ``<run_dir>/tokenizer`` and
``<run_dir>/global`` (absent under HE, where the server never holds plaintext weights), and each
node's own directory (:func:`fedveil.files.node_dir`, below ``$FEDVEIL_NODE_DIR`` or the simulation's
``nodes/``) for its teacher, its local student and its ledger. The server's run directory holds none
of them. The records of each client are derived again
from the stored configuration, which reproduces a simulated run's data exactly; a client whose record
count differs from what it reported (a deployment node with its own data file) is audited for
exposure only. Results are added to the store next to the earlier ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["audit_command", "audit_run"]


def _load_models(run_dir: Path, client_dir: Path, device: Any) -> dict[str, Any]:
    """The node's teacher and student from its own directory ``client_dir``; the global from the server's."""
    from distill.models import load_checkpoint
    models: dict[str, Any] = {}
    for name in ("teacher", "student"):
        if (client_dir / name / "config.json").is_file():
            models[name] = load_checkpoint(client_dir / name, device).eval()
    if (run_dir / "global" / "config.json").is_file():
        models["global"] = load_checkpoint(run_dir / "global", device).eval()
    return models


def audit_run(run_id: str, kinds: list[str] | tuple[str, ...] | None, db_url: str, *, progress: bool = True) -> None:
    """Audit every client of a stored run again and store the results.

    Parameters
    ----------
    run_id
        The run (see ``fedveil runs``).
    kinds
        Subset of ``exposure``, ``memorisation``, ``mia``, ``epsilon``; empty or None = all.
    db_url
        SQLAlchemy URL of the store.
    progress
        Show progress bars (clients, candidate scoring).

    Raises
    ------
    ValueError
        Unknown kind, or a run that is not a language-model run / has no checkpoints on disk.
    fedveil.store.RunNotFound
        Unknown run id.
    """
    from rich.progress import Progress

    import os

    from client.audit_client import audit_delta, dp_steps_taken, measure_node
    from client.node_store import load_ledger
    from fedveil.commands.launch import simulation_node_root
    from fedveil.files import NODE_DIR_ENV, node_dir
    from distill.textdata import client_texts
    from privacy.audit.measures import ALL_KINDS
    from distill.models import pick_device
    from distill.tokenizer import load_tokenizer
    from fedveil.config import from_dict
    from fedveil.store import Store
    from privacy.audit.plan import insert_planned, public_plan, run_canary_plan, training_encode
    from server.audits import revealed_canaries, store_canaries, store_client_audit, store_pooled

    chosen = tuple(kinds) if kinds else ALL_KINDS
    bad = [k for k in chosen if k not in ALL_KINDS]
    if bad:
        raise ValueError(f"unknown audit kind(s) {bad}; allowed: {', '.join(ALL_KINDS)}")
    with Store(db_url) as store:
        run = store.get_run(run_id)
        cfg = from_dict(run["run"]["config"])
        if cfg.data.task == "digits":
            raise ValueError(f"run {run_id} is a digits (classifier) run; audits apply to language-model runs")
        run_dir = Path(run["run"]["run_dir"] or Path(cfg.run.run_dir) / run_id)
        # This process acts as the simulation's nodes: their root, as `fedveil run` set it.
        os.environ.setdefault(NODE_DIR_ENV, str(simulation_node_root(cfg.run.run_dir)))
        if not (run_dir / "tokenizer").is_dir():
            raise ValueError(f"run {run_id}: no tokenizer under {run_dir} (run directory moved or deleted?)")
        tokenizer = load_tokenizer(run_dir / "tokenizer")
        encode = training_encode(tokenizer)
        # The plan of the configuration the run TRAINED with: only those canaries were inserted.
        counts = {int(c["client_index"]): int(c["num_examples"]) for c in run["clients"]}
        plan = public_plan(cfg, run_canary_plan(cfg, encode), counts)
        store_canaries(store, run_id, plan)
        ledger = store.latest_ledger(run_id)
        device = pick_device(cfg.model.device)
        clients = sorted(c["client_index"] for c in run["clients"]) or list(range(cfg.federation.clients))
        results: dict[int, dict[str, Any]] = {}
        with Progress(disable=not progress) as bar:
            task = bar.add_task(f"auditing run {run_id}", total=len(clients))
            for pid in clients:
                own_dir = node_dir(run_id, pid)  # the node's own copies, never the server's run directory
                models = _load_models(run_dir, own_dir, device)
                if not models:
                    bar.console.print(f"client {pid}: no checkpoint on disk, skipped")
                    bar.advance(task)
                    continue
                own = client_texts(cfg, pid)
                reported = next((c["num_examples"] for c in run["clients"] if c["client_index"] == pid), len(own))
                client_kinds = chosen if reported == len(own) else tuple(k for k in chosen if k == "exposure")
                if client_kinds != chosen:
                    bar.console.print(f"client {pid}: its records are not reproducible from the config; "
                                      "exposure only")
                # The node's own ledger (the store's copy is for display and may be behind it).
                node_steps = load_ledger(own_dir, cfg.privacy.accountant).steps
                entry = ledger.get(pid)
                steps = max(node_steps, int(entry["steps"]) if entry else 0) or dp_steps_taken(cfg, None)
                n_train = len(insert_planned(cfg, pid, own, plan))
                delta = audit_delta(cfg, dict(entry) if entry else None, n_train)
                result = measure_node(cfg, tokenizer, pid, models, own, steps=steps, delta=delta,
                                      kinds=client_kinds, device=device, progress=progress)
                result["meta"]["on_demand"] = True
                store_client_audit(store, run_id, cfg, pid, result, ledger)
                results[pid] = result
                one_run = ((result.get("epsilon") or {}).get("global") or {}).get("one_run") or {}
                store_canaries(store, run_id, revealed_canaries(plan, pid, one_run), revealed=True)
                bar.advance(task)
        store_pooled(store, run_id, cfg, results, ledger)


def control_run(run_id: str, db_url: str, *, quiet: bool = True) -> str:
    """Train the non-DP control of a DP run: its configuration with ``privacy.enabled = false`` and the
    same canary design, as a new run marked ``audit.control_of = run_id`` (docs/METHODS.md §8).

    The control's pooled one-run ε_LB is stored in the DP run as a ``control`` bound, compared with
    the DP run's largest ε: an audit whose control does not exceed the claim cannot catch a leak.
    Returns the control run's id.
    """
    import dataclasses

    from fedveil.commands.launch import absolutise, run_flwr_home, run_simulation
    from fedveil.config import from_dict
    from fedveil.store import Store

    with Store(db_url) as store:
        stored = store.get_run(run_id)["run"]
    cfg = from_dict(stored["config"])
    if not cfg.privacy.enabled:
        raise ValueError(f"run {run_id} has DP off; its control would be itself")
    if cfg.data.task == "digits":
        raise ValueError(f"run {run_id} is a digits (classifier) run; audits apply to language-model runs")
    cfg = cfg.replace(
        run=dataclasses.replace(cfg.run, run_id="", resume=False, name=f"{cfg.run.name}-control"),
        privacy=dataclasses.replace(cfg.privacy, enabled=False),
        # privacy.target_epsilon and δ stay, so the canary design (one_run_per_client) is the DP run's.
        audit=dataclasses.replace(cfg.audit, enabled=True, control_of=run_id),
        he=dataclasses.replace(cfg.he, key_dir=""))
    cfg = absolutise(cfg)
    code = run_simulation(cfg, flwr_home=run_flwr_home(cfg), db_url=db_url, stream=not quiet)
    if code != 0:
        raise ValueError(f"control run {cfg.run.run_id} failed (flwr exit code {code}); see "
                         f"{Path(cfg.run.run_dir) / (cfg.run.run_id + '.log')}")
    return cfg.run.run_id


def audit_command(
    run_id: Annotated[str, typer.Argument(help="run id (see `fedveil runs`)")],
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", help="exposure, memorisation, mia or epsilon (repeatable; default all)")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="SQLAlchemy URL of the store (default: $FEDVEIL_DB or sqlite:///runs/fedveil.db)")] = None,
    control: Annotated[bool, typer.Option(
        "--control", help="train the run's configuration without DP under the same canary design; its eps_LB "
                          "is stored in this run as the control (it must exceed the claimed eps)")] = False,
    export: Annotated[Path | None, typer.Option(
        "--export", help="write the run's canary scores, MIA summaries and bound parameters to this "
                         "directory (docs/AUDIT_EXPORT.md) instead of auditing")] = None,
) -> None:
    """Re-run leakage audits of a stored run from its checkpoints and store the results."""
    from rich.console import Console

    from fedveil.store import RunNotFound, StoreError, default_db_url
    err = Console(stderr=True)
    url = db or default_db_url()
    try:
        if export is not None:
            from fedveil.commands.audit_export import export_run
            files = export_run(run_id, url, export)
            Console().print(f"exported {len(files)} files of run {run_id} to {export}")
            return
        if control:
            control_id = control_run(run_id, url)
            Console().print(f"control run {control_id} of run {run_id} done; its bound is stored in both")
            return
        audit_run(run_id, kind, url)
    except (ValueError, RunNotFound, StoreError, FileNotFoundError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(f"audits of run {run_id} stored; see `fedveil show {run_id} --format json`")
