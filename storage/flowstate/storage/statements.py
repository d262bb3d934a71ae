"""The store's SQL: every statement built with SQLAlchemy Core on the shared schema, compiled once.

`flowstate.storage.store` runs these on its pooled asyncpg connections (`flowstate.storage.sql`).
Parameters are named; tenant statements filter by ``account`` and ``engagement`` besides RLS.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Text,
    and_,
    any_,
    bindparam,
    column,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert

from flowstate.core.model import FlowStatus, PhaseState, Tenant
from flowstate.storage.filters import filter_condition
from flowstate.storage.limits import (
    MAX_FLOW_IDS_PER_QUERY,
    check_flow_id,
    check_name,
    malformed,
)
from flowstate.storage.schema import (
    ACTIVE_FLOW,
    APP_ROLE,
    BUILTIN_OWNER,
    flow_archives,
    flow_definitions,
    flow_history,
    flows,
    idempotency_keys,
)
from flowstate.storage.sql import Compiled, compile_statement, sql_literal
from flowstate.storage.values import FlowQuery

NOTIFY_CHANNEL = "flowstate_changes"
"""LISTEN/NOTIFY channel: one notification per committed change, a wake-up signal only.

Payload (JSON): ``{"flow_id", "version", "client_account_id", "engagement_id"}`` where
``version`` is the flow's version after the change. NOTIFY is lost on disconnect: listeners
re-read from history."""

ACCOUNT = bindparam("account", type_=Text)
ENGAGEMENT = bindparam("engagement", type_=Text)
FLOW_ID = bindparam("flow_id", type_=UUID(as_uuid=False))
REQUEST_ID = bindparam("request_id", type_=Text)
FLOWS_IN_TENANT = and_(flows.c.client_account_id == ACCOUNT, flows.c.engagement_id == ENGAGEMENT)
# The tenant filter of statements that look flows up by id: one row comparison, which no index
# can serve, so the primary key is the only index matching the statement whatever the
# statistics say (with plain equalities a never-analyzed table's plans used a tenant index and
# read every flow of the tenant; migration 0006 writes the RLS policy the same way).
FLOW_ID_IN_TENANT = tuple_(flows.c.client_account_id, flows.c.engagement_id).is_not_distinct_from(
    tuple_(ACCOUNT, ENGAGEMENT)
)
KEY_MATCHES = and_(
    idempotency_keys.c.client_account_id == ACCOUNT,
    idempotency_keys.c.engagement_id == ENGAGEMENT,
    idempotency_keys.c.request_id == REQUEST_ID,
)
HISTORY_IN_TENANT = and_(
    flow_history.c.client_account_id == ACCOUNT, flow_history.c.engagement_id == ENGAGEMENT
)
HISTORY_COLUMNS = [c for c in flow_history.c if c.name != "txid"]

LOCK_FLOW = compile_statement(
    # The flow row, locked, and (same round trip) the request id's key as of the statement's
    # snapshot: a duplicate that commits while we wait for the lock is caught later (see
    # FlowStore.update_flow and FlowService.mutate).
    select(
        flows,
        idempotency_keys.c.operation.label("key_operation"),
        idempotency_keys.c.fingerprint.label("key_fingerprint"),
        idempotency_keys.c.response.label("key_response"),
        idempotency_keys.c.expires_at.label("key_expires_at"),
    )
    .select_from(flows.outerjoin(idempotency_keys, KEY_MATCHES))
    .where(flows.c.id == FLOW_ID, FLOW_ID_IN_TENANT)
    .with_for_update(of=flows)
)
FLOW_EXISTS = compile_statement(
    select(flows.c.version).where(flows.c.id == FLOW_ID, FLOW_ID_IN_TENANT)
)
SELECT_KEY = compile_statement(
    select(
        idempotency_keys.c.operation,
        idempotency_keys.c.fingerprint,
        idempotency_keys.c.response,
        idempotency_keys.c.expires_at,
    ).where(KEY_MATCHES)
)
DELETE_KEY = compile_statement(delete(idempotency_keys).where(KEY_MATCHES))
SELECT_HISTORY = compile_statement(
    select(*HISTORY_COLUMNS)
    .where(
        flow_history.c.flow_id == FLOW_ID,
        HISTORY_IN_TENANT,
        flow_history.c.version > bindparam("after_version", type_=Integer),
    )
    .order_by(flow_history.c.version)
    .limit(bindparam("limit", type_=Integer))
)
# One round trip reads (migration 0003): the functions enter the tenant (app role, settings)
# themselves and are called in autocommit, so the call is the whole transaction.
GET_FLOW_CALL = compile_statement(
    text("SELECT * FROM flowstate_get_flow(:account, :engagement, :flow_id)").bindparams(
        ACCOUNT, ENGAGEMENT, FLOW_ID
    )
)
FLOW_HISTORY_CALL = compile_statement(
    text(
        "SELECT * FROM flowstate_flow_history(:account, :engagement, :flow_id, :after, :limit)"
    ).bindparams(
        ACCOUNT,
        ENGAGEMENT,
        FLOW_ID,
        bindparam("after", type_=Integer),
        bindparam("limit", type_=Integer),
    )
)
# The built-in's own row (the seed compares it with the code); tenants' definitions are read by
# flowstate.storage.definitions_repo.
EXACT_DEFINITION = compile_statement(
    select(flow_definitions.c.body).where(
        flow_definitions.c.client_account_id == BUILTIN_OWNER,
        flow_definitions.c.engagement_id == BUILTIN_OWNER,
        flow_definitions.c.name == bindparam("name", type_=Text),
        flow_definitions.c.version == bindparam("version", type_=Integer),
    )
)
SEED_DEFINITION = compile_statement(
    pg_insert(flow_definitions)
    .values(
        name=bindparam("name", type_=Text),
        version=bindparam("version", type_=Integer),
        body=bindparam("body", type_=JSONB),
    )
    .on_conflict_do_nothing()
)
HAS_VERSION_TABLE = compile_statement(
    select(func.to_regclass(literal("alembic_version", Text)).is_not(None))
)
SCHEMA_REVISION = compile_statement(text("SELECT max(version_num) FROM alembic_version"))
PING = compile_statement(select(literal(1)))
NOW = compile_statement(select(func.now()))
# '' when the connected role may switch to the app role, else its quoted name (for the GRANT).
APP_ROLE_MISSING_FOR = compile_statement(
    text(
        f"SELECT CASE WHEN pg_has_role(current_user, {sql_literal(APP_ROLE)}, 'MEMBER') "
        "THEN '' ELSE quote_ident(current_user) END"
    )
)
COUNT_STUCK = compile_statement(
    select(flows.c.status, func.count().label("flows"))
    .where(ACTIVE_FLOW, flows.c.updated_at < bindparam("before", type_=flows.c.updated_at.type))
    .group_by(flows.c.status)
)


def purge_statement(limit: int) -> Compiled:
    key = tuple_(
        idempotency_keys.c.client_account_id,
        idempotency_keys.c.engagement_id,
        idempotency_keys.c.request_id,
    )
    expired = (
        select(
            idempotency_keys.c.client_account_id,
            idempotency_keys.c.engagement_id,
            idempotency_keys.c.request_id,
        )
        .where(idempotency_keys.c.expires_at < func.now())
        .limit(limit)
    )
    return compile_statement(delete(idempotency_keys).where(key.in_(expired)))


IMMUTABLE_FLOW_COLUMNS = frozenset(
    {
        "id",
        "client_account_id",
        "engagement_id",
        "definition_name",
        "definition_version",
        "created_at",
    }
)
FLOW_JSON = bindparam("flow", type_=JSONB)
ENTRIES_JSON = bindparam("entries", type_=JSONB)
FLOW_INPUT = (
    func.jsonb_populate_record(literal_column("NULL::flows"), FLOW_JSON)
    .table_valued(*(column(c.name) for c in flows.c))
    .alias("flow_input")
)
ENTRY_COLUMNS = [c.name for c in flow_history.c if c.name not in ("seq", "txid")]
ENTRY_INPUT = (
    func.jsonb_populate_recordset(literal_column("NULL::flow_history"), ENTRIES_JSON)
    .table_valued(*(column(name) for name in ENTRY_COLUMNS))
    .alias("entry_input")
)


@functools.cache
def write_statement(new: bool, with_entries: bool, with_key: bool) -> Compiled:
    """The one statement writing a change, compiled once per shape.

    Parameters: ``flow`` (the flow in `codec.flow_to_json` form, expanded into the row by
    ``jsonb_populate_record``), ``entries`` (the entries in `codec.entry_to_json` form, one
    text for any number of them), ``key_<column>`` for the idempotency key (its response is
    built from ``flow`` and ``entries`` in SQL, so nothing is serialised twice), and
    ``notify_payload``.
    """
    ctes: list[Any] = []
    if with_entries:
        if new:
            flow_write: Any = insert(flows).from_select(
                [c.name for c in flows.c], select(*(FLOW_INPUT.c[c.name] for c in flows.c))
            )
        else:
            flow_write = (
                update(flows)
                .where(flows.c.id == FLOW_INPUT.c.id)
                .values(
                    {
                        c.name: FLOW_INPUT.c[c.name]
                        for c in flows.c
                        if c.name not in IMMUTABLE_FLOW_COLUMNS
                    }
                )
            )
        ctes.append(flow_write.cte("flow_write"))
        ctes.append(
            insert(flow_history)
            .from_select(ENTRY_COLUMNS, select(*(ENTRY_INPUT.c[n] for n in ENTRY_COLUMNS)))
            .cte("history_write")
        )
    if with_key:
        values: dict[str, Any] = {
            c.name: bindparam(f"key_{c.name}", type_=c.type)
            for c in idempotency_keys.c
            if c.name != "response"
        }
        # The flow as it was after the change, and how many entries it appended: a replay
        # reads those entries back from the (append-only) history, so the key stays small.
        values["response"] = func.jsonb_build_object(
            literal("flow"),
            FLOW_JSON,
            literal("entry_count"),
            bindparam("entry_count", type_=Integer),
        )
        ctes.append(insert(idempotency_keys).values(values).cte("key_write"))
    head: ColumnElement[Any] = (
        func.pg_notify(NOTIFY_CHANNEL, bindparam("notify_payload", type_=Text))
        if with_entries
        else literal(1)
    )
    return compile_statement(select(head).add_cte(*ctes))


def enter_tenant(tenant: Tenant) -> str:
    """The switch to the app role and the tenant's RLS settings, transaction-local."""
    return (
        f"SELECT set_config('role', {sql_literal(APP_ROLE)}, true),"
        " set_config('flowstate.client_account_id',"
        f" {sql_literal(tenant.client_account_id)}, true),"
        f" set_config('flowstate.engagement_id', {sql_literal(tenant.engagement_id)}, true)"
    )


