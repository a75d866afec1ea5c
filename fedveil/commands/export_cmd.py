"""``fedveil export RUN_ID --out DIR``: one run's store tables as CSV or Parquet, optionally into MLflow.

One file per store table (``runs.csv``, ``rounds.csv``, ``metrics.csv``, ``privacy_ledger.csv``, ...),
columns as in the schema (README, "Store"), plus ``manifest.json`` naming the run, the files, their row
counts and the format version. JSON columns (the run's config, audit summaries) are written as JSON text
in CSV and Parquet alike, so both formats hold the same values.

The ``canaries`` table holds canary secrets and is left out unless ``--include-secrets`` is given. Every
file is written 0600 into a 0700 directory all the same (exports sit next to a store that holds ε ledgers
and audit results, which are not for everyone either).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import typer

from fedveil.commands.common import DB_HELP, console, fail, open_store
from fedveil.files import private_dir, write_private

__all__ = ["FORMATS", "FORMAT_VERSION", "export_command", "write_tables"]

FORMAT_VERSION = 1
FORMATS = ("csv", "parquet")


def _cell(value: Any) -> Any:
    """A value as one flat cell: JSON text for lists and dicts, the value itself otherwise."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _csv_bytes(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else _cell(row[c]) for c in columns])
    return buf.getvalue().encode("utf-8")


def _parquet_bytes(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("--format parquet needs pyarrow: pip install 'fedveil[export]'") from None
    table = pa.table({c: [_cell(row[c]) for row in rows] for c in columns}) if rows else \
        pa.table({c: pa.array([], type=pa.string()) for c in columns})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def write_tables(tables: dict[str, list[dict[str, Any]]], columns: dict[str, list[str]], out: Path,
                 fmt: str, run_id: str) -> dict[str, int]:
    """Write each table to ``out/<table>.<fmt>`` (0600) and the manifest; returns rows per table."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not allowed; choose {' or '.join(FORMATS)}")
    encode = _csv_bytes if fmt == "csv" else _parquet_bytes
    private_dir(out)
    counts: dict[str, int] = {}
    for name, rows in tables.items():
        write_private(out / f"{name}.{fmt}", encode(rows, columns[name]))
        counts[name] = len(rows)
    manifest = {"format_version": FORMAT_VERSION, "run_id": run_id, "format": fmt,
                "files": {f"{name}.{fmt}": n for name, n in counts.items()}}
    write_private(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return counts


def export_command(
        run_id: str = typer.Argument(..., help="run id (see `fedveil runs`)"),
        out: Path = typer.Option(..., "--out", help="directory for one file per store table (created 0700)"),
        fmt: str = typer.Option("csv", "--format", help="csv or parquet (parquet needs the export extra)"),
        mlflow: str | None = typer.Option(None, "--mlflow", help="also log the run to MLflow: a tracking URI "
                                          "(sqlite:///mlflow.db, http://host:5000) or a directory (then "
                                          "sqlite:///DIR/mlflow.db, artifacts in DIR/artifacts)"),
        experiment: str = typer.Option("fedveil", "--experiment", help="MLflow experiment name"),
        include_secrets: bool = typer.Option(False, "--include-secrets",
                                             help="also export the canaries table (canary secrets)"),
        db: str | None = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Export one run's store tables (CSV or Parquet, one file per table) and optionally log it to MLflow."""
    from fedveil.store import RunNotFound
    from fedveil.store.export import SECRET_TABLES, run_columns, run_tables
    if fmt not in FORMATS:
        fail(f"--format {fmt!r} is not allowed; choose {' or '.join(FORMATS)}")
    store = open_store(db)
    try:
        detail = store.get_run(run_id)
        with store.session(readonly=True) as session:
            tables = run_tables(session, run_id)
    except RunNotFound as exc:
        fail(str(exc))
    if not include_secrets:
        tables = {k: v for k, v in tables.items() if k not in SECRET_TABLES}
    try:
        counts = write_tables(tables, run_columns(), out, fmt, run_id)
    except (OSError, RuntimeError) as exc:
        fail(f"cannot export to {out}: {exc}")
    console.print(f"exported run {run_id}: {len(counts)} tables, {sum(counts.values())} rows -> {out}")
    if mlflow is not None:
        from fedveil.commands.mlflow_log import MLflowError, log_run
        try:
            mlflow_id = log_run(detail, out, mlflow, experiment)
        except MLflowError as exc:
            fail(str(exc))
        console.print(f"logged to MLflow ({experiment}): run {mlflow_id}")
