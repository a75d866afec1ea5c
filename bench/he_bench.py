"""CKKS aggregation cost against a plaintext weighted mean (docs/METHODS.md §7).

For every profile and payload size, ``--clients`` clients each hold ``n`` float32
values uniform in [-1, 1] and weights ``n_c / sum(n)``. The HE path encrypts
(pre-weighted), goes through the ArrayRecord encoding, is validated and summed by
the "server" in one pass (``aggregate_payloads``) and decrypted once; the baseline is numpy's weighted mean of the same
values in the same process. Prints a table and writes ``bench/results/he.json``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/he_bench.py --quick
    OMP_NUM_THREADS=1 .venv/bin/python bench/he_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory

from privacy.he import (
    PROFILES,
    HETimings,
    aggregate_payloads,
    decrypt_payload,
    encrypt_arrays,
    generate_contexts,
    get_profile,
    payload_from_arrays,
    payload_nbytes,
    payload_to_arrays,
    specs_of,
)


def _plain_seconds(x: np.ndarray, w: np.ndarray, repeats: int = 15) -> tuple[float, np.ndarray]:
    best, out = float("inf"), np.zeros(0)
    for _ in range(repeats):
        start = time.perf_counter()
        out = (w[:, None] * x.astype(np.float64)).sum(0)
        best = min(best, time.perf_counter() - start)
    return best, out


def _contexts(profile: str, cache: dict[tuple[int, tuple[int, ...]], Any]) -> tuple[ts.Context, ts.Context, float]:
    p = get_profile(profile)
    key = (p.poly_modulus_degree, p.coeff_mod_bit_sizes)
    if key not in cache:  # seeded profiles reuse their base key set, as a deployment would
        start = time.perf_counter()
        secret, public = generate_contexts(profile)
        cache[key] = (ts.context_from(secret), ts.context_from(public), time.perf_counter() - start)
    return cache[key]


def run_case(profile: str, n: int, clients: int, rng: np.random.Generator, cache: dict[Any, Any]) -> dict[str, Any]:
    """One profile x payload size; returns a result row."""
    secret, public, keygen_s = _contexts(profile, cache)
    x = rng.uniform(-1, 1, (clients, n)).astype(np.float32)
    counts = rng.integers(50, 5000, clients).astype(np.float64)
    w = counts / counts.sum()
    plain_s, expected = _plain_seconds(x, w)

    t = HETimings()
    payloads = [encrypt_arrays(secret, {"update": x[c]}, float(w[c]), profile, timings=t) for c in range(clients)]
    start = time.perf_counter()
    received = [payload_from_arrays(payload_to_arrays(pl)) for pl in payloads]
    transport_s = time.perf_counter() - start
    total, rejected = aggregate_payloads(public, received, specs_of({"update": x[0]}), timings=t)
    if total is None or rejected:
        raise RuntimeError(f"benchmark payloads rejected: {rejected}")
    result = decrypt_payload(secret, total, timings=t)["update"]

    he_s = t.encrypt_s + t.aggregate_s + t.decrypt_s
    latency_s = t.encrypt_s / clients + t.aggregate_s + t.decrypt_s  # clients encrypt in parallel
    return {
        "profile": profile,
        "n_values": n,
        "clients": clients,
        "chunks_per_client": len(payloads[0].chunks),
        "plain_s": plain_s,
        "encrypt_s_total": t.encrypt_s,
        "encrypt_s_per_client": t.encrypt_s / clients,
        "validate_and_sum_s": t.aggregate_s,
        "decrypt_s": t.decrypt_s,
        "transport_encode_s": transport_s,
        "he_s_total": he_s,
        "ratio_total": he_s / plain_s,
        "round_latency_s": latency_s,
        "ratio_latency": latency_s / plain_s,
        "bytes_per_value_up": float(np.mean([payload_nbytes(pl) for pl in payloads])) / n,
        "bytes_per_value_down": payload_nbytes(total) / n,
        "max_abs_error": float(np.max(np.abs(result.astype(np.float64) - expected))),
        "keygen_s": keygen_s,
    }


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "tenseal": ts.__version__,
        "numpy": np.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="only 1e4 values per client")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated profile names")
    parser.add_argument("--sizes", default="", help="comma-separated value counts (default 1e4,1e5,1e6)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "he.json"))
    args = parser.parse_args(argv)

    sizes = [int(float(s)) for s in args.sizes.split(",") if s] or ([10_000] if args.quick else
                                                                   [10_000, 100_000, 1_000_000])
    profiles = [get_profile(name).name for name in args.profiles.split(",") if name]
    rng = np.random.default_rng(args.seed)
    cache: dict[Any, Any] = {}
    rows = []
    head = (f"{'profile':<15}{'values':>9}{'plain ms':>10}{'enc/cl s':>10}{'server s':>10}{'dec s':>8}"
            f"{'ratio':>10}{'lat.ratio':>11}{'B/val up':>10}{'B/val dn':>10}{'max err':>10}")
    print(head)
    print("-" * len(head))
    for profile in profiles:
        for n in sizes:
            r = run_case(profile, n, args.clients, rng, cache)
            rows.append(r)
            print(f"{profile:<15}{n:>9}{1e3 * r['plain_s']:>10.3f}{r['encrypt_s_per_client']:>10.3f}"
                  f"{r['validate_and_sum_s']:>10.3f}{r['decrypt_s']:>8.3f}{r['ratio_total']:>10.0f}"
                  f"{r['ratio_latency']:>11.0f}{r['bytes_per_value_up']:>10.2f}{r['bytes_per_value_down']:>10.2f}"
                  f"{r['max_abs_error']:>10.1e}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "bench": "he",
        "machine": machine(),
        "settings": {"clients": args.clients, "sizes": sizes, "profiles": profiles, "seed": args.seed,
                     "values": "float32 uniform [-1, 1]", "weights": "n_c / sum(n)",
                     "ratio_total": "(all clients' encrypt + server validate-and-sum + one decrypt) "
                                    "/ numpy weighted mean",
                     "ratio_latency": "(one client's encrypt + server validate-and-sum + one decrypt) "
                                      "/ numpy weighted mean"},
        "results": rows,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