def begin(tenant: Tenant | None) -> str:
    """BEGIN, and for a tenant the switch to the app role and the RLS settings, as one batch."""
    if tenant is None:
        return "BEGIN"
    return "BEGIN; " + enter_tenant(tenant)


def flow_filters(query: FlowQuery) -> tuple[list[ColumnElement[bool]], dict[str, Any]]:
    """SQL conditions of a query's filters, and a canonical description (for page tokens)."""
    conditions: list[ColumnElement[bool]] = []
    description: dict[str, Any] = {}
    if query.statuses:
        statuses = sorted(FlowStatus(s).value for s in query.statuses)
        conditions.append(flows.c.status == any_(literal(statuses, ARRAY(Text))))
        description["statuses"] = statuses
    if query.phase_states:
        wanted: dict[str, list[str]] = {}
        for phase, states in query.phase_states.items():
            check_name("phase_states", phase)
            if not states:
                raise malformed("phase_states", f"phase_states[{phase!r}] lists no state")
            wanted[phase] = sorted(PhaseState(s).value for s in states)
            conditions.append(
                or_(*(flows.c.phase_states.contains({phase: s}) for s in wanted[phase]))
            )
        description["phase_states"] = wanted
    if query.updated_before is not None:
        if query.updated_before.utcoffset() is None:
            raise malformed("updated_before", "updated_before must be timezone-aware")
        conditions.append(flows.c.updated_at < query.updated_before)
        description["updated_before"] = query.updated_before.isoformat()
    if query.definition_name is not None:
        check_name("definition_name", query.definition_name)
        conditions.append(flows.c.definition_name == query.definition_name)
        description["definition_name"] = query.definition_name
    if query.parent_flow_id is not None:
        parent = check_flow_id(query.parent_flow_id, "parent_flow_id")
        conditions.append(flows.c.parent_flow_id == literal(parent, UUID(as_uuid=False)))
        description["parent_flow_id"] = parent
    if query.flow_ids:
        if len(query.flow_ids) > MAX_FLOW_IDS_PER_QUERY:
            raise malformed(
                "flow_ids",
                f"at most {MAX_FLOW_IDS_PER_QUERY} flow ids",
                limit=MAX_FLOW_IDS_PER_QUERY,
            )
        ids = sorted({check_flow_id(i, "flow_ids") for i in query.flow_ids})
        conditions.append(flows.c.id == any_(literal(ids, ARRAY(UUID(as_uuid=False)))))
        description["flow_ids"] = ids
    if query.filter is not None:
        conditions.append(filter_condition(query.filter))
        description["filter"] = query.filter_text
    if query.alerting:
        conditions.append(func.jsonb_array_length(flows.c.alerts) > 0)
        description["alerting"] = True
    return conditions, description


