"""Pure builders for the Leakage audit page: audits of ``Store.get_run`` as pandas tables.

Audit summaries are free-form JSON written by the auditor (``server/audits.py``); these readers
accept its keys (docs/METHODS.md §8) and a few synonyms, and skip what is missing instead of failing:

* ``memorisation``: ``rate`` (fraction), ``n_audited``, ``n_memorised`` / ``memorised`` (count or
  list of bools), optional ``approx_rate_ned_0.1_ours`` / ``approximate_rate`` and
  ``inherited_from_teacher`` / ``inherited``.
* ``mia``: per attack (the summary maps attack name -> values, or nests that under ``attacks``,
  or is one attack's values itself) ``auc``, ``tpr_at_1pct``, ``tpr_at_01pct``, ``roc_points``
  (``[[fpr, tpr], ...]``, also ``roc``) and ``histogram = {"edges", "members", "nonmembers"}``
  (counts per bin) or raw ``member_scores`` / ``nonmember_scores``.
* ``exposure``: the per-canary rows; audits with a ``server_round`` are per-round audits of the
  global model, shown as a trend, while the main chart uses each model's final audit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dashboard.frames import number
from privacy.audit.epsilon import power_note

MODEL_ORDER = ["teacher", "student", "global", "finetuned", "reference"]
# Models a run releases (each client's student, the global student): every headline number of a
# run is over these; the teacher and the fine-tuned baseline are reference rows, labelled as such.
RELEASED_MODELS = ("student", "global")
MODEL_LABELS = {
    "teacher": "teacher",
    "student": "distilled student",
    "global": "global student",
    "finetuned": "fine-tuned",
    "reference": "reference",
}


def model_name(audit: Mapping[str, Any]) -> str:
    """Display name of an audited model (without its client); unreleased models say they are a reference."""
    model = str(audit.get("model"))
    name = MODEL_LABELS.get(model, model)
    return name if model in RELEASED_MODELS else f"{name} (reference)"


def client_name(audit: Mapping[str, Any]) -> str:
    """``"client <i>"`` for a client's audit, ``"server"`` for the server's (e.g. per-round global audits)."""
    client = audit.get("client_index")
    return "server" if client is None else f"client {client}"


def model_label(audit: Mapping[str, Any]) -> str:
    """Display name of an audited model with its client when the audit concerns one."""
    client = audit.get("client_index")
    return model_name(audit) if client is None else f"{model_name(audit)} · client {client}"


def audits_of(detail: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    """Audits of one kind (``exposure``, ``memorisation``, ``mia``, ``epsilon``) in recording order."""
    return [a for a in detail.get("audits", []) if a.get("kind") == kind]


def has_audit_data(detail: Mapping[str, Any]) -> bool:
    """Whether the run holds any audit, exposure or ε lower bound at all."""
    return bool(detail.get("audits") or detail.get("epsilon_bounds"))


# ---- exposure ---------------------------------------------------------------------------------------------------

EXPOSURE_COLUMNS = ["model", "client", "round", "canary", "repetitions", "exposure", "extrapolated", "bound",
                    "max_exposure", "n_ref", "log_perplexity_bits", "secret"]


def _exposure_rows(detail: Mapping[str, Any], audits: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    secrets = {c.get("canary_id"): c.get("secret", "") for c in detail.get("canaries", [])}
    rows = []
    for audit in audits:
        for e in audit.get("exposures", []):
            n_ref = int(e.get("n_ref") or 0)
            rows.append({
                "model": model_name(audit),
                "client": client_name(audit),
                "round": audit.get("server_round"),
                "canary": e.get("canary_id"),
                "repetitions": int(e.get("repetitions") or 0),
                "exposure": number(e.get("exposure_rank")),
                "extrapolated": number(e.get("exposure_extrapolated")),
                "bound": bool(e.get("extrapolated_is_bound", False)),
                "max_exposure": math.log2(n_ref) if n_ref > 0 else None,
                "n_ref": n_ref,
                "log_perplexity_bits": number(e.get("log_perplexity_bits")),
                "secret": secrets.get(e.get("canary_id"), ""),
            })
    return pd.DataFrame(rows, columns=EXPOSURE_COLUMNS)


def final_audits(audits: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Per (model, client), the end-of-run audit (no round) or else the one of the highest round."""
    best: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    for audit in audits:
        key = (audit.get("model"), audit.get("client_index"))
        rnd = audit.get("server_round")
        rank = math.inf if rnd is None else float(rnd)
        old = best.get(key)
        old_rank = None if old is None else (math.inf if old.get("server_round") is None else old["server_round"])
        if old_rank is None or rank >= old_rank:
            best[key] = audit
    return list(best.values())


