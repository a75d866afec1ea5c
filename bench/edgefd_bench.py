"""EdgeFD-style benchmark: KMeans-filtered federated distillation on digits (docs/METHODS.md §6).

Runs in-process (no Flower), 10 clients, splits IID / weak non-IID / strong non-IID,
four methods that share data, models and local-epoch budget:

* ``local``    -- each client trains on its own data only;
* ``fedavg``   -- weight averaging of the MLPs (weights n_c / Σn);
* ``fd``       -- federated distillation on the public proxy set, every client votes
                  on every proxy sample;
* ``fd_kmeans``-- same, each client votes only on proxy samples its KMeans filter
                  accepts (``distill.kmeans_filter.KMeansDensityFilter``).

FD rounds use exactly ``distill.fd`` (client_soft_labels → sum_client_uploads →
aggregate_soft_labels → distillation_loss).  Accuracy is reported on each client's
own-class test set (``distill.digits.client_splits``; trivially ~100% for one-class
local models under strong non-IID) and on the global test set, which is the number
the "stays close to IID" claim is about.  Also reported: per-client share of proxy
samples accepted, filter precision/recall w.r.t. the client's classes, and wall time
of fitting+scoring the KMeans filter vs a uLSIF RBF density-ratio estimator on the
same data.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/edgefd_bench.py [--quick]
"""

from __future__ import annotations

import os

# Timings are meant for one core; must be set before numpy/torch load BLAS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from distill.classifier import (
    MLPClassifier,
    accuracy,
    make_classifier,
    predict_logits,
    train_distill_epochs,
    train_epochs,
)
from distill.digits import ClientData, DigitsTask, client_splits, load_digits_task
from distill.fd import (
    aggregate_soft_labels,
    client_soft_labels,
    sum_client_uploads,
)
from distill.kmeans_filter import KMeansDensityFilter, RBFDensityRatioFilter

METHODS = ("local", "fedavg", "fd", "fd_kmeans")


@dataclass(frozen=True)
class Config:
    """Benchmark settings (same for every method and split)."""

    n_clients: int = 10
    rounds: int = 20
    warmup_epochs: int = 5
    local_epochs: int = 2
    lr: float = 5e-3
    batch_size: int = 32
    hidden: int = 64
    mu: float = 1.0
    tau: float = 2.0
    quantile: float = 0.75
    clusters_per_class: int = 3
    proxy_size: int = 300


def _eval(models: list[MLPClassifier], clients: list[ClientData], task: DigitsTask) -> dict[str, list[float]]:
    return {
        "local_test": [accuracy(m, c.X_test, c.y_test) for m, c in zip(models, clients)],
        "global_test": [accuracy(m, task.X_test, task.y_test) for m in models],
    }


def run_local(cfg: Config, task: DigitsTask, clients: list[ClientData], seed: int) -> dict[str, Any]:
    """Local-only baseline with the same total number of local epochs as FD."""
    rng = np.random.default_rng(seed)
    models = [make_classifier(cfg.hidden, seed=seed * 1000 + i) for i in range(len(clients))]
    epochs = cfg.warmup_epochs + cfg.rounds * cfg.local_epochs
    for m, c in zip(models, clients):
        train_epochs(m, c.X, c.y, epochs, cfg.lr, cfg.batch_size, rng)
    return _eval(models, clients, task)


def run_fedavg(cfg: Config, task: DigitsTask, clients: list[ClientData], seed: int) -> dict[str, Any]:
    """FedAvg: clients start each round from the global weights; average weighted by n_c."""
    rng = np.random.default_rng(seed)
    global_model = make_classifier(cfg.hidden, seed=seed * 1000)
    weights = np.array([len(c.y) for c in clients], dtype=np.float64)
    weights /= weights.sum()
    # The warm-up epochs are spent as one extra round so the epoch budget matches FD.
    rounds = cfg.rounds + 1
    for r in range(rounds):
        epochs = cfg.warmup_epochs if r == 0 else cfg.local_epochs
        states = []
        for c in clients:
            m = make_classifier(cfg.hidden)
            m.load_state_dict(global_model.state_dict())
            train_epochs(m, c.X, c.y, epochs, cfg.lr, cfg.batch_size, rng)
            states.append(m.state_dict())
        avg = {k: sum(w * s[k] for w, s in zip(weights, states)) for k in states[0]}
        global_model.load_state_dict(avg)
    return _eval([global_model] * len(clients), clients, task)


def _filter_stats(accept: np.ndarray, client: ClientData, y_proxy: np.ndarray) -> dict[str, float]:
    own = np.isin(y_proxy, client.classes)
    tp = float(np.sum(accept & own))
    return {
        "accepted_share": float(accept.mean()),
        "precision": tp / float(accept.sum()) if accept.any() else float("nan"),
        "recall": tp / float(own.sum()),
    }


