"""Retention: history partitioned by month, retention policies, the archive catalog, and the
one sanctioned way to delete history.

Revision ID: 0008_history_partitions
Revises: 0007_flow_timers
Create Date: 2026-12-02

`flow_history` becomes a table partitioned by RANGE (occurred_at), one partition per calendar
month (UTC), named ``flow_history_YYYY_MM``, plus ``flow_history_default`` as a safety net for
an entry whose month has no partition yet. The upgrade copies every row (keeping `seq`, `txid`
and the identity's position), so it rewrites the table: on a large database run it in a
maintenance window. A partitioned table's unique constraints must contain the partition key, so
the primary key becomes (seq, occurred_at) and the per-flow version constraint
(flow_id, version, occurred_at); a flow's versions stay unique because every change of a flow
holds its row lock while it picks the next version.

Unchanged on the partitioned table: the append-only trigger (now with one exception, below),
row-level security, the app role's SELECT/INSERT grant (partitions themselves grant nothing: the
app role reaches rows only through `flow_history`), the tenant cursor index, the foreign key to
`flows`, and the read function `flowstate_flow_history` (recreated: it returns the table's row
type).

New:

- `retention_policies`: per tenant, how many days a terminal flow is kept (RLS as elsewhere).
- `flow_archives`: the catalog of archived flows: where the archive is, its SHA-256, the
  archived version, and when the flow was purged or restored (RLS as elsewhere).
- ``ix_flows_terminal_updated_at``: terminal flows by last change (the archiver's scan).
- ``flowstate_ensure_history_partitions(from, to)``: creates the missing monthly partitions.
- ``flowstate_purge_archived_flows(ids)``: the sanctioned delete. It deletes a flow, its
  history and its idempotency keys only when the flow is terminal and `flow_archives` holds a
  verified archive of its current version. It is SECURITY DEFINER (runs as the schema owner)
  and sets the transaction-local setting ``flowstate.sanctioned_delete`` that the append-only
  trigger accepts for DELETE (never for UPDATE or TRUNCATE). EXECUTE is revoked from PUBLIC and
  the app role has no DELETE privilege on history, so the application role still cannot delete.
- ``flowstate_drop_archived_history_partitions(settle)``: drops each monthly partition that
  ended more than `settle` ago and whose every row belongs to an archived (not restored) flow.
- ``flowstate_restore_archived_flow(flow, entries)``: the sanctioned insert of a restore: the
  flow row and its history rows exactly as archived (seq and txid included).

The downgrade copies history back into one unpartitioned table and drops the rest (the
archive catalog and policies are lost; the archives themselves stay where they were written).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008_history_partitions"
down_revision: str | Sequence[str] | None = "0007_flow_timers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration must not change when the code's constants do.
APP_ROLE = "flowstate_app"
_TERMINAL = "('cancelled', 'completed')"
_OWN = """
    client_account_id = current_setting('flowstate.client_account_id', true)
    AND engagement_id = current_setting('flowstate.engagement_id', true)
"""
_ENTER = """
    PERFORM set_config('role', 'flowstate_app', true),
            set_config('flowstate.client_account_id', p_account, true),
            set_config('flowstate.engagement_id', p_engagement, true);
"""

_HISTORY_READ_FUNCTION = f"""
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
_DROP_HISTORY_READ_FUNCTION = (
    "DROP FUNCTION flowstate_flow_history(text, text, uuid, integer, integer)"
)

_APPEND_ONLY_WITH_SANCTIONED_DELETE = """
    CREATE OR REPLACE FUNCTION flowstate_history_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        -- The one exception: a DELETE inside flowstate_purge_archived_flows, which sets this
        -- transaction-local setting around its own DELETE of archived flows' entries.
        IF TG_OP = 'DELETE'
           AND current_setting('flowstate.sanctioned_delete', true) = 'archived' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'flow_history is append-only (% refused)', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$;
"""
_APPEND_ONLY_STRICT = """
    CREATE OR REPLACE FUNCTION flowstate_history_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'flow_history is append-only (% refused)', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$;
"""