def exposure_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (final audit, canary): rank exposure in bits, its ceiling log2(N_ref), the extrapolated value.

    End-of-run audits (no round) are used when there are any; a run audited only per round shows
    its latest round.
    """
    audits = audits_of(detail, "exposure")
    end_of_run = [a for a in audits if a.get("server_round") is None]
    return _exposure_rows(detail, final_audits(end_of_run or audits))


def exposure_trend_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """Mean rank exposure per round and repetition count of the per-round audits: ``model, round, repetitions,
    exposure`` (empty unless at least two rounds were audited)."""
    rows = _exposure_rows(detail, [a for a in audits_of(detail, "exposure") if a.get("server_round") is not None])
    if rows["round"].nunique() < 2:
        return pd.DataFrame(columns=["model", "round", "repetitions", "exposure"])
    trend = rows.groupby(["model", "round", "repetitions"], as_index=False)["exposure"].mean()
    return trend.astype({"round": int})


def extrapolated_text(value: float | None, bound: bool) -> str:
    """Extrapolated exposure as text; ``"> x"`` when the skew-normal CDF underflowed (a lower bound)."""
    if value is None:
        return "–"
    return f"> {value:.2f}" if bound else f"{value:.2f}"


# ---- memorisation -------------------------------------------------------------------------------------------------

def _first(s: Mapping[str, Any], *keys: str) -> Any:
    return next((s[k] for k in keys if s.get(k) is not None), None)


def memorisation_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """Extraction rates per audited model and client.

    Columns ``model, client, kind, rate_pct, memorised, n_audited, approx_pct, inherited, note`` (``note``
    says why a row measured nothing, e.g. records shorter than prefix + suffix).
    """
    columns = ["model", "client", "kind", "rate_pct", "memorised", "n_audited", "approx_pct", "inherited", "note"]
    rows = []
    for audit in final_audits(audits_of(detail, "memorisation")):
        s = audit.get("summary") or {}
        memorised = _first(s, "n_memorised", "memorised")
        n_audited = s.get("n_audited")
        if isinstance(memorised, list):
            n_audited = n_audited if n_audited is not None else len(memorised)
            memorised = sum(bool(m) for m in memorised)
        rate = number(s.get("rate"))
        if rate is None and number(memorised) is not None and number(n_audited):
            rate = float(memorised) / float(n_audited)  # type: ignore[arg-type]
        approx = number(_first(s, "approx_rate_ned_0.1_ours", "approximate_rate", "approx_rate"))
        rows.append({
            "model": model_name(audit),
            "client": client_name(audit),
            "kind": str(audit.get("model")),
            "rate_pct": None if rate is None else 100.0 * rate,
            "memorised": memorised,
            "n_audited": n_audited,
            "approx_pct": None if approx is None else 100.0 * approx,
            "inherited": _first(s, "inherited_from_teacher", "inherited"),
            # A row that measured nothing stays, saying why, instead of vanishing.
            "note": s.get("not_measurable") or ("not measurable (no record audited)" if not n_audited else ""),
        })
    frame = pd.DataFrame(rows, columns=columns)
    order = {k: i for i, k in enumerate(MODEL_ORDER)}
    return frame.sort_values(["client", "kind"], key=lambda c: c.map(order) if c.name == "kind" else c,
                             kind="stable").reset_index(drop=True)


def distillation_reduction(frame: pd.DataFrame) -> float | None:
    """Relative reduction (%) of the distilled student's extraction rate vs the fine-tuned one.

    docs/METHODS.md §8 cites distillation memorising > 50% less than fine-tuning. Rates are averaged
    over clients; ``None`` when either is missing or the fine-tuned rate is 0.
    """
    def rate(kind: str) -> float | None:
        values = frame.loc[frame["kind"] == kind, "rate_pct"].dropna()
        return float(values.mean()) if not values.empty else None

    student = rate("student")
    if student is None:
        student = rate("global")
    finetuned = rate("finetuned")
    if student is None or finetuned is None or finetuned <= 0:
        return None
    return 100.0 * (1.0 - student / finetuned)


# ---- membership inference -----------------------------------------------------------------------------------------

def _is_attack(value: Any) -> bool:
    return isinstance(value, Mapping) and any(k in value for k in ("auc", "roc_points", "roc", "histogram"))


def _attack_summaries(audit: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(attack name, its values) for every attack an MIA audit reports."""
    summary = audit.get("summary") or {}
    params = audit.get("params") or {}
    nested = summary.get("attacks")
    attacks = nested if isinstance(nested, Mapping) else summary
    named = [(str(k), v) for k, v in attacks.items() if _is_attack(v)]
    if named:
        yield from named
    elif _is_attack(summary):
        yield str(params.get("score") or params.get("attack") or summary.get("score") or "attack"), summary


def _mia_keys(audit: Mapping[str, Any], attack: str) -> dict[str, str]:
    return {"model": model_name(audit), "client": client_name(audit), "attack": attack}


def mia_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """ROC summary per (model, client, attack): ``auc, tpr_1pct, tpr_01pct`` (TPRs in %, ``None`` = n/a)."""
    rows = []
    for audit in final_audits(audits_of(detail, "mia")):
        for attack, s in _attack_summaries(audit):
            t1, t01 = number(s.get("tpr_at_1pct")), number(s.get("tpr_at_01pct"))
            rows.append({**_mia_keys(audit, attack), "auc": number(s.get("auc")),
                         "tpr_1pct": None if t1 is None else 100.0 * t1,
                         "tpr_01pct": None if t01 is None else 100.0 * t01})
    return pd.DataFrame(rows, columns=["model", "client", "attack", "auc", "tpr_1pct", "tpr_01pct"])


