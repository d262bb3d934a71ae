"""Timers of flows (phase timeouts, heartbeats, automatic retries) and history's next attempt.

Revision ID: 0007_flow_timers
Revises: 0006_stable_plans
Create Date: 2026-12-02

`flow_timers` holds one row per (flow, phase, kind) a flow's policies need (docs/timers.md).
Tenant transactions (as the app role, under row-level security like the other tenant tables)
write them with the flow's change; the timer loop claims due rows across tenants as the
connecting user with ``FOR UPDATE SKIP LOCKED`` through the two partial indexes. Rows go with
their flow (ON DELETE CASCADE). `flow_history.next_attempt_at` records when a failure's
automatic retry is due.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_flow_timers"
down_revision: str | Sequence[str] | None = "0006_stable_plans"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "flowstate_app"  # frozen here on purpose: a migration never follows later code
_TIMESTAMP = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    """Create flow_timers (with RLS) and add flow_history.next_attempt_at."""
    op.add_column("flow_history", sa.Column("next_attempt_at", _TIMESTAMP, nullable=True))
    op.create_table(
        "flow_timers",
        sa.Column("flow_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("client_account_id", sa.Text(), nullable=False),
        sa.Column("engagement_id", sa.Text(), nullable=False),
        sa.Column("due_at", _TIMESTAMP, nullable=False),
        sa.Column("flow_version", sa.Integer(), nullable=False),
        sa.Column("claimed_until", _TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("flow_id", "phase", "kind", name="pk_flow_timers"),
        sa.ForeignKeyConstraint(
            ["flow_id"],
            ["flows.id"],
            name="fk_flow_timers_flow_id_flows",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_flow_timers_due_at",
        "flow_timers",
        ["due_at"],
        postgresql_where=sa.text("claimed_until IS NULL"),
    )
    op.create_index(
        "ix_flow_timers_claimed_until",
        "flow_timers",
        ["claimed_until"],
        postgresql_where=sa.text("claimed_until IS NOT NULL"),
    )
    op.execute("ALTER TABLE flow_timers ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE POLICY tenant_isolation ON flow_timers TO {APP_ROLE}
        USING (
            client_account_id = current_setting('flowstate.client_account_id', true)
            AND engagement_id = current_setting('flowstate.engagement_id', true)
        )
        WITH CHECK (
            client_account_id = current_setting('flowstate.client_account_id', true)
            AND engagement_id = current_setting('flowstate.engagement_id', true)
        )
        """
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON flow_timers TO {APP_ROLE}")


def downgrade() -> None:
    """Drop flow_timers and flow_history.next_attempt_at (pending timers are lost)."""
    op.drop_table("flow_timers")
    op.drop_column("flow_history", "next_attempt_at")
