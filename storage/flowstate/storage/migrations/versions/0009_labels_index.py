"""A GIN index on flow labels, for label filters (``labels.team = "x"``).

Revision ID: 0009_labels_index
Revises: 0008_history_partitions
Create Date: 2026-12-02

A label filter compiles to ``labels @> '{"team": "x"}'`` (`flowstate.storage.filters`), which
this index (``jsonb_path_ops``, like ``ix_flows_phase_states``) serves; the planner combines it
with the tenant's btree index in a bitmap AND. docs/storage.md, "Label filters", has the
measurement that chose it over a separate label table.

On a large database create it first without blocking writes, then migrate (the migration skips
an index that exists):

    CREATE INDEX CONCURRENTLY ix_flows_labels ON flows USING gin (labels jsonb_path_ops);
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009_labels_index"
down_revision: str | Sequence[str] | None = "0008_history_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ix_flows_labels (GIN, jsonb_path_ops) on flows.labels."""
    op.create_index(
        "ix_flows_labels",
        "flows",
        ["labels"],
        postgresql_using="gin",
        postgresql_ops={"labels": "jsonb_path_ops"},
        if_not_exists=True,
    )


def downgrade() -> None:
    """Drop ix_flows_labels."""
    op.drop_index("ix_flows_labels", table_name="flows", if_exists=True)