def run_fd(cfg: Config, task: DigitsTask, clients: list[ClientData], seed: int, use_filter: bool) -> dict[str, Any]:
    """Federated distillation on the proxy set, optionally KMeans-filtered (§6)."""
    rng = np.random.default_rng(seed)
    models = [make_classifier(cfg.hidden, seed=seed * 1000 + i) for i in range(len(clients))]
    for m, c in zip(models, clients):
        train_epochs(m, c.X, c.y, cfg.warmup_epochs, cfg.lr, cfg.batch_size, rng)
    n_proxy = len(task.X_proxy)
    if use_filter:
        masks = []
        for c in clients:
            filt = KMeansDensityFilter(
                clusters_per_class=cfg.clusters_per_class, quantile=cfg.quantile, random_state=seed
            ).fit(c.X, c.y)
            masks.append(filt.in_distribution(task.X_proxy))
    else:
        masks = [np.ones(n_proxy, dtype=bool) for _ in clients]
    kept_share: list[float] = []
    label_acc: list[float] = []
    for _ in range(cfg.rounds):
        uploads = [client_soft_labels(predict_logits(m, task.X_proxy), mask, cfg.tau) for m, mask in zip(models, masks)]
        sums, counts = sum_client_uploads([u[0] for u in uploads], [u[1] for u in uploads])
        targets, kept = aggregate_soft_labels(sums, counts)
        kept_share.append(len(kept) / n_proxy)
        label_acc.append(float(np.mean(targets.argmax(axis=1) == task.y_proxy[kept])) if len(kept) else 0.0)
        for m, c in zip(models, clients):
            train_distill_epochs(
                m,
                c.X,
                c.y,
                task.X_proxy[kept],
                targets,
                cfg.local_epochs,
                cfg.lr,
                cfg.batch_size,
                rng,
                mu=cfg.mu,
                temperature=cfg.tau,
            )
    out: dict[str, Any] = _eval(models, clients, task)
    out["proxy_kept_share_last"] = kept_share[-1]
    out["aggregate_label_accuracy_first"] = label_acc[0]
    out["aggregate_label_accuracy_last"] = label_acc[-1]
    if use_filter:
        out["filter"] = [_filter_stats(mk, c, task.y_proxy) for mk, c in zip(masks, clients)]
    return out


