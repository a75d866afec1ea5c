"""Runs page: every run in the store as a sortable, filterable table with links to its pages."""

from __future__ import annotations

import streamlit as st

from dashboard import data, ui
from dashboard.frames import runs_frame


def main() -> None:
    """Render the Runs page."""
    st.title("Runs")
    url = data.db_url()
    runs = data.load_runs(url)
    if not runs:
        ui.no_runs_message(url)
        return
    frame = runs_frame(runs)

    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Runs", len(frame))
    c2.metric("Completed", int((frame["status"] == "completed").sum()))
    c3.metric("In progress", int(frame["status"].isin(["pending", "running"]).sum()))
    c4.metric("Failed", int((frame["status"] == "failed").sum()))
    c5.metric("ε_LB > ε flags", int(frame["eps_lb_flag"].sum()),
              help="Runs where an empirical ε lower bound exceeded the accountant's ε (see Leakage audit).")

    f1, f2, f3 = st.columns([2, 2, 3])
    statuses = sorted(frame["status"].unique())
    methods = sorted(frame["method"].unique())
    chosen_status = f1.multiselect("Status", statuses, default=statuses, placeholder="any status")
    chosen_method = f2.multiselect("Method", methods, default=methods, placeholder="any method")
    text = f3.text_input("Name contains", placeholder="filter by run name")
    shown = frame[frame["status"].isin(chosen_status or statuses) & frame["method"].isin(chosen_method or methods)]
    if text:
        shown = shown[shown["name"].str.contains(text, case=False, regex=False)]
    shown = shown.assign(link=[f"run?run={rid}" for rid in shown["id"]],
                         progress=[f"{d}/{n}" for d, n in zip(shown["rounds_done"], shown["rounds"], strict=True)])

    cc = st.column_config
    ui.table(shown, {
        "link": cc.LinkColumn("Run", display_text=r"run\?run=(.{0,8}).*", help="open the run's page", width=70),
        "name": cc.TextColumn("Name"),
        "method": cc.TextColumn("Method", width=85),
        "he": cc.CheckboxColumn("HE", help="updates aggregated under CKKS homomorphic encryption", width=40),
        "clients": cc.NumberColumn("Clients", format="%d", width=60),
        "progress": cc.TextColumn("Rounds", help="completed / planned rounds", width=65),
        "status": cc.TextColumn("Status", width=85),
        "final_perplexity": ui.num("Perplexity", 2, help="final global held-out perplexity (lower is better)"),
        "final_accuracy": ui.num("Accuracy (%)", 1, help="final global test accuracy"),
        "max_epsilon": ui.num("Max ε", 3, help="largest cumulative ε of any client in the privacy ledger"),
        "worst_exposure": ui.num("Exposure (bits)", 2,
                                 help="worst canary exposure of the released models (students, global)"),
        "eps_lb_flag": cc.CheckboxColumn("ε_LB > ε", help="an empirical ε lower bound exceeded the claimed ε",
                                         width=65),
        "created": cc.DatetimeColumn("Created (UTC)", format="YYYY-MM-DD HH:mm"),
    })
    st.caption(f"{len(shown)} of {len(frame)} runs shown. Click a column header to sort; ε is cumulative over "
               "the run at the ledger's δ.")

    if shown.empty:
        st.info("No run matches the filters.")
    else:
        st.subheader("Open a run")
        labels = dict(zip(shown["id"], shown["name"] + " · " + shown["method"] + " · " + shown["status"] + " · "
                          + shown["id"].str[:8], strict=True))
        rid = st.selectbox("Run to open", list(labels), format_func=labels.__getitem__)
        if rid is not None:
            ui.page_links(str(rid))
    if ui.any_running(runs):
        st.caption(f"A run is in progress: this page refreshes every {data.REFRESH_S:.0f} s.")
        ui.refresh_watch(url, None, data.fingerprint(url))


main()
