"""Bulk actions through the use case and the store: exact per-flow results over 2,000 flows,
cancel mid-action, a takeover that replays instead of changing a flow twice, tenancy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from flowstate.core.bulk import BulkActionKind, BulkActionState, BulkOutcome, bulk_request_id
from flowstate.core.commands import Context, Retry
from flowstate.core.errors import FlowStateError
from flowstate.core.filters import parse_filter
from flowstate.core.model import (
    ErrorCode,
    Flow,
    FlowStatus,
    PhaseError,
    PhaseState,
    Tenant,
)
from flowstate.service import FlowService
from flowstate.service.bulk import BulkService
from flowstate.storage import FlowStore
from flowstate.storage.bulk import BulkItem, BulkRequest, BulkSelection
from flowstate.storage.migrate import upgrade
from flowstate.testing import discovery_flow

from .support import T0, fetch, insert_flows


@pytest_asyncio.fixture(scope="module")
async def bulk_database(database_server: Any) -> AsyncIterator[str]:
    """A database of this module alone: no server's bulk worker (the session's test server
    works on the shared database) takes these actions from under the tests."""
    url = await database_server.create_database()
    await upgrade(url)
    yield url
    await database_server.drop_database(url)


@pytest_asyncio.fixture(scope="module")
async def bulk_store(bulk_database: str) -> AsyncIterator[FlowStore]:
    """A store on `bulk_database`."""
    opened = await FlowStore.open(bulk_database)
    yield opened
    await opened.close()


def _flow(tenant: Tenant, kind: str, *, minute: int) -> Flow:
    """A discovery flow of one of the kinds the 2,000-flow test mixes."""
    at = T0 + timedelta(minutes=minute)
    labels = {"kind": kind}
    if kind == "completed":
        return discovery_flow(
            tenant,
            at=at,
            data_import=PhaseState.COMPLETED,
            others=PhaseState.COMPLETED,
            status=FlowStatus.COMPLETED,
            progress=100.0,
            labels=labels,
        )
    if kind == "non_retryable":
        bad_rows = PhaseError(ErrorCode.DATA_VALIDATION_FAILED, "bad rows")
        return discovery_flow(tenant, at=at, error=bad_rows, labels=labels)
    return discovery_flow(
        tenant,
        at=at,
        retry_count=3 if kind == "exhausted" else 0,
        status=FlowStatus.CANCELLED if kind == "terminal" else FlowStatus.FAILED,
        labels=labels,
    )


def _service(store: FlowStore, *, rate: float = 1e9, lease: float = 30.0) -> BulkService:
    return BulkService(
        store,
        owner=f"test-{uuid.uuid4().hex[:8]}",
        rate=rate,
        lease=lease,
        clock=lambda: datetime.now(UTC),
    )


def _selection(text: str) -> BulkSelection:
    now = datetime.now(UTC)
    return BulkSelection(
        filter=parse_filter(text, now=now, stuck_before=now - timedelta(hours=1)),
        filter_text=text,
    )


async def _all_results(service: BulkService, tenant: Tenant, action_id: str) -> list[BulkItem]:
    items: list[BulkItem] = []
    token = ""
    while True:
        page, token = await service.actions.results(
            tenant, action_id, outcome=None, page_size=1000, page_token=token
        )
        items += page
        if not token:
            return items


EXPECTED = {
    "retryable": (BulkOutcome.APPLIED, None),
    "non_retryable": (BulkOutcome.REFUSED, "RETRY_NOT_ALLOWED"),
    "exhausted": (BulkOutcome.REFUSED, "MAX_RETRIES_EXCEEDED"),
    "terminal": (BulkOutcome.REFUSED, "FLOW_TERMINAL"),
    "completed": (BulkOutcome.SKIPPED, None),
}
MIX = {"retryable": 800, "non_retryable": 400, "exhausted": 200, "terminal": 300, "completed": 300}


async def test_a_retry_over_2000_flows_has_exact_per_flow_results(
    bulk_store: FlowStore, tenant: Tenant, bulk_database: str
) -> None:
    store, database_url = bulk_store, bulk_database
    kinds = [kind for kind, n in MIX.items() for _ in range(n)]
    flows = [_flow(tenant, kind, minute=i % 600) for i, kind in enumerate(kinds)]
    await insert_flows(database_url, flows)
    kind_of = {f.flow_id: k for f, k in zip(flows, kinds, strict=True)}
    service = _service(store)

    request = BulkRequest(
        BulkActionKind.RETRY,
        selection=_selection(
            "labels.kind IN (retryable, non_retryable, exhausted, terminal, completed)"
        ),
        reason="outage over",
        user_id="operator",
        request_id="bulk-test-1",
    )
    action, created = await service.start(tenant, request)
    assert created
    assert (action.state, action.total) == (BulkActionState.RUNNING, 2000)
    again, created_again = await service.start(tenant, request)
    assert (again.action_id, created_again) == (action.action_id, False)

    while (await service.work_once()).action_id is not None:
        pass
    done = await service.actions.get(tenant, action.action_id)
    assert done.state is BulkActionState.SUCCEEDED
    assert (done.applied, done.refused, done.skipped) == (800, 900, 300)
    assert done.finished_at is not None

    results = await _all_results(service, tenant, action.action_id)
    assert len(results) == 2000
    assert [r.position for r in results] == list(range(1, 2001))
    for result in results:
        outcome, code = EXPECTED[kind_of[result.flow_id]]
        assert result.outcome is outcome, kind_of[result.flow_id]
        if code is not None:
            assert result.error is not None
            assert result.error["error_code"] == code
    refused, _ = await service.actions.results(
        tenant, action.action_id, outcome=BulkOutcome.REFUSED, page_size=1000, page_token=""
    )
    assert len(refused) == 900
    assert {r.outcome for r in refused} == {BulkOutcome.REFUSED}

    rows = await fetch(
        database_url,
        "SELECT h.flow_id, count(*) AS n, min(h.request_id) AS request_id, min(h.user_id) AS user"
        " FROM flow_history h WHERE h.client_account_id = $1 AND h.engagement_id = $2"
        " GROUP BY h.flow_id",
        tenant.client_account_id,
        tenant.engagement_id,
    )
    changed = {str(r["flow_id"]): r for r in rows}
    retried = {i for i, k in kind_of.items() if k == "retryable"}
    assert set(changed) == retried  # refusals and skips wrote nothing
    for flow_id in retried:
        row = changed[flow_id]
        assert row["n"] == 1
        assert row["request_id"] == bulk_request_id(action.action_id, flow_id)
        assert row["user"] == "operator"


async def test_cancel_mid_action_stops_it_and_counts_exactly_what_changed(
    bulk_store: FlowStore, tenant: Tenant, bulk_database: str
) -> None:
    store, database_url = bulk_store, bulk_database
    flows = [_flow(tenant, "retryable", minute=i) for i in range(200)]
    await insert_flows(database_url, flows)
    service = _service(store, rate=100.0)
    action, _ = await service.start(
        tenant,
        BulkRequest(
            BulkActionKind.RETRY,
            selection=_selection("status = FAILED"),
            user_id="operator",
        ),
    )
    worker = asyncio.create_task(service.work_once())
    async with asyncio.timeout(30):
        for _ in range(600):  # bounded polling of the database (no event to await)
            if (await service.actions.get(tenant, action.action_id)).applied >= 10:
                break
            await asyncio.sleep(0.05)
    cancelled = await service.actions.cancel(tenant, action.action_id)
    assert cancelled.state is BulkActionState.CANCELLED
    async with asyncio.timeout(30):
        await worker
    final = await service.actions.get(tenant, action.action_id)
    assert final.state is BulkActionState.CANCELLED
    assert final.applied <= cancelled.applied + 1  # at most the flow in flight
    assert final.applied < 200
    rows = await fetch(
        database_url,
        "SELECT count(*) AS n FROM flows WHERE client_account_id = $1 AND engagement_id = $2"
        " AND status = 'retry_pending'",
        tenant.client_account_id,
        tenant.engagement_id,
    )
    assert rows[0]["n"] == final.applied
    pending, _ = await service.actions.results(
        tenant, action.action_id, outcome=None, pending_only=True, page_size=1000, page_token=""
    )
    assert len(pending) == 200 - final.applied
    assert (await service.work_once()).action_id is None  # nobody takes a cancelled action
    again = await service.actions.cancel(tenant, action.action_id)
    assert again.finished_at == final.finished_at  # cancelling again changes nothing


async def test_a_takeover_replays_a_change_that_committed_before_its_outcome(
    bulk_store: FlowStore, tenant: Tenant, bulk_database: str
) -> None:
    store, database_url = bulk_store, bulk_database
    """A server that changed a flow and died before recording it: the next server to take the
    action (after the lease expires) replays that flow's change instead of applying it again."""
    flows = [_flow(tenant, "retryable", minute=i) for i in range(5)]
    await insert_flows(database_url, flows)
    crashed = _service(store, lease=0.3)
    action, _ = await crashed.start(
        tenant,
        BulkRequest(
            BulkActionKind.RETRY,
            selection=_selection("labels.kind = retryable"),
            user_id="operator",
        ),
    )
    claimed = await crashed.actions.claim(crashed.owner, lease=0.3)
    assert claimed is not None
    first = (await crashed.actions.pending(action.action_id, limit=1))[0]
    # What the crashed server did: the change of the first flow, committed, never recorded.
    await FlowService(store).mutate(
        tenant,
        first.flow_id,
        Retry("data_import"),
        Context(
            now=datetime.now(UTC),
            user_id="operator",
            request_id=bulk_request_id(action.action_id, first.flow_id),
        ),
    )
    successor = _service(store)
    assert (await successor.work_once()).action_id is None  # the lease still holds
    await asyncio.sleep(0.4)
    assert (await successor.work_once()).action_id == action.action_id
    done = await successor.actions.get(tenant, action.action_id)
    assert (done.state, done.applied) == (BulkActionState.SUCCEEDED, 5)
    rows = await fetch(
        database_url,
        "SELECT flow_id, count(*) AS n FROM flow_history WHERE client_account_id = $1"
        " GROUP BY flow_id",
        tenant.client_account_id,
    )
    assert sorted(r["n"] for r in rows) == [1] * 5  # no flow changed twice
    # The crashed server's lease is gone: it can record nothing more.
    assert await crashed.actions.record(claimed, first, BulkOutcome.APPLIED, None, lease=1) is None


