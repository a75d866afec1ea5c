"""Altair charts of the dashboard; every axis is titled with its unit.

Each builder takes a frame from :mod:`dashboard.frames` / :mod:`dashboard.audit_frames` and
returns a chart with ``width="container"`` semantics left to ``st.altair_chart``.
"""

from __future__ import annotations

import math
from typing import TypeAlias

import altair as alt
import pandas as pd

from dashboard.frames import GLOBAL, PRIVACY_AXES, UTILITY_LABELS

AnyChart: TypeAlias = alt.Chart | alt.LayerChart | alt.FacetChart
HEIGHT = 300
# Streamlit's default palette gives neighbouring series near-identical blues; tableau10 keeps them apart.
PALETTE = alt.Scale(scheme="tableau10")
ROUND_AXIS = alt.Axis(title="Round", format="d", tickMinStep=1)


def _round_x() -> alt.X:
    return alt.X("round:Q", axis=ROUND_AXIS, scale=alt.Scale(nice=False))


def series_chart(frame: pd.DataFrame, title: str, fmt: str = ".3f") -> AnyChart:
    """A per-round value: the global series (thick, always first colour) over each client's (thin, dashed)."""
    base = alt.Chart(frame).encode(
        x=_round_x(),
        y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", title="Series", sort=[GLOBAL], scale=PALETTE),
        tooltip=[alt.Tooltip("series:N", title="Series"), alt.Tooltip("round:Q", title="Round"),
                 alt.Tooltip("value:Q", title=title, format=fmt)],
    )
    clients = base.transform_filter(alt.datum.series != GLOBAL).mark_line(
        point=True, strokeDash=[4, 3], strokeWidth=1.2, opacity=0.75)
    glob = base.transform_filter(alt.datum.series == GLOBAL).mark_line(point=alt.OverlayMarkDef(size=60),
                                                                       strokeWidth=3)
    return alt.layer(clients, glob).properties(height=HEIGHT)


def utility_chart(frame: pd.DataFrame, metric: str, references: pd.DataFrame | None = None) -> AnyChart:
    """Utility per round, global and per client (see :func:`series_chart`), with labelled reference rules.

    Perplexity is drawn on a log axis: the uniform guess (the vocabulary size) and a good student differ
    by orders of magnitude, and equal ratios (halving the public-only student's perplexity) look equal.
    """
    fmt = ".1f" if metric == "accuracy" else ".2f"
    chart = series_chart(frame, UTILITY_LABELS[metric], fmt)
    if references is None or references.empty:
        return chart
    if metric == "perplexity":
        chart = alt.layer(*[layer.encode(y=alt.Y("value:Q", title=UTILITY_LABELS[metric],
                                                  scale=alt.Scale(type="log"))) for layer in chart.layer])
    rule = alt.Chart(references).mark_rule(color="#7f7f7f", strokeDash=[2, 3], strokeWidth=1.5).encode(
        y="value:Q", tooltip=[alt.Tooltip("label:N", title="Reference"), alt.Tooltip("value:Q", format=fmt)])
    text = alt.Chart(references).mark_text(align="left", dx=4, dy=-7, color="#555").encode(
        y="value:Q", x=alt.value(0), text="label:N")
    return alt.layer(chart, rule, text).properties(height=HEIGHT)


