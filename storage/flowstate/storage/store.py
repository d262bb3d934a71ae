"""`FlowStore`: the SQL of flows, history, idempotency keys and definitions, and the runner.

One `FlowStore` per process holds the connection pool (`asyncpg.Pool`). Every public method is
one PostgreSQL transaction, opened and committed inside the method; rows never leave it
(callers get core values), and every failure is a `FlowStateError` (see
`flowstate.storage.errors`). Statements live in `flowstate.storage.statements`.

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
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

import asyncpg

from flowstate.core.definitions import (
    BUILTIN_DEFINITIONS,
    FlowDefinition,
    definition_to_dict,
)
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow, FlowStatus, HistoryEntry, Tenant
from flowstate.storage import codec, definitions_repo, retention, timers, webhooks_repo
from flowstate.storage.errors import AppRoleNotGrantedError, SchemaNotReadyError, to_store_error
from flowstate.storage.group_commit import GroupCommit, Queued
from flowstate.storage.limits import (
    DEFAULT_DEFINITION_PAGE_SIZE,
    DEFAULT_FLOW_PAGE_SIZE,
    DEFAULT_HISTORY_PAGE_SIZE,
    MAX_DEFINITION_PAGE_SIZE,
    MAX_FLOW_PAGE_SIZE,
    MAX_HISTORY_PAGE_SIZE,
    MAX_REQUEST_ID_LENGTH,
    check_flow_id,
    check_identifier,
    check_name,
    check_tenant,
    check_version,
    malformed,
)
from flowstate.storage.runner import TransactionRunner, _Attempt
from flowstate.storage.sql import (
    Compiled,
    Transaction,
    connect_arguments,
    init_connection,
    reset_connection,
)
from flowstate.storage.statements import (
    ANCESTORS,
    APP_ROLE_MISSING_FOR,
    COUNT_CHILDREN,
    COUNT_STUCK,
    DELETE_KEY,
    EXACT_DEFINITION,
    FLOW_EXISTS,
    FLOW_HISTORY_CALL,
    GET_FLOW_CALL,
    HAS_VERSION_TABLE,
    LOCK_FLOW,
    LOCK_FLOWS,
    LOCK_TREE_FLOWS,
    NOTIFY_CHANNEL,
    NOW,
    PING,
    SCHEMA_REVISION,
    SEED_DEFINITION,
    SELECT_CHILDREN,
    SELECT_FLOWS,
    SELECT_HISTORY,
    SELECT_KEY,
    SET_PARENT,
    WRITE_BATCH,
    count_flows_statement,
    due_alerts_statement,
    flow_filters,
    list_flows_statement,
    purge_statement,
    write_statement,
)
from flowstate.storage.tokens import decode_token, encode_token, query_hash
from flowstate.storage.urls import normalize_database_url
from flowstate.storage.values import (
    ClaimedTimer,
    FlowCount,
    FlowPage,
    FlowQuery,
    HistoryPage,
    IdempotencyKey,
    LockedTimer,
    MutationResult,
    Outcome,
    StoredKey,
    Write,
)

__all__ = [
    "DEFAULT_IDEMPOTENCY_TTL",
    "NOTIFY_CHANNEL",
    "FlowCount",
    "FlowPage",
    "FlowQuery",
    "FlowStore",
    "FlowTransaction",
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

_DEFINITION_CACHE_SIZE = 4096
"""Definitions kept in process; bodies are immutable, so the cache is never invalidated."""
_STATUS_BY_VALUE = {status.value: status for status in FlowStatus}
_NO_PARAMS: Mapping[str, Any] = {}

DEFAULT_GROUP_COMMIT_MAX_BATCH = 64
"""Most mutations one group-commit transaction holds."""
DEFAULT_GROUP_COMMIT_MAX_IN_FLIGHT = 2
"""Most group-commit transactions of one tenant running at once (each holds a connection)."""

# --- helpers ------------------------------------------------------------------------------


def _tenant_params(tenant: Tenant) -> dict[str, Any]:
    return {"account": tenant.client_account_id, "engagement": tenant.engagement_id}


def _check_page_size(value: object, default: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise malformed("page_size", "page_size must be a non-negative integer")
    return default if value == 0 else min(value, maximum)


def _largest_first(group: tuple[str, int]) -> tuple[int, str]:
    return -group[1], group[0]


def _check_webhook_id(webhook_id: str) -> str:
    try:
        return str(uuid.UUID(webhook_id))
    except (ValueError, TypeError, AttributeError):
        raise _webhook_not_found(str(webhook_id)[:64]) from None


def _webhook_not_found(webhook_id: str) -> FlowStateError:
    return FlowStateError(
        ErrorCode.WEBHOOK_NOT_FOUND, f"webhook {webhook_id} not found", webhook_id=webhook_id
    )


def _flow_not_found(flow_id: str) -> FlowStateError:
    return FlowStateError(
        ErrorCode.FLOW_NOT_FOUND, f"Flow {flow_id!r} does not exist", flow_id=flow_id
    )


def _check_decision(before: int, after: Flow, entries: tuple[HistoryEntry, ...]) -> None:
    """The core's contract: one entry per version, numbered from the old version + 1."""
    versions = [e.flow_version for e in entries]
    expected = list(range(before + 1, before + 1 + len(entries)))
    if versions != expected or after.version != before + len(entries):
        raise ValueError(f"entry versions {versions} do not follow flow version {before}")


