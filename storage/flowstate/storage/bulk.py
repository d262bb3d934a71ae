"""The SQL of bulk actions (`bulk_actions`, `bulk_action_items`; docs/bulk-actions.md).

Tenant calls (start, get, list, results, cancel) run in the tenant's transaction as the app
role, under row-level security. The worker's calls (claim, pending, record, finish, release)
run as the connecting user across tenants, like the timer loop:

- `start`: one transaction inserts the action and takes its flows: an ``INSERT ... SELECT`` of
  the tenant's flows matching the filter (or the ids), ordered by (updated_at, id). For RETRY
  each item also records the flow's first FAILED phase in definition order (from
  ``phase_details``), so a later attempt of the same flow issues the same command under the
  same request id. More than `MAX_BULK_FLOWS` flows: MALFORMED_REQUEST, nothing stored.
- `claim`: one running action whose lease is free or expired, ``FOR UPDATE SKIP LOCKED``,
  leased to the caller for `lease` seconds (database clock).
- `record`: one statement locks the action row *if the caller still holds the lease*, marks the
  item (only if not yet marked), bumps the counts and renews the lease, and returns the state;
  no row means the lease was lost (another server took the action over): stop. So an item is
  counted once, by the holder of the lease.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Text,
    any_,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID

from flowstate.core.bulk import BulkActionKind, BulkActionState, BulkOutcome
from flowstate.core.errors import FlowStateError
from flowstate.core.filters import Filter
from flowstate.core.model import ErrorCode, Tenant
from flowstate.storage.filters import filter_condition
from flowstate.storage.limits import (
    MAX_BULK_FLOWS,
    MAX_FLOW_IDS_PER_QUERY,
    check_flow_id,
    check_tenant,
    malformed,
)
from flowstate.storage.schema import bulk_action_items, flows
from flowstate.storage.sql import Compiled, Transaction, compile_statement
from flowstate.storage.statements import FLOWS_IN_TENANT
from flowstate.storage.store import FlowStore
from flowstate.storage.tokens import decode_token, encode_token, query_hash

__all__ = [
    "BulkAction",
    "BulkActionStore",
    "BulkItem",
    "BulkRequest",
    "BulkSelection",
    "ClaimedAction",
]

_ID = bindparam("id", type_=UUID(as_uuid=False))
_OWNER = bindparam("owner", type_=Text)
_LEASE = bindparam("lease", type_=Float)
_COLUMNS = (
    "id, client_account_id, engagement_id, action, phase, filter, reason, user_id, request_id,"
    " fingerprint, state, total, applied, refused, skipped, created_at, updated_at, finished_at"
)
_TENANT = "client_account_id = :account AND engagement_id = :engagement"

_BY_REQUEST_ID = compile_statement(
    text(f"SELECT {_COLUMNS} FROM bulk_actions WHERE {_TENANT} AND request_id = :request_id")
)
_INSERT_ACTION = compile_statement(
    text(
        """
        INSERT INTO bulk_actions (id, client_account_id, engagement_id, action, phase, filter,
            reason, user_id, request_id, fingerprint, state, total, created_at, updated_at)
        VALUES (:id, :account, :engagement, :action, :phase, :filter, :reason, :user_id,
            :request_id, :fingerprint, 'running', 0, statement_timestamp(),
            statement_timestamp())
        """
    ).bindparams(_ID)
)
_SET_TOTAL = compile_statement(
    text(f"UPDATE bulk_actions SET total = :total WHERE id = :id RETURNING {_COLUMNS}").bindparams(
        _ID
    )
)
_GET = compile_statement(
    text(f"SELECT {_COLUMNS} FROM bulk_actions WHERE {_TENANT} AND id = :id").bindparams(_ID)
)
_CANCEL = compile_statement(
    text(
        f"""
        UPDATE bulk_actions SET state = 'cancelled', finished_at = statement_timestamp(),
            updated_at = statement_timestamp()
         WHERE {_TENANT} AND id = :id AND state = 'running'
        RETURNING {_COLUMNS}
        """
    ).bindparams(_ID)
)
_CLAIM = compile_statement(
    text(
        f"""
        UPDATE bulk_actions
           SET lease_owner = :owner,
               lease_until = statement_timestamp() + :lease * interval '1 second'
         WHERE id = (
               SELECT id FROM bulk_actions
                WHERE state = 'running'
                  AND (lease_until IS NULL OR lease_until <= statement_timestamp())
                ORDER BY created_at
                LIMIT 1
                FOR UPDATE SKIP LOCKED)
        RETURNING {_COLUMNS}
        """
    ).bindparams(_OWNER, _LEASE)
)
_PENDING = compile_statement(
    text(
        """
        SELECT position, flow_id, phase FROM bulk_action_items
         WHERE action_id = :id AND outcome IS NULL
         ORDER BY position
         LIMIT :limit
        """
    ).bindparams(_ID, bindparam("limit", type_=Integer))
)
_RECORD = compile_statement(
    text(
        """
        WITH held AS (
            SELECT id FROM bulk_actions WHERE id = :id AND lease_owner = :owner FOR UPDATE
        ), item AS (
            UPDATE bulk_action_items SET outcome = :outcome, error = :error,
                   done_at = statement_timestamp()
             WHERE action_id IN (SELECT id FROM held) AND position = :position
               AND outcome IS NULL
            RETURNING outcome
        )
        UPDATE bulk_actions a
           SET applied = a.applied + (SELECT count(*) FROM item WHERE outcome = 'applied'),
               refused = a.refused + (SELECT count(*) FROM item WHERE outcome = 'refused'),
               skipped = a.skipped + (SELECT count(*) FROM item WHERE outcome = 'skipped'),
               updated_at = statement_timestamp(),
               lease_until = statement_timestamp() + :lease * interval '1 second'
          FROM held
         WHERE a.id = held.id
        RETURNING a.state
        """
    ).bindparams(
        _ID,
        _OWNER,
        _LEASE,
        bindparam("outcome", type_=Text),
        bindparam("error", type_=JSONB),
        bindparam("position", type_=Integer),
    )
)
_FINISH = compile_statement(
    text(
        """
        UPDATE bulk_actions
           SET state = 'succeeded', finished_at = statement_timestamp(),
               updated_at = statement_timestamp(), lease_owner = NULL, lease_until = NULL
         WHERE id = :id AND lease_owner = :owner AND state = 'running'
           AND NOT EXISTS (
               SELECT 1 FROM bulk_action_items WHERE action_id = :id AND outcome IS NULL)
        """
    ).bindparams(_ID, _OWNER)
)
_RELEASE = compile_statement(
    text(
        "UPDATE bulk_actions SET lease_owner = NULL, lease_until = NULL"
        " WHERE id = :id AND lease_owner = :owner"
    ).bindparams(_ID, _OWNER)
)
# The first FAILED phase of the flow in definition order (phase_details keeps that order).
_FIRST_FAILED_PHASE = literal_column(
    "(SELECT d.value ->> 'name'"
    " FROM jsonb_array_elements(flows.phase_details) WITH ORDINALITY AS d(value, n)"
    " WHERE flows.phase_states ->> (d.value ->> 'name') = 'failed'"
    " ORDER BY d.n LIMIT 1)",
    Text,
)


def _list_statement(after: tuple[datetime, str] | None, limit: int) -> Compiled:
    keyset = "AND (created_at, id) < (:after_time, :after_id)" if after is not None else ""
    statement = text(
        f"SELECT {_COLUMNS} FROM bulk_actions WHERE {_TENANT} {keyset}"
        f" ORDER BY created_at DESC, id DESC LIMIT {int(limit)}"
    )
    if after is not None:
        statement = statement.bindparams(
            bindparam("after_time", type_=TIMESTAMP(timezone=True)),
            bindparam("after_id", type_=UUID(as_uuid=False)),
        )
    return compile_statement(statement)


def _results_statement(outcome: BulkOutcome | None, pending_only: bool, limit: int) -> Compiled:
    if pending_only:
        which = "AND outcome IS NULL"
    elif outcome is not None:
        which = "AND outcome = :outcome"
    else:
        which = ""
    return compile_statement(
        text(
            "SELECT position, flow_id, phase, outcome, error, done_at FROM bulk_action_items"
            f" WHERE {_TENANT} AND action_id = :id {which} AND position > :after"
            f" ORDER BY position LIMIT {int(limit)}"
        ).bindparams(_ID, bindparam("after", type_=Integer))
    )


@dataclass(frozen=True, slots=True)
class BulkAction:
    """A bulk action as stored: what it does, to how many flows, how far it got."""

    action_id: str
    tenant: Tenant
    kind: BulkActionKind
    phase: str | None
    filter: str
    reason: str
    user_id: str
    request_id: str
    fingerprint: str
    state: BulkActionState
    total: int
    applied: int
    refused: int
    skipped: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClaimedAction:
    """An action leased to the caller (`BulkActionStore.claim`)."""

    action: BulkAction
    owner: str


@dataclass(frozen=True, slots=True)
class BulkItem:
    """One flow of an action: its position, the phase acted on, and its outcome once taken.

    `error` is the refusal (``{"error_code", "message", "details"}``) or, for a skip,
    ``{"reason"}``.
    """

    position: int
    flow_id: str
    phase: str | None
    outcome: BulkOutcome | None = None
    error: Mapping[str, Any] | None = None
    done_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BulkSelection:
    """Which flows a new action takes: a parsed filter (with its text), or flow ids."""

    filter: Filter | None = None
    filter_text: str = ""
    flow_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """A new bulk action as asked (`BulkService.start`, then `BulkActionStore.start`)."""

    kind: BulkActionKind
    selection: BulkSelection
    phase: str | None = None
    """The phase a ROLLBACK or SKIP acts on (None for the other kinds)."""
    reason: str = ""
    user_id: str = ""
    """Who started it: every flow's change is made as this user."""
    request_id: str = ""
    """Its idempotency key ("" for none)."""


