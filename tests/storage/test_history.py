"""History reads: pages, per-flow changes, and the gap-free tenant-wide change feed."""

from __future__ import annotations

import asyncio

import pytest

from flowstate.core.commands import PauseFlow, UpdatePhaseProgress
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, HistoryKind, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore

from .support import ContextFactory, HoldingStore
from .test_concurrency import started_flow


async def _reported(store: FlowStore, tenant: Tenant, make_context: ContextFactory, n: int) -> str:
    """A started flow with `n` progress reports: versions 1 .. n + 2."""
    flow_id = await started_flow(store, tenant, make_context)
    for i in range(n):
        await FlowService(store).mutate(
            tenant, flow_id, UpdatePhaseProgress("data_import", (i + 1) / 100), make_context()
        )
    return flow_id


async def test_history_pages_in_version_order(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow_id = await _reported(store, tenant, make_context, 10)  # 12 entries
    versions: list[int] = []
    token = ""
    while True:
        page = await store.list_history(tenant, flow_id, page_size=5, page_token=token)
        versions.extend(e.flow_version for e in page.entries)
        token = page.next_page_token
        if not token:
            break
    assert versions == list(range(1, 13))

    after = await store.list_history(tenant, flow_id, after_version=10)
    assert [e.flow_version for e in after.entries] == [11, 12]
    assert after.next_page_token == ""
    kinds = [e.kind for e in (await store.list_history(tenant, flow_id)).entries]
    assert kinds[:3] == [HistoryKind.CREATED, HistoryKind.TRANSITION, HistoryKind.PROGRESS]


async def test_a_history_token_belongs_to_its_flow(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    first = await _reported(store, tenant, make_context, 2)
    second = await _reported(store, tenant, make_context, 2)
    page = await store.list_history(tenant, first, page_size=1)
    with pytest.raises(FlowStateError) as refused:
        await store.list_history(tenant, second, page_size=1, page_token=page.next_page_token)
    assert refused.value.details["field"] == "page_token"


async def test_read_changes_after_a_version(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow_id = await _reported(store, tenant, make_context, 3)  # versions 1..5
    assert [e.flow_version for e in await store.read_changes(tenant, flow_id, 2, 2)] == [3, 4]
    assert await store.read_changes(tenant, flow_id, 5, 10) == ()


async def test_the_tenant_feed_resumes_from_its_cursor(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    first = await _reported(store, tenant, make_context, 1)
    second = await _reported(store, tenant, make_context, 1)
    batch = await store.read_tenant_changes(tenant, limit=4)
    rest = await store.read_tenant_changes(tenant, batch.cursor, limit=100)
    changes = batch.changes + rest.changes
    assert [(c.flow_id, c.entry.flow_version) for c in changes] == [
        (first, 1),
        (first, 2),
        (first, 3),
        (second, 1),
        (second, 2),
        (second, 3),
    ]
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    idle = await store.read_tenant_changes(tenant, rest.cursor)
    assert idle.changes == ()
    assert idle.cursor == rest.cursor


async def test_a_cursor_taken_now_sees_only_later_changes(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow_id = await _reported(store, tenant, make_context, 1)
    cursor = await store.tenant_cursor_now(tenant)
    assert (await store.read_tenant_changes(tenant, cursor)).changes == ()
    await FlowService(store).mutate(tenant, flow_id, PauseFlow(), make_context())
    later = await store.read_tenant_changes(tenant, cursor)
    assert [c.entry.kind for c in later.changes] == [HistoryKind.PAUSE]


async def test_the_tenant_feed_never_skips_a_change_that_commits_late(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    """A transaction that wrote history first but commits last holds later changes back."""
    slow_flow = await started_flow(store, tenant, make_context)
    fast_flow = await started_flow(store, tenant, make_context)
    cursor = (await store.read_tenant_changes(tenant)).cursor
    holding = await HoldingStore.open(database_url, pool_size=1)
    try:
        slow = asyncio.create_task(
            FlowService(holding).mutate(
                tenant, slow_flow, UpdatePhaseProgress("data_import", 0.1), make_context()
            )
        )
        await asyncio.wait_for(holding.holding.wait(), 10)
        fast = await FlowService(store).mutate(
            tenant, fast_flow, UpdatePhaseProgress("data_import", 0.2), make_context()
        )
        assert fast.flow.version == 3

        # The fast change is committed, but an older transaction is still open: held back.
        held_back = await store.read_tenant_changes(tenant, cursor)
        assert held_back.changes == ()
        assert held_back.cursor == cursor

        holding.release.set()
        await asyncio.wait_for(slow, 10)
        after = await store.read_tenant_changes(tenant, held_back.cursor)
        assert [(c.flow_id, c.entry.flow_version) for c in after.changes] == [
            (slow_flow, 3),
            (fast_flow, 3),
        ]
    finally:
        holding.release.set()
        await holding.close()


@pytest.mark.parametrize("cursor", ["junk", "eyJrIjoiZmxvd3MiLCJxIjoiIiwicCI6W119"])
async def test_a_bad_cursor_is_malformed(store: FlowStore, tenant: Tenant, cursor: str) -> None:
    with pytest.raises(FlowStateError) as refused:
        await store.read_tenant_changes(tenant, cursor)
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == "cursor"
