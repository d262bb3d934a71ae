"""Table metadata of the Flowstate database (SQLAlchemy Core).

This metadata is the single description of the tables: the repository builds its statements
from it and the migration test compares it with what the Alembic migrations create (no pending
autogenerate diff). What SQLAlchemy metadata cannot describe (row-level security, the append-only
trigger, the legacy view, the application role) lives only in the migrations; `docs/storage.md`
describes the whole schema.

Tables:

- `flows`: one row per flow, its latest state. `phase_states` is a flat JSON object
  ``{phase name: state value}`` so that a phase-state filter is one `@>` containment served by
  the GIN index; the rest of each phase lives in `phase_details`, the open phase errors in
  `error_context`.
- `flow_history`: the append-only audit log, one row per flow version, partitioned by month of
  `occurred_at` (partitions are not in this metadata: `is_history_partition`). `seq` is a global
  identity; `txid` is the writing transaction's id, which makes a tenant-wide cursor gap-free
  (see `flowstate.storage.changes`).
- `idempotency_keys`: the first result of each request id, per tenant, until it expires.
- `flow_timers`: the due timers of flows (phase timeouts, heartbeats, automatic retries; see
  docs/timers.md), one row per (flow, phase, kind). Claimed across tenants by whichever replica
  gets them first (``FOR UPDATE SKIP LOCKED``), through two partial indexes: unclaimed rows by
  due time, claimed rows by the end of their claim.
- `retention_policies`: per tenant, how many days a terminal flow is kept before the archiver
  exports and deletes it (docs/retention.md).
- `flow_archives`: the catalog of archived flows (where, SHA-256, version; purged / restored).
- `flow_definitions`: definition bodies by (tenant, name, version); the built-ins (seeded at
  start) have the empty tenant `BUILTIN_OWNER` and are visible to every tenant.
- `webhook_subscriptions`: a tenant's webhooks (URL, signing secret, filter), each with its
  delivery cursor in the tenant change log (``cursor_txid``, ``cursor_seq``: a position of
  `flowstate.storage.changes`), its delivery status, and the lease of the replica delivering it.

`ix_flows_status_updated_at` is the one index without the tenant in front: it serves the
operators' cross-tenant count of stuck flows (`FlowStore.count_stuck_flows`), and is partial
(terminal flows, the bulk of an old database, are not in it).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID

from flowstate.core.rules import TERMINAL_STATUSES

__all__ = [
    "ACTIVE_FLOW",
    "APP_ROLE",
    "BUILTIN_OWNER",
    "HISTORY_PARTITION_PREFIX",
    "LIVE_WITH_DEPENDENCIES",
    "TERMINAL_FLOW",
    "bulk_action_items",
    "bulk_actions",
    "flow_archives",
    "flow_definitions",
    "flow_history",
    "flow_timers",
    "flows",
    "idempotency_keys",
    "include_in_autogenerate",
    "is_history_partition",
    "metadata",
    "retention_policies",
    "webhook_subscriptions",
]

APP_ROLE = "flowstate_app"
"""NOLOGIN role every store transaction switches to (`SET LOCAL ROLE`) so that RLS applies."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_TIMESTAMP = TIMESTAMP(timezone=True)

ACTIVE_FLOW = text(
    "status NOT IN (" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES)) + ")"
)
"""A flow that is not terminal: the predicate of the stuck-flows index and of its count."""
TERMINAL_FLOW = text(
    "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES)) + ")"
)
"""A terminal flow: the predicate of the archiver's index (retention counts from its update)."""

LIVE_WITH_DEPENDENCIES = text("external_dependencies <> '[]'::jsonb AND " + str(ACTIVE_FLOW))
"""A live flow with external dependencies: the predicate of their index (migration 0015)."""

HISTORY_PARTITION_PREFIX = "flow_history_"
"""`flow_history` is partitioned by month: ``flow_history_YYYY_MM`` and ``flow_history_default``."""


def is_history_partition(name: str) -> bool:
    """Whether a table name is one of `flow_history`'s partitions (not in this metadata)."""
    return name.startswith(HISTORY_PARTITION_PREFIX) and name != "flow_history"


