"""``fedveil bench NAME [--data PATH] [--quick]``: run benchmarks and regenerate ``bench/REPORT.md``.

NAME is one benchmark (``pii``, ``rollout``, ``audit``, ``he``, ``dpstep``, ``coldstart``, ``edgefd``,
``lm``, ``lm-wikitext``, ``exposure``, ``exposure-wikitext``, ``demo``, ``scale``) or ``all``. The benchmarks are
files of the source checkout (``bench/*.py``), not part of the installed package; each runs in its own
subprocess through ``bench/run_all.py``, which records failures and goes on, then writes the report.

``--data PATH``: with ``all``, the folder holding the data sets (default ``../shared/data`` next to the
repository); with one benchmark, that benchmark's own data path (``pii``: the presidio
``synth_dataset_v2.json``; ``lm-wikitext``, ``exposure-wikitext``: the ``wikitext-2`` folder). A
benchmark whose data is absent is reported as ``data not found``, not as a failure.

``--quick`` runs smoke sizes, writes to ``bench/results/quick`` and ``bench/results/quick/REPORT.md``
and leaves the full results alone; a full ``all`` run also refreshes README's results section when
README.md has the ``<!-- bench:begin -->`` / ``<!-- bench:end -->`` markers.

Expected duration on a 2-core machine, one thread per benchmark: ``--quick`` all ~10 min; full all
~2.5–3 h, of which the federation-scale runs (4/16/64/100 clients, HE off and on, the 100-client
load check and the default demo) took 82 min at load average 9–15; a single benchmark 1–15 min
(``scale``: as above).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PROJECT_DIR = Path(__file__).resolve().parents[2]
RUN_ALL = PROJECT_DIR / "bench" / "run_all.py"


class BenchError(ValueError):
    """A benchmark request that cannot run: unknown name, --data where none is taken, no checkout."""


def _run_all() -> ModuleType:
    if not RUN_ALL.is_file():
        raise BenchError(f"{RUN_ALL} not found: benchmarks run from a source checkout of fedveil")
    spec = importlib.util.spec_from_file_location("fedveil_bench_run_all", RUN_ALL)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {RUN_ALL}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench_argv(name: str, data: str | None, quick: bool, names: tuple[str, ...], takes_data: tuple[str, ...],
               readme: Path | None) -> list[str]:
    """``run_all.py`` arguments for ``fedveil bench NAME [--data PATH] [--quick]``; raises :class:`BenchError`."""
    if name != "all" and name not in names:
        raise BenchError(f"unknown benchmark {name!r}; allowed: all, {', '.join(names)}")
    argv = ["--quick"] if quick else []
    if name == "all":
        if data is not None:
            argv += ["--data", data]
        if readme is not None and not quick:
            argv += ["--readme", str(readme)]
        return argv
    argv += ["--only", name]
    if data is not None:
        if name not in takes_data:
            raise BenchError(f"benchmark {name!r} takes no --data; benchmarks with data: {', '.join(takes_data)}")
        argv += ["--data-path", data]
    return argv


def bench(name: str, data: str | None, quick: bool) -> int:
    """Run benchmark ``name`` (or ``all``) and write the report; returns the exit status (1: a benchmark failed).

    Raises
    ------
    BenchError
        Unknown name, ``--data`` given to a benchmark that takes none, or no ``bench/`` folder.
    """
    run_all = _run_all()
    readme = PROJECT_DIR / "README.md"
    has_markers = readme.is_file() and "<!-- bench:begin -->" in readme.read_text()
    argv = bench_argv(name, data, quick, run_all.NAMES, tuple(b.name for b in run_all.BENCHMARKS if b.data),
                      readme if has_markers else None)
    return int(run_all.main(argv))
