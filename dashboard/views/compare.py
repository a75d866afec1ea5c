"""Compare page: pick runs, see the privacy–utility frontier and their utility side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, data, ui
from dashboard.frames import PRIVACY_AXES, UTILITY_LABELS, frontier_frame, runs_frame, utility_frame

DEFAULT_PICK = 8


def main() -> None:
    """Render the Compare page."""
    st.title("Compare runs")
    url = data.db_url()
    runs = data.load_runs(url)
    if not runs:
        ui.no_runs_message(url)
        return
    frame = runs_frame(runs)
    labels = dict(zip(frame["id"], frame["name"] + " · " + frame["method"] + " · " + frame["id"].str[:8],
                      strict=True))
    default = [rid for rid, status in zip(frame["id"], frame["status"], strict=True) if status == "completed"]
    picked = st.multiselect("Runs", list(labels), default=(default or list(labels))[:DEFAULT_PICK],
                            format_func=labels.__getitem__, placeholder="choose runs to compare")
    if not picked:
        st.info("Pick at least one run.")
        return
    sel = frame[frame["id"].isin(picked)]

    c1, c2 = st.columns(2)
    x = c1.radio("Privacy axis", list(PRIVACY_AXES), format_func=lambda k: {"max_epsilon": "max ε",
                 "worst_exposure": "worst canary exposure"}[k], horizontal=True)
    metrics = [m for m in UTILITY_LABELS if sel[f"final_{m}"].notna().any()] or ["perplexity"]
    metric = c2.radio("Utility", metrics, horizontal=True) if len(metrics) > 1 else metrics[0]

    points = frontier_frame(sel, str(x), str(metric))
    missing = sorted(set(sel["name"]) - set(points["name"]))
    if points.empty:
        st.info(f"None of the picked runs has both a {PRIVACY_AXES[str(x)].split(' (')[0].lower()} and a final "
                f"{metric}: runs without DP have no ε, runs without a canary audit have no exposure.")
    else:
        st.altair_chart(charts.frontier_chart(points, str(x), str(metric)), width="stretch")
        st.caption("Runs joined by the dashed line are on the Pareto frontier: no other picked run is both more "
                   "private and more useful.")
    if missing:
        st.caption("Not plotted (missing a value): " + ", ".join(missing))

    cc = st.column_config
    ui.table(sel, {
        "name": cc.TextColumn("Name"),
        "method": cc.TextColumn("Method"),
        "he": cc.CheckboxColumn("HE"),
        "clients": cc.NumberColumn("Clients", format="%d"),
        "rounds": cc.NumberColumn("Rounds", format="%d"),
        "status": cc.TextColumn("Status"),
        "final_perplexity": ui.num("Final perplexity", 2),
        "final_accuracy": ui.num("Final accuracy (%)", 1),
        "max_epsilon": ui.num("Max ε", 3),
        "worst_exposure": ui.num("Worst exposure (bits)", 2),
        "eps_lb_flag": cc.CheckboxColumn("ε_LB > ε"),
    })

    curves = per_round(url, [str(r) for r in sel["id"]], str(metric), labels)
    if not curves.empty:
        st.subheader(f"{metric.capitalize()} per round")
        st.altair_chart(charts.runs_utility_chart(curves, str(metric)), width="stretch")


def per_round(url: str, run_ids: list[str], metric: str, labels: dict[str, str]) -> pd.DataFrame:
    """Global utility per round of each picked run: ``run, round, value``."""
    parts = []
    for rid in run_ids:
        frame = utility_frame(data.load_run(url, rid), metric)
        glob = frame[frame["series"] == "global"]
        if not glob.empty:
            parts.append(glob.assign(run=labels[rid])[["run", "round", "value"]])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "round", "value"])


main()
