"""Helpers of the server tests: a tenant-bound API client, a decoder of rich errors and a
rate-limited server of a test's own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import make_url

from flowstate.core.model import Tenant
from flowstate.server.ratelimit import Limit
from flowstate.storage import FlowStore
from flowstate.testing import RunningServer, TokenMinter, serve_in_process
from flowstate.v1 import errors_pb2, flow_pb2, flow_service_pb2_grpc, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

S = states_pb2
PHASES = (
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
)
"""The phases of the built-in discovery definition, in order."""


def request_id() -> str:
    """A fresh idempotency key."""
    return f"req-{uuid.uuid4().hex}"


def failure(
    code: int = errors_pb2.ERROR_CODE_PHASE_EXECUTION_FAILED, message: str = "boom"
) -> errors_pb2.PhaseFailure:
    """A phase failure report."""
    return errors_pb2.PhaseFailure(error_code=code, message=message)  # type: ignore[arg-type]


@dataclass
class RpcFailure:
    """A refused call, decoded: status code, message, trailers and every rich detail."""

    code: grpc.StatusCode
    message: str
    trailing: dict[str, str]
    error_info: error_details_pb2.ErrorInfo | None = None
    flow_error: errors_pb2.FlowError | None = None
    retry_info: error_details_pb2.RetryInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None

    @property
    def reason(self) -> str:
        """The ErrorInfo reason (the error code), or ""."""
        return self.error_info.reason if self.error_info is not None else ""

    @property
    def retry_delay(self) -> float | None:
        """The RetryInfo delay in seconds, or None without one."""
        if self.retry_info is None:
            return None
        return self.retry_info.retry_delay.ToTimedelta().total_seconds()

    @property
    def violated_fields(self) -> set[str]:
        """Fields named by the BadRequest detail."""
        if self.bad_request is None:
            return set()
        return {v.field for v in self.bad_request.field_violations}


def decode_failure(error: grpc.aio.AioRpcError | grpc.Call) -> RpcFailure:
    """Every detail of a failed call (async or sync)."""
    trailing = {k: v for k, v in (error.trailing_metadata() or ()) if isinstance(v, str)}
    result = RpcFailure(error.code(), error.details() or "", trailing)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # AioRpcError works too
    for packed in status.details if status is not None else ():
        for name, message_type in (
            ("error_info", error_details_pb2.ErrorInfo),
            ("flow_error", errors_pb2.FlowError),
            ("retry_info", error_details_pb2.RetryInfo),
            ("bad_request", error_details_pb2.BadRequest),
        ):
            if packed.Is(message_type.DESCRIPTOR):
                message = message_type()
                packed.Unpack(message)
                setattr(result, name, message)
    return result


async def refused(call: Awaitable[Any]) -> RpcFailure:
    """Await `call`, which must fail; its decoded failure."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return decode_failure(error)
    raise AssertionError("the call succeeded but was expected to fail")


