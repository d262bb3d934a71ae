"""Retention in PostgreSQL: policies, history partitions, archive batches, the sanctioned delete.

`RetentionStore` runs on a small pool of its own (the archiver is a background job; it must not
take the request path's connections). Its statements run as the connecting role (the database
owner, docs/operations.md "Database roles"). Retention policies are `RetentionPolicies`, on
whichever runner: as the app role in the tenant, so row-level security applies to them.

What the migrations (0008, 0015) provide and this module calls:

- ``flowstate_ensure_history_partitions(from, to)``: missing monthly partitions;
- ``flowstate_purge_archived_flows(ids)``: the one sanctioned delete (archived, terminal flows
  at their archived version: their history, keys and row), of whole trees named by no live
  flow only (``flowstate_purgeable_flows``);
- ``flowstate_drop_archived_history_partitions(settle)``: whole partitions whose rows all belong
  to archived flows;
- ``flowstate_restore_archived_flow(flow, entries)``: the sanctioned insert of a restore.

An archive batch is one transaction over whole trees of child flows (docs/retention.md, "Trees
and dependencies"): pick the roots of due trees ``FOR UPDATE SKIP LOCKED`` (so replicas
archiving at once take disjoint batches), lock the rest of each tree the same way (a tree with
a flow held elsewhere waits), judge the locked trees again on a fresh snapshot, read them and
their history as JSON rows (``to_jsonb``: every column, exactly as stored), hand them to the
caller's writer (which writes and verifies the archive) and record the archive in
`flow_archives` before COMMIT. A batch whose write fails records nothing; a write that
succeeded before a failed COMMIT leaves an archive that the next run writes again (archives
are at least once; a restore takes any of them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

import asyncpg

from flowstate.core.model import Tenant
from flowstate.storage.codec import dumps
from flowstate.storage.limits import check_tenant, malformed
from flowstate.storage.runner import TransactionRunner, open_connection
from flowstate.storage.schema import ACTIVE_FLOW, TERMINAL_FLOW
from flowstate.storage.sql import (
    Transaction,
    connect_arguments,
    init_connection,
    reset_connection,
)
from flowstate.storage.urls import normalize_database_url

__all__ = [
    "MAX_RETAIN_DAYS",
    "ArchiveListing",
    "ArchiveRecord",
    "ArchivedFlow",
    "CandidateBatch",
    "RetentionPolicies",
    "RetentionPolicy",
    "RetentionStore",
    "check_retain_days",
]

MAX_RETAIN_DAYS = 36500
"""The longest retention a policy may set (100 years); the shortest is one day."""

_ARCHIVE_LOCK = "flowstate_archive"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """A tenant's retention: terminal flows are archived `retain_days` after their last change."""

    retain_days: int
    updated_at: datetime | None = None
    updated_by: str = ""


@dataclass(frozen=True, slots=True)
class ArchivedFlow:
    """One flow of a batch: its row and its history rows, as JSON objects of every column."""

    flow_id: str
    tenant: Tenant
    version: int
    row: dict[str, Any]
    entries: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class CandidateBatch:
    """Expired terminal flows, locked until the batch's transaction ends."""

    flows: list[ArchivedFlow]


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """Where a verified archive was written and its SHA-256 (hex)."""

    location: str
    sha256: str


# --- statements ---------------------------------------------------------------------------
# Text SQL: they call the migration's functions or use `to_jsonb(row)`, which SQLAlchemy Core
# cannot say more plainly; parameters are positional ($n) as asyncpg takes them.

_TERMINAL = str(TERMINAL_FLOW)
_ACTIVE = str(ACTIVE_FLOW)

