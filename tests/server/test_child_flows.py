"""Child flows and cross-flow dependencies end to end through the real server (issue 21).

A master definition whose phases are whole child flows: children are created when their phase
starts and driven from the child side only; the parent phase follows (progress, COMPLETED,
FAILED with the child's error, CHILD_FLOW_CANCELLED); cancel cascades or abandons per phase;
retry starts a new child; LinkChildFlow; the limits; tenant isolation; external dependencies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from flowstate.core.model import Tenant
from flowstate.v1 import definition_pb2, errors_pb2, flow_pb2, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, failure, phase_states, refused, request_id

S = states_pb2
D = definition_pb2


def work(name: str = "child_work") -> D.FlowDefinition:
    """a -> b, the child definition."""
    return D.FlowDefinition(
        name=name,
        phases=[
            D.PhaseDefinition(name="a", weight=50, max_retries=2),
            D.PhaseDefinition(name="b", depends_on=["a"], weight=50),
        ],
    )


def child_phase(name: str, weight: int, **spec: Any) -> D.PhaseDefinition:
    spec.setdefault("definition_name", "child_work")
    return D.PhaseDefinition(
        name=name,
        depends_on=["prep"],
        weight=weight,
        max_retries=2,
        kind=D.PHASE_KIND_CHILD_FLOW,
        child_flow=D.ChildFlowSpec(**spec),
    )


def master(name: str = "master") -> D.FlowDefinition:
    """prep -> (left, right: child flows in parallel) -> finish."""
    return D.FlowDefinition(
        name=name,
        phases=[
            D.PhaseDefinition(name="prep", weight=10),
            child_phase("left", 40),
            child_phase("right", 40, on_parent_cancel=D.PARENT_CANCEL_POLICY_ABANDON),
            D.PhaseDefinition(name="finish", depends_on=["left", "right"], weight=10),
        ],
    )


async def setup(api: Api) -> Api:
    """Register the definitions in the test's tenant; the API (with definitions:write)."""
    admin = api.as_(scopes=("flows:read", "flows:write", "definitions:write"))
    for definition in (work(), master()):
        await admin.stub.CreateFlowDefinition(
            pb.CreateFlowDefinitionRequest(definition=definition, request_id=request_id()),
            metadata=admin.metadata,
        )
    return admin


def phase(flow: flow_pb2.Flow, name: str) -> flow_pb2.Phase:
    return next(p for p in flow.phases if p.name == name)


async def started_master(api: Api) -> tuple[flow_pb2.Flow, str, str]:
    """A master flow with prep done and both child phases started: (flow, left, right)."""
    parent = await api.create(definition_name="master")
    await api.complete(parent.flow_id, "prep")
    await api.move(parent.flow_id, "left", S.PHASE_STATE_IN_PROGRESS)
    both = (await api.move(parent.flow_id, "right", S.PHASE_STATE_IN_PROGRESS)).flow
    left, right = phase(both, "left").child_flow_id, phase(both, "right").child_flow_id
    assert left
    assert right
    assert left != right
    return both, left, right


