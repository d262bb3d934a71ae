"""WatchFlows at the hub level: snapshot, filters, tenancy, the gap-free resumable cursor.

Real PostgreSQL, real store, real LISTEN connection; the hub is read directly (no gRPC).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from flowstate.core.commands import CancelFlow, TransitionPhase
from flowstate.core.errors import FlowStateError
from flowstate.core.filters import parse_filter
from flowstate.core.model import ErrorCode, FlowStatus, PhaseState, Tenant
from flowstate.server.watch import FlowEventValue, WatchHub
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.storage.changes import TenantCursor
from flowstate.storage.urls import normalize_database_url

from .support import assert_quiet, create_flow, ctx, next_change, next_event, report_progress

NO_STATUSES: frozenset[FlowStatus] = frozenset()
NO_IDS: frozenset[str] = frozenset()


def _watch(
    hub: WatchHub,
    tenant: Tenant,
    *,
    cursor: str = "",
    statuses: frozenset[FlowStatus] = NO_STATUSES,
    definition_name: str = "",
    flow_ids: frozenset[str] = NO_IDS,
) -> AsyncGenerator[FlowEventValue, None]:
    return hub.watch_flows(
        tenant,
        statuses=statuses,
        definition_name=definition_name,
        flow_ids=flow_ids,
        cursor=cursor,
    )


def _plain_url(database_url: str) -> str:
    return normalize_database_url(database_url).replace("postgresql+asyncpg", "postgresql")


async def test_snapshot_of_matching_flows_then_live_changes(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    first = await create_flow(store, tenant)
    second = await create_flow(store, tenant)
    stream = _watch(hub, tenant)
    snapshots = [await next_event(stream), await next_event(stream)]
    assert {e.flow_id for e in snapshots} == {first.flow_id, second.flow_id}
    assert all(e.snapshot is not None for e in snapshots)
    assert snapshots[0].cursor == ""  # only the last snapshot event is a resume point
    assert snapshots[1].cursor

    await report_progress(store, tenant, second.flow_id, 2)
    await report_progress(store, tenant, first.flow_id, 1)
    changes = [await next_change(stream) for _ in range(3)]
    assert [(e.flow_id, e.flow_version) for e in changes] == [
        (second.flow_id, second.version + 1),
        (second.flow_id, second.version + 2),
        (first.flow_id, first.version + 1),
    ]
    assert all(e.change is not None and e.cursor for e in changes)
    await stream.aclose()
    assert hub.open_streams == 0


async def test_filters_apply_to_the_status_after_the_change_definition_and_ids(
    make_hub: Callable[..., asyncio.Future[WatchHub]], store: FlowStore, tenant: Tenant
) -> None:
    hub = await make_hub(heartbeat_interval=0.1)
    watched = await create_flow(store, tenant)
    other = await create_flow(store, tenant)
    by_id = _watch(hub, tenant, flow_ids=frozenset({watched.flow_id}))
    cancelled_only = _watch(hub, tenant, statuses=frozenset({FlowStatus.CANCELLED}))
    wrong_definition = _watch(hub, tenant, definition_name="no-such-definition")
    assert (await next_event(by_id)).flow_id == watched.flow_id  # the one snapshot
    # Nothing matches the others yet: their first events are heartbeats (they are live).
    assert (await next_event(cancelled_only)).heartbeat_at is not None
    assert (await next_event(wrong_definition)).heartbeat_at is not None

    await report_progress(store, tenant, other.flow_id, 1)
    await report_progress(store, tenant, watched.flow_id, 1)
    await FlowService(store).mutate(tenant, other.flow_id, CancelFlow("stop"), ctx())

    event = await next_change(by_id)
    assert (event.flow_id, event.flow_version) == (watched.flow_id, watched.version + 1)
    event = await next_change(cancelled_only)
    assert (event.flow_id, event.status) == (other.flow_id, FlowStatus.CANCELLED)
    assert event.change is not None
    await assert_quiet(wrong_definition, 0.3)
    for stream in (by_id, cancelled_only, wrong_definition):
        await stream.aclose()


async def test_a_filter_sees_each_change_as_the_flow_was_at_its_version_when_read_late(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    """A condition on phases the change does not move (docs/filters.md): each change is
    filtered on the flow at its version, also when the stream resumes from a cursor after the
    flows have moved on, so every change is read late."""
    service = FlowService(store)
    moved = await create_flow(store, tenant)  # v1 created, v2 data_import IN_PROGRESS
    snapshot = _watch(hub, tenant)
    cursor = (await next_event(snapshot)).cursor
    await snapshot.aclose()
    assert cursor
    marker = await create_flow(store, tenant)
    for flow_id, phase, state in (
        (moved.flow_id, "data_import", PhaseState.COMPLETED),  # v3: matches
        (moved.flow_id, "field_mapping", PhaseState.IN_PROGRESS),  # v4: no longer
        (marker.flow_id, "data_import", PhaseState.COMPLETED),  # v3: matches (ends the wait)
    ):
        await service.mutate(tenant, flow_id, TransitionPhase(phase, state), ctx())
    now = datetime.now(UTC)
    condition = parse_filter(
        "phase.data_import = COMPLETED AND phase.field_mapping = NOT_STARTED",
        now=now,
        stuck_before=now,
    )
    stream = hub.watch_flows(
        tenant,
        statuses=NO_STATUSES,
        definition_name="",
        flow_ids=NO_IDS,
        cursor=cursor,
        condition=condition,
    )
    seen = [await next_change(stream) for _ in range(2)]
    # (Read as the flows are now, the marker's creation would match and the moved flow's v3
    # would not: its field_mapping is IN_PROGRESS by then.)
    assert [(e.flow_id, e.flow_version) for e in seen] == [
        (moved.flow_id, 3),
        (marker.flow_id, 3),
    ]
    await stream.aclose()


async def test_another_tenants_changes_never_appear(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    stranger = Tenant(tenant.client_account_id, tenant.engagement_id + "-stranger")
    theirs = await create_flow(store, stranger)
    ours = await create_flow(store, tenant)
    stream = _watch(hub, tenant)
    assert (await next_event(stream)).flow_id == ours.flow_id  # snapshot: ours only
    await report_progress(store, stranger, theirs.flow_id, 3)
    await report_progress(store, tenant, ours.flow_id, 2)
    seen = [await next_change(stream) for _ in range(2)]
    assert [(e.flow_id, e.flow_version) for e in seen] == [
        (ours.flow_id, ours.version + 1),
        (ours.flow_id, ours.version + 2),
    ]
    await stream.aclose()


async def test_cursor_resume_with_concurrent_writers_has_no_gap_or_duplicate(
    hub: WatchHub, store: FlowStore, tenant: Tenant
) -> None:
    flows = [await create_flow(store, tenant) for _ in range(4)]
    rounds = 15

    async def writer(flow_id: str) -> int:
        return await report_progress(store, tenant, flow_id, rounds)

    stream = _watch(hub, tenant)
    cursor = ""
    for _ in flows:
        cursor = (await next_event(stream)).cursor or cursor
    writers = asyncio.gather(*(writer(f.flow_id) for f in flows))
    expected = {(f.flow_id, v) for f in flows for v in range(f.version + 1, f.version + rounds + 1)}

    seen: list[tuple[str, int]] = []
    rng = random.Random(6)
    while len(seen) < len(expected):
        # Read a few events, then drop the stream and resume from the last cursor.
        for _ in range(rng.randint(1, 9)):
            event = await next_change(stream)
            seen.append((event.flow_id, event.flow_version))
            cursor = event.cursor
            if len(seen) == len(expected):
                break
        await stream.aclose()
        stream = _watch(hub, tenant, cursor=cursor)
    await writers
    assert len(seen) == len(set(seen)), "duplicates"
    assert set(seen) == expected
    for flow in flows:  # per flow, in version order
        versions = [v for f, v in seen if f == flow.flow_id]
        assert versions == sorted(versions)
    await stream.aclose()


async def test_a_transaction_in_flight_holds_changes_back_without_losing_them(
    make_hub: Callable[..., asyncio.Future[WatchHub]],
    store: FlowStore,
    tenant: Tenant,
    database_url: str,
) -> None:
    """The horizon: an older open transaction delays the feed; its end releases it (no notify)."""
    hub = await make_hub(heartbeat_interval=0.05)
    flow = await create_flow(store, tenant)
    stream = _watch(hub, tenant, flow_ids=frozenset({flow.flow_id}))
    await next_event(stream)  # snapshot
    blocker = await asyncpg.connect(_plain_url(database_url))
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")  # holds the horizon back
        await report_progress(store, tenant, flow.flow_id, 1)
        await assert_quiet(stream, 0.3)
        await transaction.rollback()  # no notification: the pending re-read finds the change
        event = await next_change(stream)
        assert event.flow_version == flow.version + 1
    finally:
        await blocker.close()
    await stream.aclose()


async def test_snapshot_taken_behind_the_horizon_sends_nothing_twice(
    hub: WatchHub, store: FlowStore, tenant: Tenant, database_url: str
) -> None:
    """A change already in the snapshot but above the horizon is skipped, also on resume."""
    flow = await create_flow(store, tenant)
    blocker = await asyncpg.connect(_plain_url(database_url))
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")
        version = await report_progress(store, tenant, flow.flow_id, 2)
        stream = _watch(hub, tenant)
        snapshot = await next_event(stream)
        assert (snapshot.flow_version, snapshot.snapshot is not None) == (version, True)
        cursor = TenantCursor.decode(snapshot.cursor)
        assert cursor.skip == {flow.flow_id: version}
        await transaction.rollback()
    finally:
        await blocker.close()
    resumed = _watch(hub, tenant, cursor=snapshot.cursor)
    await report_progress(store, tenant, flow.flow_id, 1)
    for events in (stream, resumed):
        event = await next_change(events)
        assert event.flow_version == version + 1  # not version - 1 or version again
        assert not TenantCursor.decode(event.cursor).skip  # expired once past the horizon
        await events.aclose()


async def test_heartbeats_carry_a_cursor_that_resumes_exactly(
    make_hub: Callable[..., asyncio.Future[WatchHub]], store: FlowStore, tenant: Tenant
) -> None:
    hub = await make_hub(heartbeat_interval=0.1)
    flow = await create_flow(store, tenant)
    stream = _watch(hub, tenant, flow_ids=frozenset({flow.flow_id}))
    await next_event(stream)
    await report_progress(store, tenant, flow.flow_id, 1)
    await next_change(stream)
    beat = await next_event(stream)
    while beat.heartbeat_at is None:
        beat = await next_event(stream)
    assert (beat.flow_id, beat.cursor != "") == ("", True)
    await stream.aclose()

    resumed = _watch(hub, tenant, cursor=beat.cursor)
    await report_progress(store, tenant, flow.flow_id, 1)
    event = await next_change(resumed)
    assert event.flow_version == flow.version + 2
    await resumed.aclose()


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not a cursor!", id="garbage"),
        pytest.param("eyJ2IjoyfQ", id="unknown-version"),
        pytest.param(TenantCursor((2**62, 0)).encode(), id="beyond-the-log"),
    ],
)
async def test_bad_cursor_is_malformed(hub: WatchHub, tenant: Tenant, cursor: str) -> None:
    with pytest.raises(FlowStateError) as raised:
        await next_event(_watch(hub, tenant, cursor=cursor))
    assert raised.value.code is ErrorCode.MALFORMED_REQUEST
    assert raised.value.details["field"] == "cursor"
    assert hub.open_streams == 0


async def test_snapshot_over_the_limit_is_refused(
    make_hub: Callable[..., asyncio.Future[WatchHub]], store: FlowStore, tenant: Tenant
) -> None:
    hub = await make_hub(snapshot_limit=2)
    for _ in range(3):
        await create_flow(store, tenant)
    with pytest.raises(FlowStateError) as raised:
        await next_event(_watch(hub, tenant))
    assert raised.value.code is ErrorCode.MALFORMED_REQUEST
    assert raised.value.details["snapshot_limit"] == 2


async def test_close_ends_tenant_streams_with_server_shutting_down(
    make_hub: Callable[..., asyncio.Future[WatchHub]], tenant: Tenant
) -> None:
    hub = await make_hub(heartbeat_interval=0.1)
    stream = _watch(hub, tenant)
    assert (await next_event(stream)).heartbeat_at is not None  # live, waiting
    waiting = asyncio.ensure_future(next_event(stream))
    await asyncio.sleep(0)
    await hub.close()
    with pytest.raises(FlowStateError) as raised:
        await waiting
    assert raised.value.code is ErrorCode.SERVER_SHUTTING_DOWN