# $1 now (NULL: the database clock), $2 default retention days (NULL: only tenants with a
# policy), $3 batch size (in trees). A batch takes whole trees (docs/retention.md, "Trees and
# dependencies"): roots of expired terminal flows, in the order of the partial index
# ix_flows_terminal_updated_at (the cut-off `updated_at < now - least(days)` is sargable on it;
# the per-tenant days then decide each row), each with its tree read by a lateral recursive
# query, taken only when every flow of the tree is terminal, expired, not held by a restore and
# named by no live flow's external_dependencies (one probe of ix_flows_external_dependencies),
# and some flow of it has no archive yet. A flow whose parent row is missing (deleted before
# migration 0015) counts as a root. The candidates take $3 trees in index order, locked; the
# check after locking narrows them to given roots ($3 then the roots' ids).
_DUE_TREES = f"""
    WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now),
    shortest AS (
        SELECT least(min(retain_days), $2::integer) AS days FROM retention_policies
    )
    SELECT {{columns}}
    FROM flows f
    LEFT JOIN retention_policies p
        ON p.client_account_id = f.client_account_id AND p.engagement_id = f.engagement_id
    CROSS JOIN clock CROSS JOIN shortest
    CROSS JOIN LATERAL (
        WITH RECURSIVE down(id, depth) AS (
            SELECT f.id, 0
            UNION ALL
            SELECT c.id, down.depth + 1 FROM down JOIN flows c
                ON c.parent_flow_id = down.id
               AND c.client_account_id = f.client_account_id
               AND c.engagement_id = f.engagement_id
            WHERE down.depth < 32
        )
        SELECT array_agg(m.id::text ORDER BY down.depth, m.id) AS members,
               max(m.updated_at) AS last_change,
               bool_and(coalesce(
                   m.{_TERMINAL}
                   AND m.updated_at < clock.now
                       - make_interval(days => coalesce(p.retain_days, $2::integer))
                   AND NOT EXISTS (
                       SELECT 1 FROM flow_archives a
                       WHERE a.flow_id = m.id AND a.restored_at IS NOT NULL
                   )
                   AND NOT EXISTS (
                       SELECT 1 FROM flows d
                       WHERE d.external_dependencies <> '[]'::jsonb AND d.{_ACTIVE}
                         AND d.external_dependencies
                             @> jsonb_build_array(jsonb_build_object('flow_id', m.id::text))
                   ),
                   false
               )) AS ready,
               bool_or(NOT EXISTS (SELECT 1 FROM flow_archives a WHERE a.flow_id = m.id)) AS due
        FROM down JOIN flows m ON m.id = down.id
    ) tree
    WHERE f.{_TERMINAL}
      AND f.updated_at < clock.now - make_interval(days => shortest.days)
      AND f.updated_at < clock.now - make_interval(days => coalesce(p.retain_days, $2::integer))
      AND (f.parent_flow_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM flows q WHERE q.id = f.parent_flow_id))
      AND tree.ready AND tree.due
      {{rest}}
"""
_UNITS_REST = """
      {only}
    ORDER BY f.updated_at, f.id
    {limit}
    FOR UPDATE OF f SKIP LOCKED
"""
_UNITS_COLUMNS = "f.id::text AS root, tree.members"
_CANDIDATES = _DUE_TREES.format(
    columns=_UNITS_COLUMNS, rest=_UNITS_REST.format(only="", limit="LIMIT $3")
)
_CANDIDATES_AGAIN = _DUE_TREES.format(
    columns=_UNITS_COLUMNS, rest=_UNITS_REST.format(only="AND f.id = ANY($3::uuid[])", limit="")
)
# The backlog: flows of trees due (what the next runs will archive) and how long the oldest tree
# is overdue (its last change plus the retention); trees kept on purpose (a live flow in them,
# a live dependent) are not a backlog. The same rule as _DUE_TREES, stated set-wise: that one
# probes each root's tree in a lateral subquery, which is right for a batch (LIMIT stops it)
# but costs ~40 us per expired root for the whole backlog (3.7 s at 100,000 roots). Here the
# roots are read once, the flows named by live dependents once, a lone root (no child: almost
# all of them) is judged on its own row, and only the roots with children are walked, all of
# them in one recursive query (docs/retention.md, "Trees and dependencies").
_LAG = f"""
    WITH RECURSIVE clock AS (SELECT coalesce($1::timestamptz, now()) AS now),
    shortest AS (
        SELECT least(min(retain_days), $2::integer) AS days FROM retention_policies
    ),
    roots AS (
        SELECT f.id, f.client_account_id, f.engagement_id, f.updated_at,
               make_interval(days => coalesce(p.retain_days, $2::integer)) AS keep,
               EXISTS (
                   SELECT 1 FROM flows c
                   WHERE c.parent_flow_id = f.id AND c.client_account_id = f.client_account_id
                     AND c.engagement_id = f.engagement_id
               ) AS has_children
        FROM flows f
        LEFT JOIN retention_policies p
            ON p.client_account_id = f.client_account_id AND p.engagement_id = f.engagement_id
        CROSS JOIN clock CROSS JOIN shortest
        WHERE f.{_TERMINAL}
          AND f.updated_at < clock.now - make_interval(days => shortest.days)
          AND f.updated_at < clock.now - make_interval(days => coalesce(p.retain_days, $2::integer))
          AND (f.parent_flow_id IS NULL
               OR NOT EXISTS (SELECT 1 FROM flows q WHERE q.id = f.parent_flow_id))
    ),
    named AS (
        SELECT DISTINCT dependency ->> 'flow_id' AS id
        FROM flows d CROSS JOIN LATERAL jsonb_array_elements(d.external_dependencies) AS dependency
        WHERE d.external_dependencies <> '[]'::jsonb AND d.{_ACTIVE}
    ),
    down(root, id, account, engagement, depth) AS (
        SELECT r.id, r.id, r.client_account_id, r.engagement_id, 0 FROM roots r
        WHERE r.has_children
        UNION ALL
        SELECT down.root, c.id, down.account, down.engagement, down.depth + 1
        FROM down JOIN flows c
            ON c.parent_flow_id = down.id
           AND c.client_account_id = down.account AND c.engagement_id = down.engagement
        WHERE down.depth < 32
    ),
    trees AS (
        -- A lone root is terminal and expired (roots); due without an archive (then it is
        -- not restored either), kept while a live flow names it.
        SELECT r.keep, 1 AS flows, r.updated_at AS last_change
        FROM roots r
        WHERE NOT r.has_children
          AND NOT EXISTS (SELECT 1 FROM flow_archives a WHERE a.flow_id = r.id)
          AND NOT EXISTS (SELECT 1 FROM named n WHERE n.id = r.id::text)
        UNION ALL
        SELECT r.keep, count(*), max(m.updated_at)
        FROM down
        JOIN roots r ON r.id = down.root
        JOIN flows m ON m.id = down.id
        LEFT JOIN flow_archives a ON a.flow_id = m.id
        CROSS JOIN clock
        GROUP BY down.root, r.keep
        HAVING bool_and(
                   m.{_TERMINAL}
                   AND m.updated_at < clock.now - r.keep
                   AND a.restored_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM named n WHERE n.id = m.id::text)
               )
           AND bool_or(a.flow_id IS NULL)
    )
    SELECT coalesce(sum(t.flows), 0) AS flows,
           coalesce(extract(epoch FROM max(clock.now - t.last_change - t.keep)), 0) AS lag
    FROM trees t CROSS JOIN clock
"""
_LOCK_MEMBERS = """
    SELECT id::text FROM flows WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE SKIP LOCKED
"""
_ROWS = """
    SELECT f.id::text AS flow_id, f.client_account_id, f.engagement_id, f.version,
           to_jsonb(f) AS row
    FROM flows f WHERE f.id = ANY($1::uuid[])
"""
_ENTRIES = """
    SELECT flow_id::text AS flow_id, to_jsonb(h) AS row
    FROM flow_history h WHERE flow_id = ANY($1::uuid[])
    ORDER BY flow_id, version
"""
_RECORD = """
    INSERT INTO flow_archives AS a
        (flow_id, client_account_id, engagement_id, flow_version, entry_count, location, sha256)
    SELECT u.flow_id, u.account, u.engagement, u.version, u.entries, $6, $7
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::integer[], $5::integer[])
        AS u(flow_id, account, engagement, version, entries)
    ON CONFLICT (flow_id) DO UPDATE SET
        flow_version = EXCLUDED.flow_version, entry_count = EXCLUDED.entry_count,
        location = EXCLUDED.location, sha256 = EXCLUDED.sha256, archived_at = now()
"""
_PENDING_PURGE = """
    SELECT flow_id FROM flow_archives
    WHERE purged_at IS NULL AND restored_at IS NULL
    ORDER BY archived_at, flow_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"""
