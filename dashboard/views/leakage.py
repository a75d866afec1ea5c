"""Leakage audit page: canary exposure, memorisation, membership inference and empirical ε (docs/METHODS.md §8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from dashboard import charts, data, ui
from dashboard.audit_frames import (
    bounds_frame,
    canary_share_text,
    distillation_reduction,
    exposure_frame,
    exposure_trend_frame,
    extrapolated_text,
    has_audit_data,
    memorisation_frame,
    mia_frame,
    roc_frame,
    score_histogram_frame,
)
from dashboard.frames import fmt

FLAG_EXPLAINED = (
    "An empirical lower bound ε_LB is what an actual attack *proved* about this run: at the audit's confidence, "
    "no mechanism with privacy loss below ε_LB could let the attack reach its true/false-positive rates. "
    "The accountant's ε is what the run *claims*. ε_LB ≤ ε is consistent with the claim (a lower bound can never "
    "prove the claim holds); **ε_LB > ε means the claim is wrong for this run**: a bug in the DP pipeline or a "
    "leak the guarantee does not cover, e.g. a teacher trained without DP on the same records leaking through "
    "its soft targets."
)


def exposure_section(detail: Mapping[str, Any]) -> None:
    """Exposure of each canary against its insertions, per audited model; the per-round trend if audited."""
    st.subheader("Canary exposure")
    exp = exposure_frame(detail)
    trend = exposure_trend_frame(detail)
    if exp.empty and trend.empty:
        st.caption("No exposure audit recorded for this run.")
        return
    st.caption("Rank exposure = log2(N_ref) − log2(rank) among never-inserted reference candidates (bits). "
               "About 0 bits: the model prefers the secret no more than a random candidate; the dashed line is the "
               "maximum (ranked first). Exposure growing with insertions is memorisation.")
    if not exp.empty:
        st.altair_chart(charts.exposure_chart(exp), width="stretch")
    if not trend.empty:
        st.markdown("**Exposure of the global student per round**")
        st.altair_chart(charts.exposure_trend_chart(trend), width="stretch")
    if exp.empty:
        return
    table = exp.assign(extrapolated_text=[extrapolated_text(v, b) for v, b in zip(exp["extrapolated"], exp["bound"],
                                                                                   strict=True)])
    with st.expander(f"Exposure of each canary ({len(exp)} measurements)"):
        ui.table(table, {
            "model": st.column_config.TextColumn("Model"),
            "client": st.column_config.TextColumn("Client"),
            "canary": st.column_config.TextColumn("Canary"),
            "secret": st.column_config.TextColumn("Secret (audit data)"),
            "repetitions": st.column_config.NumberColumn("Insertions", format="%d"),
            "exposure": ui.num("Exposure (bits)", 2),
            "extrapolated_text": st.column_config.TextColumn("Extrapolated (bits)",
                                                             help="skew-normal fit; '> x' = lower bound"),
            "log_perplexity_bits": ui.num("Log-perplexity (bits)", 2),
            "n_ref": st.column_config.NumberColumn("References", format="%d"),
        })


def memorisation_section(detail: Mapping[str, Any]) -> None:
    """Verbatim extraction rates: teacher vs distilled student vs a fine-tuned student."""
    st.subheader("Memorisation (verbatim extraction)")
    mem = memorisation_frame(detail)
    if mem.empty:
        st.caption("No memorisation audit recorded for this run.")
        return
    st.caption("Prompt with the first 50 tokens of an audited training record, greedy-decode 50: memorised when "
               "all 50 match. Fine-tuned = a same-size student fine-tuned with plain cross-entropy on the same "
               "records (the baseline distillation is compared with).")
    left, right = st.columns([4, 3])
    with left:
        st.altair_chart(charts.memorisation_chart(mem), width="stretch")
    with right:
        reduction = distillation_reduction(mem)
        if reduction is not None:
            st.metric("Distilled vs fine-tuned", f"{reduction:.0f}% less",
                      help="relative reduction of the extraction rate; published finding: > 50% less")
        inherited = mem["inherited"].dropna()
        if not inherited.empty:
            count = int(inherited.sum())
            st.metric("Inherited from the teacher", f"{count} record{'s' if count != 1 else ''}",
                      help="memorised by the teacher and by a student of the same client (sum over audits)")
        ui.table(mem, {
            "model": st.column_config.TextColumn("Model"),
            "client": st.column_config.TextColumn("Client"),
            "rate_pct": ui.num("Rate (%)", 2),
            "memorised": st.column_config.NumberColumn("Memorised", format="%d"),
            "n_audited": st.column_config.NumberColumn("Audited", format="%d"),
            "approx_pct": ui.num("Edit dist. ≤ 0.1 (%, ours)", 2),
            "note": st.column_config.TextColumn("Note"),
        })


def mia_section(detail: Mapping[str, Any]) -> None:
    """ROC summary, log-log ROC curves and score histograms of membership inference."""
    st.subheader("Membership inference")
    mia = mia_frame(detail)
    if mia.empty:
        st.caption("No membership-inference audit recorded for this run.")
        return
    st.caption("Members and non-members are one secret random split of each client's records (the node's coin "
               "holds `audit.mia_holdout` out of training); higher score = guessed member. AUC 0.5 is chance; what "
               "matters for privacy is the TPR at a low FPR, empty where a client has too few non-members.")
    ui.table(mia, {
        "model": st.column_config.TextColumn("Model"),
        "client": st.column_config.TextColumn("Client"),
        "attack": st.column_config.TextColumn("Attack"),
        "auc": ui.num("ROC AUC", 3, help="0.5 = chance"),
        "tpr_1pct": ui.num("TPR @ FPR 1% (%)", 2, help="empty = n/a: fewer than 100 non-members"),
        "tpr_01pct": ui.num("TPR @ FPR 0.1% (%)", 2, help="empty = n/a: fewer than 1000 non-members"),
    }, height=min(35 * (len(mia) + 1) + 3, 250))
    c1, c2 = st.columns(2)
    attacks = list(dict.fromkeys(mia["attack"]))
    attack = c1.selectbox("Attack", attacks) if len(attacks) > 1 else attacks[0]
    clients = list(dict.fromkeys(mia["client"]))
    client = c2.selectbox("Client", clients) if len(clients) > 1 else clients[0]
    roc = roc_frame(detail)
    roc = roc[(roc["attack"] == attack) & (roc["client"] == client)]
    hist = score_histogram_frame(detail)
    hist = hist[(hist["attack"] == attack) & (hist["client"] == client)]
    left, right = st.columns(2)
    with left:
        if roc.empty:
            st.caption("No ROC points stored for this attack.")
        else:
            st.altair_chart(charts.roc_chart(roc), width="stretch")
            st.caption("Log-log ROC: the low-FPR region is where confident membership claims live; the dashed "
                       "diagonal is a random guess.")
    with right:
        if hist.empty:
            st.caption("No score distributions stored for this attack.")
        else:
            models = list(dict.fromkeys(hist["model"]))
            model = st.selectbox("Score distribution of", models) if len(models) > 1 else models[0]
            st.altair_chart(charts.histogram_chart(hist[hist["model"] == model], f"{model} · {attack} · {client}"),
                            width="stretch")


def epsilon_section(detail: Mapping[str, Any]) -> None:
    """Empirical ε lower bounds next to the accountant's ε, with the flag explained."""
    st.subheader("Empirical ε lower bound vs accountant ε")
    bounds = bounds_frame(detail)
    if bounds.empty:
        st.caption("No empirical ε lower bound recorded for this run.")
        return
    flagged = bounds[bounds["flagged"] & ~bounds["control"]]
    weak = bounds[(bounds["note"] != "") & ~bounds["control"]]
    control = bounds[bounds["control"]]
    if not control.empty:
        bit = control[control["flagged"]]
        if bit.empty:
            st.warning("The non-DP control did **not** exceed the claimed ε: this audit failed to show it can "
                       "catch a non-private model.", icon=":material/warning:")
        else:
            st.info(f"Control (same configuration, DP off, same canary plan): ε_LB = "
                    f"{fmt(bit['epsilon_lb'].max(), 3)} > claimed ε, flagged as it must be: the audit bites.",
                    icon=":material/science:")
    if not flagged.empty:
        worst = flagged.iloc[int(flagged["epsilon_lb"].fillna(0).to_numpy().argmax())]
        st.error(f"**ε_LB exceeds the claimed ε** ({fmt(worst['epsilon_lb'], 3)} > "
                 f"{fmt(worst['accountant_epsilon'], 3)}, {worst['method']}). The run is flagged "
                 "`eps_lb_exceeds_claim`.", icon=":material/gpp_bad:")
    elif bounds["accountant_epsilon"].isna().all():
        st.info("This run claims no DP guarantee, so ε_LB is reported on its own and nothing can be flagged.")
    elif not weak.empty:
        # A green banner would be a pass from an audit that could not fail.
        best = weak.iloc[int(weak["power"].fillna(0).to_numpy().argmax())]
        st.warning(f"**{best['note']}** (claimed ε = {fmt(best['accountant_epsilon'], 3)}, {best['method']}): "
                   "ε_LB ≤ ε here is no evidence either way.", icon=":material/help:")
    else:
        st.success("Every ε_LB is at or below the accountant's ε, and the audit had the power to exceed it: "
                   "no evidence against the claim.", icon=":material/verified_user:")
    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(charts.bounds_chart(bounds), width="stretch")
    with right:
        ui.table(bounds, {
            "method": st.column_config.TextColumn("Method"),
            "client": st.column_config.NumberColumn("Client", format="%d"),
            "epsilon_lb": ui.num("ε_LB", 3),
            "accountant_epsilon": ui.num("Accountant ε", 3),
            "power": ui.num("Power (perfect attack)", 3,
                            help="largest ε_LB this audit (same m, r, α, δ) could certify"),
            "flagged": st.column_config.CheckboxColumn("ε_LB > ε"),
            "control": st.column_config.CheckboxColumn("Non-DP control"),
            "note": st.column_config.TextColumn("Note"),
        })
    shares = canary_share_text(detail)
    if shares:
        st.caption(f"Canary copies in each client's training set (capped by `audit.max_canary_share`): {shares}. "
                   "The canaries are inline: the released model is the audited one.")
    with st.expander("What the flag means", expanded=not flagged.empty):
        st.markdown(FLAG_EXPLAINED)


def main() -> None:
    """Render the Leakage audit page."""
    st.title("Leakage audit")
    url = data.db_url()
    runs = data.load_runs(url)
    if not runs:
        ui.no_runs_message(url)
        return
    chosen = ui.pick_run(runs)
    detail = data.load_run(url, str(chosen["id"]))
    ui.status_banner(detail["run"], url)
    ui.page_links(str(chosen["id"]), exclude="leakage")
    if not has_audit_data(detail):
        st.info("No audits recorded for this run. Audits run after training when `audit.enabled = true` "
                "(canary exposure, memorisation, membership inference, empirical ε).", icon=":material/info:")
        return
    epsilon_section(detail)
    exposure_section(detail)
    memorisation_section(detail)
    mia_section(detail)


main()
