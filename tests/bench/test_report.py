"""The benchmark report on small synthetic result files: rows for claims that hold, do not hold or are missing.

No benchmark runs here (the scale bench takes minutes even in --quick); only the report, the suite
runner's selection logic and the ``fedveil bench`` argument mapping.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import report, run_all, scale_bench
from bench.report_perf import performance
from bench.report_rows import Row, claims
from fedveil.commands.bench_cmd import BenchError, bench_argv
from fedveil.config import load_config

NOW = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)


def _lm(opd: float, kd: float, sft: float, per_seed: int, swing_nll: float) -> dict[str, Any]:
    def s(ppl: float, pii: float = 2.0) -> dict[str, float]:
        return {"heldout_ppl_mean": ppl, "heldout_ppl_std": 0.5, "train_pii_nll_mean": pii, "train_pii_nll_std": 0.1,
                "seeds": 3}
    summary = {"dp-sft": s(sft), "dp-kd": s(kd), "dp-opd": s(opd), "dp-kd+swing": s(kd, swing_nll)}
    held = opd < kd < sft
    return {"data": "synthetic", "settings": {"quick": False}, "summary": summary,
            "ordering": {"evaluated": True, "held": held, "seeds_where_held": per_seed, "seeds": 3},
            "swing_check": {"dp-kd": {"pii_likelihood_ratio_swing_over_plain": math.exp(2.0 - swing_nll),
                                      "heldout_ppl_ratio_swing_over_plain": 1.01}}}


def _fd(strong_km: float) -> dict[str, Any]:
    def split(fedavg: float, fd: float, km: float) -> dict[str, Any]:
        return {m: {"global_test_mean": v, "global_test_seed_std": 0.01}
                for m, v in (("fedavg", fedavg), ("fd", fd), ("fd_kmeans", km))}
    return {"seeds": [0, 1, 2], "quick": False,
            "summary": {"iid": split(0.95, 0.95, 0.95), "weak": split(0.78, 0.92, 0.94),
                        "strong": split(0.15, 0.88, strong_km)}}


def _scale(eps_lb: float) -> dict[str, Any]:
    def row(n: int, t: float, mb: float) -> dict[str, Any]:
        return {"clients": n, "sampled": min(n, 10), "he": False, "status": "completed", "round_s_mean": t,
                "round_s_after_first_mean": t, "setup_s": 5.0, "peak_tree_pss_mb": mb, "peak_system_mb": mb,
                "wall_s": 3 * t + 5, "load_avg": [1.0, 1.0, 1.0]}
    rows = [row(4, 2.0, 1000.0), row(100, 3.0, 1500.0)]
    scale_bench.with_ratios(rows)
    audits = [{"kind": "memorisation", "model": "student", "summary": {"n_memorised": 1, "n_audited": 20}},
              {"kind": "memorisation", "model": "finetuned", "summary": {"n_memorised": 8, "n_audited": 20}}]
    demo = {"status": "completed", "wall_s": 300.0, "peak_tree_pss_mb": 2000.0, "peak_system_mb": 2100.0,
            "load_avg": [2.0, 2.0, 2.0], "audits": audits,
            "epsilon_bounds": [{"epsilon_lb": 0.3, "accountant_epsilon": 2.0},
                               {"epsilon_lb": eps_lb, "accountant_epsilon": 2.0}]}
    load = {"completed": True, "rounds_completed": 5, "rounds": 5, "wall_s": 100.0, "peak_tree_pss_mb": 1600.0,
            "status": "completed", "replied_per_round": [10] * 5}
    return {"rows": rows, "load_check": load, "demo": demo, "load_average_before": [1, 1, 1],
            "load_average_after": [1, 1, 1]}


def _write(directory: Path, **files: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / f"{name.replace('_wikitext', '-wikitext')}.json").write_text(json.dumps(content))
    return directory


def _by_claim(rows: list[Row]) -> dict[str, Row]:
    return {r.claim.split(" [")[0]: r for r in rows}


def test_claims_that_hold(tmp_path: Path) -> None:
    results, status = report.load_results(_write(tmp_path, lm=_lm(30, 32, 35, 3, 4.0), edgefd=_fd(0.93),
                                                 scale=_scale(0.5)))
    rows = _by_claim(claims(results, status))
    assert rows["DP-OPD < DP-KD < DP-SFT perplexity at ε = 2"].held == "yes"
    assert "30.00 ± 0.50 / 32.00 ± 0.50 / 35.00 ± 0.50" in rows["DP-OPD < DP-KD < DP-SFT perplexity at ε = 2"].fedveil
    swing = rows["swing-style vs plain KD canary exposure"]
    assert swing.held == "yes (proxy)" and "Proxy" in swing.analysis  # NLL 2 → 4: likelihood × e^-2, 86% lower
    assert rows["KMeans-filtered FD close to IID under non-IID"].held == "yes"
    memo = rows["distillation vs fine-tuning memorisation"]
    assert memo.held == "yes" and "1/20" in memo.fedveil and "88% lower" in memo.fedveil
    assert rows["ε_LB ≤ accountant ε (every DP configuration)"].held == "yes"


def test_claims_that_do_not_hold(tmp_path: Path) -> None:
    results, status = report.load_results(_write(tmp_path, lm=_lm(33, 32, 35, 0, 2.1), edgefd=_fd(0.70),
                                                 scale=_scale(2.5)))
    rows = _by_claim(claims(results, status))
    assert rows["DP-OPD < DP-KD < DP-SFT perplexity at ε = 2"].held == "partly"  # KD < SFT only
    assert rows["swing-style vs plain KD canary exposure"].held == "partly (proxy)"  # ~10% lower, not > 80%
    fd = rows["KMeans-filtered FD close to IID under non-IID"]
    assert fd.held == "partly" and "strong 25.0" in fd.analysis  # close under weak only, not under strong
    eps = rows["ε_LB ≤ accountant ε (every DP configuration)"]
    assert eps.held == "no" and "1 of 2 bounds exceed" in eps.analysis
    results["lm"] = _lm(36, 34, 32, 0, 2.0)
    assert _by_claim(claims(results, status))["DP-OPD < DP-KD < DP-SFT perplexity at ε = 2"].held == "no"


def test_missing_results_give_not_run_rows(tmp_path: Path) -> None:
    results, status = report.load_results(_write(tmp_path))
    rows = claims(results, status) + performance(results, status)
    held = {r.claim: r.held for r in rows}
    assert held["DP-OPD < DP-KD < DP-SFT perplexity at ε = 2 [lm]"] == "not run"
    assert held["distillation vs fine-tuning memorisation"] == "not measured"
    assert held["DP-SGD step vs non-private step"] == "not run"
    assert held["load: 100 clients, 10 sampled, 5 rounds"] == "not run"
    assert len(rows) == 5 + 8  # five claims; dpstep, he, rollout, audit, coldstart, scale, load, demo
    assert held["ClientApp cold start (fresh process per message), lazy vs eager imports"] == "not run"


def test_run_all_status_shows_failures_and_missing_data(tmp_path: Path) -> None:
    log = {"benchmarks": [{"result": "dpstep", "status": "failed (exit 1)"},
                          {"result": "lm-wikitext", "status": "data not found"}]}
    results, status = report.load_results(_write(tmp_path, run_all=log, lm=_lm(30, 32, 35, 3, 4.0)))
    assert "run_all" not in results
    held = {r.claim: r.held for r in claims(results, status) + performance(results, status)}
    assert held["DP-SGD step vs non-private step"] == "failed (exit 1)"
    assert held["DP-OPD < DP-KD < DP-SFT perplexity at ε = 2 [lm-wikitext]"] == "data not found"


def test_performance_rows(tmp_path: Path) -> None:
    variants = {v: {"ratio_vs_non_private": t, "peak_ratio_vs_non_private": m}
                for v, t, m in (("non-private", 1.0, 1.0), ("ghost", 1.4, 1.1), ("hooks", 2.8, 2.0))}
    dpstep = {"models": {"m": {"parameters": 1e6, "batch": 8, "seq": 32, "fastest_dp_variant": "ghost",
                               "variants": variants}}}
    he = {"results": [{"profile": "p", "n_values": 10, "clients": 2, "bytes_per_value_up": 90.0, "ratio_latency": 5.0,
                       "ratio_total": 9.0, "encrypt_s_per_client": 0.1, "validate_and_sum_s": 0.1, "decrypt_s": 0.1,
                       "max_abs_error": 1e-6}]}
    results, status = report.load_results(_write(tmp_path, dpstep=dpstep, he=he, scale=_scale(0.1)))
    rows = {r.claim: r for r in performance(results, status)}
    assert rows["DP-SGD step vs non-private step [m]"].held == "yes"  # ghost, a mode runs can use, at 1.4×
    variants["ghost"]["ratio_vs_non_private"] = 2.2
    variants["bk+nn-rmsnorm"] = {"ratio_vs_non_private": 1.3, "peak_ratio_vs_non_private": 1.2}
    dpstep["models"]["m"]["fastest_dp_variant"] = "bk+nn-rmsnorm"
    (tmp_path / "dpstep.json").write_text(json.dumps(dpstep))
    again = {r.claim: r for r in performance(*report.load_results(tmp_path))}
    assert again["DP-SGD step vs non-private step [m]"].held == "partly"  # only a bench prototype meets the goal
    assert rows["HE aggregation vs plaintext [p]"].held == "no"  # 90 B/value is above the 81 B/value anchor
    scale = rows["federation scale: per-round cost as clients grow [HE off]"]
    # 4 clients sample 4, 100 sample 10: 2 s → 3 s per round is ×1.5, ×0.6 per sampled client.
    assert scale.held == "yes" and "round time ×1.50 (×0.60 per sampled client)" in scale.analysis
    assert "run memory (PSS of all its processes) ×1.50" in scale.analysis
    assert rows["load: 100 clients, 10 sampled, 5 rounds"].held == "yes"
    assert "300 s wall" in rows["default demo end to end"].fedveil


def test_report_and_readme_fragment(tmp_path: Path) -> None:
    results_dir = _write(tmp_path / "results", lm=_lm(30, 32, 35, 3, 4.0), edgefd=_fd(0.93), scale=_scale(0.5))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.BEGIN}\nold results\n{report.END}\nafter\n")
    out = report.write_report(results_dir, tmp_path / "REPORT.md", readme, plots=False, now=NOW)
    text = out.read_text()
    assert "Generated 2026-01-02 03:04 UTC" in text and "commit `" in text
    assert "| KMeans-filtered FD close to IID under non-IID |" in text and "**yes**" in text
    assert "| 100 | 10 | off | completed |" in text
    fragment = (tmp_path / "README_RESULTS.md").read_text()
    new = readme.read_text()
    assert "old results" not in new and fragment.strip() in new
    assert new.startswith("# x\n\nbefore\n") and new.endswith(f"{report.END}\nafter\n")
    with pytest.raises(report.MarkerError, match="bench:begin"):
        report.replace_markers("no markers here", fragment)


def test_plots_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results, _ = report.load_results(_write(tmp_path / "r", lm=_lm(30, 32, 35, 3, 4.0), edgefd=_fd(0.93),
                                            scale=_scale(0.5)))
    from bench.report_plots import make_plots
    made = make_plots(results, tmp_path / "plots")
    assert {p.name for p in made} == {"lm_perplexity.png", "fd_accuracy.png", "scale.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in made)


def test_run_all_selection_and_missing_data(tmp_path: Path) -> None:
    assert [b.name for b in run_all.select(None)] == list(run_all.NAMES)
    assert [b.name for b in run_all.select(["scale", "pii"])] == ["pii", "scale"]
    with pytest.raises(run_all.UnknownBenchmark, match="allowed: all, pii"):
        run_all.select(["nope"])
    wiki = next(b for b in run_all.BENCHMARKS if b.name == "lm-wikitext")
    (tmp_path / "wikitext-2").mkdir()
    path, skip = run_all.data_path(wiki, tmp_path, None)
    assert path is None and skip is not None and "data not found" in skip and "valid.txt" in skip
    for name in ("valid.txt", "test.txt"):
        (tmp_path / "wikitext-2" / name).write_text("x\n")
    assert run_all.data_path(wiki, tmp_path, None) == (tmp_path / "wikitext-2", None)
    cmd = run_all.command(wiki, True, tmp_path / "wikitext-2", tmp_path / "out")
    assert cmd[-5:] == ["--quick", "--data", str(tmp_path / "wikitext-2"),
                        "--out", str(tmp_path / "out" / "lm-wikitext.json")]


def test_fedveil_bench_arguments() -> None:
    names, with_data = run_all.NAMES, ("pii", "lm-wikitext")
    assert bench_argv("all", None, True, names, with_data, Path("README.md")) == ["--quick"]
    full = bench_argv("all", "/d", False, names, with_data, Path("README.md"))
    assert full == ["--data", "/d", "--readme", "README.md"]
    assert bench_argv("pii", "/f.json", False, names, with_data, None) == ["--only", "pii", "--data-path", "/f.json"]
    with pytest.raises(BenchError, match="unknown benchmark 'nope'; allowed: all, pii"):
        bench_argv("nope", None, False, names, with_data, None)
    with pytest.raises(BenchError, match="takes no --data"):
        bench_argv("rollout", "/x", False, names, with_data, None)


def test_scale_config_is_a_valid_fedveil_config(tmp_path: Path) -> None:
    for clients in (4, 16, 64, 100):
        path = tmp_path / f"s{clients}.toml"
        path.write_text(scale_bench.scale_config(clients, 10, 3, clients > 50, tmp_path))
        cfg = load_config(path)
        sampled = int(cfg.federation.fraction_train * cfg.federation.clients)
        assert sampled == min(10, clients) and cfg.federation.min_clients <= sampled
        assert cfg.train.method == "dp-sft" and not cfg.audit.enabled and cfg.he.enabled == (clients > 50)
    with pytest.raises(ValueError, match="clients, sampled and rounds"):
        scale_bench.scale_config(0, 10, 3, False, tmp_path)


def test_demo_rows_give_the_he_ratio_and_replace_the_scale_demo_row() -> None:
    on = {"status": "completed", "round_s": [300.0, 60.0, 60.0], "wall_s": 700.0, "peak_tree_pss_mb": 3000.0,
          "perplexity": [900.0, 800.0, 700.0], "load_avg": [1.0, 1.0, 1.0]}
    off = {**on, "round_s": [280.0, 40.0, 40.0], "perplexity": [900.0, 800.0, 700.5]}
    dep = {"status": "completed", "round_s": [600.0, 120.0, 120.0], "nodes": 4, "perplexity": [700.2]}
    demo = {"runs": {"on": on, "off": off, "deploy": dep}, "round_s_ratio_he_over_plain": 420.0 / 360.0,
            "round_s_ratio_deploy_over_simulation": 840.0 / 420.0}
    listed = performance({"demo": demo}, {})
    rows = {r.claim: r for r in listed}
    he = rows["whole federated round with vs without HE [default run]"]
    assert he.fedveil == "140 s vs 120 s per round = ×1.17" and "700.00 vs 700.50" in he.analysis
    assert rows["deployment vs simulation per round [default run, HE on]"].fedveil == "280 s vs 140 s = ×2.00"
    demo_rows = [r for r in listed if r.claim == "default demo end to end"]
    assert len(demo_rows) == 1 and demo_rows[0].fedveil.startswith("700 s wall")


def test_cli_names_an_unknown_benchmark_in_one_line() -> None:
    import subprocess
    import sys

    fedveil = str(Path(sys.executable).with_name("fedveil"))
    proc = subprocess.run([fedveil, "bench", "nope"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert "unknown benchmark 'nope'; allowed: all, pii" in proc.stdout + proc.stderr
