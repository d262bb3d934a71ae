"""Alerts (deadlines, stuck flows, approval timeouts) on a real database and a real server.

Each breach is raised once however many replicas scan (two `AlertScan`s, or for approval
timeouts two `TimerService`s, on two stores racing over the same flows stand for two
replicas), the alert reaches WatchFlows / WatchFlow as the `alert` event case and a stream
resumed by cursor (or version) delivers it exactly once, and an approval timeout rejects as
``system:timer`` or escalates. Real time is kept short (fractions of a second) and every wait
is bounded polling, never a sleep that hopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest_asyncio

from flowstate.core.commands import Context, TransitionPhase
from flowstate.core.model import (
    AlertKind,
    ApprovalDecision,
    ErrorCode,
    FlowStatus,
    HistoryKind,
    PhaseState,
    Tenant,
)
from flowstate.core.timers import SYSTEM_TIMER_USER
from flowstate.service import FlowService
from flowstate.service.alerts import AlertScan
from flowstate.service.definitions import register_definition
from flowstate.service.timers import TimerService
from flowstate.storage import FlowQuery, FlowStore, migrate
from flowstate.testing import serve_in_process
from flowstate.v1 import approvals_pb2, flow_service_pb2_grpc
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api

T = TypeVar("T")
WAIT = 15.0
S = PhaseState


@pytest_asyncio.fixture
async def stores(fresh_database_url: str) -> AsyncIterator[tuple[FlowStore, FlowStore]]:
    """Two stores (two replicas' pools) on a migrated database of this test's own."""
    await migrate.upgrade(fresh_database_url)
    one = await FlowStore.open(fresh_database_url)
    two = await FlowStore.open(fresh_database_url)
    yield one, two
    await one.close()
    await two.close()


async def _until(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll `check` until it returns something (bounded)."""
    async with asyncio.timeout(WAIT):
        while True:
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover - timeout raises first


def _ctx(request_id: str = "") -> Context:
    return Context(now=datetime.now(UTC), user_id="tester", request_id=request_id)


async def _alerts_in_history(store: FlowStore, tenant: Tenant, flow_id: str) -> list[Any]:
    history = await store.list_history(tenant, flow_id, page_size=1000)
    return [e.alert for e in history.entries if e.kind is HistoryKind.ALERT]


async def test_two_replicas_raise_each_breach_once(
    stores: tuple[FlowStore, FlowStore], tenant: Tenant
) -> None:
    one, two = stores
    thresholds = {status: 0.3 for status in FlowStatus}
    replicas = [AlertScan(store, stuck_after=thresholds, batch_size=50) for store in (one, two)]
    service = FlowService(one)
    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    flows = [
        (
            await service.create_flow(
                tenant, definition_name="discovery", ctx=_ctx(), deadline=soon
            )
        ).flow.flow_id
        for _ in range(20)
    ]
    for flow_id in flows:
        await service.mutate(tenant, flow_id, TransitionPhase("data_import", S.IN_PROGRESS), _ctx())

    async def all_raised() -> bool | None:
        await asyncio.gather(*(replica.run_once() for replica in replicas))
        for flow_id in flows:
            kinds = sorted(a.kind for a in await _alerts_in_history(one, tenant, flow_id))
            if kinds != [AlertKind.DEADLINE_EXCEEDED, AlertKind.STUCK]:
                return None
        return True

    await _until(all_raised, "every flow got its deadline and stuck alerts")
    for _ in range(5):  # more rounds of both replicas raise nothing more
        await asyncio.gather(*(replica.run_once() for replica in replicas))
    for flow_id in flows:
        alerts = await _alerts_in_history(one, tenant, flow_id)
        assert sorted(a.kind for a in alerts) == [AlertKind.DEADLINE_EXCEEDED, AlertKind.STUCK]
        flow = await one.get_flow(tenant, flow_id)
        assert {a.kind for a in flow.alerts} == {AlertKind.DEADLINE_EXCEEDED, AlertKind.STUCK}
    listed = await one.list_flows(tenant, FlowQuery(alerting=True, page_size=100))
    assert {f.flow_id for f in listed.flows} == set(flows)

    # A change ends the STUCK alert (not the deadline's); a new quiet period raises a new one.
    changed = await service.mutate(
        tenant, flows[0], TransitionPhase("data_import", S.COMPLETED), _ctx()
    )
    assert [a.kind for a in changed.flow.alerts] == [AlertKind.DEADLINE_EXCEEDED]

    async def stuck_again() -> bool | None:
        await asyncio.gather(*(replica.run_once() for replica in replicas))
        alerts = await _alerts_in_history(one, tenant, flows[0])
        return True if len(alerts) == 3 else None

    await _until(stuck_again, "a second quiet period raises a second STUCK alert")


async def test_approval_timeout_rejects_as_the_timer_or_escalates(
    stores: tuple[FlowStore, FlowStore], tenant: Tenant
) -> None:
    """The approval timeout is a timer of the timer engine: two replicas' timer services fire it
    once; with escalate the phase keeps waiting and the timer is not planned again."""
    store = stores[0]
    service = FlowService(store)
    replicas = [TimerService(s, batch=10, lease=30.0) for s in stores]
    for action in ("reject", "escalate"):
        document = {
            "name": f"review_{action}",
            "phases": [
                {
                    "name": "publish",
                    "weight": 100,
                    "policy": {"approval": {"approval_timeout": "0.3s", "on_timeout": action}},
                }
            ],
        }
        await register_definition(store, tenant, document, _ctx(f"register-{action}"))
        flow_id = (
            await service.create_flow(tenant, definition_name=f"review_{action}", ctx=_ctx())
        ).flow.flow_id
        for state in (S.IN_PROGRESS, S.WAITING_APPROVAL):
            await service.mutate(tenant, flow_id, TransitionPhase("publish", state), _ctx())

        async def handled(flow_id: str = flow_id) -> Any:
            await asyncio.gather(*(replica.fire_due() for replica in replicas))
            history = await store.list_history(tenant, flow_id)
            last = history.entries[-1]
            return last if last.user_id == SYSTEM_TIMER_USER else None

        entry = await _until(handled, f"the approval timeout ({action}) fired")
        flow = await store.get_flow(tenant, flow_id)
        if action == "reject":
            assert entry.kind is HistoryKind.DECISION
            assert entry.approval is not None
            assert entry.approval.decision is ApprovalDecision.REJECT
            assert flow.phase("publish").state is S.FAILED
            error = flow.phase("publish").error
            assert error is not None
            assert error.error_code is ErrorCode.APPROVAL_REJECTED
        else:
            assert entry.kind is HistoryKind.ALERT
            assert entry.alert is not None
            assert (entry.alert.kind, entry.alert.phase) == (AlertKind.APPROVAL_TIMEOUT, "publish")
            assert flow.phase("publish").state is S.WAITING_APPROVAL
        for _ in range(3):
            await asyncio.gather(*(replica.fire_due() for replica in replicas))
        assert (await store.get_flow(tenant, flow_id)).version == flow.version


async def _next_event(stream: AsyncIterator[Any]) -> Any:
    async with asyncio.timeout(WAIT):
        while True:
            response = await anext(stream)
            if response.event.WhichOneof("kind") != "heartbeat":
                return response


async def test_the_alert_event_reaches_streams_once_and_resumes_by_cursor(
    fresh_database_url: str, tenant: Tenant
) -> None:
    await migrate.upgrade(fresh_database_url)
    async with (
        serve_in_process(fresh_database_url, alert_check_interval=0.05) as replica_a,
        serve_in_process(
            fresh_database_url, minter=replica_a.mint, alert_check_interval=0.05
        ) as replica_b,
        replica_a.channel() as channel,
    ):
        api = Api(flow_service_pb2_grpc.FlowStateServiceStub(channel), replica_a.mint, tenant)
        watch_all = api.stub.WatchFlows(pb.WatchFlowsRequest(), metadata=api.metadata)
        stream = aiter(watch_all)
        deadline = datetime.now(UTC) + timedelta(seconds=0.5)
        request = pb.CreateFlowRequest(request_id="create-1")
        request.deadline.FromDatetime(deadline)
        created = await api.stub.CreateFlow(request, metadata=api.metadata)
        flow_id = created.flow.flow_id
        assert created.flow.deadline.ToDatetime(tzinfo=UTC) == deadline
        first = await _next_event(stream)
        assert (first.event.flow_id, first.event.flow_version) == (flow_id, 1)
        alert = await _next_event(stream)
        assert alert.event.WhichOneof("kind") == "alert"
        assert alert.event.alert.kind == approvals_pb2.ALERT_KIND_DEADLINE_EXCEEDED
        assert alert.event.flow_version == 2
        await api.move(flow_id, "data_import", 2)  # IN_PROGRESS: an ordinary change follows
        change = await _next_event(stream)
        assert (change.event.WhichOneof("kind"), change.event.flow_version) == ("change", 3)
        watch_all.cancel()

        # Resumed before the alert: it comes once, then the change; after it: only the change.
        for cursor, expected in ((first.cursor, [2, 3]), (alert.cursor, [3])):
            resumed = api.stub.WatchFlows(
                pb.WatchFlowsRequest(cursor=cursor), metadata=api.metadata
            )
            rest = aiter(resumed)
            versions = [(await _next_event(rest)).event.flow_version for _ in expected]
            assert versions == expected
            resumed.cancel()
        one = api.stub.WatchFlow(
            pb.WatchFlowRequest(flow_id=flow_id, after_version=1, keep_open=True),
            metadata=api.metadata,
        )
        replayed = await _next_event(aiter(one))
        assert replayed.event.WhichOneof("kind") == "alert"
        one.cancel()

        history = await api.history(flow_id)
        assert [e.kind for e in history].count(36) == 1  # HISTORY_EVENT_KIND_ALERT
        listed = await api.stub.ListFlows(pb.ListFlowsRequest(alerting=True), metadata=api.metadata)
        assert [f.flow_id for f in listed.flows] == [flow_id]
        assert [a.kind for a in listed.flows[0].alerts] == [
            approvals_pb2.ALERT_KIND_DEADLINE_EXCEEDED
        ]
        # Both replicas scan; between them they raised it once.
        raised = [
            replica.server.metrics.registry.get_sample_value(
                "flowstate_alerts_total", {"kind": "deadline_exceeded"}
            )
            or 0.0
            for replica in (replica_a, replica_b)
        ]
        assert sorted(raised) == [0.0, 1.0]
