"""`WebhookStore`: the tenant's webhook subscriptions, and the delivery loop's leases.

One per `FlowStore` (`FlowStore.webhooks`), on its transaction runner; each call is one
transaction. Tenant calls (`create`, `list_all`, `get`, `delete`, `rewind`) run as the app role
in the caller's tenant (row-level security applies). The delivery loop's calls (`claim`,
`advance`, `record_failure`, `release`) run as the connecting user across tenants, like the
stuck-flows count: they never answer a tenant.

**Cursor.** A subscription's cursor is a position ``(txid, seq)`` of the tenant change log
(`flowstate.storage.changes`): every change at or before it has been delivered (or filtered
out). A new subscription starts at the log's horizon at creation, so it receives every change
that commits after it exists. The cursor only moves through `advance` (after a delivery was
acknowledged) and `rewind` (a replay); a crash between a delivery and its `advance` makes the
next owner deliver that change again (at least once; the receiver deduplicates by
``webhook-id``).

**Generation.** `rewind` (a replay) bumps the subscription's ``generation``; `advance` and
`record_failure` write only for the generation their task was started with, so a task still
delivering from the old cursor cannot move the new one, and the next `claim` restarts it.

**Lease.** `claim` takes, for `owner` (one replica), every active subscription whose lease is
free, expired, or already its own, and extends it by `lease_seconds` on the database clock, in
one ``UPDATE ... FOR UPDATE SKIP LOCKED`` (replicas never wait on each other). `advance` and
`record_failure` change a row only while `owner` still holds it, so a replica that lost its
lease (it stalled past the expiry and another claimed it) cannot move the cursor.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg
from sqlalchemy import BigInteger, Float, Integer, Text, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, UUID

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.storage.changes import MAX_SEQ, LogPosition
from flowstate.storage.limits import MAX_WEBHOOKS_PER_TENANT, check_tenant, malformed
from flowstate.storage.runner import TransactionRunner
from flowstate.storage.sql import Transaction, compile_statement, tenant_params

__all__ = [
    "ACTIVE",
    "DISABLED",
    "ClaimedWebhook",
    "FailureCount",
    "StoredWebhook",
    "WebhookStore",
]

ACTIVE: Final = "ACTIVE"
"""A subscription that is delivered."""
DISABLED: Final = "DISABLED"
"""A subscription the failure budget (or nothing else) stopped; `rewind` enables it again."""

_TS = TIMESTAMP(timezone=True)
_ID = bindparam("id", type_=UUID(as_uuid=False))
_ACCOUNT = bindparam("account", type_=Text)
_ENGAGEMENT = bindparam("engagement", type_=Text)
_OWNER = bindparam("owner", type_=Text)
_NOW = bindparam("now", type_=_TS)
_GENERATION = bindparam("generation", type_=Integer)
_COLUMNS = (
    "id, client_account_id, engagement_id, url, statuses, definition_name, filter, state, "
    "disabled_reason, cursor_txid, cursor_seq, consecutive_failures, delivered_count, "
    "last_error, last_attempt_at, last_success_at, created_at"
)
_IN_TENANT = "client_account_id = :account AND engagement_id = :engagement"

_COUNT = compile_statement(
    text(f"SELECT count(*) FROM webhook_subscriptions WHERE {_IN_TENANT}").bindparams(
        _ACCOUNT, _ENGAGEMENT
    )
)
_INSERT = compile_statement(
    text(
        f"""
        INSERT INTO webhook_subscriptions (id, client_account_id, engagement_id, url, secret,
            statuses, definition_name, filter, state, cursor_txid, cursor_seq, created_at)
        VALUES (:id, :account, :engagement, :url, :secret, :statuses, :definition_name, :filter,
            '{ACTIVE}', (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint - 1, {MAX_SEQ},
            :now)
        RETURNING {_COLUMNS}
        """
    ).bindparams(
        _ID,
        _ACCOUNT,
        _ENGAGEMENT,
        bindparam("url", type_=Text),
        bindparam("secret", type_=Text),
        bindparam("statuses", type_=ARRAY(Text)),
        bindparam("definition_name", type_=Text),
        bindparam("filter", type_=Text),
        _NOW,
    )
)
_LIST = compile_statement(
    text(
        f"SELECT {_COLUMNS} FROM webhook_subscriptions WHERE {_IN_TENANT} ORDER BY created_at, id"
    ).bindparams(_ACCOUNT, _ENGAGEMENT)
)
_GET = compile_statement(
    text(
        f"SELECT {_COLUMNS}, secret FROM webhook_subscriptions WHERE id = :id AND {_IN_TENANT}"
    ).bindparams(_ID, _ACCOUNT, _ENGAGEMENT)
)
_DELETE = compile_statement(
    text(f"DELETE FROM webhook_subscriptions WHERE id = :id AND {_IN_TENANT}").bindparams(
        _ID, _ACCOUNT, _ENGAGEMENT
    )
)
_REWIND = compile_statement(
    text(
        f"""
        UPDATE webhook_subscriptions
        SET cursor_txid = :txid, cursor_seq = :seq, state = '{ACTIVE}', disabled_reason = '',
            consecutive_failures = 0, generation = generation + 1
        WHERE id = :id AND {_IN_TENANT}
        RETURNING {_COLUMNS}
        """
    ).bindparams(
        _ID,
        _ACCOUNT,
        _ENGAGEMENT,
        bindparam("txid", type_=BigInteger),
        bindparam("seq", type_=BigInteger),
    )
)
_HORIZON = compile_statement(text("SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint"))
_FIRST_SINCE = compile_statement(
    # The first change at or after a time, in log order; a tenant-bounded scan of the
    # (tenant, txid, seq) index filtered on the time (a replay is rare).
    text(
        f"""
        SELECT txid, seq FROM flow_history
        WHERE {_IN_TENANT} AND occurred_at >= :since
        ORDER BY txid, seq LIMIT 1
        """
    ).bindparams(_ACCOUNT, _ENGAGEMENT, bindparam("since", type_=_TS))
)
_CLAIM = compile_statement(
    text(
        f"""
        UPDATE webhook_subscriptions AS w
        SET lease_owner = :owner,
            lease_expires_at = now() + make_interval(secs => :lease_seconds)
        FROM (
            SELECT id FROM webhook_subscriptions
            WHERE state = '{ACTIVE}'
              AND (lease_owner = :owner OR lease_expires_at IS NULL OR lease_expires_at < now())
            ORDER BY id
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        ) AS free
        WHERE w.id = free.id
        RETURNING w.id, w.client_account_id, w.engagement_id, w.url, w.secret, w.statuses,
            w.definition_name, w.filter, w.cursor_txid, w.cursor_seq, w.generation
        """
    ).bindparams(
        _OWNER,
        bindparam("lease_seconds", type_=Float),
        bindparam("limit", type_=Integer),
    )
)
_ADVANCE = compile_statement(
    text(
        f"""
        UPDATE webhook_subscriptions
        SET cursor_txid = :txid, cursor_seq = :seq,
            delivered_count = delivered_count + :delivered,
            consecutive_failures = CASE WHEN :delivered > 0 THEN 0 ELSE consecutive_failures END,
            last_error = CASE WHEN :delivered > 0 THEN '' ELSE last_error END,
            last_success_at = CASE WHEN :delivered > 0 THEN :now ELSE last_success_at END,
            last_attempt_at = CASE WHEN :delivered > 0 THEN :now ELSE last_attempt_at END
        WHERE id = :id AND lease_owner = :owner AND state = '{ACTIVE}'
          AND generation = :generation AND (cursor_txid, cursor_seq) < (:txid, :seq)
        """
    ).bindparams(
        _ID,
        _OWNER,
        _GENERATION,
        _NOW,
        bindparam("txid", type_=BigInteger),
        bindparam("seq", type_=BigInteger),
        bindparam("delivered", type_=Integer),
    )
)
_OWNED = compile_statement(
    text(
        f"SELECT 1 FROM webhook_subscriptions WHERE id = :id AND lease_owner = :owner "
        f"AND state = '{ACTIVE}' AND generation = :generation"
    ).bindparams(_ID, _OWNER, _GENERATION)
)
_FAILURE = compile_statement(
    text(
        f"""
        UPDATE webhook_subscriptions
        SET consecutive_failures = consecutive_failures + 1, last_error = :error,
            last_attempt_at = :now,
            state = CASE WHEN consecutive_failures + 1 >= :budget THEN '{DISABLED}'
                ELSE state END,
            disabled_reason = CASE WHEN consecutive_failures + 1 >= :budget
                THEN 'disabled after ' || (consecutive_failures + 1)
                    || ' consecutive failed deliveries; last error: ' || :error
                ELSE '' END,
            lease_owner = CASE WHEN consecutive_failures + 1 >= :budget THEN NULL
                ELSE lease_owner END,
            lease_expires_at = CASE WHEN consecutive_failures + 1 >= :budget THEN NULL
                ELSE lease_expires_at END
        WHERE id = :id AND lease_owner = :owner AND state = '{ACTIVE}'
          AND generation = :generation
        RETURNING consecutive_failures, state, disabled_reason
        """
    ).bindparams(
        _ID,
        _OWNER,
        _GENERATION,
        _NOW,
        bindparam("error", type_=Text),
        bindparam("budget", type_=Integer),
    )
)
_RELEASE = compile_statement(
    text(
        "UPDATE webhook_subscriptions SET lease_owner = NULL, lease_expires_at = NULL "
        "WHERE lease_owner = :owner"
    ).bindparams(_OWNER)
)


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    """A subscription as its tenant sees it (never the secret)."""

    id: str
    tenant: Tenant
    url: str
    statuses: tuple[str, ...]
    definition_name: str
    filter: str
    """The filter's text (docs/filters.md); '' for none."""
    state: str
    disabled_reason: str
    cursor: LogPosition
    consecutive_failures: int
    delivered_count: int
    last_error: str
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ClaimedWebhook:
    """What the delivery loop needs of a subscription it holds the lease of."""

    id: str
    tenant: Tenant
    url: str
    secret: str
    statuses: frozenset[str]
    definition_name: str
    filter: str
    """The filter's text as created (the delivery loop parses it: `service.webhooks`)."""
    cursor: LogPosition
    generation: int
    """Bumped by every `rewind`: a delivery task of an older generation may not write."""


def _stored(row: asyncpg.Record) -> StoredWebhook:
    return StoredWebhook(
        id=str(row["id"]),
        tenant=Tenant(row["client_account_id"], row["engagement_id"]),
        url=row["url"],
        statuses=tuple(row["statuses"]),
        definition_name=row["definition_name"],
        filter=row["filter"],
        state=row["state"],
        disabled_reason=row["disabled_reason"],
        cursor=(row["cursor_txid"], row["cursor_seq"]),
        consecutive_failures=row["consecutive_failures"],
        delivered_count=row["delivered_count"],
        last_error=row["last_error"],
        last_attempt_at=row["last_attempt_at"],
        last_success_at=row["last_success_at"],
        created_at=row["created_at"],
    )


def _claimed(row: asyncpg.Record) -> ClaimedWebhook:
    return ClaimedWebhook(
        id=str(row["id"]),
        tenant=Tenant(row["client_account_id"], row["engagement_id"]),
        url=row["url"],
        secret=row["secret"],
        statuses=frozenset(row["statuses"]),
        definition_name=row["definition_name"],
        filter=row["filter"],
        cursor=(row["cursor_txid"], row["cursor_seq"]),
        generation=row["generation"],
    )


def _not_found(webhook_id: str) -> FlowStateError:
    return FlowStateError(
        ErrorCode.WEBHOOK_NOT_FOUND, f"webhook {webhook_id} not found", webhook_id=webhook_id
    )


def _check_id(webhook_id: str) -> str:
    try:
        return str(uuid.UUID(webhook_id))
    except (ValueError, TypeError, AttributeError):
        raise _not_found(str(webhook_id)[:64]) from None


@dataclass(frozen=True, slots=True)
class FailureCount:
    """After a failed attempt: consecutive failures, and the reason when it disabled the
    subscription (empty otherwise)."""

    failures: int
    disabled_reason: str


class WebhookStore:
    """Webhook subscriptions on the store's runner (`FlowStore.webhooks`): each call is one
    transaction; tenant calls as the app role in the tenant, the delivery loop's across
    tenants (see the module doc)."""

    def __init__(self, runner: TransactionRunner) -> None:
        """Run on `runner`'s pool, with its retries and error mapping."""
        self._run = runner._run

    # --- the tenant's subscriptions -------------------------------------------------------

    async def create(
        self,
        tenant: Tenant,
        *,
        url: str,
        secret: str,
        statuses: tuple[str, ...],
        definition_name: str,
        filter: str = "",
        now: datetime,
    ) -> StoredWebhook:
        """A new subscription of `tenant`, delivering every change that commits after it: its
        cursor is the log's horizon now (MALFORMED_REQUEST past `MAX_WEBHOOKS_PER_TENANT`)."""
        check_tenant(tenant)
        params = {
            **tenant_params(tenant),
            "id": str(uuid.uuid4()),
            "url": url,
            "secret": secret,
            "statuses": list(statuses),
            "definition_name": definition_name,
            "filter": filter,
            "now": now,
        }

        async def work(tx: Transaction) -> StoredWebhook:
            count = await tx.fetchval(_COUNT, tenant_params(tenant))
            if count >= MAX_WEBHOOKS_PER_TENANT:
                raise malformed(
                    "url",
                    f"a tenant may hold at most {MAX_WEBHOOKS_PER_TENANT} webhooks; "
                    "delete one first",
                    limit=MAX_WEBHOOKS_PER_TENANT,
                )
            row = await tx.fetchrow(_INSERT, params)
            assert row is not None
            return _stored(row)

        return await self._run(tenant, work, write=True)

    async def list_all(self, tenant: Tenant) -> tuple[StoredWebhook, ...]:
        """Every subscription of `tenant`, oldest first (at most `MAX_WEBHOOKS_PER_TENANT`)."""
        check_tenant(tenant)

        async def work(tx: Transaction) -> tuple[StoredWebhook, ...]:
            return tuple(_stored(row) for row in await tx.fetch(_LIST, tenant_params(tenant)))

        return await self._run(tenant, work)

    async def get(self, tenant: Tenant, webhook_id: str) -> tuple[StoredWebhook, str]:
        """The subscription and its secret; WEBHOOK_NOT_FOUND for another tenant's or none."""
        check_tenant(tenant)
        webhook_id = _check_id(webhook_id)
        params = {**tenant_params(tenant), "id": webhook_id}
        row = await self._run(tenant, lambda tx: tx.fetchrow(_GET, params))
        if row is None:
            raise _not_found(webhook_id)
        return _stored(row), row["secret"]

    async def delete(self, tenant: Tenant, webhook_id: str) -> None:
        """Delete the subscription; WEBHOOK_NOT_FOUND when `tenant` has none with this id."""
        check_tenant(tenant)
        webhook_id = _check_id(webhook_id)
        params = {**tenant_params(tenant), "id": webhook_id}
        status = await self._run(tenant, lambda tx: tx.execute(_DELETE, params), write=True)
        if status.split()[-1] == "0":
            raise _not_found(webhook_id)

    async def rewind(
        self,
        tenant: Tenant,
        webhook_id: str,
        *,
        position: LogPosition | None = None,
        since: datetime | None = None,
    ) -> StoredWebhook:
        """Move the cursor to `position` (back or forward), or to just before the first change
        at or after `since` (neither: now), and enable the subscription (a replay)."""
        check_tenant(tenant)
        webhook_id = _check_id(webhook_id)

        async def work(tx: Transaction) -> asyncpg.Record | None:
            target = position or await _position_at(tx, tenant, since)
            params = {**tenant_params(tenant), "id": webhook_id}
            return await tx.fetchrow(_REWIND, {**params, "txid": target[0], "seq": target[1]})

        row = await self._run(tenant, work, write=True)
        if row is None:
            raise _not_found(webhook_id)
        return _stored(row)

    # --- the delivery loop (every tenant) -------------------------------------------------

    async def claim(
        self, owner: str, *, lease_seconds: float, limit: int
    ) -> tuple[ClaimedWebhook, ...]:
        """Take or renew the leases of up to `limit` active subscriptions for `owner`."""
        params = {"owner": owner, "lease_seconds": lease_seconds, "limit": limit}
        rows = await self._run(None, lambda tx: tx.fetch(_CLAIM, params), write=True)
        return tuple(_claimed(row) for row in rows)

    async def advance(
        self,
        held: ClaimedWebhook,
        owner: str,
        position: LogPosition,
        *,
        delivered: int,
        now: datetime,
    ) -> bool:
        """Move the cursor forward to `position` after `delivered` acknowledged deliveries;
        False when `owner` no longer holds the lease of this generation (lost, rewound, gone,
        disabled)."""
        mine = {"id": held.id, "owner": owner, "generation": held.generation}
        params = {
            **mine,
            "txid": position[0],
            "seq": position[1],
            "delivered": delivered,
            "now": now,
        }

        async def work(tx: Transaction) -> bool:
            status = await tx.execute(_ADVANCE, params)
            if status.split()[-1] != "0":
                return True
            # Nothing moved: either the cursor is already there (fine) or the lease is lost.
            return await tx.fetchval(_OWNED, mine) is not None

        return await self._run(None, work, write=True)

    async def record_failure(
        self,
        held: ClaimedWebhook,
        owner: str,
        *,
        error: str,
        budget: int,
        now: datetime,
    ) -> FailureCount | None:
        """Count one failed attempt; disable the subscription when it is the `budget`-th in a
        row. None when `owner` no longer holds the lease."""
        params = {
            "id": held.id,
            "owner": owner,
            "generation": held.generation,
            "error": error,
            "budget": budget,
            "now": now,
        }
        row = await self._run(None, lambda tx: tx.fetchrow(_FAILURE, params), write=True)
        if row is None:
            return None
        reason = row["disabled_reason"] if row["state"] == DISABLED else ""
        return FailureCount(int(row["consecutive_failures"]), reason)

    async def release(self, owner: str) -> None:
        """Give up every lease `owner` holds (a clean shutdown: another replica takes over)."""
        await self._run(None, lambda tx: tx.execute(_RELEASE, {"owner": owner}), write=True)


async def _position_at(tx: Transaction, tenant: Tenant, since: datetime | None) -> LogPosition:
    """The position just before the first change of `tenant` at or after `since` (None: now)."""
    if since is not None:
        row = await tx.fetchrow(_FIRST_SINCE, {**tenant_params(tenant), "since": since})
        if row is not None:
            txid, seq = row["txid"], row["seq"]
            return (txid, seq - 1)
    xmin: int = await tx.fetchval(_HORIZON)
    return (xmin - 1, MAX_SEQ)
