"""The store URL's password never shows, and the store file is its owner's only (issue 13, item 5)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedveil.store import Store, StoreError, mask_url

PG_URL = "postgresql+psycopg://alice:pw-S3cr3t-1@db.example:5432/fedveil?sslmode=require"
QUERY_URL = "postgresql+psycopg://db.example/fedveil?user=alice&password=pw-S3cr3t-2"


@pytest.mark.parametrize(("url", "secret", "shown"), [
    (PG_URL, "pw-S3cr3t-1", "alice:***@db.example"),
    (QUERY_URL, "pw-S3cr3t-2", "password=***"),
    ("postgresql://bob:p%40ss@h/db?PassWord=Other-1", "Other-1", "bob:***@h"),
    ("weird://carol:pw-S3cr3t-3@h:notaport/db?pwd=pw-S3cr3t-4", "pw-S3cr3t-", "carol:***@h"),
])
def test_mask_url_hides_user_info_and_query_passwords(url: str, secret: str, shown: str) -> None:
    masked = mask_url(url)
    assert secret not in masked and shown in masked
    assert "p%40ss" not in masked and "p@ss" not in masked


def test_mask_url_leaves_urls_without_secrets_alone() -> None:
    assert mask_url("sqlite:////tmp/runs/fedveil.db") == "sqlite:////tmp/runs/fedveil.db"
    assert mask_url("postgresql://db.example/fedveil?sslmode=require") == "postgresql://db.example/fedveil?sslmode=require"


def test_unreachable_store_error_names_the_masked_url_only() -> None:
    # Nothing listens on port 9 of 127.0.0.1: the connection fails and the error is one line.
    url = "postgresql+psycopg://alice:pw-S3cr3t-5@127.0.0.1:9/fedveil?password=pw-S3cr3t-6&connect_timeout=2"
    with pytest.raises(StoreError) as info:
        Store(url)
    assert "pw-S3cr3t" not in str(info.value) and "alice:***@127.0.0.1" in str(info.value)


def test_sqlite_store_and_its_directory_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask, as on most desktops
    try:
        db = tmp_path / "new" / "fedveil.db"
        with Store(f"sqlite:///{db}") as store:
            store.create_run({"run": {}}, name="t", method="dp-sft", task="synthetic-text", he_enabled=False,
                             num_clients=1, num_rounds=1, seed=0)
        for path in [db, *db.parent.glob("fedveil.db-*")]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        loose = tmp_path / "old.db"
        loose.touch(mode=0o644)
        Store(f"sqlite:///{loose}").close()
        assert stat.S_IMODE(loose.stat().st_mode) == 0o600  # an existing store of ours is tightened
    finally:
        os.umask(old)


def assert_secret_nowhere(secret: str, root: Path, *outputs: str) -> None:
    """Not in any output, nor in any file under ``root`` (store, logs, FLWR_HOME with the SuperLink's state
    database and the run's Flower config, node directories), which are also owner-only where they matter."""
    for text in outputs:
        assert secret not in text
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    for toml in root.rglob("run-*.toml"):
        assert stat.S_IMODE(toml.stat().st_mode) == 0o600, toml


@pytest.mark.slow
def test_run_never_shows_or_stores_a_query_string_password(tmp_path: Path) -> None:
    """A real short run whose SQLite URL carries ``?password=``: not in output, nor in any stored row."""
    import json

    from tests.server.simtools import SMALL, _cli
    tiny = SMALL.replace("rounds = 2", "rounds = 1").replace('method = "dp-opd"', 'method = "dp-sft"')
    assert "rounds = 1" in tiny and "dp-sft" in tiny
    (tmp_path / "tiny.toml").write_text(tiny)
    secret = "pw-FAKE-q9"
    url = f"sqlite:///{tmp_path / 'store.db'}?password={secret}"
    proc = _cli("run", "-c", "tiny.toml", "--db", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "password=***" in proc.stdout  # the banner and summary show the masked form
    assert secret not in proc.stdout + proc.stderr
    with Store(url) as store:
        (summary,) = store.list_runs()
        run = store.get_run(summary["id"])
    assert summary["status"] == "completed"
    assert secret not in json.dumps(run, default=str)  # config row (show --format json, dashboard) included
    shown = _cli("show", summary["id"], "--db", url, cwd=tmp_path)
    assert shown.returncode == 0
    assert_secret_nowhere(secret, tmp_path, proc.stdout, proc.stderr, shown.stdout, shown.stderr)
