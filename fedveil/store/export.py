"""One run's rows, table by table, for export (``fedveil export``).

Every table of the schema that belongs to a run is exported whole: ``runs`` (the run's row), the tables
with a ``run_id`` column, and the tables that hang off those by a foreign key (``exposures`` through
``audits``). Column names are the schema's; values are JSON-ready (timestamps as ISO strings, JSON columns
as Python data). Nothing is renamed or dropped, so a reader who knows the schema (README, "Store
schema") knows the export. The ``canaries`` table holds canary secrets: whoever writes the export writes it
to owner-only files (see :mod:`fedveil.commands.export_cmd`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedveil.store.convert import out_value
from fedveil.store.models import Base

__all__ = ["SECRET_TABLES", "run_columns", "run_tables"]

SECRET_TABLES = frozenset({"canaries"})  # rows that must stay 0600 wherever they are written


def _selector(table: sa.Table, run_id: str) -> sa.Select[Any] | None:
    """The rows of ``table`` that belong to ``run_id``, or None when the table is not per run."""
    if table.name == "runs":
        return sa.select(table).where(table.c.id == run_id)
    if "run_id" in table.c:
        return sa.select(table).where(table.c.run_id == run_id)
    for fk in table.foreign_keys:  # a child of a per-run table: join through its parent
        parent = fk.column.table
        if "run_id" in parent.c:
            return (sa.select(table).join(parent, fk.parent == fk.column)
                    .where(parent.c.run_id == run_id))
    return None


def run_tables(session: Session, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """``{table name: [row as {column: value}, ...]}`` for every per-run table, in schema order.

    Rows are ordered by primary key so two exports of one run are identical.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for table in Base.metadata.sorted_tables:
        query = _selector(table, run_id)
        if query is None:
            continue
        query = query.order_by(*table.primary_key.columns)
        out[table.name] = [{col.name: out_value(row._mapping[col]) for col in table.columns}
                           for row in session.execute(query)]
    return out


def run_columns() -> dict[str, list[str]]:
    """``{table name: [column, ...]}`` of every per-run table (the header of an empty export, too)."""
    probe = "\x00"  # any id: only whether the table is per run matters here
    return {t.name: [c.name for c in t.columns] for t in Base.metadata.sorted_tables
            if _selector(t, probe) is not None}