def _action_from_row(row: Any) -> BulkAction:
    return BulkAction(
        action_id=str(row["id"]),
        tenant=Tenant(row["client_account_id"], row["engagement_id"]),
        kind=BulkActionKind(row["action"]),
        phase=row["phase"],
        filter=row["filter"],
        reason=row["reason"],
        user_id=row["user_id"],
        request_id=row["request_id"],
        fingerprint=row["fingerprint"],
        state=BulkActionState(row["state"]),
        total=row["total"],
        applied=row["applied"],
        refused=row["refused"],
        skipped=row["skipped"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


def _item_from_row(row: Mapping[str, Any]) -> BulkItem:
    outcome = row.get("outcome")
    return BulkItem(
        position=row["position"],
        flow_id=str(row["flow_id"]),
        phase=row["phase"],
        outcome=BulkOutcome(outcome) if outcome else None,
        error=row.get("error"),
        done_at=row.get("done_at"),
    )


def _not_found(action_id: str) -> FlowStateError:
    return FlowStateError(
        ErrorCode.BULK_ACTION_NOT_FOUND,
        f"Bulk action {action_id!r} does not exist",
        bulk_action_id=action_id,
    )


def _tenant_params(tenant: Tenant) -> dict[str, Any]:
    return {"account": tenant.client_account_id, "engagement": tenant.engagement_id}


def _check_action_id(action_id: str) -> str:
    return check_flow_id(action_id, "bulk_action_id")


class BulkActionStore:
    """Bulk actions on the store's pool and transaction runner (one per process)."""

    def __init__(self, store: FlowStore) -> None:
        """Run on `store`'s pool, with its retries and error mapping."""
        self._store = store

    async def _run(self, tenant: Tenant | None, work: Any, **options: bool) -> Any:
        return await self._store._run(tenant, work, **options)

    # --- tenant calls ----------------------------------------------------------------------

    async def start(
        self, tenant: Tenant, request: BulkRequest, *, fingerprint: str
    ) -> tuple[BulkAction, bool]:
        """Store a new action over its flows: (the action, created). A repeated request id
        with the same `fingerprint` returns the first action (created False); with another,
        REQUEST_ID_REUSED."""
        check_tenant(tenant)
        kind, phase, selection = request.kind, request.phase, request.selection
        request_id = request.request_id
        if len(selection.flow_ids) > MAX_FLOW_IDS_PER_QUERY:
            raise malformed(
                "flow_ids",
                f"at most {MAX_FLOW_IDS_PER_QUERY} flow ids",
                limit=MAX_FLOW_IDS_PER_QUERY,
            )
        ids = sorted({check_flow_id(i, "flow_ids") for i in selection.flow_ids})
        action_id = str(uuid.uuid4())
        params = _tenant_params(tenant)
        items = self._items_statement(action_id, kind, phase, selection, ids)

        async def work(tx: Transaction) -> tuple[BulkAction, bool]:
            if request_id:
                row = await tx.fetchrow(_BY_REQUEST_ID, {**params, "request_id": request_id})
                if row is not None:
                    found = _action_from_row(row)
                    if found.fingerprint != fingerprint:
                        raise FlowStateError(
                            ErrorCode.REQUEST_ID_REUSED,
                            f"request_id {request_id!r} was used for another request",
                            field="request_id",
                        )
                    return found, False
            await tx.execute(
                _INSERT_ACTION,
                {
                    **params,
                    "id": action_id,
                    "action": kind.value,
                    "phase": phase,
                    "filter": selection.filter_text,
                    "reason": request.reason,
                    "user_id": request.user_id,
                    "request_id": request_id,
                    "fingerprint": fingerprint,
                },
            )
            status = await tx.execute(items, params)
            total = int(status.split()[-1])
            if total > MAX_BULK_FLOWS:
                raise malformed(
                    "filter",
                    f"more than {MAX_BULK_FLOWS} flows match; narrow the filter",
                    limit=MAX_BULK_FLOWS,
                )
            row = await tx.fetchrow(_SET_TOTAL, {"id": action_id, "total": total})
            assert row is not None
            return _action_from_row(row), True

        result: tuple[BulkAction, bool] = await self._run(tenant, work, write=True)
        return result

    @staticmethod
    def _items_statement(
        action_id: str,
        kind: BulkActionKind,
        phase: str | None,
        selection: BulkSelection,
        ids: list[str],
    ) -> Compiled:
        conditions: list[ColumnElement[bool]] = [FLOWS_IN_TENANT]
        if selection.filter is not None:
            conditions.append(filter_condition(selection.filter))
        if ids:
            conditions.append(flows.c.id == any_(literal(ids, ARRAY(UUID(as_uuid=False)))))
        phase_column: ColumnElement[Any] = (
            _FIRST_FAILED_PHASE if kind is BulkActionKind.RETRY else literal(phase, Text)
        )
        chosen = (
            select(
                literal(action_id, UUID(as_uuid=False)),
                func.row_number().over(order_by=(flows.c.updated_at, flows.c.id)).cast(Integer),
                flows.c.id,
                flows.c.client_account_id,
                flows.c.engagement_id,
                phase_column,
            )
            .where(*conditions)
            .limit(MAX_BULK_FLOWS + 1)
        )
        return compile_statement(
            insert(bulk_action_items).from_select(
                ["action_id", "position", "flow_id", "client_account_id", "engagement_id", "phase"],
                chosen,
            )
        )

    async def get(self, tenant: Tenant, action_id: str) -> BulkAction:
        """The action; BULK_ACTION_NOT_FOUND when the tenant has none with this id."""
        check_tenant(tenant)
        action_id = _check_action_id(action_id)

        async def work(tx: Transaction) -> BulkAction:
            row = await tx.fetchrow(_GET, {**_tenant_params(tenant), "id": action_id})
            if row is None:
                raise _not_found(action_id)
            return _action_from_row(row)

        found: BulkAction = await self._run(tenant, work)
        return found

    async def cancel(self, tenant: Tenant, action_id: str) -> BulkAction:
        """Cancel a running action (no flow is taken after this commits, but the one being
        changed); a finished action is returned unchanged. BULK_ACTION_NOT_FOUND."""
        check_tenant(tenant)
        action_id = _check_action_id(action_id)
        params = {**_tenant_params(tenant), "id": action_id}

        async def work(tx: Transaction) -> BulkAction:
            row = await tx.fetchrow(_CANCEL, params) or await tx.fetchrow(_GET, params)
            if row is None:
                raise _not_found(action_id)
            return _action_from_row(row)

        found: BulkAction = await self._run(tenant, work, write=True)
        return found

    async def list_actions(
        self, tenant: Tenant, *, page_size: int, page_token: str
    ) -> tuple[list[BulkAction], str]:
        """One page of the tenant's actions, newest first, and the next page's token."""
        check_tenant(tenant)
        query_id = query_hash({"bulk_actions": True})
        after = None
        if page_token:
            position = decode_token(page_token, "bulk_actions", query_id)
            try:
                after = (datetime.fromisoformat(position[0]), str(uuid.UUID(position[1])))
            except (IndexError, TypeError, ValueError):
                raise malformed("page_token", "page_token is not a valid token") from None
        statement = _list_statement(after, page_size + 1)
        params: dict[str, Any] = _tenant_params(tenant)
        if after is not None:
            params.update(after_time=after[0], after_id=after[1])

        async def work(tx: Transaction) -> list[BulkAction]:
            return [_action_from_row(r) for r in await tx.fetch(statement, params)]

        found: list[BulkAction] = await self._run(tenant, work)
        token = ""
        if len(found) > page_size:
            found = found[:page_size]
            last = found[-1]
            token = encode_token(
                "bulk_actions", query_id, [last.created_at.isoformat(), last.action_id]
            )
        return found, token

    async def results(
        self,
        tenant: Tenant,
        action_id: str,
        *,
        outcome: BulkOutcome | None,
        pending_only: bool = False,
        page_size: int,
        page_token: str,
    ) -> tuple[list[BulkItem], str]:
        """One page of an action's per-flow results in position order (only `outcome`, or only
        the flows not taken yet with `pending_only`). BULK_ACTION_NOT_FOUND."""
        check_tenant(tenant)
        action_id = _check_action_id(action_id)
        query_id = query_hash({"id": action_id, "outcome": str(outcome), "pending": pending_only})
        after = 0
        if page_token:
            position = decode_token(page_token, "bulk_results", query_id)
            if len(position) != 1 or not isinstance(position[0], int):
                raise malformed("page_token", "page_token is not a valid token")
            after = position[0]
        statement = _results_statement(outcome, pending_only, page_size + 1)
        params: dict[str, Any] = {**_tenant_params(tenant), "id": action_id, "after": after}
        if outcome is not None and not pending_only:
            params["outcome"] = outcome.value

        async def work(tx: Transaction) -> list[BulkItem]:
            if await tx.fetchrow(_GET, {**_tenant_params(tenant), "id": action_id}) is None:
                raise _not_found(action_id)
            return [_item_from_row(dict(r)) for r in await tx.fetch(statement, params)]

        items: list[BulkItem] = await self._run(tenant, work)
        token = ""
        if len(items) > page_size:
            items = items[:page_size]
            token = encode_token("bulk_results", query_id, [items[-1].position])
        return items, token

    # --- the worker's calls (every tenant, as the connecting user) -----------------------------

    async def claim(self, owner: str, *, lease: float) -> ClaimedAction | None:
        """Lease the oldest running action nobody holds (or whose lease expired) to `owner`."""

        async def work(tx: Transaction) -> ClaimedAction | None:
            row = await tx.fetchrow(_CLAIM, {"owner": owner, "lease": lease})
            return None if row is None else ClaimedAction(_action_from_row(row), owner)

        claimed: ClaimedAction | None = await self._run(None, work, autocommit=True)
        return claimed

    async def pending(self, action_id: str, *, limit: int) -> list[BulkItem]:
        """The next `limit` flows of the action not taken yet, in order."""

        async def work(tx: Transaction) -> list[BulkItem]:
            rows = await tx.fetch(_PENDING, {"id": action_id, "limit": limit})
            return [_item_from_row(dict(r)) for r in rows]

        items: list[BulkItem] = await self._run(None, work, autocommit=True)
        return items

    async def record(
        self,
        claimed: ClaimedAction,
        item: BulkItem,
        outcome: BulkOutcome,
        error: Mapping[str, Any] | None,
        *,
        lease: float,
    ) -> BulkActionState | None:
        """Record one flow's outcome and renew the lease: the action's state, or None when the
        lease was lost (nothing recorded; stop)."""
        params = {
            "id": claimed.action.action_id,
            "owner": claimed.owner,
            "position": item.position,
            "outcome": outcome.value,
            "error": None if error is None else dict(error),
            "lease": lease,
        }

        async def work(tx: Transaction) -> BulkActionState | None:
            state = await tx.fetchval(_RECORD, params)
            return None if state is None else BulkActionState(state)

        result: BulkActionState | None = await self._run(None, work, autocommit=True)
        return result

    async def finish(self, claimed: ClaimedAction) -> bool:
        """Mark the action SUCCEEDED if no flow is left and the lease is still held."""
        params = {"id": claimed.action.action_id, "owner": claimed.owner}

        async def work(tx: Transaction) -> bool:
            return (await tx.execute(_FINISH, params)).endswith(" 1")

        done: bool = await self._run(None, work, autocommit=True)
        return done

    async def release(self, claimed: ClaimedAction) -> None:
        """Give the lease up (a stopping server), so that another takes over at once."""
        params = {"id": claimed.action.action_id, "owner": claimed.owner}

        async def work(tx: Transaction) -> None:
            await tx.execute(_RELEASE, params)

        await self._run(None, work, autocommit=True)
