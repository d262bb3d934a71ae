"""Every refusal of the server becomes the exception its ErrorInfo reason names.

The server here is a real ``grpc.aio`` server that replays errors recorded from a real Flowstate
server (recorded_errors.py: the recorded grpc-status, grpc-message, grpc-status-details-bin and
trailers, byte for byte), so decoding goes through the real trailers of the real errors.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2
from recorded_errors import ERROR_FIXTURES, Recorded, error_fixture, recorded
from scripted_server import Bare, Encoded, ScriptedServer, ScriptedServicer, free_port

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
from flowstate.v1 import errors_pb2

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
def test_reason_selects_class(
    reason: str,
    grpc_code: grpc.StatusCode,
    cls: type[FlowstateError],
    parent: type[FlowstateError],
) -> None:
    """The class of every refusal code (over the wire below for the recorded ones)."""
    flow_error = errors_pb2.FlowError(
        error_code=errors_pb2.ErrorCode.Value(f"ERROR_CODE_{reason}"), message="refused"
    )
    error = error_from_flow_error(flow_error)  # no gRPC code: the class's own
    assert type(error) is cls
    assert isinstance(error, parent)
    assert error.code == ErrorCode[reason]
    assert error.grpc_code == grpc_code


#: fixture name -> the class it decodes to, its intermediate class
RECORDED = {
    "flow_not_found": (FlowNotFound, NotFound),
    "invalid_phase": (InvalidPhase, InvalidArgument),
    "invalid_phase_transition": (InvalidPhaseTransition, FailedPrecondition),
    "malformed_request": (MalformedRequest, InvalidArgument),
    "max_retries_exceeded": (MaxRetriesExceeded, FailedPrecondition),
    "permission_denied": (PermissionDenied, FlowstateError),
    "phase_order_violation": (PhaseOrderViolation, FailedPrecondition),
    "rate_limited": (RateLimited, ResourceExhausted),
    "server_shutting_down": (ServerShuttingDown, Unavailable),
    "subscriber_too_slow": (SubscriberTooSlow, ResourceExhausted),
    "temporary_resource_unavailable": (Unavailable, FlowstateError),
    "unauthenticated": (Unauthenticated, FlowstateError),
    "version_conflict": (VersionConflict, Aborted),
}
#: The recorded errors whose RetryInfo asks for a second before the next attempt.
RETRY_AFTER_A_SECOND = {"rate_limited", "server_shutting_down", "temporary_resource_unavailable"}


def test_every_recorded_error_is_decoded_here() -> None:
    assert set(ERROR_FIXTURES) == set(RECORDED) | {"unknown_reason"}


@pytest.mark.parametrize("name", sorted(RECORDED))
async def test_recorded_error_selects_class(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, name: str
) -> None:
    fixture = error_fixture(name)
    cls, parent = RECORDED[name]
    servicer.add("GetFlow", recorded(name))

    with pytest.raises(cls) as caught:
        await client.get_flow("f-1", retry=RetryPolicy.disabled())

    error = caught.value
    assert type(error) is cls
    assert isinstance(error, parent)
    assert error.code == ErrorCode[name.upper()]
    assert error.grpc_code == fixture.grpc_code
    assert error.message == fixture.message
    assert error.details == fixture.flow_error_details()
    assert error.correlation_id == "fixture-correlation-id"
    assert error.flow_error is not None
    assert ErrorCode(error.flow_error.error_code) == error.code
    assert error.retry_allowed is (name in RETRY_AFTER_A_SECOND)
    expected_delay = timedelta(seconds=1) if name in RETRY_AFTER_A_SECOND else None
    assert error.retry_delay == expected_delay
    assert error.status is not None
    assert error.status.code == fixture.grpc_code.value[0]
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


#: The refusal codes no recording covers: their status comes from the server's own encoder.
NOT_RECORDED = [case for case in CASES if case[0].lower() not in RECORDED]


def test_every_refusal_code_is_checked_over_the_wire() -> None:
    """Recorded, or encoded by the server below: no code's gRPC status goes unchecked."""
    assert {case[0] for case in NOT_RECORDED} | {name.upper() for name in RECORDED} == {
        case[0] for case in CASES
    }


@pytest.mark.parametrize(
    ("reason", "grpc_code", "cls", "parent"), NOT_RECORDED, ids=[case[0] for case in NOT_RECORDED]
)
async def test_refusal_not_recorded_selects_class_over_the_wire(
    servicer: ScriptedServicer,
    client: AsyncFlowstateClient,
    reason: str,
    grpc_code: grpc.StatusCode,
    cls: type[FlowstateError],
    parent: type[FlowstateError],
) -> None:
    """The server's own encoder (`to_grpc_status`) builds the refusal, a real gRPC server sends
    it: the gRPC code the server uses for the code is the one the SDK expects (CASES), and the
    client decodes the class, code, message and details from the wire."""
    server_errors = pytest.importorskip("flowstate.server.errors")
    core_errors = pytest.importorskip("flowstate.core.errors")
    core_model = pytest.importorskip("flowstate.core.model")
    refusal = core_errors.FlowStateError(
        core_model.ErrorCode[reason], f"{reason} happened", phase_hint="x"
    )
    status = server_errors.to_grpc_status(refusal, correlation_id="c-1", now=datetime.now(UTC))
    servicer.add("GetFlow", Encoded(status))

    with pytest.raises(FlowstateError) as caught:
        await client.get_flow("f-1", retry=RetryPolicy.disabled())

    error = caught.value
    rpc_error = error.__cause__
    assert isinstance(rpc_error, grpc.aio.AioRpcError)
    assert rpc_error.code() == status.code == grpc_code
    assert type(error) is cls
    assert isinstance(error, parent)
    assert (error.code, error.grpc_code) == (ErrorCode[reason], grpc_code)
    assert error.message == f"{reason} happened"
    assert error.details == {"phase_hint": "x"}
    assert error.correlation_id == "c-1"