async def test_another_tenants_action_is_not_found(bulk_store: FlowStore, tenant: Tenant) -> None:
    service = _service(bulk_store)
    action, _ = await service.start(
        tenant,
        BulkRequest(
            BulkActionKind.CANCEL,
            selection=BulkSelection(flow_ids=(str(uuid.uuid4()),)),
            user_id="operator",
        ),
    )
    assert action.total == 0
    other = Tenant(f"other-{uuid.uuid4()}", "e")
    for call in (
        service.actions.get(other, action.action_id),
        service.actions.cancel(other, action.action_id),
        service.actions.results(other, action.action_id, outcome=None, page_size=10, page_token=""),
    ):
        with pytest.raises(FlowStateError) as refused:
            await call
        assert refused.value.code is ErrorCode.BULK_ACTION_NOT_FOUND
    listed, _ = await service.actions.list_actions(other, page_size=10, page_token="")
    assert listed == []
    while (await service.work_once()).action_id is not None:  # leave nothing running
        pass
    assert (await service.actions.get(tenant, action.action_id)).state is BulkActionState.SUCCEEDED


async def test_start_refuses_a_missing_selection_or_phase(
    bulk_store: FlowStore, tenant: Tenant
) -> None:
    service = _service(bulk_store)
    with pytest.raises(FlowStateError) as no_selection:
        await service.start(
            tenant,
            BulkRequest(
                BulkActionKind.CANCEL,
                selection=BulkSelection(),
                user_id="u",
            ),
        )
    assert no_selection.value.details["field"] == "filter"
    with pytest.raises(FlowStateError) as no_phase:
        await service.start(
            tenant,
            BulkRequest(
                BulkActionKind.ROLLBACK,
                selection=_selection("stuck"),
                user_id="u",
            ),
        )
    assert no_phase.value.details["field"] == "phase"
    listed, _ = await service.actions.list_actions(tenant, page_size=10, page_token="")
    assert listed == []  # nothing stored


async def test_a_stopping_worker_gives_its_lease_up_so_another_continues_at_once(
    bulk_store: FlowStore, tenant: Tenant, bulk_database: str
) -> None:
    await insert_flows(bulk_database, [_flow(tenant, "retryable", minute=i) for i in range(30)])
    stopping = _service(bulk_store, rate=20.0, lease=600.0)  # a lease that would not expire
    action, _ = await stopping.start(
        tenant,
        BulkRequest(
            BulkActionKind.RETRY,
            selection=_selection("labels.kind = retryable AND status = FAILED"),
            user_id="operator",
        ),
    )
    worker = asyncio.create_task(stopping.work_once())
    async with asyncio.timeout(30):
        for _ in range(600):  # bounded polling: until it is under way
            if (await stopping.actions.get(tenant, action.action_id)).applied >= 2:
                break
            await asyncio.sleep(0.05)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    await stopping.release()
    successor = _service(bulk_store)
    assert (await successor.work_once()).action_id == action.action_id
    done = await successor.actions.get(tenant, action.action_id)
    assert (done.state, done.applied) == (BulkActionState.SUCCEEDED, 30)
