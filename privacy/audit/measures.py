"""One client's audit measurements on a set of its models (docs/METHODS.md §8).

Pure functions of models and data, shared by the ClientApp's audit query
(:mod:`client.audit_client`), the on-demand ``fedveil audit`` command and the tests. Every result is
made of canary ids and numbers only: no record, no canary text and no secret leaves this module, so
a client can send the result to the server as it is.

Models are named ``"teacher"``, ``"student"`` (the client's last local student), ``"global"`` (the
global student) and ``"finetuned"`` (a same-size student fine-tuned with plain cross-entropy on the
same records, the comparison run of §8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from privacy.audit.canaries import Canary, candidate_token_ids
from privacy.audit.epsilon import (
    best_attack_epsilon,
    clopper_pearson_power,
    one_run_epsilon,
    one_run_guesses,
    one_run_power,
)
from privacy.audit.exposure import exposure_report
from privacy.audit.memorisation import MemorisationResult, extraction_check, inherited_count
from privacy.audit.mia import loglog_roc_points, loss_score, min_k_score, reference_score, roc_metrics, zlib_score
from privacy.audit.plan import ONE_RUN_BETA, ONE_RUN_FORMAT, is_one_run, plan_formats
from privacy.audit.scoring import secret_log_perplexity, token_logprobs

__all__ = [
    "ALL_KINDS",
    "DP_MODELS",
    "AuditData",
    "audit_client_models",
    "client_canaries",
    "exposure_audit",
    "memorisation_audits",
    "mia_audits",
    "one_run_audit",
]

Encode = Callable[[str], list[int]]
ALL_KINDS: tuple[str, ...] = ("exposure", "memorisation", "mia", "epsilon")
MEMO_PREFIX = 50
MEMO_SUFFIX = 50
MEMO_MAX_RECORDS = 64
MIA_MAX_RECORDS = 512
MIN_K = 0.2
ALPHA = 0.05
BETA = ONE_RUN_BETA
ROC_POINTS = 100
HIST_BINS = 20
SCORE_BATCH = 256
# Only models the accountant's ε covers are compared with it; the teacher and the fine-tuned
# baseline are non-private by construction.
DP_MODELS: tuple[str, ...] = ("student", "global")


@dataclass(frozen=True)
class AuditData:
    """What one client audits its models against.

    Parameters
    ----------
    encode
        Text to token ids exactly as in training (BOS first), see ``privacy.audit.plan.training_encode``.
    members
        The client's own training records (canary copies excluded): MIA members, extraction records.
    nonmembers
        The client's records held out of training by its secret coin (``privacy.audit.plan.mia_split``):
        the other half of one random split, so members and non-members share one distribution.
    max_length
        Training sequence length; records are truncated as in training.
    canaries
        This client's canaries (inserted ones, never-inserted controls, its one-run canaries).
    references
        Reference candidate texts by exposure ``format_index``.
    delta
        δ of the client's DP guarantee, used in both ε lower bounds.
    release_scores
        Also return per-record statistics (ROC points, score histograms, the best threshold); off by
        default (``audit.release_scores``), since they are computed on single private records.
    """

    encode: Encode
    members: Sequence[str]
    nonmembers: Sequence[str]
    max_length: int
    canaries: Sequence[Canary]
    references: Mapping[int, Sequence[str]]
    delta: float = 0.0
    release_scores: bool = False


def client_canaries(plan: Sequence[Canary], partition_id: int) -> list[Canary]:
    """The canaries a client audits: its own (exposure and one-run) and, when it holds exposure canaries,
    the never-inserted controls; a client without exposure canaries has no exposure to audit."""
    own = [c for c in plan if c.client_index == partition_id]
    if not any(not is_one_run(c) for c in own):
        return own
    return own + [c for c in plan if c.client_index is None and not is_one_run(c)]


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _token_ids(data: AuditData, texts: Sequence[str]) -> list[list[int]]:
    # max_length - 1: training rows end with EOS after at most max_length - 2 body tokens.
    return [data.encode(text)[: data.max_length - 1] for text in texts]


# -- exposure and one-run ----------------------------------------------------------------------

def exposure_audit(model: torch.nn.Module, data: AuditData, progress: bool = False) -> dict[str, Any] | None:
    """Rank and skew-normal exposure of the client's exposure canaries (docs/METHODS.md §8).

    Each format's canaries and references are scored in one batched call so that they share one
    secret-token mask. Returns None when the client has no exposure canary.
    """
    canaries = [c for c in data.canaries if not is_one_run(c)]
    if not canaries:
        return None
    formats = plan_formats()
    canary_ppl: dict[str, float] = {}
    reference_ppl: dict[int, np.ndarray] = {}
    for index in sorted({c.format_index for c in canaries}):
        own = [c for c in canaries if c.format_index == index]
        refs = list(data.references[index])
        ids, mask = candidate_token_ids(formats[index], [c.text for c in own] + refs, data.encode)
        ppl = secret_log_perplexity(model, ids, mask, batch_size=SCORE_BATCH, progress=progress)
        canary_ppl.update({c.canary_id: float(p) for c, p in zip(own, ppl[: len(own)], strict=True)})
        reference_ppl[index] = ppl[len(own):]
    rows = exposure_report(canaries, canary_ppl, reference_ppl, formats=formats)
    fits = {str(r["format_index"]): r.get("skewnorm_params") for r in rows}
    params = {"n_ref": {str(k): int(v.size) for k, v in reference_ppl.items()}, "method": "rank+skewnorm",
              "skewnorm_params": fits,
              "space_size": {str(k): formats[k].space_size for k in reference_ppl},
              "reference_ppl_quantiles": {str(k): [float(q) for q in np.quantile(v, [0.0, 0.01, 0.5, 0.99, 1.0])]
                                          for k, v in reference_ppl.items()}}
    return {"rows": rows, "params": params}


def one_run_audit(model: torch.nn.Module, data: AuditData) -> dict[str, Any] | None:
    """One-run ε lower bound (Steinke, Nasr, Jagielski 2023; docs/METHODS.md §8) from canary scores.

    Score = ``−log-perplexity`` of the secret; the top ``m/4`` scores are guessed IN and the bottom
    ``m/4`` OUT (fixed before looking at the scores, so no correction is needed).
    """
    canaries = [c for c in data.canaries if is_one_run(c)]
    if len(canaries) < 4:
        return None
    ids, mask = candidate_token_ids(ONE_RUN_FORMAT, [c.text for c in canaries], data.encode)
    scores = -secret_log_perplexity(model, ids, mask, batch_size=SCORE_BATCH)
    included = [c.inserted for c in canaries]
    k = len(canaries) // 4
    r, v = one_run_guesses(scores, included, k, k)
    eps = one_run_epsilon(len(canaries), r, v, delta=data.delta, beta=BETA)
    # Canary scores and coins go to the auditor, which pools them over clients (server.audits): canaries
    # are synthetic, so neither says anything about a private record.
    return {"m": len(canaries), "r": r, "v": v, "k_pos": k, "k_neg": k, "beta": BETA, "delta": data.delta,
            "epsilon_lb": eps, "power": one_run_power(len(canaries), r, delta=data.delta, beta=BETA),
            "n_included": int(sum(included)), "score": "-log_perplexity_bits",
            "canaries": {c.canary_id: [float(s), bool(c.inserted)] for c, s in zip(canaries, scores, strict=True)}}


# -- memorisation ------------------------------------------------------------------------------

def memorisation_audits(models: Mapping[str, torch.nn.Module], data: AuditData) -> dict[str, dict[str, Any]]:
    """Extraction audit (50-token prefix → greedy 50 tokens, exact match) of every model, on the same
    first ``MEMO_MAX_RECORDS`` member records that are long enough, with the count each model
    shares with the teacher (memorised by the teacher and inherited)."""
    ids = _token_ids(data, data.members)
    long_enough = [i for i, seq in enumerate(ids) if len(seq) >= MEMO_PREFIX + MEMO_SUFFIX][:MEMO_MAX_RECORDS]
    records = [ids[i] for i in long_enough]
    results: dict[str, MemorisationResult] = {}
    for name, model in models.items():
        results[name] = extraction_check(model, records, MEMO_PREFIX, MEMO_SUFFIX, batch_size=32)
    out: dict[str, dict[str, Any]] = {}
    teacher = results.get("teacher")
    for name, res in results.items():
        row: dict[str, Any] = {
            "rate": _finite(res.rate), "n_audited": res.n_audited, "n_memorised": int(sum(res.memorised)),
            "n_members": len(ids), "n_long_enough": sum(1 for s in ids if len(s) >= MEMO_PREFIX + MEMO_SUFFIX),
            "approx_rate_ned_0.1_ours": _finite(res.approximate_rate(0.1)),
            "mean_ned_ours": _finite(float(np.mean(res.normalised_edit_distance))) if res.n_audited else None,
        }
        if not res.n_audited:
            row["not_measurable"] = (f"not measurable (records shorter than prefix + suffix = "
                                     f"{MEMO_PREFIX} + {MEMO_SUFFIX} tokens)")
        if teacher is not None and name != "teacher":
            row["inherited_from_teacher"] = inherited_count(teacher.memorised, res.memorised)
            row["teacher_memorised"] = int(sum(teacher.memorised))
        out[name] = row
    return out


# -- membership inference and the Clopper–Pearson ε lower bound ----------------------------------

def _tpr_reasons(n_nonmembers: int) -> dict[str, str]:
    """Why a TPR at a fixed FPR is undefined: fewer non-members than 1 / FPR."""
    out: dict[str, str] = {}
    for key, fpr in (("tpr_at_1pct", 0.01), ("tpr_at_01pct", 0.001)):
        need = int(round(1.0 / fpr))
        if n_nonmembers < need:
            out[f"{key}_na"] = f"needs >= {need} non-members, has {n_nonmembers}"
    return out


def _histogram(members: np.ndarray, nonmembers: np.ndarray) -> dict[str, list[float]]:
    both = np.concatenate([members, nonmembers])
    edges = np.histogram_bin_edges(both, bins=HIST_BINS)
    return {"edges": edges.tolist(), "members": np.histogram(members, edges)[0].tolist(),
            "nonmembers": np.histogram(nonmembers, edges)[0].tolist()}


def _attack_scores(logprobs: list[np.ndarray], texts: Sequence[str],
                   reference: list[np.ndarray] | None) -> dict[str, np.ndarray]:
    """The four §8 scores (higher = member) of each sequence from its token log-probs."""
    scores = {"loss": np.array([loss_score(lp) for lp in logprobs]),
              "zlib": np.array([zlib_score(lp, t) for lp, t in zip(logprobs, texts, strict=True)]),
              "min_k": np.array([min_k_score(lp, MIN_K) for lp in logprobs])}
    if reference is not None:
        scores["reference"] = np.array([reference_score(lp, r) for lp, r in zip(logprobs, reference, strict=True)])
    return scores


def mia_audits(models: Mapping[str, torch.nn.Module], data: AuditData,
               reference_model: torch.nn.Module | None = None
               ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Membership inference on members vs non-members for every model, and its ε lower bound.

    Returns ``(mia, clopper_pearson)``: per model, per attack the ROC AUC, TPR at 1% and 0.1% FPR
    (None = n/a), log-log ROC points and score histograms; and per model the best Clopper–Pearson
    ε_LB over the attacks, each attack's thresholds Bonferroni-corrected and α split over attacks.
    """
    members = [t for t in data.members if len(data.encode(t)) >= 2][:MIA_MAX_RECORDS]
    nonmembers = [t for t in data.nonmembers if len(data.encode(t)) >= 2][:MIA_MAX_RECORDS]
    if not members or not nonmembers:
        return {}, {}
    texts = members + nonmembers
    seqs = _token_ids(data, texts)
    reference = token_logprobs(reference_model, seqs, batch_size=64) if reference_model is not None else None
    n_in = len(members)
    mia: dict[str, dict[str, Any]] = {}
    bounds: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        scores = _attack_scores(token_logprobs(model, seqs, batch_size=64), texts, reference)
        attacks: dict[str, Any] = {}
        best: dict[str, Any] = {}
        alpha = ALPHA / len(scores)
        for attack, values in scores.items():
            inside, outside = values[:n_in], values[n_in:]
            roc = roc_metrics(inside, outside)
            attacks[attack] = {"auc": roc.auc, "tpr_at_1pct": roc.tpr_at_1pct, "tpr_at_01pct": roc.tpr_at_01pct,
                               **_tpr_reasons(len(outside))}
            if data.release_scores:
                # ROC points and histograms are statistics of single records' scores: they leave the
                # node only on request (audit.release_scores) and the privacy statement lists them.
                attacks[attack]["roc_points"] = [list(p) for p in loglog_roc_points(roc.fpr, roc.tpr, ROC_POINTS)]
                attacks[attack]["histogram"] = _histogram(inside, outside)
                attacks[attack]["member_scores"] = inside.tolist()
                attacks[attack]["nonmember_scores"] = outside.tolist()
            eps, threshold, counts = best_attack_epsilon(inside, outside, alpha=alpha, delta=data.delta)
            attacks[attack]["epsilon_lb"] = eps
            tried = int(np.unique(values).size)
            # Power of this very audit: a perfect attack with the same sizes and the same α split.
            power = clopper_pearson_power(n_in, len(nonmembers), alpha / tried, data.delta)
            attacks[attack]["power"] = power
            if not best or eps > best["epsilon_lb"]:
                best = {"epsilon_lb": eps, "attack": attack, "counts": counts._asdict(), "power": power,
                        "alpha": ALPHA, "alpha_per_attack": alpha, "delta": data.delta, "thresholds_tried": tried,
                        "n_members": n_in, "n_nonmembers": len(nonmembers)}
                if data.release_scores:
                    best["threshold"] = threshold
        mia[name] = {"attacks": attacks, "n_members": n_in, "n_nonmembers": len(nonmembers)}
        bounds[name] = best
    return mia, bounds


