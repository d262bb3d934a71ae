"""Shaping: a call that finds its tenant's bucket empty waits for a reserved token (within the max
wait, its deadline and the deficit bound ``rate * max_wait``), else it is refused with RetryInfo;
a drain releases the waiting calls.

The limiter's clock is injected (`Clock`): in the server tests it stands still, so no token comes
back while a test runs and every wait and delay is exact, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any, cast

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowstate.core.model import Tenant
from flowstate.server import app
from flowstate.server.config import ConfigError, ServerSettings
from flowstate.server.connect import GrpcContextShim
from flowstate.server.ratelimit import (
    DEFAULT_MAX_WAIT,
    MAX_WAIT_CEILING,
    Limit,
    RateLimiter,
    Reservation,
    parse_max_wait,
)
from flowstate.storage import FlowStore
from flowstate.testing import RunningServer, TokenMinter, serve_in_process
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc

A = Tenant("acct", "noisy")
_POLLS = 500  # bounded polling: at most this many 10 ms looks


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _is(reservation: Reservation, reserved: bool, seconds: float) -> bool:
    """Whether `reservation` is (reserved, seconds), float noise aside."""
    return reservation.reserved is reserved and reservation.seconds == pytest.approx(seconds)


def _emptied(limiter: RateLimiter, family: str = "read") -> None:
    """Take the bucket's one token (burst 1), and check the next call finds none."""
    assert limiter.take(A, family) == 0.0
    assert limiter.take(A, family) > 0


# --- the limiter, on an injected clock -----------------------------------------------------


def test_an_empty_bucket_reserves_the_next_tokens_one_interval_apart() -> None:
    limiter = RateLimiter({"read": Limit(rate=5, burst=1)}, max_wait=1.0, clock=Clock())
    _emptied(limiter)
    for n in range(1, 6):
        assert _is(limiter.reserve(A, "read", None), True, 0.2 * n)


def test_the_deficit_bound_refuses_with_the_time_until_a_reservation_fits() -> None:
    clock = Clock()
    limiter = RateLimiter({"read": Limit(rate=5, burst=1)}, max_wait=1.0, clock=clock)
    _emptied(limiter)
    for _ in range(5):  # rate * max_wait calls wait at once
        assert limiter.reserve(A, "read", None).reserved
    refused = limiter.reserve(A, "read", None)
    assert refused == Reservation(False, 0.2)  # its token would be due in 1.2 s, 0.2 s too late
    assert limiter.reserve(A, "read", None) == refused  # a refusal reserves nothing
    clock.now += 0.2  # one token's worth later, a reservation fits again, at the max wait
    assert _is(limiter.reserve(A, "read", None), True, 1.0)


@pytest.mark.parametrize(
    ("deadline", "expected"),
    [
        pytest.param(0.5, Reservation(True, 0.4), id="deadline-after-the-token"),
        pytest.param(0.4, Reservation(True, 0.4), id="deadline-at-the-token"),
        pytest.param(0.3, Reservation(False, 0.1), id="deadline-before-the-token"),
        pytest.param(0.0, Reservation(False, 0.4), id="deadline-passed"),
        pytest.param(-1.0, Reservation(False, 0.4), id="deadline-long-passed"),
        pytest.param(5.0, Reservation(True, 0.4), id="deadline-after-max-wait"),
    ],
)
def test_a_call_waits_only_within_its_deadline(deadline: float, expected: Reservation) -> None:
    limiter = RateLimiter({"write": Limit(rate=2.5, burst=1)}, max_wait=1.0, clock=Clock())
    _emptied(limiter, "write")
    assert _is(limiter.reserve(A, "write", deadline), *expected)


def test_max_wait_zero_refuses_at_once_as_pure_policing() -> None:
    limiter = RateLimiter({"read": Limit(rate=2, burst=1)}, max_wait=0.0, clock=Clock())
    _emptied(limiter)
    assert limiter.reserve(A, "read", None) == Reservation(False, 0.5)
    assert limiter.reserve(A, "read", 30.0) == Reservation(False, 0.5)


def test_a_token_that_came_back_meanwhile_is_taken_without_a_wait() -> None:
    clock = Clock()
    limiter = RateLimiter({"read": Limit(rate=2, burst=1)}, max_wait=1.0, clock=clock)
    _emptied(limiter)
    clock.now += 0.5
    assert limiter.reserve(A, "read", None) == Reservation(True, 0.0)
    assert limiter.take(A, "read") > 0  # and it was taken


