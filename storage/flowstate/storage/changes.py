"""The tenant change log behind WatchFlows: commit-ordered reads and the resume cursor.

`flow_history` has a global identity `seq` and the writing transaction's id `txid` (xid8). A
sequence value alone is not commit-ordered: a transaction can take seq 10, another seq 11 and
commit first, so a reader that resumed "after 11" would skip 10 forever. Instead a reader only
takes entries written by transactions older than the oldest transaction still running:

    txid < pg_snapshot_xmin(pg_current_snapshot())

Every transaction below that horizon has finished, so the set of such entries never changes
again; ordered by ``(txid, seq)`` they form a log that only ever grows at its end. A position in
it is the pair ``(txid, seq)`` of the last entry consumed, and "after (t, s)" can never skip an
entry that commits later: a later commit has a txid at or above the horizon of every earlier
read. When a read finds nothing new it still learns that everything below the horizon is
consumed, so an idle reader's position moves to ``(xmin - 1, MAX_SEQ)``.

The price is latency: an entry is readable once every transaction older than its own has ended
(usually milliseconds; a long-running writing transaction anywhere in the cluster holds the
horizon back, see docs/streams.md). Reads report `pending` when committed entries wait behind
the horizon, so the hub re-reads soon without waiting for another notification.

A snapshot (WatchFlows without a cursor) is taken in one REPEATABLE READ transaction together
with its horizon. Entries that committed above the horizon but before the snapshot are already
in it; the snapshot returns them as a *skip map* ``{flow_id: version}``, valid until the
reader's position passes the snapshot's xmax, so that no change is delivered twice. The skip map
is part of the cursor while it is in force (it is small: the flows written by transactions that
were in flight when the snapshot was taken).

The cursor is opaque to clients: ``base64url(json)`` of ``{"v": 1, "t": txid, "s": seq}`` plus
``"k"`` (skip map) and ``"u"`` (skip-until txid) while a skip map is in force.

Statements are built on the schema (`flowstate.storage.schema`) and run on a small pool of the
log's own with the store's connection setup (`flowstate.storage.sql`), each read in a read-only
REPEATABLE READ transaction as the application role in the tenant, like the store's, so
row-level security applies here too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import asyncpg
from sqlalchemy import (
    BigInteger,
    Integer,
    Text,
    and_,
    any_,
    bindparam,
    func,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from flowstate.core.errors import FlowStateError
from flowstate.core.filters import Filter, FlowFacts
from flowstate.core.model import ErrorCode, Flow, FlowStatus, HistoryEntry, PhaseState, Tenant
from flowstate.storage.codec import Row, entry_from_row, flow_from_row
from flowstate.storage.filters import filter_condition
from flowstate.storage.flow_transaction import flow_not_found
from flowstate.storage.limits import MAX_TREE_FLOWS
from flowstate.storage.schema import flow_history, flows
from flowstate.storage.sql import (
    Compiled,
    Transaction,
    compile_statement,
    connect_arguments,
    init_connection,
    reset_connection,
    tenant_params,
)
from flowstate.storage.statements import enter_tenant
from flowstate.storage.urls import normalize_database_url

__all__ = [
    "MAX_SEQ",
    "SNAPSHOT_LIMIT",
    "LogPosition",
    "TenantChange",
    "TenantCursor",
    "TenantLog",
    "TenantRead",
    "TenantSnapshot",
    "TreeRead",
]

LogPosition = tuple[int, int]
"""``(txid, seq)`` of a history entry: the order of the tenant-wide log."""

MAX_SEQ: Final = 2**63 - 1
"""The seq of a position that stands after every entry of its transaction."""

SNAPSHOT_LIMIT: Final = 1000
"""At most this many flows in the initial snapshot of WatchFlows (more: MALFORMED_REQUEST)."""

T = TypeVar("T")
_CURSOR_VERSION: Final = 1
_MAX_CURSOR_LENGTH: Final = 64 * 1024

_ACCOUNT = bindparam("account", type_=Text)
_ENGAGEMENT = bindparam("engagement", type_=Text)
_HISTORY_IN_TENANT = and_(
    flow_history.c.client_account_id == _ACCOUNT, flow_history.c.engagement_id == _ENGAGEMENT
)
_AFTER = tuple_(flow_history.c.txid, flow_history.c.seq) > tuple_(
    bindparam("after_txid", type_=BigInteger), bindparam("after_seq", type_=BigInteger)
)
_XMIN = func.cast(func.cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)
_XMAX = func.cast(func.cast(func.pg_snapshot_xmax(func.pg_current_snapshot()), Text), BigInteger)
_HORIZON = bindparam("horizon", type_=BigInteger)

_READ = compile_statement(
    select(
        flow_history,
        flows.c.definition_name,
        flows.c.labels.label("flow_labels"),
        flows.c.created_at.label("flow_created_at"),
        flows.c.phase_states.label("flow_phase_states"),
        flows.c.error_context.label("flow_error_context"),
        flows.c.parent_flow_id.label("flow_parent_flow_id"),
    )
    .select_from(flow_history.join(flows, flows.c.id == flow_history.c.flow_id))
    .where(_HISTORY_IN_TENANT, _AFTER, flow_history.c.txid < _HORIZON)
    .order_by(flow_history.c.txid, flow_history.c.seq)
    .limit(bindparam("limit", type_=Integer))
)
_HORIZON_NOW = compile_statement(select(_XMIN.label("xmin"), _XMAX.label("xmax")))
_XMAX_NOW = compile_statement(select(_XMAX))
_PENDING = compile_statement(
    select(
        select(flow_history.c.seq)
        .where(_HISTORY_IN_TENANT, flow_history.c.txid >= _HORIZON, _AFTER)
        .exists()
    )
)
_STATUSES = bindparam("statuses", type_=ARRAY(Text))
_DEFINITION = bindparam("definition_name", type_=Text)
_FLOW_IDS = bindparam("flow_ids", type_=ARRAY(Text))
_SNAPSHOT_SELECT = (
    select(flows)
    .where(
        flows.c.client_account_id == _ACCOUNT,
        flows.c.engagement_id == _ENGAGEMENT,
        or_(func.cardinality(_STATUSES) == 0, flows.c.status == any_(_STATUSES)),
        or_(_DEFINITION == "", flows.c.definition_name == _DEFINITION),
        or_(func.cardinality(_FLOW_IDS) == 0, func.cast(flows.c.id, Text) == any_(_FLOW_IDS)),
    )
    .order_by(flows.c.updated_at, flows.c.id)
    .limit(bindparam("limit", type_=Integer))
)
_SNAPSHOT = compile_statement(_SNAPSHOT_SELECT)


def _snapshot_with(condition: Filter) -> Compiled:
    return compile_statement(_SNAPSHOT_SELECT.where(filter_condition(condition)))


_TREE = compile_statement(
    text(
        "WITH RECURSIVE tree(id, depth) AS ("
        " SELECT id, 0 FROM flows"
        "  WHERE id = :flow_id AND client_account_id = :account AND engagement_id = :engagement"
        " UNION ALL"
        " SELECT f.id, tree.depth + 1 FROM flows f JOIN tree"
        "  ON f.parent_flow_id = tree.id AND f.client_account_id = :account"
        "  AND f.engagement_id = :engagement WHERE tree.depth < :depth"
        ") SELECT f.*, tree.depth AS tree_depth FROM tree JOIN flows f ON f.id = tree.id"
        " ORDER BY tree.depth, f.created_at, f.id LIMIT :limit"
    )
)
"""A flow and its descendants down to ``:depth`` levels, level by level (as GetFlow's tree)."""

_LINKS = compile_statement(
    select(
        flow_history.c.metadata["child_flow_id"].astext.label("child"),
        func.min(flow_history.c.txid).label("txid"),
    )
    .where(
        _HISTORY_IN_TENANT,
        flow_history.c.flow_id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=False)))),
        flow_history.c.metadata.has_key("linked"),
    )
    .group_by(text("1"))  # the child (the same path twice would be two parameters)
)
"""The transaction of each flow's link (LinkChildFlow) among the children of ``:ids``: the
entries of the parent that started following a linked flow (metadata ``linked``)."""