# -- everything ---------------------------------------------------------------------------------

def audit_client_models(models: Mapping[str, torch.nn.Module], data: AuditData, kinds: Sequence[str] = ALL_KINDS,
                        *, reference_model: torch.nn.Module | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Run the requested audits (docs/METHODS.md §8) on every model of one client.

    Returns
    -------
    dict
        JSON-serialisable sections ``exposure`` / ``one_run`` / ``memorisation`` / ``mia`` /
        ``epsilon``, each keyed by model name (a section is absent when its kind was not asked
        for); only canary ids and numbers.
    """
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown audit kinds {sorted(unknown)}; allowed: {', '.join(ALL_KINDS)}")
    out: dict[str, Any] = {}
    if "exposure" in kinds:
        exposure = {name: exposure_audit(model, data, progress) for name, model in models.items()}
        out["exposure"] = {k: v for k, v in exposure.items() if v is not None}
    if "memorisation" in kinds:
        out["memorisation"] = memorisation_audits(models, data)
    mia, bounds = mia_audits(models, data, reference_model) if {"mia", "epsilon"} & set(kinds) else ({}, {})
    if "mia" in kinds:
        out["mia"] = mia
    if "epsilon" in kinds:
        one_run = {name: one_run_audit(model, data) for name, model in models.items()}
        out["epsilon"] = {name: {"clopper_pearson": bounds.get(name), "one_run": one_run[name],
                                 "dp_claimed": name in DP_MODELS} for name in models}
    return out
