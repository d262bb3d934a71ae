"""Shaping: a call that finds its tenant's bucket empty waits for a reserved token (within the max
wait, its deadline and the deficit bound ``rate * max_wait``), else it is refused with RetryInfo;
a drain releases the waiting calls.

The limiter's clock is injected (`Clock`): in the server tests it stands still, so no token comes
back while a test runs and every wait and delay is exact, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

import grpc
import grpc.aio
import pytest

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
from flowstate.v1 import flow_service_pb2 as pb

from .support import Clock, decode_failure, limited_server, unique_tenant

A = Tenant("acct", "noisy")


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
    return unique_tenant("acct-shaping", name)


def _details(error: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds or None) of a refusal."""
    failure = decode_failure(error)
    return failure.reason, failure.retry_delay


async def test_calls_over_the_rate_wait_their_turn_up_to_the_deficit_bound(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    noisy, quiet = _tenant("noisy"), _tenant("quiet")
    async with limited_server(
        database_url, store, {"read": Limit(rate=5, burst=1)}, max_wait=1.0
    ) as server:
        flood = asyncio.create_task(server.flood(noisy, 9))
        await server.wait_until_shaped("read", 5)
        assert (
            await server.outcome(quiet) is None
        )  # another tenant's bucket: served while they wait
        refused = await flood
        # One token, then rate * max wait = 5 calls waiting 0.2, 0.4, ... 1.0 s; the other 3
        # refused with the time until a reservation within 1 s would fit (their token: 1.2 s).
        assert len(refused) == 3
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reason, delay = _details(error)
            assert reason == "RATE_LIMITED"
            assert delay == pytest.approx(0.2)
        assert server.requests("read") == {"admitted": 2, "shaped": 5, "limited": 3}
        count, total = server.waits("read")
        assert count == 5
        assert total == pytest.approx(0.2 + 0.4 + 0.6 + 0.8 + 1.0)


async def test_a_call_is_refused_when_its_deadline_ends_before_its_token(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    tenant = _tenant("deadline")
    async with limited_server(
        database_url,
        store,
        {"read": Limit(rate=0.1, burst=1)},  # the next token in 10 s
        max_wait=10.0,
    ) as server:
        await server.read(tenant)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.read(tenant, rpc_timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # at once, not at 5 s
        reason, delay = _details(caught.value)
        assert reason == "RATE_LIMITED"
        assert delay is not None
        # 10 s less what was left of its 5 s (gRPC's timeout header rounds it to a few ms)
        assert 4.9 <= delay < 10
        assert server.requests("read") == {"admitted": 1, "limited": 1}


async def test_a_drain_releases_the_calls_waiting_for_their_tokens(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    tenant = _tenant("drain")
    async with limited_server(
        database_url, store, {"read": Limit(rate=0.1, burst=1)}, max_wait=10.0, grace_period=30.0
    ) as server:
        await server.read(tenant)
        waiting = asyncio.create_task(server.read(tenant))
        await server.wait_until_shaped("read", 1)  # its token is 10 s away
        await server.running.server.stop()
        # Held for its wait, it would have run and succeeded; released, it is told to retry.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await waiting
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _details(caught.value) == ("SERVER_SHUTTING_DOWN", 1.0)


async def test_stream_opens_are_shaped_like_unary_calls(
    database_url: str, store: FlowStore, clock: Clock
) -> None:
    tenant = _tenant("streams")
    async with limited_server(
        database_url,
        store,
        {"stream": Limit(rate=5, burst=1)},
        max_wait=0.2,  # one stream open may wait (0.2 s), no more
    ) as server:
        streams = [
            server.stub.WatchFlows(pb.WatchFlowsRequest(), metadata=server.metadata(tenant))
            for _ in range(2)
        ]
        await server.wait_until_shaped("stream", 1)
        refused = server.stub.WatchFlows(pb.WatchFlowsRequest(), metadata=server.metadata(tenant))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _details(caught.value) == ("RATE_LIMITED", 0.2)
        assert server.requests("stream") == {"admitted": 1, "shaped": 1, "limited": 1}
        for stream in streams:
            stream.cancel()
