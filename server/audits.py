"""Server side of the audits (docs/METHODS.md §8): canary ground truth, the ``query.audit`` round,
storage of every client's results and the comparison of ε lower bounds with the accountant's ε.

The server is the auditor. It derives the canary plan from the configuration (as the clients do),
stores it — secrets included, in the audit tables only — then sends the final global weights to
every client, which audits the models it holds and answers with numbers. Nothing here may fail a
run: any error, a client's included, becomes an event in the store and the run completes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from privacy.audit.measures import ALL_KINDS, DP_MODELS, AuditData, exposure_audit
from distill.hf import load_travelling_state, student_lm
from distill.tokenizer import tokenizer_to_json
from fedveil.config import Config
from fedveil.store import CanaryRow, EventRow, ExposureRow, Store
from privacy.audit.canaries import Canary
from privacy.audit.plan import (
    is_one_run,
    plan_formats,
    public_plan,
    reference_candidates,
    run_canary_plan,
    training_encode,
)

__all__ = [
    "canary_rows",
    "exposure_summary",
    "parse_audit_reply",
    "round_audit_fn",
    "control_target",
    "pooled_one_run",
    "revealed_canaries",
    "run_audits",
    "store_canaries",
    "store_client_audit",
    "store_pooled",
]

log = logging.getLogger("fedveil.server")
MEMO_PARAMS = {"prefix_tokens": 50, "suffix_tokens": 50, "max_records": 64, "criterion": "exact match of all 50",
               "ned_column": "normalised edit distance <= 0.1 (ours, not the published criterion)"}


def canary_rows(plan: Sequence[Canary]) -> list[CanaryRow]:
    """Store rows of a plan: the full ground truth (which canary, client, repetitions, inserted)."""
    formats = plan_formats()
    return [CanaryRow(canary_id=c.canary_id, format_index=c.format_index, template=formats[c.format_index].template,
                      secret=c.secret, repetitions=c.repetitions, inserted=c.inserted, client_index=c.client_index,
                      one_run=is_one_run(c)) for c in plan]


def store_canaries(store: Store, run_id: str, plan: Sequence[Canary], *, revealed: bool = False) -> int:
    """Store the canaries of ``plan`` the run does not have yet; returns the number of rows written.

    One-run canaries are stored only when ``revealed``: their inclusion is each node's secret until its
    audit reply shows it (:func:`revealed_canaries`), and no row may claim a coin nobody showed.
    """
    known = {c["canary_id"] for c in store.get_run(run_id)["canaries"]}
    new = [c for c in plan if c.canary_id not in known and (revealed or not is_one_run(c))]
    if new:
        store.add_canaries(run_id, canary_rows(new))
    return len(new)


def revealed_canaries(plan: Sequence[Canary], client: int, one_run: Mapping[str, Any]) -> list[Canary]:
    """The one-run canaries of ``client`` with the coins its reply revealed (``canaries: {id: [score, in]}``)."""
    coins = {str(k): bool(v[1]) for k, v in (one_run.get("canaries") or {}).items()}
    return [dataclasses.replace(c, inserted=coins[c.canary_id], repetitions=int(coins[c.canary_id]))
            for c in plan if is_one_run(c) and c.client_index == client and c.canary_id in coins]


def pooled_one_run(replies: Mapping[int, Mapping[str, Any]], model: str = "global") -> dict[str, Any] | None:
    """The one-run audit of ``model`` over every client's canaries (docs/METHODS.md §8, pooling).

    Each reply's ``epsilon.<model>.one_run.canaries`` maps canary id to ``[score, included]``; guesses
    are the top and bottom quarter of the pooled scores (fixed before looking, so no correction), δ is
    the largest client δ. Returns None when fewer than 4 canaries were reported.
    """
    from privacy.audit.epsilon import one_run_epsilon, one_run_guesses, one_run_power
    from privacy.audit.plan import ONE_RUN_BETA

    scores: list[float] = []
    flags: list[bool] = []
    deltas: list[float] = []
    clients: list[int] = []
    for client, result in sorted(replies.items()):
        one_run = ((result.get("epsilon") or {}).get(model) or {}).get("one_run") or {}
        for _, (score, flag) in sorted((one_run.get("canaries") or {}).items()):
            scores.append(float(score))
            flags.append(bool(flag))
        if one_run.get("canaries"):
            deltas.append(float(one_run.get("delta") or 0.0))
            clients.append(client)
    m = len(scores)
    if m < 4:
        return None
    k = m // 4
    r, v = one_run_guesses(scores, flags, k, k)
    delta = max(deltas)
    return {"m": m, "r": r, "v": v, "k_pos": k, "k_neg": k, "beta": ONE_RUN_BETA, "delta": delta,
            "epsilon_lb": one_run_epsilon(m, r, v, delta=delta, beta=ONE_RUN_BETA),
            "power": one_run_power(m, r, delta=delta, beta=ONE_RUN_BETA), "n_included": int(sum(flags)),
            "clients": clients, "model": model, "pooled": True, "score": "-log_perplexity_bits"}


def control_target(store: Store, dp_run_id: str) -> dict[str, Any]:
    """``{"run_id", "claimed_epsilon"}`` of the DP run a control run is for: its largest client ε."""
    eps = [float(e["epsilon"]) for e in store.latest_ledger(dp_run_id).values() if e.get("epsilon") is not None]
    return {"run_id": dp_run_id, "claimed_epsilon": max(eps) if eps else None}


def store_pooled(store: Store, run_id: str, cfg: Config, replies: Mapping[int, Mapping[str, Any]],
                 ledger: Mapping[int, Mapping[str, Any]], *, control_of: Mapping[str, Any] | None = None
                 ) -> dict[str, Any] | None:
    """Store the pooled one-run bound of the global model; compared with the largest client ε.

    With ``control_of`` (``{"run_id", "claimed_epsilon"}`` of a DP run) the bound is that run's non-DP
    control: stored in the DP run, flagged when it exceeds the DP run's claim (it must: the audit bites).
    """
    pooled = pooled_one_run(replies)
    if pooled is None:
        return None
    claims = [c for c in (_claim(cfg, ledger, client) for client in pooled["clients"]) if c is not None]
    claim = max(claims) if claims else None
    if control_of is None:
        store.add_epsilon_bound(run_id, method="one-run", epsilon_lb=pooled["epsilon_lb"], accountant_epsilon=claim,
                                details=pooled)
        return pooled
    claimed = control_of.get("claimed_epsilon")
    bites = claimed is not None and pooled["epsilon_lb"] > float(claimed)
    # The store's flag column means "this run's claim is contradicted", which a control's bound never
    # says about the DP run: the control's verdict lives in its details and the dashboard reads it there.
    details = {**pooled, "control": True, "control_run": run_id, "claimed_epsilon": claimed,
               "control_exceeds_claim": bites}
    store.add_epsilon_bound(str(control_of["run_id"]), method="one-run", epsilon_lb=pooled["epsilon_lb"],
                            accountant_epsilon=None, details=details, flagged=False)
    return {**pooled, "control_exceeds_claim": bites}


def parse_audit_reply(record: Mapping[str, Any]) -> dict[str, Any]:
    """Decode the ConfigRecord ``audit`` of a client's reply (one JSON string per section)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if not isinstance(value, str):
            raise TypeError(f"audit reply field {key!r} must be a JSON string, got {type(value).__name__}")
        out[str(key)] = json.loads(value)
    return out


