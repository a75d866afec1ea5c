"""Every dashboard page under ``streamlit.testing.v1.AppTest``: empty store, filled store, run states, bad URLs."""

from __future__ import annotations

import math

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from tests.dashboard.store_data import DIGITS_RUN, FAIL_MESSAGE, FAILED_RUN, RUNNING_RUN, TEXT_RUN, fill_digits_run
from streamlit.testing.v1 import AppTest

from fedveil.store import Store, sqlite_url

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = ["views/runs.py", "views/run.py", "views/leakage.py", "views/compare.py"]
TITLES = {"views/runs.py": "Runs", "views/run.py": "Run", "views/leakage.py": "Leakage audit",
          "views/compare.py": "Compare runs"}


def open_app(monkeypatch: pytest.MonkeyPatch, url: str, page: str = "views/runs.py", run: str | None = None) -> AppTest:
    """Run the app against ``url`` and switch to ``page`` (optionally ``?run=<id>``)."""
    monkeypatch.setenv("FEDVEIL_DB", url)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    if run is not None:
        at.query_params["run"] = run
    if page != "views/runs.py" or run is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> int:
    """Number of Altair (Vega-Lite) charts rendered."""
    return len(at.get("vega_lite_chart"))


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def texts(at: AppTest) -> str:
    """All markdown-like text of the page, for substring checks."""
    kinds = ("markdown", "caption", "info", "warning", "error", "success")
    parts = [getattr(e, "value", "") for kind in kinds for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


# ---- empty and broken stores -------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_empty_store_every_page(monkeypatch: pytest.MonkeyPatch, empty_db: str, page: str) -> None:
    at = open_app(monkeypatch, empty_db, page)
    assert at.title[0].value == TITLES[page]
    assert any("No runs recorded yet" in e.value for e in at.info)
    assert charts(at) == 0 and not at.error


@pytest.mark.parametrize("url, expected", [
    ("nosuchdialect://host/db", "Can't load plugin"),
    ("postgresql+nosuchdriver://alice:s3cret@localhost/db", "alice:***@localhost"),
])
def test_bad_url_shows_one_error(monkeypatch: pytest.MonkeyPatch, url: str, expected: str) -> None:
    at = open_app(monkeypatch, url)
    assert len(at.error) == 1
    assert "Cannot open the store" in at.error[0].value and expected in at.error[0].value
    assert "s3cret" not in at.error[0].value  # passwords are masked
    assert not at.dataframe


def test_missing_sqlite_file_is_awaited_not_created(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "later" / "fedveil.db"
    at = open_app(monkeypatch, sqlite_url(path))
    assert any("No database at" in e.value and str(path) in e.value for e in at.info)
    assert not path.parent.exists()  # a viewer does not create databases
    with Store(sqlite_url(path)) as store:
        fill_digits_run(store)
    at.run()
    assert at.title[0].value == "Runs" and len(at.dataframe[0].value) == 1


@pytest.mark.parametrize("kind", ["junk file", "directory"])
def test_path_that_is_not_a_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "store.db"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"this is not a SQLite database" * 100)
    at = open_app(monkeypatch, sqlite_url(path))
    assert len(at.error) == 1 and "Cannot open the store" in at.error[0].value


def test_database_from_a_newer_fedveil(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    at = open_app(monkeypatch, sqlite_url(path))
    assert len(at.error) == 1 and "newer version" in at.error[0].value


def test_old_unmigrated_database_is_upgraded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()  # an existing database at schema "base"
    at = open_app(monkeypatch, sqlite_url(path))
    assert any("No runs recorded yet" in e.value for e in at.info)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)


# ---- filled store ------------------------------------------------------------------------------------------------

def test_runs_page_table_and_counts(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db)
    assert at.title[0].value == "Runs"
    assert metrics(at) == {"Runs": "2", "Completed": "2", "In progress": "0", "Failed": "0", "ε_LB > ε flags": "1"}
    table: pd.DataFrame = at.dataframe[0].value
    assert list(table["name"]) == ["digits-fd-kmeans", "dp-opd-clinical"]  # newest first
    text = table.set_index("id").loc[TEXT_RUN]
    assert text["final_perplexity"] == pytest.approx(25.43)
    assert text["max_epsilon"] == pytest.approx(0.62 * 3 + 0.08)
    # Released models only (issue 20): the teacher's 10.97 bits is a reference row, never the run's number;
    # the worst released exposure is the global student's round-3 audit of the 16-fold canary.
    assert text["worst_exposure"] == pytest.approx(0.5 * 3 * math.log2(17))
    assert bool(text["he"]) and bool(text["eps_lb_flag"])
    digits = table.set_index("id").loc[DIGITS_RUN]
    assert digits["final_accuracy"] == pytest.approx(90.4) and pd.isna(digits["max_epsilon"])
    assert len(at.get("page_link")) == 2  # open the picked run on the Run or Leakage audit page


def test_runs_page_filters(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db)
    method = next(m for m in at.multiselect if m.label == "Method")
    method.set_value(["fd-kmeans"]).run()
    assert list(at.dataframe[0].value["name"]) == ["digits-fd-kmeans"]
    at.text_input[0].set_value("nothing-matches").run()
    assert at.dataframe[0].value.empty and any("No run matches" in e.value for e in at.info)


def test_run_page_text_run(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db, "views/run.py", TEXT_RUN)
    assert at.title[0].value == "Run: dp-opd-clinical"
    assert metrics(at) == {"Final perplexity": "25.43", "Max ε spent": "1.940", "ε budget": "2.00",
                           "Rounds completed": "3 / 3", "Wall time": "212.4 s"}
    # utility, training loss, ε vs budget, HE bytes, HE timings
    assert charts(at) == 5
    assert "Unit protected" in texts(at)
    tables = [d.value for d in at.dataframe]
    events = next(t for t in tables if "reason" in t.columns)
    assert list(events["kind"]) == ["rejected"] and "max_payload_mb" in events["reason"].iloc[0]
    ledger = next(t for t in tables if "noise_multiplier" in t.columns)
    assert len(ledger) == 9 and ledger["epsilon"].max() == pytest.approx(1.94)
    he = next(t for t in tables if "client_mb" in t.columns)
    assert list(he["round"]) == [1, 2, 3] and he["max_abs_error"].iloc[0] == pytest.approx(3.1e-7)
    assert not at.error


def test_run_picker_follows_query_param_and_selectbox(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db, "views/run.py")
    assert at.title[0].value == "Run: digits-fd-kmeans"  # newest run by default
    at.selectbox[0].set_value(TEXT_RUN).run()
    assert at.title[0].value == "Run: dp-opd-clinical" and at.query_params["run"] == TEXT_RUN


def test_unknown_run_id_falls_back_with_warning(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db, "views/run.py", "no-such-run")
    assert any("not in this database" in w.value for w in at.warning)
    assert at.title[0].value == "Run: digits-fd-kmeans"


def test_run_page_digits_run(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db, "views/run.py", DIGITS_RUN)
    m = metrics(at)
    assert m["Final accuracy"] == "90.4 %" and m["Max ε spent"] == "–"
    assert charts(at) == 1
    info = texts(at)
    assert "Differential privacy is off" in info and "Homomorphic encryption is off" in info


def test_leakage_page_text_run(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db, "views/leakage.py", TEXT_RUN)
    assert at.title[0].value == "Leakage audit"
    assert [s.value for s in at.subheader] == ["Empirical ε lower bound vs accountant ε", "Canary exposure",
                                               "Memorisation (verbatim extraction)", "Membership inference"]
    # ε bounds, exposure, exposure per round, memorisation, log-log ROC, score histogram
    assert charts(at) == 6
    assert len(at.error) == 1 and "2.070 > 1.860" in at.error[0].value
    assert metrics(at) == {"Distilled vs fine-tuned": "75% less", "Inherited from the teacher": "2 records"}
    tables = [d.value for d in at.dataframe]
    mia = next(t for t in tables if "auc" in t.columns)
    assert len(mia) == 16 and mia["tpr_01pct"].isna().all()
    exposures = next(t for t in tables if "exposure" in t.columns)
    assert len(exposures) == 24 and exposures["extrapolated_text"].str.startswith("> ").sum() == 6
    # The curves shown are picked by attack and client; the histogram by model.
    assert [s.label for s in at.selectbox] == ["Run", "Attack", "Client", "Score distribution of"]
    for label, value in (("Attack", "zlib"), ("Client", "client 1"), ("Score distribution of", "teacher (reference)")):
        next(s for s in at.selectbox if s.label == label).set_value(value).run()
        assert not at.exception and charts(at) == 6


def test_leakage_page_without_audits(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db, "views/leakage.py", DIGITS_RUN)
    assert any("No audits recorded for this run" in e.value for e in at.info)
    assert charts(at) == 0


def test_compare_page(monkeypatch: pytest.MonkeyPatch, filled_db: str) -> None:
    at = open_app(monkeypatch, filled_db, "views/compare.py")
    assert at.title[0].value == "Compare runs"
    assert len(at.dataframe[0].value) == 2
    # Both runs have a final utility of different kinds: the page offers both.
    utility = next(r for r in at.radio if r.label == "Utility")
    assert set(utility.options) == {"perplexity", "accuracy"}
    assert charts(at) == 2  # frontier (text run has ε) + perplexity per round
    assert "Not plotted (missing a value): digits-fd-kmeans" in texts(at)
    privacy = next(r for r in at.radio if r.label == "Privacy axis")
    privacy.set_value("worst_exposure").run()
    assert not at.exception and charts(at) == 2
    utility = next(r for r in at.radio if r.label == "Utility")
    utility.set_value("accuracy").run()
    # The digits run has accuracy but no exposure: no frontier point, one curve.
    assert not at.exception and charts(at) == 1 and any("None of the picked runs" in e.value for e in at.info)
    at.multiselect[0].set_value([]).run()
    assert any("Pick at least one run" in e.value for e in at.info)


# ---- run states --------------------------------------------------------------------------------------------------

def test_run_in_progress_and_failed(monkeypatch: pytest.MonkeyPatch, states_db: str) -> None:
    at = open_app(monkeypatch, states_db)
    assert metrics(at)["In progress"] == "1" and metrics(at)["Failed"] == "1"
    assert any("refreshes every" in c.value for c in at.caption)

    at = open_app(monkeypatch, states_db, "views/run.py", RUNNING_RUN)
    assert any("Run in progress" in e.value and "1 of 3 rounds" in e.value for e in at.info)
    assert metrics(at)["Rounds completed"] == "1 / 3" and metrics(at)["Latest perplexity"] == "48.21"
    assert len(at.get("progress")) == 1 and not at.error

    at = open_app(monkeypatch, states_db, "views/leakage.py", FAILED_RUN)
    assert len(at.error) == 1 and FAIL_MESSAGE in at.error[0].value
    assert any("No audits recorded for this run" in e.value for e in at.info)


def test_seeded_noise_run_says_not_private_against_the_server(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """privacy.reproducible_noise: the run page says so before any statement is written (docs/METHODS.md §2)."""
    import copy

    from tests.dashboard.store_data import base_config

    for name, seeded in (("seeded", True), ("secret", False)):
        url = sqlite_url(tmp_path / f"{name}.db")
        cfg = copy.deepcopy(base_config())
        cfg["privacy"]["reproducible_noise"] = seeded
        with Store(url) as store:
            store.create_run(cfg, run_id=name, name=name, method="dp-opd", task="synthetic-text", he_enabled=False,
                             num_clients=2, num_rounds=1, seed=0)
        at = open_app(monkeypatch, url, "views/run.py", name)
        said = any("not private against the server" in e.value for e in at.error)
        assert said == seeded
