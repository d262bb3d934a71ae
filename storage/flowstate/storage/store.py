"""`FlowStore`: the SQL of flows, history and idempotency keys, and the runner of decisions.

One `FlowStore` per process holds the connection pool (`asyncpg.Pool`). Every public method is
one PostgreSQL transaction, opened and committed inside the method; rows never leave it
(callers get core values), and every failure is a `FlowStateError` (see
`flowstate.storage.errors`). Statements live in `flowstate.storage.statements`. Each other
capability lives beside its SQL and runs on this runner: `definitions` (`definitions_repo`),
`webhooks` (`webhooks_repo`), `timers` (`timers`), `retention_policies` (`retention`); what a
decision runs in and the write of a change are `flow_transaction`, a group-commit batch is
`group_commit_batch`.

The store decides nothing about flows: a use case (`flowstate.service`) hands it a decision.
`update_flow` is the shape of every mutation (read under lock, decide in a closure, write)::

    BEGIN; SELECT set_config('role', 'flowstate_app', true),          -- RLS applies
                  set_config('flowstate.client_account_id', '…', true),  -- transaction-local
                  set_config('flowstate.engagement_id', '…', true)       -- (one round trip)
    SELECT flows.*, key.* FROM flows LEFT JOIN idempotency_keys key (tenant, request_id)
     WHERE id AND tenant FOR UPDATE OF flows              -- concurrent writers queue here
    decide(transaction, flow, key)                        -- the use case: replay or a Write
    WITH u AS (UPDATE flows ... FROM jsonb_populate_record(NULL::flows, $flow)),
         h AS (INSERT INTO flow_history ... FROM jsonb_populate_recordset(..., $entries)),
         k AS (INSERT INTO idempotency_keys ...)
    SELECT pg_notify('flowstate_changes', $payload)       -- every write in one round trip
    COMMIT

that is 4 round trips; definitions are cached in-process (the body of a (name, version) never
changes). A duplicate request that commits while this one waits for the lock is invisible to
the lock statement's snapshot: the decision looks its key up again when the command is refused
(`FlowTransaction.find_key`), and a conflicting key insert runs the whole transaction again,
which then replays; see docs/storage.md. Reads of one flow or of its history are one round
trip: the ``flowstate_get_flow`` / ``flowstate_flow_history`` functions, called in autocommit.

Retries: serialization failures and deadlocks are retried (3 attempts in all), a connection
that breaks before COMMIT is sent is retried once, a racing duplicate request id is retried so
it replays; anything else surfaces at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Self

import asyncpg

from flowstate.core.errors import FlowStateError
from flowstate.core.model import Flow, FlowStatus, HistoryEntry, Tenant
from flowstate.storage import codec, retention
from flowstate.storage.definitions_repo import DefinitionStore
from flowstate.storage.errors import AppRoleNotGrantedError, SchemaNotReadyError, to_store_error
from flowstate.storage.flow_transaction import (
    Decide,
    FlowTransaction,
    check_decision,
    flow_not_found,
    write_change,
)
from flowstate.storage.group_commit import GroupCommit
from flowstate.storage.group_commit_batch import GroupCommitRunner, Mutation
from flowstate.storage.limits import (
    DEFAULT_FLOW_PAGE_SIZE,
    DEFAULT_HISTORY_PAGE_SIZE,
    MAX_FLOW_PAGE_SIZE,
    MAX_HISTORY_PAGE_SIZE,
    check_flow_id,
    check_name,
    check_page_size,
    check_tenant,
    check_version,
    malformed,
)
from flowstate.storage.runner import open_connection
from flowstate.storage.sql import (
    Transaction,
    connect_arguments,
    init_connection,
    reset_connection,
    tenant_params,
)
from flowstate.storage.statements import (
    APP_ROLE_MISSING_FOR,
    COUNT_STUCK,
    FLOW_HISTORY_CALL,
    GET_FLOW_CALL,
    HAS_VERSION_TABLE,
    LOCK_FLOW,
    LOCK_TREE_FLOWS,
    NOTIFY_CHANNEL,
    NOW,
    PING,
    SCHEMA_REVISION,
    SELECT_CHILDREN,
    count_flows_statement,
    due_alerts_statement,
    flow_filters,
    list_flows_statement,
    purge_statement,
)
from flowstate.storage.timers import TimerStore
from flowstate.storage.tokens import decode_token, encode_token, query_hash
from flowstate.storage.urls import normalize_database_url
from flowstate.storage.values import (
    FlowCount,
    FlowPage,
    FlowQuery,
    HistoryPage,
    IdempotencyKey,
    MutationResult,
    Outcome,
    StoredKey,
    Write,
)
from flowstate.storage.webhooks_repo import WebhookStore

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "NOTIFY_CHANNEL",
    "FlowCount",
    "FlowPage",
    "FlowQuery",
    "FlowStore",
    "HistoryPage",
    "IdempotencyKey",
    "MutationResult",
    "Outcome",
    "StoredKey",
    "Write",
]

_log = logging.getLogger("flowstate.storage")

DEFAULT_IDEMPOTENCY_TTL = timedelta(hours=24)
"""How long a request id is remembered."""

_STATUS_BY_VALUE = {status.value: status for status in FlowStatus}

DEFAULT_GROUP_COMMIT_MAX_BATCH = 64
"""Most mutations one group-commit transaction holds."""
DEFAULT_GROUP_COMMIT_MAX_IN_FLIGHT = 1
"""Most group-commit transactions of one tenant running at once (each holds a connection).

