"""Retries: UNAVAILABLE is retried with backoff, reusing the request id; nothing else is.

The server is a real ``grpc.aio`` server that answers UNAVAILABLE a scripted number of times
and then succeeds, recording every request it received. Its errors are recorded from a real
server (recorded_errors.py): UNAVAILABLE and RATE_LIMITED carry its RetryInfo of 1 s, the minimum
wait the client honours (the `client` fixture records the waits instead of sleeping them).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest
from recorded_errors import error_fixture, recorded
from scripted_server import Bare, Failure, ScriptedServer, ScriptedServicer

from flowstate.client import (
    AsyncFlowstateClient,
    ErrorCode,
    FlowstateClient,
    FlowstateError,
    InvalidPhaseTransition,
    PhaseState,
    RateLimited,
    RetryPolicy,
    Unavailable,
)
from flowstate.client._config import ClientConfig
from flowstate.client._retry import RetryState
from flowstate.v1 import flow_pb2, flow_service_pb2

#: What a server whose database is unreachable answers (recorded).
UNAVAILABLE = recorded("temporary_resource_unavailable")
#: The real server's RetryInfo on UNAVAILABLE and RATE_LIMITED, in seconds.
SERVER_RETRY_DELAY = 1.0


def transition_response(version: int = 2) -> flow_service_pb2.TransitionPhaseResponse:
    return flow_service_pb2.TransitionPhaseResponse(
        flow=flow_pb2.Flow(flow_id="f-1", version=version, progress=6.0)
    )


async def test_mutation_retried_on_unavailable_with_the_same_request_id(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, waits: list[float]
) -> None:
    servicer.add("TransitionPhase", UNAVAILABLE, UNAVAILABLE, transition_response())

    result = await client.transition_phase("f-1", "data_import", PhaseState.IN_PROGRESS)

    assert result.flow.version == 2
    requests = servicer.requests("TransitionPhase")
    assert len(requests) == 3
    request_ids = {request.request_id for request in requests}
    assert len(request_ids) == 1
    assert uuid.UUID(request_ids.pop()).version == 4
    assert requests[0] == requests[1] == requests[2]
    assert waits == [SERVER_RETRY_DELAY] * 2  # the server's RetryInfo, above the fast backoff


async def test_given_request_id_is_sent_and_each_call_gets_its_own(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add("PauseFlow", *[flow_service_pb2.PauseFlowResponse()] * 3)

    await client.pause_flow("f-1", request_id="my-key")
    await client.pause_flow("f-1")
    await client.pause_flow("f-1")

    ids = [request.request_id for request in servicer.requests("PauseFlow")]
    assert ids[0] == "my-key"
    assert ids[1] != ids[2]


async def test_reads_are_retried_too(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add(
        "GetFlow", UNAVAILABLE, flow_service_pb2.GetFlowResponse(flow=flow_pb2.Flow(flow_id="f"))
    )

    flow = await client.get_flow("f")

    assert flow.flow_id == "f"
    assert len(servicer.requests("GetFlow")) == 2


@pytest.mark.parametrize(
    "failure",
    [
        recorded("invalid_phase_transition"),
        recorded("version_conflict"),
        recorded("subscriber_too_slow"),
        Bare(grpc.StatusCode.INTERNAL),
        Bare(grpc.StatusCode.DEADLINE_EXCEEDED),
        Bare(grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=lambda fail: getattr(fail, "name", fail.grpc_code.name),
)
async def test_other_failures_are_not_retried(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, failure: Failure
) -> None:
    servicer.add("TransitionPhase", failure, transition_response())

    with pytest.raises(FlowstateError) as caught:
        await client.transition_phase("f-1", "data_import", "COMPLETED")

    assert caught.value.grpc_code == failure.grpc_code
    assert len(servicer.requests("TransitionPhase")) == 1


async def test_gives_up_after_max_attempts(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("GetFlow", *[UNAVAILABLE] * 10)
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.001, jitter=0.0)

    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    async with AsyncFlowstateClient(address=scripted.address, retry=policy) as client:
        client._sleep = record
        with pytest.raises(Unavailable) as caught:
            await client.get_flow("f-1")

    assert caught.value.message == error_fixture("temporary_resource_unavailable").message
    assert caught.value.retry_delay == timedelta(seconds=SERVER_RETRY_DELAY)
    assert len(servicer.requests("GetFlow")) == 3


async def test_overall_deadline_bounds_the_retries(
    servicer: ScriptedServicer, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No attempt starts after the deadline: on a virtual clock that only the backoff moves,
    a 60 s deadline with a fixed 10 s backoff allows exactly 6 attempts (t = 0, 10, ..., 50)."""
    servicer.add("GetFlow", *[UNAVAILABLE] * 100)
    now = 0.0
    defaults = RetryState.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "clock", lambda: now)
    waits: list[float] = []

    async def virtual_sleep(delay: float) -> None:
        nonlocal now
        waits.append(delay)
        now += delay

    policy = RetryPolicy(
        max_attempts=None, initial_backoff=10.0, max_backoff=10.0, jitter=0.0, deadline=60.0
    )
    async with AsyncFlowstateClient(address=scripted.address, retry=policy) as client:
        client._sleep = virtual_sleep
        with pytest.raises(Unavailable):
            await client.get_flow("f-1")

    assert len(servicer.requests("GetFlow")) == 6
    assert waits == [10.0] * 5  # above the server's RetryInfo of 1 s


