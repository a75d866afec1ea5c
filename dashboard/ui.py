"""Widgets shared by the dashboard pages: run picker, status banners, auto-refresh, tables."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.frames import fmt, run_label

RUN_PARAM = "run"
FENCE = "`" * 3
# Pages registered by app.py (key -> st.Page), for links between pages.
PAGES: dict[str, Any] = {}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-!|$~])")


def md_escape(text: str) -> str:
    """Text safe to pass to ``st.markdown`` (no formatting, no LaTeX from ``$``)."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def no_runs_message(url: str) -> None:
    """The friendly empty-database state."""
    st.info(
        f"No runs recorded yet in `{data.shown_url(url)}`.\n\n"
        "Start one with `make demo` or `fedveil run` (same database by default), "
        "or open another store with `fedveil dashboard --db URL`. This page refreshes on its own.",
        icon=":material/hourglass_empty:",
    )
    refresh_watch(url, None, data.fingerprint(url))


def pick_run(runs: Sequence[Mapping[str, Any]], *, label: str = "Run") -> Mapping[str, Any]:
    """A run selectbox synchronised with the ``?run=<id>`` query parameter.

    An unknown id in the URL falls back to the newest run with a warning.
    """
    ids = [str(r["id"]) for r in runs]
    by_id = {str(r["id"]): r for r in runs}
    wanted = st.query_params.get(RUN_PARAM)
    if wanted and wanted not in by_id:
        st.warning(f"Run {md_escape(wanted)} is not in this database; showing the newest run instead.")
    index = ids.index(wanted) if wanted in by_id else 0
    choice = st.selectbox(label, ids, index=index, format_func=lambda rid: run_label(by_id[rid]))
    chosen = str(choice if choice is not None else ids[0])
    if st.query_params.get(RUN_PARAM) != chosen:
        st.query_params[RUN_PARAM] = chosen
    return by_id[chosen]


def page_links(run_id: str, *, exclude: str = "") -> None:
    """Links to the run-specific pages, carrying the run id in the URL."""
    targets = [(PAGES[key], text, icon) for key, text, icon in (
        ("run", "Run details", ":material/monitoring:"), ("leakage", "Leakage audit", ":material/policy:"))
        if key in PAGES and key != exclude]
    with st.container(horizontal=True):
        for page, text, icon in targets:
            st.page_link(page, label=f"Open {text}", icon=icon, query_params={RUN_PARAM: run_id})


def status_banner(run: Mapping[str, Any], url: str) -> None:
    """State of a run: its error when failed, progress and auto-refresh while it runs."""
    status = run.get("status")
    if status == "failed":
        # A fenced block keeps tracebacks and markdown-like characters of the message verbatim.
        error = str(run.get("error") or "no error message was recorded").strip().replace(FENCE, "'" * 3)
        st.error(f"**This run failed.** Completed rounds: {run.get('last_complete_round', 0)} of "
                 f"{run.get('num_rounds', '?')}.\n\n{FENCE}text\n{error}\n{FENCE}", icon=":material/error:")
    elif status in ("running", "pending"):
        done, total = int(run.get("last_complete_round") or 0), int(run.get("num_rounds") or 0)
        st.info(f"**Run in progress** ({status}): {done} of {total} rounds completed. "
                f"This page refreshes every {data.REFRESH_S:.0f} s.", icon=":material/sync:")
        if total:
            st.progress(min(done / total, 1.0))
        refresh_watch(url, str(run["id"]), data.fingerprint(url, str(run["id"])))


@st.fragment(run_every=data.REFRESH_S)
def refresh_watch(url: str, run_id: str | None, seen: tuple[Any, ...]) -> None:
    """Rerun the whole page when the store changed since ``seen`` (polled every few seconds)."""
    try:
        now = data.fingerprint(url, run_id)
    except Exception:  # noqa: BLE001 - a transient read error must not break the page; retry next tick
        return
    if now != seen:
        data.clear_caches()
        st.rerun(scope="app")


@st.fragment(run_every=data.REFRESH_S)
def wait_for_file(path: str) -> None:
    """Rerun the app once ``path`` exists (the first run creates the database)."""
    if Path(path).exists():
        st.rerun(scope="app")


def any_running(runs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any run is pending or running (the Runs page then refreshes itself)."""
    return any(r.get("status") in ("pending", "running") for r in runs)


def metric(col: Any, label: str, value: Any, digits: int = 2, unit: str = "", help: str | None = None) -> None:
    """``st.metric`` with the dashboard's number formatting."""
    col.metric(label, fmt(value, digits, unit), help=help)


def table(frame: pd.DataFrame, columns: Mapping[str, Any], **kwargs: Any) -> None:
    """A read-only sortable table showing ``columns`` (name -> st.column_config entry) in that order."""
    st.dataframe(frame, column_config=dict(columns), column_order=list(columns), hide_index=True,
                 width="stretch", placeholder="–", **kwargs)


def num(title: str, digits: int = 2, help: str | None = None) -> Any:
    """A number column with fixed decimals."""
    return st.column_config.NumberColumn(title, format=f"%.{digits}f", help=help)