def _time(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def time_filters(
    X: np.ndarray, y: np.ndarray | None, X_proxy: np.ndarray, cfg: Config, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` wall time of fit + score(proxy) for both filters on the same data."""

    def kmeans() -> None:
        KMeansDensityFilter(clusters_per_class=cfg.clusters_per_class, quantile=cfg.quantile).fit(X, y).in_distribution(
            X_proxy
        )

    def rbf() -> None:
        RBFDensityRatioFilter(quantile=cfg.quantile).fit(X, X_proxy).in_distribution(X_proxy)

    tk, tr = _time(kmeans, repeats), _time(rbf, repeats)
    return {"n_local": len(X), "n_proxy": len(X_proxy), "kmeans_s": tk, "rbf_s": tr, "rbf_over_kmeans": tr / tk}


def _synthetic(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    means = np.random.default_rng(7).normal(0.0, 3.0, size=(n_classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    return means[y] + rng.normal(size=(n, dim)), y


def machine_info() -> dict[str, Any]:
    """Host, library versions and thread settings the numbers were measured with."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # Wall times are only comparable within a run; a busy host inflates both filters.
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _ms(vals: list[float]) -> tuple[float, float]:
    return float(np.mean(vals)), float(np.std(vals))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 8 rounds, small timing sizes")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--splits", nargs="+", default=["iid", "weak", "strong"])
    ap.add_argument("--mu", type=float, default=None)
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "edgefd.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = Config()
    cfg = Config(
        rounds=args.rounds if args.rounds is not None else (8 if args.quick else base.rounds),
        mu=args.mu if args.mu is not None else base.mu,
        tau=args.tau if args.tau is not None else base.tau,
    )
    seeds = [0] if args.quick else list(range(args.seeds))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {m: [] for m in METHODS} for s in args.splits}
    t_start = time.perf_counter()
    for seed in seeds:
        task = load_digits_task(seed=seed, proxy_size=cfg.proxy_size)
        for split in args.splits:
            clients = client_splits(task, cfg.n_clients, split, seed=seed)
            for method in METHODS:
                t0 = time.perf_counter()
                if method == "local":
                    res = run_local(cfg, task, clients, seed)
                elif method == "fedavg":
                    res = run_fedavg(cfg, task, clients, seed)
                else:
                    res = run_fd(cfg, task, clients, seed, use_filter=method == "fd_kmeans")
                res["seconds"] = time.perf_counter() - t0
                results[split][method].append(res)
                print(
                    f"seed {seed} {split:6s} {method:9s} global {np.mean(res['global_test']):.3f} "
                    f"local {np.mean(res['local_test']):.3f} ({res['seconds']:.1f}s)",
                    flush=True,
                )

    summary: dict[str, Any] = {}
    print("\nMean client test accuracy (mean over clients; ± std over seeds; [std over clients])")
    print(f"{'split':7s} {'method':10s} {'global test':>22s} {'own-class test':>22s}")
    for split in args.splits:
        summary[split] = {}
        for method in METHODS:
            runs = results[split][method]
            g = _ms([float(np.mean(r["global_test"])) for r in runs])
            loc = _ms([float(np.mean(r["local_test"])) for r in runs])
            g_cl = float(np.std(np.concatenate([r["global_test"] for r in runs])))
            l_cl = float(np.std(np.concatenate([r["local_test"] for r in runs])))
            summary[split][method] = {
                "global_test_mean": g[0],
                "global_test_seed_std": g[1],
                "global_test_client_std": g_cl,
                "local_test_mean": loc[0],
                "local_test_seed_std": loc[1],
                "local_test_client_std": l_cl,
            }
            print(
                f"{split:7s} {method:10s} {g[0]:8.3f} ± {g[1]:.3f} [{g_cl:.3f}]"
                f" {loc[0]:8.3f} ± {loc[1]:.3f} [{l_cl:.3f}]"
            )

    print("\nKMeans filter on the proxy set (mean ± std over clients and seeds)")
    print(f"{'split':7s} {'accepted':>15s} {'precision':>15s} {'recall':>15s} {'kept (FD / FD+KM)':>20s}")
    for split in args.splits:
        stats = [f for r in results[split]["fd_kmeans"] for f in r["filter"]]
        frow = {k: _ms([s[k] for s in stats if not np.isnan(s[k])]) for k in ("accepted_share", "precision", "recall")}
        kept_fd = np.mean([r["proxy_kept_share_last"] for r in results[split]["fd"]])
        kept_km = np.mean([r["proxy_kept_share_last"] for r in results[split]["fd_kmeans"]])
        lab_fd = np.mean([r["aggregate_label_accuracy_first"] for r in results[split]["fd"]])
        lab_km = np.mean([r["aggregate_label_accuracy_first"] for r in results[split]["fd_kmeans"]])
        summary[split]["filter"] = {k: {"mean": v[0], "std": v[1]} for k, v in frow.items()}
        summary[split]["filter"]["proxy_kept_share"] = {"fd": float(kept_fd), "fd_kmeans": float(kept_km)}
        summary[split]["filter"]["round1_label_accuracy"] = {"fd": float(lab_fd), "fd_kmeans": float(lab_km)}
        print(
            f"{split:7s} "
            + " ".join(f"{frow[k][0]:7.3f} ± {frow[k][1]:.3f}" for k in frow)
            + f" {kept_fd:9.3f} / {kept_km:.3f}"
        )
        print(f"{'':7s} round-1 aggregated-label accuracy on kept proxy: FD {lab_fd:.3f}, FD+KMeans {lab_km:.3f}")

    print("\nFilter cost: fit + score(proxy), best of repeats, 1 thread (ratio = RBF / KMeans)")
    timing: list[dict[str, Any]] = []
    task0 = load_digits_task(seed=0, proxy_size=cfg.proxy_size)
    repeats = 3 if args.quick else 5
    for split in args.splits:
        clients = client_splits(task0, cfg.n_clients, split, seed=0)
        per = [time_filters(c.X, c.y, task0.X_proxy, cfg, repeats) for c in clients]
        row: dict[str, Any] = {
            "case": f"digits {split}: 10 clients (sum)",
            "n_local": int(np.mean([p["n_local"] for p in per])),
            "n_proxy": len(task0.X_proxy),
            "kmeans_s": float(sum(p["kmeans_s"] for p in per)),
            "rbf_s": float(sum(p["rbf_s"] for p in per)),
        }
        row["rbf_over_kmeans"] = row["rbf_s"] / row["kmeans_s"]
        timing.append(row)
    timing.append(
        {"case": "digits pool as one client", **time_filters(task0.X_train, task0.y_train, task0.X_proxy, cfg, repeats)}
    )
    for n in [1000, 2000] if args.quick else [1000, 2000, 4000]:
        Xs, ys = _synthetic(n, 64, 10, seed=1)
        Xp, _ = _synthetic(n, 64, 10, seed=2)
        timing.append(
            {
                "case": f"synthetic 64-d, n_local = n_proxy = {n}",
                **time_filters(Xs, ys, Xp, cfg, 1 if n > 2000 else repeats),
            }
        )
    for trow in timing:
        print(
            f"{trow['case']:42s} n_local {trow['n_local']:5d} n_proxy {trow['n_proxy']:5d}  "
            f"KMeans {trow['kmeans_s'] * 1e3:9.1f} ms  RBF {trow['rbf_s'] * 1e3:9.1f} ms  "
            f"ratio {trow['rbf_over_kmeans']:6.2f}"
        )

    report = {
        "benchmark": "edgefd",
        "config": asdict(cfg),
        "seeds": seeds,
        "quick": bool(args.quick),
        "methods": list(METHODS),
        "summary": summary,
        "filter_timing": timing,
        "runs": results,
        "total_seconds": time.perf_counter() - t_start,
        "machine": machine_info(),
        "notes": (
            "local_test = global test images of the classes a client holds (one-class models score ~1.0 "
            "under strong non-IID); global_test = full fixed test set. FD methods: warm-up epochs then "
            "rounds x local_epochs of CE + mu*tau^2*KL on voted proxy samples; local/fedavg get the same "
            "epoch budget. RBF = uLSIF with all local fit samples as Gaussian centres, median-heuristic sigma."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
