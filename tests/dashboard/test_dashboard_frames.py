"""The dashboard's pure table builders on the real store JSON, and the launcher's command line."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from tests.dashboard.store_data import DIGITS_RUN, TEXT_RUN

from dashboard.audit_frames import (
    bounds_frame,
    distillation_reduction,
    exposure_frame,
    exposure_trend_frame,
    extrapolated_text,
    memorisation_frame,
    mia_frame,
    roc_frame,
    score_histogram_frame,
)
from dashboard.frames import (
    config_frame,
    fmt,
    frontier_frame,
    he_frame,
    ledger_frame,
    runs_frame,
    target_epsilon,
    utility_frame,
    utility_metric,
)
from fedveil.commands.dashboard_cmd import app_path, dashboard_env, streamlit_command
from fedveil.store import Store


@pytest.fixture()
def details(filled_db: str) -> dict[str, dict]:
    with Store(filled_db) as store:
        return {rid: store.get_run(rid) for rid in (TEXT_RUN, DIGITS_RUN)}


def test_fmt_precision_and_missing() -> None:
    assert fmt(25.4321) == "25.43" and fmt(1234.5, 1) == "1,234.5"
    assert fmt(3.1e-7, 3) == "3.1e-07" and fmt(0.0) == "0.00"
    assert fmt(None) == fmt(float("nan")) == fmt("x") == "–"
    assert fmt(212.44, 1, "s") == "212.4 s"


def test_utility_per_round_global_and_clients(details: dict[str, dict]) -> None:
    text, digits = details[TEXT_RUN], details[DIGITS_RUN]
    assert utility_metric(text) == "perplexity" and utility_metric(digits) == "accuracy"
    frame = utility_frame(text, "perplexity")
    glob = frame[frame["series"] == "global"]
    assert glob["value"].tolist() == pytest.approx([48.21, 31.66, 25.43])
    assert sorted(frame["series"].unique()) == ["client 0", "client 1", "client 2", "global"]
    acc = utility_frame(digits, "accuracy")
    assert acc[acc["series"] == "global"]["value"].tolist() == pytest.approx([71.2, 85.3, 90.4])  # percent


def test_ledger_budget_and_he_aggregation(details: dict[str, dict]) -> None:
    text, digits = details[TEXT_RUN], details[DIGITS_RUN]
    assert target_epsilon(text["run"]["config"]) == 2.0
    assert target_epsilon(digits["run"]["config"]) is None  # privacy.enabled = false
    ledger = ledger_frame(text)
    assert len(ledger) == 9 and set(ledger["accountant"]) == {"PRV"}
    assert ledger_frame(digits).empty and he_frame(digits).empty
    he = he_frame(text)
    # Three client uploads per round summed; the server's aggregate counted apart.
    assert he["client_mb"].iloc[0] == pytest.approx((3 * 3_355_443 + 3000) / 2**20)
    assert he["server_mb"].iloc[0] == pytest.approx(3_355_443 / 2**20)
    assert he["encrypt_s"].iloc[0] == pytest.approx(0.412 * 3 + 0.03)
    assert he["decrypt_s"].iloc[0] == pytest.approx(0.051)


def test_audit_frames(details: dict[str, dict]) -> None:
    text = details[TEXT_RUN]
    exp = exposure_frame(text)
    # Final audits only: 2 clients x 3 models x 4 canaries; the per-round global audits form the trend.
    assert len(exp) == 24 and exp["round"].isna().all()
    assert exp["max_exposure"].iloc[0] == pytest.approx(math.log2(2000))
    assert set(exp["secret"]) == {"000000", "000001", "000004", "000016"}
    trend = exposure_trend_frame(text)
    assert trend["round"].tolist()[:4] == [1, 1, 1, 1] and len(trend) == 12
    by16 = trend[trend["repetitions"] == 16]["exposure"].tolist()
    assert by16 == sorted(by16) and by16[0] < by16[-1]
    assert extrapolated_text(5.0, True) == "> 5.00" and extrapolated_text(None, False) == "–"
    mem = memorisation_frame(text)
    assert mem["kind"].tolist()[:4] == ["teacher", "student", "global", "finetuned"]
    assert mem["rate_pct"].tolist()[:4] == pytest.approx([12.5, 3.125, 1.5625, 12.5])
    assert mem["inherited"].tolist()[1:4] == [1, 0, 0] and pd.isna(mem["inherited"].iloc[0])
    assert mem["approx_pct"].iloc[0] == pytest.approx(16.5)
    assert distillation_reduction(mem) == pytest.approx(75.0)
    mia = mia_frame(text)
    assert len(mia) == 16 and set(mia["attack"]) == {"loss", "zlib"} and mia["tpr_01pct"].isna().all()
    assert mia["auc"].between(0.5, 1.0).all()
    roc = roc_frame(text)
    assert (roc["fpr"] > 0).all() and (roc["tpr"] > 0).all() and len(roc) == 16 * 40
    hist = score_histogram_frame(text)
    # Each group's histogram is a distribution: shares add up to 100 %.
    totals = hist.groupby(["model", "client", "attack", "group"])["share"].sum()
    assert len(totals) == 32 and totals.to_numpy() == pytest.approx(100.0)
    bounds = bounds_frame(text)
    assert bounds["flagged"].tolist() == [False, False, True, False, False, False]
    assert bounds["bound"].iloc[2].startswith("one-run · global student · client 0")


def test_audit_frames_accept_variants() -> None:
    detail = {"audits": [
        {"kind": "memorisation", "model": "finetuned", "summary": {"memorised": [True, False, False, False]}},
        {"kind": "memorisation", "model": "global", "summary": {"rate": 0.0, "n_audited": 4, "memorised": 0}},
        {"kind": "mia", "model": "student", "client_index": 1, "params": {},
         "summary": {"attacks": {"min-k": {"auc": 0.55, "roc": [[0.0, 0.1], [0.5, 0.6], [1, 1]]},
                                 "zlib": {"auc": 0.52}}}},
        {"kind": "mia", "model": "teacher", "params": {"score": "loss"},
         "summary": {"auc": 0.7, "member_scores": [1.0, 2.0, 3.0], "nonmember_scores": [0.0, 1.0]}},
    ]}
    mem = memorisation_frame(detail)
    assert mem["rate_pct"].tolist() == pytest.approx([0.0, 25.0]) and mem["n_audited"].tolist() == [4, 4]
    assert distillation_reduction(mem) == pytest.approx(100.0)
    mia = mia_frame(detail)
    assert mia[["model", "client", "attack"]].values.tolist() == [
        ["distilled student", "client 1", "min-k"], ["distilled student", "client 1", "zlib"],
        ["teacher (reference)", "server", "loss"]]
    assert len(roc_frame(detail)) == 2  # the (0, 0.1) point cannot go on log axes
    hist = score_histogram_frame(detail, bins=3)
    assert set(hist["model"]) == {"teacher (reference)"}
    assert hist.groupby("group")["share"].sum().tolist() == pytest.approx([100.0, 100.0])
    assert exposure_frame({}).empty and exposure_trend_frame({}).empty and bounds_frame({}).empty
    assert mia_frame({}).empty


def test_frontier_marks_non_dominated_runs() -> None:
    runs = runs_frame([
        {"id": "a", "name": "a", "method": "m", "status": "completed", "max_epsilon": 1.0, "final_perplexity": 30.0},
        {"id": "b", "name": "b", "method": "m", "status": "completed", "max_epsilon": 2.0, "final_perplexity": 20.0},
        {"id": "c", "name": "c", "method": "m", "status": "completed", "max_epsilon": 3.0, "final_perplexity": 25.0},
        {"id": "d", "name": "d", "method": "m", "status": "completed", "max_epsilon": None, "final_perplexity": 10.0},
    ])
    points = frontier_frame(runs, "max_epsilon", "perplexity")
    assert points["name"].tolist() == ["a", "b", "c"]  # d has no ε: not plotted
    assert points["frontier"].tolist() == [True, True, False]
    acc = runs_frame([
        {"id": "x", "name": "x", "method": "m", "worst_exposure": 2.0, "final_accuracy": 0.9},
        {"id": "y", "name": "y", "method": "m", "worst_exposure": 1.0, "final_accuracy": 0.8},
        {"id": "z", "name": "z", "method": "m", "worst_exposure": 3.0, "final_accuracy": 0.85},
    ])
    assert frontier_frame(acc, "worst_exposure", "accuracy")["frontier"].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="privacy axis"):
        frontier_frame(acc, "seed", "accuracy")
    with pytest.raises(ValueError, match="metric"):
        frontier_frame(acc, "max_epsilon", "bleu")


def test_runs_frame_and_config_flattening(details: dict[str, dict], filled_db: str) -> None:
    with Store(filled_db) as store:
        frame = runs_frame(store.list_runs())
    assert frame.columns.tolist()[:3] == ["id", "name", "method"] and len(frame) == 2
    assert runs_frame([]).empty
    flat = config_frame(details[TEXT_RUN]["run"]["config"]).set_index("key")["value"]
    assert flat["privacy.target_epsilon"] == "2.0" and flat["audit.canary_repetitions"] == "1, 4, 16"
    assert isinstance(flat, pd.Series)


def test_launcher_command_and_environment(tmp_path: Path) -> None:
    cmd = streamlit_command(8600)
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"] and cmd[4] == str(app_path())
    opts = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert opts["--server.port"] == "8600" and opts["--server.headless"] == "true"
    assert opts["--browser.gatherUsageStats"] == "false" and opts["--server.address"] == "127.0.0.1"
    for bad in (0, 70000, True, "8501"):
        with pytest.raises(ValueError, match="port"):
            streamlit_command(bad)  # type: ignore[arg-type]
    env = dashboard_env(str(tmp_path / "x.db"))
    assert env["FEDVEIL_DB"] == f"sqlite:///{tmp_path / 'x.db'}"
    assert str(app_path().parents[1]) in env["PYTHONPATH"].split(":")


def test_bounds_frame_shows_power_and_says_when_the_audit_cannot_reach_the_claim() -> None:
    """Issue 20: an ε_LB under the claim from an audit whose power is under the claim is no evidence."""
    from privacy.audit.epsilon import one_run_power

    weak, strong = one_run_power(32, 16, 1e-5), one_run_power(400, 200, 1e-5)
    detail = {"epsilon_bounds": [
        {"id": 1, "method": "one-run", "client_index": 0, "epsilon_lb": 0.0, "accountant_epsilon": 2.0,
         "flagged": False, "details": {"model": "global", "power": weak}},
        {"id": 2, "method": "one-run", "client_index": None, "epsilon_lb": 0.3, "accountant_epsilon": 2.0,
         "flagged": False, "details": {"model": "global", "power": strong}},
        {"id": 3, "method": "one-run", "client_index": None, "epsilon_lb": 3.1, "accountant_epsilon": None,
         "flagged": False, "details": {"model": "global", "power": strong, "control": True, "claimed_epsilon": 2.0,
                                       "control_exceeds_claim": True}},
    ]}
    bounds = bounds_frame(detail)
    assert bounds["power"].tolist() == pytest.approx([weak, strong, strong])
    assert bounds["note"].iloc[0] == f"this audit cannot detect leaks above ε = {weak:.2f} (claimed ε = 2.00)"
    assert bounds["note"].iloc[1] == "" and bounds["note"].iloc[2] == ""
    assert bounds["control"].tolist() == [False, False, True] and bounds["flagged"].tolist() == [False, False, True]
    assert bounds["accountant_epsilon"].iloc[2] == 2.0  # the control is compared with the DP run's claim
    assert bounds["bound"].iloc[1].startswith("one-run · global student · all clients")


def test_reference_lines_are_the_teacher_and_uniform_levels_and_log_scaled() -> None:
    from dashboard.charts import utility_chart
    from dashboard.frames import reference_frame
    detail = {"metrics": [{"name": "perplexity", "round": r, "client": None, "value": v}
                          for r, v in ((0, 120.0), (1, 90.0), (2, 70.0))]
              + [{"name": "teacher-perplexity", "round": r, "client": None, "value": v}
                 for r, v in ((1, 13.0), (2, 12.0))]
              + [{"name": "uniform-perplexity", "round": 0, "client": None, "value": 1024.0}]}
    ref = reference_frame(detail, "perplexity")
    assert dict(zip(ref["label"], ref["value"], strict=True)) == {
        "clients' teachers (non-DP; kept on the nodes)": 12.0, "uniform guess (vocabulary size)": 1024.0}
    assert reference_frame(detail, "accuracy").empty
    spec = utility_chart(utility_frame(detail, "perplexity"), "perplexity", ref).to_dict()
    assert spec["layer"][0]["layer"][0]["encoding"]["y"]["scale"]["type"] == "log" and len(spec["layer"]) == 3
    # the round-0 point (public-only student) is part of the global series
    assert 0 in set(utility_frame(detail, "perplexity")["round"])