_PURGE = "SELECT flows, entries FROM flowstate_purge_archived_flows($1::uuid[])"
_DROP_PARTITIONS = "SELECT flowstate_drop_archived_history_partitions($1::interval)"
_ENSURE_PARTITIONS = """
    SELECT flowstate_ensure_history_partitions(
        coalesce($1::timestamptz, now()), coalesce($1::timestamptz, now()) + $2::interval
    )
"""
_RESTORE = "SELECT flowstate_restore_archived_flow($1::jsonb, $2::jsonb)"
_EXISTS = "SELECT EXISTS (SELECT 1 FROM flows WHERE id = $1::uuid)"
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext($1))"
_LIST_ARCHIVES = """
    SELECT flow_id::text AS flow_id, client_account_id, engagement_id, flow_version,
           entry_count, location, sha256, archived_at, purged_at, restored_at
    FROM flow_archives
    WHERE ($1::text IS NULL OR (client_account_id = $1 AND engagement_id = $2))
    ORDER BY archived_at DESC, flow_id
    LIMIT $3
"""
_SELECT_POLICY = """
    SELECT retain_days, updated_at, updated_by FROM retention_policies
    WHERE client_account_id = $1 AND engagement_id = $2
"""
_UPSERT_POLICY = """
    INSERT INTO retention_policies (client_account_id, engagement_id, retain_days, updated_by)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (client_account_id, engagement_id)
    DO UPDATE SET retain_days = EXCLUDED.retain_days, updated_by = EXCLUDED.updated_by,
                  updated_at = now()
    RETURNING retain_days, updated_at, updated_by
"""
_DELETE_POLICY = """
    DELETE FROM retention_policies WHERE client_account_id = $1 AND engagement_id = $2
"""


