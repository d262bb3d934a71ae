"""History reads: pages and per-flow changes (the tenant-wide log: test_changes.py)."""

from __future__ import annotations

import pytest

from flowstate.core.commands import UpdatePhaseProgress
from flowstate.core.errors import FlowStateError
from flowstate.core.model import HistoryKind, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore

from .support import ContextFactory
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