@functools.cache
def due_alerts_statement(stuck_after: tuple[tuple[str, float], ...], limit: int) -> Compiled:
    """Flows of every tenant with a breach due now (the database clock), at most `limit`.

    Due: `alert_due_at` has passed (deadlines, approval timeouts: ``ix_flows_alert_due_at``),
    or the flow is live, has no STUCK alert in force and has not changed for the threshold of
    its status (``stuck_after``: (status value, seconds) pairs; ``ix_flows_status_updated_at``).
    Returns id, tenant and the database's ``now()``; most overdue first.
    """
    stuck = [
        and_(
            flows.c.status == status,
            flows.c.updated_at <= func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds),
        )
        for status, seconds in stuck_after
    ]
    due = flows.c.alert_due_at <= func.now()
    if stuck:
        due = or_(
            due,
            and_(
                ACTIVE_FLOW,
                or_(*stuck),
                ~flows.c.alerts.contains(literal([{"kind": "stuck"}], JSONB)),
            ),
        )
    return compile_statement(
        select(
            flows.c.id,
            flows.c.client_account_id,
            flows.c.engagement_id,
            func.now().label("now"),
        )
        .where(due)
        .order_by(func.coalesce(flows.c.alert_due_at, flows.c.updated_at))
        .limit(limit)
    )


