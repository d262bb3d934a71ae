"""Definitions per tenant: a tenant column, row-level security, versions per (tenant, name).

Revision ID: 0005_tenant_definitions
Revises: 0004_stuck_flows_index
Create Date: 2026-12-02

`flow_definitions` gains `client_account_id` and `engagement_id`. Existing rows (the built-in
`discovery`) get the empty tenant ('', ''), which marks a built-in: visible to every tenant,
writable by none. The primary key becomes (client_account_id, engagement_id, name, version);
its index also serves "the latest version of a name for a tenant" (a backward scan).

The foreign key from `flows` to (name, version) goes: a name is no longer unique across
tenants. A flow's definition is resolved in its tenant's view (the tenant's own rows, then the
built-ins), which the store checks when it creates the flow; definitions are never updated nor
deleted (the app role may only SELECT and INSERT them), so the reference cannot dangle.
Every existing flow keeps its (name, version), which still resolves to the same built-in row.

Row-level security as on the other tenant tables, except that built-in rows are readable by
every tenant: a tenant reads its own rows and the built-ins, and inserts only its own.

Downgrade refuses while a tenant has registered a definition (it cannot be expressed in the old
schema without losing it); with only the built-ins it restores the old table exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0005_tenant_definitions"
down_revision: str | Sequence[str] | None = "0004_stuck_flows_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "flowstate_app"  # frozen here on purpose: a migration never follows later code
_FK = "fk_flows_definition_name_definition_version_flow_definitions"
_OWN = """
    client_account_id = current_setting('flowstate.client_account_id', true)
    AND engagement_id = current_setting('flowstate.engagement_id', true)
"""


def upgrade() -> None:
    """Add the tenant to definitions, re-key them, and let tenants read built-ins and their own."""
    for column in ("client_account_id", "engagement_id"):
        op.add_column(
            "flow_definitions",
            sa.Column(column, sa.Text(), nullable=False, server_default=sa.text("''")),
        )
    op.drop_constraint(_FK, "flows", type_="foreignkey")
    op.drop_constraint("pk_flow_definitions", "flow_definitions", type_="primary")
    op.create_primary_key(
        "pk_flow_definitions",
        "flow_definitions",
        ["client_account_id", "engagement_id", "name", "version"],
    )
    op.execute("ALTER TABLE flow_definitions ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE POLICY tenant_or_builtin ON flow_definitions TO {APP_ROLE}
        USING ((client_account_id = '' AND engagement_id = '') OR ({_OWN}))
        WITH CHECK ({_OWN})
        """
    )
    op.execute(f"GRANT INSERT ON flow_definitions TO {APP_ROLE}")


def downgrade() -> None:
    """Back to built-in definitions only; refused while a tenant has registered one."""
    bind = op.get_bind()
    owned = bind.execute(
        sa.text("SELECT count(*) FROM flow_definitions WHERE client_account_id <> ''")
    ).scalar_one()
    if owned:
        raise CommandError(
            f"cannot downgrade below 0005_tenant_definitions: {owned} tenant definition "
            "version(s) exist, which the older schema cannot hold"
        )
    op.execute(f"REVOKE INSERT ON flow_definitions FROM {APP_ROLE}")
    op.execute("DROP POLICY tenant_or_builtin ON flow_definitions")
    op.execute("ALTER TABLE flow_definitions DISABLE ROW LEVEL SECURITY")
    op.drop_constraint("pk_flow_definitions", "flow_definitions", type_="primary")
    op.create_primary_key("pk_flow_definitions", "flow_definitions", ["name", "version"])
    op.create_foreign_key(
        _FK,
        "flows",
        "flow_definitions",
        ["definition_name", "definition_version"],
        ["name", "version"],
    )
    op.drop_column("flow_definitions", "engagement_id")
    op.drop_column("flow_definitions", "client_account_id")