def exposure_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Exposure by repetition count (0 = never inserted): mean and max of both forms."""
    by: dict[str, Any] = {}
    for reps in sorted({int(r["repetitions"]) for r in rows}):
        sel = [r for r in rows if int(r["repetitions"]) == reps]
        rank = [float(r["rank_exposure"]) for r in sel]
        extra = [float(r["skewnorm_exposure"]) for r in sel if r.get("skewnorm_exposure") is not None]
        by[str(reps)] = {"n": len(sel), "mean_rank": sum(rank) / len(rank), "max_rank": max(rank),
                         "mean_extrapolated": sum(extra) / len(extra) if extra else None,
                         "any_bound": any(bool(r.get("skewnorm_is_bound")) for r in sel)}
    n_ref = max((int(r["n_ref"]) for r in rows), default=0)
    return {"by_repetitions": by, "n_canaries": len(rows), "max_rank_exposure": max(
        (float(r["rank_exposure"]) for r in rows), default=None), "max_possible_rank_exposure":
            math.log2(n_ref) if n_ref else None}


def _exposure_rows(rows: Sequence[Mapping[str, Any]]) -> list[ExposureRow]:
    return [ExposureRow(canary_id=str(r["canary_id"]), repetitions=int(r["repetitions"]),
                        log_perplexity_bits=float(r["log_perplexity_bits"]), exposure_rank=float(r["rank_exposure"]),
                        n_ref=int(r["n_ref"]), exposure_extrapolated=r.get("skewnorm_exposure"),
                        extrapolated_is_bound=bool(r.get("skewnorm_is_bound") or False)) for r in rows]


def _claim(cfg: Config, ledger: Mapping[int, Mapping[str, Any]], client: int) -> float | None:
    """The accountant's ε of a client, or None when the run claims no DP for it."""
    if not cfg.privacy.enabled or client not in ledger:
        return None
    return float(ledger[client]["epsilon"])