def list_flows_statement(
    conditions: list[ColumnElement[bool]], after: tuple[datetime, str] | None, limit: int
) -> Compiled:
    """One page of a tenant's flows: `conditions`, after the keyset position, oldest first."""
    where = list(conditions)
    if after is not None:
        where.append(
            tuple_(flows.c.updated_at, flows.c.id)
            > tuple_(literal(after[0], flows.c.updated_at.type), literal(after[1], flows.c.id.type))
        )
    return compile_statement(
        select(flows)
        .where(FLOWS_IN_TENANT, *where)
        .order_by(flows.c.updated_at, flows.c.id)
        .limit(limit)
    )


def count_flows_statement(
    conditions: list[ColumnElement[bool]], group_by: str, phase: str | None
) -> Compiled:
    """How many of a tenant's flows match `conditions`, per `group_by` key.

    `group_by` is "" (one row, key ''), "status", "definition" or "phase" (the state of
    `phase`, bound as a parameter; '' where the flow has no such phase).
    """
    key: ColumnElement[Any]
    if group_by == "status":
        key = flows.c.status
    elif group_by == "definition":
        key = flows.c.definition_name
    elif group_by == "phase":
        key = func.coalesce(flows.c.phase_states.op("->>")(literal(phase, Text)), "")
    else:
        key = literal("", Text)
    grouped = key.label("key")
    statement = select(grouped, func.count().label("flows")).where(FLOWS_IN_TENANT, *conditions)
    if group_by:
        statement = statement.group_by(grouped)
    return compile_statement(statement)


