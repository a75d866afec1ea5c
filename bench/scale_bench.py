"""Federation scale through the real product: ``fedveil run`` with 4 → 100 simulated clients.

Usage::

    nice -n 10 .venv/bin/python bench/scale_bench.py [--quick] [--he off,on] [--no-demo] [--no-load]

Every measurement is one ``fedveil run --quiet`` subprocess (exactly what a user runs) on a fresh store
in a temporary directory, with a small, fast experiment: DP-SFT (no teacher), ``student-xs``, a few
records per client and two local steps, audits off, the RDP accountant (planning σ, which every sampled
client does every round, costs about twice as much with PRV; the demo run keeps the defaults). Each
federation samples ``--sampled`` clients per round (``fraction_train = min(1, sampled / N)``,
``min_clients = min(sampled, N)``), so the work of a round stays the same and what grows with N is the
coordination: more SuperNodes to register and greet, more partitions to build, more state in the SuperLink.

Per run we record:

* round wall time, from the store's round rows (``rounds[].wall_seconds``); the first round carries the
  simulation's warm-up (actor start, imports), so the mean over later rounds is reported as well;
* ``setup_s``: launcher wall time minus the rounds (SuperLink start, tokenizer, greeting every node);
* ``peak_tree_pss_mb``: peak proportional set size summed over every process of the run (the ``fedveil``
  process, its descendants and anything started with the run's ``FLWR_HOME``), sampled every 0.5 s.
  This is what the run itself costs and is not disturbed by other work on the machine;
* ``peak_system_mb``: the launcher's own figure (``runs.peak_rss_mb``: system-wide used-memory increase
  during the run), which also counts whatever else the machine did meanwhile.

Ratios are against the 4-client run with the same HE setting, measured in the same process. Also: the
issue-10 load check (100 clients, 10 sampled per round, 5 rounds completes) and the default demo end to
end (``fedveil run`` with the default configuration: wall time and peak memory).

Expected duration (2-core machine, ``nice -n 10``): ``--quick`` (4 and 16 clients, 1 round, HE off, no
load check, no demo) ~5–10 min; full (4/16/64/100 clients with HE off, 4 and 100 with HE on, 2 rounds
each, the 5-round load check and the demo) took 82 min on the shared 2-core machine at load average 9–15
(the demo alone 17 min); expect less on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402

FEDVEIL = str(Path(sys.executable).with_name("fedveil"))


def scale_config(clients: int, sampled: int, rounds: int, he: bool, run_dir: Path) -> str:
    """TOML of the small scale experiment for ``clients`` SuperNodes, ``sampled`` of them per round."""
    if clients < 1 or sampled < 1 or rounds < 1:
        raise ValueError(f"clients, sampled and rounds must be >= 1, got {clients}, {sampled}, {rounds}")
    fraction = min(1.0, sampled / clients)
    return f"""
