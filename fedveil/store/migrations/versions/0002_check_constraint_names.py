"""Fix doubly prefixed CHECK constraint names (``ck_runs_ck_runs_status``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05

Revision 0001 passed full names (``ck_runs_status``) where the models' naming
convention ``ck_%(table_name)s_%(constraint_name)s`` expects the short one, so
Alembic applied the convention a second time. This revision renames every such
constraint to the name the models give it. The CHECK expressions themselves
are read back from the database, so nothing but the names changes.

PostgreSQL renames in place (``ALTER TABLE ... RENAME CONSTRAINT``); SQLite
cannot alter constraints, so its tables are rebuilt in batch mode (copy, drop,
rename), rows, indexes and foreign keys included.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tables with CHECK constraints in 0001 and the short names the convention completes. Fixed here on purpose:
# a migration must not follow the models as they move on.
_CHECKS: dict[str, tuple[str, ...]] = {
    "runs": ("status",),
    "clients": ("teacher_provenance",),
    "rounds": ("status",),
    "client_events": ("kind",),
    "audits": ("kind", "model"),
    "epsilon_bounds": ("method",),
}


def _doubled(table: str, short: str) -> str:
    return f"ck_{table}_ck_{table}_{short}"


def _fixed(table: str, short: str) -> str:
    return f"ck_{table}_{short}"


def _rename(pairs: dict[str, list[tuple[str, str]]]) -> None:
    """Rename CHECK constraints, ``{table: [(old, new), ...]}``; missing old names are left alone."""
    if context.is_offline_mode():
        # --sql: nothing to inspect; after 0001 every old name exists, and only PostgreSQL can rename in place.
        if op.get_context().dialect.name == "sqlite":
            raise NotImplementedError("revision 0002 rebuilds SQLite tables and needs a live connection")
        for table, renames in pairs.items():
            for old, new in renames:
                op.execute(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{old}" TO "{new}"')
        return
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table, renames in pairs.items():
        present = {ck["name"]: ck["sqltext"] for ck in inspector.get_check_constraints(table)}
        todo = [(old, new) for old, new in renames if old in present]
        if not todo:
            continue
        if bind.dialect.name == "sqlite":
            # recreate="always": SQLite has no ALTER CONSTRAINT, the table is copied under the new definition.
            with op.batch_alter_table(table, recreate="always") as batch:
                for old, new in todo:
                    # op.f(): both names are final, the naming convention must not prefix them again.
                    batch.drop_constraint(op.f(old), type_="check")
                    batch.create_check_constraint(op.f(new), sa.text(present[old]))
        else:
            for old, new in todo:
                op.execute(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{old}" TO "{new}"')


def upgrade() -> None:
    """Rename ``ck_<t>_ck_<t>_<name>`` to ``ck_<t>_<name>``."""
    _rename({t: [(_doubled(t, s), _fixed(t, s)) for s in shorts] for t, shorts in _CHECKS.items()})


def downgrade() -> None:
    """Restore the names revision 0001 produced."""
    _rename({t: [(_fixed(t, s), _doubled(t, s)) for s in shorts] for t, shorts in _CHECKS.items()})
