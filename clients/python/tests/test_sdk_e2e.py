"""The SDK against a real Flowstate server (in-process, over the session's real PostgreSQL).

Each test works in a tenant of its own, so tests never see each other's flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytest.importorskip("flowstate.testing", reason="needs the flowstate server distribution")

import grpc
import grpc.aio
import pytest_asyncio  # after the skip: only the server's test stack has it

from flowstate.client import (
    AlertKind,
    ApprovalDecision,
    AsyncFlowstateClient,
    BulkActionNotFound,
    BulkActionState,
    ChildFlowNotLinkable,
    DependentPhasesActive,
    ErrorCode,
    ExternalDependency,
    FlowEventKind,
    FlowNotFound,
    FlowPaused,
    FlowStatus,
    FlowTerminal,
    HistoryEventKind,
    InvalidFlowTransition,
    InvalidPhase,
    InvalidPhaseTransition,
    MalformedRequest,
    MaxRetriesExceeded,
    PermissionDenied,
    PhaseOrderViolation,
    PhaseState,
    RecoveryAction,
    RequestIdReused,
    RetryNotAllowed,
    RetryPolicy,
    Unauthenticated,
    VersionConflict,
    WaitingPhase,
    WatchRelation,
)
from flowstate.core.model import Tenant
from flowstate.testing import (
    RunningServer,
    ServerProcess,
    TokenMinter,
    serve_in_process,
    serve_subprocess,
)
from flowstate.v1 import flow_service_pb2, flow_service_pb2_grpc

PHASES = [
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
]
ALL_SCOPES = ("flows:read", "flows:write", "flows:admin")

MakeClient = Callable[..., AsyncFlowstateClient]


@pytest_asyncio.fixture(scope="session")
async def flowstate_server(database_url: str) -> AsyncIterator[RunningServer]:
    """One in-process server for the SDK's end-to-end tests."""
    async with serve_in_process(database_url, heartbeat_interval=0.5) as running:
        yield running


@pytest.fixture
def tenant() -> Tenant:
    """A tenant of this test alone."""
    suffix = uuid.uuid4().hex[:12]
    return Tenant(client_account_id=f"sdk-{suffix}", engagement_id=f"e-{suffix}")


@pytest_asyncio.fixture
async def make_client(flowstate_server: RunningServer, tenant: Tenant) -> AsyncIterator[MakeClient]:
    """Factory of clients of the test's tenant (all scopes unless told), closed afterwards."""
    clients: list[AsyncFlowstateClient] = []

    def make(
        *, scopes: Iterable[str] = ALL_SCOPES, of: Tenant | None = None, token: str | None = None
    ) -> AsyncFlowstateClient:
        if token is None:
            token = flowstate_server.mint(of or tenant, user="sdk-tester", scopes=scopes)
        client = AsyncFlowstateClient(address=flowstate_server.address, token=token, timeout=10)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: MakeClient) -> AsyncFlowstateClient:
    """A client of the test's tenant with every scope."""
    return make_client()


async def test_discovery_flow_runs_to_completion_with_exact_progress(
    client: AsyncFlowstateClient,
) -> None:
    created = await client.create_flow("discovery", display_name="e2e", labels={"suite": "sdk"})
    flow_id = created.flow.flow_id
    assert created.flow.status is FlowStatus.INITIALIZED
    assert created.flow.version == 1
    assert [entry.kind for entry in created.history_entries] == [HistoryEventKind.CREATED]

    progress: list[float] = []
    statuses: list[FlowStatus] = []
    for phase in PHASES:
        for step in (
            client.transition_phase(flow_id, phase, PhaseState.IN_PROGRESS, reason="start"),
            client.update_phase_progress(flow_id, phase, 0.5),
            client.transition_phase(flow_id, phase, "COMPLETED"),
        ):
            result = await step
            progress.append(result.flow.progress)
            statuses.append(result.flow.status)

    assert progress == [
        6.0, 10.0, 20.0,
        26.0, 30.0, 40.0,
        46.0, 50.0, 60.0,
        66.0, 70.0, 80.0,
        86.0, 90.0, 100.0,
    ]  # fmt: skip
    assert statuses[0] is FlowStatus.DATA_GATHERING
    assert statuses[3] is FlowStatus.DISCOVERY
    assert statuses[9] is FlowStatus.ASSESSMENT_READY
    assert statuses[12] is FlowStatus.PLANNING
    assert statuses[-1] is FlowStatus.COMPLETED

    flow = await client.get_flow(flow_id)
    assert flow.version == 16
    assert flow.is_terminal
    assert all(phase.state is PhaseState.COMPLETED for phase in flow.phases)
    history = [entry async for entry in client.iter_flow_history(flow_id, page_size=4)]
    assert [entry.flow_version for entry in history] == list(range(1, 17))
    assert history[1].from_state is PhaseState.NOT_STARTED
    assert history[1].reason == "start"
    assert history[1].user_id == "sdk-tester"
    assert history[2].kind is HistoryEventKind.PROGRESS


async def test_list_flows_filters(client: AsyncFlowstateClient) -> None:
    ids = [(await client.create_flow()).flow.flow_id for _ in range(3)]
    await client.transition_phase(ids[0], "data_import", "IN_PROGRESS")

    everything = await client.list_flows()
    running = await client.list_flows(phase_states={"data_import": "IN_PROGRESS"})
    initialized = await client.list_flows(statuses=[FlowStatus.INITIALIZED])

    assert sorted(flow.flow_id for flow in everything.flows) == sorted(ids)
    assert [flow.flow_id for flow in running.flows] == [ids[0]]
    assert sorted(flow.flow_id for flow in initialized.flows) == sorted(ids[1:])


