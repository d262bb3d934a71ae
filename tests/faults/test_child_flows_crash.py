"""kill -9 between a child's change and its parent's update: no parent phase is left behind.

A child's change and the update of its parent phase are one transaction (docs/child_flows.md,
"Atomicity"). Under a load of child progress reports and completions, the server is SIGKILLed;
after a restart, every parent phase equals what its child's state says (state and in-phase
progress), whichever statement the kill interrupted. The unanswered requests are then sent
again with their request ids and the children driven to the end: every parent completes its
child phases, nothing stuck.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import grpc
import grpc.aio

from flowstate.core.model import Tenant
from flowstate.testing import ServerProcess, serve_subprocess
from flowstate.v1 import definition_pb2, flow_pb2, flow_service_pb2_grpc, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Metadata, request_id, stub_for

S = states_pb2
D = definition_pb2
MASTERS = 4
REPORTS = 40
SCOPES = ("flows:read", "flows:write", "definitions:write")


@dataclass
class Sent:
    """One request to a child, and whether it was acknowledged."""

    method: str
    request: object
    ok: bool = False


@dataclass
class Ledger:
    sent: list[Sent] = field(default_factory=list)


async def _setup(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata
) -> list[tuple[str, list[str]]]:
    for definition in (
        D.FlowDefinition(
            name="crash_child",
            phases=[D.PhaseDefinition(name="work", weight=100)],
        ),
        D.FlowDefinition(
            name="crash_master",
            phases=[
                D.PhaseDefinition(
                    name=name,
                    weight=50,
                    kind=D.PHASE_KIND_CHILD_FLOW,
                    child_flow=D.ChildFlowSpec(definition_name="crash_child"),
                )
                for name in ("left", "right")
            ],
        ),
    ):
        await stub.CreateFlowDefinition(
            pb.CreateFlowDefinitionRequest(definition=definition, request_id=request_id()),
            metadata=metadata,
        )
    masters = []
    for _ in range(MASTERS):
        master = (
            await stub.CreateFlow(
                pb.CreateFlowRequest(definition_name="crash_master", request_id=request_id()),
                metadata=metadata,
            )
        ).flow
        children = []
        for phase in ("left", "right"):
            started = await stub.TransitionPhase(
                pb.TransitionPhaseRequest(
                    flow_id=master.flow_id,
                    phase=phase,
                    target_state=S.PHASE_STATE_IN_PROGRESS,
                    request_id=request_id(),
                ),
                metadata=metadata,
            )
            children.append(next(p.child_flow_id for p in started.flow.phases if p.name == phase))
        masters.append((master.flow_id, children))
    return masters


def _child_requests(child: str) -> list[Sent]:
    """Start, many progress reports, complete: each one also changes the parent."""
    requests = [
        Sent(
            "TransitionPhase",
            pb.TransitionPhaseRequest(
                flow_id=child,
                phase="work",
                target_state=S.PHASE_STATE_IN_PROGRESS,
                request_id=request_id(),
            ),
        )
    ]
    requests += [
        Sent(
            "UpdatePhaseProgress",
            pb.UpdatePhaseProgressRequest(
                flow_id=child, phase="work", progress=i / REPORTS, request_id=request_id()
            ),
        )
        for i in range(1, REPORTS)
    ]
    requests.append(
        Sent(
            "TransitionPhase",
            pb.TransitionPhaseRequest(
                flow_id=child,
                phase="work",
                target_state=S.PHASE_STATE_COMPLETED,
                request_id=request_id(),
            ),
        )
    )
    return requests


async def _send(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata, sent: Sent
) -> bool:
    try:
        await getattr(stub, sent.method)(sent.request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError:
        return False
    sent.ok = True
    return True


async def _drive_until_killed(
    process: ServerProcess, metadata: Metadata, plans: list[list[Sent]]
) -> None:
    async with grpc.aio.insecure_channel(process.address) as channel:
        stub = stub_for(channel)

        async def drive(plan: list[Sent]) -> None:
            for sent in plan:
                if not await _send(stub, metadata, sent):
                    return

        drivers = [asyncio.create_task(drive(plan)) for plan in plans]
        for _ in range(400):  # bounded: until about a third of the reports were acknowledged
            done = sum(s.ok for plan in plans for s in plan)
            if done >= len(plans) * REPORTS // 3:
                break
            await asyncio.sleep(0.02)
        process.process.send_signal(signal.SIGKILL)
        await asyncio.gather(*drivers)
    await asyncio.to_thread(process.process.wait, 30)


def _phase(flow: flow_pb2.Flow, name: str) -> flow_pb2.Phase:
    return next(p for p in flow.phases if p.name == name)


async def _assert_parents_follow(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
    metadata: Metadata,
    masters: list[tuple[str, list[str]]],
) -> int:
    """Every parent phase mirrors its child; the number of completed children."""
    completed = 0
    for master_id, children in masters:
        master = (await stub.GetFlow(pb.GetFlowRequest(flow_id=master_id), metadata=metadata)).flow
        for phase_name, child_id in zip(("left", "right"), children, strict=True):
            child = (
                await stub.GetFlow(pb.GetFlowRequest(flow_id=child_id), metadata=metadata)
            ).flow
            phase = _phase(master, phase_name)
            assert phase.child_flow_id == child_id
            if child.status == S.FLOW_STATUS_COMPLETED:
                assert phase.state == S.PHASE_STATE_COMPLETED, (master_id, phase_name)
                completed += 1
            else:
                assert phase.state == S.PHASE_STATE_IN_PROGRESS, (master_id, phase_name)
                assert phase.progress == child.progress / 100, (phase.progress, child.progress)
    return completed


async def test_kill_9_between_child_and_parent_leaves_no_parent_phase_behind(
    database_url: str, tenant: Tenant
) -> None:
    with serve_subprocess(database_url=database_url) as process:
        metadata = process.mint.metadata(tenant, scopes=SCOPES)
        async with grpc.aio.insecure_channel(process.address) as channel:
            masters = await _setup(stub_for(channel), metadata)
        plans = [_child_requests(child) for _, children in masters for child in children]
        await _drive_until_killed(process, metadata, plans)
    acknowledged = sum(s.ok for plan in plans for s in plan)
    assert acknowledged >= len(plans) * REPORTS // 3  # the load really ran
    assert acknowledged < sum(len(plan) for plan in plans)  # and the kill cut it short

    with serve_subprocess(database_url=database_url) as process:
        metadata = process.mint.metadata(tenant, scopes=SCOPES)
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = stub_for(channel)
            await _assert_parents_follow(stub, metadata, masters)
            for plan in plans:  # the rest, unanswered ones again with their request ids
                for sent in plan:
                    if not sent.ok:
                        assert await _send(stub, metadata, sent), sent
            assert await _assert_parents_follow(stub, metadata, masters) == len(plans)
        assert process.stop() == 0
