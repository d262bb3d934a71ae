"""Bulk actions: one row per action, one per flow it took (docs/bulk-actions.md).

Revision ID: 0011_bulk_actions
Revises: 0010_webhooks
Create Date: 2026-12-02

`bulk_actions` holds an action, its counts and the lease of the server working on it
(`lease_owner`, `lease_until`: another replica takes over when the lease has expired);
`bulk_action_items` the flows it took when it started, in order, each with its outcome once
taken. Tenant transactions (the app role, row-level security like the other tenant tables)
start, read and cancel actions; the worker claims and records across tenants as the connecting
user, like the timer loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011_bulk_actions"
down_revision: str | Sequence[str] | None = "0010_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "flowstate_app"  # frozen here on purpose: a migration never follows later code
_TIMESTAMP = postgresql.TIMESTAMP(timezone=True)
_UUID = postgresql.UUID(as_uuid=False)
_TENANT = """
        client_account_id = current_setting('flowstate.client_account_id', true)
        AND engagement_id = current_setting('flowstate.engagement_id', true)
"""


def upgrade() -> None:
    """Create bulk_actions and bulk_action_items (with RLS)."""
    op.create_table(
        "bulk_actions",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("client_account_id", sa.Text(), nullable=False),
        sa.Column("engagement_id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=True),
        sa.Column("filter", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("fingerprint", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("refused", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until", _TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bulk_actions"),
    )
    op.create_index(
        "ix_bulk_actions_tenant_created_at",
        "bulk_actions",
        ["client_account_id", "engagement_id", "created_at"],
    )
    op.create_index(
        "ix_bulk_actions_request_id",
        "bulk_actions",
        ["client_account_id", "engagement_id", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id <> ''"),
    )
    op.create_index(
        "ix_bulk_actions_running",
        "bulk_actions",
        ["created_at"],
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "bulk_action_items",
        sa.Column("action_id", _UUID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("flow_id", _UUID, nullable=False),
        sa.Column("client_account_id", sa.Text(), nullable=False),
        sa.Column("engagement_id", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("error", postgresql.JSONB(), nullable=True),
        sa.Column("done_at", _TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("action_id", "position", name="pk_bulk_action_items"),
        sa.ForeignKeyConstraint(
            ["action_id"],
            ["bulk_actions.id"],
            name="fk_bulk_action_items_action_id_bulk_actions",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_bulk_action_items_pending",
        "bulk_action_items",
        ["action_id", "position"],
        postgresql_where=sa.text("outcome IS NULL"),
    )
    for table in ("bulk_actions", "bulk_action_items"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE}"
            f" USING ({_TENANT}) WITH CHECK ({_TENANT})"
        )
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {APP_ROLE}")


def downgrade() -> None:
    """Drop the bulk action tables (their history of actions is lost; flows are untouched)."""
    op.drop_table("bulk_action_items")
    op.drop_table("bulk_actions")