# --- group commit (FlowStore.update_flow with several requests in one transaction) ------------

_FLOW_COLUMN_NAMES = [c.name for c in flows.c]
_KEY_COLUMNS_NULL = (
    "NULL::text AS key_request_id, NULL::text AS key_operation, NULL::text AS key_fingerprint,"
    " NULL::jsonb AS key_response, NULL::timestamptz AS key_expires_at"
)
FLOW_IDS = bindparam("flow_ids", type_=ARRAY(UUID(as_uuid=False)))

LOCK_FLOWS = compile_statement(
    # Every flow of a batch, locked in id order (two batches never wait on each other in a
    # cycle), and the live-or-not keys of its request ids, as of the statement's snapshot: one
    # round trip. Flow rows have key_request_id NULL; key rows have every flow column NULL.
    # The tenant filter is a row comparison (no index serves it), so the primary key is the
    # only index matching `id = ANY(...)` whatever the statistics (tests/storage/test_plans.py).
    text(
        "WITH locked AS MATERIALIZED ("
        " SELECT * FROM flows WHERE id = ANY(:flow_ids)"
        " AND (client_account_id, engagement_id) IS NOT DISTINCT FROM (:account, :engagement)"
        " ORDER BY id FOR UPDATE),"
        " stored AS MATERIALIZED ("
        " SELECT request_id, operation, fingerprint, response, expires_at FROM idempotency_keys"
        " WHERE client_account_id = :account AND engagement_id = :engagement"
        " AND request_id = ANY(:request_ids))"
        f" SELECT locked.*, {_KEY_COLUMNS_NULL} FROM locked"
        " UNION ALL"
        " SELECT (NULL::flows).*, stored.request_id, stored.operation, stored.fingerprint,"
        " stored.response, stored.expires_at FROM stored"
    ).bindparams(ACCOUNT, ENGAGEMENT, FLOW_IDS, bindparam("request_ids", type_=ARRAY(Text)))
)

_MUTABLE_FLOW_COLUMNS = [n for n in _FLOW_COLUMN_NAMES if n not in IMMUTABLE_FLOW_COLUMNS]
WRITE_BATCH = compile_statement(
    # Every accepted change of a batch in one statement. ``states`` lists the flow after each
    # accepted request, in order; ``final`` the positions (1-based) of each changed flow's last
    # state, which is what its row becomes; ``entries`` every new history entry in order;
    # ``keys`` the requests' idempotency keys, each pointing at its own state (the response a
    # replay returns, as in `write_statement`); ``notify`` one payload per changed flow.
    text(
        "WITH state AS ("
        " SELECT s.flow, s.position FROM jsonb_array_elements(:states)"
        " WITH ORDINALITY AS s(flow, position)),"
        " flow_input AS ("
        " SELECT r.* FROM state CROSS JOIN LATERAL jsonb_populate_record(NULL::flows, state.flow)"
        " AS r WHERE state.position = ANY(:final)),"
        " flow_write AS ("
        " UPDATE flows SET "
        + ", ".join(f"{n} = flow_input.{n}" for n in _MUTABLE_FLOW_COLUMNS)
        + " FROM flow_input WHERE flows.id = flow_input.id AND flows.id = ANY(:flow_ids)),"
        " history_write AS ("
        f" INSERT INTO flow_history ({', '.join(ENTRY_COLUMNS)})"
        f" SELECT {', '.join(ENTRY_COLUMNS)}"
        " FROM jsonb_populate_recordset(NULL::flow_history, :entries)),"
        " key_write AS ("
        " INSERT INTO idempotency_keys (client_account_id, engagement_id, request_id, operation,"
        " fingerprint, flow_id, response, created_at, expires_at)"
        " SELECT :account, :engagement, k.request_id, k.operation, k.fingerprint, k.flow_id,"
        " jsonb_build_object('flow', state.flow, 'entry_count', k.entry_count),"
        " k.created_at, k.expires_at"
        " FROM jsonb_to_recordset(:keys) AS k(request_id text, operation text, fingerprint text,"
        " flow_id uuid, position bigint, entry_count integer, created_at timestamptz,"
        " expires_at timestamptz)"
        " JOIN state ON state.position = k.position)"
        f" SELECT count(pg_notify({sql_literal(NOTIFY_CHANNEL)}, n.payload))"
        " FROM jsonb_array_elements_text(:notify) AS n(payload)"
    ).bindparams(
        ACCOUNT,
        ENGAGEMENT,
        FLOW_IDS,
        bindparam("states", type_=JSONB),
        bindparam("final", type_=ARRAY(Integer)),
        bindparam("entries", type_=JSONB),
        bindparam("keys", type_=JSONB),
        bindparam("notify", type_=JSONB),
    )
)


