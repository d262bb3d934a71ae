"""A tree stream (WatchFlow with children_depth) resumes across a kill -9 of the server.

A real `flowstate serve` streams a master flow's tree over gRPC while its children change; the
server is SIGKILLed in the middle of the stream, more children's changes commit while it is
down (a grandchild is created then), and a new server resumes the stream from the last cursor
the client holds: every change of every flow of the tree arrives exactly once, per flow in
version order. Changes are made through the store directly (they do not depend on the server).
"""

from __future__ import annotations

import asyncio
import signal

import grpc
import grpc.aio

from flowstate.core.commands import UpdatePhaseProgress
from flowstate.core.model import PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.testing import serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc

from .support import EVENT_TIMEOUT, Trees, ctx

IN_PROGRESS = PhaseState.IN_PROGRESS
REPORTS = 30


async def test_tree_stream_resumes_across_kill_9_losing_and_repeating_no_child_event(
    database_url: str, store: FlowStore, tenant: Tenant, trees: Trees
) -> None:
    top = await trees.top(prep=PhaseState.COMPLETED)
    mid = await trees.move(top, "m", IN_PROGRESS)
    leaf = await trees.move(top, "n", IN_PROGRESS)
    await trees.move(leaf, "a", IN_PROGRESS)

    async def report(count: int) -> None:
        for i in range(count):
            progress = (len(reported) + i + 1) / (2 * REPORTS + 2)
            await FlowService(store).mutate(tenant, leaf, UpdatePhaseProgress("a", progress), ctx())
        reported.extend(range(count))

    reported: list[int] = []
    received: list[pb.WatchFlowResponse] = []
    snapshot_versions: dict[str, int] = {}
    with serve_subprocess(database_url=database_url) as process:
        metadata = process.mint.metadata(tenant, scopes=("flows:read",))
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
            call = stub.WatchFlow(
                pb.WatchFlowRequest(flow_id=top, children_depth=2, keep_open=True),
                metadata=metadata,
            )
            writer = asyncio.create_task(report(REPORTS))
            try:
                async with asyncio.timeout(EVENT_TIMEOUT * 3):
                    async for response in call:
                        event = response.event
                        if event.HasField("snapshot"):
                            snapshot_versions[event.flow_id] = event.flow_version
                            continue
                        if event.HasField("change"):
                            received.append(response)
                        if sum(r.event.flow_id == leaf for r in received) >= REPORTS // 3:
                            break
                process.process.send_signal(signal.SIGKILL)  # while the writer still writes
                await writer
            finally:
                call.cancel()
        await asyncio.to_thread(process.process.wait, 30)
    assert set(snapshot_versions) == {top, mid, leaf}
    assert all(r.cursor for r in received)

    # While no server runs: more reports, and a grandchild is created (mid's x starts).
    await report(REPORTS)
    grandchild = await trees.move(mid, "x", IN_PROGRESS)
    await trees.move(grandchild, "a", IN_PROGRESS)
    flows = [top, mid, leaf, grandchild]
    expected = {
        (flow_id, version)
        for flow_id, version in await trees.history(*flows)
        if version > snapshot_versions.get(flow_id, 0)
    }

    with serve_subprocess(database_url=database_url) as process:
        metadata = process.mint.metadata(tenant, scopes=("flows:read",))
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
            call = stub.WatchFlow(
                pb.WatchFlowRequest(
                    flow_id=top, children_depth=2, keep_open=True, cursor=received[-1].cursor
                ),
                metadata=metadata,
            )
            seen = {(r.event.flow_id, r.event.flow_version) for r in received}
            try:
                async with asyncio.timeout(EVENT_TIMEOUT * 3):
                    async for response in call:
                        assert not response.event.HasField("snapshot")
                        if response.event.HasField("change"):
                            received.append(response)
                            seen.add((response.event.flow_id, response.event.flow_version))
                        if expected <= seen:
                            break
            finally:
                call.cancel()
        assert process.stop() == 0

    keys = [(r.event.flow_id, r.event.flow_version) for r in received]
    assert len(keys) == len(set(keys)), "a change was delivered twice"
    assert set(keys) == expected, "a change was lost (or one not of the tree was sent)"
    for flow_id in flows:
        versions = [v for f, v in keys if f == flow_id]
        assert versions == sorted(versions), flow_id
    relations = {r.event.flow_id: (r.relation, r.parent_flow_id) for r in received}
    assert relations[top] == (pb.WATCH_RELATION_SELF, "")
    assert relations[leaf] == (pb.WATCH_RELATION_DESCENDANT, top)
    assert relations[grandchild] == (pb.WATCH_RELATION_DESCENDANT, mid)
