"""Malformed requests: INVALID_ARGUMENT / MALFORMED_REQUEST with BadRequest, nothing changed.

Every case is sent against a flow with one phase running. The refusal names the bad field in a
`google.rpc.BadRequest`, and the flow's version and history are unchanged afterwards. With the
database cut off the same requests are still refused as malformed: validation runs before the
store is ever called.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from flowstate.core.model import Tenant
from flowstate.v1 import errors_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, S, failure, proxied_server, refused, request_id, struct

UUID = "0b6f8a52-3b3c-4a8e-9d51-6f3f3a3b2c10"
BIG = "x" * 20_000


def _transition(fid: str, **fields: Any) -> pb.TransitionPhaseRequest:
    values: dict[str, Any] = {
        "flow_id": fid,
        "phase": "data_import",
        "target_state": S.PHASE_STATE_COMPLETED,
        "request_id": request_id(),
    }
    values.update(fields)
    return pb.TransitionPhaseRequest(**values)


Build = Callable[[str], Any]

CASES: dict[str, tuple[str, Build, str]] = {
    # ids
    "flow id empty": ("GetFlow", lambda f: pb.GetFlowRequest(flow_id=""), "flow_id"),
    "flow id not a uuid": ("GetFlow", lambda f: pb.GetFlowRequest(flow_id="42"), "flow_id"),
    "flow id braces": ("GetFlow", lambda f: pb.GetFlowRequest(flow_id=f"{{{f}}}"), "flow_id"),
    "flow id with NUL": (
        "GetFlow",
        lambda f: pb.GetFlowRequest(flow_id=f[:-1] + "\x00"),
        "flow_id",
    ),
    "request id missing": (
        "TransitionPhase",
        lambda f: _transition(f, request_id=""),
        "request_id",
    ),
    "request id too long": (
        "TransitionPhase",
        lambda f: _transition(f, request_id="r" * 129),
        "request_id",
    ),
    "request id not printable": (
        "TransitionPhase",
        lambda f: _transition(f, request_id="a\nb"),
        "request_id",
    ),
    "request id with NUL": (
        "PauseFlow",
        lambda f: pb.PauseFlowRequest(flow_id=f, request_id="a\x00b"),
        "request_id",
    ),
    # enums
    "target state unspecified": (
        "TransitionPhase",
        lambda f: _transition(f, target_state=S.PHASE_STATE_UNSPECIFIED),
        "target_state",
    ),
    "target state unknown": (
        "TransitionPhase",
        lambda f: _transition(f, target_state=99),
        "target_state",
    ),
    "failure code unspecified": (
        "TransitionPhase",
        lambda f: _transition(
            f, target_state=S.PHASE_STATE_FAILED, failure=errors_pb2.PhaseFailure(message="x")
        ),
        "failure.error_code",
    ),
    "failure with a success target": (
        "TransitionPhase",
        lambda f: _transition(f, failure=failure()),
        "failure",
    ),
    "status filter unspecified": (
        "ListFlows",
        lambda f: pb.ListFlowsRequest(statuses=[S.FLOW_STATUS_UNSPECIFIED]),
        "statuses[0]",
    ),
    "phase filter without states": (
        "ListFlows",
        lambda f: pb.ListFlowsRequest(phase_states=[pb.PhaseStateFilter(phase="data_import")]),
        "phase_states[0].states",
    ),
    # text
    "phase empty": ("TransitionPhase", lambda f: _transition(f, phase=""), "phase"),
    "phase with NUL": ("TransitionPhase", lambda f: _transition(f, phase="data\x00"), "phase"),
    "reason too long": ("TransitionPhase", lambda f: _transition(f, reason="r" * 1025), "reason"),
    "reason with NUL": (
        "CancelFlow",
        lambda f: pb.CancelFlowRequest(flow_id=f, request_id=request_id(), reason="a\x00"),
        "reason",
    ),
    "metadata too big": (
        "TransitionPhase",
        lambda f: _transition(f, metadata=struct(blob=BIG)),
        "metadata",
    ),
    "metadata with NUL": (
        "TransitionPhase",
        lambda f: _transition(f, metadata=struct(note="a\x00b")),
        "metadata",
    ),
    "metadata with NaN": (
        "TransitionPhase",
        lambda f: _transition(f, metadata=struct(score=math.nan)),
        "metadata",
    ),
    "failure details too big": (
        "TransitionPhase",
        lambda f: _transition(
            f,
            target_state=S.PHASE_STATE_FAILED,
            failure=errors_pb2.PhaseFailure(
                error_code=errors_pb2.ERROR_CODE_AGENT_TIMEOUT, details=struct(log=BIG)
            ),
        ),
        "failure.details",
    ),
    "display name too long": (
        "CreateFlow",
        lambda f: pb.CreateFlowRequest(request_id=request_id(), display_name="d" * 257),
        "display_name",
    ),
    "too many labels": (
        "CreateFlow",
        lambda f: pb.CreateFlowRequest(
            request_id=request_id(), labels={f"k{i}": "v" for i in range(65)}
        ),
        "labels",
    ),
    "label with NUL": (
        "CreateFlow",
        lambda f: pb.CreateFlowRequest(request_id=request_id(), labels={"k": "\x00"}),
        "labels[k]",
    ),
    "create with a bad flow id": (
        "CreateFlow",
        lambda f: pb.CreateFlowRequest(request_id=request_id(), flow_id="nope"),
        "flow_id",
    ),
    # numbers
    "progress NaN": (
        "UpdatePhaseProgress",
        lambda f: pb.UpdatePhaseProgressRequest(
            flow_id=f, phase="data_import", progress=math.nan, request_id=request_id()
        ),
        "progress",
    ),
    "progress above 1": (
        "UpdatePhaseProgress",
        lambda f: pb.UpdatePhaseProgressRequest(
            flow_id=f, phase="data_import", progress=1.5, request_id=request_id()
        ),
        "progress",
    ),
    "progress below 0": (
        "UpdatePhaseProgress",
        lambda f: pb.UpdatePhaseProgressRequest(
            flow_id=f, phase="data_import", progress=-0.1, request_id=request_id()
        ),
        "progress",
    ),
    "progress infinite": (
        "UpdatePhaseProgress",
        lambda f: pb.UpdatePhaseProgressRequest(
            flow_id=f, phase="data_import", progress=math.inf, request_id=request_id()
        ),
        "progress",
    ),
    "expected version 0": (
        "TransitionPhase",
        lambda f: _transition(f, expected_version=0),
        "expected_version",
    ),
    "page size negative": ("ListFlows", lambda f: pb.ListFlowsRequest(page_size=-1), "page_size"),
    # A page size above the maximum is lowered, not refused (test_reliability.py).
    "history page size negative": (
        "ListFlowHistory",
        lambda f: pb.ListFlowHistoryRequest(flow_id=f, page_size=-1),
        "page_size",
    ),
    "history after negative version": (
        "ListFlowHistory",
        lambda f: pb.ListFlowHistoryRequest(flow_id=f, after_version=-1),
        "after_version",
    ),
    "definition version negative": (
        "GetFlowDefinition",
        lambda f: pb.GetFlowDefinitionRequest(name="discovery", version=-1),
        "version",
    ),
    # shape
    "validate without a transition": (
        "ValidateTransition",
        lambda f: pb.ValidateTransitionRequest(flow_id=f),
        "transition",
    ),
    "validate without a source state": (
        "ValidateTransition",
        lambda f: pb.ValidateTransitionRequest(
            phase_transition=pb.PhaseTransition(
                phase="data_import", to_state=S.PHASE_STATE_IN_PROGRESS
            )
        ),
        "phase_transition.from_state",
    ),
    "validate with an unspecified status": (
        "ValidateTransition",
        lambda f: pb.ValidateTransitionRequest(
            flow_id=f, flow_transition=pb.FlowTransition(to_status=S.FLOW_STATUS_UNSPECIFIED)
        ),
        "flow_transition.to_status",
    ),
    "rollback without a phase": (
        "Rollback",
        lambda f: pb.RollbackRequest(flow_id=f, request_id=request_id()),
        "phase",
    ),
    "retry without a phase": (
        "Retry",
        lambda f: pb.RetryRequest(flow_id=f, request_id=request_id()),
        "phase",
    ),
}


async def _call(api: Api, rpc: str, request: Any) -> Any:
    return await getattr(api.stub, rpc)(request, metadata=api.metadata)


@pytest.mark.parametrize("case", list(CASES))
async def test_malformed_request_is_refused_and_changes_nothing(api: Api, case: str) -> None:
    rpc, build, field = CASES[case]
    fid = (await api.create()).flow_id
    running = await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)

    found = await refused(_call(api, rpc, build(fid)))
    assert (found.code, found.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert field in found.violated_fields, found.violated_fields
    assert found.flow_error is not None
    assert not found.flow_error.retry_allowed
    assert await api.get(fid) == running.flow
    assert len(await api.history(fid)) == 2


async def test_every_violation_is_reported_at_once(api: Api) -> None:
    found = await refused(
        api.stub.TransitionPhase(
            pb.TransitionPhaseRequest(
                flow_id="x", phase="", target_state=S.PHASE_STATE_UNSPECIFIED
            ),
            metadata=api.metadata,
        )
    )
    assert found.violated_fields == {"flow_id", "phase", "target_state", "request_id"}


async def test_strings_at_the_limits_are_accepted(api: Api) -> None:
    flow = await api.create(
        request_id="r" * 128, display_name="d" * 256, labels={f"k{i}": "v" * 256 for i in range(64)}
    )
    response = await api.move(
        flow.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS, reason="r" * 1024
    )
    assert response.flow.version == 2


async def test_malformed_requests_never_reach_the_database(
    database_url: str, tenant: Tenant
) -> None:
    async with proxied_server(database_url, tenant) as (api, cut):
        fid = (await api.create()).flow_id
        cut()
        for rpc, build, _ in CASES.values():
            found = await refused(_call(api, rpc, build(fid)))
            assert found.code == grpc.StatusCode.INVALID_ARGUMENT, (rpc, found.message)
        # A table-only ValidateTransition needs no database either.
        answer = await api.stub.ValidateTransition(
            pb.ValidateTransitionRequest(
                phase_transition=pb.PhaseTransition(
                    phase="data_import",
                    from_state=S.PHASE_STATE_NOT_STARTED,
                    to_state=S.PHASE_STATE_IN_PROGRESS,
                )
            ),
            metadata=api.metadata,
        )
        assert answer.allowed
        unavailable = await refused(api.get(fid))
        assert unavailable.code == grpc.StatusCode.UNAVAILABLE