# --- child flows (docs/child_flows.md) --------------------------------------------------------

TREE_FLOW_IDS = bindparam("ids", type_=ARRAY(UUID(as_uuid=False)))
LOCK_TREE_FLOWS = compile_statement(
    # Flows of the tenant, locked one after the other in the order of `ids` (the lock order of
    # a tree: a flow after its descendants; see FlowStore.update_flow).
    select(flows)
    .where(flows.c.id == any_(TREE_FLOW_IDS), FLOWS_IN_TENANT)
    .order_by(func.array_position(TREE_FLOW_IDS, flows.c.id))
    .with_for_update()
)
SELECT_FLOWS = compile_statement(
    select(flows).where(flows.c.id == any_(TREE_FLOW_IDS), FLOWS_IN_TENANT)
)
SHARE_FLOWS = compile_statement(
    # Flows another flow is about to name (external dependencies), held FOR KEY SHARE until
    # COMMIT: an archiver batch skips them (SKIP LOCKED), so none is archived under the new
    # flow; one archived before is then seen by `ARCHIVED_FLOWS` (docs/retention.md).
    select(flows)
    .where(flows.c.id == any_(TREE_FLOW_IDS), FLOWS_IN_TENANT)
    .order_by(flows.c.id)
    .with_for_update(key_share=True)
)
ARCHIVED_FLOWS = compile_statement(
    # The flows among `ids` that retention archived (not restored): about to be deleted, so
    # they cannot become a child or a dependency (docs/retention.md, "Trees and dependencies").
    select(flow_archives.c.flow_id).where(
        flow_archives.c.flow_id == any_(TREE_FLOW_IDS),
        flow_archives.c.purged_at.is_(None),
        flow_archives.c.restored_at.is_(None),
    )
)
COUNT_CHILDREN = compile_statement(
    select(func.count())
    .select_from(flows)
    .where(flows.c.parent_flow_id == FLOW_ID, FLOWS_IN_TENANT)
)
SELECT_CHILDREN = compile_statement(
    select(flows)
    .where(flows.c.parent_flow_id == any_(TREE_FLOW_IDS), FLOWS_IN_TENANT)
    .order_by(flows.c.created_at, flows.c.id)
    .limit(bindparam("limit", type_=Integer))
)
ANCESTORS = compile_statement(
    text(
        "WITH RECURSIVE up(id, parent_flow_id, depth) AS ("
        " SELECT id, parent_flow_id, 0 FROM flows"
        "  WHERE id = :flow_id AND client_account_id = :account AND engagement_id = :engagement"
        " UNION ALL"
        " SELECT f.id, f.parent_flow_id, up.depth + 1 FROM flows f JOIN up"
        "  ON f.id = up.parent_flow_id AND f.client_account_id = :account"
        "  AND f.engagement_id = :engagement WHERE up.depth < :limit"
        ") SELECT id FROM up ORDER BY depth"
    ).bindparams(ACCOUNT, ENGAGEMENT, FLOW_ID, bindparam("limit", type_=Integer))
)
SET_PARENT = compile_statement(
    update(flows)
    .where(flows.c.id == FLOW_ID, FLOWS_IN_TENANT)
    .values(
        parent_flow_id=bindparam("parent_flow_id", type_=UUID(as_uuid=False)),
        parent_phase=bindparam("parent_phase", type_=Text),
    )
)
