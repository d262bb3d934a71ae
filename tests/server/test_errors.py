"""Every error code of DESIGN.md section 4 over the wire: gRPC status, ErrorInfo, FlowError.

Each case provokes one refusal on a real server and checks the status code, the ErrorInfo
reason and domain, the FlowError (code, correlation id matching the trailer) and RetryInfo
exactly for the retryable ones. INTERNAL and UNAVAILABLE are provoked in test-only ways: a
corrupted row, a failing servicer method, a database proxy that goes away.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from flowstate.core.model import Tenant
from flowstate.server.auth import Authenticator, Scope
from flowstate.server.metrics import Metrics
from flowstate.server.rpc import Call, RpcSupport, unary
from flowstate.server.servicer import FlowStateServicer
from flowstate.storage import FlowStore
from flowstate.testing import TokenMinter
from flowstate.v1 import errors_pb2, flow_service_pb2_grpc
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, RpcFailure, S, failure, proxied_server, refused, request_id

Case = Callable[[Api], Awaitable[RpcFailure]]


async def _invalid_phase(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    return await refused(api.move(fid, "no_such_phase", S.PHASE_STATE_IN_PROGRESS))


async def _malformed(api: Api) -> RpcFailure:
    return await refused(api.get("not-a-uuid"))


async def _request_id_reused(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    key = request_id()
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS, request_id=key)
    return await refused(api.move(fid, "data_import", S.PHASE_STATE_COMPLETED, request_id=key))


async def _invalid_phase_transition(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    return await refused(api.move(fid, "data_import", S.PHASE_STATE_COMPLETED))


async def _invalid_flow_transition(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    return await refused(
        api.stub.ResumeFlow(
            pb.ResumeFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
        )
    )


async def _phase_order_violation(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    return await refused(api.move(fid, "field_mapping", S.PHASE_STATE_IN_PROGRESS))


async def _dependent_phases_active(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    await api.complete(fid, "data_import")
    await api.move(fid, "field_mapping", S.PHASE_STATE_IN_PROGRESS)
    return await refused(api.rollback(fid, "data_import", cascade=False))


async def _flow_paused(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    await api.stub.PauseFlow(
        pb.PauseFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
    )
    return await refused(api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS))


async def _flow_terminal(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    await api.stub.CancelFlow(
        pb.CancelFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
    )
    return await refused(api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS))


async def _max_retries_exceeded(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    for _ in range(3):
        await api.move(fid, "data_import", S.PHASE_STATE_RETRY_NEEDED)
        await api.retry(fid, "data_import")
    await api.move(fid, "data_import", S.PHASE_STATE_RETRY_NEEDED)
    return await refused(api.retry(fid, "data_import"))


async def _retry_not_allowed(api: Api) -> RpcFailure:
    fid = (await api.create()).flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    bad_data = failure(errors_pb2.ERROR_CODE_DATA_VALIDATION_FAILED, "bad rows")
    await api.move(fid, "data_import", S.PHASE_STATE_FAILED, failure=bad_data)
    return await refused(api.retry(fid, "data_import"))


async def _version_conflict(api: Api) -> RpcFailure:
    flow = await api.create()
    await api.move(flow.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    return await refused(
        api.move(
            flow.flow_id, "data_import", S.PHASE_STATE_COMPLETED, expected_version=flow.version
        )
    )


async def _flow_not_found(api: Api) -> RpcFailure:
    return await refused(api.get(str(uuid.uuid4())))


async def _unauthenticated(api: Api) -> RpcFailure:
    return await refused(api.stub.GetFlow(pb.GetFlowRequest(flow_id=str(uuid.uuid4()))))


async def _permission_denied(api: Api) -> RpcFailure:
    return await refused(api.as_(scopes=["flows:read"]).create())


CASES: dict[str, tuple[Case, grpc.StatusCode]] = {
    "INVALID_PHASE": (_invalid_phase, grpc.StatusCode.INVALID_ARGUMENT),
    "MALFORMED_REQUEST": (_malformed, grpc.StatusCode.INVALID_ARGUMENT),
    "REQUEST_ID_REUSED": (_request_id_reused, grpc.StatusCode.INVALID_ARGUMENT),
    "INVALID_PHASE_TRANSITION": (_invalid_phase_transition, grpc.StatusCode.FAILED_PRECONDITION),
    "INVALID_FLOW_TRANSITION": (_invalid_flow_transition, grpc.StatusCode.FAILED_PRECONDITION),
    "PHASE_ORDER_VIOLATION": (_phase_order_violation, grpc.StatusCode.FAILED_PRECONDITION),
    "DEPENDENT_PHASES_ACTIVE": (_dependent_phases_active, grpc.StatusCode.FAILED_PRECONDITION),
    "FLOW_PAUSED": (_flow_paused, grpc.StatusCode.FAILED_PRECONDITION),
    "FLOW_TERMINAL": (_flow_terminal, grpc.StatusCode.FAILED_PRECONDITION),
    "MAX_RETRIES_EXCEEDED": (_max_retries_exceeded, grpc.StatusCode.FAILED_PRECONDITION),
    "RETRY_NOT_ALLOWED": (_retry_not_allowed, grpc.StatusCode.FAILED_PRECONDITION),
    "VERSION_CONFLICT": (_version_conflict, grpc.StatusCode.ABORTED),
    "FLOW_NOT_FOUND": (_flow_not_found, grpc.StatusCode.NOT_FOUND),
    "UNAUTHENTICATED": (_unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    "PERMISSION_DENIED": (_permission_denied, grpc.StatusCode.PERMISSION_DENIED),
}


def assert_rich(found: RpcFailure, code: grpc.StatusCode, reason: str) -> None:
    """The status code, ErrorInfo, FlowError and correlation id of a refusal."""
    assert found.code == code, found.message
    assert found.error_info is not None
    assert (found.error_info.reason, found.error_info.domain) == (reason, "flowstate.v1")
    assert found.flow_error is not None
    assert errors_pb2.ErrorCode.Name(found.flow_error.error_code) == f"ERROR_CODE_{reason}"
    assert found.flow_error.message == found.message
    assert found.flow_error.HasField("timestamp")
    correlation_id = found.trailing["x-correlation-id"]
    assert found.flow_error.correlation_id == correlation_id
    assert found.error_info.metadata["correlation_id"] == correlation_id
    assert (found.retry_info is not None) is found.flow_error.retry_allowed


@pytest.mark.parametrize("reason", list(CASES))
async def test_error_code_over_the_wire(api: Api, reason: str) -> None:
    provoke, code = CASES[reason]
    assert_rich(await provoke(api), code, reason)


async def test_refusals_carry_their_typed_details(api: Api) -> None:
    transition = await _invalid_phase_transition(api)
    assert transition.flow_error is not None
    assert transition.flow_error.phase == "data_import"
    assert list(transition.flow_error.valid_transitions) == [S.PHASE_STATE_IN_PROGRESS]
    assert transition.error_info is not None
    assert transition.error_info.metadata["valid_transitions"] == "in_progress"

    order = await _phase_order_violation(api)
    assert order.flow_error is not None
    assert list(order.flow_error.blocking_phases) == ["data_import"]

    conflict = await _version_conflict(api)
    assert conflict.flow_error is not None
    assert conflict.flow_error.current_version == 2

    not_allowed = await _retry_not_allowed(api)
    assert not_allowed.flow_error is not None
    assert "force_retry" in not_allowed.flow_error.recovery
    assert not_allowed.flow_error.attempts_remaining == 3

    flow = await _invalid_flow_transition(api)
    assert flow.flow_error is not None
    assert S.FLOW_STATUS_PAUSED in flow.flow_error.valid_flow_transitions


async def test_a_refused_request_id_reuse_changes_nothing(api: Api) -> None:
    fid = (await api.create()).flow_id
    key = request_id()
    first = await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS, request_id=key)
    reused = await refused(
        api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS, request_id=key, reason="other")
    )
    assert reused.reason == "REQUEST_ID_REUSED"
    assert await api.get(fid) == first.flow
    # Another flow, same key: also a different payload.
    other = (await api.create()).flow_id
    elsewhere = await refused(
        api.move(other, "data_import", S.PHASE_STATE_IN_PROGRESS, request_id=key)
    )
    assert elsewhere.reason == "REQUEST_ID_REUSED"


async def test_racing_writers_with_expected_version_one_wins(api: Api) -> None:
    flow = await api.create()
    results = await asyncio.gather(
        *(
            api.move(
                flow.flow_id,
                "data_import",
                S.PHASE_STATE_IN_PROGRESS,
                expected_version=flow.version,
                reason=f"writer {i}",
            )
            for i in range(5)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 4
    assert all(e.code() == grpc.StatusCode.ABORTED for e in losers)
    assert (await api.get(flow.flow_id)).version == 2


async def test_internal_error_from_a_corrupted_row_hides_its_cause(
    api: Api, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    fid = (await api.create()).flow_id
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:  # test-only: break the row behind the server's back
            await conn.execute(
                text("UPDATE flows SET phase_details = '\"garbage\"' WHERE id = :id"),
                {"id": fid},
            )
    finally:
        await engine.dispose()
    with caplog.at_level(logging.ERROR):
        found = await refused(api.get(fid))
    assert_rich(found, grpc.StatusCode.INTERNAL, "INTERNAL")
    correlation_id = found.trailing["x-correlation-id"]
    assert found.message == f"internal error (correlation id {correlation_id})"
    assert found.flow_error is not None
    assert not found.flow_error.details.fields
    assert "garbage" not in str(found)
    assert "phase_details" not in str(found)
    assert any(correlation_id in r.getMessage() for r in caplog.records)


class _ExplodingServicer(FlowStateServicer):
    """Test-only: GetFlow hits an unexpected exception with a secret in its text."""

    @unary(Scope.READ)
    async def GetFlow(  # noqa: N802 - the proto's method name
        self, request: pb.GetFlowRequest, call: Call
    ) -> pb.GetFlowResponse:
        raise RuntimeError("SELECT secret FROM flows -- password=hunter2")


async def test_unexpected_exception_is_internal_with_only_a_correlation_id(
    store: FlowStore, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    minter = TokenMinter.random()
    support = RpcSupport(
        Authenticator(minter.key, issuer=minter.issuer, audience=minter.audience), Metrics()
    )
    server = grpc.aio.server()
    flow_service_pb2_grpc.add_FlowStateServiceServicer_to_server(
        _ExplodingServicer(store, support), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
            with caplog.at_level(logging.ERROR):
                found = await refused(
                    stub.GetFlow(
                        pb.GetFlowRequest(flow_id=str(uuid.uuid4())),
                        metadata=(*minter.metadata(tenant), ("x-correlation-id", "trace-77")),
                    )
                )
    finally:
        await server.stop(0)
    assert_rich(found, grpc.StatusCode.INTERNAL, "INTERNAL")
    assert found.message == "internal error (correlation id trace-77)"
    assert "hunter2" not in str(found)
    (record,) = [r for r in caplog.records if "trace-77" in r.getMessage()]
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


async def test_unreachable_database_is_unavailable_and_retryable(
    database_url: str, tenant: Tenant
) -> None:
    async with proxied_server(database_url, tenant) as (api, cut):
        fid = (await api.create()).flow_id
        cut()
        found = await refused(api.get(fid))
    assert_rich(found, grpc.StatusCode.UNAVAILABLE, "TEMPORARY_RESOURCE_UNAVAILABLE")
    assert found.retry_info is not None
    assert found.flow_error is not None
    assert found.flow_error.retry_allowed


def test_every_flow_state_error_code_is_covered() -> None:
    covered = {*CASES, "INTERNAL", "TEMPORARY_RESOURCE_UNAVAILABLE"}
    refusals = {
        "INVALID_PHASE",
        "MALFORMED_REQUEST",
        "REQUEST_ID_REUSED",
        "INVALID_PHASE_TRANSITION",
        "INVALID_FLOW_TRANSITION",
        "PHASE_ORDER_VIOLATION",
        "DEPENDENT_PHASES_ACTIVE",
        "FLOW_PAUSED",
        "FLOW_TERMINAL",
        "MAX_RETRIES_EXCEEDED",
        "RETRY_NOT_ALLOWED",
        "VERSION_CONFLICT",
        "FLOW_NOT_FOUND",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "TEMPORARY_RESOURCE_UNAVAILABLE",
        "INTERNAL",
    }
    assert covered == refusals
