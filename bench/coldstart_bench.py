"""Cold start of the ClientApp: what a fresh process pays before it can answer a message.

Usage::

    nice -n 10 .venv/bin/python bench/coldstart_bench.py [--quick] [--repeats 7]

In deployment, Flower's SuperNode starts a new ClientApp process for every message, which imports
``client.app`` before handling it. Opacus and the audit scoring code (scikit-learn, SciPy) are now
imported only where they are used (training; audits), so hello and evaluate messages skip them.

Baseline, measured in the same run: the same fresh-process import followed by the modules the
ClientApp imported eagerly before that change (``opacus.accountants``, ``opacus.grad_sample``,
``opacus.optimizers``, ``opacus.utils.fast_gradient_clipping_utils`` and every ``privacy.audit``
submodule) — exactly the work a message no longer does. The two variants alternate so that load
drift hits both; the median wall time of ``--repeats`` processes each is reported, with the ratio.

Expected duration: ~2 min (7 repeats, 2 variants, ~6 s per process on the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.common import ROOT, write_result

EAGER_BEFORE = ("opacus.accountants", "opacus.accountants.utils", "opacus.grad_sample", "opacus.optimizers",
                "opacus.utils.fast_gradient_clipping_utils", "privacy.audit.canaries", "privacy.audit.epsilon",
                "privacy.audit.exposure", "privacy.audit.memorisation", "privacy.audit.mia", "privacy.audit.scoring")
VARIANTS = {
    "lazy (now)": "import client.app",
    "eager (before)": "import client.app\n" + "\n".join(f"import {m}" for m in EAGER_BEFORE),
}
CHECK = "import sys; import client.app; print(int(any(m.startswith('opacus') for m in sys.modules)))"


def one(code: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the child) of a fresh interpreter running ``code``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    before = os.times()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - start
    after = os.times()
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 repeats")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    loaded = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, check=True)
    opacus_at_import = loaded.stdout.strip() == "1"
    one(VARIANTS["lazy (now)"])  # warm the page cache for both variants
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
    for _ in range(repeats):
        for name, code in VARIANTS.items():
            samples[name].append(one(code))
    stats = {name: {"wall_median_s": statistics.median(w for w, _ in rows),
                    "cpu_median_s": statistics.median(c for _, c in rows),
                    "wall_s": [w for w, _ in rows]} for name, rows in samples.items()}
    lazy, eager = stats["lazy (now)"], stats["eager (before)"]
    record = {"repeats": repeats, "variants": stats, "opacus_imported_by_client_app": opacus_at_import,
              "ratio_wall_lazy_over_eager": lazy["wall_median_s"] / eager["wall_median_s"],
              "ratio_cpu_lazy_over_eager": lazy["cpu_median_s"] / eager["cpu_median_s"],
              "saved_cpu_s": eager["cpu_median_s"] - lazy["cpu_median_s"],
              "load_avg": list(os.getloadavg()), "quick": args.quick}
    for name, s in stats.items():
        print(f"{name:<15} wall {s['wall_median_s']:.2f} s  cpu {s['cpu_median_s']:.2f} s (median of {repeats})")
    print(f"lazy / eager: wall x{record['ratio_wall_lazy_over_eager']:.2f}, "
          f"cpu x{record['ratio_cpu_lazy_over_eager']:.2f} ({record['saved_cpu_s']:.2f} CPU-s saved per hello/evaluate "
          f"message); opacus imported by client.app: "
          f"{opacus_at_import}")
    path = write_result("coldstart", record, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
