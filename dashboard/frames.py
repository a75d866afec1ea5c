"""Pure builders: the store's JSON (``Store.list_runs`` / ``Store.get_run``) as pandas tables.

Nothing here touches Streamlit or the database, so every transformation the pages
show is testable on plain dictionaries. Missing pieces give empty frames with the
right columns, never an exception: a run in progress has no final metrics yet, an
old run may have no ledger, no HE records or no audits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

GLOBAL = "global"
UTILITY_LABELS: dict[str, str] = {
    "perplexity": "Held-out perplexity (lower is better)",
    "accuracy": "Test accuracy (%, higher is better)",
}
CLIENT_METRIC = {"perplexity": "client-perplexity", "accuracy": "client-accuracy"}


def number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (the store returns ``null`` for non-finite values)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number with ``digits`` decimals (scientific when tiny), or an en dash when missing."""
    x = number(value)
    if x is None:
        return "–"
    # Values too small for the fixed decimals would print as 0.00: those switch to scientific notation.
    text = f"{x:.1e}" if x != 0 and abs(x) < 10 ** (-digits) else f"{x:,.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


def run_label(run: Mapping[str, Any]) -> str:
    """Human label of a run for pickers: ``name · method · status · id``."""
    rid = str(run.get("id", ""))[:8]
    return f"{run.get('name', '?')} · {run.get('method', '?')} · {run.get('status', '?')} · {rid}"


# ---- runs list ------------------------------------------------------------------------------------------------

RUN_COLUMNS = [
    "id", "name", "method", "task", "he", "clients", "rounds", "rounds_done", "status", "final_perplexity",
    "final_accuracy", "max_epsilon", "worst_exposure", "eps_lb_flag", "created",
]


