"""Helpers shared by the benchmarks: machine description, result files and timing.

Every benchmark writes one JSON file, ``bench/results/<name>.json``, that carries the machine it
ran on (so a ratio can always be traced to its hardware, library versions and commit).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


def git_commit(root: Path = ROOT) -> str:
    """HEAD's commit hash, suffixed ``-dirty`` when tracked files differ from it; ``"unknown"`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, thread count, library versions, git commit and UTC date of this run."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    opacus = sys.modules.get("opacus")
    if opacus is not None:
        info["opacus"] = getattr(opacus, "__version__", "unknown")
    return info


def write_result(name: str, record: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``record`` plus ``machine`` to ``bench/results/<name>.json`` (or ``out``); return the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"result name must be a plain file stem, got {name!r}")
    path = out if out is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"benchmark": name, **record, "machine": machine_info()}
    path.write_text(json.dumps(full, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    if not values:
        raise ValueError("median of an empty sequence")
    return float(statistics.median(values))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("mean of an empty sequence")
    mean = float(statistics.fmean(values))
    return mean, float(statistics.stdev(values)) if len(values) > 1 else 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(threads: int | None) -> None:
    """Fix torch's intra-op threads (1 by default on the shared benchmark machine)."""
    import torch

    torch.set_num_threads(threads or 1)


@contextlib.contextmanager
def quiet_accountant() -> Iterator[None]:
    """PRV sizes its domain with an RDP bound over Opacus' default orders; a loose bound there only widens it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@functools.lru_cache(maxsize=16)
def recompute_epsilon(sigma: float, q: float, steps: int, delta: float, eps_error: float = 0.01) -> dict[str, float]:
    """ε of ``steps`` Poisson-subsampled Gaussian steps, from Opacus' analysis functions directly.

    PRV (Gopi et al. 2021): discretise the truncated privacy random variable on a safe domain, compose
    it ``steps`` times by FFT and read the upper ε bound at δ; RDP (Mironov 2017) as a looser check.
    """
    import numpy as np
    from opacus.accountants.analysis import rdp
    from opacus.accountants.analysis.prv import (
        Domain,
        PoissonSubsampledGaussianPRV,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        compute_safe_domain_size,
        discretize,
    )
    delta_error = delta / 1000
    prv = PoissonSubsampledGaussianPRV(q, sigma)
    with quiet_accountant():
        size = compute_safe_domain_size(prvs=[prv], max_self_compositions=[steps], eps_error=eps_error,
                                        delta_error=delta_error)
    mesh = eps_error / np.sqrt(steps * np.log(12 / delta_error) / 2)
    domain = Domain.create_aligned(-size, size, mesh)
    dprv = discretize(TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max), domain)
    _, _, eps_prv = compose_heterogeneous([dprv], [steps]).compute_epsilon(delta, delta_error, eps_error)
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [2.0**k for k in range(6, 12)]
    eps_rdp, _ = rdp.get_privacy_spent(orders=orders, rdp=rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                                                          orders=orders), delta=delta)
    return {"prv": float(eps_prv), "rdp": float(eps_rdp)}