async def test_filters_and_counts(client: AsyncFlowstateClient) -> None:
    core = [(await client.create_flow(labels={"team": "core"})).flow.flow_id for _ in range(2)]
    await client.create_flow(labels={"team": "web"})
    await client.transition_phase(core[0], "data_import", "IN_PROGRESS")

    listed = await client.list_flows(filter='labels.team = "core" AND status = INITIALIZED')
    iterated = [f.flow_id async for f in client.iter_flows(filter="labels.team = core")]
    counted = await client.count_flows("labels.team = core", group_by="status")

    assert [flow.flow_id for flow in listed.flows] == [core[1]]
    assert sorted(iterated) == sorted(core)
    assert counted.total == 2
    assert counted.groups == {"DATA_GATHERING": 1, "INITIALIZED": 1}
    with pytest.raises(MalformedRequest) as refused:
        await client.count_flows("labels.team =")
    assert refused.value.details["position"] == 13


async def test_a_bulk_retry_watched_and_its_results_paged(client: AsyncFlowstateClient) -> None:
    """The bulk calls as the TypeScript and Go suites make them (client has flows:admin)."""
    labels = {"run": str(uuid.uuid4())}
    failed = []
    for code in ["EXTERNAL_SERVICE_ERROR", "EXTERNAL_SERVICE_ERROR", "DATA_VALIDATION_FAILED"]:
        flow_id = (await client.create_flow(labels=labels)).flow.flow_id
        await client.transition_phase(flow_id, "data_import", "IN_PROGRESS")
        await client.transition_phase(flow_id, "data_import", "FAILED", error_code=code)
        failed.append(flow_id)
    await client.create_flow(labels=labels)

    started_action = await client.start_bulk_action(
        "RETRY", filter=f'labels.run = "{labels["run"]}" AND status = FAILED', reason="py e2e"
    )
    assert started_action.total == 3
    last = started_action
    async for update in client.watch_bulk_action(started_action.bulk_action_id):
        last = update
    assert last.state is BulkActionState.SUCCEEDED
    assert (last.applied, last.refused, last.skipped) == (2, 1, 0)

    pages, token = [], None
    while True:
        results, token = await client.list_bulk_action_results(
            started_action.bulk_action_id, page_size=1, page_token=token
        )
        pages.append([r.flow_id for r in results])
        if token is None:
            break
    assert sorted(flow_id for page in pages for flow_id in page) == sorted(failed)
    assert all(len(page) <= 1 for page in pages)
    refused = client.iter_bulk_action_results(started_action.bulk_action_id, outcome="REFUSED")
    assert [(r.flow_id, r.error_code) async for r in refused] == [
        (failed[2], ErrorCode.RETRY_NOT_ALLOWED)
    ]
    actions, _ = await client.list_bulk_actions(page_size=50)
    assert started_action.bulk_action_id in {a.bulk_action_id for a in actions}
    with pytest.raises(BulkActionNotFound):
        await client.get_bulk_action(str(uuid.uuid4()))


async def test_iter_flows_follows_page_tokens(client: AsyncFlowstateClient) -> None:
    ids = [(await client.create_flow()).flow.flow_id for _ in range(5)]

    paged = [flow.flow_id async for flow in client.iter_flows(page_size=2)]

    assert sorted(paged) == sorted(ids)  # every flow once, across three pages


async def test_list_flows_puts_the_least_recently_changed_first(
    client: AsyncFlowstateClient,
) -> None:
    ids = [(await client.create_flow()).flow.flow_id for _ in range(3)]
    await client.pause_flow(ids[0])

    listed = await client.list_flows()

    assert [flow.flow_id for flow in listed.flows] == [ids[1], ids[2], ids[0]]


async def test_definition_and_dry_runs(client: AsyncFlowstateClient) -> None:
    definition = await client.get_flow_definition("discovery")
    flow_id = (await client.create_flow()).flow.flow_id

    tables_only = await client.validate_transition(
        phase="data_import", from_state="NOT_STARTED", to_state="COMPLETED"
    )
    on_flow = await client.validate_transition(
        flow_id=flow_id, phase="data_import", to_state="IN_PROGRESS"
    )
    blocked = await client.validate_transition(
        flow_id=flow_id, phase="field_mapping", to_state="IN_PROGRESS"
    )
    flow_level = await client.validate_transition(flow_id=flow_id, to_status="PAUSED")

    assert [phase.name for phase in definition.phases] == PHASES
    assert sum(phase.weight for phase in definition.phases) == 100
    assert definition.can_transition(PhaseState.FAILED, PhaseState.RETRY_NEEDED)
    assert not tables_only.allowed
    assert isinstance(tables_only.error, InvalidPhaseTransition)
    assert tables_only.valid_transitions == (PhaseState.IN_PROGRESS,)
    assert on_flow.allowed
    assert on_flow.resulting_status is FlowStatus.DATA_GATHERING
    assert on_flow.resulting_progress == 6.0
    assert isinstance(blocked.error, PhaseOrderViolation)
    assert blocked.blocking_phases == ("data_import",)
    assert flow_level.allowed
    assert (await client.get_flow(flow_id)).version == 1  # dry runs change nothing


async def started(client: AsyncFlowstateClient, *completed: str) -> str:
    """A new flow whose `completed` phases are COMPLETED, in order."""
    flow_id = (await client.create_flow()).flow.flow_id
    for phase in completed:
        await client.transition_phase(flow_id, phase, "IN_PROGRESS")
        await client.transition_phase(flow_id, phase, "COMPLETED")
    return flow_id