def test_the_bucket_refills_from_its_deficit_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter({"read": Limit(rate=4, burst=2)}, max_wait=0.5, clock=clock)
    assert limiter.take(A, "read") == limiter.take(A, "read") == 0.0
    assert _is(limiter.reserve(A, "read", None), True, 0.25)
    assert _is(limiter.reserve(A, "read", None), True, 0.5)
    clock.now += 0.5  # the two reserved tokens are due: the bucket is back at 0
    assert limiter.take(A, "read") == 0.25
    clock.now += 0.25
    assert limiter.take(A, "read") == 0.0


# --- the setting ---------------------------------------------------------------------------


def test_the_max_wait_setting() -> None:
    assert ServerSettings.from_env({}).rate_limit_max_wait == DEFAULT_MAX_WAIT == 0.5
    assert ServerSettings.from_env({"FLOWSTATE_RATE_LIMIT_MAX_WAIT": "2"}).rate_limit_max_wait == 2
    assert ServerSettings.from_env({"FLOWSTATE_RATE_LIMIT_MAX_WAIT": "0"}).rate_limit_max_wait == 0
    assert parse_max_wait(str(MAX_WAIT_CEILING)) == MAX_WAIT_CEILING


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("soon", r"must be a number of seconds, not 'soon'", id="not-a-number"),
        pytest.param("-0.1", r"must be between 0 and 10 seconds, not -0\.1", id="negative"),
        pytest.param("11", r"must be between 0 and 10 seconds, not 11", id="over-the-ceiling"),
        pytest.param("nan", r"must be between 0 and 10 seconds, not nan", id="nan"),
    ],
)
def test_a_bad_max_wait_is_refused(value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=rf"^FLOWSTATE_RATE_LIMIT_MAX_WAIT: {reason}$"):
        ServerSettings.from_env({"FLOWSTATE_RATE_LIMIT_MAX_WAIT": value})


def test_a_max_wait_given_directly_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^FLOWSTATE_RATE_LIMIT_MAX_WAIT: .* not 60$"):
        ServerSettings(rate_limit_max_wait=60).checked()


def test_over_connect_a_call_waits_within_its_timeout() -> None:
    class Timed:
        timeout_ms: float | None = 1500.0

    timed = Timed()
    shim = GrpcContextShim(cast(Any, timed))
    assert shim.time_remaining() == 1.5
    timed.timeout_ms = None
    assert shim.time_remaining() is None


# --- a real server -------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of the limiter of every server the test starts: it stands still."""
    frozen = Clock()
    monkeypatch.setattr(app, "RateLimiter", functools.partial(RateLimiter, clock=frozen))
    return frozen


def _tenant(name: str) -> Tenant:
    return Tenant("acct-shaping", f"{name}-{uuid.uuid4().hex[:8]}")


def _requests(server: RunningServer, family: str) -> dict[str, float]:
    """flowstate_tenant_requests_total of `family` by result (every tenant)."""
    counts: dict[str, float] = {}
    for metric in server.server.metrics.registry.collect():
        if metric.name == "flowstate_tenant_requests":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["family"] == family:
                    result = sample.labels["result"]
                    counts[result] = counts.get(result, 0) + sample.value
    return counts


def _waits(server: RunningServer, family: str) -> tuple[float, float]:
    """(count, sum) of flowstate_rate_limit_wait_seconds for `family`."""
    found = {
        sample.name: sample.value
        for metric in server.server.metrics.registry.collect()
        if metric.name == "flowstate_rate_limit_wait_seconds"
        for sample in metric.samples
        if sample.labels.get("family") == family
    }
    return (
        found.get("flowstate_rate_limit_wait_seconds_count", 0.0),
        found.get("flowstate_rate_limit_wait_seconds_sum", 0.0),
    )


def _details(error: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds or None) of a refusal."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reason, delay = "", None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


async def _wait_until_shaped(server: RunningServer, family: str, count: int) -> None:
    """Bounded polling until `count` calls of `family` wait for their tokens."""
    for _ in range(_POLLS):
        if _requests(server, family).get("shaped", 0) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {count} shaped {family} calls: {_requests(server, family)}")


