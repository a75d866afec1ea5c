"""fedveil dashboard: entry point of ``streamlit run dashboard/app.py``.

Reads the store named by ``$FEDVEIL_DB`` (else the CLI default ``sqlite:///runs/fedveil.db``)
and never writes training data. Pages live in ``dashboard/views``; started by
``fedveil dashboard [--db URL] [--port N]`` (see :mod:`fedveil.commands.dashboard_cmd`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
# `streamlit run` puts dashboard/ itself on sys.path; the package imports need the project root.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from dashboard import data, ui  # noqa: E402
from fedveil.store import StoreError  # noqa: E402


def main() -> None:
    """Open the store, register the pages and run the selected one."""
    st.set_page_config(page_title="fedveil dashboard", page_icon=":material/shield_lock:", layout="wide")
    url = data.db_url()
    pages = {
        "runs": st.Page(HERE / "views" / "runs.py", title="Runs", icon=":material/table_rows:", url_path="runs",
                        default=True),
        "run": st.Page(HERE / "views" / "run.py", title="Run", icon=":material/monitoring:", url_path="run"),
        "leakage": st.Page(HERE / "views" / "leakage.py", title="Leakage audit", icon=":material/policy:",
                           url_path="leakage"),
        "compare": st.Page(HERE / "views" / "compare.py", title="Compare", icon=":material/compare_arrows:",
                           url_path="compare"),
    }
    ui.PAGES.update(pages)
    page = st.navigation(list(pages.values()))
    with st.sidebar:
        st.caption(f"Store: `{data.shown_url(url)}`")
    missing = data.missing_sqlite_file(url)
    if missing is not None:
        st.title("fedveil dashboard")
        st.info(f"**No database at `{missing}` yet.** It is created by the first run: start one with "
                "`make demo` or `fedveil run`, or point the dashboard at another store with "
                "`fedveil dashboard --db URL`. This page checks again every few seconds.",
                icon=":material/hourglass_empty:")
        ui.wait_for_file(str(missing))
        st.stop()
    try:
        data.open_store(url)
    except StoreError as exc:
        st.title("fedveil dashboard")
        st.error(f"**Cannot open the store.** {exc}\n\n"
                 "Check the URL given to `fedveil dashboard --db` (or `$FEDVEIL_DB`): the file or server must "
                 "exist and be readable, with its driver installed.", icon=":material/database_off:")
        st.stop()
    try:
        page.run()
    except StoreError as exc:
        # A read failed after opening (database removed, locked for too long, server gone).
        st.error(f"**Reading the store failed.** {exc}", icon=":material/database_off:")


main()