async def test_two_parallel_children_driven_from_the_child_side_complete_the_parent(
    api: Api,
) -> None:
    api = await setup(api)
    parent, left, right = await started_master(api)
    assert parent.status == S.FLOW_STATUS_ACTIVE
    child = await api.get(left)
    assert (child.parent_flow_id, child.parent_phase) == (parent.flow_id, "left")
    assert child.definition_name == "child_work"
    assert child.status == S.FLOW_STATUS_INITIALIZED

    await api.move(left, "a", S.PHASE_STATE_IN_PROGRESS)  # child progress 15.0
    now = await api.get(parent.flow_id)
    assert phase(now, "left").state == S.PHASE_STATE_IN_PROGRESS
    assert phase(now, "left").progress == 0.15
    assert now.progress == 10 + 40 * (0.3 + 0.4 * 0.15) + 40 * 0.3

    await api.move(left, "a", S.PHASE_STATE_COMPLETED)
    await api.complete(left, "b")
    await api.complete(right, "a")
    await api.complete(right, "b")
    done = await api.get(parent.flow_id)
    assert phase(done, "left").state == S.PHASE_STATE_COMPLETED
    assert phase(done, "right").state == S.PHASE_STATE_COMPLETED
    assert done.progress == 90.0
    # The master's status is its own phases' (finish not started yet), never a child's.
    assert done.status == S.FLOW_STATUS_ACTIVE
    finished = await api.complete(parent.flow_id, "finish")
    assert finished.flow.status == S.FLOW_STATUS_COMPLETED

    history = await api.history(parent.flow_id)
    followed = [e for e in history if e.phase == "left" and e.user_id]
    assert followed[-1].to_state == S.PHASE_STATE_COMPLETED
    assert followed[-1].metadata["child_flow_id"] == left

    tree = await api.stub.GetFlow(
        pb.GetFlowRequest(flow_id=parent.flow_id, children_depth=2), metadata=api.metadata
    )
    assert sorted(f.flow_id for f in tree.descendants) == sorted([left, right])
    listed = await api.stub.ListFlows(
        pb.ListFlowsRequest(parent_flow_id=parent.flow_id), metadata=api.metadata
    )
    assert sorted(f.flow_id for f in listed.flows) == sorted([left, right])


async def test_a_child_failure_surfaces_on_the_parent_with_the_childs_error(api: Api) -> None:
    api = await setup(api)
    parent, left, _ = await started_master(api)
    await api.move(left, "a", S.PHASE_STATE_IN_PROGRESS)
    await api.move(
        left,
        "a",
        S.PHASE_STATE_FAILED,
        failure=failure(errors_pb2.ERROR_CODE_DATA_VALIDATION_FAILED, "bad rows"),
    )
    now = await api.get(parent.flow_id)
    failed = phase(now, "left")
    assert failed.state == S.PHASE_STATE_FAILED
    assert failed.error_context.error_code == errors_pb2.ERROR_CODE_DATA_VALIDATION_FAILED
    assert "bad rows" in failed.error_context.message
    assert left in failed.error_context.message
    assert failed.error_context.details["child_flow_id"] == left
    assert failed.error_context.details["child_phase"] == "a"
    assert not failed.error_context.retryable
    # right still runs: the master is in no terminal failure yet
    assert now.status != S.FLOW_STATUS_FAILED

    # The child recovers by its own retry: the parent phase follows it back.
    admin = api.as_(scopes=("flows:read", "flows:write", "flows:admin"))
    await admin.retry(left, "a", force=True)
    recovering = await api.get(parent.flow_id)
    assert phase(recovering, "left").state == S.PHASE_STATE_IN_PROGRESS


async def test_a_cancelled_child_fails_its_phase_and_a_retry_starts_a_new_child(
    api: Api,
) -> None:
    api = await setup(api)
    parent, left, _ = await started_master(api)
    await api.stub.CancelFlow(
        pb.CancelFlowRequest(flow_id=left, request_id=request_id()), metadata=api.metadata
    )
    now = await api.get(parent.flow_id)
    assert phase(now, "left").state == S.PHASE_STATE_FAILED
    assert phase(now, "left").error_context.error_code == errors_pb2.ERROR_CODE_CHILD_FLOW_CANCELLED
    assert phase(now, "left").error_context.retryable

    await api.retry(parent.flow_id, "left")  # FAILED -> RETRY_NEEDED
    restarted = (await api.retry(parent.flow_id, "left")).flow  # -> IN_PROGRESS, a new child
    new_child = phase(restarted, "left").child_flow_id
    assert phase(restarted, "left").state == S.PHASE_STATE_IN_PROGRESS
    assert new_child
    assert new_child != left
    assert phase(restarted, "left").retry_count == 1
    children = {
        e.metadata["child_flow_id"]
        for e in await api.history(parent.flow_id)
        if e.phase == "left" and "child_flow_id" in e.metadata
    }
    assert {left, new_child} <= children  # history keeps the old child's id
    await api.complete(new_child, "a")
    await api.complete(new_child, "b")
    assert phase(await api.get(parent.flow_id), "left").state == S.PHASE_STATE_COMPLETED


