"""What every command shares: the consoles, one-line errors, the store URL and the run summary.

Kept apart from ``cli`` so that sub-command modules (deploy, audit, ...) can use them without
importing the CLI module that registers them (which would be an import cycle).
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from fedveil.store import mask_url

console = Console()
err = Console(stderr=True)

DB_HELP = "SQLAlchemy URL of the store (default: $FEDVEIL_DB or sqlite:///runs/fedveil.db)"
CONFIG_HELP = "TOML config file (default: the embedded defaults = configs/default.toml)"
SET_HELP = "override one key, e.g. --set federation.rounds=5 (repeatable)"


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit 2."""
    from rich.markup import escape
    # Messages quote config text ("[federation]", user values): printed literally, never as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def db_url(db: str | None) -> str:
    from fedveil.store import default_db_url
    return db or default_db_url()


def open_store(db: str | None) -> Any:
    from fedveil.store import Store, StoreError
    try:
        return Store(db_url(db))
    except StoreError as exc:
        fail(str(exc))


def utility_rows(metrics: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Held-out utility, the released student first, then the reference points it is judged against.

    Perplexity runs show the global student by round (round 0 = the public-only warm start every client
    started from), the clients' non-private teachers and the uniform guess over the vocabulary; the last
    two are references, never released. Digits runs show accuracy by round.
    """
    glob: dict[str, dict[int, float]] = {m["name"]: {} for m in metrics}
    for m in metrics:
        if m["client"] is None and m["value"] is not None:
            glob[m["name"]][m["round"] or 0] = float(m["value"])
    rows: list[tuple[str, str]] = []
    for name in ("perplexity", "accuracy"):
        series = glob.get(name) or {}
        trained = {r: v for r, v in series.items() if r > 0}
        if not trained:
            continue
        last = max(trained)
        rows.append((f"final {name}, global student (round {last})", f"{trained[last]:.3f}"))
        rows.append((f"{name} by round", " → ".join(f"{series[r]:.1f}" for r in sorted(series))))
        if 0 in series:
            rows.append((f"{name}, public-only student (round 0)", f"{series[0]:.3f}"))
    for name, label in (("teacher-perplexity", "perplexity, clients' teachers (non-DP; kept on the nodes)"),
                        ("uniform-perplexity", "perplexity, uniform guess (vocabulary size)")):
        if glob.get(name):
            rows.append((label, f"{glob[name][max(glob[name])]:.3f}"))
    return rows


def print_summary(result: dict[str, Any], url: str, wall: float, peak_mb: float) -> None:
    """Print a finished (or failed) run as one table: ε per client, utility, audits, cost."""
    r = result["run"]
    table = Table(title=f"run {r['id']} — {r['status']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("database", mask_url(url))  # the only form of a store URL ever shown
    for what, value in utility_rows(result["metrics"]):
        table.add_row(what, value)
    eps: dict[int, float] = {}
    for row in result["privacy_ledger"]:
        eps[row["client_index"]] = max(eps.get(row["client_index"], 0.0), row["epsilon"])
    for client, e in sorted(eps.items()):
        table.add_row(f"epsilon, client {client}", f"{e:.3f}")
    bounds = result.get("epsilon_bounds", [])
    if bounds:
        worst_b = max(bounds, key=lambda b: b["epsilon_lb"])
        flagged = sum(1 for b in bounds if b.get("flagged"))
        table.add_row(f"largest empirical eps_LB ({len(bounds)} bounds)",
                      f"{worst_b['epsilon_lb']:.3f} ({worst_b['method']}, client {worst_b['client_index']})"
                      + (f"  [red]{flagged} exceed the claim[/]" if flagged else ""))
        # Audit power (docs/METHODS.md §8): the best any attack could certify with this audit.
        powered = [b for b in bounds if (b.get("details") or {}).get("power") is not None]
        if powered:
            from privacy.audit.epsilon import power_note
            best = max(powered, key=lambda b: b["details"]["power"])
            claim = max((b["accountant_epsilon"] for b in bounds if b.get("accountant_epsilon") is not None),
                        default=None)
            power = float(best["details"]["power"])
            note = power_note(power, claim)
            table.add_row("audit power (largest certifiable eps_LB)",
                          f"{power:.3f} ({best['method']})" + (f"  [yellow]{note}[/]" if note else ""))
    audits = result.get("audits", [])
    by_model: dict[str, list[float]] = {}
    for a in audits:
        for e in a.get("exposures", []):
            by_model.setdefault(a["model"], []).append(e["exposure_rank"])
    for model, values in sorted(by_model.items()):
        table.add_row(f"max canary exposure, {model}", f"{max(values):.2f} bits")
    mem: dict[str, list[float]] = {}
    for a in audits:
        if a["kind"] == "memorisation" and a["summary"].get("rate") is not None:
            mem.setdefault(a["model"], []).append(float(a["summary"]["rate"]))
    for model, rates in sorted(mem.items()):
        table.add_row(f"memorised share, {model}", f"{sum(rates) / len(rates):.3f}")
    table.add_row("wall time", f"{wall:.1f} s")
    table.add_row("peak memory increase", f"{peak_mb:.0f} MiB")
    console.print(table)