_ENSURE_PARTITIONS = """
    CREATE FUNCTION flowstate_ensure_history_partitions(p_from timestamptz, p_to timestamptz)
    RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT SET lock_timeout = '5s' AS $$
    DECLARE
        v_month timestamp := date_trunc('month', p_from AT TIME ZONE 'UTC');
        v_start timestamptz;
        v_end timestamptz;
        v_name text;
    BEGIN
        -- Replicas may call this at once: one at a time creates.
        PERFORM pg_advisory_xact_lock(hashtext('flowstate_history_partitions'));
        WHILE (v_month AT TIME ZONE 'UTC') < p_to LOOP
            v_start := v_month AT TIME ZONE 'UTC';
            v_end := (v_month + interval '1 month') AT TIME ZONE 'UTC';
            v_name := 'flow_history_' || to_char(v_month, 'YYYY_MM');
            IF to_regclass(v_name) IS NULL THEN
                IF EXISTS (
                    SELECT 1 FROM flow_history_default
                    WHERE occurred_at >= v_start AND occurred_at < v_end
                ) THEN
                    RAISE WARNING 'flow_history_default holds entries of %; % not created',
                        to_char(v_month, 'YYYY-MM'), v_name;
                ELSE
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF flow_history FOR VALUES FROM (%L) TO (%L)',
                        v_name, v_start, v_end
                    );
                    RETURN NEXT v_name;
                END IF;
            END IF;
            v_month := v_month + interval '1 month';
        END LOOP;
    END
    $$;
"""

_PURGE = f"""
    CREATE FUNCTION flowstate_purge_archived_flows(p_flow_ids uuid[])
    RETURNS TABLE (flows bigint, entries bigint) LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT AS $$
    DECLARE
        v_ids uuid[];
        v_entries bigint;
    BEGIN
        -- Only terminal flows whose current version has a verified archive, not restored.
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

_DROP_PARTITIONS = f"""
    CREATE FUNCTION flowstate_drop_archived_history_partitions(p_settle interval)
    RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT SET lock_timeout = '5s' AS $$
    DECLARE
        v_name text;
        v_live boolean;
    BEGIN
        -- One at a time (replicas), after which the list of partitions is current.
        PERFORM pg_advisory_xact_lock(hashtext('flowstate_history_partitions'));
        FOR v_name IN
            SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'flow_history'::regclass
              AND c.relname ~ '^flow_history_[0-9]{{4}}_[0-9]{{2}}$'
              AND (to_date(substr(c.relname, 14), 'YYYY_MM')::timestamp + interval '1 month')
                  AT TIME ZONE 'UTC' <= now() - p_settle
            ORDER BY c.relname
        LOOP
            -- A row is dead when its flow is archived at its current version and not restored
            -- (or the flow is already gone). Any other row keeps the partition.
            EXECUTE format(
                'SELECT EXISTS (SELECT 1 FROM %I h WHERE NOT EXISTS ('
                '  SELECT 1 FROM flow_archives a LEFT JOIN flows f ON f.id = a.flow_id'
                '  WHERE a.flow_id = h.flow_id AND a.restored_at IS NULL'
                '    AND (f.id IS NULL OR (f.version = a.flow_version'
                '         AND f.status IN {_TERMINAL.replace("'", "''")}))))',
                v_name
            ) INTO v_live;
            IF NOT v_live THEN
                EXECUTE format('DROP TABLE IF EXISTS %I', v_name);
                RETURN NEXT v_name;
            END IF;
        END LOOP;
    END
    $$;