Decide = Callable[["FlowTransaction", Flow, StoredKey | None], Awaitable[Outcome]]
"""A use case's decision about one locked flow (see `FlowStore.update_flow`)."""


@dataclass(frozen=True, slots=True)
class _Mutation:
    """One `update_flow` call waiting for its batch (group commit)."""

    tenant: Tenant
    flow_id: str
    decide: Decide
    request_id: str
    now: datetime


class _DecisionTransaction(Transaction):
    """The batch's transaction as one decision sees it: its statements run in a savepoint.

    A decision that runs statements (a definition not cached yet, a key looked up again, an
    expired key deleted) and is then refused must leave no trace, as its own transaction would
    not: the first statement of a decision opens a savepoint, a refusal rolls back to it. A
    decision that runs no statement (the common case) costs no round trip.
    """

    _SAVEPOINT = "flowstate_decision"

    def __init__(self, transaction: Transaction) -> None:
        """Run on `transaction`'s connection, inside the batch's open transaction."""
        super().__init__(transaction.connection)
        self._open = False

    async def _enter(self) -> None:
        if not self._open:
            await self.connection.execute(f"SAVEPOINT {self._SAVEPOINT}")
            self._open = True

    async def fetch(
        self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS
    ) -> list[asyncpg.Record]:
        """As `Transaction.fetch`, inside the decision's savepoint."""
        await self._enter()
        return await super().fetch(statement, params)

    async def fetchrow(
        self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS
    ) -> asyncpg.Record | None:
        """As `Transaction.fetchrow`, inside the decision's savepoint."""
        await self._enter()
        return await super().fetchrow(statement, params)

    async def fetchval(self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS) -> Any:
        """As `Transaction.fetchval`, inside the decision's savepoint."""
        await self._enter()
        return await super().fetchval(statement, params)

    async def execute(self, statement: Compiled, params: Mapping[str, Any] = _NO_PARAMS) -> str:
        """As `Transaction.execute`, inside the decision's savepoint."""
        await self._enter()
        return await super().execute(statement, params)

    async def end(self, *, keep: bool) -> None:
        """End the decision: keep what it ran, or undo it (only when it ran anything)."""
        if self._open:
            self._open = False
            undo = "" if keep else f"ROLLBACK TO SAVEPOINT {self._SAVEPOINT}; "
            await self.connection.execute(f"{undo}RELEASE SAVEPOINT {self._SAVEPOINT}")


# --- the unit of work -------------------------------------------------------------------------


