"""Write-side helpers: validate row objects and turn them into ORM objects.

Kept apart from :class:`fedveil.store.api.Store` so that the store class stays
a thin, documented facade; none of these functions commits anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedveil.store.convert import (
    check_choice,
    check_count,
    check_number,
    nan_to_none,
    opt_number,
)
from fedveil.store.errors import StoreError
from fedveil.store.models import (
    EVENT_KINDS,
    ROUND_STATUSES,
    Artifact,
    Canary,
    ClientEvent,
    Exposure,
    HERecord,
    LedgerEntry,
    Metric,
    Round,
    Run,
)
from fedveil.store.rows import CanaryRow, EventRow, ExposureRow, HERow, LedgerRow, MetricRow

RowT = TypeVar("RowT", MetricRow, LedgerRow, HERow, EventRow)


def with_round(rows: Sequence[RowT], server_round: int, what: str) -> list[RowT]:
    """Rows with ``server_round`` filled in; a row naming another round is an error."""
    out: list[RowT] = []
    for row in rows:
        if row.server_round is None:
            row = dataclasses.replace(row, server_round=server_round)
        elif row.server_round != server_round:
            raise ValueError(
                f"{what} row {row!r} names round {row.server_round}, but round {server_round} is being recorded"
            )
        out.append(row)
    return out


def metric(run_id: str, row: MetricRow) -> Metric:
    """ORM object of a metric row."""
    if not row.name:
        raise ValueError("metric name must be a non-empty string")
    return Metric(
        run_id=run_id,
        server_round=row.server_round,
        client_index=row.client_index,
        name=row.name,
        value=nan_to_none(row.value),
    )


def ledger(run_id: str, row: LedgerRow) -> LedgerEntry:
    """ORM object of a privacy-ledger row (every number must be a real number)."""
    if row.server_round is None:
        raise ValueError(f"ledger row {row!r} needs a server_round")
    return LedgerEntry(
        run_id=run_id,
        client_index=check_count(row.client_index, "ledger client_index"),
        server_round=row.server_round,
        epsilon=check_number(row.epsilon, "ledger epsilon"),
        delta=check_number(row.delta, "ledger delta"),
        noise_multiplier=check_number(row.noise_multiplier, "ledger noise_multiplier"),
        sample_rate=check_number(row.sample_rate, "ledger sample_rate"),
        steps=check_count(row.steps, "ledger steps"),
        accountant=row.accountant,
        max_grad_norm=check_number(row.max_grad_norm, "ledger max_grad_norm"),
        grad_sample_mode=row.grad_sample_mode,
    )


def he_record(run_id: str, row: HERow) -> HERecord:
    """ORM object of an HE cost row."""
    if row.server_round is None:
        raise ValueError(f"HE row {row!r} needs a server_round")
    return HERecord(
        run_id=run_id,
        server_round=row.server_round,
        client_index=row.client_index,
        profile=row.profile,
        bytes_sent=check_count(row.bytes_sent, "HE bytes_sent"),
        encrypt_seconds=opt_number(row.encrypt_seconds, "HE encrypt_seconds"),
        aggregate_seconds=opt_number(row.aggregate_seconds, "HE aggregate_seconds"),
        decrypt_seconds=opt_number(row.decrypt_seconds, "HE decrypt_seconds"),
        max_abs_error=opt_number(row.max_abs_error, "HE max_abs_error"),
    )


def event(run_id: str, row: EventRow) -> ClientEvent:
    """ORM object of a client event row."""
    check_choice(row.kind, EVENT_KINDS, "event kind")
    return ClientEvent(
        run_id=run_id,
        server_round=row.server_round,
        client_index=row.client_index,
        node_id=None if row.node_id is None else str(row.node_id),
        kind=row.kind,
        reason=str(row.reason),
    )


def canary(run_id: str, row: CanaryRow) -> Canary:
    """ORM object of a canary row."""
    return Canary(
        run_id=run_id,
        canary_id=row.canary_id,
        format_index=check_count(row.format_index, "canary format_index"),
        template=row.template,
        secret=row.secret,
        client_index=row.client_index,
        repetitions=check_count(row.repetitions, "canary repetitions"),
        inserted=bool(row.inserted),
        one_run=bool(row.one_run),
    )


def exposure(audit_id: int, row: ExposureRow) -> Exposure:
    """ORM object of an exposure row of audit ``audit_id``."""
    return Exposure(
        audit_id=audit_id,
        canary_id=row.canary_id,
        repetitions=check_count(row.repetitions, "exposure repetitions"),
        log_perplexity_bits=check_number(row.log_perplexity_bits, "exposure log_perplexity_bits"),
        exposure_rank=check_number(row.exposure_rank, "exposure exposure_rank"),
        exposure_extrapolated=opt_number(row.exposure_extrapolated, "exposure exposure_extrapolated"),
        extrapolated_is_bound=bool(row.extrapolated_is_bound),
        n_ref=check_count(row.n_ref, "exposure n_ref"),
    )


def insert_round(
    session: Session,
    run: Run,
    server_round: int,
    *,
    status: str,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    counts: dict[str, int],
    wall_seconds: float | None,
    metrics: Sequence[MetricRow],
    ledger_rows: Sequence[LedgerRow],
    he: Sequence[HERow],
    events: Sequence[EventRow],
) -> None:
    """Add a round and everything reported with it to ``session`` (no commit).

    A round already stored as failed is replaced (with its metrics, ledger and
    HE rows: ledger counters are cumulative, so the retry supersedes them);
    events are a log and stay. A round stored as completed is an error.
    """
    check_choice(status, ROUND_STATUSES, "round status")
    server_round = check_count(server_round, "server_round")
    checked = {key: check_count(value, key) for key, value in counts.items()}
    if wall_seconds is None:
        wall_seconds = (finished_at - started_at).total_seconds()
    objects: list[Any] = [metric(run.id, r) for r in with_round(metrics, server_round, "metric")]
    objects += [ledger(run.id, r) for r in with_round(ledger_rows, server_round, "ledger")]
    objects += [he_record(run.id, r) for r in with_round(he, server_round, "HE")]
    objects += [event(run.id, r) for r in with_round(events, server_round, "event")]
    previous = session.scalar(
        sa.select(Round).where(Round.run_id == run.id, Round.server_round == server_round)
    )
    if previous is not None:
        if previous.status == "completed":
            raise StoreError(f"round {server_round} of run {run.id!r} is already recorded as completed")
        for model in (Metric, LedgerEntry, HERecord):
            session.execute(sa.delete(model).where(model.run_id == run.id, model.server_round == server_round))
        session.delete(previous)
        session.flush()
    session.add(
        Round(
            run_id=run.id,
            server_round=server_round,
            status=status,
            started_at=started_at,
            finished_at=finished_at,
            wall_seconds=check_number(wall_seconds, "round wall_seconds"),
            **checked,
        )
    )
    session.add_all(objects)
    if status == "completed" and server_round > run.last_complete_round:
        run.last_complete_round = server_round
    session.flush()


def file_digest(path: str | os.PathLike[str]) -> tuple[str, str, int]:
    """Absolute path, SHA-256 hex digest and size in bytes of a file.

    Raises
    ------
    FileNotFoundError
        ``path`` is not an existing regular file.
    """
    target = Path(path).expanduser().resolve()
    if not target.is_file():
        raise FileNotFoundError(f"artifact {os.fspath(path)!r} is not an existing file")
    digest = hashlib.sha256()
    size = 0
    with target.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return str(target), digest.hexdigest(), size


def artifact(run_id: str, kind: str, path: str | os.PathLike[str]) -> Artifact:
    """ORM object of an artifact, hashing the file now."""
    resolved, sha, size = file_digest(path)
    return Artifact(run_id=run_id, kind=kind, path=resolved, sha256=sha, bytes=size)

