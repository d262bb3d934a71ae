"""The tenant-wide change log behind WatchFlows: commit-ordered reads and the resume cursor.

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
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

import asyncpg

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow, FlowStatus, HistoryEntry, Tenant
from flowstate.storage.codec import entry_from_row, flow_from_row

__all__ = [
    "MAX_SEQ",
    "SNAPSHOT_LIMIT",
    "LogPosition",
    "TenantChange",
    "TenantCursor",
    "TenantLog",
    "TenantRead",
    "TenantSnapshot",
]

LogPosition = tuple[int, int]
"""``(txid, seq)`` of a history entry: the order of the tenant-wide log."""

MAX_SEQ: Final = 2**63 - 1
"""The seq of a position that stands after every entry of its transaction."""

SNAPSHOT_LIMIT: Final = 1000
"""At most this many flows in the initial snapshot of WatchFlows (more: MALFORMED_REQUEST)."""

_APP_ROLE: Final = "flowstate_app"
_CURSOR_VERSION: Final = 1
_MAX_CURSOR_LENGTH: Final = 64 * 1024

_ENTRY_COLUMNS: Final = """
    h.txid, h.seq, h.flow_id::text AS flow_id, f.definition_name, h.version, h.kind, h.phase,
    h.from_state, h.to_state, h.status_before, h.status_after, h.reason, h.user_id,
    h.request_id, h.metadata, h.error, h.time_in_state_seconds, h.progress_after, h.cause,
    h.occurred_at
"""

_READ_SQL: Final = f"""
SELECT {_ENTRY_COLUMNS}
FROM flow_history h JOIN flows f ON f.id = h.flow_id
WHERE h.client_account_id = $1 AND h.engagement_id = $2
  AND (h.txid, h.seq) > ($3::bigint, $4::bigint)
  AND h.txid < $5::bigint
ORDER BY h.txid, h.seq
LIMIT $6
"""

_HORIZON_SQL: Final = """
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax
"""

_PENDING_SQL: Final = """
SELECT EXISTS (
    SELECT 1 FROM flow_history h
    WHERE h.client_account_id = $1 AND h.engagement_id = $2 AND h.txid >= $3::bigint
      AND (h.txid, h.seq) > ($4::bigint, $5::bigint)
)
"""

_SNAPSHOT_SQL: Final = """
SELECT id::text AS id, client_account_id, engagement_id, definition_name, definition_version,
       status, status_before_pause, version, phase_states, phase_details, progress,
       error_context, display_name, labels, created_at, updated_at
FROM flows
WHERE client_account_id = $1 AND engagement_id = $2
  AND (cardinality($3::text[]) = 0 OR status = ANY($3::text[]))
  AND ($4::text = '' OR definition_name = $4::text)
  AND (cardinality($5::text[]) = 0 OR id::text = ANY($5::text[]))