_SKIP = compile_statement(
    select(flow_history.c.flow_id, func.max(flow_history.c.version).label("version"))
    .where(_HISTORY_IN_TENANT, flow_history.c.txid >= _HORIZON)
    .group_by(flow_history.c.flow_id)
)


def _malformed_cursor(reason: str) -> FlowStateError:
    return FlowStateError(
        ErrorCode.MALFORMED_REQUEST,
        f"the cursor is not valid: {reason}; resume from a cursor this server sent, "
        "or start again without one",
        field="cursor",
    )


@dataclass(frozen=True, slots=True)
class TenantChange:
    """One history entry of the tenant log, with what WatchFlows filters on."""

    position: LogPosition
    flow_id: str
    definition_name: str
    entry: HistoryEntry
    facts: FlowFacts | None = None
    """The flow as the change left it, for filters (`flowstate.core.filters.matches`): status,
    time, every phase's state and the open error codes as the entry recorded them at its
    version (`HistoryEntry.phase_states_after`), so a filter answers the same whenever the
    change is read; labels, definition and creation time (never changed) from the flow."""
    parent_flow_id: str | None = None
    """The flow's parent as the change is read (set once, never changed: a flow created as a
    child has it from its first entry on, a linked one from its link on)."""


@dataclass(frozen=True, slots=True)
class TenantCursor:
    """Where a WatchFlows reader stands in its tenant's log.

    Every entry at or before `position` has been consumed (delivered or filtered out); so has
    every entry whose version is at most ``skip[flow_id]`` while `position`'s txid is below
    `skip_until` (the entries a snapshot already contained).
    """

    position: LogPosition
    skip: Mapping[str, int] = field(default_factory=dict)
    skip_until: int = 0

    def consumed(self, change: TenantChange) -> bool:
        """Whether `change` is already accounted for by this cursor."""
        if change.position <= self.position:
            return True
        skipped = self.skip.get(change.flow_id)
        return skipped is not None and change.entry.flow_version <= skipped

    def advanced(self, position: LogPosition) -> TenantCursor:
        """This cursor moved forward to `position` (never back); drops a skip map that expired."""
        if position <= self.position:
            return self
        if self.skip and position[0] >= self.skip_until:
            return TenantCursor(position)
        return TenantCursor(position, self.skip, self.skip_until)

    def encode(self) -> str:
        """The opaque token sent to clients."""
        data: dict[str, Any] = {"v": _CURSOR_VERSION, "t": self.position[0], "s": self.position[1]}
        if self.skip:
            data["k"] = dict(self.skip)
            data["u"] = self.skip_until
        raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, token: str) -> TenantCursor:
        """Parse a token from `encode`; MALFORMED_REQUEST (field ``cursor``) for anything else."""
        if len(token) > _MAX_CURSOR_LENGTH:
            raise _malformed_cursor("too long")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise _malformed_cursor("not a Flowstate cursor") from exc
        if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
            raise _malformed_cursor("unknown cursor version")
        txid, seq = data.get("t"), data.get("s")
        skip, until = data.get("k", {}), data.get("u", 0)
        if not (_is_count(txid) and _is_count(seq) and _is_count(until)):
            raise _malformed_cursor("bad position")
        if not isinstance(skip, dict) or not all(
            isinstance(key, str) and _is_count(value) for key, value in skip.items()
        ):
            raise _malformed_cursor("bad skip map")
        assert isinstance(txid, int)
        assert isinstance(seq, int)
        assert isinstance(until, int)
        return cls((txid, seq), skip, until)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