def epsilon_chart(ledger: pd.DataFrame, budget: float | None, delta: float | None) -> AnyChart:
    """Cumulative ε per client by round, with the run's budget ε as a red rule."""
    ytitle = "Cumulative ε" + (f" (δ = {delta:.0e})" if delta else "")
    lines = alt.Chart(ledger).mark_line(point=True).encode(
        x=_round_x(),
        y=alt.Y("epsilon:Q", title=ytitle),
        color=alt.Color("client:N", title="Client", scale=PALETTE),
        tooltip=[alt.Tooltip("client:N", title="Client"), alt.Tooltip("round:Q", title="Round"),
                 alt.Tooltip("epsilon:Q", title="ε", format=".3f"),
                 alt.Tooltip("noise_multiplier:Q", title="σ", format=".4f"),
                 alt.Tooltip("steps:Q", title="DP-SGD steps")],
    )
    layers: list[alt.Chart] = [lines]
    if budget is not None:
        rule_data = pd.DataFrame({"budget": [budget], "label": [f"budget ε = {budget:g}"]})
        rule = alt.Chart(rule_data).mark_rule(color="#d62728", strokeDash=[6, 4], strokeWidth=2).encode(
            y="budget:Q", tooltip=alt.Tooltip("label:N", title="Budget"))
        text = alt.Chart(rule_data).mark_text(align="left", dx=4, dy=-7, color="#d62728").encode(
            y="budget:Q", x=alt.value(0), text="label:N")
        layers += [rule, text]
    return alt.layer(*layers).properties(height=HEIGHT)


def he_bytes_chart(he: pd.DataFrame) -> AnyChart:
    """Ciphertext volume per round: client uploads and the server's aggregate, stacked (MiB)."""
    long = he.melt(id_vars=["round"], value_vars=["client_mb", "server_mb"], var_name="direction", value_name="mb")
    long["direction"] = long["direction"].map({"client_mb": "clients → server", "server_mb": "server → clients"})
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("round:O", title="Round", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("mb:Q", title="Ciphertext sent (MiB)", stack="zero"),
        color=alt.Color("direction:N", title="Direction", scale=PALETTE),
        tooltip=[alt.Tooltip("round:O", title="Round"), alt.Tooltip("direction:N", title="Direction"),
                 alt.Tooltip("mb:Q", title="MiB", format=".2f")],
    ).properties(height=HEIGHT)


def he_time_chart(he: pd.DataFrame) -> AnyChart:
    """Time spent in each CKKS stage per round (seconds, summed over clients), stacked."""
    names = {"encrypt_s": "encrypt (clients)", "aggregate_s": "aggregate (server)", "decrypt_s": "decrypt"}
    long = he.melt(id_vars=["round"], value_vars=list(names), var_name="stage", value_name="seconds")
    long["stage"] = long["stage"].map(names)
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("round:O", title="Round", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("seconds:Q", title="HE time (s)", stack="zero"),
        color=alt.Color("stage:N", title="Stage", sort=list(names.values()), scale=PALETTE),
        tooltip=[alt.Tooltip("round:O", title="Round"), alt.Tooltip("stage:N", title="Stage"),
                 alt.Tooltip("seconds:Q", title="Seconds", format=".3f")],
    ).properties(height=HEIGHT)


