"""The alert scan (`flowstate.service.alerts.AlertScan`) on a real database of the test's own.

The scan works across tenants, so each test has its own database (`own_store`): the flows of
other tests are not in it. Flows are made long ago (their context's time), so by the database
clock their deadlines have passed and their quiet periods are long; no test waits. What a round
records is compared whole: its result, the entries it appended (as the history reads them back)
and the flow as stored. Found missing by ``make mutate`` (docs/testing.md): the scan was reached
only through the gRPC server's tests, which the mutation run does not use.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstate.core.commands import CancelFlow, Command, Context, PauseFlow, TransitionPhase
from flowstate.core.errors import FlowStateError
from flowstate.core.model import (
    AlertKind,
    ErrorCode,
    Flow,
    FlowAlert,
    FlowStatus,
    HistoryEntry,
    HistoryKind,
    PhaseState,
    Tenant,
)
from flowstate.core.timers import SYSTEM_TIMER_USER
from flowstate.service import FlowService
from flowstate.service.alerts import AlertScan, ScanResult
from flowstate.service.definitions import register_definition
from flowstate.storage import FlowQuery, FlowStore
from flowstate.storage.values import MutationResult

T0 = datetime(1991, 5, 1, 12, 0, tzinfo=UTC)
S = PhaseState
QUIET = 600.0
"""The stuck threshold of DATA_GATHERING in these tests (seconds)."""


def _tenant(name: str) -> Tenant:
    suffix = uuid.uuid4().hex[:8]
    return Tenant(f"{name}-{suffix}", f"engagement-{suffix}")


def _ctx(minutes: float = 0, request_id: str = "") -> Context:
    return Context(now=T0 + timedelta(minutes=minutes), user_id="worker", request_id=request_id)


async def _flow(
    store: FlowStore,
    tenant: Tenant,
    *,
    minutes: float = 0,
    deadline: datetime | None = None,
    commands: Sequence[Command] = (),
    definition: str = "discovery",
) -> Flow:
    """A flow created (and changed by `commands`) `minutes` after T0."""
    service = FlowService(store)
    ctx = _ctx(minutes)
    result = await service.create_flow(
        tenant, definition_name=definition, ctx=ctx, deadline=deadline
    )
    for command in commands:
        result = await service.mutate(tenant, result.flow.flow_id, command, ctx)
    return result.flow


def _alert_entry(before: Flow, alert: FlowAlert, version: int) -> HistoryEntry:
    """The ALERT entry a raised `alert` appends to `before` as its `version`."""
    return HistoryEntry(
        flow_version=version,
        kind=HistoryKind.ALERT,
        status_before=before.status,
        status_after=before.status,
        occurred_at=alert.raised_at,
        reason=alert.message,
        user_id=SYSTEM_TIMER_USER,
        progress_after=before.progress,
        alert=alert,
        phase_states_after=before.phase_states,
        error_codes_after=frozenset(),
    )


async def _recorded(
    store: FlowStore, tenant: Tenant, flow_id: str, after: int
) -> tuple[Flow, tuple[HistoryEntry, ...]]:
    """The flow as stored and its history entries after version `after`."""
    history = await store.list_history(tenant, flow_id, page_size=100)
    return await store.get_flow(tenant, flow_id), tuple(history.entries[after:])


def _deadline_alert(deadline: datetime | None, now: datetime, status: FlowStatus) -> FlowAlert:
    assert deadline is not None
    message = f"the flow's deadline {deadline.isoformat()} has passed"
    return FlowAlert(AlertKind.DEADLINE_EXCEEDED, deadline, now, status, message=message)


def _stuck_alert(since: datetime | None, now: datetime, status: FlowStatus) -> FlowAlert:
    assert since is not None
    message = f"no change for {QUIET:g} s in status {status.value}"
    return FlowAlert(
        AlertKind.STUCK, since + timedelta(seconds=QUIET), now, status, message=message
    )


START = TransitionPhase("data_import", S.IN_PROGRESS)
THRESHOLDS = {FlowStatus.DATA_GATHERING: QUIET, FlowStatus.INITIALIZED: 0.0}
"""Stuck after 600 s in DATA_GATHERING; never in INITIALIZED (0) nor in any other status."""


async def test_a_round_raises_each_due_breach_once_in_its_tenant(own_store: FlowStore) -> None:
    one, two = _tenant("one"), _tenant("two")
    # Due: a passed deadline (never stuck: INITIALIZED has no threshold), a quiet period, both.
    late = await _flow(own_store, one, deadline=T0 + timedelta(hours=1))
    quiet = await _flow(own_store, one, minutes=1, commands=[START])
    both = await _flow(
        own_store, two, minutes=2, deadline=T0 + timedelta(hours=2), commands=[START]
    )
    # Not due: an ended flow (its deadline passed too), a deadline ahead, a paused flow (no
    # threshold for PAUSED).
    await _flow(own_store, one, deadline=T0, commands=[CancelFlow()])
    await _flow(own_store, two, deadline=datetime.now(UTC) + timedelta(days=365))
    await _flow(own_store, one, commands=[START, PauseFlow()])

    scan = AlertScan(own_store, stuck_after=THRESHOLDS, batch_size=10)
    first = await scan.run_once()

    assert (first.examined, first.full) == (3, False)
    # Most overdue first: `quiet` by its last change, the others by their deadlines.
    assert [r.flow.flow_id for r in first.changed] == [quiet.flow_id, late.flow_id, both.flow_id]
    now = first.changed[0].entries[0].occurred_at
    assert now > T0 + timedelta(days=365 * 30)  # the database's clock, not the flows' times
    gathering = FlowStatus.DATA_GATHERING
    raised = {
        quiet.flow_id: (quiet, one, [_stuck_alert(quiet.updated_at, now, gathering)]),
        late.flow_id: (late, one, [_deadline_alert(late.deadline, now, FlowStatus.INITIALIZED)]),
        both.flow_id: (
            both,
            two,
            [
                _deadline_alert(both.deadline, now, gathering),
                _stuck_alert(both.updated_at, now, gathering),
            ],
        ),
    }
    for result, (before, owner, alerts) in zip(first.changed, raised.values(), strict=True):
        entries = tuple(
            _alert_entry(before, alert, before.version + i) for i, alert in enumerate(alerts, 1)
        )
        # Alerts are not changes: the flow's status, phases and update time stay.
        after = replace(
            before, version=before.version + len(alerts), alerts=tuple(alerts), alert_due_at=None
        )
        assert result == MutationResult(flow=after, entries=entries)
        assert await _recorded(own_store, owner, after.flow_id, before.version) == (after, entries)
    assert first.entries == tuple(e for result in first.changed for e in result.entries)

    # Each in its tenant.
    alerting = await own_store.list_flows(one, FlowQuery(alerting=True, page_size=10))
    assert {f.flow_id for f in alerting.flows} == {late.flow_id, quiet.flow_id}
    with pytest.raises(FlowStateError) as elsewhere:
        await own_store.get_flow(one, both.flow_id)
    assert elsewhere.value.code is ErrorCode.FLOW_NOT_FOUND

    # Rescans find nothing: every breach is handled by an alert in force.
    for _ in range(2):
        assert await scan.run_once() == ScanResult(changed=(), examined=0, full=False)
    for result, (before, owner, _) in zip(first.changed, raised.values(), strict=True):
        assert await _recorded(own_store, owner, before.flow_id, before.version) == (
            result.flow,
            result.entries,
        )


async def test_a_full_round_takes_the_most_overdue_flows_first(own_store: FlowStore) -> None:
    tenant = _tenant("batch")
    newer = await _flow(own_store, tenant, deadline=T0 + timedelta(minutes=10))
    older = await _flow(own_store, tenant, deadline=T0 + timedelta(minutes=5))
    scan = AlertScan(own_store, stuck_after={}, batch_size=1)
    rounds = [await scan.run_once() for _ in range(3)]
    # A full round says more may be due; the next round takes the next flow.
    assert [(r.examined, r.full, [c.flow.flow_id for c in r.changed]) for r in rounds] == [
        (1, True, [older.flow_id]),
        (1, True, [newer.flow_id]),
        (0, False, []),
    ]
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1$"):
        AlertScan(own_store, stuck_after={}, batch_size=0)


async def _sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


async def test_a_flow_that_cannot_be_decided_is_logged_and_tried_next_round(
    own_store: FlowStore, own_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = _tenant("broken")
    broken = await _flow(own_store, tenant, deadline=T0 + timedelta(minutes=1))
    fine = await _flow(own_store, tenant, deadline=T0 + timedelta(minutes=2))
    # A definition version the store does not have: the decision fails on that flow only.
    move = "UPDATE flows SET definition_version = $2 WHERE id = $1"
    await _sql(own_database_url, move, broken.flow_id, 99)
    scan = AlertScan(own_store, stuck_after={}, batch_size=10)
    with caplog.at_level(logging.WARNING, logger="flowstate.service.alerts"):
        first = await scan.run_once()
    assert (first.examined, first.full) == (2, False)
    assert [r.flow.flow_id for r in first.changed] == [fine.flow_id]
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "flowstate.service.alerts",
            "WARNING",
            f"alert scan: flow {broken.flow_id}: No flow definition 'discovery' version 99",
        )
    ]
    assert (await own_store.get_flow(tenant, broken.flow_id)).alerts == ()

    await _sql(own_database_url, move, broken.flow_id, 1)
    second = await scan.run_once()
    assert [(r.flow.flow_id, r.flow.version) for r in second.changed] == [(broken.flow_id, 2)]
    assert [a.kind for a in second.changed[0].flow.alerts] == [AlertKind.DEADLINE_EXCEEDED]


TIMED = {"name": "timed", "phases": [{"name": "work", "weight": 100, "policy": {"timeout": "1h"}}]}


async def test_an_alert_replans_the_flows_timers_at_its_new_version(
    own_store: FlowStore, own_database_url: str
) -> None:
    tenant = _tenant("timed")
    await register_definition(own_store, tenant, TIMED, _ctx(request_id="register-timed"))
    flow = await _flow(
        own_store,
        tenant,
        definition="timed",
        deadline=T0 + timedelta(minutes=1),
        commands=[TransitionPhase("work", S.IN_PROGRESS)],
    )
    timers = "SELECT phase, kind, due_at, flow_version FROM flow_timers WHERE flow_id = $1"
    ((phase, kind, due_at, version),) = await _sql(own_database_url, timers, flow.flow_id)
    assert (phase, kind, version) == ("work", "phase_timeout", 2)

    (result,) = (await AlertScan(own_store, stuck_after={}, batch_size=10).run_once()).changed
    assert result.flow.version == 3
    # Still due when it was (the alert changes no phase), armed at the flow's new version:
    # a timer armed at another version than its flow's is void (service.timers).
    replanned = [tuple(r) for r in await _sql(own_database_url, timers, flow.flow_id)]
    assert replanned == [("work", "phase_timeout", due_at, 3)]
