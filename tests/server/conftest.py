"""A small real simulation shared by the end-to-end tests of this package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.simtools import SMALL, _cli


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    work = tmp_path_factory.mktemp("e2e")
    (work / "small.toml").write_text(SMALL)
    db = f"sqlite:///{work / 'store.db'}"
    proc = _cli("run", "-c", "small.toml", "--db", db, "--quiet", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, db, proc.stdout


