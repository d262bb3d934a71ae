"""The timer engine on a real Postgres (docs/timers.md): rows, claims, firing once, voiding.

A database of this module's own (no server fires timers in it), the use cases driven directly:
`FlowService` arms timers with each change, `TimerService.fire_due` claims and fires. Due times
are made due by moving them into the past in SQL, not by waiting.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from flowstate.core.commands import Context, TransitionPhase, UpdatePhaseProgress
from flowstate.core.definition_document import definition_from_document
from flowstate.core.model import ErrorCode, PhaseError, PhaseState, Tenant
from flowstate.core.timers import SYSTEM_TIMER_USER
from flowstate.service import FlowService
from flowstate.service.timers import TimerService
from flowstate.storage import FlowStore, migrate

from .support import asyncpg_dsn

S = PhaseState

DEFINITION = {
    "name": "timed",
    "phases": [
        {
            "name": "work",
            "weight": 50,
            "max_retries": 2,
            "policy": {
                "timeout": "1h",
                "heartbeat_timeout": "10m",
                "retry_policy": {
                    "initial_backoff": "1m",
                    "multiplier": 2,
                    "max_backoff": "1h",
                    "retry_on": ["EXTERNAL_SERVICE_ERROR"],
                },
            },
        },
        {"name": "after", "weight": 50, "depends_on": ["work"], "policy": {"timeout": "1h"}},
    ],
}


@pytest_asyncio.fixture(scope="module")
async def timer_db(database_server: Any) -> AsyncIterator[str]:
    url: str = await database_server.create_database()
    await migrate.upgrade(url)
    yield url
    await database_server.drop_database(url)


@pytest_asyncio.fixture(scope="module")
async def timer_store(timer_db: str) -> AsyncIterator[FlowStore]:
    opened = await FlowStore.open(timer_db)
    yield opened
    await opened.close()


@pytest_asyncio.fixture
async def sql(timer_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(timer_db))
    yield connection
    await connection.close()


def ctx(user: str = "worker") -> Context:
    return Context(now=datetime.now(UTC), user_id=user)


async def timed_flow(store: FlowStore, tenant: Tenant) -> str:
    definition = definition_from_document(DEFINITION)
    await store.definitions.register(tenant, definition, request_id="", now=datetime.now(UTC))
    created = await FlowService(store).create_flow(tenant, definition_name="timed", ctx=ctx())
    return created.flow.flow_id


async def rows(sql: asyncpg.Connection, flow_id: str) -> dict[tuple[str, str], asyncpg.Record]:
    found = await sql.fetch("SELECT * FROM flow_timers WHERE flow_id = $1", flow_id)
    return {(r["phase"], r["kind"]): r for r in found}


async def make_due(sql: asyncpg.Connection, flow_id: str, kind: str, ago: float = 1.0) -> None:
    await sql.execute(
        "UPDATE flow_timers SET due_at = now() - $3 * interval '1 second'"
        " WHERE flow_id = $1 AND kind = $2",
        flow_id,
        kind,
        ago,
    )


async def test_timer_rows_follow_the_phase_states(
    timer_store: FlowStore, tenant: Tenant, sql: asyncpg.Connection
) -> None:
    service = FlowService(timer_store)
    flow_id = await timed_flow(timer_store, tenant)
    assert await rows(sql, flow_id) == {}
    await service.mutate(tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), ctx())
    armed = await rows(sql, flow_id)
    assert set(armed) == {("work", "phase_timeout"), ("work", "heartbeat_timeout")}
    assert {r["flow_version"] for r in armed.values()} == {2}
    assert all(r["client_account_id"] == tenant.client_account_id for r in armed.values())
    # A progress report pushes the heartbeat back; the phase timeout keeps its due time.
    await asyncio.sleep(0.05)
    await service.mutate(tenant, flow_id, UpdatePhaseProgress("work", 0.5), ctx())
    moved = await rows(sql, flow_id)
    hb, to = ("work", "heartbeat_timeout"), ("work", "phase_timeout")
    assert moved[hb]["due_at"] > armed[hb]["due_at"]
    assert moved[to]["due_at"] == armed[to]["due_at"]
    assert {r["flow_version"] for r in moved.values()} == {3}
    failure = PhaseError(ErrorCode.EXTERNAL_SERVICE_ERROR, "down")
    failed = await service.mutate(
        tenant, flow_id, TransitionPhase("work", S.FAILED, error=failure), ctx()
    )
    assert set(await rows(sql, flow_id)) == {("work", "retry_backoff")}
    assert failed.flow.phase("work").next_attempt_at == failed.entries[-1].occurred_at + timedelta(
        minutes=1
    )
    await service.mutate(tenant, flow_id, TransitionPhase("work", S.RETRY_NEEDED), ctx())
    assert await rows(sql, flow_id) == {}


async def test_a_due_timer_fires_once_as_the_system_timer(
    timer_store: FlowStore, tenant: Tenant, sql: asyncpg.Connection
) -> None:
    service = FlowService(timer_store)
    flow_id = await timed_flow(timer_store, tenant)
    await service.mutate(tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), ctx())
    await make_due(sql, flow_id, "phase_timeout", ago=3600)
    timers = TimerService(timer_store, batch=100, lease=30)
    first = await timers.fire_due()
    mine = [f for f in first.fired if f.result.flow.flow_id == flow_id]
    assert len(mine) == 1
    assert mine[0].kind == "phase_timeout"
    assert mine[0].lag_seconds >= 3600  # late, by the database clock, but fired
    flow = await service.get_flow(tenant, flow_id)
    work = flow.phase("work")
    assert work.state is S.FAILED
    assert work.error is not None
    assert work.error.error_code is ErrorCode.AGENT_TIMEOUT
    # AGENT_TIMEOUT is not in this policy's retry_on: nothing scheduled, no timer left.
    assert work.next_attempt_at is None
    assert await rows(sql, flow_id) == {}
    history = (await service.list_history(tenant, flow_id)).entries
    assert [e.user_id for e in history][-1] == SYSTEM_TIMER_USER
    second = await timers.fire_due()
    assert flow_id not in {f.result.flow.flow_id for f in second.fired}
    assert len((await service.list_history(tenant, flow_id)).entries) == len(history)


async def test_a_timer_armed_at_another_flow_version_is_void(
    timer_store: FlowStore, tenant: Tenant, sql: asyncpg.Connection
) -> None:
    service = FlowService(timer_store)
    flow_id = await timed_flow(timer_store, tenant)
    await service.mutate(tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), ctx())
    await make_due(sql, flow_id, "phase_timeout")
    await sql.execute("UPDATE flow_timers SET flow_version = 1 WHERE flow_id = $1", flow_id)
    round_ = await TimerService(timer_store).fire_due()
    assert flow_id not in {f.result.flow.flow_id for f in round_.fired}
    assert (await service.get_flow(tenant, flow_id)).phase("work").state is S.IN_PROGRESS
    # Planned afresh at the flow's version, with a due time from the policy.
    replanned = await rows(sql, flow_id)
    assert set(replanned) == {("work", "phase_timeout"), ("work", "heartbeat_timeout")}
    assert {r["flow_version"] for r in replanned.values()} == {2}
    assert replanned[("work", "phase_timeout")]["due_at"] > datetime.now(UTC) + timedelta(
        minutes=50
    )


async def test_a_timer_pushed_back_after_its_claim_does_not_fire(
    timer_store: FlowStore, tenant: Tenant, sql: asyncpg.Connection
) -> None:
    service = FlowService(timer_store)
    flow_id = await timed_flow(timer_store, tenant)
    await service.mutate(tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), ctx())
    await make_due(sql, flow_id, "heartbeat_timeout")
    claimed = [
        t for t in await timer_store.timers.claim(batch=1000, lease=30) if t.flow_id == flow_id
    ]
    assert [t.kind for t in claimed] == ["heartbeat_timeout"]
    beat = await service.heartbeat(tenant, flow_id, "work")  # the worker was alive after all
    assert beat.deadline is not None
    assert beat.deadline > datetime.now(UTC)
    assert await TimerService(timer_store).fire(claimed[0]) is None
    assert (await service.get_flow(tenant, flow_id)).phase("work").state is S.IN_PROGRESS
    row = (await rows(sql, flow_id))[("work", "heartbeat_timeout")]
    assert row["claimed_until"] is None


async def test_claims_are_bounded_disjoint_and_expire(
    timer_store: FlowStore, sql: asyncpg.Connection
) -> None:
    tenant = Tenant(f"claims-{uuid.uuid4().hex[:8]}", "e")
    service = FlowService(timer_store)
    flows = [await timed_flow(timer_store, tenant) for _ in range(6)]
    for flow_id in flows:
        await service.mutate(tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), ctx())
        await make_due(sql, flow_id, "phase_timeout")
    first, second = await asyncio.gather(
        timer_store.timers.claim(batch=4, lease=0.5),
        timer_store.timers.claim(batch=4, lease=0.5),
    )
    mine = set(flows)
    a = {t.flow_id for t in first if t.flow_id in mine}
    b = {t.flow_id for t in second if t.flow_id in mine}
    assert len(first) <= 4
    assert len(second) <= 4
    assert not a & b
    assert a | b == mine
    # Nothing fired them: once the claims expire, the timers are claimable again.
    assert not {t.flow_id for t in await timer_store.timers.claim(batch=100, lease=30)} & mine
    await asyncio.sleep(0.6)
    again = {t.flow_id for t in await timer_store.timers.claim(batch=100, lease=30)}
    assert mine <= again


async def test_timer_rows_are_isolated_by_tenant(
    timer_store: FlowStore, tenant: Tenant, timer_db: str
) -> None:
    service = FlowService(timer_store)
    flow_id = await timed_flow(timer_store, tenant)
    await service.mutate(tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), ctx())
    connection = await asyncpg.connect(asyncpg_dsn(timer_db))
    try:
        async with connection.transaction():
            await connection.execute(
                "SELECT set_config('role', 'flowstate_app', true),"
                " set_config('flowstate.client_account_id', 'someone-else', true),"
                " set_config('flowstate.engagement_id', $1, true)",
                tenant.engagement_id,
            )
            seen = await connection.fetchval(
                "SELECT count(*) FROM flow_timers WHERE flow_id = $1", flow_id
            )
    finally:
        await connection.close()
    assert seen == 0


async def test_the_migration_downgrades_and_upgrades_with_pending_timers(
    fresh_database_url: str,
) -> None:
    await migrate.upgrade(fresh_database_url)
    store = await FlowStore.open(fresh_database_url)
    tenant = Tenant("migrating", "e")
    try:
        flow_id = await timed_flow(store, tenant)
        await FlowService(store).mutate(
            tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), ctx()
        )
    finally:
        await store.close()
    await migrate.downgrade(fresh_database_url, "0006_stable_plans")
    await migrate.upgrade(fresh_database_url)
    store = await FlowStore.open(fresh_database_url)
    try:
        flow = await FlowService(store).get_flow(tenant, flow_id)
        assert flow.phase("work").state is S.IN_PROGRESS
    finally:
        await store.close()


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"heartbeat_timeout": "31d"}, {"nope": 1}])
def test_bad_policy_values_are_refused(bad: dict[str, Any]) -> None:
    from flowstate.core.definition_document import check_document

    document = {"name": "x", "phases": [{"name": "a", "weight": 100, "policy": bad}]}
    assert [v.field.startswith("phases[0].policy") for v in check_document(document)] == [True]