def include_in_autogenerate(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name`` hook: every object but `flow_history`'s partitions."""
    return not (type_ == "table" and name is not None and is_history_partition(name))


_EMPTY_OBJECT = text("'{}'::jsonb")

BUILTIN_OWNER = ""
"""`client_account_id` and `engagement_id` of a built-in definition (visible to every tenant)."""

flow_definitions = Table(
    "flow_definitions",
    metadata,
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", JSONB, nullable=False),
    Column("created_at", _TIMESTAMP, nullable=False, server_default=text("now()")),
    Column("client_account_id", Text, nullable=False, server_default=text("''")),
    Column("engagement_id", Text, nullable=False, server_default=text("''")),
    # Also serves "the latest version of a name for a tenant" (a backward index scan).
    PrimaryKeyConstraint("client_account_id", "engagement_id", "name", "version"),
    CheckConstraint("version >= 1", name="version_positive"),
)

flows = Table(
    "flows",
    metadata,
    Column("id", UUID(as_uuid=False), nullable=False),
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("definition_name", Text, nullable=False),
    Column("definition_version", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("status_before_pause", Text, nullable=True),
    Column("version", Integer, nullable=False),
    Column("phase_states", JSONB, nullable=False),
    Column("phase_details", JSONB, nullable=False),
    Column("progress", Float, nullable=False),
    Column("error_context", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("retry_count", Integer, nullable=False, server_default=text("0")),
    Column("last_retry_at", _TIMESTAMP, nullable=True),
    Column("display_name", Text, nullable=False, server_default=text("''")),
    Column("labels", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("created_at", _TIMESTAMP, nullable=False),
    Column("updated_at", _TIMESTAMP, nullable=False),
    # Migration 0012: the flow's deadline, its alerts in force (a JSON list) and the earliest
    # deadline or approval timeout not handled yet (what the alert scan looks for).
    Column("deadline", _TIMESTAMP, nullable=True),
    Column("alerts", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("alert_due_at", _TIMESTAMP, nullable=True),
    # Child flows (migration 0013, docs/child_flows.md).
    Column("parent_flow_id", UUID(as_uuid=False), nullable=True),
    Column("parent_phase", Text, nullable=True),
    Column("external_dependencies", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    # No foreign key to flow_definitions: (name, version) resolves in the flow's tenant's view
    # (its own definitions, then the built-ins); see migration 0005.
    PrimaryKeyConstraint("id"),
    CheckConstraint("version >= 1", name="version_positive"),
    CheckConstraint("progress >= 0 AND progress <= 100", name="progress_range"),
    CheckConstraint("retry_count >= 0", name="retry_count_non_negative"),
    Index("ix_flows_tenant_updated_at", "client_account_id", "engagement_id", "updated_at", "id"),
    Index(
        "ix_flows_tenant_status",
        "client_account_id",
        "engagement_id",
        "status",
        "updated_at",
        "id",
    ),
    Index("ix_flows_tenant_retry_count", "client_account_id", "engagement_id", "retry_count"),
    Index("ix_flows_status_updated_at", "status", "updated_at", postgresql_where=ACTIVE_FLOW),
    Index("ix_flows_terminal_updated_at", "updated_at", postgresql_where=TERMINAL_FLOW),
    Index(
        "ix_flows_alert_due_at",
        "alert_due_at",
        postgresql_where=text("alert_due_at IS NOT NULL"),
    ),
    Index(
        "ix_flows_client_account_id_engagement_id_parent_flow_id",
        "client_account_id",
        "engagement_id",
        "parent_flow_id",
        postgresql_where=text("parent_flow_id IS NOT NULL"),
    ),
    # Migration 0015: live flows that name other flows (retention keeps what they name).
    Index(
        "ix_flows_external_dependencies",
        "external_dependencies",
        postgresql_using="gin",
        postgresql_ops={"external_dependencies": "jsonb_path_ops"},
        postgresql_where=LIVE_WITH_DEPENDENCIES,
    ),
    Index(
        "ix_flows_phase_states",
        "phase_states",
        postgresql_using="gin",
        postgresql_ops={"phase_states": "jsonb_path_ops"},
    ),
    Index(
        "ix_flows_labels",
        "labels",
        postgresql_using="gin",
        postgresql_ops={"labels": "jsonb_path_ops"},
    ),
)

flow_history = Table(
    "flow_history",
    metadata,
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column("flow_id", UUID(as_uuid=False), nullable=False),
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", Text, nullable=False),
    Column("phase", Text, nullable=True),
    Column("from_state", Text, nullable=True),
    Column("to_state", Text, nullable=True),
    Column("status_before", Text, nullable=False),
    Column("status_after", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("error", JSONB, nullable=True),
    Column("time_in_state_seconds", Float, nullable=True),
    Column("progress_after", Float, nullable=False),
    Column("cause", Text, nullable=False),
    Column("occurred_at", _TIMESTAMP, nullable=False),
    Column("phase_progress", Float, nullable=True),
    Column("next_attempt_at", _TIMESTAMP, nullable=True),
    # Migration 0012: the decision of a DECISION entry, the alert of an ALERT entry.
    Column("approval", JSONB, nullable=True),
    Column("alert", JSONB, nullable=True),
    # Migration 0017: the flow as this entry left it, for filters on changes: every phase's
    # state ({phase: state}, as flows.phase_states) and the open error codes. NULL on rows
    # written before it.
    Column("phase_states_after", JSONB, nullable=True),
    Column("error_codes_after", ARRAY(Text), nullable=True),
    # The writing transaction's id (xid8 as bigint): orders commits for the tenant cursor.
    Column(
        "txid",
        BigInteger,
        nullable=False,
        server_default=text("(pg_current_xact_id()::text)::bigint"),
    ),
    # Partitioned by month of occurred_at (migration 0008): unique constraints must hold the
    # partition key. A flow's versions stay unique: a change holds the flow's row lock.
    PrimaryKeyConstraint("seq", "occurred_at"),
    UniqueConstraint("flow_id", "version", "occurred_at"),
    ForeignKeyConstraint(["flow_id"], ["flows.id"]),
    CheckConstraint("version >= 1", name="version_positive"),
    Index("ix_flow_history_tenant_txid_seq", "client_account_id", "engagement_id", "txid", "seq"),
    postgresql_partition_by="RANGE (occurred_at)",
)

retention_policies = Table(
    "retention_policies",
    metadata,
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("retain_days", Integer, nullable=False),
    Column("updated_at", _TIMESTAMP, nullable=False, server_default=text("now()")),
    Column("updated_by", Text, nullable=False, server_default=text("''")),
    PrimaryKeyConstraint("client_account_id", "engagement_id"),
    CheckConstraint("retain_days >= 1", name="retain_days_positive"),
)

flow_archives = Table(
    "flow_archives",
    metadata,
    Column("flow_id", UUID(as_uuid=False), nullable=False),
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("flow_version", Integer, nullable=False),
    Column("entry_count", Integer, nullable=False),
    Column("location", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("archived_at", _TIMESTAMP, nullable=False, server_default=text("now()")),
    Column("purged_at", _TIMESTAMP, nullable=True),
    Column("restored_at", _TIMESTAMP, nullable=True),
    PrimaryKeyConstraint("flow_id"),
    Index(
        "ix_flow_archives_tenant_archived_at", "client_account_id", "engagement_id", "archived_at"
    ),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("operation", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("flow_id", UUID(as_uuid=False), nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", _TIMESTAMP, nullable=False),
    Column("expires_at", _TIMESTAMP, nullable=False),
    PrimaryKeyConstraint("client_account_id", "engagement_id", "request_id"),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

flow_timers = Table(
    "flow_timers",
    metadata,
    Column("flow_id", UUID(as_uuid=False), nullable=False),
    Column("phase", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("due_at", _TIMESTAMP, nullable=False),
    Column("flow_version", Integer, nullable=False),
    Column("claimed_until", _TIMESTAMP, nullable=True),
    PrimaryKeyConstraint("flow_id", "phase", "kind"),
    ForeignKeyConstraint(["flow_id"], ["flows.id"], ondelete="CASCADE"),
    Index("ix_flow_timers_due_at", "due_at", postgresql_where=text("claimed_until IS NULL")),
    Index(
        "ix_flow_timers_claimed_until",
        "claimed_until",
        postgresql_where=text("claimed_until IS NOT NULL"),
    ),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", UUID(as_uuid=False), nullable=False),
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("url", Text, nullable=False),
    # The signing secret (``whsec_`` + base64), needed in clear to sign; never answered again
    # after CreateWebhook.
    Column("secret", Text, nullable=False),
    Column("statuses", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("definition_name", Text, nullable=False, server_default=text("''")),
    # The filter's text in the filter language (docs/filters.md; '' for none), evaluated by the
    # delivery loop on each change (migration 0014).
    Column("filter", Text, nullable=False, server_default=text("''")),
    Column("state", Text, nullable=False),
    Column("disabled_reason", Text, nullable=False, server_default=text("''")),
    # The delivery cursor: every change at or before (cursor_txid, cursor_seq) is delivered.
    Column("cursor_txid", BigInteger, nullable=False),
    Column("cursor_seq", BigInteger, nullable=False),
    Column("consecutive_failures", Integer, nullable=False, server_default=text("0")),
    Column("delivered_count", BigInteger, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=False, server_default=text("''")),
    Column("last_attempt_at", _TIMESTAMP, nullable=True),
    Column("last_success_at", _TIMESTAMP, nullable=True),
    Column("created_at", _TIMESTAMP, nullable=False),
    # The replica delivering this subscription, until when (database clock).
    Column("lease_owner", Text, nullable=True),
    Column("lease_expires_at", _TIMESTAMP, nullable=True),
    # Bumped by every replay: a delivery task started before it may no longer write.
    Column("generation", Integer, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("id"),
    CheckConstraint("state IN ('ACTIVE', 'DISABLED')", name="state_known"),
    Index(
        "ix_webhook_subscriptions_tenant_created_at",
        "client_account_id",
        "engagement_id",
        "created_at",
        "id",
    ),
    Index("ix_webhook_subscriptions_state", "state"),
)

bulk_actions = Table(
    "bulk_actions",
    metadata,
    Column("id", UUID(as_uuid=False), nullable=False),
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("phase", Text, nullable=True),
    Column("filter", Text, nullable=False, server_default=text("''")),
    Column("reason", Text, nullable=False, server_default=text("''")),
    Column("user_id", Text, nullable=False),
    Column("request_id", Text, nullable=False, server_default=text("''")),
    Column("fingerprint", Text, nullable=False, server_default=text("''")),
    Column("state", Text, nullable=False),
    Column("total", Integer, nullable=False),
    Column("applied", Integer, nullable=False, server_default=text("0")),
    Column("refused", Integer, nullable=False, server_default=text("0")),
    Column("skipped", Integer, nullable=False, server_default=text("0")),
    Column("created_at", _TIMESTAMP, nullable=False),
    Column("updated_at", _TIMESTAMP, nullable=False),
    Column("finished_at", _TIMESTAMP, nullable=True),
    Column("lease_owner", Text, nullable=True),
    Column("lease_until", _TIMESTAMP, nullable=True),
    PrimaryKeyConstraint("id"),
    Index("ix_bulk_actions_tenant_created_at", "client_account_id", "engagement_id", "created_at"),
    Index(
        "ix_bulk_actions_request_id",
        "client_account_id",
        "engagement_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id <> ''"),
    ),
    Index("ix_bulk_actions_running", "created_at", postgresql_where=text("state = 'running'")),
)
"""Bulk actions (docs/bulk-actions.md): one row per action, its counts and its worker's lease."""

bulk_action_items = Table(
    "bulk_action_items",
    metadata,
    Column("action_id", UUID(as_uuid=False), nullable=False),
    Column("position", Integer, nullable=False),
    Column("flow_id", UUID(as_uuid=False), nullable=False),
    Column("client_account_id", Text, nullable=False),
    Column("engagement_id", Text, nullable=False),
    Column("phase", Text, nullable=True),
    Column("outcome", Text, nullable=True),
    Column("error", JSONB, nullable=True),
    Column("done_at", _TIMESTAMP, nullable=True),
    PrimaryKeyConstraint("action_id", "position"),
    ForeignKeyConstraint(["action_id"], ["bulk_actions.id"], ondelete="CASCADE"),
    Index(
        "ix_bulk_action_items_pending",
        "action_id",
        "position",
        postgresql_where=text("outcome IS NULL"),
    ),
)
"""The flows of a bulk action, fixed when it starts (no foreign key to flows: retention may
delete a flow; the action then records it as refused with FLOW_NOT_FOUND)."""
