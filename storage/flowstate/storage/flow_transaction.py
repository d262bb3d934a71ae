"""`FlowTransaction`: the open transaction a use case's decision runs in, and the write of a change.

`FlowStore.update_flow` / `insert_flow` (and a group-commit batch,
`flowstate.storage.group_commit_batch`) lend a decision one `FlowTransaction`: its reads see the
flow's row lock (definitions, the request's key looked up again, timers, other flows of a tree)
and it writes other flows of the tree in the same transaction. `write_change` is the one
statement that writes a decided change: flow row, history, idempotency key, notification (and
the flow's timers); see the store's module doc for the round trips.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from flowstate.core.definitions import FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow, HistoryEntry, Tenant
from flowstate.storage import codec, timers
from flowstate.storage.definitions_repo import DefinitionStore
from flowstate.storage.sql import Compiled, Transaction, tenant_params
from flowstate.storage.statements import (
    ANCESTORS,
    ARCHIVED_FLOWS,
    COUNT_CHILDREN,
    DELETE_KEY,
    FLOW_EXISTS,
    LOCK_TREE_FLOWS,
    SELECT_FLOWS,
    SELECT_HISTORY,
    SELECT_KEY,
    SET_PARENT,
    SHARE_FLOWS,
    write_statement,
)
from flowstate.storage.values import LockedTimer, MutationResult, Outcome, StoredKey, Write

__all__ = [
    "Decide",
    "DecisionTransaction",
    "FlowTransaction",
    "check_decision",
    "flow_not_found",
    "history_after",
    "notify_payload",
    "write_change",
]

_NO_PARAMS: Mapping[str, Any] = {}


def flow_not_found(flow_id: str) -> FlowStateError:
    """FLOW_NOT_FOUND for `flow_id` (missing, or another tenant's: the same answer)."""
    return FlowStateError(
        ErrorCode.FLOW_NOT_FOUND, f"Flow {flow_id!r} does not exist", flow_id=flow_id
    )


def check_decision(before: int, after: Flow, entries: tuple[HistoryEntry, ...]) -> None:
    """The core's contract: one entry per version, numbered from the old version + 1."""
    versions = [e.flow_version for e in entries]
    expected = list(range(before + 1, before + 1 + len(entries)))
    if versions != expected or after.version != before + len(entries):
        raise ValueError(f"entry versions {versions} do not follow flow version {before}")


def notify_payload(flow: Flow) -> str:
    """The ``flowstate_changes`` notification of a flow's new version."""
    return codec.dumps(
        {
            "flow_id": flow.flow_id,
            "version": flow.version,
            "client_account_id": flow.tenant.client_account_id,
            "engagement_id": flow.tenant.engagement_id,
        }
    )


async def write_change(
    tx: Transaction, write: Write, *, new: bool, now: datetime, key_ttl: timedelta
) -> None:
    """Run the one statement writing a change: flow row, history, key, notification; then
    sync the flow's timers when the decision planned them."""
    flow, entries = write.flow, write.entries
    params: dict[str, Any] = {
        "flow": codec.flow_to_json(flow),
        "entries": [codec.entry_to_json(flow, e) for e in entries],
    }
    if entries:
        params["notify_payload"] = notify_payload(flow)
    if write.key is not None:
        params.update(
            key_client_account_id=flow.tenant.client_account_id,
            key_engagement_id=flow.tenant.engagement_id,
            key_request_id=write.key.request_id,
            key_operation=write.key.operation,
            key_fingerprint=write.key.fingerprint,
            key_flow_id=flow.flow_id,
            key_created_at=now,
            key_expires_at=now + key_ttl,
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
                **tenant_params(flow.tenant),
                "version": flow.version,
            },
        )


async def history_after(
    tx: Transaction, tenant: Tenant, flow_id: str, after: int, limit: int
) -> tuple[HistoryEntry, ...]:
    """Up to `limit` entries of the flow after version `after`; FLOW_NOT_FOUND without one."""
    params = {**tenant_params(tenant), "flow_id": flow_id}
    rows = await tx.fetch(SELECT_HISTORY, {**params, "after_version": after, "limit": limit})
    if not rows and await tx.fetchval(FLOW_EXISTS, params) is None:
        raise flow_not_found(flow_id)
    return tuple(codec.entry_from_row(r) for r in rows)