"""

_RESTORE = """
    CREATE FUNCTION flowstate_restore_archived_flow(p_flow jsonb, p_entries jsonb)
    RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
    SET search_path FROM CURRENT AS $$
    DECLARE
        v_id uuid := (p_flow ->> 'id')::uuid;
        v_entries integer := 0;
        v_columns text;
    BEGIN
        -- Only the columns the archive holds: a column added since it was written takes its
        -- default, a key whose column is gone is ignored.
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
        FROM pg_attribute a
        WHERE a.attrelid = 'flows'::regclass AND a.attnum > 0 AND NOT a.attisdropped
          AND p_flow ? a.attname;
        EXECUTE format(
            'INSERT INTO flows (%1$s) SELECT %1$s FROM jsonb_populate_record(NULL::flows, $1)',
            v_columns
        ) USING p_flow;
        IF jsonb_array_length(p_entries) > 0 THEN
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
            FROM pg_attribute a
            WHERE a.attrelid = 'flow_history'::regclass AND a.attnum > 0
              AND NOT a.attisdropped AND (p_entries -> 0) ? a.attname;
            EXECUTE format(
                'INSERT INTO flow_history (%1$s) OVERRIDING SYSTEM VALUE SELECT %1$s'
                ' FROM jsonb_populate_recordset(NULL::flow_history, $1)',
                v_columns
            ) USING p_entries;
            GET DIAGNOSTICS v_entries = ROW_COUNT;
        END IF;
        -- A restored flow is held: retention never archives it again by itself.
        INSERT INTO flow_archives AS a (
            flow_id, client_account_id, engagement_id, flow_version, entry_count,
            location, sha256, archived_at, purged_at, restored_at
        )
        SELECT v_id, p_flow ->> 'client_account_id', p_flow ->> 'engagement_id',
               (p_flow ->> 'version')::integer, v_entries, '', '', now(), NULL, now()
        ON CONFLICT (flow_id) DO UPDATE SET restored_at = now(), purged_at = NULL;
        RETURN v_entries;
    END
    $$;
