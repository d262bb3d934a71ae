"""Child flows and cross-flow dependencies: the parent link and external dependencies of a flow.

Revision ID: 0013_child_flows
Revises: 0012_approvals_alerts
Create Date: 2026-12-02

`flows` gains `parent_flow_id` / `parent_phase` (the parent's child_flow phase this flow
follows; NULL for a root flow) and `external_dependencies` (JSON list of ``{phase, flow_id,
flow_phase}``: phases of other flows of the tenant that a phase waits for). A partial index on
(tenant, parent_flow_id) serves "the children of a flow" (ListFlows by parent, GetFlow with
children, the children-per-flow limit). Which child a parent phase follows lives in the
phase's JSON details (`child_flow_id`), like the rest of a phase. Columns are nullable or have
a default, so existing rows need no rewrite; downgrade drops them (child links are lost).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0013_child_flows"
down_revision: str | Sequence[str] | None = "0012_approvals_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the parent link, the external dependencies and the children index."""
    op.add_column("flows", sa.Column("parent_flow_id", UUID(as_uuid=False), nullable=True))
    op.add_column("flows", sa.Column("parent_phase", sa.Text(), nullable=True))
    op.add_column(
        "flows",
        sa.Column(
            "external_dependencies",
            JSONB(),
            nullable=False,
            server_default=sa.text("'[]'::jsonb"),
        ),
    )
    op.create_index(
        "ix_flows_client_account_id_engagement_id_parent_flow_id",
        "flows",
        ["client_account_id", "engagement_id", "parent_flow_id"],
        postgresql_where=sa.text("parent_flow_id IS NOT NULL"),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_flows_client_account_id_engagement_id_parent_flow_id", table_name="flows")
    for column in ("external_dependencies", "parent_phase", "parent_flow_id"):
        op.drop_column("flows", column)