@dataclass(frozen=True, slots=True)
class TenantRead:
    """The result of one read of the log after a position.

    Every entry of the tenant in ``(after, covered]`` is in `changes`; `pending` says that
    committed entries wait behind the horizon (read again soon).
    """

    changes: tuple[TenantChange, ...]
    covered: LogPosition
    pending: bool


@dataclass(frozen=True, slots=True)
class TenantSnapshot:
    """Matching flows as of one moment, and the cursor that continues exactly after them."""

    flows: tuple[Flow, ...]
    cursor: TenantCursor


@dataclass(frozen=True, slots=True)
class TreeRead:
    """A flow's tree as of one moment (`TenantLog.tree`), for WatchFlow with children.

    `flows`: the flow first, then its descendants level by level (oldest first within a
    level), each with its depth below the flow in `depths`; `dependencies`: the flows their
    external dependencies name (with `dependencies=True`); `cursor`: the position right after
    this moment (with `snapshot=True`, as `TenantLog.snapshot`'s).
    """

    flows: tuple[Flow, ...]
    depths: tuple[int, ...]
    dependencies: tuple[Flow, ...]
    cursor: TenantCursor | None
    links: Mapping[str, int] = field(default_factory=dict)
    """With `links=True`: the txid of the link of each linked flow of the tree (LinkChildFlow):
    its entries below it are from before it belonged."""
    xmax: int = 0
    """The read's xmax: every transaction whose changes the read saw has a txid below it."""