async def test_refusals_raise_their_classes(
    client: AsyncFlowstateClient, make_client: MakeClient
) -> None:
    flow_id = await started(client)

    with pytest.raises(InvalidPhase):
        await client.transition_phase(flow_id, "no_such_phase", "IN_PROGRESS")
    with pytest.raises(MalformedRequest):
        await client.get_flow("not-a-uuid")
    with pytest.raises(InvalidPhaseTransition) as invalid:
        await client.transition_phase(flow_id, "data_import", "COMPLETED")
    assert invalid.value.valid_transitions == [PhaseState.IN_PROGRESS]
    with pytest.raises(PhaseOrderViolation) as order:
        await client.transition_phase(flow_id, "field_mapping", "IN_PROGRESS")
    assert order.value.blocking_phases == ["data_import"]
    with pytest.raises(InvalidFlowTransition):
        await client.resume_flow(flow_id)
    await client.transition_phase(flow_id, "data_import", "IN_PROGRESS", expected_version=1)
    with pytest.raises(VersionConflict) as conflict:
        await client.transition_phase(flow_id, "data_import", "COMPLETED", expected_version=1)
    assert conflict.value.current_version == 2
    with pytest.raises(FlowNotFound):
        await client.get_flow(str(uuid.uuid4()))
    other_tenant = make_client(of=Tenant(client_account_id="other", engagement_id="other"))
    with pytest.raises(FlowNotFound):
        await other_tenant.get_flow(flow_id)
    with pytest.raises(Unauthenticated):
        await make_client(token="not-a-jwt").get_flow(flow_id)
    with pytest.raises(PermissionDenied):
        await make_client(scopes=["flows:read"]).pause_flow(flow_id)
    await client.transition_phase(flow_id, "data_import", "COMPLETED")
    await client.pause_flow(flow_id, request_id="pause-1")
    with pytest.raises(RequestIdReused):
        await client.cancel_flow(flow_id, request_id="pause-1")
    with pytest.raises(FlowPaused):
        await client.transition_phase(flow_id, "field_mapping", "IN_PROGRESS")
    await client.cancel_flow(flow_id)
    with pytest.raises(FlowTerminal):
        await client.transition_phase(flow_id, "field_mapping", "IN_PROGRESS")


async def test_rollback_cascades_unless_told_not_to(client: AsyncFlowstateClient) -> None:
    flow_id = await started(client, "data_import", "field_mapping")
    await client.transition_phase(flow_id, "data_cleansing", "IN_PROGRESS")

    with pytest.raises(DependentPhasesActive) as refused:
        await client.rollback(flow_id, "data_import", cascade=False)
    result = await client.rollback(flow_id, "data_import", reason="bad import")

    assert sorted(refused.value.dependent_phases) == ["data_cleansing", "field_mapping"]
    assert [entry.kind for entry in result.history_entries] == [
        HistoryEventKind.ROLLBACK,
        HistoryEventKind.CASCADE_ROLLBACK,
        HistoryEventKind.CASCADE_ROLLBACK,
    ]
    assert {e.cause_phase for e in result.history_entries[1:]} == {"data_import"}
    assert [phase.state for phase in result.flow.phases[:3]] == [PhaseState.ROLLED_BACK] * 3


async def test_retries_until_exhausted_and_recovery_options(client: AsyncFlowstateClient) -> None:
    flow_id = await started(client)
    await client.transition_phase(flow_id, "data_import", "IN_PROGRESS")
    for _attempt in range(3):
        await client.transition_phase(
            flow_id, "data_import", "FAILED", error_code="AGENT_TIMEOUT", error_message="t/o"
        )
        marked = await client.retry(flow_id, "data_import")
        assert marked.flow.phase("data_import").state is PhaseState.RETRY_NEEDED
        restarted = await client.retry(flow_id, "data_import")
        assert restarted.flow.phase("data_import").state is PhaseState.IN_PROGRESS
    await client.transition_phase(flow_id, "data_import", "FAILED", error_code="AGENT_TIMEOUT")

    with pytest.raises(MaxRetriesExceeded) as exhausted:
        await client.retry(flow_id, "data_import")
    options = await client.get_recovery_options(flow_id)

    assert exhausted.value.attempts_remaining == 0
    assert exhausted.value.recovery
    retry_options = [o for o in options.options if o.action.name == "RETRY"]
    assert retry_options
    assert not retry_options[0].allowed
    assert retry_options[0].blocked_by is ErrorCode.MAX_RETRIES_EXCEEDED
    assert any(o.allowed for o in options.options)


async def test_non_retryable_failure_needs_force(
    client: AsyncFlowstateClient, make_client: MakeClient
) -> None:
    flow_id = await started(client)
    await client.transition_phase(flow_id, "data_import", "IN_PROGRESS")
    await client.transition_phase(
        flow_id, "data_import", "FAILED", error_code="DATA_VALIDATION_FAILED", error_message="bad"
    )
    writer = make_client(scopes=["flows:read", "flows:write"])

    with pytest.raises(RetryNotAllowed):
        await writer.retry(flow_id, "data_import")
    with pytest.raises(PermissionDenied):
        await writer.retry(flow_id, "data_import", force=True)
    forced = await client.retry(flow_id, "data_import", force=True)

    assert forced.flow.phase("data_import").state is PhaseState.RETRY_NEEDED


async def test_recovery_option_executes(client: AsyncFlowstateClient) -> None:
    flow_id = await started(client)
    await client.transition_phase(flow_id, "data_import", "IN_PROGRESS")
    await client.transition_phase(flow_id, "data_import", "FAILED", error_code="AGENT_TIMEOUT")

    options = await client.get_recovery_options(flow_id)
    best = options.options[0]
    result = await best.execute(client)

    assert best.allowed
    assert best.phase == "data_import"
    assert result.flow.phase("data_import").state is best.target_state


async def test_a_repeated_request_id_does_not_apply_twice(client: AsyncFlowstateClient) -> None:
    flow_id = await started(client)

    first = await client.transition_phase(flow_id, "data_import", "IN_PROGRESS", request_id="r-1")
    second = await client.transition_phase(flow_id, "data_import", "IN_PROGRESS", request_id="r-1")
    history = (await client.list_flow_history(flow_id)).history_entries

    assert second.flow.version == first.flow.version == 2
    assert second.history_entries == first.history_entries
    assert [entry.flow_version for entry in history] == [1, 2]
    assert history[1].request_id == "r-1"