def store_client_audit(store: Store, run_id: str, cfg: Config, client: int, result: Mapping[str, Any],
                       ledger: Mapping[int, Mapping[str, Any]], *, server_round: int | None = None) -> list[int]:
    """Write one client's audit results: one audit row per (kind, model), exposures, ε bounds.

    ε lower bounds of the models the accountant's ε covers (local and global student) are stored
    with that ε and flagged by the store when they exceed it (docs/METHODS.md §8).
    """
    meta = dict(result.get("meta", {}))
    ids: list[int] = []

    def add(kind: str, model: str, params: dict[str, Any], summary: dict[str, Any],
            exposures: Sequence[ExposureRow] = ()) -> None:
        ids.append(store.add_audit(run_id, kind, model, client_index=client, server_round=server_round,
                                   params=params, summary=summary, exposures=exposures))

    for model, ex in result.get("exposure", {}).items():
        params = {**ex["params"], "templates": {str(i): f.template for i, f in enumerate(plan_formats())}, "meta": meta}
        add("exposure", model, params, exposure_summary(ex["rows"]), _exposure_rows(ex["rows"]))
    for model, memo in result.get("memorisation", {}).items():
        add("memorisation", model, {**MEMO_PARAMS, "finetune_steps": meta.get("finetune_steps")}, memo)
    for model, mia in result.get("mia", {}).items():
        add("mia", model, {"k": 0.2, "reference_model": meta.get("reference_model"), "n_members": mia.get("n_members"),
                           "n_nonmembers": mia.get("n_nonmembers"),
                           "nonmembers": "held out of training by the node's secret coin (one random split)"},
            mia["attacks"])
    for model, eps in result.get("epsilon", {}).items():
        claim = _claim(cfg, ledger, client) if model in DP_MODELS else None
        add("epsilon", model, {"accountant_epsilon": claim, "canary_share": meta.get("canary_share"),
                               "mia_split": meta.get("mia_split")}, eps)
        if model not in DP_MODELS:
            continue
        for method, key in (("clopper-pearson", "clopper_pearson"), ("one-run", "one_run")):
            bound = eps.get(key)
            if bound and bound.get("epsilon_lb") is not None:
                store.add_epsilon_bound(run_id, method=method, epsilon_lb=float(bound["epsilon_lb"]),
                                        accountant_epsilon=claim, client_index=client,
                                        details={**bound, "model": model, "server_round": server_round})
    return ids


def _event(store: Store, run_id: str, reason: str, client: int | None = None, node: int | None = None,
           server_round: int | None = None) -> None:
    log.warning("audit: client %s: %s", client, reason)
    try:
        store.add_events(run_id, [EventRow(kind="failed", reason=f"audit: {reason}"[:1000], client_index=client,
                                           node_id=None if node is None else str(node), server_round=server_round)])
    except Exception as exc:  # noqa: BLE001 - the event is a courtesy; never fail the run for it
        log.error("audit: could not record the event: %s", exc)


def _audit_messages(cfg: Config, tokenizer: Any, final_arrays: ArrayRecord, nodes: Sequence[int]) -> list[Message]:
    tok_json = tokenizer_to_json(tokenizer)
    conf = {"server-round": cfg.federation.rounds, "tokenizer-sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
            "kinds": ",".join(k for k in cfg.audit.kinds if k in ALL_KINDS)}
    return [Message(RecordDict({"arrays": final_arrays, "config": ConfigRecord(conf)}), dst_node_id=n,  # type: ignore[arg-type]
                    message_type="query.audit") for n in nodes]


