"""The SQL of flow timers (`flow_timers`, docs/timers.md): sync, claim, lock, heartbeat.

Every due time is computed by the database clock (``statement_timestamp()``): a plan made with
a server's clock is stored as delays from that clock's `now`, and whether a row is due is asked
of the database, so replicas whose clocks disagree still agree on what is due.

- `SYNC` (in the flow's write transaction, under its row lock): the flow's rows become the
  planned set. A row already stored keeps its due time (a timer fires once per due time; the
  plan of an unrelated change must not move it) unless the plan `resets` it to a later one; its
  `flow_version` becomes the flow's. Rows not planned are deleted.
- `CLAIM` (autocommit, as the connecting user, across tenants): up to `batch` due rows, unclaimed
  or whose claim has expired, oldest due first, ``FOR UPDATE SKIP LOCKED`` so that replicas
  never wait for each other, marked claimed for `lease` seconds. A claim only spreads the work:
  the fire itself re-reads its row under the flow's lock (`LOCK`), so two replicas that both
  claimed a row (an expired lease) still change the flow once.
- `LOCK`: the row and the database's clock, ``FOR UPDATE`` (a racing Heartbeat waits).
- `HEARTBEAT`: push a heartbeat timer back (never earlier), unclaimed.

`TimerStore` (the store's `FlowStore.timers`) runs `CLAIM` and `HEARTBEAT` on the store's
runner; `SYNC`, `LOCK` and `DELETE` run inside a flow's transaction (`FlowTransaction`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Integer, Text, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB, UUID

from flowstate.core.model import Tenant
from flowstate.storage.limits import check_flow_id, check_tenant
from flowstate.storage.runner import TransactionRunner
from flowstate.storage.sql import Transaction, compile_statement
from flowstate.storage.values import ClaimedTimer

__all__ = ["CLAIM", "DATABASE_NOW", "DELETE", "HEARTBEAT", "LOCK", "SYNC", "TimerStore"]

_FLOW_ID = bindparam("flow_id", type_=UUID(as_uuid=False))
_PHASE = bindparam("phase", type_=Text)
_KIND = bindparam("kind", type_=Text)

SYNC = compile_statement(
    text(
        """
        WITH planned AS (
            SELECT * FROM jsonb_to_recordset(:timers)
                AS t(phase text, kind text, delay double precision, reset boolean)
        ), gone AS (
            DELETE FROM flow_timers ft
             WHERE ft.flow_id = :flow_id
               AND NOT EXISTS (
                   SELECT 1 FROM planned p WHERE p.phase = ft.phase AND p.kind = ft.kind
               )
        )
        INSERT INTO flow_timers AS ft
            (flow_id, phase, kind, client_account_id, engagement_id, due_at, flow_version)
        SELECT :flow_id, p.phase, p.kind, :account, :engagement,
               statement_timestamp() + p.delay * interval '1 second', :version
          FROM planned p
        ON CONFLICT (flow_id, phase, kind) DO UPDATE SET
            flow_version = EXCLUDED.flow_version,
            due_at = CASE
                WHEN (SELECT p.reset FROM planned p
                       WHERE p.phase = EXCLUDED.phase AND p.kind = EXCLUDED.kind)
                THEN GREATEST(ft.due_at, EXCLUDED.due_at)
                ELSE ft.due_at
            END,
            claimed_until = NULL
        """
    ).bindparams(
        bindparam("timers", type_=JSONB),
        _FLOW_ID,
        bindparam("account", type_=Text),
        bindparam("engagement", type_=Text),
        bindparam("version", type_=Integer),
    )
)

CLAIM = compile_statement(
    text(
        """
        UPDATE flow_timers ft
           SET claimed_until = statement_timestamp() + :lease * interval '1 second'
          FROM (
              SELECT flow_id, phase, kind FROM flow_timers
               WHERE due_at <= statement_timestamp()
                 AND (claimed_until IS NULL
                      OR (claimed_until IS NOT NULL
                          AND claimed_until <= statement_timestamp()))
               ORDER BY due_at
               LIMIT :batch
               FOR UPDATE SKIP LOCKED
          ) due
         WHERE ft.flow_id = due.flow_id AND ft.phase = due.phase AND ft.kind = due.kind
        RETURNING ft.flow_id, ft.phase, ft.kind, ft.client_account_id, ft.engagement_id,
                  ft.due_at, ft.flow_version
        """
    ).bindparams(bindparam("lease", type_=Float), bindparam("batch", type_=Integer))
)

LOCK = compile_statement(
    text(
        """
        SELECT due_at, flow_version, statement_timestamp() AS now FROM flow_timers
         WHERE flow_id = :flow_id AND phase = :phase AND kind = :kind
        FOR UPDATE
        """
    ).bindparams(_FLOW_ID, _PHASE, _KIND)
)

HEARTBEAT = compile_statement(
    text(
        """
        UPDATE flow_timers
           SET due_at = GREATEST(due_at, statement_timestamp() + :seconds * interval '1 second'),
               claimed_until = NULL
         WHERE flow_id = :flow_id AND phase = :phase AND kind = :kind
        RETURNING due_at
        """
    ).bindparams(bindparam("seconds", type_=Float), _FLOW_ID, _PHASE, _KIND)
)

DELETE = compile_statement(
    text(
        "DELETE FROM flow_timers WHERE flow_id = :flow_id AND phase = :phase AND kind = :kind"
    ).bindparams(_FLOW_ID, _PHASE, _KIND)
)

DATABASE_NOW = compile_statement(text("SELECT statement_timestamp()"))


class TimerStore:
    """Claiming due timers and heartbeats, on the store's runner (docs/timers.md)."""

    def __init__(self, runner: TransactionRunner) -> None:
        """Run on `runner`'s pool, with its retries and error mapping."""
        self._run = runner._run

    async def claim(self, *, batch: int, lease: float) -> list[ClaimedTimer]:
        """Claim up to `batch` due timers of every tenant for `lease` seconds (`CLAIM`); the
        caller fires each through `FlowStore.update_flow`.

        Runs as the connecting user (cross-tenant maintenance, like the purge), one statement.
        """

        async def work(tx: Transaction) -> list[ClaimedTimer]:
            rows = await tx.fetch(CLAIM, {"lease": lease, "batch": batch})
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

    async def touch_heartbeat(
        self, tenant: Tenant, flow_id: str, phase: str, kind: str, seconds: float
    ) -> datetime | None:
        """Push the flow's `kind` timer of `phase` to `seconds` from now (database clock; never
        earlier); its new due time, or None when the flow has no such timer."""
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)
        params = {"flow_id": flow_id, "phase": phase, "kind": kind, "seconds": seconds}

        async def work(tx: Transaction) -> datetime | None:
            due: datetime | None = await tx.fetchval(HEARTBEAT, params)
            return due

        return await self._run(tenant, work, write=True)
