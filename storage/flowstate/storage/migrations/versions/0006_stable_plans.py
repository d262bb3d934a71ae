"""Stable plans: a flow looked up by id is always found through the primary key.

Revision ID: 0006_stable_plans
Revises: 0005_tenant_definitions
Create Date: 2026-12-02

Before any ANALYZE (a fresh database, or a table that grew faster than autoanalyze), the
planner picked ``ix_flows_tenant_retry_count`` for the write path's lock statement: the
row-level-security condition ``client_account_id = current_setting(...)`` and the statement's
own tenant filter are both usable as conditions on the tenant indexes, and without statistics
four equalities on the tenant look far more selective than the one on ``id``. Each transition
then read every flow of the tenant (seen as 132k tuples read over ~1,100 mutations) until
autoanalyze ran.

The policy on ``flows`` now compares the tenant as one row value (``(a, b) IS NOT DISTINCT
FROM (x, y)``): the same rows pass (the columns are NOT NULL, an unset setting is NULL or ''
and matches nothing), but the comparison is not an index condition, so it never steers the
planner. Statements that look a flow up by id write their own tenant filter the same way
(`flowstate.storage.statements`), leaving the primary key as the only index that matches;
statements that list a tenant's flows keep their plain equalities and the tenant indexes.
``flowstate_get_flow`` (migration 0003) gets the same filter. The WITH CHECK clause is
unchanged (it is checked on written rows, never planned).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006_stable_plans"
down_revision: str | Sequence[str] | None = "0005_tenant_definitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROW_MATCH = """(client_account_id, engagement_id) IS NOT DISTINCT FROM (
                current_setting('flowstate.client_account_id', true),
                current_setting('flowstate.engagement_id', true))"""
_EQUALITIES = """client_account_id = current_setting('flowstate.client_account_id', true)
                AND engagement_id = current_setting('flowstate.engagement_id', true)"""
_ENTER = """
    PERFORM set_config('role', 'flowstate_app', true),
            set_config('flowstate.client_account_id', p_account, true),
            set_config('flowstate.engagement_id', p_engagement, true);
"""


def _get_flow(tenant_filter: str) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION flowstate_get_flow(
            p_account text, p_engagement text, p_flow_id uuid
        )
        RETURNS SETOF flows LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
            {_ENTER}
            RETURN QUERY SELECT * FROM flows
                WHERE id = p_flow_id AND {tenant_filter};
        END
        $$;
        """


def upgrade() -> None:
    """Tenant comparisons on flows that no index can serve: the policy and the read function."""
    op.execute(f"ALTER POLICY tenant_isolation ON flows USING ({_ROW_MATCH})")
    op.execute(
        _get_flow(
            "(client_account_id, engagement_id) IS NOT DISTINCT FROM (p_account, p_engagement)"
        )
    )


def downgrade() -> None:
    """The policy and the function as migrations 0001 and 0003 made them."""
    op.execute(f"ALTER POLICY tenant_isolation ON flows USING ({_EQUALITIES})")
    op.execute(_get_flow("client_account_id = p_account AND engagement_id = p_engagement"))
