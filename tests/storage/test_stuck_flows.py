"""count_stuck_flows: live flows of every tenant unchanged for a while, by status, on its index."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from flowstate.core.commands import CancelFlow, Command, PauseFlow, TransitionPhase
from flowstate.core.model import FlowStatus, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.storage.statements import COUNT_STUCK

from .support import ContextFactory, asyncpg_dsn

S = PhaseState
LONG_AGO = datetime(1990, 3, 1, 12, 0, tzinfo=UTC)
"""Before the flows of most other tests (the server's stuck-flows test uses 1985: the counts
below are taken as a difference)."""


def _other_tenant() -> Tenant:
    suffix = uuid.uuid4().hex[:12]
    return Tenant(client_account_id=f"other-{suffix}", engagement_id=f"engagement-{suffix}")


async def test_counts_live_flows_of_every_tenant_unchanged_since(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    async def flow(owner: Tenant, minutes: int, *commands: Command) -> str:
        ctx = make_context(now=LONG_AGO + timedelta(minutes=minutes))
        created = await FlowService(store).create_flow(owner, definition_name="discovery", ctx=ctx)
        for command in commands:
            await FlowService(store).mutate(owner, created.flow.flow_id, command, ctx)
        return created.flow.flow_id

    cutoff = LONG_AGO + timedelta(minutes=30)
    before = await store.count_stuck_flows(unchanged_since=cutoff)
    other = _other_tenant()
    await flow(tenant, 0)  # initialized
    await flow(other, 1)  # initialized, another tenant: counted too (an operator's figure)
    await flow(tenant, 2, TransitionPhase("data_import", S.IN_PROGRESS))  # data_gathering
    await flow(tenant, 3, PauseFlow())  # paused: stuck too, the status tells why
    await flow(tenant, 4, CancelFlow())  # terminal: never stuck
    await flow(tenant, 60)  # changed after the cutoff below

    after = await store.count_stuck_flows(unchanged_since=cutoff)

    added = {status: after[status] - before.get(status, 0) for status in after}
    assert {status: n for status, n in added.items() if n} == {
        FlowStatus.INITIALIZED: 2,
        FlowStatus.DATA_GATHERING: 1,
        FlowStatus.PAUSED: 1,
    }
    assert FlowStatus.CANCELLED not in after
    assert await store.count_stuck_flows(unchanged_since=datetime(1900, 1, 1, tzinfo=UTC)) == {}


async def test_the_count_is_served_by_the_partial_index(database_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL enable_seqscan = off")
            rows = await connection.fetch("EXPLAIN (FORMAT JSON) " + COUNT_STUCK.sql, LONG_AGO)
    finally:
        await connection.close()
    assert "ix_flows_status_updated_at" in json.dumps(json.loads(rows[0][0]))