def run_audits(grid: Grid, cfg: Config, store: Store, run_id: str, run_dir: Path, tokenizer: Any,
               final_arrays: ArrayRecord | None, node_to_client: Mapping[int, int]) -> None:
    """End-of-run audits of every client (``[audit]`` section); never raises.

    Stores the canary ground truth, sends ``query.audit`` with the final global weights to every
    greeted node, stores each reply and records a failed / missing one as an event.
    """
    if not cfg.audit.enabled or not cfg.audit.kinds:
        return
    try:
        counts = {int(c["client_index"]): int(c["num_examples"]) for c in store.get_run(run_id)["clients"]}
        plan = public_plan(cfg, run_canary_plan(cfg, training_encode(tokenizer)), counts)
        store_canaries(store, run_id, plan)
        if final_arrays is None:
            _event(store, run_id, "no final global model to audit")
            return
        nodes = sorted(node_to_client)
        replies = list(grid.send_and_receive(_audit_messages(cfg, tokenizer, final_arrays, nodes),
                                             timeout=cfg.federation.round_timeout))
        ledger = store.latest_ledger(run_id)
        results: dict[int, dict[str, Any]] = {}
        seen = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            seen.add(node)
            client = node_to_client.get(node)
            if reply.has_error():
                _event(store, run_id, (reply.error.reason or "unknown error").strip().splitlines()[-1][:500],
                       client, node)
                continue
            if client is None or "audit" not in reply.content.config_records:
                _event(store, run_id, "reply without an 'audit' record or from an unknown node", client, node)
                continue
            try:
                result = parse_audit_reply(reply.content.config_records["audit"])
                store_client_audit(store, run_id, cfg, client, result, ledger)
                results[client] = result
                one_run = ((result.get("epsilon") or {}).get("global") or {}).get("one_run") or {}
                store_canaries(store, run_id, revealed_canaries(plan, client, one_run), revealed=True)
                log.info("audit: stored client %d (%s)", client, ", ".join(sorted(k for k in result if k != "meta")))
            except Exception as exc:  # noqa: BLE001 - one bad reply must not lose the others
                _event(store, run_id, f"could not store the results: {type(exc).__name__}: {exc}", client, node)
        for node in sorted(set(nodes) - seen):
            _event(store, run_id, "no audit reply before the timeout", node_to_client.get(node), node)
        store_pooled(store, run_id, cfg, results, ledger)
        if cfg.audit.control_of:
            store_pooled(store, run_id, cfg, results, ledger, control_of=control_target(store, cfg.audit.control_of))
    except Exception as exc:  # audits never fail a run
        log.exception("audit failed")
        _event(store, run_id, f"{type(exc).__name__}: {exc}")


def round_audit_fn(cfg: Config, store: Store, run_id: str,
                   tokenizer: Any) -> Callable[[int, ArrayRecord], MetricRecord | None] | None:
    """Per-round exposure of the global student (``audit.every_round``), for ``strategy.start(evaluate_fn=...)``.

    The server scores every exposure canary against the references on the round's global weights
    and stores an ``exposure`` audit of model ``global`` with that round. Returns None when not
    configured or under HE (the server holds only ciphertext). Errors become events.
    """
    if not (cfg.audit.enabled and cfg.audit.every_round and "exposure" in cfg.audit.kinds) or cfg.he.enabled:
        return None
    encode = training_encode(tokenizer)
    plan = [c for c in run_canary_plan(cfg, encode) if not is_one_run(c)]
    if not plan:
        return None
    data = AuditData(encode=encode, members=(), nonmembers=(), max_length=cfg.data.max_length, canaries=plan,
                     references=reference_candidates(cfg, encode, plan))
    model = student_lm(cfg, len(tokenizer))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        try:
            load_travelling_state(model, arrays.to_torch_state_dict())
            result = exposure_audit(model, data)
            if result is None:
                return None
            summary = exposure_summary(result["rows"])
            store.add_audit(run_id, "exposure", "global", server_round=server_round, params=result["params"],
                            summary=summary, exposures=_exposure_rows(result["rows"]))
            return MetricRecord({"max-exposure": float(summary["max_rank_exposure"] or 0.0)})
        except Exception as exc:  # noqa: BLE001 - audits never fail a run
            _event(store, run_id, f"round {server_round} exposure: {type(exc).__name__}: {str(exc)[:300]}",
                   server_round=server_round)
            return None

    return evaluate
