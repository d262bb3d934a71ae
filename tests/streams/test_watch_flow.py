"""WatchFlow at the hub level: snapshot, replay, live changes, heartbeats, ends, failures.

Real PostgreSQL, real store, real LISTEN connection; the hub is read directly (no gRPC).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from flowstate.core.commands import CancelFlow
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, HistoryEntry, Tenant
from flowstate.server.watch import FlowEventValue, WatchHub
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.storage.urls import normalize_database_url

from .support import create_flow, ctx, next_change, next_event, report_progress


def _watch(
    hub: WatchHub,
    tenant: Tenant,
    flow_id: str,
    after_version: int | None = None,
    *,
    keep_open: bool = False,
) -> AsyncGenerator[FlowEventValue, None]:
    return hub.watch_flow(tenant, flow_id, after_version=after_version, keep_open=keep_open)


async def _versions(stream: AsyncIterator[FlowEventValue], count: int) -> list[int]:
    return [(await next_change(stream)).flow_version for _ in range(count)]


class CountingStore:
    """The real store, counting the per-flow history reads the hub makes."""

    def __init__(self, store: FlowStore) -> None:
        self.store = store
        self.reads = 0

    async def get_flow(self, tenant: Tenant, flow_id: str) -> Any:
        return await self.store.get_flow(tenant, flow_id)

    async def read_changes(
        self, tenant: Tenant, flow_id: str, after_version: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        self.reads += 1
        return await self.store.read_changes(tenant, flow_id, after_version, limit)


async def test_snapshot_then_every_live_change_in_order(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    flow = await create_flow(store, tenant)
    stream = _watch(hub, tenant, flow.flow_id)

    first = await next_event(stream)
    assert first.snapshot == flow
    assert (first.flow_id, first.flow_version, first.status) == (flow.flow_id, 2, flow.status)

    last = await report_progress(store, tenant, flow.flow_id, 5)
    events = [await next_change(stream) for _ in range(5)]
    assert [e.flow_version for e in events] == list(range(3, last + 1))
    assert all(e.change is not None and e.change.flow_version == e.flow_version for e in events)
    assert events[-1].progress == events[-1].change.progress_after  # type: ignore[union-attr]
    await stream.aclose()
    assert hub.open_streams == 0


async def test_resume_after_version_replays_then_streams_without_gap_or_duplicate(
    make_hub: Callable[..., asyncio.Future[WatchHub]], store: FlowStore, tenant: Tenant
) -> None:
    hub = await make_hub(queue_limit=4)  # replay spans several pages
    flow = await create_flow(store, tenant)
    last = await report_progress(store, tenant, flow.flow_id, 10)

    stream = _watch(hub, tenant, flow.flow_id, after_version=3)
    assert await _versions(stream, last - 3) == list(range(4, last + 1))
    await report_progress(store, tenant, flow.flow_id, 3)
    assert await _versions(stream, 3) == [last + 1, last + 2, last + 3]
    await stream.aclose()


async def test_resume_at_the_current_version_sends_only_new_changes(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    flow = await create_flow(store, tenant)
    stream = _watch(hub, tenant, flow.flow_id, after_version=flow.version)
    await report_progress(store, tenant, flow.flow_id, 1)
    assert await _versions(stream, 1) == [flow.version + 1]
    await stream.aclose()


@pytest.mark.parametrize(
    ("after_version", "field"),
    [
        pytest.param(-1, "after_version", id="negative"),
        pytest.param(99, "after_version", id="ahead"),
    ],
)
async def test_bad_after_version_is_malformed(
    hub: WatchHub, store: FlowStore, tenant: Tenant, after_version: int, field: str
) -> None:
    flow = await create_flow(store, tenant)
    with pytest.raises(FlowStateError) as raised:
        await next_event(_watch(hub, tenant, flow.flow_id, after_version=after_version))
    assert raised.value.code is ErrorCode.MALFORMED_REQUEST
    assert raised.value.details["field"] == field
    assert hub.open_streams == 0


async def test_missing_flow_and_another_tenants_flow_are_not_found(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    flow = await create_flow(store, tenant)
    stranger = Tenant(tenant.client_account_id, tenant.engagement_id + "-other")
    for who, flow_id in [
        (stranger, flow.flow_id),
        (tenant, "00000000-0000-4000-8000-000000000000"),
    ]:
        with pytest.raises(FlowStateError) as raised:
            await next_event(_watch(hub, who, flow_id))
        assert raised.value.code is ErrorCode.FLOW_NOT_FOUND


async def test_other_tenants_stream_never_carries_the_flow(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    """A stranger's stream on its own flow id sees only its own flow, never ours."""
    ours = await create_flow(store, tenant)
    stranger = Tenant(tenant.client_account_id + "-x", tenant.engagement_id)
    theirs = await create_flow(store, stranger)
    stream = _watch(hub, stranger, theirs.flow_id)
    await next_event(stream)
    await report_progress(store, tenant, ours.flow_id, 3)
    await report_progress(store, stranger, theirs.flow_id, 1)
    event = await next_change(stream)
    assert (event.flow_id, event.flow_version) == (theirs.flow_id, theirs.version + 1)
    await stream.aclose()


