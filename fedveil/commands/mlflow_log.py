"""Log one stored run to MLflow (``fedveil export RUN_ID --mlflow URI``; the ``mlflow`` extra).

What goes where, so that a run can be compared with others in MLflow's UI:

* **params**: the run's configuration, flattened to ``section.key`` (the config reference's names);
* **tags**: ``fedveil.run_id``, ``fedveil.method``, ``fedveil.task``, ``fedveil.status``, ``fedveil.he``;
* **metrics** with ``step`` = server round: every stored metric (``name`` for global ones,
  ``name/client-i`` per client), each client's accountant ``epsilon/client-i`` and ``dp_steps/client-i``,
  every numeric field of every audit summary (``audit/<kind>/<model>[/client-i]/<field>``) and every
  empirical lower bound (``epsilon_lb/<method>[/client-i]``);
* **artifacts**: the exported table files (``tables/``) and the privacy statement.

The logger reads the store's rows only: it never sees a database URL, key or node-local file.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedveil.files import private_dir

__all__ = ["MLflowError", "log_run", "metric_points", "tracking_target"]

_BATCH = 100  # MLflow's log_batch takes at most 100 params per call (1000 metrics)
_PARAM_CHARS = 6000  # MLflow's limit on one param value


class MLflowError(RuntimeError):
    """MLflow is missing or refused the run; the message is one line."""


def tracking_target(target: str) -> tuple[str, str | None]:
    """``(tracking URI, artifact location or None)`` for a URI or a local directory."""
    if "://" in target:
        return target, None
    root = private_dir(Path(target).expanduser().resolve())
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def _key(text: str) -> str:
    """An MLflow-legal key (letters, digits, ``_ - . / `` and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", text)


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _client(suffix: Any) -> str:
    return "" if suffix is None else f"/client-{suffix}"


def metric_points(detail: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """Every ``(key, value, step)`` the logger writes for one run's ``get_run`` detail."""
    points: list[tuple[str, float, int]] = []

    def add(key: str, value: Any, step: Any) -> None:
        number = _number(value)
        if number is not None:
            points.append((_key(key), number, int(step or 0)))

    for m in detail["metrics"]:
        add(f"{m['name']}{_client(m['client'])}", m["value"], m["round"])
    for e in detail["privacy_ledger"]:
        add(f"epsilon{_client(e['client_index'])}", e["epsilon"], e["server_round"])
        add(f"dp_steps{_client(e['client_index'])}", e["steps"], e["server_round"])
    for a in detail["audits"]:
        head = f"audit/{a['kind']}/{a['model']}{_client(a['client_index'])}"
        for field, value in _flatten("", a["summary"]):
            add(f"{head}/{field}", value, a["server_round"])
    for b in detail["epsilon_bounds"]:
        add(f"epsilon_lb/{b['method']}{_client(b['client_index'])}", b["epsilon_lb"], 0)
    return points


def log_run(detail: Mapping[str, Any], tables_dir: Path | None, target: str, experiment: str) -> str:
    """Log one run (``Store.get_run`` shape) to MLflow; returns the MLflow run id.

    Raises
    ------
    MLflowError
        mlflow is not installed, or the tracking server refused a call.
    """
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise MLflowError("--mlflow needs MLflow: pip install 'fedveil[mlflow]'") from None
    uri, artifacts = tracking_target(target)
    run = detail["run"]
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else client.create_experiment(experiment, artifact_location=artifacts)
        tags = {"fedveil.run_id": run["id"], "fedveil.method": str(run["method"]), "fedveil.task": str(run["task"]),
                "fedveil.status": str(run["status"]), "fedveil.he": str(bool(run["he_enabled"])).lower()}
        mlrun = client.create_run(exp_id, run_name=run["id"], tags=tags)
        rid = mlrun.info.run_id
        params = [Param(_key(k), str(v)[:_PARAM_CHARS]) for k, v in _flatten("", run.get("config") or {})]
        for i in range(0, len(params), _BATCH):
            client.log_batch(rid, params=params[i:i + _BATCH])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, s) for k, v, s in metric_points(detail)]
        for i in range(0, len(metrics), 10 * _BATCH):
            client.log_batch(rid, metrics=metrics[i:i + 10 * _BATCH])
        if run.get("privacy_statement"):
            client.log_text(rid, run["privacy_statement"], "privacy_statement.txt")
        if tables_dir is not None:
            client.log_artifacts(rid, str(tables_dir), "tables")
        client.set_terminated(rid, "FINISHED" if run["status"] == "completed" else "FAILED")
    except MlflowException as exc:
        raise MLflowError(f"MLflow at {target} refused the run: {str(exc).splitlines()[0]}") from None
    return str(rid)