@dataclass
class Api:
    """The FlowStateService as one tenant's user sees it, with request ids filled in."""

    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub
    mint: TokenMinter
    tenant: Tenant
    scopes: tuple[str, ...] = ("flows:read", "flows:write")
    user: str = "tester"
    metadata: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.metadata = self.mint.metadata(self.tenant, user=self.user, scopes=self.scopes)

    def as_(self, *, tenant: Tenant | None = None, scopes: Iterable[str] | None = None) -> Api:
        """The same API for another tenant and/or other scopes."""
        return Api(
            self.stub,
            self.mint,
            tenant or self.tenant,
            tuple(scopes) if scopes is not None else self.scopes,
            self.user,
        )

    async def create(self, **fields: Any) -> flow_pb2.Flow:
        """Create a discovery flow; the flow."""
        fields.setdefault("request_id", request_id())
        response = await self.stub.CreateFlow(
            pb.CreateFlowRequest(**fields), metadata=self.metadata
        )
        return response.flow

    async def move(
        self, flow_id: str, phase: str, state: int, **fields: Any
    ) -> pb.TransitionPhaseResponse:
        """TransitionPhase (with a failure report when the target needs one and none is given)."""
        fields.setdefault("request_id", request_id())
        if state in (S.PHASE_STATE_FAILED, S.PHASE_STATE_RETRY_NEEDED):
            fields.setdefault("failure", failure())
        return await self.stub.TransitionPhase(
            pb.TransitionPhaseRequest(flow_id=flow_id, phase=phase, target_state=state, **fields),  # type: ignore[arg-type]
            metadata=self.metadata,
        )

    async def complete(self, flow_id: str, phase: str) -> pb.TransitionPhaseResponse:
        """Start and complete a phase."""
        await self.move(flow_id, phase, S.PHASE_STATE_IN_PROGRESS)
        return await self.move(flow_id, phase, S.PHASE_STATE_COMPLETED)

    async def get(self, flow_id: str) -> flow_pb2.Flow:
        """GetFlow."""
        return (
            await self.stub.GetFlow(pb.GetFlowRequest(flow_id=flow_id), metadata=self.metadata)
        ).flow

    async def retry(self, flow_id: str, phase: str, **fields: Any) -> pb.RetryResponse:
        """Retry."""
        fields.setdefault("request_id", request_id())
        return await self.stub.Retry(
            pb.RetryRequest(flow_id=flow_id, phase=phase, **fields), metadata=self.metadata
        )

    async def rollback(self, flow_id: str, phase: str, **fields: Any) -> pb.RollbackResponse:
        """Rollback."""
        fields.setdefault("request_id", request_id())
        return await self.stub.Rollback(
            pb.RollbackRequest(flow_id=flow_id, phase=phase, **fields), metadata=self.metadata
        )

    async def history(self, flow_id: str) -> list[Any]:
        """Every history entry of a flow."""
        response = await self.stub.ListFlowHistory(
            pb.ListFlowHistoryRequest(flow_id=flow_id, page_size=1000), metadata=self.metadata
        )
        return list(response.history_entries)


@contextlib.asynccontextmanager
async def _unix_proxy(socket_path: str) -> AsyncIterator[tuple[int, Callable[[], None]]]:
    """A TCP proxy to a unix socket; the callable cuts every connection and stops listening."""
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(socket_path)
        writers.extend((client_w, server_w))
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]

    def cut() -> None:
        listener.close()
        for writer in writers:
            writer.transport.abort()

    try:
        yield port, cut
    finally:
        cut()


@contextlib.asynccontextmanager
async def proxied_server(
    database_url: str, tenant: Tenant, *, interceptors: Sequence[Any] = ()
) -> AsyncIterator[tuple[Api, Callable[[], None]]]:
    """A server of its own whose database connections go through a proxy the test can cut.

    Yields the tenant's API on that server (its channel with the client `interceptors`) and
    ``cut()``, which makes the database unreachable. Needs the embedded PostgreSQL (a unix
    socket to put the proxy in front of).
    """
    url = make_url(database_url)
    host = url.query.get("host")
    if not isinstance(host, str) or not host.startswith("/"):
        pytest.skip("needs the embedded (unix socket) PostgreSQL to put a proxy in front of it")
    socket_path = str(Path(host) / f".s.PGSQL.{url.port or 5432}")
    async with _unix_proxy(socket_path) as (port, cut):
        proxied = url.difference_update_query(["host"]).set(host="127.0.0.1", port=port)
        proxied_url = proxied.render_as_string(hide_password=False)
        store = await FlowStore.open(proxied_url, connect_timeout=2.0, pool_timeout=2.0)
        try:
            async with (
                serve_in_process(proxied_url, store=store) as server,
                grpc.aio.insecure_channel(server.address, interceptors=interceptors) as channel,
            ):
                stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
                yield Api(stub, server.mint, tenant), cut
        finally:
            await store.close()


@contextlib.contextmanager
def sync_stub(address: str) -> Iterator[flow_service_pb2_grpc.FlowStateServiceStub]:
    """A blocking stub on a channel of its own, e.g. to a `serve_subprocess` server."""
    with grpc.insecure_channel(address) as channel:
        yield flow_service_pb2_grpc.FlowStateServiceStub(channel)


def new_flow(
    stub: flow_service_pb2_grpc.FlowStateServiceStub, metadata: Iterable[tuple[str, str]]
) -> flow_pb2.Flow:
    """A new discovery flow, through a blocking stub (`sync_stub`)."""
    return stub.CreateFlow(
        pb.CreateFlowRequest(request_id=request_id()), metadata=tuple(metadata)
    ).flow


