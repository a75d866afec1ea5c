"""Run page: configuration and privacy statement, utility, privacy budget, HE costs, client events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from dashboard import charts, data, ui
from dashboard.frames import (
    clients_frame,
    config_frame,
    events_frame,
    final_utility,
    fmt,
    he_frame,
    ledger_frame,
    metric_frame,
    rounds_frame,
    target_epsilon,
    reference_frame,
    utility_frame,
    utility_metric,
)


def header(detail: Mapping[str, Any], url: str) -> None:
    """Title, identity line, state of the run, headline numbers and the privacy statement."""
    run = detail["run"]
    st.title(f"Run: {run['name']}")
    he = "on" if run.get("he_enabled") else "off"
    st.caption(f"id `{run['id']}` · method **{run['method']}** · task {run['task']} · HE {he} · "
               f"{run['num_clients']} clients · {run['num_rounds']} rounds · seed {run['seed']} · "
               f"created {str(run.get('created_at', ''))[:19].replace('T', ' ')} UTC")
    ui.status_banner(run, url)
    if ((run.get("config") or {}).get("privacy") or {}).get("reproducible_noise"):  # docs/METHODS.md §2
        st.error("Seeded DP noise (privacy.reproducible_noise): not private against the server.")
    metric = utility_metric(detail)
    budget = target_epsilon(run.get("config") or {})
    ledger = ledger_frame(detail)
    cols = st.columns(5)
    # While a run is going (or after it failed) the last value is not a final one.
    when = "Final" if run.get("status") == "completed" else "Latest"
    if metric == "accuracy":
        ui.metric(cols[0], f"{when} accuracy", final_utility(detail, metric), 1, "%")
    else:
        ui.metric(cols[0], f"{when} perplexity", final_utility(detail, "perplexity") if metric else None, 2)
    max_eps = ledger["epsilon"].max() if not ledger.empty else None
    ui.metric(cols[1], "Max ε spent", max_eps, 3,
              help=f"budget ε = {budget:g}" if budget is not None else "this run claims no DP guarantee")
    ui.metric(cols[2], "ε budget", budget, 2)
    cols[3].metric("Rounds completed", f"{run.get('last_complete_round', 0)} / {run['num_rounds']}")
    ui.metric(cols[4], "Wall time", run.get("wall_seconds"), 1, "s")

    with st.container(border=True):
        st.markdown("**Privacy statement**")
        statement = str(run.get("privacy_statement") or "").strip()
        if statement:
            st.markdown("\n".join(f"- {ui.md_escape(line)}" for line in statement.splitlines() if line.strip()))
        else:
            st.caption("No privacy statement recorded yet (it is written when the run finishes).")


def utility_tab(detail: Mapping[str, Any]) -> None:
    """Global and per-client utility, and training loss, per round."""
    metric = utility_metric(detail)
    if metric is None:
        st.info("No utility metric recorded yet (perplexity or accuracy appear after the first evaluated round).")
    else:
        st.altair_chart(charts.utility_chart(utility_frame(detail, metric), metric, reference_frame(detail, metric)),
                        width="stretch")
        if metric == "perplexity" and any(m["round"] == 0 for m in detail.get("metrics", [])
                                          if m["name"] == "perplexity" and m.get("client") is None):
            st.caption("Round 0 is the public-only student every client started from (public warm start, no ε).")
    loss = metric_frame(detail, ["train-loss"])
    if not loss.empty:
        st.altair_chart(charts.series_chart(loss, "Training loss (nats/token)"), width="stretch")


def privacy_tab(detail: Mapping[str, Any]) -> None:
    """Cumulative ε per client against the budget, and the ledger itself."""
    run = detail["run"]
    ledger = ledger_frame(detail)
    budget = target_epsilon(run.get("config") or {})
    if ledger.empty:
        if budget is None:
            st.info("Differential privacy is off for this run: there is no privacy ledger and no ε guarantee.")
        else:
            st.info("No privacy-ledger entry recorded yet.")
        return
    delta = ledger["delta"].dropna()
    st.altair_chart(charts.epsilon_chart(ledger, budget, float(delta.iloc[0]) if not delta.empty else None),
                    width="stretch")
    if budget is not None and (ledger["epsilon"] > budget + 1e-9).any():
        st.warning(f"A client's ε exceeds the budget ε = {budget:g}.")
    ui.table(ledger, {
        "round": st.column_config.NumberColumn("Round", format="%d"),
        "client": st.column_config.TextColumn("Client"),
        "epsilon": ui.num("ε (cumulative)", 3),
        "delta": st.column_config.NumberColumn("δ", format="%.0e"),
        "noise_multiplier": ui.num("σ (noise multiplier)", 4),
        "sample_rate": ui.num("q (sample rate)", 4),
        "steps": st.column_config.NumberColumn("Steps (cumulative)", format="%d"),
        "max_grad_norm": ui.num("C (clip norm)", 2),
        "accountant": st.column_config.TextColumn("Accountant"),
        "grad_sample_mode": st.column_config.TextColumn("Clipping mode"),
    }, height=min(35 * (len(ledger) + 1) + 3, 300))


def he_tab(detail: Mapping[str, Any]) -> None:
    """Ciphertext volume and CKKS stage timings per round."""
    he = he_frame(detail)
    if he.empty:
        if detail["run"].get("he_enabled"):
            st.info("HE is on for this run but no HE record has been stored yet.")
        else:
            st.info("Homomorphic encryption is off for this run: updates are aggregated in plaintext.")
        return
    left, right = st.columns(2)
    with left:
        st.altair_chart(charts.he_bytes_chart(he), width="stretch")
    with right:
        st.altair_chart(charts.he_time_chart(he), width="stretch")
    ui.table(he, {
        "round": st.column_config.NumberColumn("Round", format="%d"),
        "profile": st.column_config.TextColumn("CKKS profile"),
        "client_mb": ui.num("Uploaded (MiB)", 2),
        "server_mb": ui.num("Aggregate (MiB)", 2),
        "encrypt_s": ui.num("Encrypt (s)", 3),
        "aggregate_s": ui.num("Aggregate (s)", 3),
        "decrypt_s": ui.num("Decrypt (s)", 3),
        "max_abs_error": st.column_config.NumberColumn("Max |HE − plain|", format="%.2e"),
    })


def clients_tab(detail: Mapping[str, Any]) -> None:
    """Clients, participation per round, and drop-outs / rejected payloads."""
    events = events_frame(detail)
    st.markdown("**Drop-outs, rejected payloads and refusals**")
    if events.empty:
        st.caption("No client was dropped, failed, rejected or refused a round.")
    else:
        counts = events["kind"].value_counts()
        st.caption(" · ".join(f"{kind}: {n}" for kind, n in counts.items()))
        ui.table(events, {
            "round": st.column_config.NumberColumn("Round", format="%d"),
            "client": st.column_config.NumberColumn("Client", format="%d"),
            "node": st.column_config.TextColumn("Node"),
            "kind": st.column_config.TextColumn("Event"),
            "reason": st.column_config.TextColumn("Reason", width="large"),
        })
    left, right = st.columns([4, 3])
    with left:
        st.markdown("**Rounds**")
        rounds = rounds_frame(detail)
        if rounds.empty:
            st.caption("No round recorded yet.")
        else:
            ui.table(rounds, {
                "round": st.column_config.NumberColumn("Round", format="%d"),
                "status": st.column_config.TextColumn("Status"),
                "sampled": st.column_config.NumberColumn("Sampled", format="%d"),
                "replied": st.column_config.NumberColumn("Replied", format="%d"),
                "failed": st.column_config.NumberColumn("Failed", format="%d"),
                "rejected": st.column_config.NumberColumn("Rejected", format="%d"),
                "seconds": ui.num("Duration (s)", 1),
            })
    with right:
        st.markdown("**Clients**")
        clients = clients_frame(detail)
        if clients.empty:
            st.caption("No client registered yet.")
        else:
            ui.table(clients, {
                "client": st.column_config.NumberColumn("Client", format="%d"),
                "node": st.column_config.TextColumn("Node"),
                "examples": st.column_config.NumberColumn("Records", format="%d"),
                "teacher": st.column_config.TextColumn("Teacher provenance"),
                "teacher_epsilon": ui.num("Teacher ε", 2),
            })


def config_tab(detail: Mapping[str, Any]) -> None:
    """The run configuration, flattened, and where its files are."""
    run = detail["run"]
    config = run.get("config") or {}
    if not config:
        st.caption("No configuration stored.")
    else:
        ui.table(config_frame(config), {"key": st.column_config.TextColumn("Setting"),
                                        "value": st.column_config.TextColumn("Value", width="large")},
                 height=420)
    extras = []
    if run.get("run_dir"):
        extras.append(f"Run directory: `{run['run_dir']}`")
    if run.get("peak_rss_mb") is not None:
        extras.append(f"peak memory {fmt(run['peak_rss_mb'], 0, 'MB')}")
    if extras:
        st.caption(" · ".join(extras))


def main() -> None:
    """Render the Run page."""
    url = data.db_url()
    runs = data.load_runs(url)
    if not runs:
        st.title("Run")
        ui.no_runs_message(url)
        return
    chosen = ui.pick_run(runs)
    detail = data.load_run(url, str(chosen["id"]))
    header(detail, url)
    ui.page_links(str(chosen["id"]), exclude="run")
    tabs = st.tabs(["Utility", "Privacy budget (ε)", "HE costs", "Clients & events", "Configuration"])
    for tab, render in zip(tabs, (utility_tab, privacy_tab, he_tab, clients_tab, config_tab), strict=True):
        with tab:
            render(detail)


main()