def runs_frame(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run with the columns of the Runs table (see :data:`RUN_COLUMNS`)."""
    rows = [
        {
            "id": r["id"],
            "name": r.get("name", ""),
            "method": r.get("method", ""),
            "task": r.get("task", ""),
            "he": bool(r.get("he_enabled", False)),
            "clients": r.get("num_clients"),
            "rounds": r.get("num_rounds"),
            "rounds_done": r.get("last_complete_round", 0),
            "status": r.get("status", ""),
            "final_perplexity": number(r.get("final_perplexity")),
            "final_accuracy": _percent(r.get("final_accuracy")),
            "max_epsilon": number(r.get("max_epsilon")),
            "worst_exposure": number(r.get("worst_exposure")),
            "eps_lb_flag": bool(r.get("eps_lb_exceeds_claim", False)),
            "created": pd.Timestamp(r["created_at"]) if r.get("created_at") else pd.NaT,
        }
        for r in runs
    ]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for col in ("final_perplexity", "final_accuracy", "max_epsilon", "worst_exposure"):
        frame[col] = frame[col].astype("float64")
    return frame


def _percent(value: Any) -> float | None:
    """Accuracy stored as a fraction in [0, 1] shown as a percentage."""
    x = number(value)
    if x is None:
        return None
    return 100.0 * x if x <= 1.0 else x


# ---- one run --------------------------------------------------------------------------------------------------

def utility_metric(detail: Mapping[str, Any]) -> str | None:
    """``"accuracy"`` for classification runs, ``"perplexity"`` for language runs, ``None`` without either."""
    names = {m["name"] for m in detail.get("metrics", []) if m.get("client") is None}
    for name in ("accuracy", "perplexity"):
        if name in names:
            return name
    client_names = {m["name"] for m in detail.get("metrics", [])}
    for name, client_name in (("accuracy", "client-accuracy"), ("perplexity", "client-perplexity")):
        if client_name in client_names:
            return name
    return None


def metric_frame(detail: Mapping[str, Any], names: Iterable[str]) -> pd.DataFrame:
    """Per-round metric values: columns ``round, series, client, name, value``.

    ``series`` is ``"global"`` for federation-level values, else ``"client <i>"``. Values without a
    round or a finite value are dropped; a metric repeated for a round keeps its last value.
    """
    wanted = set(names)
    rows = []
    for m in detail.get("metrics", []):
        value = number(m.get("value"))
        if m.get("name") not in wanted or m.get("round") is None or value is None:
            continue
        client = m.get("client")
        rows.append({
            "round": int(m["round"]),
            "series": GLOBAL if client is None else f"client {client}",
            "client": client,
            "name": m["name"],
            "value": value,
        })
    frame = pd.DataFrame(rows, columns=["round", "series", "client", "name", "value"])
    if frame.empty:
        return frame
    return frame.drop_duplicates(["round", "series", "name"], keep="last").sort_values(["name", "series", "round"])


REFERENCE_LINES = {"teacher-perplexity": "clients' teachers (non-DP; kept on the nodes)",
                   "uniform-perplexity": "uniform guess (vocabulary size)"}


def reference_frame(detail: Mapping[str, Any], metric: str) -> pd.DataFrame:
    """Reference levels a utility chart draws as rules: columns ``label, value`` (last value of each).

    For perplexity: the clients' non-private teachers and the uniform guess. Round 0 of the global series
    (the public-only student) is a point of the series itself, not a rule.
    """
    rows: dict[str, float] = {}
    if metric == "perplexity":
        for m in sorted(detail.get("metrics", []), key=lambda m: m.get("round") or 0):
            value = number(m.get("value"))
            if m.get("client") is None and m.get("name") in REFERENCE_LINES and value is not None:
                rows[REFERENCE_LINES[m["name"]]] = value
    return pd.DataFrame({"label": list(rows), "value": list(rows.values())}, columns=["label", "value"])


def utility_frame(detail: Mapping[str, Any], metric: str) -> pd.DataFrame:
    """Global and per-client utility per round (accuracy in percent); columns of :func:`metric_frame`."""
    frame = metric_frame(detail, [metric, CLIENT_METRIC.get(metric, metric)])
    if metric == "accuracy" and not frame.empty:
        frame["value"] = frame["value"].map(_percent)
    return frame.reset_index(drop=True)


def final_utility(detail: Mapping[str, Any], metric: str) -> float | None:
    """Global utility at the highest recorded round (accuracy in percent)."""
    frame = utility_frame(detail, metric)
    glob = frame[frame["series"] == GLOBAL]
    if glob.empty:
        return None
    return float(glob.sort_values("round")["value"].iloc[-1])


def target_epsilon(config: Mapping[str, Any]) -> float | None:
    """The federation-wide ε budget of a run's config (``privacy.target_epsilon``), ``None`` without DP."""
    privacy = config.get("privacy")
    if not isinstance(privacy, Mapping) or privacy.get("enabled") is False:
        return None
    return number(privacy.get("target_epsilon"))


LEDGER_COLUMNS = ["round", "client", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant",
                  "max_grad_norm", "grad_sample_mode"]


def ledger_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """The privacy ledger: cumulative ε per client after each round (see :data:`LEDGER_COLUMNS`)."""
    rows = [
        {
            "round": e["server_round"],
            "client": f"client {e['client_index']}",
            "epsilon": number(e.get("epsilon")),
            "delta": number(e.get("delta")),
            "noise_multiplier": number(e.get("noise_multiplier")),
            "sample_rate": number(e.get("sample_rate")),
            "steps": e.get("steps"),
            "accountant": str(e.get("accountant") or "").upper(),
            "max_grad_norm": number(e.get("max_grad_norm")),
            "grad_sample_mode": e.get("grad_sample_mode") or "",
        }
        for e in detail.get("privacy_ledger", [])
    ]
    return pd.DataFrame(rows, columns=LEDGER_COLUMNS)


def he_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """HE costs per round: columns ``round, client_mb, server_mb, encrypt_s, aggregate_s, decrypt_s, max_abs_error``.

    Client rows (``client_index`` set) are summed into the upload volume and encryption time; the
    server row (``client_index`` null) gives the aggregate's size. Times are summed over clients.
    """
    columns = ["round", "client_mb", "server_mb", "encrypt_s", "aggregate_s", "decrypt_s", "max_abs_error", "profile"]
    acc: dict[int, dict[str, Any]] = {}
    for h in detail.get("he_records", []):
        rnd = h.get("server_round")
        if rnd is None:
            continue
        row = acc.setdefault(int(rnd), {c: 0.0 for c in columns[1:6]} | {"max_abs_error": None, "profile": ""})
        mb = (number(h.get("bytes_sent")) or 0.0) / 2**20
        row["client_mb" if h.get("client_index") is not None else "server_mb"] += mb
        for src, dst in (("encrypt_seconds", "encrypt_s"), ("aggregate_seconds", "aggregate_s"),
                         ("decrypt_seconds", "decrypt_s")):
            row[dst] += number(h.get(src)) or 0.0
        err = number(h.get("max_abs_error"))
        if err is not None:
            row["max_abs_error"] = err if row["max_abs_error"] is None else max(row["max_abs_error"], err)
        row["profile"] = h.get("profile") or row["profile"]
    rows = [{"round": rnd, **values} for rnd, values in sorted(acc.items())]
    return pd.DataFrame(rows, columns=columns)


def rounds_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """Rounds with their participation counts and duration."""
    columns = ["round", "status", "sampled", "replied", "failed", "rejected", "seconds"]
    rows = [
        {"round": r["server_round"], "status": r.get("status"), "sampled": r.get("num_sampled"),
         "replied": r.get("num_replied"), "failed": r.get("num_failed"), "rejected": r.get("num_rejected"),
         "seconds": number(r.get("wall_seconds"))}
        for r in detail.get("rounds", [])
    ]
    return pd.DataFrame(rows, columns=columns)


def events_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """Client events (drop-outs, rejected payloads, failures, budget refusals) in recording order."""
    columns = ["round", "client", "node", "kind", "reason"]
    rows = [
        {"round": e.get("server_round"), "client": e.get("client_index"), "node": e.get("node_id") or "",
         "kind": e.get("kind"), "reason": e.get("reason") or ""}
        for e in detail.get("events", [])
    ]
    return pd.DataFrame(rows, columns=columns)


def clients_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """Clients of a run with their data size and teacher provenance."""
    columns = ["client", "node", "examples", "teacher", "teacher_epsilon"]
    rows = [
        {"client": c["client_index"], "node": c.get("node_id") or "", "examples": c.get("num_examples"),
         "teacher": c.get("teacher_provenance") or "", "teacher_epsilon": number(c.get("teacher_epsilon"))}
        for c in detail.get("clients", [])
    ]
    return pd.DataFrame(rows, columns=columns)


def config_frame(config: Mapping[str, Any], prefix: str = "") -> pd.DataFrame:
    """A nested config flattened to ``section.key`` / value rows (values as text, lists comma-joined)."""
    rows: list[dict[str, str]] = []

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(value, Mapping):
                walk(value, name)
            elif isinstance(value, list | tuple):
                rows.append({"key": name, "value": ", ".join(map(str, value))})
            else:
                rows.append({"key": name, "value": "" if value is None else str(value)})

    walk(config, prefix)
    return pd.DataFrame(rows, columns=["key", "value"])


# ---- comparing runs -------------------------------------------------------------------------------------------

PRIVACY_AXES: dict[str, str] = {
    "max_epsilon": "Max ε spent by any client (lower is more private)",
    "worst_exposure": "Worst canary exposure (bits, lower is less leakage)",
}


def frontier_frame(runs: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Runs as privacy–utility points with a Pareto-frontier marker.

    Parameters
    ----------
    runs : DataFrame
        Output of :func:`runs_frame`.
    x : str
        Privacy axis, a key of :data:`PRIVACY_AXES` (lower is better).
    metric : str
        ``"perplexity"`` (lower is better) or ``"accuracy"`` (higher is better).

    Returns
    -------
    DataFrame
        ``id, name, method, x, y, frontier`` for runs that have both values; ``frontier`` is True
        for runs no other run beats on both axes (ties kept).
    """
    if x not in PRIVACY_AXES:
        raise ValueError(f"privacy axis must be one of {sorted(PRIVACY_AXES)}; got {x!r}")
    if metric not in UTILITY_LABELS:
        raise ValueError(f"metric must be one of {sorted(UTILITY_LABELS)}; got {metric!r}")
    ycol = f"final_{metric}"
    points = runs.loc[runs[x].notna() & runs[ycol].notna(), ["id", "name", "method", x, ycol]]
    points = points.rename(columns={x: "x", ycol: "y"}).reset_index(drop=True)
    sign = 1.0 if metric == "perplexity" else -1.0  # minimise sign * y
    cost = sign * points["y"]
    points["frontier"] = [
        not bool(((points["x"] <= px) & (cost <= py) & ((points["x"] < px) | (cost < py))).any())
        for px, py in zip(points["x"], cost, strict=True)
    ]
    return points.sort_values("x").reset_index(drop=True)