class TenantLog:
    """Reads the tenant-wide log over a small asyncpg pool of its own (see the module doc)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Wrap an open pool (see `open`)."""
        self._pool = pool

    @classmethod
    async def open(cls, database_url: str, *, max_size: int = 4) -> TenantLog:
        """Open the pool on `database_url` with the store's connection setup."""
        pool = await asyncpg.create_pool(
            **connect_arguments(normalize_database_url(database_url)),
            min_size=0,
            max_size=max_size,
            init=init_connection,
            reset=reset_connection,
            server_settings={"application_name": "flowstate-watch"},
        )
        return cls(pool)

    async def close(self) -> None:
        """Close the pool (waits for reads in progress)."""
        await self._pool.close()

    async def _snapshot_read(
        self, tenant: Tenant, statements: Callable[[Transaction], Awaitable[T]]
    ) -> T:
        """Run `statements(tx)` in one read-only REPEATABLE READ transaction in `tenant`."""
        async with (
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            await connection.execute(enter_tenant(tenant))
            return await statements(Transaction(connection))

    async def read(self, tenant: Tenant, after: LogPosition, limit: int) -> TenantRead:
        """The next at most `limit` entries of `tenant` after `after`, in log order."""
        params = {**tenant_params(tenant), "after_txid": after[0], "after_seq": after[1]}

        async def statements(tx: Transaction) -> tuple[list[asyncpg.Record], int, bool]:
            horizon = await tx.fetchrow(_HORIZON_NOW)
            assert horizon is not None
            xmin: int = horizon["xmin"]
            rows = await tx.fetch(_READ, {**params, "horizon": xmin, "limit": limit})
            pending = False
            if len(rows) < limit:
                pending = bool(await tx.fetchval(_PENDING, {**params, "horizon": xmin}))
            return rows, xmin, pending

        rows, xmin, pending = await self._snapshot_read(tenant, statements)
        changes = tuple(_change_from_row(row) for row in rows)
        full = len(rows) == limit
        covered = changes[-1].position if full else max(after, (xmin - 1, MAX_SEQ))
        return TenantRead(changes, covered, pending)

    async def check_cursor(self, cursor: TenantCursor) -> None:
        """MALFORMED_REQUEST when `cursor` points past anything this database has written."""
        async with self._pool.acquire() as connection:
            xmax: int = await Transaction(connection).fetchval(_XMAX_NOW)
        if cursor.position[0] >= xmax or (cursor.skip and cursor.skip_until > xmax):
            raise _malformed_cursor("it points past the end of the log")

    async def snapshot(
        self,
        tenant: Tenant,
        *,
        statuses: frozenset[FlowStatus],
        definition_name: str,
        flow_ids: frozenset[str],
        limit: int = SNAPSHOT_LIMIT,
        condition: Filter | None = None,
    ) -> TenantSnapshot:
        """The matching flows now, and the cursor after them (MALFORMED_REQUEST past `limit`).

        `condition`: a parsed filter (compiled by `flowstate.storage.filters`), ANDed."""
        snapshot_statement = _SNAPSHOT if condition is None else _snapshot_with(condition)
        params = tenant_params(tenant)
        filters = {
            "statuses": sorted(status.value for status in statuses),
            "definition_name": definition_name,
            "flow_ids": sorted(flow_ids),
            "limit": limit + 1,
        }

        async def statements(
            tx: Transaction,
        ) -> tuple[list[asyncpg.Record], list[asyncpg.Record], int, int]:
            horizon = await tx.fetchrow(_HORIZON_NOW)
            assert horizon is not None
            rows = await tx.fetch(snapshot_statement, {**params, **filters})
            skip_rows = await tx.fetch(_SKIP, {**params, "horizon": horizon["xmin"]})
            return rows, skip_rows, horizon["xmin"], horizon["xmax"]

        rows, skip_rows, xmin, xmax = await self._snapshot_read(tenant, statements)
        if len(rows) > limit:
            raise FlowStateError(
                ErrorCode.MALFORMED_REQUEST,
                f"more than {limit} flows match; narrow the filter (statuses, definition_name, "
                "flow_ids) to watch them from a snapshot",
                field="flow_ids",
                snapshot_limit=limit,
            )
        skip = {str(row["flow_id"]): row["version"] for row in skip_rows}
        cursor = TenantCursor((xmin - 1, MAX_SEQ), skip, xmax if skip else 0)
        return TenantSnapshot(tuple(flow_from_row(row) for row in rows), cursor)

    async def tree(
        self,
        tenant: Tenant,
        flow_id: str,
        depth: int,
        *,
        dependencies: bool,
        snapshot: bool,
        limit: int = MAX_TREE_FLOWS,
        links: bool = False,
    ) -> TreeRead:
        """`flow_id` and its descendants down to `depth` levels, read in one transaction.

        With `dependencies`, also the flows their external dependencies name; with
        `snapshot`, the cursor right after the read (horizon and skip map, as `snapshot`);
        with `links`, the transaction of each linked flow's link (`TreeRead.links`).
        FLOW_NOT_FOUND for a missing flow (or another tenant's); MALFORMED_REQUEST (field
        ``children_depth``) when the tree holds more than `limit` flows down to `depth`.
        """
        params = tenant_params(tenant)

        async def statements(
            tx: Transaction,
        ) -> tuple[list[asyncpg.Record], list[asyncpg.Record], TenantCursor | None, Any]:
            cursor = None
            horizon = await tx.fetchrow(_HORIZON_NOW)
            assert horizon is not None
            if snapshot:
                skip_rows = await tx.fetch(_SKIP, {**params, "horizon": horizon["xmin"]})
                skip = {str(row["flow_id"]): row["version"] for row in skip_rows}
                xmin, xmax = horizon["xmin"], horizon["xmax"]
                cursor = TenantCursor((xmin - 1, MAX_SEQ), skip, xmax if skip else 0)
            rows = await tx.fetch(
                _TREE, {**params, "flow_id": flow_id, "depth": depth, "limit": limit + 1}
            )
            dependency_rows: list[asyncpg.Record] = []
            if dependencies and rows:
                named = {
                    str(dep["flow_id"])
                    for row in rows[: limit + 1]
                    for dep in row["external_dependencies"]
                }
                if named:
                    dependency_rows = await tx.fetch(
                        _SNAPSHOT,
                        {
                            **params,
                            "statuses": [],
                            "definition_name": "",
                            "flow_ids": sorted(named),
                            "limit": len(named),
                        },
                    )
            linked: dict[str, int] = {}
            if links and len(rows) > 1:
                ids = [str(row["id"]) for row in rows[:limit]]
                linked = {
                    str(row["child"]): row["txid"]
                    for row in await tx.fetch(_LINKS, {**params, "ids": ids})
                }
            return rows, dependency_rows, cursor, (linked, horizon["xmax"])

        rows, dependency_rows, cursor, (linked, xmax) = await self._snapshot_read(
            tenant, statements
        )
        if not rows:
            raise flow_not_found(flow_id)
        if len(rows) > limit:
            raise FlowStateError(
                ErrorCode.MALFORMED_REQUEST,
                f"the flow has more than {limit} flows down to {depth} levels of children; "
                "watch fewer levels (children_depth), or watch its children one by one",
                field="children_depth",
                tree_limit=limit,
            )
        return TreeRead(
            flows=tuple(flow_from_row(row) for row in rows),
            depths=tuple(int(row["tree_depth"]) for row in rows),
            dependencies=tuple(flow_from_row(row) for row in dependency_rows),
            cursor=cursor,
            links=linked,
            xmax=xmax,
        )


def _change_from_row(row: Row) -> TenantChange:
    entry = entry_from_row(row)
    facts = FlowFacts(
        status=entry.status_after,
        definition_name=row["definition_name"],
        phase_states=_phase_states_after(entry, row),
        labels=dict(row["flow_labels"]),
        error_codes=_error_codes_after(entry, row),
        created_at=row["flow_created_at"],
        updated_at=entry.occurred_at,
    )
    parent = row["flow_parent_flow_id"]
    return TenantChange(
        position=(row["txid"], row["seq"]),
        flow_id=str(row["flow_id"]),
        definition_name=row["definition_name"],
        entry=entry,
        facts=facts,
        parent_flow_id=None if parent is None else str(parent),
    )


def _phase_states_after(entry: HistoryEntry, row: Row) -> Mapping[str, PhaseState]:
    """Every phase's state as the entry left it; for an entry stored before migration 0017,
    the flow's as read now with the entry's own phase change."""
    if entry.phase_states_after is not None:
        return entry.phase_states_after
    states = {name: PhaseState(state) for name, state in row["flow_phase_states"].items()}
    if entry.phase is not None and entry.to_state is not None:
        states[entry.phase] = entry.to_state
    return states


def _error_codes_after(entry: HistoryEntry, row: Row) -> frozenset[str]:
    """The open error codes as the entry left them (before 0017: the flow's as read now)."""
    if entry.error_codes_after is not None:
        return frozenset(code.value for code in entry.error_codes_after)
    return frozenset(str(e.get("error_code", "")) for e in row["flow_error_context"].values())