[run]
name = "scale-{clients}{'-he' if he else ''}"
run_dir = "{run_dir}"
[federation]
clients = {clients}
rounds = {rounds}
fraction_train = {fraction!r}
min_clients = {min(sampled, clients)}
round_timeout = 1800.0
[data]
records_per_client = 16
public_records = 200
heldout_records = 8
max_length = 48
vocab_size = 400
[model]
student = "student-xs"
[train]
method = "dp-sft"
local_steps = 2
batch_size = 8
[privacy]
accountant = "rdp"
[he]
enabled = {'true' if he else 'false'}
[audit]
enabled = false
"""


# --------------------------------------------------------------------------- memory of a process tree
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields after the last ')' are fixed.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    return children


def _flwr_home_pids(flwr_home: str) -> set[int]:
    marker = f"FLWR_HOME={flwr_home}".encode()
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.add(int(proc.name))
            except OSError:
                continue
    return pids


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pids(root: int, flwr_home: str) -> set[int]:
    """``root``, its descendants, and the processes started with ``FLWR_HOME=flwr_home``."""
    children, seen, stack = _children_map(), set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(children.get(pid, []))
    return seen | _flwr_home_pids(flwr_home)


class TreeMemory:
    """Samples the summed PSS of a run's processes in a background thread; ``peak_mb_`` is the maximum."""

    def __init__(self, root_pid: int, flwr_home: str, interval: float = 0.5) -> None:
        self.root_pid = root_pid
        self.flwr_home = flwr_home
        self.interval = interval
        self.peak_mb_ = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = sum(_pss_kib(p) for p in tree_pids(self.root_pid, self.flwr_home)) / 1024.0
            self.peak_mb_ = max(self.peak_mb_, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- one run
def _numbers(obj: Any) -> Any:
    """``obj`` without its lists (histograms, ROC points): the scalar summary of an audit."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if not isinstance(v, list)}
    return obj


def audit_summaries(shown: dict[str, Any]) -> dict[str, Any]:
    """Scalar audit summaries and ε lower bounds of a stored run (no canary text: audits hold numbers only)."""
    audits = [{"kind": a["kind"], "model": a["model"], "client_index": a["client_index"],
               "summary": _numbers(a["summary"])} for a in shown["audits"]]
    bounds = [{k: b[k] for k in ("client_index", "method", "epsilon_lb", "accountant_epsilon", "flagged")}
              for b in shown["epsilon_bounds"]]
    ledger: dict[int, float] = {}
    for row in shown["privacy_ledger"]:
        ledger[row["client_index"]] = max(ledger.get(row["client_index"], 0.0), row["epsilon"])
    return {"audits": audits, "epsilon_bounds": bounds, "max_epsilon_per_client": ledger}


def run_fedveil(args: list[str], *, run_dir: Path, db: str, run_id: str, timeout: float,
                audits: bool = False, command: Sequence[str] = ("run",)) -> dict[str, Any]:
    """One ``fedveil run`` (or ``command``, e.g. ``deploy local``) subprocess; returns timings, memory and
    the global perplexity per round from the store.

    With ``audits`` the run's audit summaries and ε lower bounds are added (the demo runs all audits).
    """
    from fedveil.store import RunNotFound, Store

    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200", TOKENIZERS_PARALLELISM="false")
    cmd = [FEDVEIL, *command, *args, "--set", f"run.run_id='{run_id}'", "--set", f"run.run_dir='{run_dir}'",
           "--db", db, "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(proc.pid, str(Path(run_dir).resolve() / ".flwr-home" / run_id)) as mem:  # launch.run_flwr_home
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            output += f"\n[scale_bench] killed after {timeout:.0f} s"
    wall = time.perf_counter() - start
    row: dict[str, Any] = {"exit_code": proc.returncode, "wall_s": wall, "peak_tree_pss_mb": mem.peak_mb_}
    store = Store(db)
    try:
        shown = store.get_run(run_id)
    except RunNotFound:
        return {**row, "status": "not recorded", "error": output[-1500:]}
    finally:
        store.close()
    run = shown["run"]
    rounds = [r for r in shown["rounds"] if r["status"] == "completed"]
    secs = [float(r["wall_seconds"]) for r in rounds]
    later = secs[1:] if len(secs) > 1 else secs
    row.update(status=run["status"], error=run.get("error") or (output[-1500:] if proc.returncode else None),
               rounds_completed=len(rounds), round_s=secs,
               round_s_mean=statistics.fmean(secs) if secs else None,
               round_s_after_first_mean=statistics.fmean(later) if later else None,
               setup_s=wall - sum(secs), sampled_per_round=[r["num_sampled"] for r in shown["rounds"]],
               replied_per_round=[r["num_replied"] for r in shown["rounds"]],
               peak_system_mb=run.get("peak_rss_mb"), run_wall_s=run.get("wall_seconds"),
               perplexity=[m["value"] for m in sorted(shown["metrics"], key=lambda m: m["round"])
                           if m["name"] == "perplexity" and m["client"] is None and m["round"]],
               public_perplexity=next((m["value"] for m in shown["metrics"] if m["name"] == "perplexity"
                                       and m["client"] is None and m["round"] == 0), None))
    if audits:
        row.update(audit_summaries(shown))
    return row


RAY_STARTUP = "timed out during startup"


def measure(args: list[str], *, run_dir: Path, db: str, run_id: str, timeout: float,
            audits: bool = False, command: Sequence[str] = ("run",)) -> dict[str, Any]:
    """:func:`run_fedveil`, retried once under a new run id when Ray's start-up timed out (an overloaded
    machine, not the run); the retry and its reason stay in the row."""
    row = run_fedveil(args, run_dir=run_dir, db=db, run_id=run_id, timeout=timeout, audits=audits, command=command)
    log = run_dir / f"{run_id}.log"
    if row.get("status") != "completed" and log.is_file() and RAY_STARTUP in log.read_text(errors="replace"):
        print(f"[scale_bench] {run_id}: Ray start-up timed out; retrying once", flush=True)
        retry = run_fedveil(args, run_dir=run_dir, db=db, run_id=f"{run_id}-retry", timeout=timeout, audits=audits,
                            command=command)
        return {**retry, "retried_after": f"Ray start-up timed out (first attempt {row['wall_s']:.0f} s)"}
    return row


def with_ratios(rows: list[dict[str, Any]]) -> None:
    """Add time and memory ratios against the 4-client (smallest) row of the same HE setting, in place."""
    for he in (False, True):
        group = [r for r in rows if r["he"] == he and r.get("status") == "completed"]
        if not group:
            continue
        for r in group:
            # The 4-client baseline samples 4 clients, the others 10: compare work per sampled client too.
            r["round_s_per_sampled_client"] = r["round_s_after_first_mean"] / max(r["sampled"], 1)
        base = min(group, key=lambda r: r["clients"])
        for r in group:
            r["baseline_clients"] = base["clients"]
            for key in ("round_s_mean", "round_s_after_first_mean", "round_s_per_sampled_client", "peak_tree_pss_mb",
                        "peak_system_mb", "wall_s"):
                num, den = r.get(key), base.get(key)
                r[f"{key}_ratio"] = num / den if num is not None and den else None


def _print_row(label: str, r: dict[str, Any]) -> None:
    if r.get("status") != "completed":
        print(f"{label:<26} {r.get('status')}: {str(r.get('error'))[-300:]}", flush=True)
        return
    print(f"{label:<26} round {r['round_s_mean']:7.2f} s  (later rounds {r['round_s_after_first_mean']:7.2f} s)  "
          f"setup {r['setup_s']:6.1f} s  wall {r['wall_s']:7.1f} s  tree PSS {r['peak_tree_pss_mb']:7.0f} MiB  "
          f"system +{r['peak_system_mb'] or 0:6.0f} MiB", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 and 16 clients, 1 round, HE off, no load check, no demo")
    p.add_argument("--clients", default="4,16,64,100", help="comma-separated federation sizes")
    p.add_argument("--sampled", type=int, default=10, help="clients sampled per round")
    p.add_argument("--rounds", type=int, default=2, help="rounds per scale run (round 1 carries the warm-up)")
    p.add_argument("--he", default="off,on", help="HE settings to measure: off, on or off,on")
    p.add_argument("--he-clients", default="4,100", help="federation sizes measured with HE on ('' = all of --clients)")
    p.add_argument("--load-rounds", type=int, default=5, help="rounds of the 100-client load check")
    p.add_argument("--no-load", action="store_true", help="skip the 100-client load check")
    p.add_argument("--no-demo", action="store_true", help="skip the default demo")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.he, args.no_load, args.no_demo = "4,16", 1, "off", True, True
    args.client_list = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    settings = [s.strip() for s in args.he.split(",") if s.strip()]
    if not args.client_list or any(c < 1 for c in args.client_list):
        raise SystemExit(f"scale_bench: --clients must list positive integers, got {args.clients!r}")
    if not settings or any(s not in ("off", "on") for s in settings):
        raise SystemExit(f"scale_bench: --he must be off, on or off,on, got {args.he!r}")
    args.he_list = [s == "on" for s in settings]
    he_sizes = {int(c) for c in args.he_clients.split(",") if c.strip()}
    args.he_client_list = [c for c in args.client_list if not he_sizes or c in he_sizes]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {
        "settings": settings, "config_template": scale_config(4, args.sampled, args.rounds, False, Path("RUN_DIR")),
        "rows": rows, "load_check": None, "demo": None, "load_average_before": os.getloadavg(), "complete": False,
        "note": "The machine may be shared with other work: wall times include its load (see load_avg per row); "
                "peak_tree_pss_mb counts only this run's processes, peak_system_mb counts the whole machine."}

    def save() -> Path:
        # Written after every run, so hours of measurements survive a later failure.
        with_ratios(rows)
        record.update(load_average_after=os.getloadavg(), wall_seconds=time.perf_counter() - started)
        return write_result("scale", record, args.out)

    with tempfile.TemporaryDirectory(prefix="fedveil-scale-") as tmp:
        work = Path(tmp)
        db = f"sqlite:///{work / 'scale.db'}"
        for he in args.he_list:
            for n in args.he_client_list if he else args.client_list:
                run_dir = work / f"n{n}-{'he' if he else 'plain'}"
                run_dir.mkdir()
                (run_dir / "scale.toml").write_text(scale_config(n, args.sampled, args.rounds, he, run_dir))
                r = measure(["-c", "scale.toml"], run_dir=run_dir, db=db, run_id=run_dir.name, timeout=args.timeout)
                r.update(clients=n, sampled=min(args.sampled, n), he=he, rounds=args.rounds, load_avg=os.getloadavg())
                rows.append(r)
                _print_row(f"{n:>3} clients, HE {'on ' if he else 'off'}", r)
                save()
        if not args.no_load:
            run_dir = work / "load-100"
            run_dir.mkdir()
            (run_dir / "scale.toml").write_text(scale_config(100, 10, args.load_rounds, False, run_dir))
            load = measure(["-c", "scale.toml"], run_dir=run_dir, db=db, run_id="load-100", timeout=args.timeout)
            done = load.get("status") == "completed" and load.get("rounds_completed") == args.load_rounds
            load.update(clients=100, sampled=10, rounds=args.load_rounds, he=False, load_avg=os.getloadavg(),
                        completed=done)
            record["load_check"] = load
            _print_row(f"load: 100 clients, {args.load_rounds} rounds", load)
            save()
        if not args.no_demo:
            run_dir = work / "demo"
            run_dir.mkdir()
            demo = measure([], run_dir=run_dir, db=db, run_id="demo", timeout=args.timeout, audits=True)
            demo["load_avg"] = os.getloadavg()
            record["demo"] = demo
            _print_row("default demo", demo)
    record["complete"] = True
    path = save()
    print(f"wrote {path} ({record['wall_seconds']:.0f} s)")
    load = record["load_check"]
    failed = [r for r in rows if r.get("status") != "completed"]
    return 1 if failed or (load is not None and not load["completed"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
