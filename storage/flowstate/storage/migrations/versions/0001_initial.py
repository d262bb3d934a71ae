"""Initial schema: flows, history, idempotency keys, definitions, RLS, legacy view.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "flowstate_app"  # frozen here on purpose: a migration never follows later code
TENANT_TABLES = ("flows", "flow_history", "idempotency_keys")
LEGACY_PHASES = (
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
)


def _timestamp() -> postgresql.TIMESTAMP:
    return postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    """Create the tables, indexes, append-only trigger, app role, RLS policies, legacy view."""
    # Roles are cluster-wide: another database of the cluster (or a DBA) may have made it.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created concurrently by a migration of another database
        END
        $$;
        """
    )
    op.create_table(
        "flow_definitions",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", _timestamp(), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("version >= 1", name="ck_flow_definitions_version_positive"),
        sa.PrimaryKeyConstraint("name", "version", name="pk_flow_definitions"),
    )
    op.create_table(
        "flows",
        sa.Column("id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("client_account_id", sa.Text(), nullable=False),
        sa.Column("engagement_id", sa.Text(), nullable=False),
        sa.Column("definition_name", sa.Text(), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("status_before_pause", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("phase_states", postgresql.JSONB(), nullable=False),
        sa.Column("phase_details", postgresql.JSONB(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column(
            "error_context",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("retry_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_retry_at", _timestamp(), nullable=True),
        sa.Column("display_name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column(
            "labels", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.CheckConstraint("version >= 1", name="ck_flows_version_positive"),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_flows_progress_range"),
        sa.CheckConstraint("retry_count >= 0", name="ck_flows_retry_count_non_negative"),
        sa.ForeignKeyConstraint(
            ["definition_name", "definition_version"],
            ["flow_definitions.name", "flow_definitions.version"],
            name="fk_flows_definition_name_definition_version_flow_definitions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_flows"),
    )
    op.create_index(
        "ix_flows_tenant_updated_at",
        "flows",
        ["client_account_id", "engagement_id", "updated_at", "id"],
    )
    op.create_index(
        "ix_flows_tenant_status",
        "flows",
        ["client_account_id", "engagement_id", "status", "updated_at", "id"],
    )
    op.create_index(
        "ix_flows_tenant_retry_count",
        "flows",
        ["client_account_id", "engagement_id", "retry_count"],
    )
    op.create_index(
        "ix_flows_phase_states",
        "flows",
        ["phase_states"],
        postgresql_using="gin",
        postgresql_ops={"phase_states": "jsonb_path_ops"},
    )
    op.create_table(
        "flow_history",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("flow_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("client_account_id", sa.Text(), nullable=False),
        sa.Column("engagement_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=True),
        sa.Column("from_state", sa.Text(), nullable=True),
        sa.Column("to_state", sa.Text(), nullable=True),
        sa.Column("status_before", sa.Text(), nullable=False),
        sa.Column("status_after", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), nullable=False),
        sa.Column("error", postgresql.JSONB(), nullable=True),
        sa.Column("time_in_state_seconds", sa.Float(), nullable=True),
        sa.Column("progress_after", sa.Float(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("occurred_at", _timestamp(), nullable=False),
        sa.Column(
            "txid",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id()::text)::bigint"),
            nullable=False,
        ),
        sa.CheckConstraint("version >= 1", name="ck_flow_history_version_positive"),
        sa.ForeignKeyConstraint(["flow_id"], ["flows.id"], name="fk_flow_history_flow_id_flows"),
        sa.PrimaryKeyConstraint("seq", name="pk_flow_history"),
        sa.UniqueConstraint("flow_id", "version", name="uq_flow_history_flow_id_version"),
    )
    op.create_index(
        "ix_flow_history_tenant_txid_seq",
        "flow_history",
        ["client_account_id", "engagement_id", "txid", "seq"],
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("client_account_id", sa.Text(), nullable=False),
        sa.Column("engagement_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("flow_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("response", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint(
            "client_account_id", "engagement_id", "request_id", name="pk_idempotency_keys"
        ),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])

    # History is append-only: rollback and retry are new entries, never edits.
    op.execute(
        """
        CREATE FUNCTION flowstate_history_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'flow_history is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$;
        """
    )
    op.execute(
        """
        CREATE TRIGGER flow_history_append_only
        BEFORE UPDATE OR DELETE ON flow_history
        FOR EACH ROW EXECUTE FUNCTION flowstate_history_append_only();
        """
    )
    op.execute(
        """
        CREATE TRIGGER flow_history_no_truncate
        BEFORE TRUNCATE ON flow_history
        FOR EACH STATEMENT EXECUTE FUNCTION flowstate_history_append_only();
        """
    )

    # Row-level security: the second wall behind the tenant filter of every query. Policies
    # apply to the app role, which every store transaction switches to with SET LOCAL ROLE;
    # the settings are transaction-local (set_config(..., true)), so a pooled connection never
    # carries a tenant from one transaction to the next. An unset setting matches no row.
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"""
            CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE}
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
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON flows TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON flow_history TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON flow_definitions TO {APP_ROLE}")
    # A non-superuser migrator must be a member to SET ROLE; superusers may always.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               AND NOT pg_has_role(current_user, '{APP_ROLE}', 'MEMBER') THEN
                EXECUTE format('GRANT %I TO %I', '{APP_ROLE}', current_user);
            END IF;
        END
        $$;
        """
    )

    # Backward compatibility for readers of the old per-phase boolean columns.
    completed_columns = ",\n".join(
        f"            COALESCE(phase_states ->> '{phase}' = 'completed', false)"
        f" AS {phase}_completed"
        for phase in LEGACY_PHASES
    )
    op.execute(
        f"""
        CREATE VIEW legacy_discovery_flows WITH (security_invoker = true) AS
        SELECT
            id AS flow_id,
            client_account_id,
            engagement_id,
            status,
            display_name,
{completed_columns},
            progress AS progress_percentage,
            version,
            created_at,
            updated_at
        FROM flows
        WHERE definition_name = 'discovery'
        """
    )
    op.execute(f"GRANT SELECT ON legacy_discovery_flows TO {APP_ROLE}")


def downgrade() -> None:
    """Drop everything `upgrade` created; the role only when no other database still uses it
    and the migrating role may drop roles (a DBA may have created it for an owner that may not)."""
    op.execute("DROP VIEW legacy_discovery_flows")
    op.drop_table("idempotency_keys")
    op.drop_table("flow_history")
    op.drop_table("flows")
    op.drop_table("flow_definitions")
    op.execute("DROP FUNCTION flowstate_history_append_only()")
    op.execute(
        f"""
        DO $$
        BEGIN
            DROP ROLE IF EXISTS {APP_ROLE};
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            NULL;  -- still granted privileges in another database, or not ours to drop
        END
        $$;
        """
    )
