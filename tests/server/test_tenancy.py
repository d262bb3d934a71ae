"""Cross-tenant isolation on every RPC: another tenant's flow is indistinguishable from none.

Tenant A owns a flow in a state where every RPC would succeed for A. Tenant B (same account,
another engagement: the closest neighbour) calls every RPC on it and gets exactly what it gets
for a flow id that does not exist: NOT_FOUND / FLOW_NOT_FOUND with the same message shape. A's
flow is unchanged afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from flowstate.core.model import Tenant
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, RpcFailure, S, failure, refused, request_id

Call = Callable[[Api, str], Awaitable[Any]]


def _mutation(method: str, request_type: type[Any], **fields: Any) -> Call:
    async def call(api: Api, flow_id: str) -> Any:
        request = request_type(flow_id=flow_id, request_id=request_id(), **fields)
        return await getattr(api.stub, method)(request, metadata=api.metadata)

    return call


def _read(method: str, request_type: type[Any], **fields: Any) -> Call:
    async def call(api: Api, flow_id: str) -> Any:
        return await getattr(api.stub, method)(
            request_type(flow_id=flow_id, **fields), metadata=api.metadata
        )

    return call


async def _watch(api: Api, flow_id: str) -> Any:
    async for response in api.stub.WatchFlow(
        pb.WatchFlowRequest(flow_id=flow_id), metadata=api.metadata
    ):
        return response
    return None


CALLS: dict[str, Call] = {
    "GetFlow": _read("GetFlow", pb.GetFlowRequest),
    "ListFlowHistory": _read("ListFlowHistory", pb.ListFlowHistoryRequest),
    "GetRecoveryOptions": _read("GetRecoveryOptions", pb.GetRecoveryOptionsRequest),
    "ValidateTransition": _read(
        "ValidateTransition",
        pb.ValidateTransitionRequest,
        phase_transition=pb.PhaseTransition(phase="data_import", to_state=S.PHASE_STATE_FAILED),
    ),
    "TransitionPhase": _mutation(
        "TransitionPhase",
        pb.TransitionPhaseRequest,
        phase="data_import",
        target_state=S.PHASE_STATE_FAILED,
        failure=failure(),
    ),
    "UpdatePhaseProgress": _mutation(
        "UpdatePhaseProgress", pb.UpdatePhaseProgressRequest, phase="data_import", progress=0.5
    ),
    "Rollback": _mutation("Rollback", pb.RollbackRequest, phase="data_import"),
    "Retry": _mutation("Retry", pb.RetryRequest, phase="data_import"),
    "PauseFlow": _mutation("PauseFlow", pb.PauseFlowRequest),
    "ResumeFlow": _mutation("ResumeFlow", pb.ResumeFlowRequest),
    "CancelFlow": _mutation("CancelFlow", pb.CancelFlowRequest),
    "WatchFlow": _watch,
}


def _shape(found: RpcFailure, flow_id: str) -> tuple[Any, ...]:
    """What a caller sees of a refusal, with the flow id it asked about blanked out."""
    assert found.flow_error is not None
    assert found.error_info is not None
    metadata = {k: v for k, v in found.error_info.metadata.items() if k != "correlation_id"}
    return (
        found.code,
        found.reason,
        found.message.replace(flow_id, "<id>"),
        {k: v.replace(flow_id, "<id>") for k, v in metadata.items()},
        found.flow_error.retry_allowed,
    )


@pytest.mark.parametrize("rpc", list(CALLS))
async def test_another_tenants_flow_is_not_found(api: Api, rpc: str) -> None:
    owner = api
    neighbour = api.as_(
        tenant=Tenant(api.tenant.client_account_id, f"{api.tenant.engagement_id}-other"),
        scopes=["flows:admin"],
    )
    fid = (await owner.create()).flow_id
    await owner.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    before = await owner.get(fid)

    theirs = await refused(CALLS[rpc](neighbour, fid))
    missing_id = str(uuid.uuid4())
    missing = await refused(CALLS[rpc](neighbour, missing_id))
    assert theirs.code == grpc.StatusCode.NOT_FOUND
    assert theirs.reason == "FLOW_NOT_FOUND"
    assert _shape(theirs, fid) == _shape(missing, missing_id)
    assert await owner.get(fid) == before


async def test_listing_and_history_never_show_another_tenants_flows(api: Api) -> None:
    neighbour = api.as_(tenant=Tenant(f"{api.tenant.client_account_id}-x", "e"))
    fid = (await api.create()).flow_id
    listed = await neighbour.stub.ListFlows(pb.ListFlowsRequest(), metadata=neighbour.metadata)
    assert fid not in {f.flow_id for f in listed.flows}
    flows = await neighbour.stub.ListFlows(
        pb.ListFlowsRequest(statuses=[S.FLOW_STATUS_INITIALIZED]), metadata=neighbour.metadata
    )
    assert fid not in {f.flow_id for f in flows.flows}


async def test_the_tenant_comes_from_the_token_not_the_request(api: Api) -> None:
    # Requests carry no tenant fields at all; whatever the token names is the owner.
    created = await api.create()
    assert (created.client_account_id, created.engagement_id) == (
        api.tenant.client_account_id,
        api.tenant.engagement_id,
    )
    assert "client_account_id" not in pb.CreateFlowRequest.DESCRIPTOR.fields_by_name