class DecisionTransaction(Transaction):
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


class FlowTransaction:
    """One open tenant transaction, lent to a use case's decision; its reads see the lock."""

    def __init__(
        self,
        tx: Transaction,
        tenant: Tenant,
        now: datetime,
        *,
        definitions: DefinitionStore,
        key_ttl: timedelta,
    ) -> None:
        """Wrap the runner's transaction (`FlowStore.update_flow` / `insert_flow` make these);
        `definitions` resolves (and caches) definitions, `key_ttl` is how long keys live."""
        self._tx = tx
        self._tenant = tenant
        self._now = now
        self._definitions = definitions
        self._key_ttl = key_ttl

    async def definition(self, name: str, version: int | None = None) -> FlowDefinition:
        """A definition in this tenant's view (its latest version when None), from the store's
        cache or this tx; DEFINITION_NOT_FOUND when there is none."""
        return await self._definitions.resolve(self._tx, self._tenant, name, version)

    async def find_key(self, request_id: str) -> StoredKey | None:
        """The live key of `request_id` as of now (an expired one is deleted: None)."""
        row = await self._tx.fetchrow(
            SELECT_KEY, {**tenant_params(self._tenant), "request_id": request_id}
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
            params = {**tenant_params(self._tenant), "request_id": request_id}
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

    async def share_flows(self, flow_ids: Sequence[str]) -> list[Flow]:
        """The tenant's flows among `flow_ids`, held FOR KEY SHARE until the transaction ends
        (flows a new flow depends on: retention cannot archive them meanwhile)."""
        return await self._flows(SHARE_FLOWS, flow_ids)

    async def archived(self, flow_ids: Sequence[str]) -> set[str]:
        """The flows among `flow_ids` that retention archived and will delete (not restored).

        Read after the flows are locked: a separate statement, so its snapshot sees an archive
        that committed while the lock was waited for."""
        if not flow_ids:
            return set()
        rows = await self._tx.fetch(ARCHIVED_FLOWS, {"ids": list(flow_ids)})
        return {str(r["flow_id"]) for r in rows}

    async def _flows(self, statement: Compiled, flow_ids: Sequence[str]) -> list[Flow]:
        if not flow_ids:
            return []
        params = {**tenant_params(self._tenant), "ids": list(flow_ids)}
        return [codec.flow_from_row(r) for r in await self._tx.fetch(statement, params)]

    async def count_children(self, flow_id: str) -> int:
        """How many flows have ever been children of `flow_id`."""
        count: int = await self._tx.fetchval(
            COUNT_CHILDREN, {**tenant_params(self._tenant), "flow_id": flow_id}
        )
        return count

    async def ancestors(self, flow_id: str, limit: int) -> list[str]:
        """`flow_id` and its ancestors, nearest first, at most `limit` + 1 of them."""
        rows = await self._tx.fetch(
            ANCESTORS, {**tenant_params(self._tenant), "flow_id": flow_id, "limit": limit}
        )
        return [str(r["id"]) for r in rows]

    async def set_parent(self, flow_id: str, parent_flow_id: str, parent_phase: str) -> None:
        """Record the parent of a linked flow (no version: the child's own state is unchanged)."""
        params = {
            **tenant_params(self._tenant),
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
        check_decision(before, write.flow, write.entries)
        if write.entries:
            await write_change(
                self._tx,
                Write(write.flow, write.entries, None, write.timers),
                new=new,
                now=self._now,
                key_ttl=self._key_ttl,
            )

    async def replay(self, stored: StoredKey) -> MutationResult:
        """The first result of a stored key (its entries read back from history)."""
        response = stored.response
        flow = codec.flow_from_json(response["flow"])
        if "entries" in response:  # keys written before entry_count: entries inline
            entries = tuple(codec.entry_from_json(e) for e in response["entries"])
        else:
            count = int(response["entry_count"])
            entries = await history_after(
                self._tx, self._tenant, flow.flow_id, flow.version - count, count
            )
        return MutationResult(flow=flow, entries=entries, replayed=True)


Decide = Callable[[FlowTransaction, Flow, StoredKey | None], Awaitable[Outcome]]
"""A use case's decision about one locked flow (see `FlowStore.update_flow`)."""