"""

_FUNCTIONS = (
    "flowstate_ensure_history_partitions(timestamptz, timestamptz)",
    "flowstate_purge_archived_flows(uuid[])",
    "flowstate_drop_archived_history_partitions(interval)",
    "flowstate_restore_archived_flow(jsonb, jsonb)",
)


def _tenant_policy(table: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE} "
        f"USING ({_OWN}) WITH CHECK ({_OWN})"
    )


def _history_guards(table: str) -> None:
    """Append-only triggers, RLS, grants and the tenant cursor index of a history table."""
    op.execute(
        f"CREATE TRIGGER flow_history_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION flowstate_history_append_only()"
    )
    op.execute(
        f"CREATE TRIGGER flow_history_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION flowstate_history_append_only()"
    )
    _tenant_policy(table)
    op.execute(f"GRANT SELECT, INSERT ON {table} TO {APP_ROLE}")
    op.execute(
        f"CREATE INDEX ix_flow_history_tenant_txid_seq ON {table} "
        "(client_account_id, engagement_id, txid, seq)"
    )


def _copy_history(old: str, new: str) -> None:
    """Every row of `old` into `new` (seq kept), and `new`'s identity where `old`'s was."""
    op.execute(f"INSERT INTO {new} OVERRIDING SYSTEM VALUE SELECT * FROM {old}")
    op.execute(
        f"""
        DO $$
        DECLARE
            v_last bigint;
            v_called boolean;
        BEGIN
            EXECUTE format('SELECT last_value, is_called FROM %s',
                           pg_get_serial_sequence('{old}', 'seq'))
                INTO v_last, v_called;
            PERFORM setval(pg_get_serial_sequence('{new}', 'seq'), v_last, v_called);
        END
        $$;
        """
    )


def _rename_old_history() -> None:
    op.execute("ALTER TABLE flow_history RENAME TO flow_history_old")
    op.execute("ALTER INDEX ix_flow_history_tenant_txid_seq RENAME TO ix_flow_history_old_txid")
    op.execute("ALTER TABLE flow_history_old RENAME CONSTRAINT pk_flow_history TO pk_fho")
    op.execute(
        "ALTER TABLE flow_history_old RENAME CONSTRAINT uq_flow_history_flow_id_version TO uq_fho"
    )


def upgrade() -> None:
    """Partition history by month, add policies, the archive catalog and the functions."""
    op.execute(_DROP_HISTORY_READ_FUNCTION)
    _rename_old_history()
    op.execute(
        """
        CREATE TABLE flow_history (
            LIKE flow_history_old INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS
        ) PARTITION BY RANGE (occurred_at)
        """
    )
    op.execute(
        "ALTER TABLE flow_history ADD CONSTRAINT pk_flow_history PRIMARY KEY (seq, occurred_at)"
    )
    op.execute(
        "ALTER TABLE flow_history ADD CONSTRAINT uq_flow_history_flow_id_version_occurred_at "
        "UNIQUE (flow_id, version, occurred_at)"
    )
    op.execute(
        "ALTER TABLE flow_history ADD CONSTRAINT fk_flow_history_flow_id_flows "
        "FOREIGN KEY (flow_id) REFERENCES flows (id)"
    )
    op.execute("CREATE TABLE flow_history_default PARTITION OF flow_history DEFAULT")
    _history_guards("flow_history")
    op.execute(
        """
        CREATE TABLE flow_archives (
            flow_id uuid NOT NULL,
            client_account_id text NOT NULL,
            engagement_id text NOT NULL,
            flow_version integer NOT NULL,
            entry_count integer NOT NULL,
            location text NOT NULL,
            sha256 text NOT NULL,
            archived_at timestamptz NOT NULL DEFAULT now(),
            purged_at timestamptz,
            restored_at timestamptz,
            CONSTRAINT pk_flow_archives PRIMARY KEY (flow_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_flow_archives_tenant_archived_at ON flow_archives "
        "(client_account_id, engagement_id, archived_at)"
    )
    op.execute(_ENSURE_PARTITIONS)
    # Partitions for every month that has entries (at most ten years back: older entries stay
    # in the default partition), up to three months ahead of now.
    op.execute(
        """
        SELECT flowstate_ensure_history_partitions(
            greatest(coalesce(min(occurred_at), now()), now() - interval '10 years'),
            now() + interval '3 months'
        ) FROM flow_history_old
        """
    )
    _copy_history("flow_history_old", "flow_history")
    op.execute("DROP TABLE flow_history_old")
    op.execute(_HISTORY_READ_FUNCTION)
    op.execute(_APPEND_ONLY_WITH_SANCTIONED_DELETE)

    op.execute(
        """
        CREATE TABLE retention_policies (
            client_account_id text NOT NULL,
            engagement_id text NOT NULL,
            retain_days integer NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL DEFAULT '',
            CONSTRAINT pk_retention_policies PRIMARY KEY (client_account_id, engagement_id),
            CONSTRAINT ck_retention_policies_retain_days_positive CHECK (retain_days >= 1)
        )
        """
    )
    for table in ("retention_policies", "flow_archives"):
        _tenant_policy(table)
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON retention_policies TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON flow_archives TO {APP_ROLE}")
    op.execute(
        f"CREATE INDEX ix_flows_terminal_updated_at ON flows (updated_at) "
        f"WHERE status IN {_TERMINAL}"
    )
    for ddl in (_PURGE, _DROP_PARTITIONS, _RESTORE):
        op.execute(ddl)
    for signature in _FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")


def downgrade() -> None:
    """Back to one unpartitioned history table; policies and the archive catalog go."""
    for signature in _FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute("DROP INDEX ix_flows_terminal_updated_at")
    op.execute("DROP TABLE retention_policies")
    op.execute("DROP TABLE flow_archives")
    op.execute(_APPEND_ONLY_STRICT)
    op.execute(_DROP_HISTORY_READ_FUNCTION)
    op.execute("ALTER TABLE flow_history RENAME TO flow_history_old")
    op.execute("ALTER INDEX ix_flow_history_tenant_txid_seq RENAME TO ix_flow_history_old_txid")
    op.execute("ALTER TABLE flow_history_old RENAME CONSTRAINT pk_flow_history TO pk_fho")
    op.execute(
        "ALTER TABLE flow_history_old "
        "RENAME CONSTRAINT uq_flow_history_flow_id_version_occurred_at TO uq_fho"
    )
    op.execute(
        """
        CREATE TABLE flow_history (
            LIKE flow_history_old INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS
        )
        """
    )
    op.execute("ALTER TABLE flow_history ADD CONSTRAINT pk_flow_history PRIMARY KEY (seq)")
    op.execute(
        "ALTER TABLE flow_history ADD CONSTRAINT uq_flow_history_flow_id_version "
        "UNIQUE (flow_id, version)"
    )
    op.execute(
        "ALTER TABLE flow_history ADD CONSTRAINT fk_flow_history_flow_id_flows "
        "FOREIGN KEY (flow_id) REFERENCES flows (id)"
    )
    _copy_history("flow_history_old", "flow_history")
    op.execute("DROP TABLE flow_history_old")
    _history_guards("flow_history")
    op.execute(_HISTORY_READ_FUNCTION)
