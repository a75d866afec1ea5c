"""Smoke tests: every benchmark but the federation-scale and demo runs (minutes even when quick) runs end to
end in --quick mode, and the properties it checks hold.

These test that the benchmark code works and that the properties it asserts are real (stored ε within
budget and equal to an independent recomputation; exact per-sample gradients of the prototype
book-keeping step), not that anything is fast.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lm_bench() -> ModuleType:
    return _load("lm_bench")


@pytest.fixture(scope="module")
def dpstep_bench() -> ModuleType:
    return _load("dpstep_bench")


def test_recompute_epsilon_matches_reference_sigma() -> None:
    from bench.common import recompute_epsilon

    # docs/METHODS.md §2: for ε = 2, δ = 1e-5, q = 0.01, 1000 steps the PRV noise multiplier is 0.9615.
    eps = recompute_epsilon(0.9615, 0.01, 1000, 1e-5)
    assert eps["prv"] == pytest.approx(2.0, abs=0.02)
    assert eps["rdp"] > eps["prv"]  # RDP is the looser bound


def test_lm_bench_quick(lm_bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "lm.json"
    assert lm_bench.main(["--quick", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    methods = {r["method"] for r in record["runs"]}
    assert methods == {"dp-sft", "dp-kd", "dp-kd+swing", "dp-opd", "dp-opd+swing", "dp-opd(lam=0.25)"}
    for run in record["runs"]:
        assert run["epsilon"] <= 2.0
        assert run["epsilon_recomputed_prv"] == pytest.approx(run["epsilon"], abs=1e-6)
        assert math.isfinite(run["heldout_ppl"]) and run["heldout_ppl"] > 1.0
        assert run["steps"] == record["settings"]["steps"]
        assert run["grad_sample_mode"] == "ghost"
    opd = [r for r in record["runs"] if r["method"] == "dp-opd"]
    assert all(r["on_policy_steps"] > 0 for r in opd)
    assert set(record["swing_check"]) == {"dp-kd", "dp-opd"}
    assert record["ordering"]["evaluated"] is True
    assert "date" in record["machine"] and "git_commit" in record["machine"]


def test_lm_bench_missing_wikitext_exits_clearly(lm_bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="wikitext-2 files not found"):
        lm_bench.main(["--quick", "--data", str(tmp_path / "nowhere")])


def test_dpstep_bench_quick(dpstep_bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "dpstep.json"
    assert dpstep_bench.main(["--quick", "--out", str(out)]) == 0
    model = json.loads(out.read_text())["models"]["student-xs"]
    assert model["rmsnorm_swap_max_abs_diff"] <= 1e-6
    assert model["bk_max_rel_error"] < 1e-9  # float64: exact up to rounding
    for name, variant in model["variants"].items():
        assert variant["median_s"] > 0 and variant["peak_mb"] > 0, name
    assert model["variants"]["non-private"]["ratio_vs_non_private"] == pytest.approx(1.0)


def test_book_keeping_rejects_unsupported_layers(dpstep_bench: ModuleType) -> None:
    from distill.models import build_lm

    with pytest.raises(ValueError, match="does not support"):
        dpstep_bench.BookKeepingDP(build_lm("student-xs", 300), lr=1e-3, noise_multiplier=1.0,
                                   max_grad_norm=1.0, expected_batch_size=4)


@pytest.fixture(scope="module")
def exposure_bench() -> ModuleType:
    return _load("exposure_bench")


def test_exposure_bench_quick(exposure_bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "exposure.json"
    assert exposure_bench.main(["--quick", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["canaries"]["inserted_exposure"] == 3 and record["canaries"]["copies"] >= 1 + 4 + 16
    assert record["canaries"]["canary_tokens_masked"] > 0  # swing rows see the canary secrets as private
    assert set(record["summary"]) == {"dp-sft", "dp-kd", "dp-opd", "dp-opd+swing", "finetuned", "kd", "kd+swing"}
    for run in record["runs"]:
        assert set(run["exposure_by_repetitions"]) == {"0", "1", "4", "16"}
        n_ref = record["canaries"]["references_per_format"]
        low = math.log2(n_ref) - math.log2(n_ref + 1)  # every reference beats the canary (ties count against it)
        assert all(low - 1e-9 <= e <= math.log2(n_ref) + 1e-9 for v in run["exposure_by_repetitions"].values()
                   for e in v)
        if run["dp"]:
            assert run["epsilon"] <= 2.0 and run["epsilon_recomputed_prv"] == pytest.approx(run["epsilon"], abs=1e-6)
        else:
            assert "epsilon" not in run and run["grad_sample_mode"] == "non-private"
    assert {"kd+swing vs kd", "dp-opd+swing vs dp-opd", "memorisation"} <= set(record["comparisons"])


def test_swing_comparison_uses_excess_over_controls(exposure_bench: ModuleType) -> None:
    from bench.report_exposure import swing_rows

    def entry(floor: float, top: float, ppl: float, dp: bool = False) -> dict:
        return {"dp": dp, "seeds": 2, "exposure": {"0": (floor, 0.1), "16": (top, 0.2)}, "heldout_ppl": (ppl, 1.0),
                "memorised": 0, "memo_audited": 10, "epsilon": None, "epsilon_lb": 0.0}

    summary = {"kd": entry(1.0, 6.0, 20.0), "kd+swing": entry(1.0, 1.5, 21.0)}
    comp = exposure_bench.comparisons(summary, "16")["kd+swing vs kd"]
    assert comp["excess_ratio"] == pytest.approx(0.5 / 5.0) and comp["ppl_ratio"] == pytest.approx(21.0 / 20.0)
    result = {"data": "toy", "summary": summary, "comparisons": {"kd+swing vs kd": comp},
              "canaries": {"references_per_format": 1000}, "settings": {"max_length": 64}}
    row = swing_rows({"exposure": result}, {})[0]
    assert row.held == "yes" and "90% lower" in row.fedveil
    summary["kd+swing"] = entry(1.0, 4.0, 21.0)
    result["comparisons"] = exposure_bench.comparisons(summary, "16")
    assert swing_rows({"exposure": result}, {})[0].held == "partly"  # 40% lower: below the published 80%


@pytest.mark.parametrize("name", ["rollout", "he", "audit", "coldstart"])
def test_quick_benchmarks_run_and_their_checks_hold(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    assert _load(f"{name}_bench").main(["--quick", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    if name == "rollout":  # measured, never asserted: speed is the benchmark's output, not a test condition
        assert all(record["results"][k]["tokens_per_s"] > 0 for k in ("kv_cache", "no_cache"))
    elif name == "he":
        for row in record["results"]:
            assert row["max_abs_error"] < 1e-3 and row["bytes_per_value_up"] > 0
    elif name == "audit":
        assert record["max_abs_diff_bits_batched_vs_single"] < 1e-3
    else:
        assert record["opacus_imported_by_client_app"] is False
        assert all(v["wall_median_s"] > 0 for v in record["variants"].values())


def test_edgefd_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "edgefd.json"
    _load("edgefd_bench").main(["--quick", "--out", str(out)])
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"iid", "weak", "strong"}
    for split in summary.values():
        assert {"local", "fedavg", "fd", "fd_kmeans"} <= set(split)


def test_pii_bench_scores_a_small_labelled_file(tmp_path: Path) -> None:
    text = "Mail jane.doe@example.com or call 555-123-4567 today."
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps([{"full_text": text, "spans": [
        {"entity_type": "EMAIL_ADDRESS", "start_position": 5, "end_position": 25},
        {"entity_type": "PHONE_NUMBER", "start_position": 34, "end_position": 46}]}]))
    out = tmp_path / "pii.json"
    assert _load("pii_bench").main(["--data", str(data), "--out", str(out)]) == 0
    micro = json.loads(out.read_text())["detector"]["micro"]
    assert micro["tp"] + micro["fn"] == 2 and 0.0 <= micro["precision"] <= 1.0
    assert _load("pii_bench").main(["--data", str(tmp_path / "missing.json")]) == 2


@pytest.mark.slow
def test_demo_bench_quick_records_rounds_and_perplexity(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    assert _load("demo_bench").main(["--quick", "--he", "on", "--out", str(out)]) == 0
    run = json.loads(out.read_text())["runs"]["on"]
    assert run["status"] == "completed" and len(run["round_s"]) == 1 and run["round_s"][0] > 0
    assert len(run["perplexity"]) == 1 and run["perplexity"][0] > 1.0
