"""Each history entry records the flow as it left it: `phase_states_after`, `error_codes_after`.

Revision ID: 0017_history_facts
Revises: 0016_purge_counts
Create Date: 2026-12-02

A filter on changes (WatchFlows, webhooks: docs/filters.md) is evaluated on the flow as each
change left it. The entry held the status and the changed phase's new state; the other phases'
states and the open error codes were taken from the flow when the change was read, which a
later change may already have moved. The writer now stores them with the entry, in the same
statement: every phase's state (``{phase: state}``, the shape of `flows.phase_states`) and the
sorted codes of the phases' open errors. Both are nullable and have no default, so adding them
rewrites nothing; rows written before stay NULL (their changes are filtered as before).

Downgrade drops both columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017_history_facts"
down_revision: str | Sequence[str] | None = "0016_purge_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add both columns (to every partition: they are the partitioned table's)."""
    op.add_column(
        "flow_history",
        sa.Column("phase_states_after", postgresql.JSONB(), nullable=True),
    )
    op.add_column(
        "flow_history",
        sa.Column("error_codes_after", postgresql.ARRAY(sa.Text()), nullable=True),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_column("flow_history", "error_codes_after")
    op.drop_column("flow_history", "phase_states_after")