def check_retain_days(days: object, field: str = "retain_days") -> int:
    """`days` when it is a whole number of days from 1 to `MAX_RETAIN_DAYS`, else refused."""
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_RETAIN_DAYS:
        raise malformed(
            field, f"{field} must be a whole number of days from 1 to {MAX_RETAIN_DAYS}"
        )
    return days


async def _lock_trees(
    tx: Transaction, now: datetime | None, default_days: int | None, limit: int
) -> CandidateBatch:
    """Whole trees due for archiving, every flow of them locked (module doc): about `limit`
    flows (trees in index order while they fit; the first tree whatever its size)."""
    connection = tx.connection
    units = await connection.fetch(_CANDIDATES, now, default_days, limit)
    if not units:
        return CandidateBatch([])
    # Lock the rest of each tree (roots are locked): a tree with a flow that another
    # transaction holds waits for a later batch (SKIP LOCKED: nobody waits for an archiver).
    others = [m for u in units for m in u["members"][1:]]
    locked = {r[0] for r in await connection.fetch(_LOCK_MEMBERS, others)} if others else set()
    held = [u["root"] for u in units if locked.issuperset(u["members"][1:])]
    if not held:
        return CandidateBatch([])
    # Judge them again on a fresh snapshot now that they are locked: a flow committed between
    # the first statement's snapshot and the locks (say one depending on a flow of the tree)
    # counts. Terminal, locked flows stay as they are until COMMIT.
    again = await connection.fetch(_CANDIDATES_AGAIN, now, default_days, held)
    before = {u["root"]: list(u["members"]) for u in units}
    trees = [list(u["members"]) for u in again if before.get(u["root"]) == list(u["members"])]
    chosen: list[str] = []
    for members in sorted(trees, key=lambda m: held.index(m[0])):
        if chosen and len(chosen) + len(members) > limit:
            break
        chosen.extend(members)
    if not chosen:
        return CandidateBatch([])
    rows = {r["flow_id"]: r for r in await connection.fetch(_ROWS, chosen)}
    entries: dict[str, list[dict[str, Any]]] = {i: [] for i in chosen}
    for entry in await connection.fetch(_ENTRIES, chosen):
        entries[entry["flow_id"]].append(entry["row"])
    return CandidateBatch(
        [
            ArchivedFlow(
                flow_id=flow_id,
                tenant=Tenant(rows[flow_id]["client_account_id"], rows[flow_id]["engagement_id"]),
                version=rows[flow_id]["version"],
                row=rows[flow_id]["row"],
                entries=entries[flow_id],
            )
            for flow_id in chosen
        ]
    )