class LossyProxy(flow_service_pb2_grpc.FlowStateServiceServicer):
    """Forwards TransitionPhase to the real server, but loses the first response.

    The client then sees UNAVAILABLE for a change the server *did* apply: the case the SDK's
    reuse of the request id exists for.
    """

    def __init__(self, target: flow_service_pb2_grpc.FlowStateServiceAsyncStub) -> None:
        self.target = target
        self.forwarded: list[str] = []

    async def TransitionPhase(  # noqa: N802  # the gRPC method's name
        self,
        request: flow_service_pb2.TransitionPhaseRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> flow_service_pb2.TransitionPhaseResponse:
        metadata = [(key, value) for key, value in context.invocation_metadata() or ()]
        response = await self.target.TransitionPhase(request, metadata=metadata)
        self.forwarded.append(request.request_id)
        if len(self.forwarded) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        return response


async def test_a_lost_response_is_retried_without_applying_twice(
    flowstate_server: RunningServer, client: AsyncFlowstateClient
) -> None:
    flow_id = await started(client)
    proxy_server = grpc.aio.server()
    async with flowstate_server.channel() as channel:
        # The generated servicer's other methods answer UNIMPLEMENTED; only its stub is abstract.
        proxy = LossyProxy(flow_service_pb2_grpc.FlowStateServiceStub(channel))  # type: ignore[abstract]
        flow_service_pb2_grpc.add_FlowStateServiceServicer_to_server(proxy, proxy_server)
        port = proxy_server.add_insecure_port("127.0.0.1:0")
        await proxy_server.start()
        try:
            async with AsyncFlowstateClient(
                address=f"127.0.0.1:{port}",
                token=client._config.token,
                retry=RetryPolicy(initial_backoff=0.01, jitter=0.0),
            ) as through_proxy:
                result = await through_proxy.transition_phase(flow_id, "data_import", "IN_PROGRESS")
        finally:
            await proxy_server.stop(None)
    history = (await client.list_flow_history(flow_id)).history_entries

    assert len(proxy.forwarded) == 2
    assert proxy.forwarded[0] == proxy.forwarded[1]
    assert result.flow.version == 2
    assert [entry.flow_version for entry in history] == [1, 2]


async def test_watch_streams_every_change_once(client: AsyncFlowstateClient) -> None:
    flow_id = await started(client)
    events: list[tuple[FlowEventKind, int]] = []
    snapshot_seen = asyncio.Event()

    async def watch() -> None:
        async for event in client.watch(flow_id):
            events.append((event.kind, event.flow_version))
            snapshot_seen.set()

    task = asyncio.create_task(watch())
    await _until(snapshot_seen, task, within=10)
    for phase in PHASES:
        await client.transition_phase(flow_id, phase, "IN_PROGRESS")
        await client.transition_phase(flow_id, phase, "COMPLETED")
    await asyncio.wait_for(task, timeout=10)  # ends by itself after the terminal event

    assert events[0] == (FlowEventKind.SNAPSHOT, 1)
    assert events[1:] == [(FlowEventKind.CHANGE, version) for version in range(2, 12)]


async def test_watch_after_a_version_replays_history(client: AsyncFlowstateClient) -> None:
    flow_id = await started(client, "data_import")
    await client.cancel_flow(flow_id)

    replayed = [(e.kind, e.flow_version) async for e in client.watch(flow_id, after_version=1)]

    assert replayed == [
        (FlowEventKind.CHANGE, 2),
        (FlowEventKind.CHANGE, 3),
        (FlowEventKind.CHANGE, 4),
    ]


async def test_watch_flows_sees_the_tenants_flows(client: AsyncFlowstateClient) -> None:
    first = await started(client)
    seen: dict[str, list[int]] = {}
    ready = asyncio.Event()

    async def watch() -> None:
        async for event in client.watch_flows():
            seen.setdefault(event.flow_id, []).append(event.flow_version)
            if event.flow_id == first:
                ready.set()
            if seen.get(first, [])[-1:] == [2]:
                return

    task = asyncio.create_task(watch())
    await _until(ready, task, within=10)
    await client.transition_phase(first, "data_import", "IN_PROGRESS")
    await asyncio.wait_for(task, timeout=10)

    assert seen[first] == [1, 2]


async def test_watch_flows_with_a_filter_expression(client: AsyncFlowstateClient) -> None:
    """Exactly the changes the filter matches (the same case as the TypeScript and Go suites)."""
    matching, a, b = [(await client.create_flow()).flow.flow_id for _ in range(3)]
    await client.transition_phase(matching, "data_import", "IN_PROGRESS")
    await client.transition_phase(matching, "data_import", "COMPLETED")
    seen: list[tuple[str, int]] = []
    ready = asyncio.Event()

    async def watch() -> None:
        events = client.watch_flows(
            flow_ids=[matching, a, b], filter="phase.data_import = COMPLETED"
        )
        async for event in events:
            seen.append((event.flow_id, event.flow_version))
            ready.set()  # matching's snapshot: the stream is live
            if (event.flow_id, event.flow_version) == (a, 4):
                return

    task = asyncio.create_task(watch())
    await _until(ready, task, within=10)
    await client.transition_phase(b, "data_import", "IN_PROGRESS")
    await client.transition_phase(a, "data_import", "IN_PROGRESS")
    await client.transition_phase(a, "data_import", "COMPLETED")
    await client.transition_phase(a, "field_mapping", "IN_PROGRESS")
    await asyncio.wait_for(task, timeout=10)

    assert seen == [(matching, 3), (a, 3), (a, 4)]
    with pytest.raises(MalformedRequest) as bad:
        async for _ in client.watch_flows(filter="status = NOPE"):
            pass
    assert (bad.value.details["field"], bad.value.details["position"]) == ("filter", 9)


async def test_watch_resumes_across_a_server_restart(database_url: str, tenant: Tenant) -> None:
    """`flowstate serve` is stopped and started again on the same database and port.

    A change committed while it is down (by another server on the same database) and the changes
    after the restart all reach the watcher, each exactly once, in version order.
    """
    minter = TokenMinter.random()
    token = minter(tenant, scopes=ALL_SCOPES)
    async with contextlib.AsyncExitStack() as stack:
        first, client = await _serve_and_connect(stack, database_url, minter, token)
        flow_id = (await client.create_flow()).flow.flow_id
        seen: list[tuple[FlowEventKind, int]] = []
        subscribed = asyncio.Event()
        progressed = asyncio.Event()

        async def watch() -> None:
            async for event in client.watch(flow_id):
                seen.append((event.kind, event.flow_version))
                subscribed.set()
                if event.flow_version >= 2:
                    progressed.set()

        task = asyncio.create_task(watch())
        await _until(subscribed, task, within=15)
        await client.transition_phase(flow_id, "data_import", "IN_PROGRESS")
        await _until(progressed, task, within=15)

        assert await asyncio.to_thread(first.stop) == 0
        async with (
            serve_in_process(database_url, minter=minter) as other,
            AsyncFlowstateClient(address=other.address, token=token) as other_client,
        ):
            await other_client.transition_phase(flow_id, "data_import", "COMPLETED")

        await _serve_again(stack, database_url, minter, first.address)
        await client.transition_phase(flow_id, "field_mapping", "IN_PROGRESS")
        await client.cancel_flow(flow_id)
        await asyncio.wait_for(task, timeout=30)

    assert seen == [
        (FlowEventKind.SNAPSHOT, 1),
        (FlowEventKind.CHANGE, 2),
        (FlowEventKind.CHANGE, 3),
        (FlowEventKind.CHANGE, 4),
        (FlowEventKind.CHANGE, 5),
    ]


async def test_watch_flows_resumes_across_a_server_restart(
    database_url: str, tenant: Tenant
) -> None:
    """The tenant-wide stream resumes by its cursor when `flowstate serve` restarts.

    Two flows change before the restart, one while the server is down (through another server
    on the same database) and both after it: the watcher sees every version of each flow once,
    in order, and no flow of another tenant.
    """
    minter = TokenMinter.random()
    token = minter(tenant, scopes=ALL_SCOPES)
    other_tenant = Tenant(f"{tenant.client_account_id}-x", tenant.engagement_id)
    async with contextlib.AsyncExitStack() as stack:
        first, client = await _serve_and_connect(stack, database_url, minter, token)
        a = (await client.create_flow()).flow.flow_id
        b = (await client.create_flow()).flow.flow_id
        seen: dict[str, list[int]] = {}
        subscribed = asyncio.Event()
        progressed = asyncio.Event()
        finished = asyncio.Event()

        async def watch() -> None:
            async for event in client.watch_flows():
                seen.setdefault(event.flow_id, []).append(event.flow_version)
                if {a, b} <= seen.keys():
                    subscribed.set()
                if seen.get(a, [])[-1:] == [2] and seen.get(b, [])[-1:] == [2]:
                    progressed.set()
                if seen.get(a, [])[-1:] == [4] and seen.get(b, [])[-1:] == [3]:
                    finished.set()
                    return

        task = asyncio.create_task(watch())
        await _until(subscribed, task, within=15)
        await client.transition_phase(a, "data_import", "IN_PROGRESS")
        await client.transition_phase(b, "data_import", "IN_PROGRESS")
        await _until(progressed, task, within=15)

        assert await asyncio.to_thread(first.stop) == 0
        async with (
            serve_in_process(database_url, minter=minter) as other,
            AsyncFlowstateClient(address=other.address, token=token) as other_client,
            AsyncFlowstateClient(
                address=other.address, token=minter(other_tenant, scopes=ALL_SCOPES)
            ) as intruder,
        ):
            await other_client.transition_phase(a, "data_import", "COMPLETED")
            await intruder.create_flow()  # another tenant's change: never on this stream

        await _serve_again(stack, database_url, minter, first.address)
        await client.transition_phase(b, "data_import", "COMPLETED")
        await client.transition_phase(a, "field_mapping", "IN_PROGRESS")
        await _until(finished, task, within=30)
        await asyncio.wait_for(task, timeout=5)

    assert seen == {a: [1, 2, 3, 4], b: [1, 2, 3]}


async def _until(event: asyncio.Event, task: asyncio.Task[None], *, within: float) -> None:
    """Wait until the watcher `task` sets `event`; raise the watcher's own error if it ended
    first (a bare wait on the event would only time out and hide why)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, task}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if event.is_set():
        return
    if task.done():
        task.result()  # the watcher's exception, if it raised
        raise AssertionError("the watcher ended without the awaited event")
    task.cancel()
    raise AssertionError(f"the watcher saw no awaited event within {within} s")


def _restart_env(minter: TokenMinter) -> dict[str, str]:
    return {"FLOWSTATE_JWT_SECRET": minter.secret, "FLOWSTATE_GRACE_PERIOD": "1"}


async def _serve_and_connect(
    stack: contextlib.AsyncExitStack, database_url: str, minter: TokenMinter, token: str
) -> tuple[ServerProcess, AsyncFlowstateClient]:
    """A `flowstate serve` subprocess (stopped with `stack`) and a client that keeps retrying."""
    server = await asyncio.to_thread(
        stack.enter_context, serve_subprocess(database_url=database_url, env=_restart_env(minter))
    )
    client = AsyncFlowstateClient(
        address=server.address,
        token=token,
        retry=RetryPolicy(max_attempts=None, initial_backoff=0.2, max_backoff=1.0, deadline=60),
        # No reconnect deadline: the watcher's budget would otherwise run from its last event,
        # before the stop, through two server starts (slow on a loaded machine); the test's own
        # waits bound it instead.
        watch_retry=RetryPolicy(
            max_attempts=None, initial_backoff=0.1, max_backoff=0.5, deadline=None
        ),
    )
    stack.push_async_callback(client.close)
    return server, client


async def _serve_again(
    stack: contextlib.AsyncExitStack, database_url: str, minter: TokenMinter, address: str
) -> None:
    """Start `flowstate serve` again on the port of `address` (its clients reconnect there)."""
    port = address.rsplit(":", 1)[1]
    await asyncio.to_thread(
        stack.enter_context,
        serve_subprocess(
            database_url=database_url, env=_restart_env(minter), args=["--port", port]
        ),
    )


# --- definitions: a diamond with parallel branches and an optional phase ----------------------

DIAMOND = {
    "name": "sdk_diamond",
    "phases": [
        {"name": "a", "weight": 25, "status_group": "data_gathering"},
        {"name": "b", "depends_on": ["a"], "weight": 25, "status_group": "DISCOVERY"},
        {"name": "c", "depends_on": ["a"], "weight": 25, "optional": True},
        {"name": "d", "depends_on": ["b", "c"], "weight": 25, "status_group": "planning"},
    ],
}
DEFINITION_SCOPES = (*ALL_SCOPES, "definitions:write")


async def test_a_diamond_runs_with_parallel_branches_and_a_skip(make_client: MakeClient) -> None:
    client = make_client(scopes=DEFINITION_SCOPES)
    registered = await client.create_flow_definition(DIAMOND)
    assert (registered.definition.version, registered.created) == (1, True)
    assert registered.definition.phase("c").optional
    assert not registered.definition.builtin
    again = await client.create_flow_definition(DIAMOND)
    assert (again.definition.version, again.created) == (1, False)
    names = [d.name async for d in client.iter_flow_definitions(page_size=1)]
    assert names == ["discovery", "sdk_diamond"]

    flow = (await client.create_flow("sdk_diamond")).flow
    flow_id = flow.flow_id
    await client.transition_phase(flow_id, "a", PhaseState.IN_PROGRESS)
    result = await client.transition_phase(flow_id, "a", PhaseState.COMPLETED)
    assert (result.flow.status, result.flow.progress) == (FlowStatus.DATA_GATHERING, 25.0)
    # b and c run in parallel.
    await client.transition_phase(flow_id, "b", PhaseState.IN_PROGRESS)
    both = (await client.transition_phase(flow_id, "c", PhaseState.IN_PROGRESS)).flow
    assert [p.state for p in both.phases[1:3]] == [PhaseState.IN_PROGRESS] * 2
    assert both.progress == 40.0
    assert both.status == FlowStatus.ACTIVE  # c, listed after b, has no status group
    with pytest.raises(PhaseOrderViolation) as blocked:
        await client.transition_phase(flow_id, "d", PhaseState.IN_PROGRESS)
    assert list(blocked.value.blocking_phases) == ["b", "c"]
    await client.transition_phase(
        flow_id, "c", PhaseState.FAILED, error_code=ErrorCode.AGENT_TIMEOUT, error_message="slow"
    )
    with pytest.raises(InvalidPhaseTransition):
        await client.skip_phase(flow_id, "b")  # b is not optional
    skipped = await client.skip_phase(flow_id, "c", reason="not needed this time")
    assert skipped.flow.phase("c").state is PhaseState.SKIPPED
    assert skipped.flow.phase("c").state.is_done
    assert [e.kind for e in skipped.history_entries] == [HistoryEventKind.SKIP]
    assert skipped.flow.progress == 57.5
    await client.transition_phase(flow_id, "b", PhaseState.COMPLETED)
    await client.transition_phase(flow_id, "d", PhaseState.IN_PROGRESS)
    done = (await client.transition_phase(flow_id, "d", PhaseState.COMPLETED)).flow
    assert (done.status, done.progress) == (FlowStatus.COMPLETED, 100.0)


async def test_the_skip_recovery_option_of_a_failed_optional_phase_executes(
    make_client: MakeClient,
) -> None:
    client = make_client(scopes=DEFINITION_SCOPES)
    await client.create_flow_definition(DIAMOND)
    flow_id = (await client.create_flow("sdk_diamond")).flow.flow_id
    await client.transition_phase(flow_id, "a", PhaseState.IN_PROGRESS)
    await client.transition_phase(flow_id, "a", PhaseState.COMPLETED)
    await client.transition_phase(flow_id, "c", PhaseState.IN_PROGRESS)
    await client.transition_phase(flow_id, "c", PhaseState.FAILED, error_code="AGENT_TIMEOUT")

    options = (await client.get_recovery_options(flow_id)).options
    [skip] = [o for o in options if o.action is RecoveryAction.SKIP]
    result = await skip.execute(client)

    assert (skip.phase, skip.allowed) == ("c", True)
    assert result.flow.phase("c").state is PhaseState.SKIPPED
    assert [e.kind for e in result.history_entries] == [HistoryEventKind.SKIP]


async def test_the_sync_client_registers_and_skips(
    flowstate_server: RunningServer, tenant: Tenant
) -> None:
    """The sync client blocks, so it runs in a thread while the in-process server serves."""
    from flowstate.client import DefinitionNotFound, DefinitionShadowsBuiltin, FlowstateClient

    token = flowstate_server.mint(tenant, user="sdk-sync", scopes=DEFINITION_SCOPES)

    def scenario() -> None:
        with FlowstateClient(address=flowstate_server.address, token=token, timeout=10) as client:
            with pytest.raises(MalformedRequest) as refused:
                client.create_flow_definition({**DIAMOND, "phases": DIAMOND["phases"][:3]})
            assert "phases" in {field for field, _ in refused.value.field_violations}
            with pytest.raises(DefinitionShadowsBuiltin):
                client.create_flow_definition({**DIAMOND, "name": "discovery"})
            with pytest.raises(DefinitionNotFound):
                client.get_flow_definition("sdk_diamond")
            assert client.create_flow_definition(DIAMOND).definition.version == 1
            flow_id = client.create_flow("sdk_diamond", definition_version=1).flow.flow_id
            client.transition_phase(flow_id, "a", PhaseState.IN_PROGRESS)
            client.transition_phase(flow_id, "a", PhaseState.COMPLETED)
            flow = client.skip_phase(flow_id, "c").flow
            assert flow.phase("c").state is PhaseState.SKIPPED
            assert flow.progress == 50.0
            assert [d.version for d in client.iter_flow_definitions(name="sdk_diamond")] == [1]

    await asyncio.to_thread(scenario)


TIMED = {
    "name": "sdk_timed",
    "phases": [
        {
            "name": "work",
            "weight": 100,
            "max_retries": 1,
            "policy": {
                "heartbeat_timeout": "30s",
                "retry_policy": {
                    "initial_backoff": "200ms",
                    "multiplier": 2,
                    "max_backoff": 1,
                    "retry_on": ["external_service_error", ErrorCode.AGENT_TIMEOUT],
                },
            },
        }
    ],
}


async def test_heartbeats_and_automatic_retries(make_client: MakeClient) -> None:
    client = make_client(scopes=DEFINITION_SCOPES)
    registered = await client.create_flow_definition(TIMED)
    policy = registered.definition.raw.phases[0].policy
    assert policy.heartbeat_timeout.ToTimedelta().total_seconds() == 30
    assert policy.retry_policy.initial_backoff.ToMilliseconds() == 200
    flow_id = (await client.create_flow("sdk_timed")).flow.flow_id
    with pytest.raises(InvalidPhaseTransition):
        await client.heartbeat(flow_id, "work")  # not running yet
    started = await client.transition_phase(flow_id, "work", PhaseState.IN_PROGRESS)
    beat = await client.heartbeat(flow_id, "work")
    assert beat.flow_version == started.flow.version
    assert beat.heartbeat_deadline_time is not None
    failed = await client.transition_phase(
        flow_id,
        "work",
        PhaseState.FAILED,
        error_code=ErrorCode.EXTERNAL_SERVICE_ERROR,
        error_message="down",
    )
    due = failed.flow.phase("work").next_attempt_time
    assert due is not None
    assert failed.history_entries[-1].next_attempt_time == due
    options = await client.get_recovery_options(flow_id)
    assert [o.next_attempt_time for o in options.options if o.action.name == "RETRY"] == [due]
    for _ in range(300):  # bounded: the server's timer loop moves it (backoff 0.2 s)
        flow = await client.get_flow(flow_id)
        if flow.phase("work").state is PhaseState.RETRY_NEEDED:
            break
        await asyncio.sleep(0.05)
    assert flow.phase("work").state is PhaseState.RETRY_NEEDED
    assert flow.phase("work").next_attempt_time == due
    history = await client.list_flow_history(flow_id)
    assert history.history_entries[-1].user_id == "system:timer"


async def test_webhooks_create_list_test_replay_delete(database_url: str, tenant: Tenant) -> None:
    """The webhook calls against a real server (one that may reach 127.0.0.1; its delivery loop
    is off, so TestWebhook's request is the only one the receiver gets)."""
    from flowstate.client import WebhookNotFound
    from flowstate.v1 import webhook_pb2

    received: list[dict[str, str]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers: dict[str, str] = {}
        await reader.readline()
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
        received.append(headers)
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    receiver = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{receiver.sockets[0].getsockname()[1]}/hook"
    try:
        async with serve_in_process(
            database_url, webhook_allow_networks=("127.0.0.0/8",), webhooks=False
        ) as server:
            token = server.mint(tenant, scopes=("webhooks:admin",))
            async with AsyncFlowstateClient(address=server.address, token=token) as client:
                created = await client.create_webhook(url, statuses=[FlowStatus.COMPLETED])
                assert created.secret.startswith("whsec_")
                webhook = created.webhook
                assert list(webhook.statuses) == [FlowStatus.COMPLETED.value]
                listed = await client.list_webhooks()
                assert [w.webhook_id for w in listed] == [webhook.webhook_id]
                tested = await client.test_webhook(webhook.webhook_id)
                assert tested.delivered
                assert received[-1]["webhook-id"] == tested.event_id
                assert received[-1]["webhook-signature"].startswith("v1,")
                replayed = await client.replay_webhook(
                    webhook.webhook_id, since=datetime.now(UTC) - timedelta(minutes=1)
                )
                assert replayed.state == webhook_pb2.WEBHOOK_STATE_ACTIVE
                await client.delete_webhook(webhook.webhook_id)
                assert await client.list_webhooks() == []
                with pytest.raises(WebhookNotFound):
                    await client.delete_webhook(webhook.webhook_id)
    finally:
        receiver.close()
        await receiver.wait_closed()


async def test_decide_phase_records_the_approver_and_alerts_reach_watchers(
    database_url: str, tenant: Tenant
) -> None:
    """DecidePhase (flows:approve) and a deadline's ALERT event through the SDK, on a server
    that scans for alerts every 50 ms."""
    async with serve_in_process(database_url, alert_check_interval=0.05) as server:
        worker = AsyncFlowstateClient(
            address=server.address, token=server.mint(tenant, user="worker"), timeout=10
        )
        approver = AsyncFlowstateClient(
            address=server.address,
            token=server.mint(tenant, user="ann", scopes=("flows:approve",)),
            timeout=10,
        )
        async with worker, approver:
            deadline = datetime.now(UTC) + timedelta(seconds=0.3)
            created = await worker.create_flow("discovery", deadline=deadline)
            flow_id = created.flow.flow_id
            assert created.flow.deadline == deadline
            await worker.transition_phase(flow_id, "data_import", "IN_PROGRESS")
            await worker.transition_phase(flow_id, "data_import", "WAITING_APPROVAL")
            with pytest.raises(PermissionDenied):
                await worker.decide_phase(flow_id, "data_import", "APPROVE")
            decided = await approver.decide_phase(
                flow_id, "data_import", ApprovalDecision.APPROVE, comment="looks right"
            )
            phase = decided.flow.phase("data_import")
            assert phase.state is PhaseState.COMPLETED
            assert phase.approval is not None
            assert (phase.approval.decision, phase.approval.approver, phase.approval.comment) == (
                ApprovalDecision.APPROVE,
                "ann",
                "looks right",
            )
            (entry,) = decided.history_entries
            assert entry.kind is HistoryEventKind.DECISION
            assert entry.approval == phase.approval

            async with asyncio.timeout(15):
                async for event in worker.watch(flow_id, after_version=1, keep_open=True):
                    if event.kind is FlowEventKind.ALERT:
                        break
            assert event.alert is not None
            assert event.alert.kind is AlertKind.DEADLINE_EXCEEDED
            flow = await worker.get_flow(flow_id)
            assert [a.kind for a in flow.alerts] == [AlertKind.DEADLINE_EXCEEDED]
            page = await worker.list_flows(alerting=True)
            assert [f.flow_id for f in page.flows] == [flow_id]


# --- child flows (docs/child_flows.md) ------------------------------------------------------------

CHILD_WORK = {"name": "sdk_child", "phases": [{"name": "work", "weight": 100}]}
MASTER = {
    "name": "sdk_master",
    "phases": [
        {
            "name": name,
            "weight": 50,
            "kind": "child_flow",
            "child_flow": {"definition": "sdk_child", "on_parent_cancel": policy},
        }
        for name, policy in (("left", "cascade"), ("right", "abandon"))
    ],
}


async def test_child_flows_link_tree_and_follow(make_client: MakeClient) -> None:
    client = make_client(scopes=DEFINITION_SCOPES)
    await client.create_flow_definition(CHILD_WORK)
    master_definition = (await client.create_flow_definition(MASTER)).definition
    assert master_definition.raw.phases[1].child_flow.definition_name == "sdk_child"
    master = (await client.create_flow("sdk_master")).flow
    started = await client.transition_phase(master.flow_id, "left", PhaseState.IN_PROGRESS)
    child_id = started.flow.phase("left").child_flow_id
    assert child_id is not None
    existing = (await client.create_flow("sdk_child")).flow
    linked = await client.link_child_flow(master.flow_id, "right", existing.flow_id)
    assert linked.flow.phase("right").child_flow_id == existing.flow_id

    tree = await client.get_flow_tree(master.flow_id, depth=1)
    assert {f.flow_id for f in tree.children(master.flow_id)} == {child_id, existing.flow_id}
    assert not tree.truncated
    page = await client.list_flows(parent_flow_id=master.flow_id)
    assert {f.parent_phase for f in page.flows} == {"left", "right"}
    children = client.iter_flows(parent_flow_id=master.flow_id, page_size=1)
    assert {f.flow_id async for f in children} == {child_id, existing.flow_id}

    for flow_id in (child_id, existing.flow_id):
        await client.transition_phase(flow_id, "work", PhaseState.IN_PROGRESS)
        await client.transition_phase(flow_id, "work", PhaseState.COMPLETED)
    done = await client.get_flow(master.flow_id)
    assert (done.status, done.progress) == (FlowStatus.COMPLETED, 100.0)
    with pytest.raises(ChildFlowNotLinkable):
        await client.link_child_flow(
            (await client.create_flow("sdk_master")).flow.flow_id, "left", existing.flow_id
        )


async def test_watch_a_tree_with_its_children_and_dependencies_resumes_by_cursor(
    make_client: MakeClient,
) -> None:
    client = make_client(scopes=DEFINITION_SCOPES)
    await client.create_flow_definition(CHILD_WORK)
    await client.create_flow_definition(MASTER)
    upstream = (await client.create_flow("sdk_child")).flow
    master = (
        await client.create_flow(
            "sdk_master",
            external_dependencies=[ExternalDependency("right", upstream.flow_id, "work")],
        )
    ).flow
    stream = client.watch(master.flow_id, children_depth=1, include_dependencies=True)
    own, dependency = await anext(stream), await anext(stream)
    assert (own.flow_id, own.relation, own.kind) == (
        master.flow_id,
        WatchRelation.SELF,
        FlowEventKind.SNAPSHOT,
    )
    assert (dependency.flow_id, dependency.relation) == (upstream.flow_id, WatchRelation.DEPENDENCY)
    assert dependency.waiting == (WaitingPhase(master.flow_id, "right", "work"),)
    assert dependency.cursor

    started = await client.transition_phase(master.flow_id, "left", PhaseState.IN_PROGRESS)
    child_id = started.flow.phase("left").child_flow_id
    assert child_id is not None
    seen = [await anext(stream) for _ in range(2)]  # the child's creation and the parent's start
    child_event = next(e for e in seen if e.flow_id == child_id)
    assert (child_event.relation, child_event.parent_flow_id) == (
        WatchRelation.DESCENDANT,
        master.flow_id,
    )
    cursor = seen[-1].cursor
    await stream.aclose()

    await client.transition_phase(child_id, "work", PhaseState.IN_PROGRESS)  # nobody watches
    await client.transition_phase(upstream.flow_id, "work", PhaseState.IN_PROGRESS)
    resumed = client.watch(
        master.flow_id, children_depth=1, include_dependencies=True, cursor=cursor
    )
    events = [await anext(resumed) for _ in range(3)]  # child, parent following it, upstream
    assert {(e.flow_id, e.relation) for e in events} == {
        (child_id, WatchRelation.DESCENDANT),
        (master.flow_id, WatchRelation.SELF),
        (upstream.flow_id, WatchRelation.DEPENDENCY),
    }
    woken = next(e for e in events if e.relation is WatchRelation.DEPENDENCY)
    assert woken.change is not None
    assert (woken.change.phase, woken.change.to_state) == ("work", PhaseState.IN_PROGRESS)
    await resumed.aclose()