def phase_states(flow: flow_pb2.Flow) -> dict[str, int]:
    """Phase name -> state number."""
    return {p.name: p.state for p in flow.phases}


def struct(**values: Any) -> struct_pb2.Struct:
    """A Struct of `values`."""
    message = struct_pb2.Struct()
    message.update(values)
    return message


def unique_tenant(account: str, name: str) -> Tenant:
    """A tenant of `account` no other test or run shares (`name` and a random suffix)."""
    return Tenant(account, f"{name}-{uuid.uuid4().hex[:8]}")


class Clock:
    """A clock the test moves by hand (a `RateLimiter`'s, injected)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


_SHAPED_POLLS = 500  # bounded polling: at most this many 10 ms looks


@dataclass
class LimitedServer:
    """A server of a test's own with the rate limits it set, a stub on it, and its rate metrics.

    The rate-limit tests start one each (their buckets and counters must start empty, which the
    session's server cannot give), call GetFlowDefinition as tenants (the cheapest call of the
    ``read`` family) and read what the limiter counted.
    """

    running: RunningServer
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub

    def metadata(self, tenant: Tenant) -> tuple[tuple[str, str], ...]:
        """Call metadata with a fresh token of `tenant` (no particular scopes)."""
        return self.running.mint.metadata(tenant)

    async def read(self, tenant: Tenant, *, rpc_timeout: float | None = None) -> None:
        """GetFlowDefinition("discovery") as `tenant`, with a gRPC timeout; raises the refusal."""
        await self.stub.GetFlowDefinition(
            pb.GetFlowDefinitionRequest(name="discovery"),
            metadata=self.metadata(tenant),
            timeout=rpc_timeout,
        )

    async def outcome(self, tenant: Tenant) -> grpc.aio.AioRpcError | None:
        """`read` as `tenant`: None when served, else its refusal."""
        try:
            await self.read(tenant)
        except grpc.aio.AioRpcError as error:
            return error
        return None

    async def flood(self, tenant: Tenant, calls: int) -> list[grpc.aio.AioRpcError]:
        """`calls` concurrent `read`s as `tenant`; the refusals among them, in call order."""
        results = await asyncio.gather(*(self.outcome(tenant) for _ in range(calls)))
        return [error for error in results if error is not None]

    def requests(self, family: str) -> dict[str, float]:
        """flowstate_tenant_requests_total of `family` by result (every tenant)."""
        counts: dict[str, float] = {}
        for metric in self.running.server.metrics.registry.collect():
            if metric.name == "flowstate_tenant_requests":
                for sample in metric.samples:
                    if sample.name.endswith("_total") and sample.labels["family"] == family:
                        result = sample.labels["result"]
                        counts[result] = counts.get(result, 0) + sample.value
        return counts

    def waits(self, family: str) -> tuple[float, float]:
        """(count, sum) of flowstate_rate_limit_wait_seconds for `family`."""
        found = {
            sample.name: sample.value
            for metric in self.running.server.metrics.registry.collect()
            if metric.name == "flowstate_rate_limit_wait_seconds"
            for sample in metric.samples
            if sample.labels.get("family") == family
        }
        return (
            found.get("flowstate_rate_limit_wait_seconds_count", 0.0),
            found.get("flowstate_rate_limit_wait_seconds_sum", 0.0),
        )

    async def wait_until_shaped(self, family: str, count: int) -> None:
        """Bounded polling until `count` calls of `family` wait for their tokens."""
        for _ in range(_SHAPED_POLLS):
            if self.requests(family).get("shaped", 0) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {count} shaped {family} calls: {self.requests(family)}")


@contextlib.asynccontextmanager
async def limited_server(
    database_url: str,
    store: FlowStore,
    limits: Mapping[str, Limit],
    *,
    max_wait: float,
    **settings: Any,
) -> AsyncIterator[LimitedServer]:
    """A `LimitedServer` with `limits` and the shaping `max_wait` (0: refuse at once).

    `settings` are further `ServerSettings` fields (e.g. ``grace_period``).
    """
    async with (
        serve_in_process(
            database_url,
            store=store,
            rate_limits=dict(limits),
            rate_limit_max_wait=max_wait,
            **settings,
        ) as running,
        running.channel() as channel,
    ):
        yield LimitedServer(running, flow_service_pb2_grpc.FlowStateServiceStub(channel))
