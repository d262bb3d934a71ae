"""Request ids: a duplicate replays the first result and writes nothing; reuse is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio

from flowstate.core.commands import PauseFlow, TransitionPhase, UpdatePhaseProgress
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore

from .support import BOTH_WAYS, T0, ContextFactory, fetch, history_versions, store_both_ways
from .test_concurrency import started_flow


@pytest_asyncio.fixture(name="store", **BOTH_WAYS)
async def _store(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[FlowStore]:
    """Every test here runs with group commit and without."""
    async for opened in store_both_ways(database_url, request):
        yield opened


async def test_a_duplicate_replays_the_first_result_even_after_later_changes(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    first = await FlowService(store).mutate(
        tenant, flow_id, UpdatePhaseProgress("data_import", 0.25), make_context("report-1")
    )
    await FlowService(store).mutate(
        tenant, flow_id, PauseFlow(reason="later"), make_context("pause-1")
    )

    again = await FlowService(store).mutate(
        tenant, flow_id, UpdatePhaseProgress("data_import", 0.25), make_context("report-1")
    )

    assert again.replayed
    assert not first.replayed
    assert (again.flow, again.entries) == (first.flow, first.entries)
    assert again.flow.version == 3
    assert await history_versions(database_url, flow_id) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(UpdatePhaseProgress("data_import", 0.75), id="other-value"),
        pytest.param(UpdatePhaseProgress("data_import", 0.25, reason="x"), id="other-reason"),
        pytest.param(PauseFlow(), id="other-command"),
    ],
)
async def test_a_request_id_reused_with_another_payload_is_refused(
    store: FlowStore,
    tenant: Tenant,
    make_context: ContextFactory,
    database_url: str,
    second: UpdatePhaseProgress | PauseFlow,
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    await FlowService(store).mutate(
        tenant, flow_id, UpdatePhaseProgress("data_import", 0.25), make_context("report-2")
    )
    with pytest.raises(FlowStateError) as refused:
        await FlowService(store).mutate(tenant, flow_id, second, make_context("report-2"))
    assert refused.value.code is ErrorCode.REQUEST_ID_REUSED
    assert refused.value.details == {"request_id": "report-2"}
    assert await history_versions(database_url, flow_id) == [1, 2, 3]


async def test_expected_version_is_part_of_the_payload(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    command = UpdatePhaseProgress("data_import", 0.25)
    await FlowService(store).mutate(
        tenant, flow_id, command, make_context("r-ev"), expected_version=2
    )
    again = await FlowService(store).mutate(
        tenant, flow_id, command, make_context("r-ev"), expected_version=2
    )
    assert again.replayed  # not a VERSION_CONFLICT: the request was already done
    with pytest.raises(FlowStateError) as refused:
        await FlowService(store).mutate(tenant, flow_id, command, make_context("r-ev"))
    assert refused.value.code is ErrorCode.REQUEST_ID_REUSED


async def test_create_and_mutate_share_the_request_id_space(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    created = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context("r-create")
    )
    replay = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context("r-create")
    )
    assert replay.replayed
    assert replay.flow == created.flow
    with pytest.raises(FlowStateError) as changed:
        await FlowService(store).create_flow(
            tenant, definition_name="discovery", ctx=make_context("r-create"), display_name="x"
        )
    assert changed.value.code is ErrorCode.REQUEST_ID_REUSED
    with pytest.raises(FlowStateError) as other_operation:
        await FlowService(store).mutate(
            tenant, created.flow.flow_id, PauseFlow(), make_context("r-create")
        )
    assert other_operation.value.code is ErrorCode.REQUEST_ID_REUSED


async def test_request_ids_are_scoped_by_tenant(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    other = Tenant(tenant.client_account_id, tenant.engagement_id + "-other")
    mine = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context("r-t")
    )
    theirs = await FlowService(store).create_flow(
        other, definition_name="discovery", ctx=make_context("r-t")
    )
    assert not mine.replayed
    assert not theirs.replayed
    assert mine.flow.flow_id != theirs.flow.flow_id


async def test_a_refused_command_records_no_key(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    illegal = TransitionPhase("field_mapping", PhaseState.IN_PROGRESS)
    for _ in range(2):  # the same refusal both times, not a replay of a stored one
        with pytest.raises(FlowStateError) as refused:
            await FlowService(store).mutate(tenant, flow_id, illegal, make_context("r-refused"))
        assert refused.value.code is ErrorCode.PHASE_ORDER_VIOLATION
    applied = await FlowService(store).mutate(
        tenant, flow_id, UpdatePhaseProgress("data_import", 0.5), make_context("r-refused")
    )
    assert not applied.replayed


async def test_a_no_op_command_keeps_its_key_and_replays(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    await FlowService(store).mutate(
        tenant, flow_id, UpdatePhaseProgress("data_import", 0.5), make_context()
    )
    same = UpdatePhaseProgress("data_import", 0.5)  # equal to the current value: no change
    first = await FlowService(store).mutate(tenant, flow_id, same, make_context("r-noop"))
    again = await FlowService(store).mutate(tenant, flow_id, same, make_context("r-noop"))
    assert first.entries == ()
    assert not first.replayed
    assert again.replayed
    assert again.flow == first.flow
    assert await history_versions(database_url, flow_id) == [1, 2, 3]


async def test_an_expired_key_no_longer_replays_and_is_purged(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    long_ago = T0 - timedelta(days=3)
    command = UpdatePhaseProgress("data_import", 0.5)
    await FlowService(store).mutate(tenant, flow_id, command, make_context("r-old", now=long_ago))

    # Expired (24 h later): the request runs again; here the core finds nothing to change.
    rerun = await FlowService(store).mutate(
        tenant, flow_id, command, make_context("r-old", now=long_ago + timedelta(hours=25))
    )
    assert not rerun.replayed
    assert rerun.entries == ()

    await FlowService(store).mutate(tenant, flow_id, command, make_context("r-old-2", now=long_ago))
    assert await store.purge_expired_idempotency_keys() >= 2
    left = await fetch(
        database_url,
        "SELECT request_id FROM idempotency_keys WHERE client_account_id = $1",
        tenant.client_account_id,
    )
    assert left == []


async def test_expired_keys_are_purged_opportunistically(
    tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    purging = await FlowStore.open(database_url, purge_every=1)
    try:
        created = await FlowService(purging).create_flow(
            tenant,
            definition_name="discovery",
            ctx=make_context("r-p1", now=T0 - timedelta(days=3)),
        )
        assert created.flow.version == 1
        # The next write purges every expired key, the one above included.
        await FlowService(purging).mutate(
            tenant, created.flow.flow_id, PauseFlow(), make_context("r-p2")
        )
    finally:
        await purging.close()
    left = await fetch(
        database_url,
        "SELECT request_id FROM idempotency_keys WHERE client_account_id = $1",
        tenant.client_account_id,
    )
    assert [r["request_id"] for r in left] == ["r-p2"]
