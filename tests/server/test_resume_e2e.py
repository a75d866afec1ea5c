"""Kill a run's server between rounds, resume it, and compare with the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from fedveil.commands.launch import stop_superlink
from fedveil.store import Store
from fedveil.store.models import RunLease
from tests.server.simtools import FEDVEIL, _cli


def _wait_for_round(db: str, name: str, round_: int, proc: subprocess.Popen[bytes], timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        with Store(db) as store:
            for r in store.list_runs():
                if r["name"] == name and store.get_run(r["id"])["run"]["last_complete_round"] >= round_:
                    return str(r["id"])
        time.sleep(0.5)
    raise AssertionError("round never completed")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(small_run: tuple[Path, str, str]) -> None:
    work, db, _ = small_run
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([FEDVEIL, "run", "-c", "small.toml", "--set", "run.name='resume'", "--db", db, "--quiet"],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_id = _wait_for_round(db, "resume", 1, proc)
        # The server dies between rounds: every process of this deployment, then the launcher.
        stop_superlink((work / "runs" / ".flwr-home" / run_id).resolve(), grace=0.5)
    finally:
        proc.kill()
        proc.wait()
    with Store(db) as store:
        interrupted = store.get_run(run_id)
    assert interrupted["run"]["status"] in ("running", "failed")
    assert [r["server_round"] for r in interrupted["rounds"]] == [1]

    # Two operators resume it at once: the run's lease lets exactly one proceed (the killed launcher's
    # lease is dead at once: its process is gone), the other gets one line and exit status 2.
    resumes = [subprocess.Popen([FEDVEIL, "run", "--resume", run_id, "--db", db, "--quiet"], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in resumes]
    codes = sorted(p.returncode for p in resumes)
    assert codes == [0, 2], outs
    done_out, _ = outs[[p.returncode for p in resumes].index(0)]
    _, refused_err = outs[[p.returncode for p in resumes].index(2)]
    assert "resuming run" in done_out
    assert f"run {run_id} is being executed by" in refused_err or "took its lease just now" in refused_err
    assert len(refused_err.strip().splitlines()) <= 2 and "Traceback" not in refused_err
    with Store(db) as store:
        assert store.get_run(run_id)["run"]["status"] == "completed"
        with store.session(readonly=True) as s:
            assert s.get(RunLease, run_id) is None

    runs = {r["name"]: r["id"] for r in json.loads(_cli("runs", "--format", "json", "--db", db, cwd=work).stdout)}
    resumed = json.loads(_cli("show", run_id, "--format", "json", "--db", db, cwd=work).stdout)
    baseline = json.loads(_cli("show", runs["e2e"], "--format", "json", "--db", db, cwd=work).stdout)
    assert resumed["run"]["status"] == "completed"
    assert [r["server_round"] for r in resumed["rounds"]] == [1, 2]  # one continuous run

    def eps(run: dict) -> dict[tuple[int, int], float]:
        return {(r["client_index"], r["server_round"]): r["epsilon"] for r in run["privacy_ledger"]}

    assert eps(resumed) == pytest.approx(eps(baseline), rel=1e-12)  # ε continued from the ledger, never reset
    assert max(eps(resumed).values()) <= 2.0
    ppl = {name: {m["round"]: m["value"] for m in run["metrics"] if m["name"] == "perplexity" and m["client"] is None}
           for name, run in (("resumed", resumed), ("baseline", baseline))}
    assert sorted(ppl["resumed"]) == [0, 1, 2]  # round 0 (the warm start) measured once, not again on resume
    # Same seeds, same checkpoint: the rounds match up to float non-determinism across worker processes,
    # which on-policy sampling can amplify by flipping a sampled token, hence "within noise".
    assert ppl["resumed"][0] == pytest.approx(ppl["baseline"][0], rel=1e-9)
    assert ppl["resumed"][1] == pytest.approx(ppl["baseline"][1], rel=1e-9)
    assert ppl["resumed"][2] == pytest.approx(ppl["baseline"][2], rel=2e-2)

    again = _cli("run", "--resume", run_id, "--db", db, cwd=work)
    assert again.returncode == 2 and "already completed" in again.stderr


@pytest.mark.slow
def test_two_runs_in_one_run_dir_both_complete(small_run: tuple[Path, str, str]) -> None:
    """Two operators start runs in the same run directory at once: separate FLWR_HOMEs and SuperLinks,
    neither stops the other, both are stored completed."""
    work, db, _ = small_run
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([FEDVEIL, "run", "-c", "small.toml", "--set", f"run.name='twin-{i}'", "--set",
                               "federation.rounds=1", "--db", db, "--quiet"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    with Store(db) as store:
        twins = {r["name"]: r["status"] for r in store.list_runs() if r["name"].startswith("twin-")}
    assert twins == {"twin-0": "completed", "twin-1": "completed"}