ORDER BY updated_at, id
LIMIT $6
"""

_SKIP_SQL: Final = """
SELECT flow_id::text AS flow_id, max(version) AS version
FROM flow_history
WHERE client_account_id = $1 AND engagement_id = $2 AND txid >= $3::bigint
GROUP BY flow_id
"""

_CURRENT_XMAX_SQL: Final = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"


def _malformed_cursor(reason: str) -> FlowStateError:
    return FlowStateError(
        ErrorCode.MALFORMED_REQUEST,
        f"the cursor is not valid: {reason}; resume from a cursor this server sent, "
        "or start again without one",
        field="cursor",
    )


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
class TenantChange:
    """One history entry of the tenant log, with what WatchFlows filters on."""

    position: LogPosition
    flow_id: str
    definition_name: str
    entry: HistoryEntry


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


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class TenantLog:
    """Reads the tenant-wide log over a small asyncpg pool of its own.

    Every read runs in a read-only REPEATABLE READ transaction as the application role with the
    tenant set, like the store's transactions, so row-level security applies here too.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Wrap an open pool (see `open`)."""
        self._pool = pool

    @classmethod
    async def open(cls, connect_kwargs: Mapping[str, Any], *, max_size: int = 4) -> TenantLog:
        """Open the pool with asyncpg connection arguments."""
        pool = await asyncpg.create_pool(
            min_size=0, max_size=max_size, init=_init_connection, **connect_kwargs
        )
        return cls(pool)

    async def close(self) -> None:
        """Close the pool (waits for reads in progress)."""
        await self._pool.close()

    async def _scope(self, conn: asyncpg.pool.PoolConnectionProxy[Any], tenant: Tenant) -> None:
        await conn.execute(f"SET LOCAL ROLE {_APP_ROLE}")
        await conn.execute(
            "SELECT set_config('flowstate.client_account_id', $1, true),"
            " set_config('flowstate.engagement_id', $2, true)",
            tenant.client_account_id,
            tenant.engagement_id,
        )

    async def read(self, tenant: Tenant, after: LogPosition, limit: int) -> TenantRead:
        """The next at most `limit` entries of `tenant` after `after`, in log order."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            await self._scope(conn, tenant)
            horizon = await conn.fetchrow(_HORIZON_SQL)
            assert horizon is not None
            xmin: int = horizon["xmin"]
            rows = await conn.fetch(
                _READ_SQL,
                tenant.client_account_id,
                tenant.engagement_id,
                after[0],
                after[1],
                xmin,
                limit,
            )
            pending = False
            if len(rows) < limit:
                pending = bool(
                    await conn.fetchval(
                        _PENDING_SQL,
                        tenant.client_account_id,
                        tenant.engagement_id,
                        xmin,
                        after[0],
                        after[1],
                    )
                )
        changes = tuple(_change_from_row(cast(Mapping[str, Any], row)) for row in rows)
        full = len(rows) == limit
        covered = changes[-1].position if full else max(after, (xmin - 1, MAX_SEQ))
        return TenantRead(changes, covered, pending)

    async def check_cursor(self, cursor: TenantCursor) -> None:
        """MALFORMED_REQUEST when `cursor` points past anything this database has written."""
        async with self._pool.acquire() as conn:
            xmax: int = await conn.fetchval(_CURRENT_XMAX_SQL)
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
    ) -> TenantSnapshot:
        """The matching flows now, and the cursor after them (MALFORMED_REQUEST past `limit`)."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            await self._scope(conn, tenant)
            horizon = await conn.fetchrow(_HORIZON_SQL)
            assert horizon is not None
            xmin: int = horizon["xmin"]
            xmax: int = horizon["xmax"]
            rows = await conn.fetch(
                _SNAPSHOT_SQL,
                tenant.client_account_id,
                tenant.engagement_id,
                sorted(status.value for status in statuses),
                definition_name,
                sorted(flow_ids),
                limit + 1,
            )
            skip_rows = await conn.fetch(
                _SKIP_SQL, tenant.client_account_id, tenant.engagement_id, xmin
            )
        if len(rows) > limit:
            raise FlowStateError(
                ErrorCode.MALFORMED_REQUEST,
                f"more than {limit} flows match; narrow the filter (statuses, definition_name, "
                "flow_ids) to watch them from a snapshot",
                field="flow_ids",
                snapshot_limit=limit,
            )
        skip = {row["flow_id"]: row["version"] for row in skip_rows}
        cursor = TenantCursor((xmin - 1, MAX_SEQ), skip, xmax if skip else 0)
        return TenantSnapshot(
            tuple(flow_from_row(cast(Mapping[str, Any], row)) for row in rows), cursor
        )


def _change_from_row(row: Mapping[str, Any]) -> TenantChange:
    return TenantChange(
        position=(row["txid"], row["seq"]),
        flow_id=row["flow_id"],
        definition_name=row["definition_name"],
        entry=entry_from_row(row),
    )