class FlowTransaction:
    """One open tenant transaction, lent to a use case's decision; its reads see the lock."""

    def __init__(self, store: FlowStore, tx: Transaction, tenant: Tenant, now: datetime) -> None:
        """Wrap the runner's transaction (`FlowStore.update_flow` / `insert_flow` make these)."""
        self._store = store
        self._tx = tx
        self._tenant = tenant
        self._now = now

    async def definition(self, name: str, version: int | None = None) -> FlowDefinition:
        """A definition in this tenant's view (its latest version when None), from the store's
        cache or this tx; DEFINITION_NOT_FOUND when there is none."""
        return await self._store._load_definition(self._tx, self._tenant, name, version)

    async def find_key(self, request_id: str) -> StoredKey | None:
        """The live key of `request_id` as of now (an expired one is deleted: None)."""
        row = await self._tx.fetchrow(
            SELECT_KEY, {**_tenant_params(self._tenant), "request_id": request_id}
        )
        if row is None:
            return None
        return await self.live_key(
            request_id, row["operation"], row["fingerprint"], row["response"], row["expires_at"]
        )

    async def live_key(
        self,
        request_id: str,
        operation: str,
        fingerprint: str,
        response: Mapping[str, Any],
        expires_at: datetime,
    ) -> StoredKey | None:
        """The key read from a row, or None after deleting it when it has expired."""
        if expires_at <= self._now:
            params = {**_tenant_params(self._tenant), "request_id": request_id}
            await self._tx.execute(DELETE_KEY, params)
            return None
        return StoredKey(operation, fingerprint, response)

    async def lock_timer(self, flow_id: str, phase: str, kind: str) -> LockedTimer | None:
        """The flow's timer row (locked: a racing Heartbeat waits) with the database clock;
        None when it is gone (fired, or disarmed by a change of the flow)."""
        row = await self._tx.fetchrow(
            timers.LOCK, {"flow_id": flow_id, "phase": phase, "kind": kind}
        )
        if row is None:
            return None
        return LockedTimer(due_at=row["due_at"], flow_version=row["flow_version"], now=row["now"])

    async def delete_timer(self, flow_id: str, phase: str, kind: str) -> None:
        """Delete one of the flow's timer rows (a void timer)."""
        await self._tx.execute(timers.DELETE, {"flow_id": flow_id, "phase": phase, "kind": kind})

    async def lock_flows(self, flow_ids: Sequence[str]) -> list[Flow]:
        """The tenant's flows among `flow_ids`, locked in that order (missing ones left out)."""
        return await self._flows(LOCK_TREE_FLOWS, flow_ids)

    async def read_flows(self, flow_ids: Sequence[str]) -> list[Flow]:
        """The tenant's flows among `flow_ids`, as of this transaction's snapshot (no lock)."""
        return await self._flows(SELECT_FLOWS, flow_ids)

    async def _flows(self, statement: Compiled, flow_ids: Sequence[str]) -> list[Flow]:
        if not flow_ids:
            return []
        params = {**_tenant_params(self._tenant), "ids": list(flow_ids)}
        return [codec.flow_from_row(r) for r in await self._tx.fetch(statement, params)]

    async def count_children(self, flow_id: str) -> int:
        """How many flows have ever been children of `flow_id`."""
        count: int = await self._tx.fetchval(
            COUNT_CHILDREN, {**_tenant_params(self._tenant), "flow_id": flow_id}
        )
        return count

    async def ancestors(self, flow_id: str, limit: int) -> list[str]:
        """`flow_id` and its ancestors, nearest first, at most `limit` + 1 of them."""
        rows = await self._tx.fetch(
            ANCESTORS, {**_tenant_params(self._tenant), "flow_id": flow_id, "limit": limit}
        )
        return [str(r["id"]) for r in rows]

    async def set_parent(self, flow_id: str, parent_flow_id: str, parent_phase: str) -> None:
        """Record the parent of a linked flow (no version: the child's own state is unchanged)."""
        params = {
            **_tenant_params(self._tenant),
            "flow_id": flow_id,
            "parent_flow_id": parent_flow_id,
            "parent_phase": parent_phase,
        }
        await self._tx.execute(SET_PARENT, params)

    async def write(self, write: Write, *, new: bool) -> None:
        """Write another flow's change in this transaction (a child or a parent of the flow
        being decided): flow, entries, notification; no idempotency key."""
        if write.flow.tenant != self._tenant:
            raise ValueError("a flow written in a transaction must belong to its tenant")
        before = 0 if new else write.flow.version - len(write.entries)
        _check_decision(before, write.flow, write.entries)
        if write.entries:
            await self._store._write(
                self._tx,
                Write(write.flow, write.entries, None, write.timers),
                new=new,
                now=self._now,
            )

    async def replay(self, stored: StoredKey) -> MutationResult:
        """The first result of a stored key (its entries read back from history)."""
        response = stored.response
        flow = codec.flow_from_json(response["flow"])
        if "entries" in response:  # keys written before entry_count: entries inline
            entries = tuple(codec.entry_from_json(e) for e in response["entries"])
        else:
            count = int(response["entry_count"])
            entries = await self._store._history_after(
                self._tx, self._tenant, flow.flow_id, flow.version - count, count
            )
        return MutationResult(flow=flow, entries=entries, replayed=True)


# --- the store ----------------------------------------------------------------------------


