"""`TimerService.fire` (`flowstate.service.timers`): void timers and the definition it decides with.

On a database of the test's own (`own_store`): timers are claimed across tenants. A timer is
made due by moving its row into the past in SQL, never by waiting. What is compared: what
`fire` returns, the flow as stored (unchanged when void) and the timer rows left. Found missing
by ``make mutate`` (docs/testing.md); the firing itself is in tests/storage/test_timers.py.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstate.core.commands import Context, TransitionPhase
from flowstate.core.model import ErrorCode, PhaseError, PhaseState, Tenant
from flowstate.core.timers import SYSTEM_TIMER_USER
from flowstate.service import FlowService
from flowstate.service.definitions import register_definition
from flowstate.service.timers import TimerService
from flowstate.storage import FlowStore
from flowstate.storage.values import ClaimedTimer

S = PhaseState


def _document(timeout: str) -> dict[str, Any]:
    return {
        "name": "timed",
        "phases": [
            {"name": "work", "weight": 50, "policy": {"timeout": timeout}},
            {"name": "after", "weight": 50, "depends_on": ["work"]},
        ],
    }


def _ctx(request_id: str = "") -> Context:
    return Context(now=datetime.now(UTC), user_id="worker", request_id=request_id)


class Timers:
    """The flow_timers rows of one database, by direct SQL."""

    def __init__(self, url: str) -> None:
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def run(self, statement: str, *args: object) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.dsn)
        try:
            return await connection.fetch(statement, *args)
        finally:
            await connection.close()

    async def rows(self, flow_id: str) -> dict[tuple[str, str], tuple[int, bool]]:
        """(phase, kind) -> (flow version it was armed at, claimed now)."""
        found = await self.run(
            "SELECT phase, kind, flow_version, claimed_until > now() AS claimed"
            " FROM flow_timers WHERE flow_id = $1",
            flow_id,
        )
        return {(r["phase"], r["kind"]): (r["flow_version"], bool(r["claimed"])) for r in found}

    async def make_due(self, flow_id: str) -> None:
        await self.run(
            "UPDATE flow_timers SET due_at = now() - interval '1 minute' WHERE flow_id = $1",
            flow_id,
        )


async def _started(store: FlowStore, tenant: Tenant) -> str:
    await register_definition(store, tenant, _document("1h"), _ctx("register-1h"))
    service = FlowService(store)
    created = await service.create_flow(tenant, definition_name="timed", ctx=_ctx())
    flow_id = created.flow.flow_id
    await service.mutate(tenant, flow_id, TransitionPhase("work", S.IN_PROGRESS), _ctx())
    return flow_id


async def _claim(store: FlowStore, flow_id: str) -> list[ClaimedTimer]:
    claimed = await store.timers.claim(batch=100, lease=30)
    return [t for t in claimed if t.flow_id == flow_id]


@pytest.fixture
def sql(own_database_url: str) -> Timers:
    return Timers(own_database_url)


async def test_a_timer_of_a_flow_that_moved_on_is_void(
    own_store: FlowStore, tenant: Tenant, sql: Timers
) -> None:
    flow_id = await _started(own_store, tenant)
    await sql.make_due(flow_id)
    (claimed,) = await _claim(own_store, flow_id)
    service = FlowService(own_store)
    # The phase completes between the claim and the firing: the change disarmed the timer.
    moved = await service.mutate(tenant, flow_id, TransitionPhase("work", S.COMPLETED), _ctx())
    assert await sql.rows(flow_id) == {}
    assert await TimerService(own_store).fire(claimed) is None
    assert await own_store.get_flow(tenant, flow_id) == moved.flow


async def test_a_timer_the_flow_no_longer_needs_is_void_and_the_plan_restored(
    own_store: FlowStore, tenant: Tenant, sql: Timers
) -> None:
    flow_id = await _started(own_store, tenant)
    before = await own_store.get_flow(tenant, flow_id)
    # A row at the flow's own version that its plan does not hold (the phase has not started),
    # as a replica of another release might have armed it.
    await sql.run(
        "INSERT INTO flow_timers (flow_id, phase, kind, client_account_id, engagement_id,"
        " due_at, flow_version) VALUES ($1, 'after', 'phase_timeout', $2, $3, now(), $4)",
        flow_id,
        tenant.client_account_id,
        tenant.engagement_id,
        before.version,
    )
    claimed = await _claim(own_store, flow_id)
    assert [(t.phase, t.kind) for t in claimed] == [("after", "phase_timeout")]
    assert await TimerService(own_store).fire(claimed[0]) is None
    assert await own_store.get_flow(tenant, flow_id) == before
    # Planned afresh: the stray row gone, the flow's own timer kept (and not claimed).
    assert await sql.rows(flow_id) == {("work", "phase_timeout"): (before.version, False)}


async def test_a_timer_of_an_unknown_kind_is_left_to_a_replica_that_knows_it(
    own_store: FlowStore, tenant: Tenant, sql: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    flow_id = await _started(own_store, tenant)
    before = await own_store.get_flow(tenant, flow_id)
    await sql.run("UPDATE flow_timers SET kind = 'from_the_future' WHERE flow_id = $1", flow_id)
    await sql.make_due(flow_id)
    (claimed,) = await _claim(own_store, flow_id)
    with caplog.at_level(logging.WARNING, logger="flowstate.service.timers"):
        assert await TimerService(own_store).fire(claimed) is None
    assert [r.getMessage() for r in caplog.records] == [
        "timer kind 'from_the_future' is unknown to this server; left"
    ]
    assert await own_store.get_flow(tenant, flow_id) == before
    # Left as it was: still claimed by this replica until the claim expires.
    assert await sql.rows(flow_id) == {("work", "from_the_future"): (before.version, True)}


async def test_a_timer_decides_with_the_definition_version_its_flow_follows(
    own_store: FlowStore, tenant: Tenant, sql: Timers
) -> None:
    flow_id = await _started(own_store, tenant)
    # A newer version with another timeout: the flow keeps following version 1.
    newer, _ = await register_definition(own_store, tenant, _document("2h"), _ctx("register-2h"))
    assert newer.definition.version == 2
    await sql.make_due(flow_id)
    (claimed,) = await _claim(own_store, flow_id)
    fired = await TimerService(own_store).fire(claimed)
    assert fired is not None
    assert fired.kind == "phase_timeout"
    assert fired.lag_seconds >= 60  # due a minute ago by the database clock
    (entry,) = fired.result.entries
    message = "Phase 'work' was in progress for more than 3600 s (timeout)"
    error = PhaseError(ErrorCode.AGENT_TIMEOUT, message, {"policy": "timeout", "seconds": 3600.0})
    assert (entry.user_id, entry.reason, entry.to_state, entry.error) == (
        SYSTEM_TIMER_USER,
        "timeout passed",
        S.FAILED,
        error,
    )
    assert await own_store.get_flow(tenant, flow_id) == fired.result.flow
    assert fired.result.flow.phase("work").error == error


async def test_a_round_skips_a_flow_deleted_meanwhile(
    own_store: FlowStore, sql: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = Tenant(f"round-{uuid.uuid4().hex[:8]}", "e")
    gone, kept = await _started(own_store, tenant), await _started(own_store, tenant)
    for flow_id in (gone, kept):
        await sql.make_due(flow_id)
    # A timer row whose flow is gone (as after a purge racing the claim): FLOW_NOT_FOUND.
    await sql.run("ALTER TABLE flow_timers DISABLE TRIGGER ALL")
    try:
        await sql.run("UPDATE flow_timers SET flow_id = $2 WHERE flow_id = $1", gone, uuid.uuid4())
    finally:
        await sql.run("ALTER TABLE flow_timers ENABLE TRIGGER ALL")
    with caplog.at_level(logging.WARNING, logger="flowstate.service.timers"):
        round_ = await TimerService(own_store, batch=10).fire_due()
    assert round_.claimed == 2
    assert [f.result.flow.flow_id for f in round_.fired] == [kept]
    assert caplog.records == []  # a vanished flow is no failure: its timers went with it
