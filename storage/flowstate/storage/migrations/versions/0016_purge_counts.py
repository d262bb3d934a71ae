"""The sanctioned delete counts the flows its own statement deleted.

Revision ID: 0016_purge_counts
Revises: 0015_archive_trees
Create Date: 2026-12-02

``flowstate_purge_archived_flows(ids)`` answered the number of flows it *chose* (the whole
trees `flowstate_purgeable_flows` named on its snapshot). Two purges of one tree at once (two
replicas' archivers) both choose it; the second waits for the first's row locks and then
deletes nothing, yet answered the tree's size again, so the `purged_flows` counter of the
replicas added up to more flows than were deleted. It now answers what its `DELETE FROM flows`
removed (``ROW_COUNT``, as it already did for history entries), and marks only archive records
that are not marked yet (the first purge's time stays).

Downgrade restores 0015's function.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016_purge_counts"
down_revision: str | Sequence[str] | None = "0015_archive_trees"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration must not change when another one does.
_PURGE_COUNTED = """
    CREATE OR REPLACE FUNCTION flowstate_purge_archived_flows(p_flow_ids uuid[])
    RETURNS TABLE (flows bigint, entries bigint) LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT AS $$
    DECLARE
        v_ids uuid[];
        v_flows bigint;
        v_entries bigint;
    BEGIN
        -- Whole trees only, and no flow a live flow depends on (flowstate_purgeable_flows).
        SELECT coalesce(array_agg(id), '{}') INTO v_ids
        FROM flowstate_purgeable_flows(p_flow_ids) AS id;
        PERFORM set_config('flowstate.sanctioned_delete', 'archived', true);
        DELETE FROM flow_history WHERE flow_id = ANY(v_ids);
        GET DIAGNOSTICS v_entries = ROW_COUNT;
        PERFORM set_config('flowstate.sanctioned_delete', '', true);
        DELETE FROM idempotency_keys WHERE flow_id = ANY(v_ids);
        -- A concurrent purge of the same tree that committed first leaves nothing here to
        -- delete: count the rows this statement removed, not the ones chosen above.
        DELETE FROM flows WHERE id = ANY(v_ids);
        GET DIAGNOSTICS v_flows = ROW_COUNT;
        UPDATE flow_archives SET purged_at = now()
        WHERE flow_id = ANY(v_ids) AND purged_at IS NULL;
        RETURN QUERY SELECT v_flows, v_entries;
    END
    $$;
"""

_PURGE_0015 = """
    CREATE OR REPLACE FUNCTION flowstate_purge_archived_flows(p_flow_ids uuid[])
    RETURNS TABLE (flows bigint, entries bigint) LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT AS $$
    DECLARE
        v_ids uuid[];
        v_entries bigint;
    BEGIN
        -- Whole trees only, and no flow a live flow depends on (flowstate_purgeable_flows).
        SELECT coalesce(array_agg(id), '{}') INTO v_ids
        FROM flowstate_purgeable_flows(p_flow_ids) AS id;
        PERFORM set_config('flowstate.sanctioned_delete', 'archived', true);
        DELETE FROM flow_history WHERE flow_id = ANY(v_ids);
        GET DIAGNOSTICS v_entries = ROW_COUNT;
        PERFORM set_config('flowstate.sanctioned_delete', '', true);
        DELETE FROM idempotency_keys WHERE flow_id = ANY(v_ids);
        DELETE FROM flows WHERE id = ANY(v_ids);
        UPDATE flow_archives SET purged_at = now() WHERE flow_id = ANY(v_ids);
        RETURN QUERY SELECT cardinality(v_ids)::bigint, v_entries;
    END
    $$;
"""


def upgrade() -> None:
    """The purge that counts its own deletes."""
    op.execute(_PURGE_COUNTED)


def downgrade() -> None:
    """0015's purge (counts the flows it chose)."""
    op.execute(_PURGE_0015)
