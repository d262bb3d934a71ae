"""WatchFlow / WatchFlows through real grpc.aio with the generated stubs.

The session's in-process server for the RPC behaviour; `flowstate serve` subprocesses for
fan-out across two server processes on one database and for SIGTERM ending streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from flowstate.core.model import Tenant
from flowstate.testing import ServerProcess, serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc, states_pb2

from .support import Api, decode_failure, request_id

EVENT_TIMEOUT = 15.0


async def _next(stream: AsyncIterator[Any]) -> Any:
    """The next response that is not a heartbeat (bounded)."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while True:
            response = await anext(stream)
            if response.event.WhichOneof("kind") != "heartbeat":
                return response


async def _progress(api: Api, flow_id: str, value: float) -> int:
    response = await api.stub.UpdatePhaseProgress(
        pb.UpdatePhaseProgressRequest(
            request_id=request_id(), flow_id=flow_id, phase="data_import", progress=value
        ),
        metadata=api.metadata,
    )
    return response.flow.version


async def test_watch_flow_snapshot_then_changes_then_resume(api: Api) -> None:
    flow = await api.create()
    call = api.stub.WatchFlow(pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=api.metadata)
    stream = aiter(call)
    first = await _next(stream)
    assert first.event.WhichOneof("kind") == "snapshot"
    assert (first.event.flow_id, first.event.flow_version) == (flow.flow_id, 1)

    await api.move(flow.flow_id, "data_import", states_pb2.PHASE_STATE_IN_PROGRESS)
    await _progress(api, flow.flow_id, 0.5)
    changes = [await _next(stream), await _next(stream)]
    assert [c.event.flow_version for c in changes] == [2, 3]
    assert changes[0].event.change.to_state == states_pb2.PHASE_STATE_IN_PROGRESS
    call.cancel()

    resumed = api.stub.WatchFlow(
        pb.WatchFlowRequest(flow_id=flow.flow_id, after_version=1), metadata=api.metadata
    )
    replay = aiter(resumed)
    assert [(await _next(replay)).event.flow_version for _ in range(2)] == [2, 3]
    resumed.cancel()


async def test_watch_flow_of_another_tenant_is_not_found(api: Api, tenant: Tenant) -> None:
    flow = await api.create()
    stranger = api.as_(tenant=Tenant(tenant.client_account_id, tenant.engagement_id + "-x"))
    call = stranger.stub.WatchFlow(
        pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=stranger.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _next(aiter(call))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert decode_failure(raised.value).reason == "FLOW_NOT_FOUND"


async def test_watch_flow_after_version_ahead_is_invalid_argument(api: Api) -> None:
    flow = await api.create()
    call = api.stub.WatchFlow(
        pb.WatchFlowRequest(flow_id=flow.flow_id, after_version=7), metadata=api.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _next(aiter(call))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert decode_failure(raised.value).reason == "MALFORMED_REQUEST"


async def test_watch_flows_resumes_from_the_cursor_without_gap_or_duplicate(api: Api) -> None:
    flows = [await api.create() for _ in range(2)]
    call = api.stub.WatchFlows(pb.WatchFlowsRequest(), metadata=api.metadata)
    stream = aiter(call)
    snapshots = [await _next(stream) for _ in flows]
    cursor = snapshots[-1].cursor
    assert cursor
    assert {s.event.flow_id for s in snapshots} == {f.flow_id for f in flows}

    for flow in flows:
        await api.move(flow.flow_id, "data_import", states_pb2.PHASE_STATE_IN_PROGRESS)
    first = await _next(stream)
    call.cancel()
    for value in (0.25, 0.5):
        await _progress(api, flows[0].flow_id, value)

    resumed = api.stub.WatchFlows(pb.WatchFlowsRequest(cursor=first.cursor), metadata=api.metadata)
    rest = aiter(resumed)
    seen = [(first.event.flow_id, first.event.flow_version)]
    seen += [((r := await _next(rest)).event.flow_id, r.event.flow_version) for _ in range(3)]
    assert sorted(seen) == sorted(
        [(flows[0].flow_id, 2), (flows[1].flow_id, 2), (flows[0].flow_id, 3), (flows[0].flow_id, 4)]
    )
    resumed.cancel()


def _api_of(process: ServerProcess, channel: grpc.aio.Channel, tenant: Tenant) -> Api:
    return Api(flow_service_pb2_grpc.FlowStateServiceStub(channel), process.mint, tenant)


@pytest.mark.slow
async def test_a_change_through_one_server_reaches_a_watcher_on_another(
    database_url: str, tenant: Tenant
) -> None:
    with (
        serve_subprocess(database_url=database_url) as writer_process,
        serve_subprocess(database_url=database_url) as watcher_process,
    ):
        async with (
            grpc.aio.insecure_channel(writer_process.address) as writer_channel,
            grpc.aio.insecure_channel(watcher_process.address) as watcher_channel,
        ):
            writer = _api_of(writer_process, writer_channel, tenant)
            watcher = _api_of(watcher_process, watcher_channel, tenant)
            flow = await writer.create()
            one = watcher.stub.WatchFlow(
                pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=watcher.metadata
            )
            every = watcher.stub.WatchFlows(pb.WatchFlowsRequest(), metadata=watcher.metadata)
            one_stream, every_stream = aiter(one), aiter(every)
            assert (await _next(one_stream)).event.flow_version == 1
            assert (await _next(every_stream)).event.flow_id == flow.flow_id

            await writer.move(flow.flow_id, "data_import", states_pb2.PHASE_STATE_IN_PROGRESS)
            assert (await _next(one_stream)).event.flow_version == 2
            change = await _next(every_stream)
            assert (change.event.flow_id, change.event.flow_version) == (flow.flow_id, 2)
            one.cancel()
            every.cancel()


@pytest.mark.slow
async def test_sigterm_ends_open_streams_with_unavailable(
    database_url: str, tenant: Tenant
) -> None:
    with serve_subprocess(database_url=database_url) as process:
        async with grpc.aio.insecure_channel(process.address) as channel:
            api = _api_of(process, channel, tenant)
            flow = await api.create()
            one = api.stub.WatchFlow(
                pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=api.metadata
            )
            every = api.stub.WatchFlows(pb.WatchFlowsRequest(), metadata=api.metadata)
            streams = [aiter(one), aiter(every)]
            for stream in streams:
                await _next(stream)
            exit_code = asyncio.ensure_future(asyncio.to_thread(process.stop))
            for stream in streams:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await _next(stream)
                assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
                assert decode_failure(raised.value).reason == "SERVER_SHUTTING_DOWN"
            assert await exit_code == 0
