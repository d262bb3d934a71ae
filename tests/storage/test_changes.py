"""The tenant change log (`flowstate.storage.changes.TenantLog`): commit order, gap-free resume,
tenancy, and entries identical to the flow's history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest_asyncio

from flowstate.core.commands import TransitionPhase, UpdatePhaseProgress
from flowstate.core.filters import matches, parse_filter
from flowstate.core.model import ErrorCode, PhaseError, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.storage.changes import _READ, MAX_SEQ, TenantLog, _change_from_row
from flowstate.storage.sql import tenant_params

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


async def test_each_change_is_the_flow_at_its_version_whenever_it_is_read(
    store: FlowStore, log: TenantLog, tenant: Tenant, make_context: ContextFactory
) -> None:
    """Filters on changes (WatchFlows, webhooks: docs/filters.md) see the flow as each entry
    left it: every phase's state and the open error codes at that version, recorded with the
    entry. Read after the flow has moved on, each entry still answers as it did then."""
    service = FlowService(store)
    flow_id = await started_flow(store, tenant, make_context)  # v1 created, v2 IN_PROGRESS
    for command in (
        TransitionPhase("data_import", PhaseState.COMPLETED),  # v3
        TransitionPhase("field_mapping", PhaseState.IN_PROGRESS),  # v4
        TransitionPhase(
            "field_mapping",
            PhaseState.FAILED,
            error=PhaseError(ErrorCode.AGENT_TIMEOUT, "no heartbeat"),
        ),  # v5
    ):
        await service.mutate(tenant, flow_id, command, make_context())
    changes = (await log.read(tenant, START, 100)).changes
    assert [c.entry.flow_version for c in changes] == [1, 2, 3, 4, 5]
    facts = [c.facts for c in changes]
    assert all(f is not None for f in facts)
    states = [(f.phase_states["data_import"], f.phase_states["field_mapping"]) for f in facts if f]
    assert states == [
        (PhaseState.NOT_STARTED, PhaseState.NOT_STARTED),
        (PhaseState.IN_PROGRESS, PhaseState.NOT_STARTED),
        (PhaseState.COMPLETED, PhaseState.NOT_STARTED),
        (PhaseState.COMPLETED, PhaseState.IN_PROGRESS),
        (PhaseState.COMPLETED, PhaseState.FAILED),
    ]
    assert [f.error_codes for f in facts if f] == [frozenset()] * 4 + [{"AGENT_TIMEOUT"}]

    def matching(text: str) -> list[int]:
        now = datetime.now(UTC)
        condition = parse_filter(text, now=now, stuck_before=now)
        return [c.entry.flow_version for c in changes if c.facts and matches(condition, c.facts)]

    # Read after v5, the creation entry still has data_import NOT_STARTED and no error.
    assert matching("phase.data_import = COMPLETED") == [3, 4, 5]
    assert matching("phase.field_mapping = NOT_STARTED") == [1, 2, 3]
    assert matching("error = AGENT_TIMEOUT") == [5]
    assert matching("status = FAILED") == [5]


async def test_an_entry_written_before_the_facts_were_recorded_is_read_as_the_flow_is_now(
    store: FlowStore, log: TenantLog, tenant: Tenant, make_context: ContextFactory
) -> None:
    """Rows written before migration 0017 have no facts (NULL): the change takes the other
    phases' states and open errors from the flow as read, with its own phase change."""
    flow_id = await started_flow(store, tenant, make_context)  # v2: data_import IN_PROGRESS
    for phase, state in (
        ("data_import", PhaseState.COMPLETED),
        ("field_mapping", PhaseState.IN_PROGRESS),
    ):
        await FlowService(store).mutate(
            tenant, flow_id, TransitionPhase(phase, state), make_context()
        )
    rows = await log._snapshot_read(
        tenant,
        lambda tx: tx.fetch(
            _READ,
            {
                **tenant_params(tenant),
                "after_txid": 0,
                "after_seq": 0,
                "horizon": MAX_SEQ,
                "limit": 10,
            },
        ),
    )
    [creation] = [
        {**dict(row), "phase_states_after": None, "error_codes_after": None}
        for row in rows
        if row["version"] == 1
    ]
    facts = _change_from_row(creation).facts
    assert facts is not None
    assert facts.phase_states["data_import"] is PhaseState.COMPLETED  # as read now
    assert facts.phase_states["field_mapping"] is PhaseState.IN_PROGRESS
    assert facts.error_codes == frozenset()


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
