"""A partial index for the operators' cross-tenant count of stuck flows.

Revision ID: 0004_stuck_flows_index
Revises: 0003_read_functions
Create Date: 2026-11-26

Every other index of `flows` starts with the tenant, so counting the flows of all tenants that
have not changed for a while (the `flowstate_stuck_flows` gauge) was a sequential scan. This
index holds only flows that are not terminal, by status and last change.

Like every migration it runs in one transaction, and a plain CREATE INDEX blocks writes to
`flows` while it builds. On a large database create it first without blocking, then migrate
(the migration skips an index that exists):

    CREATE INDEX CONCURRENTLY ix_flows_status_updated_at ON flows (status, updated_at)
        WHERE status NOT IN ('cancelled', 'completed');
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_stuck_flows_index"
down_revision: str | Sequence[str] | None = "0003_read_functions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration must not change when the code's constants do.
_ACTIVE_FLOW = "status NOT IN ('cancelled', 'completed')"


def upgrade() -> None:
    """Create ix_flows_status_updated_at (status, updated_at) over non-terminal flows."""
    op.create_index(
        "ix_flows_status_updated_at",
        "flows",
        ["status", "updated_at"],
        postgresql_where=sa.text(_ACTIVE_FLOW),
        if_not_exists=True,
    )


def downgrade() -> None:
    """Drop ix_flows_status_updated_at."""
    op.drop_index("ix_flows_status_updated_at", table_name="flows", if_exists=True)