def exposure_chart(exposures: pd.DataFrame) -> AnyChart:
    """Rank exposure of every canary against its insertions, one colour per audited model.

    The dashed grey rule is the ceiling log2(N_ref): a canary ranked above every reference.
    """
    points = alt.Chart(exposures).mark_circle(size=90, opacity=0.85).encode(
        x=alt.X("repetitions:O", title="Insertions of the canary in training data (0 = never-inserted control)",
                axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("model:N"),
        y=alt.Y("exposure:Q", title="Exposure (bits)"),
        color=alt.Color("model:N", title="Model", scale=PALETTE),
        tooltip=[alt.Tooltip("model:N", title="Model"), alt.Tooltip("client:N", title="Client"),
                 alt.Tooltip("canary:N", title="Canary"), alt.Tooltip("repetitions:O", title="Insertions"),
                 alt.Tooltip("exposure:Q", title="Exposure (bits)", format=".2f"),
                 alt.Tooltip("extrapolated:Q", title="Extrapolated (bits)", format=".2f"),
                 alt.Tooltip("n_ref:Q", title="References")],
    )
    ceiling = exposures["max_exposure"].dropna()
    if ceiling.empty:
        return alt.layer(points).properties(height=HEIGHT)
    top = float(ceiling.max())
    rule_data = pd.DataFrame({"max": [top], "label": [f"max = log2(N_ref) = {top:.2f} bits"]})
    rule = alt.Chart(rule_data).mark_rule(color="grey", strokeDash=[5, 4]).encode(
        y="max:Q", tooltip=alt.Tooltip("label:N", title="Ceiling"))
    return alt.layer(points, rule).properties(height=HEIGHT)


def exposure_trend_chart(trend: pd.DataFrame) -> AnyChart:
    """Mean rank exposure of the global model's canaries per round, one line per insertion count."""
    return alt.Chart(trend).mark_line(point=True).encode(
        x=_round_x(),
        y=alt.Y("exposure:Q", title="Mean exposure (bits)"),
        color=alt.Color("repetitions:O", title="Insertions", scale=alt.Scale(scheme="viridis")),
        strokeDash=alt.StrokeDash("model:N", title="Model"),
        tooltip=[alt.Tooltip("model:N", title="Model"), alt.Tooltip("round:Q", title="Round"),
                 alt.Tooltip("repetitions:O", title="Insertions"),
                 alt.Tooltip("exposure:Q", title="Mean exposure (bits)", format=".2f")],
    ).properties(height=HEIGHT - 60)


def memorisation_chart(mem: pd.DataFrame) -> AnyChart:
    """Extraction rate (%) per audited model as labelled bars, one bar per client side by side."""
    data = mem.dropna(subset=["rate_pct"])
    several = data["client"].nunique() > 1
    base = alt.Chart(data).encode(
        x=alt.X("model:N", title="Model", sort=None,
                axis=alt.Axis(labelAngle=0, labelLimit=160, labelOverlap=False)),
        xOffset=alt.XOffset("client:N"),
        y=alt.Y("rate_pct:Q", title="Records extracted verbatim (%)", scale=alt.Scale(domainMin=0)),
        tooltip=[alt.Tooltip("model:N", title="Model"), alt.Tooltip("client:N", title="Client"),
                 alt.Tooltip("rate_pct:Q", title="Rate (%)", format=".2f"),
                 alt.Tooltip("memorised:Q", title="Memorised"), alt.Tooltip("n_audited:Q", title="Audited")],
    )
    bars = base.mark_bar().encode(color=alt.Color("client:N", title="Client", scale=PALETTE)) if several \
        else base.mark_bar(color="#4c78a8")
    text = base.mark_text(dy=-7).encode(text=alt.Text("rate_pct:Q", format=".1f"))
    return alt.layer(bars, text).properties(height=HEIGHT)


def roc_chart(roc: pd.DataFrame) -> AnyChart:
    """Log-log ROC curves with the chance diagonal (TPR = FPR)."""
    lo = max(min(float(roc["fpr"].min()), float(roc["tpr"].min())), 1e-6)
    lo = 10 ** math.floor(math.log10(lo))
    diag = pd.DataFrame({"fpr": [lo, 1.0], "tpr": [lo, 1.0]})
    scale = alt.Scale(type="log", domain=[lo, 1.0])
    curves = alt.Chart(roc).mark_line(interpolate="step-after", strokeWidth=2).encode(
        x=alt.X("fpr:Q", title="False positive rate (log scale)", scale=scale),
        y=alt.Y("tpr:Q", title="True positive rate (log scale)", scale=scale),
        color=alt.Color("model:N", title="Model", scale=PALETTE,
                        legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=320)),
        tooltip=[alt.Tooltip("model:N", title="Model"), alt.Tooltip("attack:N", title="Attack"),
                 alt.Tooltip("fpr:Q", title="FPR", format=".2e"),
                 alt.Tooltip("tpr:Q", title="TPR", format=".3f")],
    )
    chance = alt.Chart(diag).mark_line(color="grey", strokeDash=[5, 4]).encode(x="fpr:Q", y="tpr:Q")
    return alt.layer(chance, curves).properties(height=HEIGHT + 60)