class FlowStore(TransactionRunner):
    """The Flowstate repository over PostgreSQL; one per process (it owns the pool).

    Get one with `open`, release it with `close`. All methods are coroutines, safe to call
    concurrently; each runs its own transaction.
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
        # (tenant or None for built-ins only, name, version) -> definition; bodies never change.
        self._definitions: dict[tuple[Tenant | None, str, int], FlowDefinition] = {}

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
            await store._seed_definitions()
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

    async def _seed_definitions(self) -> None:
        """Insert missing built-in definitions; warn when a stored body differs from the code."""

        async def work(tx: Transaction) -> list[tuple[FlowDefinition, Any]]:
            seen = []
            for definition in BUILTIN_DEFINITIONS.values():
                key = {"name": definition.name, "version": definition.version}
                await tx.execute(SEED_DEFINITION, {**key, "body": definition_to_dict(definition)})
                seen.append((definition, await tx.fetchval(EXACT_DEFINITION, key)))
            return seen

        for definition, stored in await self._run(None, work):
            if stored != definition_to_dict(definition):
                _log.warning(
                    "stored definition %s v%d differs from the built-in one; the stored one is "
                    "used (a changed definition needs a new version)",
                    definition.name,
                    definition.version,
                )

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

    # --- definitions ------------------------------------------------------------------------

    async def get_definition(
        self, name: str, version: int | None = None, *, tenant: Tenant | None = None
    ) -> FlowDefinition:
        """The definition `name` at `version` (None: its latest version) in `tenant`'s view
        (its own definitions and the built-ins; None: the built-ins only).

        DEFINITION_NOT_FOUND when there is no such definition (also another tenant's).
        """
        if version is not None:
            cached = self._definitions.get((tenant, name, version))
            if cached is not None:
                return cached
        return (await self.get_stored_definition(name, version, tenant=tenant)).definition

    async def get_stored_definition(
        self, name: str, version: int | None = None, *, tenant: Tenant | None = None
    ) -> definitions_repo.StoredDefinition:
        """`get_definition` with whose the definition is and when it was registered."""
        check_name("definition_name", name)
        if tenant is not None:
            check_tenant(tenant)
        if version is not None:
            check_version("definition_version", version, minimum=1)

        async def work(tx: Transaction) -> definitions_repo.StoredDefinition:
            return await definitions_repo.load(tx, tenant, name, version)

        stored = await self._run(tenant, work)
        self._remember_definition(tenant, stored.definition)
        return stored

    async def _load_definition(
        self, tx: Transaction, tenant: Tenant, name: str, version: int | None
    ) -> FlowDefinition:
        if version is None:
            # "The latest" can change at any time (a registration, maybe by another process):
            # ask for its number, and take the (immutable) body from the cache when it is there.
            version = await definitions_repo.latest_version(tx, tenant, name)
        cached = self._definitions.get((tenant, name, version))
        if cached is not None:
            return cached
        definition = (await definitions_repo.load(tx, tenant, name, version)).definition
        self._remember_definition(tenant, definition)
        return definition

    def _remember_definition(self, tenant: Tenant | None, definition: FlowDefinition) -> None:
        if len(self._definitions) >= _DEFINITION_CACHE_SIZE:
            self._definitions.pop(next(iter(self._definitions)))  # oldest first: FIFO
        self._definitions[(tenant, definition.name, definition.version)] = definition

    async def register_definition(
        self,
        tenant: Tenant,
        submitted: FlowDefinition,
        *,
        request_id: str,
        now: datetime,
        allow_shadow_builtin: bool = False,
        validate_only: bool = False,
    ) -> tuple[definitions_repo.StoredDefinition, bool]:
        """Register `submitted` (validated; its version is ignored) for `tenant`:
        (the stored version, created).

        An identical body returns the existing version; idempotent on `request_id` (see
        `flowstate.storage.definitions_repo`). DEFINITION_SHADOWS_BUILTIN for a built-in's name
        without `allow_shadow_builtin`. With `validate_only`, nothing is written.
        """
        check_tenant(tenant)
        check_identifier("request_id", request_id, required=False, max_length=MAX_REQUEST_ID_LENGTH)

        async def work(tx: Transaction) -> tuple[definitions_repo.StoredDefinition, bool]:
            return await definitions_repo.register(
                tx,
                tenant,
                submitted,
                allow_shadow_builtin=allow_shadow_builtin,
                request_id=request_id,
                now=now,
                key_ttl=self._idempotency_ttl,
                validate_only=validate_only,
            )

        return await self._run(tenant, work, write=not validate_only)

    async def list_definitions(
        self, tenant: Tenant, *, name: str = "", page_size: int = 0, page_token: str = ""
    ) -> definitions_repo.DefinitionPage:
        """The definitions `tenant` can use: the latest version of each name (its own and the
        built-ins) by name, or with `name` every version of it, newest first. AIP-158 pages."""
        check_tenant(tenant)
        if name:
            check_name("name", name)
        size = _check_page_size(page_size, DEFAULT_DEFINITION_PAGE_SIZE, MAX_DEFINITION_PAGE_SIZE)
        query_id = query_hash({"definitions": name})
        after: str | int | None = None
        if page_token:
            position = decode_token(page_token, "definitions", query_id)
            valid = len(position) == 1 and isinstance(position[0], int if name else str)
            if not valid or isinstance(position[0], bool):
                raise malformed("page_token", "page_token is not a valid token")
            after = position[0]

        async def work(tx: Transaction) -> list[definitions_repo.StoredDefinition]:
            return await definitions_repo.list_page(
                tx, tenant, name=name, after=after, limit=size + 1
            )

        found = await self._run(tenant, work)
        token = ""
        if len(found) > size:
            found = found[:size]
            last = found[-1].definition
            token = encode_token("definitions", query_id, [last.version if name else last.name])
        return definitions_repo.DefinitionPage(tuple(found), token)

    # --- webhooks (`flowstate.storage.webhooks_repo`) ------------------------------------------

    async def create_webhook(
        self,
        tenant: Tenant,
        *,
        url: str,
        secret: str,
        statuses: tuple[str, ...],
        definition_name: str,
        now: datetime,
    ) -> webhooks_repo.StoredWebhook:
        """A new subscription of `tenant`, delivering every change that commits after it."""
        check_tenant(tenant)

        async def work(tx: Transaction) -> webhooks_repo.StoredWebhook:
            return await webhooks_repo.create(
                tx,
                tenant,
                webhook_id=str(uuid.uuid4()),
                url=url,
                secret=secret,
                statuses=statuses,
                definition_name=definition_name,
                now=now,
            )

        return await self._run(tenant, work, write=True)

    async def list_webhooks(self, tenant: Tenant) -> tuple[webhooks_repo.StoredWebhook, ...]:
        """Every subscription of `tenant`, oldest first."""
        check_tenant(tenant)

        async def work(tx: Transaction) -> tuple[webhooks_repo.StoredWebhook, ...]:
            return await webhooks_repo.list_all(tx, tenant)

        return await self._run(tenant, work)

    async def get_webhook(
        self, tenant: Tenant, webhook_id: str
    ) -> tuple[webhooks_repo.StoredWebhook, str]:
        """The subscription and its secret; WEBHOOK_NOT_FOUND for another tenant's or none."""
        check_tenant(tenant)
        webhook_id = _check_webhook_id(webhook_id)

        async def work(tx: Transaction) -> tuple[webhooks_repo.StoredWebhook, str] | None:
            return await webhooks_repo.get(tx, tenant, webhook_id)

        found = await self._run(tenant, work)
        if found is None:
            raise _webhook_not_found(webhook_id)
        return found

    async def delete_webhook(self, tenant: Tenant, webhook_id: str) -> None:
        """Delete the subscription; WEBHOOK_NOT_FOUND when `tenant` has none with this id."""
        check_tenant(tenant)
        webhook_id = _check_webhook_id(webhook_id)

        async def work(tx: Transaction) -> bool:
            return await webhooks_repo.delete(tx, tenant, webhook_id)

        if not await self._run(tenant, work, write=True):
            raise _webhook_not_found(webhook_id)

    async def rewind_webhook(
        self,
        tenant: Tenant,
        webhook_id: str,
        *,
        position: tuple[int, int] | None = None,
        since: datetime | None = None,
    ) -> webhooks_repo.StoredWebhook:
        """Move the cursor to `position`, or to just before the first change at or after
        `since` (neither: now), and enable the subscription (a replay)."""
        check_tenant(tenant)
        webhook_id = _check_webhook_id(webhook_id)

        async def work(tx: Transaction) -> webhooks_repo.StoredWebhook | None:
            target = position or await webhooks_repo.position_at(tx, tenant, since)
            return await webhooks_repo.rewind(tx, tenant, webhook_id, target)

        found = await self._run(tenant, work, write=True)
        if found is None:
            raise _webhook_not_found(webhook_id)
        return found

    async def claim_webhooks(
        self, owner: str, *, lease_seconds: float, limit: int
    ) -> tuple[webhooks_repo.ClaimedWebhook, ...]:
        """Take or renew `owner`'s leases (the delivery loop; every tenant)."""

        async def work(tx: Transaction) -> tuple[webhooks_repo.ClaimedWebhook, ...]:
            return await webhooks_repo.claim(tx, owner, lease_seconds=lease_seconds, limit=limit)

        return await self._run(None, work, write=True)

    async def advance_webhook(
        self,
        held: webhooks_repo.ClaimedWebhook,
        owner: str,
        position: tuple[int, int],
        *,
        delivered: int,
        now: datetime,
    ) -> bool:
        """Store the cursor after acknowledged deliveries; False when the lease is lost."""

        async def work(tx: Transaction) -> bool:
            return await webhooks_repo.advance(
                tx, held, owner, position, delivered=delivered, now=now
            )

        return await self._run(None, work, write=True)

    async def record_webhook_failure(
        self,
        held: webhooks_repo.ClaimedWebhook,
        owner: str,
        *,
        error: str,
        budget: int,
        now: datetime,
    ) -> webhooks_repo.FailureCount | None:
        """Count a failed attempt (disabling at `budget`); None when the lease is lost."""

        async def work(tx: Transaction) -> webhooks_repo.FailureCount | None:
            return await webhooks_repo.record_failure(
                tx, held, owner, error=error, budget=budget, now=now
            )

        return await self._run(None, work, write=True)

    async def release_webhooks(self, owner: str) -> None:
        """Give up every lease `owner` holds."""

        async def work(tx: Transaction) -> None:
            await webhooks_repo.release(tx, owner)

        await self._run(None, work, write=True)

    # --- idempotency keys -----------------------------------------------------------------------

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

    # --- timers (docs/timers.md) -----------------------------------------------------------------

    async def claim_timers(self, *, batch: int, lease: float) -> list[ClaimedTimer]:
        """Claim up to `batch` due timers of every tenant for `lease` seconds (see
        `flowstate.storage.timers`); the caller fires each through `update_flow`.

        Runs as the connecting user (cross-tenant maintenance, like the purge), one statement.
        """

        async def work(tx: Transaction) -> list[ClaimedTimer]:
            rows = await tx.fetch(timers.CLAIM, {"lease": lease, "batch": batch})
            return [
                ClaimedTimer(
                    tenant=Tenant(row["client_account_id"], row["engagement_id"]),
                    flow_id=str(row["flow_id"]),
                    phase=row["phase"],
                    kind=row["kind"],
                    due_at=row["due_at"],
                    flow_version=row["flow_version"],
                )
                for row in rows
            ]

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

    async def touch_heartbeat(
        self, tenant: Tenant, flow_id: str, phase: str, kind: str, seconds: float
    ) -> datetime | None:
        """Push the flow's `kind` timer of `phase` to `seconds` from now (database clock; never
        earlier); its new due time, or None when the flow has no such timer."""
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)
        params = {"flow_id": flow_id, "phase": phase, "kind": kind, "seconds": seconds}

        async def work(tx: Transaction) -> datetime | None:
            due: datetime | None = await tx.fetchval(timers.HEARTBEAT, params)
            return due

        return await self._run(tenant, work, write=True)

    # --- writes: the runner a use case hands its decision to -------------------------------------

    # --- retention policies (docs/retention.md; the archiver has its own RetentionStore) ----

    async def get_retention_policy(self, tenant: Tenant) -> retention.RetentionPolicy | None:
        """The tenant's own retention policy, or None."""
        check_tenant(tenant)
        return await self._run(tenant, lambda tx: retention.select_policy(tx, tenant))

    async def set_retention_policy(
        self, tenant: Tenant, retain_days: int, user_id: str
    ) -> retention.RetentionPolicy | None:
        """Set the tenant's policy (1..36500 days), or remove it (0); what is stored now."""
        check_tenant(tenant)
        if retain_days == 0:
            await self._run(tenant, lambda tx: retention.delete_policy(tx, tenant), write=True)
            return None
        days = retention.check_retain_days(retain_days)
        return await self._run(
            tenant, lambda tx: retention.upsert_policy(tx, tenant, days, user_id), write=True
        )

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

        With group commit, concurrent calls of one tenant share a transaction (`_run_batch`):
        each `decide` still sees its own locked flow and key and its refusal fails only its own
        call; `decide` may be called again (on a fallback), as it may be today on a retry.
        """
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)
        if self._group_commit is None or lock_first:
            # A transaction that must lock descendants first runs alone: a batch locks its
            # flows in id order, not a tree's order.
            return await self._update_one(tenant, flow_id, decide, request_id, now, lock_first)
        mutation = _Mutation(tenant, flow_id, decide, request_id, now)
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
        params = {**_tenant_params(tenant), "flow_id": flow_id, "request_id": request_id}

        async def work(tx: Transaction) -> MutationResult:
            if lock_first:
                ids = [i for i in lock_first if i != flow_id]
                await tx.fetch(LOCK_TREE_FLOWS, {**_tenant_params(tenant), "ids": ids})
            row = await tx.fetchrow(LOCK_FLOW, params)
            if row is None:
                raise _flow_not_found(flow_id)
            unit = FlowTransaction(self, tx, tenant, now)
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
            _check_decision(flow.version, outcome.flow, outcome.entries)
            if outcome.entries or outcome.key is not None or outcome.timers is not None:
                await self._write(tx, outcome, new=False, now=now)
            return MutationResult(flow=outcome.flow, entries=outcome.entries)

        return await self._run(tenant, work, write=True)

    async def _run_batch(self, lane: Hashable, batch: list[Queued[MutationResult]]) -> None:
        """Run a group-commit batch: one transaction for all, or one each when that fails.

        One round trip locks every flow (in id order) and reads the requests' keys; each
        request is decided in order (the same flow twice: on the flow as the previous request
        left it), a refusal answering that request only; one statement writes every accepted
        change; one COMMIT. A database error before COMMIT runs every request again in a
        transaction of its own, in batch order (as if group commit were off); an error while
        committing (the outcome unknown), or one the runner has already classified (no pooled
        connection within the pool timeout), fails them all, as it fails a lone transaction.
        """
        mutations: list[_Mutation] = [queued.request for queued in batch]
        if len(batch) == 1:
            await self._run_alone(batch[0])
            return
        tenant = mutations[0].tenant
        attempt = _Attempt()

        async def work(tx: Transaction) -> list[MutationResult | FlowStateError]:
            return await self._decide_batch(tx, tenant, mutations)

        try:
            results = await self._attempt(tenant, work, True, False, attempt)
        except FlowStateError as classified:
            # Already classified (no pooled connection in time, the database unreachable):
            # the same answer for every call; running them one by one would wait once each.
            for queued in batch:
                queued.settle(classified)
            return
        except Exception as exc:
            if attempt.committing:
                unknown = self._translate(exc)
                for queued in batch:
                    queued.settle(unknown)
                return
            _log.info(
                "group commit of %d mutations failed (%s); running them one by one",
                len(batch),
                type(exc).__name__,
            )
            for queued in batch:
                await self._run_alone(queued)
            return
        await self._after_write()
        for queued, result in zip(batch, results, strict=True):
            queued.settle(result)

    async def _run_alone(self, queued: Queued[MutationResult]) -> None:
        mutation: _Mutation = queued.request
        try:
            result = await self._update_one(
                mutation.tenant,
                mutation.flow_id,
                mutation.decide,
                mutation.request_id,
                mutation.now,
            )
        except Exception as exc:
            queued.settle(exc)
            return
        queued.settle(result)

    async def _decide_batch(
        self, tx: Transaction, tenant: Tenant, mutations: list[_Mutation]
    ) -> list[MutationResult | FlowStateError]:
        """Lock, decide each mutation in order, write the accepted ones (one statement)."""
        rows = await tx.fetch(
            LOCK_FLOWS,
            {
                **_tenant_params(tenant),
                "flow_ids": sorted({m.flow_id for m in mutations}),
                "request_ids": [m.request_id for m in mutations if m.request_id],
            },
        )
        locked: dict[str, asyncpg.Record] = {}
        keys: dict[str, asyncpg.Record] = {}
        for row in rows:
            request_id = row["key_request_id"]
            if request_id is None:
                locked[str(row["id"])] = row
            else:
                keys[request_id] = row
        current: dict[str, Flow] = {}
        decision_tx = _DecisionTransaction(tx)
        results: list[MutationResult | FlowStateError] = []
        writes: list[tuple[_Mutation, Write]] = []
        for mutation in mutations:
            flow_id = mutation.flow_id
            flow_row = locked.get(flow_id)
            if flow_row is None:
                results.append(_flow_not_found(flow_id))
                continue
            flow = current.get(flow_id)
            if flow is None:
                flow = current[flow_id] = codec.flow_from_row(flow_row)
            unit = FlowTransaction(self, decision_tx, tenant, mutation.now)
            try:
                stored = None
                key = keys.get(mutation.request_id) if mutation.request_id else None
                if key is not None:
                    stored = await unit.live_key(
                        mutation.request_id,
                        key["key_operation"],
                        key["key_fingerprint"],
                        key["key_response"],
                        key["key_expires_at"],
                    )
                outcome = await mutation.decide(unit, flow, stored)
            except FlowStateError as refusal:
                await decision_tx.end(keep=False)
                results.append(refusal)
                continue
            await decision_tx.end(keep=True)
            if isinstance(outcome, MutationResult):
                results.append(outcome)
                continue
            _check_decision(flow.version, outcome.flow, outcome.entries)
            if outcome.entries or outcome.key is not None or outcome.timers is not None:
                writes.append((mutation, outcome))
            if outcome.entries:
                current[flow_id] = outcome.flow
            results.append(MutationResult(flow=outcome.flow, entries=outcome.entries))
        if writes:
            await self._write_batch(tx, tenant, writes)
        return results

    async def _write_batch(
        self, tx: Transaction, tenant: Tenant, writes: list[tuple[_Mutation, Write]]
    ) -> None:
        """Write a batch's accepted changes: `WRITE_BATCH`, the batch form of `_write`."""
        if any(type(write) is not Write or write.timers is not None for _, write in writes):
            # Timers to sync, or a decision of a kind this statement does not know: the lone
            # write, one by one (still one transaction, one COMMIT).
            for mutation, write in writes:
                await self._write(tx, write, new=False, now=mutation.now)
            return
        states: list[dict[str, Any]] = []
        final: dict[str, int] = {}
        entries: list[dict[str, Any]] = []
        keys: list[dict[str, Any]] = []
        notify: dict[str, str] = {}
        for mutation, write in writes:
            flow = write.flow
            states.append(codec.flow_to_json(flow))
            position = len(states)
            if write.entries:
                final[flow.flow_id] = position
                entries.extend(codec.entry_to_json(flow, e) for e in write.entries)
                notify[flow.flow_id] = codec.dumps(
                    {
                        "flow_id": flow.flow_id,
                        "version": flow.version,
                        "client_account_id": flow.tenant.client_account_id,
                        "engagement_id": flow.tenant.engagement_id,
                    }
                )
            if write.key is not None:
                keys.append(
                    {
                        "request_id": write.key.request_id,
                        "operation": write.key.operation,
                        "fingerprint": write.key.fingerprint,
                        "flow_id": flow.flow_id,
                        "position": position,
                        "entry_count": len(write.entries),
                        "created_at": mutation.now.isoformat(),
                        "expires_at": (mutation.now + self._idempotency_ttl).isoformat(),
                    }
                )
        await tx.execute(
            WRITE_BATCH,
            {
                **_tenant_params(tenant),
                "states": states,
                "final": list(final.values()),
                "flow_ids": list(final),
                "entries": entries,
                "keys": keys,
                "notify": list(notify.values()),
            },
        )

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
            outcome = await decide(FlowTransaction(self, tx, tenant, now))
            if isinstance(outcome, MutationResult):
                return outcome
            if outcome.flow.tenant != tenant:
                raise ValueError("a new flow must belong to the transaction's tenant")
            _check_decision(0, outcome.flow, outcome.entries)
            await self._write(tx, outcome, new=True, now=now)
            return MutationResult(flow=outcome.flow, entries=outcome.entries)

        return await self._run(tenant, work, write=True)

    async def _write(self, tx: Transaction, write: Write, *, new: bool, now: datetime) -> None:
        """Run the one statement writing a change: flow row, history, key, notification."""
        flow, entries = write.flow, write.entries
        params: dict[str, Any] = {
            "flow": codec.flow_to_json(flow),
            "entries": [codec.entry_to_json(flow, e) for e in entries],
        }
        if entries:
            params["notify_payload"] = codec.dumps(
                {
                    "flow_id": flow.flow_id,
                    "version": flow.version,
                    "client_account_id": flow.tenant.client_account_id,
                    "engagement_id": flow.tenant.engagement_id,
                }
            )
        if write.key is not None:
            params.update(
                key_client_account_id=flow.tenant.client_account_id,
                key_engagement_id=flow.tenant.engagement_id,
                key_request_id=write.key.request_id,
                key_operation=write.key.operation,
                key_fingerprint=write.key.fingerprint,
                key_flow_id=flow.flow_id,
                key_created_at=now,
                key_expires_at=now + self._idempotency_ttl,
                entry_count=len(entries),
            )
        if entries or write.key is not None:
            await tx.execute(write_statement(new, bool(entries), write.key is not None), params)
        if write.timers is not None:
            sync = write.timers
            planned = [
                {
                    "phase": t.phase,
                    "kind": t.kind.value,
                    "delay": (t.due_at - sync.now).total_seconds(),
                    "reset": t.reset,
                }
                for t in sync.timers
            ]
            await tx.execute(
                timers.SYNC,
                {
                    "timers": planned,
                    "flow_id": flow.flow_id,
                    "account": flow.tenant.client_account_id,
                    "engagement": flow.tenant.engagement_id,
                    "version": flow.version,
                },
            )

    # --- reads ----------------------------------------------------------------------------------

    async def get_flow(self, tenant: Tenant, flow_id: str) -> Flow:
        """The flow; FLOW_NOT_FOUND when it does not exist or belongs to another tenant."""
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)

        async def work(tx: Transaction) -> Flow:
            row = await tx.fetchrow(GET_FLOW_CALL, {**_tenant_params(tenant), "flow_id": flow_id})
            if row is None:
                raise _flow_not_found(flow_id)
            return codec.flow_from_row(row)

        return await self._run(None, work, autocommit=True)

    async def list_flows(self, tenant: Tenant, query: FlowQuery) -> FlowPage:
        """One page of the tenant's flows matching `query` (see `FlowQuery`)."""
        check_tenant(tenant)
        page_size = _check_page_size(query.page_size, DEFAULT_FLOW_PAGE_SIZE, MAX_FLOW_PAGE_SIZE)
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
            rows = await tx.fetch(statement, _tenant_params(tenant))
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
            rows = await tx.fetch(statement, _tenant_params(tenant))
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
                SELECT_CHILDREN, {**_tenant_params(tenant), "ids": list(flow_ids), "limit": limit}
            )
            return tuple(codec.flow_from_row(r) for r in rows)

        return await self._run(tenant, work)

    async def _history_after(
        self, tx: Transaction, tenant: Tenant, flow_id: str, after: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        params = {**_tenant_params(tenant), "flow_id": flow_id}
        rows = await tx.fetch(SELECT_HISTORY, {**params, "after_version": after, "limit": limit})
        if not rows and await tx.fetchval(FLOW_EXISTS, params) is None:
            raise _flow_not_found(flow_id)
        return tuple(codec.entry_from_row(r) for r in rows)

    async def _read_history(
        self, tenant: Tenant, flow_id: str, after: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        """Entries after `after`, one round trip; FLOW_NOT_FOUND when the tenant has no flow."""

        async def work(tx: Transaction) -> tuple[HistoryEntry, ...]:
            params = {**_tenant_params(tenant), "flow_id": flow_id, "after": after}
            try:
                rows = await tx.fetch(FLOW_HISTORY_CALL, {**params, "limit": limit})
            except asyncpg.NoDataFoundError:
                raise _flow_not_found(flow_id) from None
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
        size = _check_page_size(page_size, DEFAULT_HISTORY_PAGE_SIZE, MAX_HISTORY_PAGE_SIZE)
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
        size = _check_page_size(limit, DEFAULT_HISTORY_PAGE_SIZE, MAX_HISTORY_PAGE_SIZE)
        return await self._read_history(tenant, flow_id, after, size)
