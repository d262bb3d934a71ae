"""Retention keeps trees whole: the sanctioned delete purges whole trees of child flows, never a
flow that a live flow's external dependencies name.

Revision ID: 0015_archive_trees
Revises: 0014_webhook_filter
Create Date: 2026-12-02

The rule (docs/retention.md, "Trees and dependencies"): a tree of child flows (a root and every
descendant) is archived and deleted as a unit, and a flow that a non-terminal flow's
``external_dependencies`` name is kept. 0008's archiver took each flow alone, so a parent
could be deleted under a live child (or a child under a live parent) and a dependency under the
flow waiting for it.

- ``flowstate_purgeable_flows(ids)``: of the trees that the flows `ids` belong to, the flows of
  those trees whose every flow is terminal, archived at its current version (neither purged nor
  restored) and named by no live flow's external dependencies. A flow whose parent row is
  missing (deleted before this revision) counts as a root.
- ``flowstate_purge_archived_flows(ids)`` (replaced): deletes exactly those flows (whole trees,
  also the members of a named flow's tree that `ids` left out), as before through the one
  exception of the append-only trigger. A flow of an incomplete tree is left alone.
- ``ix_flows_external_dependencies``: a GIN index (``jsonb_path_ops``) of the live flows that
  have external dependencies: "is this flow named by a live flow" is one index probe.
- Archive records that the archiver of 0008 left pending for flows that can never be purged
  as they are (a tree with a live flow, a live dependent) are dropped from the catalog: those
  flows are not archived any more, and the archiver takes them again with their whole tree
  (their old archive files stay where they are). Without this, the partition drop (which
  treats every archived flow's rows as dead) could drop history of a flow that stays.

Downgrade restores 0008's purge function and drops the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015_archive_trees"
down_revision: str | Sequence[str] | None = "0014_webhook_filter"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration must not change when the code's constants do.
_TERMINAL = "('cancelled', 'completed')"
_LIVE_WITH_DEPENDENCIES = f"external_dependencies <> '[]'::jsonb AND status NOT IN {_TERMINAL}"
_LIVE_DEPENDENT = f"d.external_dependencies <> '[]'::jsonb AND d.status NOT IN {_TERMINAL}"

_PURGEABLE = f"""
    CREATE FUNCTION flowstate_purgeable_flows(p_flow_ids uuid[])
    RETURNS SETOF uuid LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
        WITH RECURSIVE up(id, parent_flow_id, depth) AS (
            SELECT f.id, f.parent_flow_id, 0 FROM flows f WHERE f.id = ANY(p_flow_ids)
            UNION ALL
            SELECT p.id, p.parent_flow_id, up.depth + 1
            FROM up JOIN flows p ON p.id = up.parent_flow_id
            WHERE up.depth < 32
        ),
        roots AS (
            SELECT DISTINCT up.id FROM up
            WHERE up.parent_flow_id IS NULL
               OR NOT EXISTS (SELECT 1 FROM flows p WHERE p.id = up.parent_flow_id)
        ),
        down(root, id, account, engagement, depth) AS (
            SELECT f.id, f.id, f.client_account_id, f.engagement_id, 0
            FROM roots r JOIN flows f ON f.id = r.id
            UNION ALL
            SELECT down.root, c.id, down.account, down.engagement, down.depth + 1
            FROM down JOIN flows c
              ON c.parent_flow_id = down.id
             AND c.client_account_id = down.account AND c.engagement_id = down.engagement
            WHERE down.depth < 32
        ),
        judged AS (
            SELECT down.root, f.id,
                   f.status IN {_TERMINAL}
                   AND EXISTS (
                       SELECT 1 FROM flow_archives a
                       WHERE a.flow_id = f.id AND a.flow_version = f.version
                         AND a.purged_at IS NULL AND a.restored_at IS NULL
                   )
                   AND NOT EXISTS (
                       SELECT 1 FROM flows d
                       WHERE {_LIVE_DEPENDENT}
                         AND d.external_dependencies
                             @> jsonb_build_array(jsonb_build_object('flow_id', f.id::text))
                   ) AS ok
            FROM down JOIN flows f ON f.id = down.id
        )
        SELECT j.id FROM judged j
        WHERE NOT EXISTS (SELECT 1 FROM judged k WHERE k.root = j.root AND NOT k.ok)
    $$;
"""

_PURGE_TREES = """
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

_PURGE_0008 = f"""
    CREATE OR REPLACE FUNCTION flowstate_purge_archived_flows(p_flow_ids uuid[])
    RETURNS TABLE (flows bigint, entries bigint) LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT AS $$
    DECLARE
        v_ids uuid[];
        v_entries bigint;
    BEGIN
        SELECT coalesce(array_agg(f.id), '{{}}') INTO v_ids
        FROM flows f JOIN flow_archives a ON a.flow_id = f.id
        WHERE f.id = ANY(p_flow_ids)
          AND f.status IN {_TERMINAL}
          AND a.flow_version = f.version
          AND a.purged_at IS NULL AND a.restored_at IS NULL;
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

_RELEASE_UNPURGEABLE = """
    DELETE FROM flow_archives a
    WHERE a.purged_at IS NULL AND a.restored_at IS NULL
      AND EXISTS (SELECT 1 FROM flows f WHERE f.id = a.flow_id)
      AND a.flow_id NOT IN (
          SELECT p FROM flowstate_purgeable_flows(ARRAY(
              SELECT b.flow_id FROM flow_archives b
              WHERE b.purged_at IS NULL AND b.restored_at IS NULL
          )) AS p
      )
"""


def upgrade() -> None:
    """The purgeable-trees function, the tree-aware purge, the dependents index."""
    op.execute(
        "CREATE INDEX ix_flows_external_dependencies ON flows "
        "USING gin (external_dependencies jsonb_path_ops) "
        f"WHERE {_LIVE_WITH_DEPENDENCIES}"
    )
    op.execute(_PURGEABLE)
    op.execute("REVOKE ALL ON FUNCTION flowstate_purgeable_flows(uuid[]) FROM PUBLIC")
    op.execute(_PURGE_TREES)
    op.execute(_RELEASE_UNPURGEABLE)


def downgrade() -> None:
    """0008's purge (flow by flow), without the function and the index."""
    op.execute(_PURGE_0008)
    op.execute("DROP FUNCTION flowstate_purgeable_flows(uuid[])")
    op.execute("DROP INDEX ix_flows_external_dependencies")