async def test_calls_over_the_rate_wait_their_turn_up_to_the_deficit_bound(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    minter = TokenMinter.random()
    noisy, quiet = _tenant("noisy"), _tenant("quiet")
    async with (
        serve_in_process(
            database_url,
            store=store,
            minter=minter,
            rate_limits={"read": Limit(rate=5, burst=1)},
            rate_limit_max_wait=1.0,
        ) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        request = pb.GetFlowDefinitionRequest(name="discovery")

        async def call(tenant: Tenant) -> grpc.aio.AioRpcError | None:
            try:
                await stub.GetFlowDefinition(request, metadata=minter.metadata(tenant))
            except grpc.aio.AioRpcError as error:
                return error
            return None

        flood = asyncio.gather(*(call(noisy) for _ in range(9)))
        await _wait_until_shaped(server, "read", 5)
        assert await call(quiet) is None  # another tenant's bucket: served while they wait
        results = await flood
        refused = [error for error in results if error is not None]
        # One token, then rate * max wait = 5 calls waiting 0.2, 0.4, ... 1.0 s; the other 3
        # refused with the time until a reservation within 1 s would fit (their token: 1.2 s).
        assert len(refused) == 3
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reason, delay = _details(error)
            assert reason == "RATE_LIMITED"
            assert delay == pytest.approx(0.2)
        assert _requests(server, "read") == {"admitted": 2, "shaped": 5, "limited": 3}
        count, total = _waits(server, "read")
        assert count == 5
        assert total == pytest.approx(0.2 + 0.4 + 0.6 + 0.8 + 1.0)


async def test_a_call_is_refused_when_its_deadline_ends_before_its_token(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    minter = TokenMinter.random()
    tenant = _tenant("deadline")
    async with (
        serve_in_process(
            database_url,
            store=store,
            minter=minter,
            rate_limits={"read": Limit(rate=0.1, burst=1)},  # the next token in 10 s
            rate_limit_max_wait=10.0,
        ) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        request = pb.GetFlowDefinitionRequest(name="discovery")
        await stub.GetFlowDefinition(request, metadata=minter.metadata(tenant))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetFlowDefinition(request, metadata=minter.metadata(tenant), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # at once, not at 5 s
        reason, delay = _details(caught.value)
        assert reason == "RATE_LIMITED"
        assert delay is not None
        # 10 s less what was left of its 5 s (gRPC's timeout header rounds it to a few ms)
        assert 4.9 <= delay < 10
        assert _requests(server, "read") == {"admitted": 1, "limited": 1}


async def test_a_drain_releases_the_calls_waiting_for_their_tokens(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    minter = TokenMinter.random()
    tenant = _tenant("drain")
    async with (
        serve_in_process(
            database_url,
            store=store,
            minter=minter,
            rate_limits={"read": Limit(rate=0.1, burst=1)},
            rate_limit_max_wait=10.0,
            grace_period=30.0,
        ) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        request = pb.GetFlowDefinitionRequest(name="discovery")
        await stub.GetFlowDefinition(request, metadata=minter.metadata(tenant))
        waiting = asyncio.ensure_future(
            stub.GetFlowDefinition(request, metadata=minter.metadata(tenant))
        )
        await _wait_until_shaped(server, "read", 1)  # its token is 10 s away
        await server.server.stop()
        # Held for its wait, it would have run and succeeded; released, it is told to retry.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await waiting
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _details(caught.value) == ("SERVER_SHUTTING_DOWN", 1.0)


async def test_stream_opens_are_shaped_like_unary_calls(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    minter = TokenMinter.random()
    tenant = _tenant("streams")
    async with (
        serve_in_process(
            database_url,
            store=store,
            minter=minter,
            rate_limits={"stream": Limit(rate=5, burst=1)},
            rate_limit_max_wait=0.2,  # one stream open may wait (0.2 s), no more
        ) as server,
        server.channel() as channel,
    ):
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        streams = [
            stub.WatchFlows(pb.WatchFlowsRequest(), metadata=minter.metadata(tenant))
            for _ in range(2)
        ]
        await _wait_until_shaped(server, "stream", 1)
        refused = stub.WatchFlows(pb.WatchFlowsRequest(), metadata=minter.metadata(tenant))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _details(caught.value) == ("RATE_LIMITED", 0.2)
        assert _requests(server, "stream") == {"admitted": 1, "shaped": 1, "limited": 1}
        for stream in streams:
            stream.cancel()