async def test_server_retry_delay_is_a_minimum_wait(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, waits: list[float]
) -> None:
    """The client's backoff is 0.01 s; the recorded UNAVAILABLE's RetryInfo says 1 s."""
    servicer.add("GetFlow", UNAVAILABLE, flow_service_pb2.GetFlowResponse())

    await client.get_flow("f-1")

    assert waits == [SERVER_RETRY_DELAY]


async def test_token_source_is_called_for_every_attempt(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("GetFlow", UNAVAILABLE, flow_service_pb2.GetFlowResponse())
    tokens = iter(["token-1", "token-2"])
    policy = RetryPolicy(initial_backoff=0.001, jitter=0.0)
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    async with AsyncFlowstateClient(
        address=scripted.address, token=lambda: next(tokens), retry=policy
    ) as client:
        client._sleep = record
        await client.get_flow("f-1")

    sent = [call.metadata.get("authorization") for call in servicer.calls]
    assert sent == ["Bearer token-1", "Bearer token-2"]


async def test_no_token_sends_no_authorization(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("GetFlow", flow_service_pb2.GetFlowResponse())
    async with AsyncFlowstateClient(address=scripted.address) as client:
        await client.get_flow("f-1")
    assert "authorization" not in servicer.calls[0].metadata


async def test_sync_client_retries_with_the_same_request_id(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("Retry", UNAVAILABLE, flow_service_pb2.RetryResponse())
    servicer.add("Retry", recorded("invalid_phase_transition"))
    policy = RetryPolicy(initial_backoff=0.001, jitter=0.0)
    waits: list[float] = []

    def run() -> None:
        with FlowstateClient(address=scripted.address, token="t", retry=policy) as client:
            client._sleep = waits.append
            client.retry("f-1", "data_import")
            with pytest.raises(InvalidPhaseTransition):
                client.retry("f-1", "data_import")

    await asyncio.to_thread(run)

    ids = [request.request_id for request in servicer.requests("Retry")]
    assert len(ids) == 3
    assert ids[0] == ids[1] != ids[2]
    assert waits == [SERVER_RETRY_DELAY]


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_jitter_stays_within_its_bounds() -> None:
    policy = RetryPolicy(initial_backoff=1.0, jitter=0.2)
    assert policy.backoff(1, rng=lambda: 0.0) == pytest.approx(0.8)
    assert policy.backoff(1, rng=lambda: 1.0) == pytest.approx(1.2)


def test_attempt_timeout_is_cut_to_the_deadline_left() -> None:
    now = [100.0]
    state = RetryState(RetryPolicy(deadline=10.0), clock=lambda: now[0])
    assert state.attempt_timeout(30.0) == pytest.approx(10.0)
    now[0] = 107.0
    assert state.attempt_timeout(30.0) == pytest.approx(3.0)
    assert state.attempt_timeout(1.0) == pytest.approx(1.0)
    # No timeout stays none: only the caller's own deadline bounds the attempt.
    assert state.attempt_timeout(None) is None


def test_the_servers_retry_delay_is_a_minimum_even_above_max_backoff() -> None:
    now = [100.0]
    policy = RetryPolicy(max_backoff=1.0, jitter=0.0, deadline=60.0)
    state = RetryState(policy, clock=lambda: now[0])
    state.begin()
    error = Unavailable(
        "busy", code=ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE, retry_delay=timedelta(seconds=7)
    )
    assert state.next_delay(error) == pytest.approx(7.0)
    now[0] = 155.0  # a wait that would pass the deadline gives up instead
    assert state.next_delay(error) is None


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"jitter": 1.5}, "jitter"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"deadline": 0}, "deadline"),
    ],
    ids=str,
)
def test_invalid_policies_are_rejected(settings: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RetryPolicy(**settings)  # type: ignore[arg-type]


async def test_a_call_reaches_a_server_that_comes_back_on_the_same_port(
    servicer: ScriptedServicer,
) -> None:
    """Retries span a restart: the channel's own reconnect backoff is capped (see the test
    below), so the call gets through within the retry policy's deadline once the server listens
    again. The server comes back after three attempts have failed, counted, not slept for."""
    first = await ScriptedServer(servicer).start()
    port, address = first.port, first.address
    servicer.add("GetFlow", flow_service_pb2.GetFlowResponse(), flow_service_pb2.GetFlowResponse())
    fast = RetryPolicy(max_attempts=None, initial_backoff=0.05, max_backoff=0.5, deadline=15)
    failed_attempts = 0
    down_long_enough = asyncio.Event()

    async def counting_sleep(delay: float) -> None:
        nonlocal failed_attempts
        failed_attempts += 1
        if failed_attempts >= 3:
            down_long_enough.set()
        await asyncio.sleep(delay)

    async def restart_when_attempts_failed() -> ScriptedServer:
        await down_long_enough.wait()
        return await ScriptedServer(servicer, port=port).start()

    async with AsyncFlowstateClient(address=address, retry=fast, watch_retry=fast) as client:
        await client.get_flow("f-1")  # connected
        await first.stop(None)
        client._sleep = counting_sleep
        restarting = asyncio.create_task(restart_when_attempts_failed())
        try:
            await client.get_flow("f-1")  # fails over and over while the server is down
        finally:
            if restarting.done() or down_long_enough.is_set():
                await (await restarting).stop(None)
            else:
                restarting.cancel()

    assert failed_attempts >= 3
    assert len(servicer.requests("GetFlow")) == 2  # one before the restart, one after


def test_default_channel_options_yield_to_the_callers() -> None:
    config = ClientConfig(channel_options=[("grpc.max_reconnect_backoff_ms", 60_000)])
    options = dict(config.grpc_options())
    assert options["grpc.max_reconnect_backoff_ms"] == 60_000
    assert options["grpc.initial_reconnect_backoff_ms"] == 100
    assert dict(ClientConfig().grpc_options())["grpc.max_reconnect_backoff_ms"] == 5_000


async def test_a_per_call_retry_policy_overrides_the_clients(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add("GetFlow", UNAVAILABLE, UNAVAILABLE)

    with pytest.raises(Unavailable):
        await client.get_flow("f-1", retry=RetryPolicy.disabled())

    assert len(servicer.calls) == 1


async def test_rate_limited_calls_are_retried_after_the_servers_delay(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, waits: list[float]
) -> None:
    """RATE_LIMITED (RESOURCE_EXHAUSTED) applied nothing: the SDK waits the RetryInfo delay and
    sends the same request again."""
    servicer.add("TransitionPhase", recorded("rate_limited"), transition_response())

    await client.transition_phase("f-1", "data_import", "COMPLETED")

    first, second = servicer.requests("TransitionPhase")
    assert first.request_id == second.request_id
    assert waits == [SERVER_RETRY_DELAY]  # "retry in 1.000s" (a limit of 1/s, recorded)


async def test_rate_limited_calls_are_raised_when_the_policy_says_so(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("GetFlow", recorded("rate_limited"))
    policy = RetryPolicy(retry_rate_limited=False)
    async with AsyncFlowstateClient(address=scripted.address, retry=policy) as client:
        with pytest.raises(RateLimited):
            await client.get_flow("f-1")
    assert len(servicer.requests("GetFlow")) == 1