async def test_retry_of_a_failed_child_phase_cancels_the_failed_child(api: Api) -> None:
    api = await setup(api)
    parent, left, _ = await started_master(api)
    await api.move(left, "a", S.PHASE_STATE_IN_PROGRESS)
    await api.move(left, "a", S.PHASE_STATE_FAILED)
    await api.retry(parent.flow_id, "left")
    assert (await api.get(left)).status == S.FLOW_STATUS_CANCELLED
    assert phase(await api.get(parent.flow_id), "left").state == S.PHASE_STATE_RETRY_NEEDED


async def test_cancel_cascades_or_abandons_per_phase(api: Api) -> None:
    api = await setup(api)
    parent, left, right = await started_master(api)
    await api.move(right, "a", S.PHASE_STATE_IN_PROGRESS)
    cancelled = await api.stub.CancelFlow(
        pb.CancelFlowRequest(flow_id=parent.flow_id, request_id=request_id()),
        metadata=api.metadata,
    )
    assert cancelled.flow.status == S.FLOW_STATUS_CANCELLED
    assert (await api.get(left)).status == S.FLOW_STATUS_CANCELLED  # cascade
    abandoned = await api.get(right)
    assert abandoned.status == S.FLOW_STATUS_ACTIVE  # abandon: runs on
    await api.move(right, "a", S.PHASE_STATE_COMPLETED)  # and its parent ignores it
    assert (await api.get(parent.flow_id)).version == cancelled.flow.version


async def test_rollback_of_a_child_phase_cancels_its_active_child(api: Api) -> None:
    api = await setup(api)
    parent, left, right = await started_master(api)
    await api.move(left, "a", S.PHASE_STATE_IN_PROGRESS)
    await api.move(left, "a", S.PHASE_STATE_FAILED)
    rolled = await api.rollback(parent.flow_id, "left")
    assert phase(rolled.flow, "left").state == S.PHASE_STATE_ROLLED_BACK
    assert (await api.get(left)).status == S.FLOW_STATUS_CANCELLED
    # Rolling prep back cascades to the running right phase, whose child is cancelled too.
    await api.rollback(parent.flow_id, "prep")
    assert (await api.get(right)).status == S.FLOW_STATUS_CANCELLED


async def test_a_child_flow_phase_refuses_worker_reports(api: Api) -> None:
    api = await setup(api)
    parent, _, _ = await started_master(api)
    completed = await refused(api.move(parent.flow_id, "left", S.PHASE_STATE_COMPLETED))
    assert completed.code == grpc.StatusCode.FAILED_PRECONDITION
    assert completed.reason == "PHASE_FOLLOWS_CHILD_FLOW"
    progress = await refused(
        api.stub.UpdatePhaseProgress(
            pb.UpdatePhaseProgressRequest(
                flow_id=parent.flow_id, phase="left", progress=0.5, request_id=request_id()
            ),
            metadata=api.metadata,
        )
    )
    assert progress.reason == "PHASE_FOLLOWS_CHILD_FLOW"


async def link(api: Api, parent: str, phase_name: str, child: str) -> pb.LinkChildFlowResponse:
    return await api.stub.LinkChildFlow(
        pb.LinkChildFlowRequest(
            flow_id=parent, phase=phase_name, child_flow_id=child, request_id=request_id()
        ),
        metadata=api.metadata,
    )