def histogram_chart(hist: pd.DataFrame, title: str) -> AnyChart:
    """Members' vs non-members' attack scores (one model and attack) as overlaid histograms (% of each group)."""
    return alt.Chart(hist).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("start:Q", title="Attack score (higher = guessed member)", bin="binned"),
        x2="end:Q",
        y=alt.Y("share:Q", title="Share of group (%)", stack=None),
        color=alt.Color("group:N", title="Records", scale=alt.Scale(domain=["members", "non-members"],
                                                                    range=["#d62728", "#1f77b4"])),
        tooltip=[alt.Tooltip("group:N", title="Group"), alt.Tooltip("start:Q", title="From", format=".3f"),
                 alt.Tooltip("end:Q", title="To", format=".3f"), alt.Tooltip("share:Q", title="%", format=".1f")],
    ).properties(height=HEIGHT - 60, title=title)


def bounds_chart(bounds: pd.DataFrame) -> AnyChart:
    """Empirical ε lower bound next to the accountant's ε for each audit."""
    values = [c for c in ("epsilon_lb", "accountant_epsilon", "power") if c in bounds.columns]
    long = bounds.melt(id_vars=["bound", "flagged"], value_vars=values,
                       var_name="which", value_name="epsilon").dropna(subset=["epsilon"])
    long["which"] = long["which"].map({"epsilon_lb": "empirical ε lower bound", "accountant_epsilon": "accountant ε",
                                       "power": "audit power (perfect attack)"})
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("bound:N", title=None, axis=alt.Axis(labelLimit=260)),
        yOffset=alt.YOffset("which:N"),
        x=alt.X("epsilon:Q", title="ε (privacy loss)"),
        color=alt.Color("which:N", title=None, scale=alt.Scale(
            domain=["accountant ε", "empirical ε lower bound", "audit power (perfect attack)"],
            range=["#4c78a8", "#f58518", "#bab0ac"])),
        tooltip=[alt.Tooltip("bound:N", title="Audit"), alt.Tooltip("which:N", title="Value"),
                 alt.Tooltip("epsilon:Q", title="ε", format=".3f"), alt.Tooltip("flagged:N", title="Flagged")],
    ).properties(height=max(140, 56 * bounds.shape[0]))


def frontier_chart(points: pd.DataFrame, x: str, metric: str) -> AnyChart:
    """Privacy–utility scatter of runs, the Pareto frontier joined by a line."""
    xtitle = PRIVACY_AXES[x]
    ytitle = UTILITY_LABELS[metric]
    base = alt.Chart(points).encode(
        x=alt.X("x:Q", title=xtitle, scale=alt.Scale(zero=False, padding=20), axis=alt.Axis(format=",.3~f")),
        y=alt.Y("y:Q", title=ytitle, scale=alt.Scale(zero=False, padding=20), axis=alt.Axis(format=",.3~f")),
    )
    dots = base.mark_circle(size=140).encode(
        color=alt.Color("method:N", title="Method", scale=PALETTE),
        tooltip=[alt.Tooltip("name:N", title="Run"), alt.Tooltip("method:N", title="Method"),
                 alt.Tooltip("x:Q", title=xtitle, format=".3f"), alt.Tooltip("y:Q", title=ytitle, format=".3f"),
                 alt.Tooltip("frontier:N", title="On frontier")],
    )
    labels = base.mark_text(align="left", dx=9, dy=-6, fontSize=11).encode(text="name:N")
    line = base.transform_filter(alt.datum.frontier).mark_line(color="grey", strokeDash=[4, 3],
                                                               interpolate="step-after")
    return alt.layer(line, dots, labels).properties(height=HEIGHT + 80)


def runs_utility_chart(frame: pd.DataFrame, metric: str) -> AnyChart:
    """Global utility per round, one line per selected run."""
    label = UTILITY_LABELS[metric]
    return alt.Chart(frame).mark_line(point=True).encode(
        x=_round_x(),
        y=alt.Y("value:Q", title=label, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title="Run", scale=PALETTE, legend=alt.Legend(labelLimit=320)),
        tooltip=[alt.Tooltip("run:N", title="Run"), alt.Tooltip("round:Q", title="Round"),
                 alt.Tooltip("value:Q", title=label, format=".3f")],
    ).properties(height=HEIGHT)
