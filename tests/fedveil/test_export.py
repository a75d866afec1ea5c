"""`fedveil export`: CSV / Parquet table files and an MLflow run, read back and compared with the store."""

from __future__ import annotations

import csv
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedveil.commands.cli import app
from fedveil.commands.export_cmd import _cell
from fedveil.commands.mlflow_log import _flatten
from fedveil.store import Store, sqlite_url
from fedveil.store.export import run_tables
from tests.dashboard.store_data import TEXT_PPL, TEXT_RUN, fill_text_run


@pytest.fixture()
def text_db(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "fv.db")
    with Store(url) as store:
        fill_text_run(store)
    return url


def _export(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", *args])
    return result.exit_code, result.output


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_csv_export_holds_every_row_of_the_run(tmp_path: Path, text_db: str) -> None:
    out = tmp_path / "out"
    code, output = _export(TEXT_RUN, "--out", str(out), "--db", text_db)
    assert code == 0, output
    with Store(text_db) as store:
        detail = store.get_run(TEXT_RUN)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == TEXT_RUN and manifest["format"] == "csv"
    # one file per per-run table, row counts as in the store
    for table in ("metrics", "privacy_ledger", "he_records", "client_events", "audits", "epsilon_bounds",
                  "rounds", "clients"):
        key = "events" if table == "client_events" else table
        assert manifest["files"][f"{table}.csv"] == len(detail[key]) > 0, table
        assert len(_csv(out / f"{table}.csv")) == len(detail[key])
    exposures = sum(len(a["exposures"]) for a in detail["audits"])
    assert len(_csv(out / "exposures.csv")) == exposures > 0
    (run,) = _csv(out / "runs.csv")
    assert run["id"] == TEXT_RUN and json.loads(run["config"]) == detail["run"]["config"]
    ppl = [float(r["value"]) for r in _csv(out / "metrics.csv") if r["name"] == "perplexity"]
    assert ppl == TEXT_PPL
    eps = sorted((int(r["server_round"]), int(r["client_index"]), float(r["epsilon"]))
                 for r in _csv(out / "privacy_ledger.csv"))
    assert eps == sorted((e["server_round"], e["client_index"], e["epsilon"]) for e in detail["privacy_ledger"])
    # canary secrets stay out unless asked for; everything is owner-only
    assert not (out / "canaries.csv").exists() and "canaries.csv" not in manifest["files"]
    assert _mode(out) == 0o700
    assert all(_mode(f) == 0o600 for f in out.iterdir())


def test_secrets_only_on_request_and_parquet_equals_csv(tmp_path: Path, text_db: str) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    code, output = _export(TEXT_RUN, "--out", str(tmp_path / "c"), "--db", text_db, "--include-secrets")
    assert code == 0, output
    assert _mode(tmp_path / "c" / "canaries.csv") == 0o600 and len(_csv(tmp_path / "c" / "canaries.csv")) == 4
    code, output = _export(TEXT_RUN, "--out", str(tmp_path / "p"), "--format", "parquet", "--db", text_db)
    assert code == 0, output
    with Store(text_db) as store, store.session(readonly=True) as session:
        stored = run_tables(session, TEXT_RUN)
    for table in ("metrics", "privacy_ledger", "audits", "runs", "exposures"):
        rows = pq.read_table(tmp_path / "p" / f"{table}.parquet").to_pylist()
        assert rows == [{k: _cell(v) for k, v in row.items()} for row in stored[table]], table
        # the CSV holds the same cells as text
        flat = _csv(tmp_path / "c" / f"{table}.csv")
        assert flat == [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows], table


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, text_db: str) -> None:
    code, output = _export("no-such-run", "--out", str(tmp_path / "x"), "--db", text_db)
    assert code == 2 and "no-such-run" in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    code, output = _export(TEXT_RUN, "--out", str(tmp_path / "y"), "--format", "xlsx", "--db", text_db)
    assert code == 2 and "csv or parquet" in output and not (tmp_path / "y").exists()


def test_mlflow_run_reads_back_params_metrics_and_artifacts(tmp_path: Path, text_db: str) -> None:
    mlflow = pytest.importorskip("mlflow")
    target = tmp_path / "mlruns"
    code, output = _export(TEXT_RUN, "--out", str(tmp_path / "t"), "--db", text_db, "--mlflow", str(target))
    assert code == 0, output
    with Store(text_db) as store:
        detail = store.get_run(TEXT_RUN)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{target / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedveil").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fedveil.run_id"] == TEXT_RUN
    flat = dict(_flatten("", detail["run"]["config"]))
    assert run.data.params["privacy.target_epsilon"] == str(flat["privacy.target_epsilon"])
    assert len(run.data.params) == len(flat)
    history = client.get_metric_history(run.info.run_id, "perplexity")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == TEXT_PPL
    for c in range(3):
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"epsilon/client-{c}")}
        want = {e["server_round"]: e["epsilon"] for e in detail["privacy_ledger"] if e["client_index"] == c}
        assert got == pytest.approx(want) and len(got) == 3
    assert run.data.metrics["audit/memorisation/teacher/client-0/rate"] == 0.125
    assert run.data.metrics["epsilon_lb/one-run/client-0"] == 2.07
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tables", "privacy_statement.txt"} <= names
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert "tables/metrics.csv" in tables and "tables/canaries.csv" not in tables
