"""Webhook filters in the filter language: `webhook_subscriptions.filter`.

Revision ID: 0014_webhook_filter
Revises: 0013_child_flows
Create Date: 2026-12-02

A webhook keeps the text of its filter (docs/filters.md, the language of ListFlows), checked
when it is created and evaluated by the delivery loop on each change, as WatchFlows does; ''
(every change, the default of existing rows) when it has none. Downgrade drops the column:
webhooks created with a filter then deliver every change their statuses and definition allow.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_webhook_filter"
down_revision: str | Sequence[str] | None = "0013_child_flows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the filter column."""
    op.add_column(
        "webhook_subscriptions",
        sa.Column("filter", sa.Text(), nullable=False, server_default=sa.text("''")),
    )


def downgrade() -> None:
    """Drop it again."""
    op.drop_column("webhook_subscriptions", "filter")
