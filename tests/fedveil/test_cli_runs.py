"""`fedveil runs` prints whole run ids, piped or on a narrow terminal (issue 18 item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedveil.store import Store, sqlite_url

FEDVEIL = str(Path(sys.executable).with_name("fedveil"))


def test_runs_prints_full_ids_when_piped(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "fv.db")
    with Store(url) as store:
        ids = [store.create_run({}, name=f"a-rather-long-run-name-{i}", method="dp-opd", task="synthetic-text",
                                he_enabled=True, num_clients=4, num_rounds=3, seed=0) for i in range(2)]
    env = dict(os.environ, COLUMNS="80")
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run([FEDVEIL, "runs", "--db", url], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for run_id in ids:
        assert len(run_id) >= 32 and run_id in proc.stdout
    assert "…" not in proc.stdout