One: the next batch is everything queued while the running one worked (a lone call on an idle
tenant still starts at once). Two in flight made a call that found one batch running and an
empty queue start a second batch alone (5-11% of the calls at 32 clients, each paying the
lone transaction's round trips): twice the batches, more CPU per call (docs/performance.md)."""

# --- helpers ------------------------------------------------------------------------------


def _largest_first(group: tuple[str, int]) -> tuple[int, str]:
    return -group[1], group[0]


# --- the store ----------------------------------------------------------------------------


class FlowStore(GroupCommitRunner):
    """The Flowstate repository over PostgreSQL; one per process (it owns the pool).

    Get one with `open`, release it with `close`. All methods are coroutines, safe to call
    concurrently; each runs its own transaction. The capabilities beside the flows run on the
    same runner: `definitions` (the registry and its cache), `webhooks`, `timers`,
    `retention_policies`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        pool_timeout: float = 10.0,
        idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL,
        purge_every: int = 1000,
        group_commit: bool = True,
        group_commit_max_batch: int = DEFAULT_GROUP_COMMIT_MAX_BATCH,
        group_commit_max_in_flight: int = DEFAULT_GROUP_COMMIT_MAX_IN_FLIGHT,
    ) -> None:
        """Wrap a pool; use `open`, which also checks the schema and seeds definitions."""
        super().__init__(pool, pool_timeout=pool_timeout)
        self._group_commit: GroupCommit[MutationResult] | None = None
        if group_commit:
            self._group_commit = GroupCommit(
                self._run_batch,
                max_batch=group_commit_max_batch,
                max_in_flight=group_commit_max_in_flight,
            )
        self._idempotency_ttl = idempotency_ttl
        self._purge_every = purge_every
        self._writes_since_purge = 0
        self.definitions = DefinitionStore(self, key_ttl=idempotency_ttl)
        """The definitions registry (`flowstate.storage.definitions_repo`)."""
        self.webhooks = WebhookStore(self)
        """Webhook subscriptions and delivery leases (`flowstate.storage.webhooks_repo`)."""
        self.timers = TimerStore(self)
        """Claiming due timers, heartbeats (`flowstate.storage.timers`)."""
        self.retention_policies = retention.RetentionPolicies(self)
        """Tenants' retention policies (`flowstate.storage.retention`, docs/retention.md)."""

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        pool_size: int = 10,
        pool_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        lock_timeout: float = 10.0,
        idempotency_ttl: timedelta = DEFAULT_IDEMPOTENCY_TTL,
        purge_every: int = 1000,
        migrate: bool = False,
        group_commit: bool = True,
        group_commit_max_batch: int = DEFAULT_GROUP_COMMIT_MAX_BATCH,
        group_commit_max_in_flight: int = DEFAULT_GROUP_COMMIT_MAX_IN_FLIGHT,
    ) -> Self:
        """Connect, optionally migrate to head, check the schema, seed built-in definitions.

        `pool_size` bounds the connections (one is opened at once, more on demand).
        Timeouts are in seconds: `pool_timeout` waits for a pooled connection,
        `connect_timeout` for a new one; `statement_timeout` and `lock_timeout` apply to every
        statement (a flow lock waited on longer fails with StoreUnavailable). Every
        `purge_every` writes, expired idempotency keys are purged (0: never; see
        `purge_expired_idempotency_keys`). Raises StoreUnavailable when the database cannot be
        reached, SchemaNotReadyError when it is not at this build's revision (pass
        `migrate=True` or run ``flowstate migrate upgrade``).

        With `group_commit` (the default), concurrent `update_flow` calls of one tenant share
        transactions (at most `group_commit_max_batch` calls each, at most
        `group_commit_max_in_flight` such transactions at once per tenant); results are the
        same as without (docs/performance.md, "Group commit").
        """
        url = normalize_database_url(database_url)
        if migrate:
            from flowstate.storage import migrate as migrations

            await migrations.upgrade(url)
        try:
            pool = await asyncpg.create_pool(
                **connect_arguments(url),
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout,
                connect=open_connection,
                init=init_connection,
                reset=reset_connection,
                server_settings={
                    "application_name": "flowstate",
                    # sql_literal relies on it (it is PostgreSQL's default anyway).
                    "standard_conforming_strings": "on",
                    "statement_timeout": str(int(statement_timeout * 1000)),
                    "lock_timeout": str(int(lock_timeout * 1000)),
                },
            )
        except FlowStateError:
            raise
        except Exception as exc:
            raise to_store_error(exc) from exc
        store = cls(
            pool,
            pool_timeout=pool_timeout,
            idempotency_ttl=idempotency_ttl,
            purge_every=purge_every,
            group_commit=group_commit,
            group_commit_max_batch=group_commit_max_batch,
            group_commit_max_in_flight=group_commit_max_in_flight,
        )
        try:
            await store._check_schema()
            await store.definitions.seed()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close the pool (waiting for connections in use). The store is unusable afterwards."""
        if self._group_commit is not None:
            await self._group_commit.wait_idle()
        await self._pool.close()

    async def ping(self) -> None:
        """Round-trip to the database; StoreUnavailable when it cannot be reached."""

        async def work(tx: Transaction) -> None:
            await tx.fetchval(PING)

        await self._run(None, work, autocommit=True)

    async def _check_schema(self) -> None:
        from flowstate.storage.migrate import head_revision

        async def work(tx: Transaction) -> tuple[str | None, str]:
            if not await tx.fetchval(HAS_VERSION_TABLE):
                return None, ""
            revision: str | None = await tx.fetchval(SCHEMA_REVISION)
            return revision, await tx.fetchval(APP_ROLE_MISSING_FOR)

        current, not_member = await self._run(None, work)
        required = head_revision()
        if current != required:
            raise SchemaNotReadyError(current, required)
        if not_member:  # every transaction would fail to SET ROLE: say so now, with the fix
            raise AppRoleNotGrantedError(not_member)

    async def _after_write(self) -> None:
        """Every `purge_every` writes, purge expired idempotency keys (best effort)."""
        if self._purge_every <= 0:
            return
        self._writes_since_purge += 1
        if self._writes_since_purge < self._purge_every:
            return
        self._writes_since_purge = 0
        try:
            await self.purge_expired_idempotency_keys()
        except FlowStateError:
            _log.warning("opportunistic purge of idempotency keys failed", exc_info=True)

    # --- maintenance across tenants (as the connecting user) ---------------------------

    async def purge_expired_idempotency_keys(self, *, limit: int = 10_000) -> int:
        """Delete up to `limit` expired idempotency keys of every tenant; return how many.

        Runs as the connecting user, not the app role: maintenance, not a tenant's request.
        Called opportunistically every `purge_every` writes; a server may also call it on a
        timer. (A key past its expiry is ignored by lookups whether purged or not.)
        """
        statement = purge_statement(limit)

        async def work(tx: Transaction) -> int:
            status = await tx.execute(statement)
            return int(status.split()[-1])

        return await self._run(None, work, autocommit=True)

    async def count_stuck_flows(self, *, unchanged_since: datetime) -> dict[FlowStatus, int]:
        """Non-terminal flows of every tenant unchanged since `unchanged_since`, by status.

        An operator's aggregate (the ``flowstate_stuck_flows`` gauge), never answered to a
        tenant, so it runs as the connecting user like the purge. One index range scan per
        status (the partial index ``ix_flows_status_updated_at``); statuses with no stuck flow
        are absent.
        """

        async def work(tx: Transaction) -> dict[FlowStatus, int]:
            rows = await tx.fetch(COUNT_STUCK, {"before": unchanged_since})
            counts = ((_STATUS_BY_VALUE.get(row["status"]), row["flows"]) for row in rows)
            return {status: count for status, count in counts if status is not None}

        return await self._run(None, work, autocommit=True)

    async def due_alert_flows(
        self, *, stuck_after: Mapping[FlowStatus, float], limit: int
    ) -> tuple[datetime, list[tuple[Tenant, str]]]:
        """The database's now and up to `limit` flows of every tenant with a breach due.

        For the server's alert scan (`flowstate.service.alerts`), which then decides each flow
        under its lock; like the stuck count it runs as the connecting user, across tenants.
        `stuck_after`: seconds per status (0 or missing: never stuck).
        """
        pairs = tuple(
            sorted(
                (status.value, float(seconds))
                for status, seconds in stuck_after.items()
                if seconds > 0
            )
        )
        statement = due_alerts_statement(pairs, limit)

        async def work(tx: Transaction) -> tuple[datetime, list[tuple[Tenant, str]]]:
            now: datetime = await tx.fetchval(NOW)
            rows = await tx.fetch(statement)
            return now, [
                (Tenant(r["client_account_id"], r["engagement_id"]), str(r["id"])) for r in rows
            ]

        return await self._run(None, work, autocommit=True)

    # --- writes: the runner a use case hands its decision to -------------------------------------

    async def update_flow(
        self,
        tenant: Tenant,
        flow_id: str,
        decide: Decide,
        *,
        request_id: str,
        now: datetime,
        lock_first: Sequence[str] = (),
    ) -> MutationResult:
        """Read the flow under its row lock, let `decide` choose, write what it chose; commit.

        `lock_first` names flows to lock, in that order, before this one: the descendants a
        decision will change (child flows), so that every transaction locks a flow after its
        descendants and never the other way round (docs/child_flows.md, "Atomicity").

        `decide` gets the open transaction, the locked flow and the live key of `request_id`
        as of the lock ("" or an expired key: None). It returns a `Write` (written here: flow,
        entries, key and notification in one statement; a write without entries stores only
        its key) or a replayed `MutationResult` (nothing is written). Its refusals propagate
        and roll back. FLOW_NOT_FOUND for a missing flow or another tenant's. The whole
        transaction, `decide` included, runs again when a racing duplicate's key insert
        conflicts, so that it replays (see docs/storage.md).

        With group commit, concurrent calls of one tenant share a transaction
        (`GroupCommitRunner._run_batch`): each `decide` still sees its own locked flow and key
        and its refusal fails only its own call; `decide` may be called again (on a fallback),
        as it may be today on a retry.
        """
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)
        if self._group_commit is None or lock_first:
            # A transaction that must lock descendants first runs alone: a batch locks its
            # flows in id order, not a tree's order.
            return await self._update_one(tenant, flow_id, decide, request_id, now, lock_first)
        mutation = Mutation(tenant, flow_id, decide, request_id, now)
        return await self._group_commit.submit(tenant, mutation, request_id)

    async def _update_one(
        self,
        tenant: Tenant,
        flow_id: str,
        decide: Decide,
        request_id: str,
        now: datetime,
        lock_first: Sequence[str] = (),
    ) -> MutationResult:
        """`update_flow` in a transaction of its own (no group commit, or a batch of one)."""
        params = {**tenant_params(tenant), "flow_id": flow_id, "request_id": request_id}

        async def work(tx: Transaction) -> MutationResult:
            if lock_first:
                ids = [i for i in lock_first if i != flow_id]
                await tx.fetch(LOCK_TREE_FLOWS, {**tenant_params(tenant), "ids": ids})
            row = await tx.fetchrow(LOCK_FLOW, params)
            if row is None:
                raise flow_not_found(flow_id)
            unit = self._transaction(tx, tenant, now)
            stored = None
            if request_id and row["key_operation"] is not None:
                stored = await unit.live_key(
                    request_id,
                    row["key_operation"],
                    row["key_fingerprint"],
                    row["key_response"],
                    row["key_expires_at"],
                )
            flow = codec.flow_from_row(row)
            outcome = await decide(unit, flow, stored)
            if isinstance(outcome, MutationResult):
                return outcome
            check_decision(flow.version, outcome.flow, outcome.entries)
            if outcome.entries or outcome.key is not None or outcome.timers is not None:
                await write_change(tx, outcome, new=False, now=now, key_ttl=self._idempotency_ttl)
            return MutationResult(flow=outcome.flow, entries=outcome.entries)

        return await self._run(tenant, work, write=True)

    async def insert_flow(
        self,
        tenant: Tenant,
        decide: Callable[[FlowTransaction], Awaitable[Outcome]],
        *,
        now: datetime,
    ) -> MutationResult:
        """Let `decide` build a new flow in an open transaction, and write it; commit.

        Like `update_flow` without a flow to lock: `decide` may look up its request's key
        (`FlowTransaction.find_key`) and return the replay. The written flow must belong to
        `tenant` and be at version ``len(entries)``. MALFORMED_REQUEST (``field="flow_id"``)
        when a flow with its id already exists.
        """
        check_tenant(tenant)

        async def work(tx: Transaction) -> MutationResult:
            outcome = await decide(self._transaction(tx, tenant, now))
            if isinstance(outcome, MutationResult):
                return outcome
            if outcome.flow.tenant != tenant:
                raise ValueError("a new flow must belong to the transaction's tenant")
            check_decision(0, outcome.flow, outcome.entries)
            await write_change(tx, outcome, new=True, now=now, key_ttl=self._idempotency_ttl)
            return MutationResult(flow=outcome.flow, entries=outcome.entries)

        return await self._run(tenant, work, write=True)

    # --- reads ----------------------------------------------------------------------------------

    async def get_flow(self, tenant: Tenant, flow_id: str) -> Flow:
        """The flow; FLOW_NOT_FOUND when it does not exist or belongs to another tenant."""
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)

        async def work(tx: Transaction) -> Flow:
            row = await tx.fetchrow(GET_FLOW_CALL, {**tenant_params(tenant), "flow_id": flow_id})
            if row is None:
                raise flow_not_found(flow_id)
            return codec.flow_from_row(row)

        return await self._run(None, work, autocommit=True)

    async def list_flows(self, tenant: Tenant, query: FlowQuery) -> FlowPage:
        """One page of the tenant's flows matching `query` (see `FlowQuery`)."""
        check_tenant(tenant)
        page_size = check_page_size(query.page_size, DEFAULT_FLOW_PAGE_SIZE, MAX_FLOW_PAGE_SIZE)
        conditions, description = flow_filters(query)
        query_id = query_hash(description)
        after = None
        if query.page_token:
            position = decode_token(query.page_token, "flows", query_id)
            try:
                after = (datetime.fromisoformat(position[0]), str(uuid.UUID(position[1])))
            except (IndexError, TypeError, ValueError):
                raise malformed("page_token", "page_token is not a valid token") from None
        statement = list_flows_statement(conditions, after, page_size + 1)

        async def work(tx: Transaction) -> FlowPage:
            rows = await tx.fetch(statement, tenant_params(tenant))
            found = tuple(codec.flow_from_row(r) for r in rows[:page_size])
            token = ""
            if len(rows) > page_size:
                last = found[-1]
                assert last.updated_at is not None  # a stored flow always has one
                token = encode_token("flows", query_id, [last.updated_at.isoformat(), last.flow_id])
            return FlowPage(flows=found, next_page_token=token)

        return await self._run(tenant, work)

    async def count_flows(
        self, tenant: Tenant, query: FlowQuery, *, group_by: str = "", phase: str | None = None
    ) -> FlowCount:
        """How many of the tenant's flows match `query`'s filters (its page is ignored), in all
        and per `group_by` key: "" (no groups), "status", "definition", or "phase" (the state
        of `phase`). Groups come largest first, then by key."""
        check_tenant(tenant)
        if group_by not in ("", "status", "definition", "phase"):
            raise malformed("group_by", "group_by must be status, definition or phase.<name>")
        if group_by == "phase":
            check_name("group_by", phase)
        conditions, _ = flow_filters(query)
        statement = count_flows_statement(conditions, group_by, phase)

        async def work(tx: Transaction) -> FlowCount:
            rows = await tx.fetch(statement, tenant_params(tenant))
            counts = sorted(((r["key"], int(r["flows"])) for r in rows), key=_largest_first)
            total = sum(count for _, count in counts)
            return FlowCount(total=total, groups=tuple(counts) if group_by else ())

        return await self._run(tenant, work)

    async def children_of(
        self, tenant: Tenant, flow_ids: Sequence[str], limit: int
    ) -> tuple[Flow, ...]:
        """The child flows of `flow_ids` (at most `limit`), oldest first."""
        check_tenant(tenant)

        async def work(tx: Transaction) -> tuple[Flow, ...]:
            rows = await tx.fetch(
                SELECT_CHILDREN, {**tenant_params(tenant), "ids": list(flow_ids), "limit": limit}
            )
            return tuple(codec.flow_from_row(r) for r in rows)

        return await self._run(tenant, work)

    async def _read_history(
        self, tenant: Tenant, flow_id: str, after: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        """Entries after `after`, one round trip; FLOW_NOT_FOUND when the tenant has no flow."""

        async def work(tx: Transaction) -> tuple[HistoryEntry, ...]:
            params = {**tenant_params(tenant), "flow_id": flow_id, "after": after}
            try:
                rows = await tx.fetch(FLOW_HISTORY_CALL, {**params, "limit": limit})
            except asyncpg.NoDataFoundError:
                raise flow_not_found(flow_id) from None
            return tuple(codec.entry_from_row(r) for r in rows)

        return await self._run(None, work, autocommit=True)

    async def list_history(
        self,
        tenant: Tenant,
        flow_id: str,
        *,
        after_version: int = 0,
        page_size: int = DEFAULT_HISTORY_PAGE_SIZE,
        page_token: str = "",
    ) -> HistoryPage:
        """The flow's history after `after_version`, in version order, one page at a time.

        FLOW_NOT_FOUND for a missing flow or another tenant's.
        """
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)
        size = check_page_size(page_size, DEFAULT_HISTORY_PAGE_SIZE, MAX_HISTORY_PAGE_SIZE)
        after = check_version("after_version", after_version)
        query_id = query_hash({"flow_id": flow_id, "after_version": after_version})
        if page_token:
            position = decode_token(page_token, "history", query_id)
            if len(position) != 1 or not isinstance(position[0], int):
                raise malformed("page_token", "page_token is not a valid token")
            after = max(after, position[0])

        entries = await self._read_history(tenant, flow_id, after, size + 1)
        token = ""
        if len(entries) > size:
            entries = entries[:size]
            token = encode_token("history", query_id, [entries[-1].flow_version])
        return HistoryPage(entries=entries, next_page_token=token)

    async def read_changes(
        self, tenant: Tenant, flow_id: str, after_version: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        """Up to `limit` history entries of one flow after `after_version`, in version order.

        Gap-free by construction: a flow's versions commit in order (the row lock serialises
        its writers), so a reader resuming after its last version misses nothing.
        FLOW_NOT_FOUND for a missing flow or another tenant's.
        """
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)
        after = check_version("after_version", after_version)
        size = check_page_size(limit, DEFAULT_HISTORY_PAGE_SIZE, MAX_HISTORY_PAGE_SIZE)
        return await self._read_history(tenant, flow_id, after, size)