async def test_ends_after_the_terminal_event_unless_keep_open(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    flow = await create_flow(store, tenant)
    ending = _watch(hub, tenant, flow.flow_id)
    staying = _watch(hub, tenant, flow.flow_id, keep_open=True)
    await next_event(ending)
    await next_event(staying)

    cancelled = await FlowService(store).mutate(tenant, flow.flow_id, CancelFlow("done"), ctx())
    for stream in (ending, staying):
        event = await next_change(stream)
        assert (event.status, event.flow_version) == (FlowStatus.CANCELLED, cancelled.flow.version)
    with pytest.raises(StopAsyncIteration):
        await next_event(ending)

    # A terminal flow's snapshot ends the stream at once, unless keep_open.
    after = _watch(hub, tenant, flow.flow_id)
    assert (await next_event(after)).snapshot is not None
    with pytest.raises(StopAsyncIteration):
        await next_event(after)
    await staying.aclose()
    assert hub.open_streams == 0


async def test_idle_stream_gets_heartbeats(
    make_hub: Callable[..., asyncio.Future[WatchHub]], store: FlowStore, tenant: Tenant
) -> None:
    hub = await make_hub(heartbeat_interval=0.1)
    flow = await create_flow(store, tenant)
    stream = _watch(hub, tenant, flow.flow_id)
    await next_event(stream)
    beats = [await next_event(stream) for _ in range(2)]
    assert all(b.heartbeat_at is not None and b.flow_version == flow.version for b in beats)
    assert all(b.snapshot is None and b.change is None for b in beats)
    await stream.aclose()


async def test_listener_killed_while_changes_happen_loses_nothing(
    hub: WatchHub, store: FlowStore, tenant: Tenant, database_url: str
) -> None:
    flow = await create_flow(store, tenant)
    stream = _watch(hub, tenant, flow.flow_id)
    await next_event(stream)
    admin = await asyncpg.connect(normalize_database_url(database_url).replace("+asyncpg", ""))
    try:
        writer = asyncio.ensure_future(report_progress(store, tenant, flow.flow_id, 30))
        cut: list[int] = []
        for _ in range(3):
            # Wait (bounded) until the hub listens on a connection not yet cut: right after a
            # cut it may still report the terminated backend's pid, or None while reconnecting.
            pid = None
            for _ in range(500):
                pid = hub.listener_pid
                if pid is not None and pid not in cut:
                    break
                await asyncio.sleep(0.01)
            assert pid is not None, "the hub did not listen again"
            assert pid not in cut, "the hub did not listen again"
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            cut.append(pid)
            await asyncio.sleep(0.02)  # let a change or two commit while the listener is down
        last = await writer
    finally:
        await admin.close()
    assert await _versions(stream, last - flow.version) == list(range(flow.version + 1, last + 1))
    assert hub.listener_connections >= 2
    # And the listener still works afterwards.
    await report_progress(store, tenant, flow.flow_id, 1)
    assert await _versions(stream, 1) == [last + 1]
    await stream.aclose()


async def test_200_watchers_each_receive_every_change_for_about_one_read_per_change(
    store: FlowStore, database_url: str, tenant: Tenant
) -> None:
    counting = CountingStore(store)
    hub = await WatchHub.start(counting, database_url)
    try:
        flow = await create_flow(store, tenant)
        streams = [_watch(hub, tenant, flow.flow_id) for _ in range(200)]
        await asyncio.gather(*(next_event(s) for s in streams))
        reads_before = counting.reads
        changes = 5
        last = await report_progress(store, tenant, flow.flow_id, changes)
        expected = list(range(flow.version + 1, last + 1))
        received = await asyncio.gather(*(_versions(s, changes) for s in streams))
        assert all(versions == expected for versions in received)
        # Single-flight reads: a handful per change, not one per watcher.
        assert counting.reads - reads_before <= 2 * changes
        await asyncio.gather(*(s.aclose() for s in streams))
        assert hub.open_streams == 0
    finally:
        await hub.close()


async def test_consumer_that_never_reads_stays_bounded_and_does_not_delay_others(
    make_hub: Callable[..., asyncio.Future[WatchHub]], store: FlowStore, tenant: Tenant
) -> None:
    hub = await make_hub(queue_limit=8)
    flow = await create_flow(store, tenant)
    stalled = _watch(hub, tenant, flow.flow_id)
    reader = _watch(hub, tenant, flow.flow_id)
    await next_event(stalled)
    await next_event(reader)

    async def follow(count: int) -> list[int]:
        return await _versions(reader, count)

    # The reader keeps up while 40 changes commit; the stalled consumer reads nothing.
    following = asyncio.ensure_future(follow(40))
    last = await report_progress(store, tenant, flow.flow_id, 40)
    assert await following == list(range(flow.version + 1, last + 1))
    channel = hub._flow_channels[(tenant, flow.flow_id)]
    assert len(channel.items) <= 8  # the only memory the stalled stream could pin

    # When it finally reads, it is resynchronised from history: every change, in order.
    assert await _versions(stalled, 40) == list(range(flow.version + 1, last + 1))
    await stalled.aclose()
    await reader.aclose()


async def test_close_ends_open_streams_with_server_shutting_down(
    make_hub: Callable[..., asyncio.Future[WatchHub]], store: FlowStore, tenant: Tenant
) -> None:
    hub = await make_hub()
    flow = await create_flow(store, tenant)
    waiting = _watch(hub, tenant, flow.flow_id)
    idle = _watch(hub, tenant, flow.flow_id)
    await next_event(waiting)
    await next_event(idle)
    pending = asyncio.ensure_future(next_event(waiting))  # blocked waiting for a change
    await asyncio.sleep(0)

    await hub.close()
    for outcome in [pending, asyncio.ensure_future(next_event(idle))]:
        with pytest.raises(FlowStateError) as raised:
            await outcome
        assert raised.value.code is ErrorCode.SERVER_SHUTTING_DOWN
    with pytest.raises(FlowStateError) as raised:
        await next_event(_watch(hub, tenant, flow.flow_id))
    assert raised.value.code is ErrorCode.SERVER_SHUTTING_DOWN
    assert hub.open_streams == 0
