"""Timers through a real server (docs/timers.md): phase timeouts, heartbeats, automatic retry.

Real time, kept short: policies of a fraction of a second to a few seconds, a server whose timer
loop runs every 0.1 s, and bounded polling (`until`) instead of sleeps that hope. The session's
server fires timers too (every replica does): nothing here depends on which one fired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2

from flowstate.core.model import Tenant
from flowstate.storage import FlowStore
from flowstate.testing import RunningServer, serve_in_process
from flowstate.v1 import (
    definition_pb2,
    errors_pb2,
    flow_pb2,
    flow_service_pb2_grpc,
    history_pb2,
    states_pb2,
)
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, failure, refused, request_id

S = states_pb2
T = TypeVar("T")

TIMER_INTERVAL = 0.1
SYSTEM_TIMER = "system:timer"
E = errors_pb2


async def until(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, within: float = 15.0
) -> T:
    """Poll `probe` every 50 ms until `done(result)`; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within} s; last: {result}")
        await asyncio.sleep(0.05)


def seconds(value: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(int(value * 1e9))
    return message


def policy(
    *,
    timeout: float | None = None,
    heartbeat: float | None = None,
    retry: tuple[float, float, float, list[errors_pb2.ErrorCode.ValueType]] | None = None,
) -> definition_pb2.PhasePolicy:
    message = definition_pb2.PhasePolicy()
    if timeout is not None:
        message.timeout.CopyFrom(seconds(timeout))
    if heartbeat is not None:
        message.heartbeat_timeout.CopyFrom(seconds(heartbeat))
    if retry is not None:
        initial, multiplier, maximum, codes = retry
        message.retry_policy.initial_backoff.CopyFrom(seconds(initial))
        message.retry_policy.multiplier = multiplier
        message.retry_policy.max_backoff.CopyFrom(seconds(maximum))
        message.retry_policy.retry_on.extend(codes)
    return message


def one_phase(
    name: str, phase_policy: definition_pb2.PhasePolicy, *, max_retries: int = 3
) -> definition_pb2.FlowDefinition:
    """A definition with one phase `work` (and a second, `after`, depending on it)."""
    return definition_pb2.FlowDefinition(
        name=name,
        phases=[
            definition_pb2.PhaseDefinition(
                name="work", weight=50, max_retries=max_retries, policy=phase_policy
            ),
            definition_pb2.PhaseDefinition(name="after", weight=50, depends_on=["work"]),
        ],
    )


@pytest_asyncio.fixture(scope="module")
async def timer_server(database_url: str, store: FlowStore) -> AsyncIterator[RunningServer]:
    """A server whose timer loop runs every 0.1 s."""
    async with serve_in_process(
        database_url, store=store, metrics_port=0, timer_interval=TIMER_INTERVAL, timer_lease=2.0
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def timer_stub(
    timer_server: RunningServer,
) -> AsyncIterator[flow_service_pb2_grpc.FlowStateServiceAsyncStub]:
    async with timer_server.channel() as channel:
        yield flow_service_pb2_grpc.FlowStateServiceStub(channel)


@pytest.fixture
def worker(
    timer_stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
    timer_server: RunningServer,
    tenant: Tenant,
) -> Api:
    return Api(
        timer_stub, timer_server.mint, tenant, ("flows:read", "flows:write", "definitions:write")
    )


async def start_flow(worker: Api, definition: definition_pb2.FlowDefinition) -> str:
    await worker.stub.CreateFlowDefinition(
        pb.CreateFlowDefinitionRequest(definition=definition, request_id=request_id()),
        metadata=worker.metadata,
    )
    flow = await worker.create(definition_name=definition.name)
    return flow.flow_id


def phase(flow: flow_pb2.Flow, name: str = "work") -> flow_pb2.Phase:
    return next(p for p in flow.phases if p.name == name)


def state_is(state: int, name: str = "work") -> Callable[[flow_pb2.Flow], bool]:
    return lambda flow: phase(flow, name).state == state


async def heartbeat(worker: Api, flow_id: str, name: str = "work") -> pb.HeartbeatResponse:
    return await worker.stub.Heartbeat(
        pb.HeartbeatRequest(flow_id=flow_id, phase=name), metadata=worker.metadata
    )


# --- timeouts -------------------------------------------------------------------------------


async def test_a_phase_in_progress_past_its_timeout_fails_with_agent_timeout(worker: Api) -> None:
    flow_id = await start_flow(worker, one_phase("timeout_once", policy(timeout=0.5)))
    watch = worker.stub.WatchFlow(
        pb.WatchFlowRequest(flow_id=flow_id, keep_open=True), metadata=worker.metadata
    )
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)

    flow = await until(lambda: worker.get(flow_id), state_is(S.PHASE_STATE_FAILED))
    error = phase(flow).error_context
    assert error.error_code == E.ERROR_CODE_AGENT_TIMEOUT
    assert error.retryable
    entries = await worker.history(flow_id)
    last = entries[-1]
    assert (last.user_id, last.from_state, last.to_state) == (
        SYSTEM_TIMER,
        S.PHASE_STATE_IN_PROGRESS,
        S.PHASE_STATE_FAILED,
    )
    assert last.error_context.error_code == E.ERROR_CODE_AGENT_TIMEOUT
    assert last.flow_version == flow.version == len(entries)
    # The stream saw the failure (it is a change like any other).
    seen: list[Any] = []
    async for response in watch:
        if response.event.HasField("change"):
            seen.append(response.event.change)
        if any(e.user_id == SYSTEM_TIMER for e in seen):
            break
    watch.cancel()
    assert [e.flow_version for e in seen if e.user_id == SYSTEM_TIMER] == [flow.version]


async def test_a_phase_that_completes_in_time_is_never_failed(
    worker: Api, store: FlowStore
) -> None:
    flow_id = await start_flow(worker, one_phase("timeout_met", policy(timeout=0.6)))
    await worker.complete(flow_id, "work")
    assert await timer_rows(store, flow_id) == []
    await worker.move(flow_id, "after", S.PHASE_STATE_IN_PROGRESS)
    # The timeout would have passed by now; the flow only has the worker's changes.
    await asyncio.sleep(0.6 + 3 * TIMER_INTERVAL)
    entries = await worker.history(flow_id)
    assert SYSTEM_TIMER not in {e.user_id for e in entries}
    assert phase(await worker.get(flow_id)).state == S.PHASE_STATE_COMPLETED


# --- heartbeats -----------------------------------------------------------------------------


async def test_heartbeats_keep_a_phase_alive_and_their_absence_fails_it(worker: Api) -> None:
    flow_id = await start_flow(worker, one_phase("heartbeat_alive", policy(heartbeat=1.0)))
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
    deadlines = []
    for _ in range(8):  # 8 x 0.25 s = twice the heartbeat timeout
        beat = await heartbeat(worker, flow_id)
        deadlines.append(beat.heartbeat_deadline_time.ToDatetime())
        await asyncio.sleep(0.25)
    flow = await worker.get(flow_id)
    assert phase(flow).state == S.PHASE_STATE_IN_PROGRESS
    assert deadlines == sorted(deadlines)
    assert deadlines[0] < deadlines[-1]
    assert beat.flow_version == flow.version  # a heartbeat writes no version
    # Silence: the server fails the phase.
    flow = await until(lambda: worker.get(flow_id), state_is(S.PHASE_STATE_FAILED))
    assert phase(flow).error_context.error_code == E.ERROR_CODE_AGENT_TIMEOUT
    assert phase(flow).error_context.details["policy"] == "heartbeat_timeout"
    # A late worker learns that its phase is no longer running.
    late = await refused(heartbeat(worker, flow_id))
    assert late.code == grpc.StatusCode.FAILED_PRECONDITION
    assert late.reason == "INVALID_PHASE_TRANSITION"


async def test_progress_reports_count_as_heartbeats(worker: Api) -> None:
    flow_id = await start_flow(worker, one_phase("heartbeat_progress", policy(heartbeat=1.0)))
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
    for step in range(8):
        # Every other report repeats the last value: no new version, still a heartbeat.
        await worker.stub.UpdatePhaseProgress(
            pb.UpdatePhaseProgressRequest(
                flow_id=flow_id, phase="work", progress=(step // 2) / 10, request_id=request_id()
            ),
            metadata=worker.metadata,
        )
        await asyncio.sleep(0.25)
    assert phase(await worker.get(flow_id)).state == S.PHASE_STATE_IN_PROGRESS
    await until(lambda: worker.get(flow_id), state_is(S.PHASE_STATE_FAILED))


async def test_a_heartbeat_without_a_heartbeat_policy_is_accepted_without_deadline(
    worker: Api,
) -> None:
    flow_id = await start_flow(worker, one_phase("heartbeat_none", policy(timeout=60)))
    not_running = await refused(heartbeat(worker, flow_id))
    assert not_running.reason == "INVALID_PHASE_TRANSITION"
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
    beat = await heartbeat(worker, flow_id)
    assert not beat.HasField("heartbeat_deadline_time")
    unknown = await refused(heartbeat(worker, flow_id, "nope"))
    assert unknown.reason == "INVALID_PHASE"


# --- automatic retry --------------------------------------------------------------------------


RETRY_ON = sorted([E.ERROR_CODE_EXTERNAL_SERVICE_ERROR, E.ERROR_CODE_AGENT_TIMEOUT])


async def fail(worker: Api, flow_id: str, code: int) -> pb.TransitionPhaseResponse:
    return await worker.move(
        flow_id, "work", S.PHASE_STATE_FAILED, failure=failure(code=code, message="boom")
    )


async def test_automatic_retry_honours_backoff_multiplier_and_max_retries(
    worker: Api, store: FlowStore
) -> None:
    definition = one_phase("retry_backoff", policy(retry=(0.3, 2.0, 0.5, RETRY_ON)), max_retries=2)
    flow_id = await start_flow(worker, definition)
    waits = []
    for attempt in range(2):
        await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
        failed = await fail(worker, flow_id, E.ERROR_CODE_EXTERNAL_SERVICE_ERROR)
        entry = failed.history_entries[-1]
        due = phase(failed.flow).next_attempt_time
        assert entry.next_attempt_time == due
        waits.append((due.ToDatetime() - entry.occur_time.ToDatetime()).total_seconds())
        options = await worker.stub.GetRecoveryOptions(
            pb.GetRecoveryOptionsRequest(flow_id=flow_id), metadata=worker.metadata
        )
        retry_option = next(o for o in options.options if o.action == pb.RECOVERY_ACTION_RETRY)
        assert retry_option.next_attempt_time == due
        flow = await until(lambda: worker.get(flow_id), state_is(S.PHASE_STATE_RETRY_NEEDED))
        retried = (await worker.history(flow_id))[-1]
        assert retried.user_id == SYSTEM_TIMER
        assert retried.kind == history_pb2.HISTORY_EVENT_KIND_RETRY
        assert retried.occur_time.ToDatetime() >= due.ToDatetime()
        assert phase(flow).next_attempt_time == due  # kept: when the retry became due
        assert phase(flow).retry_count == attempt
    # min(0.3 * 2^n, 0.5): the backoff grows, then stops at max_backoff.
    assert waits == [pytest.approx(0.3), pytest.approx(0.5)]
    # Both retries used: the next failure is not retried automatically.
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
    failed = await fail(worker, flow_id, E.ERROR_CODE_EXTERNAL_SERVICE_ERROR)
    assert phase(failed.flow).retry_count == 2
    assert not phase(failed.flow).HasField("next_attempt_time")
    assert await timer_rows(store, flow_id) == []


async def test_only_the_listed_codes_are_retried_automatically(
    worker: Api, store: FlowStore
) -> None:
    definition = one_phase("retry_codes", policy(retry=(0.1, 1.0, 0.1, RETRY_ON)))
    flow_id = await start_flow(worker, definition)
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
    for code in (E.ERROR_CODE_PHASE_EXECUTION_FAILED, E.ERROR_CODE_DATA_VALIDATION_FAILED):
        failed = await fail(worker, flow_id, code)
        assert not phase(failed.flow).HasField("next_attempt_time")
        assert await timer_rows(store, flow_id) == []
        await worker.rollback(flow_id, "work")
        await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)


async def test_a_timeout_is_retried_automatically_when_the_policy_names_it(worker: Api) -> None:
    definition = one_phase(
        "timeout_retry", policy(timeout=0.3, retry=(0.2, 1.0, 0.2, RETRY_ON)), max_retries=1
    )
    flow_id = await start_flow(worker, definition)
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
    await until(lambda: worker.get(flow_id), state_is(S.PHASE_STATE_RETRY_NEEDED))
    steps = [(e.user_id, e.to_state) for e in await worker.history(flow_id)][-2:]
    assert steps == [
        (SYSTEM_TIMER, S.PHASE_STATE_FAILED),
        (SYSTEM_TIMER, S.PHASE_STATE_RETRY_NEEDED),
    ]


# --- definitions ------------------------------------------------------------------------------


async def test_policies_round_trip_through_the_registry(worker: Api) -> None:
    sent = one_phase(
        "policy_roundtrip", policy(timeout=90, heartbeat=15, retry=(1.5, 2.0, 60, RETRY_ON))
    )
    await start_flow(worker, sent)
    got = await worker.stub.GetFlowDefinition(
        pb.GetFlowDefinitionRequest(name="policy_roundtrip"), metadata=worker.metadata
    )
    assert got.definition.phases[0].policy == sent.phases[0].policy
    assert (
        not got.definition.phases[1].HasField("policy")
        or not got.definition.phases[1].policy.ListFields()
    )


async def test_bad_policies_are_refused_with_their_paths(worker: Api) -> None:
    bad = one_phase(
        "policy_bad",
        policy(timeout=0.01, retry=(5, 20, 1, [E.ERROR_CODE_DATA_VALIDATION_FAILED])),
    )
    refusal = await refused(
        worker.stub.CreateFlowDefinition(
            pb.CreateFlowDefinitionRequest(definition=bad, request_id=request_id()),
            metadata=worker.metadata,
        )
    )
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.violated_fields >= {
        "phases[0].policy.timeout",
        "phases[0].policy.retry_policy.multiplier",
        "phases[0].policy.retry_policy.max_backoff",
        "phases[0].policy.retry_policy.retry_on[0]",
    }


# --- metrics ----------------------------------------------------------------------------------


async def test_fired_timers_are_counted_with_their_lag(
    worker: Api, timer_server: RunningServer, server: RunningServer
) -> None:
    registries = [timer_server.server.metrics.registry, server.server.metrics.registry]

    def total(name: str, labels: dict[str, str] | None = None) -> float:
        return sum(r.get_sample_value(name, labels or {}) or 0.0 for r in registries)

    fired_before = total("flowstate_timers_fired_total", {"kind": "phase_timeout"})
    lag_before = total("flowstate_timer_lag_seconds_count")
    flow_id = await start_flow(worker, one_phase("timeout_metrics", policy(timeout=0.2)))
    await worker.move(flow_id, "work", S.PHASE_STATE_IN_PROGRESS)
    await until(lambda: worker.get(flow_id), state_is(S.PHASE_STATE_FAILED))
    # Recorded after the commit: poll the registries too.
    await until(
        lambda: asyncio.sleep(0, total("flowstate_timer_lag_seconds_count")),
        lambda count: count >= lag_before + 1,
    )
    assert total("flowstate_timers_fired_total", {"kind": "phase_timeout"}) >= fired_before + 1


async def timer_rows(store: FlowStore, flow_id: str) -> list[tuple[str, str]]:
    """The flow's timer rows (phase, kind), read as the owner (no tenant)."""
    async with store._pool.acquire() as connection:
        rows = await connection.fetch(
            "SELECT phase, kind FROM flow_timers WHERE flow_id = $1 ORDER BY phase, kind",
            flow_id,
        )
    return [(row["phase"], row["kind"]) for row in rows]


async def test_a_childs_timeout_fails_its_parent_phase_whose_retry_cancels_the_child(
    worker: Api,
) -> None:
    """Timers fire through the tree (docs/child_flows.md): the child's timeout moves the parent
    phase in the same transaction, and the parent's automatic retry cancels the failed child."""
    child_definition = definition_pb2.FlowDefinition(
        name="timed_child",
        phases=[
            definition_pb2.PhaseDefinition(name="work", weight=100, policy=policy(timeout=0.3))
        ],
    )
    await worker.stub.CreateFlowDefinition(
        pb.CreateFlowDefinitionRequest(definition=child_definition, request_id=request_id()),
        metadata=worker.metadata,
    )
    parent_definition = definition_pb2.FlowDefinition(
        name="timed_parent",
        phases=[
            definition_pb2.PhaseDefinition(
                name="work",
                weight=100,
                max_retries=2,
                kind=definition_pb2.PHASE_KIND_CHILD_FLOW,
                child_flow=definition_pb2.ChildFlowSpec(definition_name="timed_child"),
                policy=policy(retry=(0.1, 1.0, 0.1, [E.ERROR_CODE_AGENT_TIMEOUT])),
            )
        ],
    )
    parent_id = await start_flow(worker, parent_definition)
    started = await worker.move(parent_id, "work", states_pb2.PHASE_STATE_IN_PROGRESS)
    child_id = phase(started.flow).child_flow_id
    await worker.move(child_id, "work", states_pb2.PHASE_STATE_IN_PROGRESS)
    parent = await until(
        lambda: worker.get(parent_id), state_is(states_pb2.PHASE_STATE_RETRY_NEEDED)
    )
    assert phase(parent).error_context.error_code == E.ERROR_CODE_AGENT_TIMEOUT
    assert phase(parent).error_context.details["child_flow_id"] == child_id
    assert (await worker.get(child_id)).status == states_pb2.FLOW_STATUS_CANCELLED
