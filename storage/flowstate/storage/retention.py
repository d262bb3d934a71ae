"""Retention in PostgreSQL: policies, history partitions, archive batches, the sanctioned delete.

`RetentionStore` runs on a small pool of its own (the archiver is a background job; it must not
take the request path's connections). Its cross-tenant statements run as the connecting role
(the database owner, docs/operations.md "Database roles"); the per-tenant policy calls run as
the app role in the tenant, so row-level security applies to them as to every store call.

What the migration (0008) provides and this module calls:

- ``flowstate_ensure_history_partitions(from, to)``: missing monthly partitions;
- ``flowstate_purge_archived_flows(ids)``: the one sanctioned delete (archived, terminal flows
  at their archived version: their history, keys and row);
- ``flowstate_drop_archived_history_partitions(settle)``: whole partitions whose rows all belong
  to archived flows;
- ``flowstate_restore_archived_flow(flow, entries)``: the sanctioned insert of a restore.

An archive batch is one transaction: pick expired terminal flows ``FOR UPDATE SKIP LOCKED`` (so
replicas archiving at once take disjoint batches), read them and their history as JSON rows
(``to_jsonb``: every column, exactly as stored), hand them to the caller's writer (which writes
and verifies the archive) and record the archive in `flow_archives` before COMMIT. A batch whose
write fails records nothing; a write that succeeded before a failed COMMIT leaves an archive
that the next run writes again (archives are at least once; a restore takes any of them).
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
from flowstate.storage.runner import TransactionRunner
from flowstate.storage.schema import TERMINAL_FLOW
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
    "RetentionPolicy",
    "RetentionStore",
    "check_retain_days",
    "delete_policy",
    "select_policy",
    "upsert_policy",
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

# $1 now (NULL: the database clock), $2 default retention days (NULL: only tenants with a
# policy), $3 batch size. The cut-off `updated_at < now - least(days)` is sargable on the partial
# index ix_flows_terminal_updated_at; the per-tenant days then decide each row.
_CANDIDATES = f"""
    WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now),
    shortest AS (
        SELECT least(min(retain_days), $2::integer) AS days FROM retention_policies
    )
    SELECT f.id::text AS flow_id, f.client_account_id, f.engagement_id, f.version,
           to_jsonb(f) AS row
    FROM flows f
    LEFT JOIN retention_policies p
        ON p.client_account_id = f.client_account_id AND p.engagement_id = f.engagement_id
    CROSS JOIN clock CROSS JOIN shortest
    WHERE f.{_TERMINAL}
      AND f.updated_at < clock.now - make_interval(days => shortest.days)
      AND f.updated_at < clock.now - make_interval(days => coalesce(p.retain_days, $2::integer))
      AND NOT EXISTS (SELECT 1 FROM flow_archives a WHERE a.flow_id = f.id)
    ORDER BY f.updated_at, f.id
    LIMIT $3
    FOR UPDATE OF f SKIP LOCKED
"""
_ENTRIES = """
    SELECT flow_id::text AS flow_id, to_jsonb(h) AS row
    FROM flow_history h WHERE flow_id = ANY($1::uuid[])
    ORDER BY flow_id, version
"""
_RECORD = """
    INSERT INTO flow_archives
        (flow_id, client_account_id, engagement_id, flow_version, entry_count, location, sha256)
    SELECT u.flow_id, u.account, u.engagement, u.version, u.entries, $6, $7
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::integer[], $5::integer[])
        AS u(flow_id, account, engagement, version, entries)
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
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext($1))"
_LAG = f"""
    WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now)
    SELECT count(*) AS flows,
           coalesce(extract(epoch FROM clock.now - min(f.updated_at
               + make_interval(days => coalesce(p.retain_days, $2::integer)))), 0) AS lag
    FROM flows f
    LEFT JOIN retention_policies p
        ON p.client_account_id = f.client_account_id AND p.engagement_id = f.engagement_id
    CROSS JOIN clock
    WHERE f.{_TERMINAL}
      AND f.updated_at < clock.now - make_interval(days => coalesce(p.retain_days, $2::integer))
      AND NOT EXISTS (SELECT 1 FROM flow_archives a WHERE a.flow_id = f.id)
    GROUP BY clock.now
"""
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


