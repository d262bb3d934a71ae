"""Webhook subscriptions: per tenant, each with its delivery cursor and lease.

Revision ID: 0010_webhooks
Revises: 0009_labels_index
Create Date: 2026-12-02

One table, `webhook_subscriptions` (see `flowstate.storage.schema`). Deliveries are read from
`flow_history` through the tenant change log by each subscription's cursor: no outbox table.
Row-level security as on the other tenant tables; the app role may read, create, change and
delete its tenant's subscriptions. The delivery loop claims leases across tenants as the
connecting user (like the stuck-flows count), never as the app role.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010_webhooks"
down_revision: str | Sequence[str] | None = "0009_labels_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "flowstate_app"  # frozen here on purpose: a migration never follows later code
_TIMESTAMP = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    """Create `webhook_subscriptions` with its indexes, RLS policy and grants."""
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("client_account_id", sa.Text(), nullable=False),
        sa.Column("engagement_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column(
            "statuses",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        sa.Column("definition_name", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("cursor_txid", sa.BigInteger(), nullable=False),
        sa.Column("cursor_seq", sa.BigInteger(), nullable=False),
        sa.Column(
            "consecutive_failures", sa.Integer(), nullable=False, server_default=sa.text("0")
        ),
        sa.Column("delivered_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("last_attempt_at", _TIMESTAMP, nullable=True),
        sa.Column("last_success_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", _TIMESTAMP, nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_subscriptions"),
        sa.CheckConstraint(
            "state IN ('ACTIVE', 'DISABLED')", name="ck_webhook_subscriptions_state_known"
        ),
    )
    op.create_index(
        "ix_webhook_subscriptions_tenant_created_at",
        "webhook_subscriptions",
        ["client_account_id", "engagement_id", "created_at", "id"],
    )
    op.create_index("ix_webhook_subscriptions_state", "webhook_subscriptions", ["state"])
    op.execute("ALTER TABLE webhook_subscriptions ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE POLICY tenant_isolation ON webhook_subscriptions TO {APP_ROLE}
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
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_subscriptions TO {APP_ROLE}")


def downgrade() -> None:
    """Drop `webhook_subscriptions` (its subscriptions are lost; history is untouched)."""
    op.execute(f"REVOKE ALL ON webhook_subscriptions FROM {APP_ROLE}")
    op.drop_table("webhook_subscriptions")
