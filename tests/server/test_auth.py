"""Authentication and scopes over the wire; health and reflection need no token."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer, TokenMinter
from flowstate.v1 import errors_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, S, failure, refused, request_id


def _metadata(header: str | None) -> tuple[tuple[str, str], ...]:
    return () if header is None else (("authorization", header),)


@pytest.mark.parametrize(
    "credential",
    ["missing", "not-bearer", "garbage", "expired", "forged", "wrong-audience", "wrong-issuer"],
)
async def test_bad_credentials_are_unauthenticated(
    server: RunningServer, api: Api, credential: str
) -> None:
    mint = server.mint
    tenant = api.tenant
    headers = {
        "missing": None,
        "not-bearer": "Token abc",
        "garbage": "Bearer abc.def.ghi",
        "expired": f"Bearer {mint(tenant, ttl=timedelta(seconds=1), now=time.time() - 60)}",
        "forged": f"Bearer {TokenMinter.random()(tenant)}",
        "wrong-audience": f"Bearer {TokenMinter(mint.key, audience='other')(tenant)}",
        "wrong-issuer": f"Bearer {TokenMinter(mint.key, issuer='other')(tenant)}",
    }
    found = await refused(
        api.stub.GetFlow(
            pb.GetFlowRequest(flow_id=str(uuid.uuid4())), metadata=_metadata(headers[credential])
        )
    )
    assert found.code == grpc.StatusCode.UNAUTHENTICATED
    assert found.reason == "UNAUTHENTICATED"


async def test_unauthenticated_mutations_change_nothing(server: RunningServer, api: Api) -> None:
    fid = (await api.create()).flow_id
    forged = TokenMinter.random().metadata(api.tenant, scopes=["flows:admin"])
    found = await refused(
        api.stub.TransitionPhase(
            pb.TransitionPhaseRequest(
                flow_id=fid,
                phase="data_import",
                target_state=S.PHASE_STATE_IN_PROGRESS,
                request_id=request_id(),
            ),
            metadata=forged,
        )
    )
    assert found.code == grpc.StatusCode.UNAUTHENTICATED
    assert (await api.get(fid)).version == 1


async def test_reads_need_flows_read(api: Api) -> None:
    fid = (await api.create()).flow_id
    nobody = api.as_(scopes=["openid"])
    found = await refused(nobody.get(fid))
    assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    reader = api.as_(scopes=["flows:read"])
    assert (await reader.get(fid)).flow_id == fid


@pytest.mark.parametrize(
    "rpc", ["CreateFlow", "TransitionPhase", "Rollback", "Retry", "PauseFlow", "CancelFlow"]
)
async def test_mutations_need_flows_write(api: Api, rpc: str) -> None:
    fid = (await api.create()).flow_id
    reader = api.as_(scopes=["flows:read"])
    requests = {
        "CreateFlow": pb.CreateFlowRequest(request_id=request_id()),
        "TransitionPhase": pb.TransitionPhaseRequest(
            flow_id=fid,
            phase="data_import",
            target_state=S.PHASE_STATE_IN_PROGRESS,
            request_id=request_id(),
        ),
        "Rollback": pb.RollbackRequest(flow_id=fid, phase="data_import", request_id=request_id()),
        "Retry": pb.RetryRequest(flow_id=fid, phase="data_import", request_id=request_id()),
        "PauseFlow": pb.PauseFlowRequest(flow_id=fid, request_id=request_id()),
        "CancelFlow": pb.CancelFlowRequest(flow_id=fid, request_id=request_id()),
    }
    found = await refused(getattr(reader.stub, rpc)(requests[rpc], metadata=reader.metadata))
    assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert found.error_info is not None
    assert found.error_info.metadata["required_scope"] == "flows:write"
    assert (await api.get(fid)).version == 1


async def test_forced_retry_needs_flows_admin(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    bad_data = failure(errors_pb2.ERROR_CODE_DATA_VALIDATION_FAILED, "schema mismatch")
    await api.move(fid, "data_import", S.PHASE_STATE_FAILED, failure=bad_data)

    denied = await refused(api.retry(fid, "data_import", force=True))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert denied.error_info is not None
    assert denied.error_info.metadata["required_scope"] == "flows:admin"

    admin = api.as_(scopes=["flows:admin"])
    forced = await admin.retry(fid, "data_import", force=True)
    assert forced.flow.phases[0].state == S.PHASE_STATE_RETRY_NEEDED
    assert dict(forced.history_entries[0].metadata) == {"forced": True}


async def test_health_and_reflection_need_no_token(server: RunningServer) -> None:
    async with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "flowstate.v1.FlowStateService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))  # type: ignore[attr-defined]
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_tenant_claims_are_exact(server: RunningServer, api: Api) -> None:
    fid = (await api.create()).flow_id
    # Same account, engagement differing only in case: another tenant.
    shouted = Tenant(api.tenant.client_account_id, api.tenant.engagement_id.upper())
    found = await refused(api.as_(tenant=shouted).get(fid))
    assert found.code == grpc.StatusCode.NOT_FOUND