class RetentionPolicies:
    """Tenants' retention policies: the one place they are read and written.

    Runs on a store's runner: the server's `FlowStore` (``store.retention_policies``, behind
    GetRetentionPolicy / SetRetentionPolicy) or the CLI's `RetentionStore`. Every call is one
    transaction as the app role in the tenant, so row-level security applies. One rule:
    `set` with 1..`MAX_RETAIN_DAYS` days stores the policy, with 0 removes it (then the
    archiver's default applies); nothing else is accepted.
    """

    def __init__(self, runner: TransactionRunner) -> None:
        """Run on `runner`'s pool, with its retries and error mapping."""
        self._run = runner._run

    async def get(self, tenant: Tenant) -> RetentionPolicy | None:
        """The tenant's own policy, or None (then the archiver's default applies)."""
        check_tenant(tenant)

        async def work(tx: Transaction) -> RetentionPolicy | None:
            row = await tx.connection.fetchrow(
                _SELECT_POLICY, tenant.client_account_id, tenant.engagement_id
            )
            return None if row is None else RetentionPolicy(**dict(row))

        return await self._run(tenant, work)

    async def set(self, tenant: Tenant, retain_days: int, user_id: str) -> RetentionPolicy | None:
        """Store the tenant's policy (1..`MAX_RETAIN_DAYS` days) or remove it (0); what is
        stored now (None: no policy). MALFORMED_REQUEST (field ``retain_days``) otherwise."""
        check_tenant(tenant)
        if retain_days == 0 and not isinstance(retain_days, bool):

            async def remove(tx: Transaction) -> None:
                await tx.connection.execute(
                    _DELETE_POLICY, tenant.client_account_id, tenant.engagement_id
                )

            await self._run(tenant, remove, write=True)
            return None
        days = check_retain_days(retain_days)

        async def upsert(tx: Transaction) -> RetentionPolicy:
            row = await tx.connection.fetchrow(
                _UPSERT_POLICY, tenant.client_account_id, tenant.engagement_id, days, user_id
            )
            assert row is not None
            return RetentionPolicy(**dict(row))

        return await self._run(tenant, upsert, write=True)


@dataclass(frozen=True, slots=True)
class ArchiveListing:
    """One row of the archive catalog."""

    flow_id: str
    tenant: Tenant
    flow_version: int
    entry_count: int
    location: str
    sha256: str
    archived_at: datetime
    purged_at: datetime | None
    restored_at: datetime | None


