"""Single-round-trip tenant reads: flowstate_get_flow and flowstate_flow_history.

Revision ID: 0003_read_functions
Revises: 0002_history_phase_progress
Create Date: 2026-11-25

A read of one flow used three round trips (BEGIN with the app role and tenant settings, the
SELECT, COMMIT). These SECURITY INVOKER functions do the same in one statement, called in
autocommit: they switch to the app role and set the tenant settings transaction-locally (the
statement is its own transaction), then run their query, which is planned after the switch, so
row-level security applies exactly as in a store transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_read_functions"
down_revision: str | Sequence[str] | None = "0002_history_phase_progress"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ENTER = """
    PERFORM set_config('role', 'flowstate_app', true),
            set_config('flowstate.client_account_id', p_account, true),
            set_config('flowstate.engagement_id', p_engagement, true);
"""


def upgrade() -> None:
    """Create the two read functions."""
    op.execute(
        f"""
        CREATE FUNCTION flowstate_get_flow(p_account text, p_engagement text, p_flow_id uuid)
        RETURNS SETOF flows LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
            {_ENTER}
            RETURN QUERY SELECT * FROM flows
                WHERE id = p_flow_id
                  AND client_account_id = p_account AND engagement_id = p_engagement;
        END
        $$;
        """
    )
    # Raises no_data_found (P0002) when the tenant has no such flow, so that "no entries after
    # this version" and "no such flow" stay one round trip apart.
    op.execute(
        f"""
        CREATE FUNCTION flowstate_flow_history(
            p_account text, p_engagement text, p_flow_id uuid, p_after integer, p_limit integer
        )
        RETURNS SETOF flow_history LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
            {_ENTER}
            RETURN QUERY SELECT * FROM flow_history
                WHERE flow_id = p_flow_id
                  AND client_account_id = p_account AND engagement_id = p_engagement
                  AND version > p_after
                ORDER BY version
                LIMIT p_limit;
            IF NOT FOUND AND NOT EXISTS (
                SELECT 1 FROM flows
                WHERE id = p_flow_id
                  AND client_account_id = p_account AND engagement_id = p_engagement
            ) THEN
                RAISE EXCEPTION 'flow not found' USING ERRCODE = 'no_data_found';
            END IF;
        END
        $$;
        """
    )


def downgrade() -> None:
    """Drop the two read functions."""
    op.execute("DROP FUNCTION flowstate_flow_history(text, text, uuid, integer, integer)")
    op.execute("DROP FUNCTION flowstate_get_flow(text, text, uuid)")
