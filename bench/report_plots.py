"""PNG figures of the benchmark report (matplotlib, headless). Each function returns the file it wrote,
or None when its result file is missing; :func:`make_plots` returns [] when matplotlib is absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report_rows import FLARE_BYTES_PER_VALUE, PUBLISHED_PPL, Results


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or the benchmark machine
    import matplotlib.pyplot as plt

    return plt


def plot_fd(results: Results, out: Path) -> Path | None:
    """Global-test accuracy by split and method, seed spread as error bars."""
    res = results.get("edgefd")
    if res is None:
        return None
    plt = _pyplot()
    s = res["summary"]
    splits = [sp for sp in ("iid", "weak", "strong") if sp in s]
    methods = [m for m in ("local", "fedavg", "fd", "fd_kmeans") if all(m in s[sp] for sp in splits)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(splits))]
        ax.bar(xs, [s[sp][m]["global_test_mean"] * 100 for sp in splits], width,
               yerr=[s[sp][m]["global_test_seed_std"] * 100 for sp in splits], label=m, capsize=2)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("global test accuracy (%)")
    ax.set_title("Federated distillation on digits, 10 clients")
    ax.legend(fontsize=8, ncol=len(methods))
    return _save(fig, plt, out / "fd_accuracy.png")


def plot_scale(results: Results, out: Path) -> Path | None:
    """Round time (later rounds) and run memory against the number of clients, HE off and on."""
    res = results.get("scale")
    rows = [] if res is None else [r for r in res.get("rows", []) if r.get("status") == "completed"]
    if not rows:
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for he in (False, True):
        sel = sorted((r for r in rows if r["he"] == he), key=lambda r: r["clients"])
        if sel:
            label = f"HE {'on' if he else 'off'}"
            ax1.plot([r["clients"] for r in sel], [r["round_s_after_first_mean"] for r in sel], "o-", label=label)
            ax2.plot([r["clients"] for r in sel], [r["peak_tree_pss_mb"] for r in sel], "o-", label=label)
    ax1.set(xlabel="clients (10 sampled per round, 4 of 4)", ylabel="seconds per round", title="round wall time")
    ax2.set(xlabel="clients (10 sampled per round, 4 of 4)", ylabel="MiB (PSS, all processes)", title="peak run memory")
    ax1.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    return _save(fig, plt, out / "scale.png")


def plot_he(results: Results, out: Path) -> Path | None:
    """Bytes per value uploaded per CKKS profile against the NVIDIA FLARE anchor."""
    res = results.get("he")
    if res is None or not res.get("results"):
        return None
    plt = _pyplot()
    profiles = list(dict.fromkeys(r["profile"] for r in res["results"]))
    bpv = [max((r for r in res["results"] if r["profile"] == p), key=lambda r: r["n_values"])["bytes_per_value_up"]
           for p in profiles]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(profiles, bpv)
    ax.axhline(FLARE_BYTES_PER_VALUE, color="red", linestyle="--", label="NVIDIA FLARE default ≈ 81")
    ax.set_ylabel("bytes per value (upload)")
    ax.set_title("CKKS payload size")
    ax.legend(fontsize=8)
    return _save(fig, plt, out / "he_bytes.png")


def plot_lm(results: Results, out: Path) -> Path | None:
    """Held-out perplexity per DP method and corpus, seed spread as error bars."""
    sets = {n: results[n]["summary"] for n in ("lm", "lm-wikitext") if n in results and "summary" in results[n]}
    if not sets:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets.items()):
        names = [m for m in (*PUBLISHED_PPL, "dp-kd+swing", "dp-opd+swing") if m in s]
        ax.bar(names, [s[m]["heldout_ppl_mean"] for m in names], yerr=[s[m]["heldout_ppl_std"] for m in names],
               capsize=3)
        ax.set_title(f"held-out perplexity at ε = 2 ({name})")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(fig, plt, out / "lm_perplexity.png")


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(results: Results, out: Path) -> list[Path]:
    """Every figure whose results exist; [] without matplotlib (the report then says so)."""
    try:
        _pyplot()
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    made = [fn(results, out) for fn in (plot_lm, plot_fd, plot_he, plot_scale)]
    return [p for p in made if p is not None]