class RetentionStore(TransactionRunner):
    """The SQL of retention (see the module doc); one per archiver, with its own small pool."""

    @classmethod
    async def open(
        cls, database_url: str, *, pool_size: int = 2, statement_timeout: float = 300.0
    ) -> Self:
        """Open a pool of `pool_size` connections (statements may take minutes: big batches)."""
        arguments = connect_arguments(normalize_database_url(database_url))
        settings = dict(arguments.pop("server_settings", None) or {})
        settings.setdefault("statement_timeout", str(int(statement_timeout * 1000)))
        settings.setdefault("standard_conforming_strings", "on")
        pool = await asyncpg.create_pool(
            **arguments,
            min_size=0,
            max_size=pool_size,
            connect=open_connection,
            init=init_connection,
            reset=reset_connection,
            server_settings=settings,
        )
        return cls(pool)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    # --- partitions -------------------------------------------------------------------------

    async def ensure_partitions(
        self, ahead: timedelta = timedelta(days=92), now: datetime | None = None
    ) -> list[str]:
        """Create the missing monthly partitions from now's month to `ahead`; their names."""

        async def work(tx: Transaction) -> list[str]:
            rows = await tx.connection.fetch(_ENSURE_PARTITIONS, now, ahead)
            return [r[0] for r in rows]

        return await self._run(None, work, write=True)

    async def drop_archived_partitions(self, settle: timedelta = timedelta(days=1)) -> list[str]:
        """Drop the monthly partitions that ended `settle` ago and hold only archived flows."""

        async def work(tx: Transaction) -> list[str]:
            rows = await tx.connection.fetch(_DROP_PARTITIONS, settle)
            return [r[0] for r in rows]

        return await self._run(None, work, write=True)

    # --- archive batches --------------------------------------------------------------------

    async def archive_batch(
        self,
        write: Callable[[CandidateBatch], Awaitable[ArchiveRecord]],
        *,
        default_days: int | None,
        limit: int,
        now: datetime | None = None,
    ) -> list[ArchivedFlow]:
        """Archive one batch of expired terminal flows (module doc); the flows archived.

        `write` gets the batch (rows locked) and returns the verified archive; it runs inside
        the transaction, so a failure there records nothing. Empty list: nothing is due.
        """
        if default_days is not None:
            check_retain_days(default_days, "default_days")

        async def work(tx: Transaction) -> list[ArchivedFlow]:
            batch = await _lock_trees(tx, now, default_days, limit)
            if not batch.flows:
                return []
            ids = [f.flow_id for f in batch.flows]
            record = await write(batch)
            await tx.connection.execute(
                _RECORD,
                ids,
                [f.tenant.client_account_id for f in batch.flows],
                [f.tenant.engagement_id for f in batch.flows],
                [f.version for f in batch.flows],
                [len(f.entries) for f in batch.flows],
                record.location,
                record.sha256,
            )
            return batch.flows

        return await self._run(None, work, write=True)

    async def purge_batch(self, limit: int) -> tuple[int, int, int]:
        """Delete up to `limit` archived flows through the sanctioned function.

        Returns (flows picked, flows deleted, history entries deleted).
        """

        async def work(tx: Transaction) -> tuple[int, int, int]:
            ids = [r[0] for r in await tx.connection.fetch(_PENDING_PURGE, limit)]
            if not ids:
                return 0, 0, 0
            row = await tx.connection.fetchrow(_PURGE, ids)
            assert row is not None
            return len(ids), int(row["flows"]), int(row["entries"])

        return await self._run(None, work, write=True)

    async def try_lock_run(self) -> bool:
        """Whether no other archiver run holds the run lock (checked, then released)."""

        async def work(tx: Transaction) -> bool:
            return bool(await tx.connection.fetchval(_TRY_LOCK, _ARCHIVE_LOCK))

        return await self._run(None, work)

    async def lag(
        self, *, default_days: int | None, now: datetime | None = None
    ) -> tuple[int, float]:
        """(flows of trees due for archiving, seconds the oldest such tree is overdue): trees
        kept on purpose (a live flow in them, a live dependent) do not count."""

        async def work(tx: Transaction) -> tuple[int, float]:
            row = await tx.connection.fetchrow(_LAG, now, default_days)
            return (0, 0.0) if row is None else (int(row["flows"]), float(row["lag"]))

        return await self._run(None, work)

    # --- catalog and restore ----------------------------------------------------------------

    async def list_archives(
        self, tenant: Tenant | None = None, limit: int = 100
    ) -> list[ArchiveListing]:
        """The newest entries of the archive catalog (one tenant's, or every tenant's)."""

        async def work(tx: Transaction) -> list[ArchiveListing]:
            rows = await tx.connection.fetch(
                _LIST_ARCHIVES,
                None if tenant is None else tenant.client_account_id,
                None if tenant is None else tenant.engagement_id,
                limit,
            )
            return [
                ArchiveListing(
                    flow_id=r["flow_id"],
                    tenant=Tenant(r["client_account_id"], r["engagement_id"]),
                    flow_version=r["flow_version"],
                    entry_count=r["entry_count"],
                    location=r["location"],
                    sha256=r["sha256"],
                    archived_at=r["archived_at"],
                    purged_at=r["purged_at"],
                    restored_at=r["restored_at"],
                )
                for r in rows
            ]

        return await self._run(None, work)

    async def restore(self, flows: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]) -> int:
        """Insert archived flows back (row and entries exactly as archived), all or none, in
        the order given (parents before children: `flowstate.storage.archives.flows_in`).

        MALFORMED_REQUEST on ``flow_id`` when one of them exists, or has a parent that neither
        exists nor comes before it (nothing is restored then).
        Returns the number of history entries restored.
        """

        async def work(tx: Transaction) -> int:
            total = 0
            restored: set[str] = set()
            for row, entries in flows:
                exists = await tx.connection.fetchval(_EXISTS, row["id"])
                if exists:
                    raise malformed(
                        "flow_id", f"flow {row['id']} exists: only a deleted flow can be restored"
                    )
                parent = row.get("parent_flow_id")
                # A tree comes back whole (parents first): never a dangling parent link.
                if (
                    parent
                    and str(parent) not in restored
                    and not await tx.connection.fetchval(_EXISTS, parent)
                ):
                    raise malformed(
                        "flow_id",
                        f"flow {row['id']} is a child of {parent}, which is neither in the "
                        "database nor restored with it: restore its parent's archive first",
                    )
                total += int(await tx.connection.fetchval(_RESTORE, dumps(row), dumps(entries)))
                restored.add(str(row["id"]))
            return total

        return await self._run(None, work, write=True)
