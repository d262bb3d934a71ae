"""Approvals and alerts: decisions and alerts in history, deadlines and alerts on flows.

Revision ID: 0012_approvals_alerts
Revises: 0011_bulk_actions
Create Date: 2026-12-02

- `flow_history.approval` (JSONB, NULL but for DECISION entries) and `flow_history.alert`
  (JSONB, NULL but for ALERT entries);
- `flows.deadline` (when the flow should be finished), `flows.alerts` (the alerts in force, a
  JSON list) and `flows.alert_due_at` (the earliest deadline or approval timeout not handled
  yet), with the partial index the alert scan reads (`ix_flows_alert_due_at`).

Existing rows get NULL / ``[]``: flows created before have no deadline and no alert.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012_approvals_alerts"
down_revision: str | Sequence[str] | None = "0011_bulk_actions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    """Add the columns and the alert scan's index."""
    op.add_column("flow_history", sa.Column("approval", postgresql.JSONB(), nullable=True))
    op.add_column("flow_history", sa.Column("alert", postgresql.JSONB(), nullable=True))
    op.add_column("flows", sa.Column("deadline", _TIMESTAMP, nullable=True))
    op.add_column(
        "flows",
        sa.Column(
            "alerts", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")
        ),
    )
    op.add_column("flows", sa.Column("alert_due_at", _TIMESTAMP, nullable=True))
    op.create_index(
        "ix_flows_alert_due_at",
        "flows",
        ["alert_due_at"],
        postgresql_where=sa.text("alert_due_at IS NOT NULL"),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_flows_alert_due_at", table_name="flows")
    op.drop_column("flows", "alert_due_at")
    op.drop_column("flows", "alerts")
    op.drop_column("flows", "deadline")
    op.drop_column("flow_history", "alert")
    op.drop_column("flow_history", "approval")
