"""One short `fedveil run` whose store is a live PostgreSQL database (``FEDVEIL_TEST_PG_URL``, see conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from fedveil.store import Store
from tests.fedveil.test_credentials import assert_secret_nowhere
from tests.fedveil.conftest import PG_URL_ENV, fresh_pg_database, pg_server_url
from tests.server.simtools import SMALL, _cli

# The smallest real run: 2 clients, 1 round, DP-SFT (no teacher to train), tiny model and data.
TINY = SMALL.replace("rounds = 2", "rounds = 1").replace('method = "dp-opd"', 'method = "dp-sft"')


@pytest.mark.slow
@pytest.mark.skipif(pg_server_url() is None, reason=f"{PG_URL_ENV} is not set")
def test_run_is_stored_in_postgresql(tmp_path: Path) -> None:
    server = pg_server_url()
    assert server is not None and "rounds = 1" in TINY and "dp-sft" in TINY
    (tmp_path / "tiny.toml").write_text(TINY)
    with fresh_pg_database(server) as plain:
        # A password in the URL (the throw-away cluster trusts local connections, so any value works): it must
        # show nowhere, be stored nowhere and reach no ClientApp (issue 13, test e with a PostgreSQL URL).
        secret = "pw-FAKE-pg7"
        url = make_url(plain).set(password=secret).render_as_string(hide_password=False)
        proc = _cli("run", "-c", "tiny.toml", "--db", url, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "***@" in proc.stdout
        with Store(url) as store:
            assert store.engine.dialect.name == "postgresql"
            (summary,) = store.list_runs()
            assert summary["status"] == "completed" and summary["method"] == "dp-sft"
            run = store.get_run(summary["id"])
        assert [r["server_round"] for r in run["rounds"]] == [1]
        assert run["rounds"][0]["num_replied"] == 2
        assert sorted(row["client_index"] for row in run["privacy_ledger"]) == [0, 1]
        assert all(0 < row["epsilon"] <= 2.0 for row in run["privacy_ledger"])
        assert [m["value"] > 1 for m in run["metrics"] if m["name"] == "perplexity"] == [True, True]  # rounds 0, 1
        shown = _cli("show", summary["id"], "--format", "json", "--db", url, cwd=tmp_path)
        assert shown.returncode == 0
        assert_secret_nowhere(secret, tmp_path, proc.stdout, proc.stderr, shown.stdout, json.dumps(run, default=str))
