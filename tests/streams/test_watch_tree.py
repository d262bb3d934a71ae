"""WatchFlow of a tree (issue 21) at the hub level: children's and dependencies' events.

A WatchFlow with `children_depth` or `include_dependencies` follows the tenant log: a snapshot
event per flow, then every change of the flow, of its descendants down to the depth (children
created or linked while the stream runs included) and of the phases its dependencies name, each
with the cursor after it. Real PostgreSQL, real store, real LISTEN connection; the hub is read
directly (no gRPC). The kill -9 resume case through a real server is in
`test_watch_tree_restart.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, ExternalDependency, FlowStatus, PhaseState, Tenant
from flowstate.server.watch import FlowEventValue, WatchHub
from flowstate.storage.changes import TenantLog, TenantRead
from flowstate.storage.urls import normalize_database_url

from .support import Trees, assert_quiet, next_change, next_event

IN_PROGRESS, COMPLETED = PhaseState.IN_PROGRESS, PhaseState.COMPLETED


async def _changes_until(
    stream: AsyncIterator[FlowEventValue], wanted: set[tuple[str, int]]
) -> list[FlowEventValue]:
    """Change events until every (flow, version) of `wanted` arrived (bounded per event)."""
    got: list[FlowEventValue] = []
    seen: set[tuple[str, int]] = set()
    while not wanted <= seen:
        event = await next_change(stream)
        assert event.change is not None, event
        got.append(event)
        seen.add((event.flow_id, event.flow_version))
    return got


def _keys(events: list[FlowEventValue]) -> list[tuple[str, int]]:
    return [(e.flow_id, e.flow_version) for e in events]


async def test_snapshot_then_the_changes_of_children_created_after_the_start(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top()
    stream = trees.watch(hub, top)
    snapshot = await next_change(stream)
    assert (snapshot.flow_id, snapshot.relation, snapshot.flow_version) == (top, "self", 1)
    assert snapshot.snapshot is not None
    assert snapshot.cursor  # the only (so the last) snapshot event carries the cursor

    await trees.move(top, "prep", IN_PROGRESS)
    await trees.move(top, "prep", COMPLETED)
    mid = await trees.move(top, "m", IN_PROGRESS)  # creates mid, in one transaction
    leaf = await trees.move(mid, "x", IN_PROGRESS)  # creates a grandchild
    await trees.move(leaf, "a", IN_PROGRESS)  # moves leaf, mid and top at once
    wanted = await trees.history(top, mid, leaf) - {(top, 1)}
    got = await _changes_until(stream, wanted)
    assert sorted(_keys(got)) == sorted(wanted)  # each exactly once
    for event in got:
        assert event.cursor
        if event.flow_id == top:
            assert (event.relation, event.parent_flow_id) == ("self", "")
        else:
            expected_parent = top if event.flow_id == mid else mid
            assert (event.relation, event.parent_flow_id) == ("descendant", expected_parent)
    for flow_id in (top, mid, leaf):  # per flow in version order
        versions = [e.flow_version for e in got if e.flow_id == flow_id]
        assert versions == sorted(versions)
    await stream.aclose()


async def test_depth_limits_the_levels_and_snapshot_lists_existing_descendants(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top(prep=COMPLETED)
    mid = await trees.move(top, "m", IN_PROGRESS)
    leaf = await trees.move(mid, "x", IN_PROGRESS)

    deep = trees.watch(hub, top, depth=2)
    snapshots = [await next_change(deep) for _ in range(3)]
    assert [(e.flow_id, e.relation, e.parent_flow_id) for e in snapshots] == [
        (top, "self", ""),
        (mid, "descendant", top),
        (leaf, "descendant", mid),
    ]
    assert [bool(e.cursor) for e in snapshots] == [False, False, True]

    shallow = trees.watch(hub, top, depth=1)
    assert [(await next_change(shallow)).flow_id for _ in range(2)] == [top, mid]
    await trees.move(leaf, "a", IN_PROGRESS)  # leaf, then mid, then top
    leaf_version = await trees.version(leaf)
    mid_version = await trees.version(mid)
    top_version = await trees.version(top)
    deep_got = await _changes_until(deep, {(leaf, leaf_version), (top, top_version)})
    shallow_got = await _changes_until(shallow, {(mid, mid_version), (top, top_version)})
    assert (leaf, leaf_version) in _keys(deep_got)
    assert all(e.flow_id != leaf for e in shallow_got)  # two levels down: not at depth 1
    await deep.aclose()
    await shallow.aclose()


async def test_resume_by_cursor_loses_and_repeats_no_child_event(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top()
    stream = trees.watch(hub, top)
    first = await next_change(stream)
    await trees.move(top, "prep", IN_PROGRESS)
    await trees.move(top, "prep", COMPLETED)
    leaf = await trees.move(top, "n", IN_PROGRESS)
    await trees.move(leaf, "a", IN_PROGRESS)
    before = await trees.history(top, leaf) - {(top, 1)}
    delivered = await _changes_until(stream, before)
    await stream.aclose()  # the client goes away; a child is created and moves meanwhile
    mid = await trees.move(top, "m", IN_PROGRESS)
    await trees.move(leaf, "a", COMPLETED)
    await trees.move(leaf, "b", IN_PROGRESS)

    resumed = trees.watch(hub, top, cursor=delivered[-1].cursor)
    everything = await trees.history(top, leaf, mid) - {(top, 1)}
    rest = await _changes_until(resumed, everything - set(_keys(delivered)))
    assert sorted(_keys(delivered) + _keys(rest)) == sorted(everything)
    assert all(e.snapshot is None for e in rest)  # a resume sends no snapshot
    assert first.snapshot is not None
    await resumed.aclose()


async def test_a_linked_flow_and_its_own_children_join_the_stream(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top(prep=COMPLETED)
    loose = await trees.create("tree_mid")  # a root with a child of its own
    loose_leaf = await trees.move(loose, "x", IN_PROGRESS)
    stream = trees.watch(hub, top)
    assert (await next_change(stream)).flow_id == top

    await trees.link(top, "m", loose)  # writes no entry of `loose`
    await trees.move(loose_leaf, "a", IN_PROGRESS)  # the grandchild moves first
    leaf_version = await trees.version(loose_leaf)
    got = await _changes_until(stream, {(loose_leaf, leaf_version)})
    by_flow = {e.flow_id: e for e in got}
    assert by_flow[loose_leaf].relation == "descendant"
    assert by_flow[loose_leaf].parent_flow_id == loose
    assert by_flow[loose].parent_flow_id == top  # mid follows its child: an entry of its own
    await stream.aclose()


async def test_a_resume_sends_a_linked_flows_entries_from_its_link_on_only(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top(prep=IN_PROGRESS)
    stream = trees.watch(hub, top)
    cursor = (await next_change(stream)).cursor
    await stream.aclose()
    # While nobody watches: a root flow with a child of its own moves, then is linked, then moves.
    loose = await trees.create("tree_mid")
    loose_leaf = await trees.move(loose, "x", IN_PROGRESS)
    await trees.move(loose_leaf, "a", IN_PROGRESS)
    before_link = await trees.history(loose, loose_leaf)
    await trees.move(top, "prep", COMPLETED)
    await trees.link(top, "m", loose)
    await trees.move(loose_leaf, "a", COMPLETED)
    everything = await trees.history(top, loose, loose_leaf)
    after_link = everything - before_link - {(top, 1), (top, 2)}

    resumed = trees.watch(hub, top, cursor=cursor)
    got = await _changes_until(resumed, after_link)
    assert sorted(_keys(got)) == sorted(after_link)  # nothing of either from before the link
    await resumed.aclose()


async def test_dependency_changes_wake_the_dependent_and_resume_by_cursor(
    hub: WatchHub, trees: Trees
) -> None:
    upstream = await trees.create("tree_leaf")
    dependent = await trees.create(
        "discovery", external_dependencies=(ExternalDependency("data_import", upstream, "b"),)
    )
    stream = trees.watch(hub, dependent, depth=0, dependencies=True)
    own, other = await next_change(stream), await next_change(stream)
    assert (own.flow_id, own.relation) == (dependent, "self")
    assert (other.flow_id, other.relation) == (upstream, "dependency")
    assert other.snapshot is not None
    assert other.waiting == (ExternalDependency("data_import", dependent, "b"),)
    assert other.cursor

    await trees.move(upstream, "a", IN_PROGRESS)  # not the phase waited for
    await trees.move(upstream, "a", COMPLETED)
    await trees.move(upstream, "b", IN_PROGRESS)
    woken = await next_change(stream)
    assert woken.change is not None
    assert (woken.flow_id, woken.relation, woken.change.phase) == (upstream, "dependency", "b")
    assert woken.change.to_state is IN_PROGRESS
    assert woken.waiting == (ExternalDependency("data_import", dependent, "b"),)
    await stream.aclose()

    await trees.move(upstream, "b", COMPLETED)  # while nobody watches
    resumed = trees.watch(hub, dependent, depth=0, dependencies=True, cursor=woken.cursor)
    done = await next_change(resumed)
    assert done.change is not None
    assert (done.flow_id, done.change.phase, done.change.to_state) == (upstream, "b", COMPLETED)
    # Now the dependent's phase may start, and its own change follows on the same stream.
    await trees.move(dependent, "data_import", IN_PROGRESS)
    started = await next_change(resumed)
    assert (started.flow_id, started.relation) == (dependent, "self")
    await resumed.aclose()


async def test_ends_after_the_terminal_transaction_with_the_cascaded_children(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top(prep=COMPLETED)
    leaf = await trees.move(top, "n", IN_PROGRESS)
    stream = trees.watch(hub, top, keep_open=False)
    assert [(await next_change(stream)).flow_id for _ in range(2)] == [top, leaf]
    await trees.cancel(top)  # cascades to the child
    events = [event async for event in stream if event.heartbeat_at is None]
    cancelled = {e.flow_id for e in events if e.status is FlowStatus.CANCELLED}
    assert cancelled == {top, leaf}  # the child's cancel of that transaction too, then the end


async def test_a_resume_of_a_finished_tree_sends_the_rest_then_ends(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top(prep=COMPLETED)
    leaf = await trees.move(top, "n", IN_PROGRESS)
    stream = trees.watch(hub, top, keep_open=False)
    cursor = [(await next_change(stream)).cursor for _ in range(2)][-1]
    await stream.aclose()
    await trees.cancel(top)  # while nobody watches
    resumed = trees.watch(hub, top, keep_open=False, cursor=cursor)
    events = [event async for event in resumed if event.heartbeat_at is None]
    assert {(e.flow_id, e.status) for e in events} >= {
        (top, FlowStatus.CANCELLED),
        (leaf, FlowStatus.CANCELLED),
    }
    assert all(e.snapshot is None for e in events)
    again = trees.watch(hub, top, keep_open=False, cursor=events[-1].cursor)
    assert [event async for event in again if event.heartbeat_at is None] == []


async def test_heartbeats_of_a_tree_stream_carry_a_cursor_that_resumes_exactly(
    make_hub: Callable[..., asyncio.Future[WatchHub]], trees: Trees
) -> None:
    hub = await make_hub(heartbeat_interval=0.2)
    top = await trees.top()
    stream = trees.watch(hub, top)
    assert (await next_event(stream)).snapshot is not None
    beat = await next_event(stream)
    assert (beat.heartbeat_at is not None, beat.relation, beat.flow_id) == (True, "self", top)
    assert beat.cursor
    await stream.aclose()
    await trees.move(top, "prep", IN_PROGRESS)
    resumed = trees.watch(hub, top, cursor=beat.cursor)
    change = await next_change(resumed)
    assert (change.flow_id, change.flow_version) == (top, 2)
    await resumed.aclose()


async def test_100_tree_watchers_share_about_one_log_read_per_change(
    hub: WatchHub, trees: Trees
) -> None:
    top = await trees.top(prep=COMPLETED)
    leaf = await trees.move(top, "n", IN_PROGRESS)
    log = hub._log  # counted where the tenant channel reads (the same object, wrapped)
    reads = 0
    read = log.read

    async def counted(*args: Any, **kwargs: Any) -> TenantRead:
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    log.read = counted  # type: ignore[method-assign]
    streams = [trees.watch(hub, top) for _ in range(100)]
    for stream in streams:
        assert [(await next_change(stream)).flow_id for _ in range(2)] == [top, leaf]
    before, known = reads, await trees.history(top, leaf)
    await trees.move(leaf, "a", IN_PROGRESS)  # leaf and top
    await trees.move(leaf, "a", COMPLETED)
    wanted = await trees.history(top, leaf) - known
    for stream in streams:
        assert sorted(_keys(await _changes_until(stream, wanted))) == sorted(wanted)
    # Single-flight reads of the shared tenant channel: a handful per commit, not per watcher.
    assert reads - before <= 10, reads - before  # 100 watchers, 2 commits
    await asyncio.gather(*(s.aclose() for s in streams))


async def test_a_resume_of_a_finished_tree_waits_for_a_terminal_change_behind_the_horizon(
    make_hub: Callable[..., asyncio.Future[WatchHub]],
    trees: Trees,
    database_url: str,
) -> None:
    hub = await make_hub(heartbeat_interval=0.05)
    top = await trees.top()
    stream = trees.watch(hub, top, keep_open=False)
    cursor = (await next_change(stream)).cursor
    await stream.aclose()
    blocker = await asyncpg.connect(
        normalize_database_url(database_url).replace("postgresql+asyncpg", "postgresql")
    )
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")  # holds the horizon back
        await trees.cancel(top)  # committed, not readable
        resumed = trees.watch(hub, top, keep_open=False, cursor=cursor)
        await assert_quiet(resumed, 0.3)  # heartbeats: it neither ends nor sends the change
        await transaction.rollback()
        cancelled = await next_change(resumed)
        assert (cancelled.flow_id, cancelled.status) == (top, FlowStatus.CANCELLED)
        assert [e async for e in resumed if e.heartbeat_at is None] == []  # then the end
    finally:
        await blocker.close()


async def test_tenancy_another_tenants_tree_is_not_found_and_never_streamed(
    hub: WatchHub, trees: Trees
) -> None:
    mine = trees.tenant
    stranger = await Trees.register(
        trees.store, Tenant(mine.client_account_id, mine.engagement_id + "-stranger")
    )
    top = await trees.top()
    with pytest.raises(FlowStateError) as refused:
        await next_change(stranger.watch(hub, top))
    assert refused.value.code is ErrorCode.FLOW_NOT_FOUND
    # The same definitions in another tenant: its changes never reach our tree's stream.
    theirs = await stranger.top()
    stream = trees.watch(hub, top)
    assert (await next_change(stream)).flow_id == top
    await stranger.move(theirs, "prep", IN_PROGRESS)
    await trees.move(top, "prep", IN_PROGRESS)
    assert (await next_change(stream)).flow_id == top
    await stream.aclose()


async def test_a_tree_over_the_limit_is_refused_with_the_limit(
    trees: Trees, database_url: str
) -> None:
    top = await trees.top(prep=COMPLETED)
    await trees.move(top, "m", IN_PROGRESS)
    log = await TenantLog.open(database_url)
    try:
        read = await log.tree(trees.tenant, top, 5, dependencies=False, snapshot=True, limit=2)
        assert len(read.flows) == 2
        with pytest.raises(FlowStateError) as refused:
            await log.tree(trees.tenant, top, 5, dependencies=False, snapshot=True, limit=1)
    finally:
        await log.close()
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == "children_depth"
    assert refused.value.details["tree_limit"] == 1
