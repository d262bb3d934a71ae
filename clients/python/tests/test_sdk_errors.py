"""Every refusal of the server becomes the exception its ErrorInfo reason names.

The server here is a real ``grpc.aio`` server that aborts with the same rich status the Flowstate
server sends (ErrorInfo + FlowError + RetryInfo), so decoding goes through the real trailers.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from scripted_server import Fail, ScriptedServer, ScriptedServicer, free_port

from flowstate.client import (
    Aborted,
    ApprovalRequired,
    AsyncFlowstateClient,
    BulkActionNotFound,
    ChildFlowLimitExceeded,
    ChildFlowNotLinkable,
    DeadlineExceeded,
    DefinitionNotFound,
    DefinitionShadowsBuiltin,
    DependentPhasesActive,
    ErrorCode,
    FailedPrecondition,
    FlowNotFound,
    FlowPaused,
    FlowstateClient,
    FlowstateError,
    FlowStatus,
    FlowTerminal,
    InternalError,
    InvalidArgument,
    InvalidFlowTransition,
    InvalidPhase,
    InvalidPhaseTransition,
    MalformedRequest,
    MaxRetriesExceeded,
    NotFound,
    PermissionDenied,
    PhaseFollowsChildFlow,
    PhaseOrderViolation,
    PhaseState,
    RateLimited,
    RequestIdReused,
    ResourceExhausted,
    RetryNotAllowed,
    RetryPolicy,
    ServerShuttingDown,
    SubscriberTooSlow,
    Unauthenticated,
    Unavailable,
    VersionConflict,
    WebhookNotFound,
)
from flowstate.client._errors import error_from_flow_error
from flowstate.v1 import errors_pb2, states_pb2

SC = grpc.StatusCode
FP = SC.FAILED_PRECONDITION

# reason, gRPC code, class, its intermediate class
CASES = [
    ("INVALID_PHASE", SC.INVALID_ARGUMENT, InvalidPhase, InvalidArgument),
    ("MALFORMED_REQUEST", SC.INVALID_ARGUMENT, MalformedRequest, InvalidArgument),
    ("REQUEST_ID_REUSED", SC.INVALID_ARGUMENT, RequestIdReused, InvalidArgument),
    (
        "INVALID_PHASE_TRANSITION",
        SC.FAILED_PRECONDITION,
        InvalidPhaseTransition,
        FailedPrecondition,
    ),
    ("INVALID_FLOW_TRANSITION", SC.FAILED_PRECONDITION, InvalidFlowTransition, FailedPrecondition),
    ("PHASE_ORDER_VIOLATION", SC.FAILED_PRECONDITION, PhaseOrderViolation, FailedPrecondition),
    ("DEPENDENT_PHASES_ACTIVE", SC.FAILED_PRECONDITION, DependentPhasesActive, FailedPrecondition),
    ("FLOW_PAUSED", SC.FAILED_PRECONDITION, FlowPaused, FailedPrecondition),
    ("FLOW_TERMINAL", SC.FAILED_PRECONDITION, FlowTerminal, FailedPrecondition),
    ("MAX_RETRIES_EXCEEDED", SC.FAILED_PRECONDITION, MaxRetriesExceeded, FailedPrecondition),
    ("RETRY_NOT_ALLOWED", SC.FAILED_PRECONDITION, RetryNotAllowed, FailedPrecondition),
    ("APPROVAL_REQUIRED", SC.FAILED_PRECONDITION, ApprovalRequired, FailedPrecondition),
    ("VERSION_CONFLICT", SC.ABORTED, VersionConflict, Aborted),
    ("FLOW_NOT_FOUND", SC.NOT_FOUND, FlowNotFound, NotFound),
    ("DEFINITION_NOT_FOUND", SC.NOT_FOUND, DefinitionNotFound, NotFound),
    ("BULK_ACTION_NOT_FOUND", SC.NOT_FOUND, BulkActionNotFound, NotFound),
    (
        "DEFINITION_SHADOWS_BUILTIN",
        SC.FAILED_PRECONDITION,
        DefinitionShadowsBuiltin,
        FailedPrecondition,
    ),
    ("PHASE_FOLLOWS_CHILD_FLOW", SC.FAILED_PRECONDITION, PhaseFollowsChildFlow, FailedPrecondition),
    (
        "CHILD_FLOW_LIMIT_EXCEEDED",
        SC.FAILED_PRECONDITION,
        ChildFlowLimitExceeded,
        FailedPrecondition,
    ),
    ("CHILD_FLOW_NOT_LINKABLE", SC.FAILED_PRECONDITION, ChildFlowNotLinkable, FailedPrecondition),
    ("UNAUTHENTICATED", SC.UNAUTHENTICATED, Unauthenticated, FlowstateError),
    ("PERMISSION_DENIED", SC.PERMISSION_DENIED, PermissionDenied, FlowstateError),
    ("TEMPORARY_RESOURCE_UNAVAILABLE", SC.UNAVAILABLE, Unavailable, FlowstateError),
    ("SERVER_SHUTTING_DOWN", SC.UNAVAILABLE, ServerShuttingDown, Unavailable),
    ("SUBSCRIBER_TOO_SLOW", SC.RESOURCE_EXHAUSTED, SubscriberTooSlow, ResourceExhausted),
    ("RATE_LIMITED", SC.RESOURCE_EXHAUSTED, RateLimited, ResourceExhausted),
    ("WEBHOOK_NOT_FOUND", SC.NOT_FOUND, WebhookNotFound, NotFound),
    ("INTERNAL", SC.INTERNAL, InternalError, FlowstateError),
]


@pytest.mark.parametrize(
    ("reason", "grpc_code", "cls", "parent"), CASES, ids=[case[0] for case in CASES]
)
async def test_reason_selects_class(
    servicer: ScriptedServicer,
    client: AsyncFlowstateClient,
    reason: str,
    grpc_code: grpc.StatusCode,
    cls: type[FlowstateError],
    parent: type[FlowstateError],
) -> None:
    servicer.add(
        "GetFlow", *[Fail(grpc_code, reason, f"{reason} happened", {"phase_hint": "x"})] * 5
    )

    with pytest.raises(cls) as caught:
        await client.get_flow("f-1")

    error = caught.value
    assert type(error) is cls
    assert isinstance(error, parent)
    assert error.code == ErrorCode[reason]
    assert error.grpc_code == grpc_code
    assert error.message == f"{reason} happened"
    assert error.details == {"phase_hint": "x"}
    assert error.flow_error is not None
    assert ErrorCode(error.flow_error.error_code) == ErrorCode[reason]
    assert error.status is not None
    assert error.status.code == grpc_code.value[0]
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


async def test_typed_details(servicer: ScriptedServicer, client: AsyncFlowstateClient) -> None:
    servicer.add(
        "TransitionPhase",
        Fail(
            SC.FAILED_PRECONDITION,
            flow_error=errors_pb2.FlowError(
                error_code=errors_pb2.ERROR_CODE_INVALID_PHASE_TRANSITION,
                message="cannot go",
                phase="data_import",
                valid_transitions=[states_pb2.PHASE_STATE_IN_PROGRESS],
                correlation_id="corr-1",
            ),
            reason="INVALID_PHASE_TRANSITION",
        ),
        Fail(
            SC.FAILED_PRECONDITION,
            "PHASE_ORDER_VIOLATION",
            details={"blocking_phases": ["data_import", "field_mapping"]},
        ),
        Fail(SC.ABORTED, "VERSION_CONFLICT", details={"current_version": 7}),
        Fail(
            SC.FAILED_PRECONDITION,
            "MAX_RETRIES_EXCEEDED",
            details={"attempts_remaining": 0, "recovery": ["rollback", "cancel"]},
        ),
        Fail(
            SC.FAILED_PRECONDITION,
            "INVALID_FLOW_TRANSITION",
            details={"valid_flow_transitions": ["PAUSED", "cancelled"]},
        ),
        Fail(
            SC.FAILED_PRECONDITION, "DEPENDENT_PHASES_ACTIVE", details={"dependent_phases": ["b"]}
        ),
    )

    with pytest.raises(InvalidPhaseTransition) as invalid:
        await client.transition_phase("f-1", "data_import", PhaseState.COMPLETED)
    assert invalid.value.valid_transitions == [PhaseState.IN_PROGRESS]
    assert invalid.value.phase == "data_import"
    assert invalid.value.correlation_id == "corr-1"
    assert "corr-1" in str(invalid.value)

    with pytest.raises(PhaseOrderViolation) as order:
        await client.transition_phase("f-1", "data_cleansing", "IN_PROGRESS")
    assert order.value.blocking_phases == ["data_import", "field_mapping"]

    with pytest.raises(VersionConflict) as conflict:
        await client.transition_phase("f-1", "data_import", "IN_PROGRESS", expected_version=3)
    assert conflict.value.current_version == 7

    with pytest.raises(MaxRetriesExceeded) as exhausted:
        await client.transition_phase("f-1", "data_import", "IN_PROGRESS")
    assert exhausted.value.attempts_remaining == 0
    assert exhausted.value.recovery == ["rollback", "cancel"]

    with pytest.raises(InvalidFlowTransition) as flow_transition:
        await client.transition_phase("f-1", "data_import", "IN_PROGRESS")
    assert flow_transition.value.valid_flow_transitions == [
        FlowStatus.PAUSED,
        FlowStatus.CANCELLED,
    ]

    with pytest.raises(DependentPhasesActive) as dependents:
        await client.transition_phase("f-1", "data_import", "IN_PROGRESS")
    assert dependents.value.dependent_phases == ["b"]


@pytest.mark.parametrize(
    ("grpc_code", "cls", "code"),
    [
        (SC.UNAVAILABLE, Unavailable, ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE),
        (SC.UNAUTHENTICATED, Unauthenticated, ErrorCode.UNAUTHENTICATED),
        (SC.PERMISSION_DENIED, PermissionDenied, ErrorCode.PERMISSION_DENIED),
        (SC.INTERNAL, InternalError, ErrorCode.INTERNAL),
        (SC.UNKNOWN, InternalError, ErrorCode.INTERNAL),
        (SC.NOT_FOUND, NotFound, ErrorCode.UNSPECIFIED),
        (SC.FAILED_PRECONDITION, FailedPrecondition, ErrorCode.UNSPECIFIED),
        (SC.DEADLINE_EXCEEDED, DeadlineExceeded, ErrorCode.UNSPECIFIED),
        (SC.UNIMPLEMENTED, FlowstateError, ErrorCode.UNSPECIFIED),
    ],
    ids=lambda value: getattr(value, "name", None) or getattr(value, "__name__", None),
)
async def test_status_without_details_falls_back_to_grpc_code(
    servicer: ScriptedServicer,
    client: AsyncFlowstateClient,
    grpc_code: grpc.StatusCode,
    cls: type[FlowstateError],
    code: ErrorCode,
) -> None:
    servicer.add("GetFlow", *[Fail(grpc_code, message="plain", bare=True)] * 5)

    with pytest.raises(FlowstateError) as caught:
        await client.get_flow("f-1")

    assert type(caught.value) is cls
    assert caught.value.code == code
    assert caught.value.grpc_code == grpc_code
    assert caught.value.flow_error is None
    assert caught.value.message == "plain"


async def test_unknown_reason_falls_back_to_grpc_code_class(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    future = errors_pb2.FlowError(error_code=99, message="from the future")  # type: ignore[arg-type]
    servicer.add("GetFlow", Fail(SC.FAILED_PRECONDITION, "SOMETHING_NEW", flow_error=future))

    with pytest.raises(FailedPrecondition) as caught:
        await client.get_flow("f-1")

    assert type(caught.value) is FailedPrecondition
    assert caught.value.code.name == "UNKNOWN_99"
    assert caught.value.message == "from the future"


async def test_error_info_of_another_domain_is_ignored(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add("GetFlow", Fail(SC.NOT_FOUND, "FLOW_NOT_FOUND", domain="example.com"))

    with pytest.raises(FlowNotFound):  # the FlowError still names the code
        await client.get_flow("f-1")


async def test_connection_refused_is_unavailable_after_retries() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01, jitter=0.0)
    async with AsyncFlowstateClient(address=address, retry=policy, timeout=2.0) as client:
        with pytest.raises(Unavailable) as caught:
            await client.get_flow("f-1")
    assert caught.value.retry_allowed
    assert caught.value.code == ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE


async def test_sync_client_raises_the_same_classes(
    scripted: ScriptedServer, servicer: ScriptedServicer
) -> None:
    servicer.add(
        "Rollback",
        Fail(
            SC.FAILED_PRECONDITION,
            "DEPENDENT_PHASES_ACTIVE",
            details={"dependent_phases": ["field_mapping"]},
        ),
    )

    def rollback() -> None:
        with FlowstateClient(address=scripted.address, token="t") as client:
            client.rollback("f-1", "data_import", cascade=False)

    # The blocking client runs in a thread: the server shares this test's event loop.
    with pytest.raises(DependentPhasesActive) as caught:
        await asyncio.to_thread(rollback)
    assert caught.value.dependent_phases == ["field_mapping"]
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    assert servicer.requests("Rollback")[0].cascade is False


def test_error_from_flow_error_uses_the_default_grpc_code() -> None:
    error = error_from_flow_error(
        errors_pb2.FlowError(error_code=errors_pb2.ERROR_CODE_FLOW_PAUSED, message="paused")
    )
    assert type(error) is FlowPaused
    assert error.grpc_code == SC.FAILED_PRECONDITION
    assert str(error) == "FLOW_PAUSED: paused"
    assert error.to_dict()["code"] == "FLOW_PAUSED"


def test_every_refusal_code_has_a_class() -> None:
    refusals = {ErrorCode[case[0]] for case in CASES}
    failure_codes = {
        ErrorCode.UNSPECIFIED,
        ErrorCode.PHASE_EXECUTION_FAILED,
        ErrorCode.AGENT_TIMEOUT,
        ErrorCode.EXTERNAL_SERVICE_ERROR,
        ErrorCode.DATA_VALIDATION_FAILED,
        ErrorCode.INVALID_TRANSITION,
        ErrorCode.APPROVAL_REJECTED,
        ErrorCode.CHILD_FLOW_CANCELLED,
    }
    assert refusals | failure_codes == set(ErrorCode)


def _rich(status: grpc.Status) -> tuple[int, error_details_pb2.ErrorInfo, errors_pb2.FlowError]:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    rich = status_pb2.Status.FromString(raw)
    info, flow_error = error_details_pb2.ErrorInfo(), errors_pb2.FlowError()
    for packed in rich.details:
        if packed.TypeName() == "google.rpc.ErrorInfo":
            packed.Unpack(info)
        elif packed.TypeName() == "flowstate.v1.FlowError":
            packed.Unpack(flow_error)
    return rich.code, info, flow_error


@pytest.mark.parametrize(
    ("reason", "grpc_code"), [case[:2] for case in CASES], ids=[case[0] for case in CASES]
)
def test_the_scripted_servers_errors_are_the_servers_own(
    reason: str, grpc_code: grpc.StatusCode
) -> None:
    """The fake encodes refusals by hand; this keeps it from drifting away from the server.

    Each case's status is built twice, by `Fail` and by the server's own encoder
    (`flowstate.server.errors.to_grpc_status`), and every field `Fail` sets must agree.
    """
    server_errors = pytest.importorskip("flowstate.server.errors")
    core_errors = pytest.importorskip("flowstate.core.errors")
    core_model = pytest.importorskip("flowstate.core.model")
    details = {"phase_hint": "x"}
    refusal = core_errors.FlowStateError(
        core_model.ErrorCode[reason], f"{reason} happened", **details
    )
    real = server_errors.to_grpc_status(refusal, correlation_id="c-1", now=datetime.now(UTC))
    fake = Fail(
        grpc_code,
        reason,
        f"{reason} happened",
        details,
        retry_delay=0.5 if refusal.retry_allowed else None,
    ).status()

    assert fake.code == real.code == grpc_code
    (real_code, real_info, real_error), (fake_code, fake_info, fake_error) = (
        _rich(real),
        _rich(fake),
    )
    assert fake_code == real_code
    assert (fake_info.reason, fake_info.domain) == (real_info.reason, real_info.domain)
    assert fake_error.error_code == real_error.error_code
    assert fake_error.message == real_error.message
    assert fake_error.details == real_error.details
    assert fake_error.retry_allowed == real_error.retry_allowed
