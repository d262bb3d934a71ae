"""The tenant change log (`flowstate.storage.changes.TenantLog`): commit order, gap-free resume,
tenancy, and entries identical to the flow's history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from flowstate.core.commands import UpdatePhaseProgress
from flowstate.core.model import Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.storage.changes import TenantLog

from .support import ContextFactory, HoldingStore
from .test_concurrency import started_flow

START = (0, 0)


@pytest_asyncio.fixture
async def log(database_url: str) -> AsyncIterator[TenantLog]:
    """A tenant log of its own on the shared database."""
    opened = await TenantLog.open(database_url, max_size=2)
    yield opened
    await opened.close()


async def test_the_log_resumes_from_its_position_in_commit_order(
    store: FlowStore, log: TenantLog, tenant: Tenant, make_context: ContextFactory
) -> None:
    first = await started_flow(store, tenant, make_context)
    second = await started_flow(store, tenant, make_context)
    head = await log.read(tenant, START, 3)
    rest = await log.read(tenant, head.covered, 100)
    changes = head.changes + rest.changes
    assert [(c.flow_id, c.entry.flow_version) for c in changes] == [
        (first, 1),
        (first, 2),
        (second, 1),
        (second, 2),
    ]
    assert {c.definition_name for c in changes} == {"discovery"}
    idle = await log.read(tenant, rest.covered, 100)
    assert idle.changes == ()
    assert idle.covered >= rest.covered


async def test_entries_are_the_flows_history_entries(
    store: FlowStore, log: TenantLog, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    await FlowService(store).mutate(
        tenant, flow_id, UpdatePhaseProgress("data_import", 0.25), make_context()
    )
    history = (await store.list_history(tenant, flow_id)).entries
    read = await log.read(tenant, START, 100)
    assert tuple(c.entry for c in read.changes) == history
    assert read.changes[-1].entry.phase_progress == 0.25


async def test_another_tenant_reads_nothing(
    store: FlowStore, log: TenantLog, tenant: Tenant, make_context: ContextFactory
) -> None:
    await started_flow(store, tenant, make_context)
    other = Tenant(tenant.client_account_id, tenant.engagement_id + "-other")
    assert (await log.read(other, START, 100)).changes == ()
    snapshot = await log.snapshot(
        other, statuses=frozenset(), definition_name="", flow_ids=frozenset()
    )
    assert snapshot.flows == ()


async def test_the_log_never_skips_a_change_that_commits_late(
    store: FlowStore,
    log: TenantLog,
    tenant: Tenant,
    make_context: ContextFactory,
    database_url: str,
) -> None:
    """A transaction that wrote history first but commits last holds later changes back."""
    slow_flow = await started_flow(store, tenant, make_context)
    fast_flow = await started_flow(store, tenant, make_context)
    position = (await log.read(tenant, START, 100)).covered
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
        held_back = await log.read(tenant, position, 100)
        assert held_back.changes == ()
        assert held_back.pending

        holding.release.set()
        await asyncio.wait_for(slow, 10)
        after = await log.read(tenant, held_back.covered, 100)
        assert [(c.flow_id, c.entry.flow_version) for c in after.changes] == [
            (slow_flow, 3),
            (fast_flow, 3),
        ]
    finally:
        holding.release.set()
        await holding.close()