def roc_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """ROC points usable on log-log axes (both rates > 0): ``model, client, attack, fpr, tpr``."""
    rows = []
    for audit in final_audits(audits_of(detail, "mia")):
        for attack, s in _attack_summaries(audit):
            for point in s.get("roc_points") or s.get("roc") or []:
                if not isinstance(point, Sequence) or len(point) != 2:
                    continue
                fpr, tpr = number(point[0]), number(point[1])
                if fpr is not None and tpr is not None and fpr > 0 and tpr > 0:
                    rows.append({**_mia_keys(audit, attack), "fpr": fpr, "tpr": tpr})
    return pd.DataFrame(rows, columns=["model", "client", "attack", "fpr", "tpr"])


def _histogram(s: Mapping[str, Any], bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(edges, member counts, non-member counts) from a stored histogram or raw score lists."""
    hist = s.get("histogram")
    if isinstance(hist, Mapping):
        edges = np.asarray(hist.get("edges", []), dtype=float)
        members = np.asarray(hist.get("members", []), dtype=float)
        nonmembers = np.asarray(hist.get("nonmembers", []), dtype=float)
        if edges.size >= 2 and members.size == nonmembers.size == edges.size - 1:
            return edges, members, nonmembers
        return None
    raw_in = [x for x in s.get("member_scores") or [] if number(x) is not None]
    raw_out = [x for x in s.get("nonmember_scores") or [] if number(x) is not None]
    if not raw_in or not raw_out:
        return None
    edges = np.histogram_bin_edges(np.asarray(raw_in + raw_out, dtype=float), bins=bins)
    return edges, np.histogram(raw_in, edges)[0].astype(float), np.histogram(raw_out, edges)[0].astype(float)


def score_histogram_frame(detail: Mapping[str, Any], bins: int = 30) -> pd.DataFrame:
    """Members' vs non-members' scores: ``model, client, attack, group, start, end, share`` (share of group, %)."""
    rows = []
    for audit in final_audits(audits_of(detail, "mia")):
        for attack, s in _attack_summaries(audit):
            found = _histogram(s, bins)
            if found is None:
                continue
            edges, members, nonmembers = found
            for group, counts in (("members", members), ("non-members", nonmembers)):
                total = counts.sum()
                if total <= 0:
                    continue
                for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
                    rows.append({**_mia_keys(audit, attack), "group": group, "start": float(lo), "end": float(hi),
                                 "share": 100.0 * float(c) / float(total)})
    return pd.DataFrame(rows, columns=["model", "client", "attack", "group", "start", "end", "share"])


# ---- empirical epsilon ------------------------------------------------------------------------------------------

def bounds_frame(detail: Mapping[str, Any]) -> pd.DataFrame:
    """Empirical ε lower bounds next to the accountant's ε and the audit's power: ``bound, method, client,
    epsilon_lb, accountant_epsilon, power, flagged, control, note``.

    ``power`` is the largest ε_LB the same audit could certify with a perfect attack; ``note`` says
    "this audit cannot detect leaks above ε = X" whenever that is below the claim.
    """
    columns = ["bound", "method", "client", "epsilon_lb", "accountant_epsilon", "power", "flagged", "control",
               "note"]
    rows = []
    for b in detail.get("epsilon_bounds", []):
        client = b.get("client_index")
        where = "all clients" if client is None else f"client {client}"
        details = b.get("details") or {}
        model = details.get("model")
        power = number(details.get("power"))
        claim = number(b.get("accountant_epsilon"))
        control = bool(details.get("control", False))
        label = " · ".join(str(x) for x in (b.get("method"), MODEL_LABELS.get(str(model), model), where) if x)
        rows.append({
            "bound": f"{label} · #{b.get('id')}",
            "method": b.get("method"),
            "client": client,
            "epsilon_lb": number(b.get("epsilon_lb")),
            "accountant_epsilon": number(details.get("claimed_epsilon")) if control else claim,
            "power": power,
            "flagged": bool(details.get("control_exceeds_claim")) if control else bool(b.get("flagged", False)),
            "control": control,
            "note": power_note(power, number(details.get("claimed_epsilon")) if control else claim) or "",
        })
    return pd.DataFrame(rows, columns=columns)



def canary_share_text(detail: Mapping[str, Any]) -> str:
    """``"client 0: 27.1%, client 1: 20.3%"``: the canary share of each client's training set (global audits)."""
    shares = {}
    for audit in audits_of(detail, "epsilon"):
        share = number((audit.get("params") or {}).get("canary_share"))
        if share is not None and audit.get("client_index") is not None:
            shares[int(audit["client_index"])] = share
    return ", ".join(f"client {c}: {100.0 * v:.1f}%" for c, v in sorted(shares.items()))
