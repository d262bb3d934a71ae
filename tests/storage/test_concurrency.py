"""Concurrent writers: serialised on the flow row, none lost, versions a gap-free chain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from flowstate.core.commands import TransitionPhase, UpdatePhaseProgress
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowQuery, FlowStore, MutationResult

from .support import BOTH_WAYS, ContextFactory, fetch, history_versions, store_both_ways


@pytest_asyncio.fixture(name="store", **BOTH_WAYS)
async def _store(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[FlowStore]:
    """Every test here runs with group commit and without."""
    async for opened in store_both_ways(database_url, request):
        yield opened


WRITERS = 16


async def started_flow(store: FlowStore, tenant: Tenant, make_context: ContextFactory) -> str:
    """A discovery flow whose data_import phase is IN_PROGRESS (version 2)."""
    created = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context()
    )
    flow_id = created.flow.flow_id
    await FlowService(store).mutate(
        tenant, flow_id, TransitionPhase("data_import", PhaseState.IN_PROGRESS), make_context()
    )
    return flow_id


async def test_concurrent_writers_all_apply_in_a_gap_free_chain(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    reports = [round(0.05 * (i + 1), 2) for i in range(WRITERS)]

    results = await asyncio.gather(
        *(
            FlowService(store).mutate(
                tenant, flow_id, UpdatePhaseProgress("data_import", f), make_context()
            )
            for f in reports
        )
    )

    assert sorted(r.flow.version for r in results) == list(range(3, 3 + WRITERS))
    assert await history_versions(database_url, flow_id) == list(range(1, 3 + WRITERS))
    history = await store.list_history(tenant, flow_id, after_version=2)
    assert sorted(e.phase_progress or 0 for e in history.entries) == reports
    final = await store.get_flow(tenant, flow_id)
    assert final.version == 2 + WRITERS
    last = max(results, key=lambda r: r.flow.version)
    assert final == last.flow


async def test_racing_writers_with_the_same_expected_version_one_wins(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    outcomes = await asyncio.gather(
        *(
            FlowService(store).mutate(
                tenant,
                flow_id,
                UpdatePhaseProgress("data_import", round(0.05 * (i + 1), 2)),
                make_context(),
                expected_version=2,
            )
            for i in range(WRITERS)
        ),
        return_exceptions=True,
    )

    winners = [o for o in outcomes if isinstance(o, MutationResult)]
    losers = [o for o in outcomes if not isinstance(o, MutationResult)]
    assert len(winners) == 1
    assert winners[0].flow.version == 3
    assert len(losers) == WRITERS - 1
    for loser in losers:
        assert isinstance(loser, FlowStateError)
        assert loser.code is ErrorCode.VERSION_CONFLICT
        assert loser.details["current_version"] == 3
    assert await history_versions(database_url, flow_id) == [1, 2, 3]


async def test_concurrent_duplicates_of_one_request_apply_once(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    command = TransitionPhase("data_import", PhaseState.COMPLETED, reason="done")

    results = await asyncio.gather(
        *(
            FlowService(store).mutate(tenant, flow_id, command, make_context("complete-1"))
            for _ in range(10)
        )
    )

    assert sum(not r.replayed for r in results) == 1
    assert sum(r.replayed for r in results) == 9
    assert all((r.flow, r.entries) == (results[0].flow, results[0].entries) for r in results)
    rows = await fetch(
        database_url,
        "SELECT count(*) AS n FROM flow_history WHERE flow_id = $1 AND request_id = $2",
        flow_id,
        "complete-1",
    )
    assert rows[0]["n"] == 1
    assert await history_versions(database_url, flow_id) == [1, 2, 3]


async def test_concurrent_duplicate_creates_make_one_flow(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    results = await asyncio.gather(
        *(
            FlowService(store).create_flow(
                tenant, definition_name="discovery", ctx=make_context("create-1"), display_name="x"
            )
            for _ in range(10)
        )
    )

    assert sum(not r.replayed for r in results) == 1
    assert all(r.flow == results[0].flow for r in results)
    page = await store.list_flows(tenant, FlowQuery())
    assert [f.flow_id for f in page.flows] == [results[0].flow.flow_id]


async def test_one_request_id_raced_on_two_flows_applies_to_one(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    first = await started_flow(store, tenant, make_context)
    second = await started_flow(store, tenant, make_context)
    command = UpdatePhaseProgress("data_import", 0.5)

    outcomes = await asyncio.gather(
        FlowService(store).mutate(tenant, first, command, make_context("shared-1")),
        FlowService(store).mutate(tenant, second, command, make_context("shared-1")),
        return_exceptions=True,
    )

    applied = [o for o in outcomes if isinstance(o, MutationResult)]
    refused = [o for o in outcomes if isinstance(o, FlowStateError)]
    assert len(applied) == 1
    assert not applied[0].replayed
    assert [e.code for e in refused] == [ErrorCode.REQUEST_ID_REUSED]
    versions = sorted(
        [
            len(await history_versions(database_url, first)),
            len(await history_versions(database_url, second)),
        ]
    )
    assert versions == [2, 3]


@pytest.mark.parametrize("expected_version", [0, 1, 5])
async def test_stale_expected_version_is_a_conflict_with_the_current_version(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, expected_version: int
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    with pytest.raises(FlowStateError) as refused:
        await FlowService(store).mutate(
            tenant,
            flow_id,
            UpdatePhaseProgress("data_import", 0.5),
            make_context(),
            expected_version=expected_version,
        )
    assert refused.value.code is ErrorCode.VERSION_CONFLICT
    assert refused.value.details["current_version"] == 2