async def test_link_child_flow_follows_an_existing_flow(api: Api, tenant: Tenant) -> None:
    api = await setup(api)
    parent = await api.create(definition_name="master")
    await api.complete(parent.flow_id, "prep")
    existing = await api.create(definition_name="child_work")
    await api.complete(existing.flow_id, "a")

    linked = await link(api, parent.flow_id, "left", existing.flow_id)
    assert phase(linked.flow, "left").child_flow_id == existing.flow_id
    assert phase(linked.flow, "left").progress == 0.5  # the child's 50.0 at once
    child = await api.get(existing.flow_id)
    assert (child.parent_flow_id, child.parent_phase) == (parent.flow_id, "left")
    await api.complete(existing.flow_id, "b")
    assert phase(await api.get(parent.flow_id), "left").state == S.PHASE_STATE_COMPLETED

    again = await refused(link(api, parent.flow_id, "right", existing.flow_id))
    assert again.reason == "CHILD_FLOW_NOT_LINKABLE"
    other_definition = await api.create(definition_name="master")
    wrong = await refused(link(api, parent.flow_id, "right", other_definition.flow_id))
    assert wrong.reason == "CHILD_FLOW_NOT_LINKABLE"
    # A flow cannot become its own ancestor: the parent under its own child's phase.
    cycle = await refused(link(api, other_definition.flow_id, "left", parent.flow_id))
    assert cycle.reason in ("CHILD_FLOW_NOT_LINKABLE", "PHASE_ORDER_VIOLATION")

    stranger = api.as_(tenant=Tenant(tenant.client_account_id + "-other", "e"))
    foreign = await stranger.create()
    hidden = await refused(link(api, parent.flow_id, "right", foreign.flow_id))
    assert hidden.code == grpc.StatusCode.NOT_FOUND


async def test_cycles_are_refused(api: Api) -> None:
    api = await setup(api)
    outer = await api.create(definition_name="master")
    await api.complete(outer.flow_id, "prep")
    inner = await api.create(definition_name="master")
    await api.complete(inner.flow_id, "prep")
    # master's child phases take child_work flows: a master can never be linked under one,
    # and a root linked under a flow is no longer a root, so no chain of links closes a loop.
    refusal = await refused(link(api, inner.flow_id, "left", outer.flow_id))
    assert refusal.reason == "CHILD_FLOW_NOT_LINKABLE"
    self_link = await refused(link(api, inner.flow_id, "left", inner.flow_id))
    assert self_link.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_depth_limit(api: Api) -> None:
    admin = api.as_(scopes=("flows:read", "flows:write", "definitions:write"))
    for name, child in (("nest_a", "nest_b"), ("nest_b", "nest_a")):
        await admin.stub.CreateFlowDefinition(
            pb.CreateFlowDefinitionRequest(
                definition=D.FlowDefinition(
                    name=name,
                    phases=[
                        D.PhaseDefinition(
                            name="inner",
                            weight=100,
                            kind=D.PHASE_KIND_CHILD_FLOW,
                            child_flow=D.ChildFlowSpec(definition_name=child),
                        )
                    ],
                ),
                request_id=request_id(),
            ),
            metadata=admin.metadata,
        )
    flow_id = (await api.create(definition_name="nest_a")).flow_id
    depth = 0
    while True:
        try:
            started = await api.move(flow_id, "inner", S.PHASE_STATE_IN_PROGRESS)
        except grpc.aio.AioRpcError:
            break
        flow_id = phase(started.flow, "inner").child_flow_id
        depth += 1
    assert depth == 5  # MAX_CHILD_FLOW_DEPTH
    refusal = await refused(api.move(flow_id, "inner", S.PHASE_STATE_IN_PROGRESS))
    assert refusal.reason == "CHILD_FLOW_LIMIT_EXCEEDED"
    assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_definition_validation_names_the_paths(api: Api) -> None:
    admin = api.as_(scopes=("flows:read", "flows:write", "definitions:write"))
    bad = D.FlowDefinition(
        name="bad_children",
        phases=[
            D.PhaseDefinition(
                name="x",
                weight=50,
                kind=D.PHASE_KIND_CHILD_FLOW,
                child_flow=D.ChildFlowSpec(definition_name="Bad Name", definition_version=-1),
            ),
            D.PhaseDefinition(
                name="y",
                weight=50,
                kind=D.PHASE_KIND_CHILD_FLOW,
                child_flow=D.ChildFlowSpec(definition_name="bad_children"),
            ),
        ],
    )
    refusal = await refused(
        admin.stub.CreateFlowDefinition(
            pb.CreateFlowDefinitionRequest(definition=bad, request_id=request_id()),
            metadata=admin.metadata,
        )
    )
    assert refusal.reason == "MALFORMED_REQUEST"
    assert {
        "phases[0].child_flow.definition",
        "phases[0].child_flow.version",
        "phases[1].child_flow.definition",
    } <= refusal.violated_fields


