"""Cached, read-only access to the fedveil store for the dashboard.

The store is opened once per URL and process (``st.cache_resource``); opening applies any
pending schema migrations, which is the only write the dashboard ever causes. Query results
are cached for a few seconds (``st.cache_data``) so that page switches are instant while a run
in progress still shows new rounds within one refresh period.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
import streamlit as st

from fedveil.store import Store, default_db_url, mask_url

CACHE_TTL_S = 4.0
REFRESH_S = 5.0


def db_url() -> str:
    """URL of the store to show: ``$FEDVEIL_DB`` (set by ``fedveil dashboard --db``), else the CLI default."""
    return default_db_url()


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist yet, else ``None``.

    Opening such a URL would create an empty database (and its directory), which a read-only
    viewer pointed at a mistyped path should not do; the dashboard waits for the file instead.
    """
    try:
        parsed = sa.make_url(url)
    except Exception:  # noqa: BLE001 - an unparseable URL is reported by Store() with its reason
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    path = Path(database).expanduser()
    return None if path.exists() else path


def shown_url(url: str) -> str:
    """The URL as it may appear on screen (password masked)."""
    return mask_url(url)


@st.cache_resource(show_spinner=False, max_entries=8)
def open_store(url: str) -> Store:
    """The :class:`Store` of ``url``, opened once per process.

    Raises
    ------
    fedveil.store.StoreError
        The database cannot be opened or migrated (not cached: the next rerun tries again).
    """
    return Store(url)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=32)
def load_runs(url: str) -> list[dict[str, Any]]:
    """``Store.list_runs()`` (newest first), cached briefly."""
    return open_store(url).list_runs()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=64)
def load_run(url: str, run_id: str) -> dict[str, Any]:
    """``Store.get_run(run_id)``, cached briefly.

    Raises
    ------
    fedveil.store.RunNotFound
        The run does not exist (any more).
    """
    return open_store(url).get_run(run_id)


def fingerprint(url: str, run_id: str | None = None) -> tuple[Any, ...]:
    """An uncached summary that changes whenever a run records a round, an audit or a status.

    Parameters
    ----------
    url : str
        Store URL.
    run_id : str or None
        One run, or every run when ``None``.

    Returns
    -------
    tuple
        Comparable snapshot of status, completed rounds, max ε, worst exposure and flags.
    """
    rows = open_store(url).list_runs()
    return tuple(
        (r["id"], r["status"], r["last_complete_round"], r["max_epsilon"], r["worst_exposure"],
         r["eps_lb_exceeds_claim"], r["final_perplexity"], r["final_accuracy"])
        for r in rows
        if run_id is None or r["id"] == run_id
    )


def clear_caches() -> None:
    """Forget cached query results (not the open store) so the next read sees new rows."""
    load_runs.clear()
    load_run.clear()
