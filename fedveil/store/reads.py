"""Read-side queries of the store: run detail, run summaries, latest ledger.

Each function takes an open :class:`sqlalchemy.orm.Session` and returns plain,
JSON-serialisable Python data (see the shape in :mod:`fedveil.store.api`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedveil.store.convert import out_value, row_dict
from fedveil.store.models import (
    EPS_LB_FLAG,
    RELEASED_MODELS,
    Artifact,
    Audit,
    Canary,
    Client,
    ClientEvent,
    EpsilonBound,
    Exposure,
    HERecord,
    LedgerEntry,
    Metric,
    Round,
    Run,
)

UTILITY_METRICS: tuple[str, ...] = ("perplexity", "accuracy")


def _rows(session: Session, model: Any, run_id: str, *order: Any) -> Sequence[Any]:
    return session.scalars(sa.select(model).where(model.run_id == run_id).order_by(*order)).all()


def run_detail(session: Session, run: Run) -> dict[str, Any]:
    """Everything stored about one run, in the documented ``get_run`` shape."""
    rid = run.id
    audits = _rows(session, Audit, rid, Audit.id)
    exposures: dict[int, list[dict[str, Any]]] = defaultdict(list)
    stmt = (
        sa.select(Exposure)
        .join(Audit, Audit.id == Exposure.audit_id)
        .where(Audit.run_id == rid)
        .order_by(Exposure.id)
    )
    for exp in session.scalars(stmt):
        exposures[exp.audit_id].append(row_dict(exp, skip=("id", "audit_id")))
    return {
        "run": row_dict(run, skip=()),
        "clients": [
            row_dict(c, skip=("id", "run_id"))
            for c in _rows(session, Client, rid, Client.client_index)
        ],
        "rounds": [
            row_dict(r, skip=("id", "run_id"))
            for r in _rows(session, Round, rid, Round.server_round)
        ],
        "metrics": [
            {"round": m.server_round, "client": m.client_index, "name": m.name, "value": out_value(m.value)}
            for m in _rows(session, Metric, rid, Metric.id)
        ],
        "privacy_ledger": [
            row_dict(e, skip=("id", "run_id"))
            for e in _rows(session, LedgerEntry, rid, LedgerEntry.server_round, LedgerEntry.client_index)
        ],
        "he_records": [row_dict(h, skip=("id", "run_id")) for h in _rows(session, HERecord, rid, HERecord.id)],
        "events": [row_dict(e, skip=("id", "run_id")) for e in _rows(session, ClientEvent, rid, ClientEvent.id)],
        "canaries": [row_dict(c, skip=("id", "run_id")) for c in _rows(session, Canary, rid, Canary.id)],
        "audits": [{**row_dict(a), "exposures": exposures.get(a.id, [])} for a in audits],
        "epsilon_bounds": [row_dict(b) for b in _rows(session, EpsilonBound, rid, EpsilonBound.id)],
        "artifacts": [row_dict(a) for a in _rows(session, Artifact, rid, Artifact.id)],
    }


def _final_utility(session: Session) -> dict[tuple[str, str], float | None]:
    """Per (run, metric name), the global value of the highest round.

    Rows with a round beat rows without one; ties go to the latest insert.
    """
    stmt = sa.select(Metric.run_id, Metric.name, Metric.server_round, Metric.id, Metric.value).where(
        Metric.client_index.is_(None), Metric.name.in_(UTILITY_METRICS)
    )
    best: dict[tuple[str, str], tuple[tuple[int, int, int], float | None]] = {}
    for run_id, name, server_round, row_id, value in session.execute(stmt):
        key = (run_id, name)
        rank = (server_round is not None, server_round or 0, row_id)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, value)
    return {key: out_value(value) for key, (_, value) in best.items()}


def run_summaries(session: Session) -> list[dict[str, Any]]:
    """One summary dict per run, newest first (the ``list_runs`` shape)."""
    runs = session.scalars(sa.select(Run).order_by(Run.created_at.desc(), Run.id)).all()
    utility = _final_utility(session)
    max_eps: dict[str, float] = {
        rid: value
        for rid, value in session.execute(
            sa.select(LedgerEntry.run_id, sa.func.max(LedgerEntry.epsilon)).group_by(LedgerEntry.run_id)
        )
    }
    worst: dict[str, float] = {
        rid: value
        for rid, value in session.execute(
            sa.select(Audit.run_id, sa.func.max(Exposure.exposure_rank))
            .join(Exposure, Exposure.audit_id == Audit.id)
            # Headline = released models only: the teacher and the fine-tuned baseline never leave.
            .where(Audit.model.in_(RELEASED_MODELS))
            .group_by(Audit.run_id)
        )
    }
    flagged_runs = set(
        session.scalars(sa.select(EpsilonBound.run_id).where(EpsilonBound.flagged.is_(True)).distinct())
    )
    out: list[dict[str, Any]] = []
    for run in runs:
        summary = row_dict(run, skip=("config", "privacy_statement", "error", "run_dir"))
        summary.update(
            final_perplexity=utility.get((run.id, "perplexity")),
            final_accuracy=utility.get((run.id, "accuracy")),
            max_epsilon=out_value(max_eps.get(run.id)),
            worst_exposure=out_value(worst.get(run.id)),
            eps_lb_exceeds_claim=EPS_LB_FLAG in (run.flags or []) or run.id in flagged_runs,
        )
        out.append(summary)
    return out


def latest_ledger(session: Session, run_id: str) -> dict[int, dict[str, Any]]:
    """Per client index, that client's ledger row of its highest round."""
    result: dict[int, dict[str, Any]] = {}
    for entry in _rows(session, LedgerEntry, run_id, LedgerEntry.server_round, LedgerEntry.id):
        # Ordered by round, so later rows overwrite earlier ones.
        result[entry.client_index] = row_dict(entry, skip=("id", "run_id"))
    return result