@pytest.mark.parametrize("name", ERROR_FIXTURES)
async def test_the_client_receives_the_recorded_status_bytes(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, name: str
) -> None:
    """The scripted server replays a recording exactly: status code, message, the
    grpc-status-details-bin bytes and the trailers the client receives are the file's."""
    fixture = error_fixture(name)
    servicer.add("GetFlow", recorded(name))

    with pytest.raises(FlowstateError) as caught:
        await client.get_flow("f-1", retry=RetryPolicy.disabled())

    rpc_error = caught.value.__cause__
    assert isinstance(rpc_error, grpc.aio.AioRpcError)
    assert rpc_error.code() == fixture.grpc_code
    assert rpc_error.details() == fixture.message
    trailers = dict(rpc_error.trailing_metadata() or ())
    assert trailers.pop("grpc-status-details-bin") == fixture.details_bin
    assert trailers == fixture.trailers
    assert caught.value.status is not None
    assert caught.value.status.SerializeToString(deterministic=True) == fixture.details_bin


async def test_typed_details(servicer: ScriptedServicer, client: AsyncFlowstateClient) -> None:
    """The typed accessors on the real refusals (tests/fixtures/errors/NAME.json)."""
    servicer.add(
        "TransitionPhase",
        recorded("invalid_phase_transition"),
        recorded("phase_order_violation"),
        recorded("version_conflict"),
        recorded("max_retries_exceeded"),
        recorded("malformed_request"),
    )

    with pytest.raises(InvalidPhaseTransition) as invalid:
        await client.transition_phase("f-1", "data_import", PhaseState.COMPLETED)
    assert invalid.value.valid_transitions == [PhaseState.IN_PROGRESS]
    assert invalid.value.phase == "data_import"
    assert invalid.value.message == (
        "Cannot transition phase 'data_import' from 'not_started' to 'completed'"
    )
    assert invalid.value.correlation_id == "fixture-correlation-id"
    assert "fixture-correlation-id" in str(invalid.value)

    with pytest.raises(PhaseOrderViolation) as order:
        await client.transition_phase("f-1", "field_mapping", "IN_PROGRESS")
    assert order.value.blocking_phases == ["data_import"]
    assert order.value.phase == "field_mapping"

    with pytest.raises(VersionConflict) as conflict:
        await client.transition_phase("f-1", "data_import", "IN_PROGRESS", expected_version=1)
    assert conflict.value.current_version == 2

    with pytest.raises(MaxRetriesExceeded) as exhausted:
        await client.transition_phase("f-1", "data_import", "IN_PROGRESS")
    assert exhausted.value.attempts_remaining == 0
    assert exhausted.value.recovery == ["abandon", "cancel"]

    with pytest.raises(MalformedRequest) as malformed:
        await client.transition_phase("f-1", "data_import", "IN_PROGRESS")
    assert malformed.value.field_violations == [
        ("flow_id", "must be a UUID (8-4-4-4-12 hex digits)")
    ]


def test_typed_details_of_refusals_not_recorded() -> None:
    """INVALID_FLOW_TRANSITION and DEPENDENT_PHASES_ACTIVE are raised by the real server in
    test_sdk_e2e.py; here their accessors, on the FlowError the server sends."""

    def flow_error(
        code: errors_pb2.ErrorCode.ValueType, **details: list[str]
    ) -> errors_pb2.FlowError:
        struct = struct_pb2.Struct()
        struct.update(details)
        return errors_pb2.FlowError(error_code=code, message="refused", details=struct)

    flow_transition = error_from_flow_error(
        flow_error(
            errors_pb2.ERROR_CODE_INVALID_FLOW_TRANSITION,
            valid_flow_transitions=["PAUSED", "cancelled"],
        )
    )
    assert isinstance(flow_transition, InvalidFlowTransition)
    assert flow_transition.valid_flow_transitions == [FlowStatus.PAUSED, FlowStatus.CANCELLED]
    dependents = error_from_flow_error(
        flow_error(errors_pb2.ERROR_CODE_DEPENDENT_PHASES_ACTIVE, dependent_phases=["b"])
    )
    assert isinstance(dependents, DependentPhasesActive)
    assert dependents.dependent_phases == ["b"]


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
    servicer.add("GetFlow", *[Bare(grpc_code, "plain")] * 5)

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
    """A newer server's refusal: ErrorInfo reason SOME_FUTURE_REFUSAL, FlowError code 9999."""
    servicer.add("GetFlow", recorded("unknown_reason"))

    with pytest.raises(FailedPrecondition) as caught:
        await client.get_flow("f-1")

    assert type(caught.value) is FailedPrecondition
    assert caught.value.code.name == "UNKNOWN_9999"
    assert caught.value.message == error_fixture("unknown_reason").message
    assert caught.value.details == error_fixture("unknown_reason").flow_error_details()


async def test_error_info_of_another_domain_is_ignored(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    """The recorded FLOW_NOT_FOUND with its ErrorInfo's domain replaced."""
    servicer.add("GetFlow", Recorded("flow_not_found", error_info_domain="example.com"))

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
    servicer.add("Rollback", recorded("phase_order_violation"))

    def rollback() -> None:
        with FlowstateClient(address=scripted.address, token="t") as client:
            client.rollback("f-1", "data_import", cascade=False)

    # The blocking client runs in a thread: the server shares this test's event loop.
    with pytest.raises(PhaseOrderViolation) as caught:
        await asyncio.to_thread(rollback)
    assert caught.value.blocking_phases == ["data_import"]
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