async def test_external_dependencies_order_and_tenant(api: Api, tenant: Tenant) -> None:
    upstream = await api.create()
    downstream = await api.create(
        external_dependencies=[
            flow_pb2.ExternalDependency(
                phase="data_import", flow_id=upstream.flow_id, flow_phase="field_mapping"
            )
        ]
    )
    assert downstream.external_dependencies[0].flow_id == upstream.flow_id
    blocked = await refused(api.move(downstream.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS))
    assert blocked.reason == "PHASE_ORDER_VIOLATION"
    assert blocked.flow_error is not None
    assert list(blocked.flow_error.blocking_phases) == [f"{upstream.flow_id}/field_mapping"]
    await api.complete(upstream.flow_id, "data_import")
    await api.complete(upstream.flow_id, "field_mapping")
    started = await api.move(downstream.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    assert phase_states(started.flow)["data_import"] == S.PHASE_STATE_IN_PROGRESS

    unknown_phase = await refused(
        api.create(
            external_dependencies=[
                flow_pb2.ExternalDependency(
                    phase="data_import", flow_id=upstream.flow_id, flow_phase="nope"
                )
            ]
        )
    )
    assert unknown_phase.reason == "INVALID_PHASE"
    stranger = api.as_(tenant=Tenant(tenant.client_account_id + "-x", "e"))
    foreign = await refused(
        stranger.create(
            external_dependencies=[
                flow_pb2.ExternalDependency(
                    phase="data_import", flow_id=upstream.flow_id, flow_phase="data_import"
                )
            ]
        )
    )
    assert foreign.code == grpc.StatusCode.NOT_FOUND


async def test_recovery_options_of_a_parent_include_its_childrens_each_executable(
    api: Api,
) -> None:
    api = await setup(api)
    parent, left, _ = await started_master(api)
    await api.move(left, "a", S.PHASE_STATE_IN_PROGRESS)
    await api.move(left, "a", S.PHASE_STATE_FAILED)
    found = await api.stub.GetRecoveryOptions(
        pb.GetRecoveryOptionsRequest(flow_id=parent.flow_id), metadata=api.metadata
    )
    own = [o for o in found.options if o.flow_id == parent.flow_id]
    of_child = [o for o in found.options if o.flow_id == left]
    assert own
    assert of_child
    assert found.options[: len(own)] == own  # the parent's own first
    retry = next(o for o in of_child if o.WhichOneof("request") == "retry" and o.allowed)
    assert (retry.parent_phase, retry.retry.flow_id, retry.phase) == ("left", left, "a")
    request = pb.RetryRequest()
    request.CopyFrom(retry.retry)
    request.request_id = request_id()
    await api.stub.Retry(request, metadata=api.metadata)  # FAILED -> RETRY_NEEDED on the child
    now = await api.get(parent.flow_id)
    assert phase(now, "left").state == S.PHASE_STATE_IN_PROGRESS  # the child is recovering


async def test_concurrent_child_reports_and_a_parent_cancel_settle_consistently(
    api: Api,
) -> None:
    """Lock order under load (docs/child_flows.md, "Atomicity"): children report progress
    while the parent is cancelled; every call ends (no deadlock surfaces), and the tree is
    consistent afterwards."""
    api = await setup(api)
    parent, left, right = await started_master(api)
    for child in (left, right):
        await api.move(child, "a", S.PHASE_STATE_IN_PROGRESS)

    async def report(child: str, step: int) -> str:
        try:
            await api.stub.UpdatePhaseProgress(
                pb.UpdatePhaseProgressRequest(
                    flow_id=child, phase="a", progress=step / 20, request_id=request_id()
                ),
                metadata=api.metadata,
            )
        except grpc.aio.AioRpcError as error:
            return (await refused(_raise(error))).reason
        return "OK"

    async def cancel() -> str:
        await api.stub.CancelFlow(
            pb.CancelFlowRequest(flow_id=parent.flow_id, request_id=request_id()),
            metadata=api.metadata,
        )
        return "CANCELLED"

    calls = [report(child, step) for step in range(1, 20) for child in (left, right)]
    calls.insert(len(calls) // 2, cancel())
    outcomes = await asyncio.gather(*calls)
    assert set(outcomes) <= {"OK", "CANCELLED", "FLOW_TERMINAL"}, outcomes
    assert "CANCELLED" in outcomes
    assert (await api.get(parent.flow_id)).status == S.FLOW_STATUS_CANCELLED
    assert (await api.get(left)).status == S.FLOW_STATUS_CANCELLED  # cascade
    assert (await api.get(right)).status != S.FLOW_STATUS_CANCELLED  # abandon


async def _raise(error: Exception) -> None:
    raise error


async def test_watch_flow_with_dependencies_names_the_waiting_phase_on_the_wire(
    api: Api,
) -> None:
    upstream = await api.create()
    downstream = await api.create(
        external_dependencies=[
            flow_pb2.ExternalDependency(
                phase="data_import", flow_id=upstream.flow_id, flow_phase="data_import"
            )
        ]
    )
    call = api.stub.WatchFlow(
        pb.WatchFlowRequest(flow_id=downstream.flow_id, include_dependencies=True),
        metadata=api.metadata,
    )
    stream = aiter(call)
    own, other = await anext(stream), await anext(stream)
    assert (own.event.flow_id, own.relation) == (downstream.flow_id, pb.WATCH_RELATION_SELF)
    assert own.cursor == ""  # only the last snapshot event carries the cursor
    assert (other.event.flow_id, other.relation) == (
        upstream.flow_id,
        pb.WATCH_RELATION_DEPENDENCY,
    )
    assert other.cursor
    waiting = pb.WaitingPhase(
        flow_id=downstream.flow_id, phase="data_import", flow_phase="data_import"
    )
    assert list(other.waiting) == [waiting]
    await api.complete(upstream.flow_id, "data_import")
    started, completed = await anext(stream), await anext(stream)
    for woken in (started, completed):
        assert woken.relation == pb.WATCH_RELATION_DEPENDENCY
        assert woken.event.change.phase == "data_import"
        assert list(woken.waiting) == [waiting]
        assert woken.cursor
    assert completed.event.change.to_state == S.PHASE_STATE_COMPLETED
    call.cancel()


async def test_watch_flow_tree_requests_are_checked(api: Api) -> None:
    flow = await api.create()

    async def refusal(request: pb.WatchFlowRequest) -> set[str]:
        call = api.stub.WatchFlow(request, metadata=api.metadata)
        failed = await refused(anext(aiter(call)))
        assert failed.code == grpc.StatusCode.INVALID_ARGUMENT, failed
        return failed.violated_fields

    assert await refusal(pb.WatchFlowRequest(flow_id=flow.flow_id, children_depth=6)) == {
        "children_depth"
    }
    assert await refusal(pb.WatchFlowRequest(flow_id=flow.flow_id, children_depth=-1)) == {
        "children_depth"
    }
    assert await refusal(
        pb.WatchFlowRequest(flow_id=flow.flow_id, children_depth=1, after_version=1)
    ) == {"after_version"}
    assert await refusal(pb.WatchFlowRequest(flow_id=flow.flow_id, cursor="abc")) == {"cursor"}
    call = api.stub.WatchFlow(
        pb.WatchFlowRequest(flow_id=flow.flow_id, children_depth=1, cursor="not-a-cursor"),
        metadata=api.metadata,
    )
    bad_cursor = await refused(anext(aiter(call)))
    assert bad_cursor.reason == "MALFORMED_REQUEST"
    assert "cursor" in bad_cursor.message
    # A plain stream is unchanged: no cursor, no relation.
    plain = api.stub.WatchFlow(pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=api.metadata)
    first = await anext(aiter(plain))
    assert (first.cursor, first.relation) == ("", pb.WATCH_RELATION_UNSPECIFIED)
    plain.cancel()