async def select_policy(tx: Transaction, tenant: Tenant) -> RetentionPolicy | None:
    """The tenant's own policy in an open tenant transaction (RLS), or None."""
    row = await tx.connection.fetchrow(
        _SELECT_POLICY, tenant.client_account_id, tenant.engagement_id
    )
    return None if row is None else RetentionPolicy(**dict(row))


async def upsert_policy(
    tx: Transaction, tenant: Tenant, days: int, user_id: str
) -> RetentionPolicy:
    """Store the tenant's policy (`days` already checked); what is stored."""
    row = await tx.connection.fetchrow(
        _UPSERT_POLICY, tenant.client_account_id, tenant.engagement_id, days, user_id
    )
    assert row is not None
    return RetentionPolicy(**dict(row))


async def delete_policy(tx: Transaction, tenant: Tenant) -> bool:
    """Remove the tenant's own policy; whether there was one."""
    status = await tx.connection.execute(
        _DELETE_POLICY, tenant.client_account_id, tenant.engagement_id
    )
    return bool(status != "DELETE 0")


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
            init=init_connection,
            reset=reset_connection,
            server_settings=settings,
        )
        return cls(pool)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    # --- policies (as the app role in the tenant: RLS) --------------------------------------

    async def get_policy(self, tenant: Tenant) -> RetentionPolicy | None:
        """The tenant's own policy, or None (then the server's default applies)."""
        check_tenant(tenant)

        return await self._run(tenant, lambda tx: select_policy(tx, tenant))

    async def set_policy(self, tenant: Tenant, retain_days: int, user_id: str) -> RetentionPolicy:
        """Set the tenant's policy (validated); returns what is stored."""
        check_tenant(tenant)
        days = check_retain_days(retain_days)

        return await self._run(
            tenant, lambda tx: upsert_policy(tx, tenant, days, user_id), write=True
        )

    async def clear_policy(self, tenant: Tenant) -> bool:
        """Remove the tenant's policy (the default applies again); whether there was one."""
        check_tenant(tenant)

        return await self._run(tenant, lambda tx: delete_policy(tx, tenant), write=True)

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
            rows = await tx.connection.fetch(_CANDIDATES, now, default_days, limit)
            if not rows:
                return []
            ids = [r["flow_id"] for r in rows]
            entries: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
            for entry in await tx.connection.fetch(_ENTRIES, ids):
                entries[entry["flow_id"]].append(entry["row"])
            batch = CandidateBatch(
                [
                    ArchivedFlow(
                        flow_id=r["flow_id"],
                        tenant=Tenant(r["client_account_id"], r["engagement_id"]),
                        version=r["version"],
                        row=r["row"],
                        entries=entries[r["flow_id"]],
                    )
                    for r in rows
                ]
            )
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
        """(expired terminal flows not archived yet, seconds the oldest is overdue)."""

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
        """Insert archived flows back (row and entries exactly as archived), all or none.

        MALFORMED_REQUEST on ``flow_id`` when one of them exists (nothing is restored then).
        Returns the number of history entries restored.
        """

        async def work(tx: Transaction) -> int:
            total = 0
            for row, entries in flows:
                exists = await tx.connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM flows WHERE id = $1::uuid)", row["id"]
                )
                if exists:
                    raise malformed(
                        "flow_id", f"flow {row['id']} exists: only a deleted flow can be restored"
                    )
                total += int(await tx.connection.fetchval(_RESTORE, dumps(row), dumps(entries)))
            return total

        return await self._run(None, work, write=True)
