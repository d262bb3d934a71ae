"""The one error table (DESIGN.md section 4) and the rich status built from a refusal."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, PhaseState
from flowstate.server.errors import (
    ERROR_DOMAIN,
    GRPC_STATUS_BY_CODE,
    PrebuiltStatus,
    internal_error,
    to_grpc_status,
)
from flowstate.server.ratelimit import Limit, RateLimiter
from flowstate.v1 import errors_pb2, states_pb2

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
C = ErrorCode
G = grpc.StatusCode

DESIGN_TABLE = {
    C.INVALID_PHASE: G.INVALID_ARGUMENT,
    C.MALFORMED_REQUEST: G.INVALID_ARGUMENT,
    C.REQUEST_ID_REUSED: G.INVALID_ARGUMENT,
    C.INVALID_PHASE_TRANSITION: G.FAILED_PRECONDITION,
    C.INVALID_FLOW_TRANSITION: G.FAILED_PRECONDITION,
    C.PHASE_ORDER_VIOLATION: G.FAILED_PRECONDITION,
    C.DEPENDENT_PHASES_ACTIVE: G.FAILED_PRECONDITION,
    C.FLOW_PAUSED: G.FAILED_PRECONDITION,
    C.FLOW_TERMINAL: G.FAILED_PRECONDITION,
    C.MAX_RETRIES_EXCEEDED: G.FAILED_PRECONDITION,
    C.RETRY_NOT_ALLOWED: G.FAILED_PRECONDITION,
    C.VERSION_CONFLICT: G.ABORTED,
    C.FLOW_NOT_FOUND: G.NOT_FOUND,
    # DESIGN.md section 9 (docs/definitions.md).
    C.DEFINITION_NOT_FOUND: G.NOT_FOUND,
    C.BULK_ACTION_NOT_FOUND: G.NOT_FOUND,
    C.DEFINITION_SHADOWS_BUILTIN: G.FAILED_PRECONDITION,
    C.WEBHOOK_NOT_FOUND: G.NOT_FOUND,
    C.RATE_LIMITED: G.RESOURCE_EXHAUSTED,
    # DESIGN.md section 10 (docs/approvals.md).
    C.APPROVAL_REQUIRED: G.FAILED_PRECONDITION,
    C.UNAUTHENTICATED: G.UNAUTHENTICATED,
    C.PERMISSION_DENIED: G.PERMISSION_DENIED,
    C.TEMPORARY_RESOURCE_UNAVAILABLE: G.UNAVAILABLE,
    C.SERVER_SHUTTING_DOWN: G.UNAVAILABLE,
    C.SUBSCRIBER_TOO_SLOW: G.RESOURCE_EXHAUSTED,
    C.INTERNAL: G.INTERNAL,
    # Child flows (docs/child_flows.md).
    C.PHASE_FOLLOWS_CHILD_FLOW: G.FAILED_PRECONDITION,
    C.CHILD_FLOW_LIMIT_EXCEEDED: G.FAILED_PRECONDITION,
    C.CHILD_FLOW_NOT_LINKABLE: G.FAILED_PRECONDITION,
}


DETAIL_TYPES: dict[str, type[Message]] = {
    "error_info": error_details_pb2.ErrorInfo,
    "flow_error": errors_pb2.FlowError,
    "retry_info": error_details_pb2.RetryInfo,
    "bad_request": error_details_pb2.BadRequest,
}


def _details(status: grpc.Status) -> dict[str, object]:
    trailing = dict(status.trailing_metadata)
    raw = trailing["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    rich = status_pb2.Status.FromString(raw)
    found: dict[str, object] = {"status": rich, "correlation_id": trailing["x-correlation-id"]}
    for packed in rich.details:
        for name, message_type in DETAIL_TYPES.items():
            if packed.TypeName() == message_type.DESCRIPTOR.full_name:
                message = message_type()
                packed.Unpack(message)
                found[name] = message
    return found


# Phase failure codes describe a worker's failure; raised as a refusal they are a server bug.
FAILURE_CODES = {
    C.APPROVAL_REJECTED,
    C.PHASE_EXECUTION_FAILED,
    C.AGENT_TIMEOUT,
    C.EXTERNAL_SERVICE_ERROR,
    C.DATA_VALIDATION_FAILED,
    C.INVALID_TRANSITION,
    C.CHILD_FLOW_CANCELLED,
}


def test_every_error_code_has_a_grpc_status() -> None:
    assert set(GRPC_STATUS_BY_CODE) == set(ErrorCode)
    # The hand-written table covers every code of the enum too, so a new code needs a decision.
    assert set(DESIGN_TABLE) | FAILURE_CODES == set(ErrorCode)
    assert not set(DESIGN_TABLE) & FAILURE_CODES
    for code in FAILURE_CODES:
        assert GRPC_STATUS_BY_CODE[code] is G.INTERNAL


@pytest.mark.parametrize(("code", "expected"), DESIGN_TABLE.items(), ids=lambda v: str(v))
def test_design_table(code: ErrorCode, expected: grpc.StatusCode) -> None:
    assert GRPC_STATUS_BY_CODE[code] is expected


@pytest.mark.parametrize("code", list(DESIGN_TABLE), ids=lambda c: c.value)
def test_rich_status_carries_error_info_and_flow_error(code: ErrorCode) -> None:
    error = FlowStateError(code, f"refused: {code.value}", phase="data_import")
    status = to_grpc_status(error, correlation_id="cid-1", now=NOW)
    assert status.code is DESIGN_TABLE[code]
    assert status.details == f"refused: {code.value}"
    found = _details(status)
    info = found["error_info"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (code.value, ERROR_DOMAIN)
    assert info.metadata["correlation_id"] == "cid-1"
    assert info.metadata["phase"] == "data_import"
    flow_error = found["flow_error"]
    assert isinstance(flow_error, errors_pb2.FlowError)
    assert errors_pb2.ErrorCode.Name(flow_error.error_code) == f"ERROR_CODE_{code.value}"
    assert flow_error.correlation_id == "cid-1"
    assert flow_error.timestamp.ToDatetime(tzinfo=UTC) == NOW
    assert flow_error.phase == "data_import"
    assert ("retry_info" in found) is error.retry_allowed
    assert found["correlation_id"] == "cid-1"


def test_phase_transition_refusal_lists_valid_phase_states() -> None:
    error = FlowStateError(
        C.INVALID_PHASE_TRANSITION,
        "no",
        phase="data_import",
        valid_transitions=[PhaseState.IN_PROGRESS],
    )
    flow_error = _details(to_grpc_status(error, correlation_id="c", now=NOW))["flow_error"]
    assert isinstance(flow_error, errors_pb2.FlowError)
    assert list(flow_error.valid_transitions) == [states_pb2.PHASE_STATE_IN_PROGRESS]
    assert list(flow_error.valid_flow_transitions) == []
    assert json_format.MessageToDict(flow_error.details)["valid_transitions"] == ["in_progress"]


def test_flow_transition_refusal_lists_valid_flow_statuses() -> None:
    error = FlowStateError(
        C.INVALID_FLOW_TRANSITION,
        "no",
        valid_transitions=[FlowStatus.PAUSED, FlowStatus.CANCELLED],
    )
    flow_error = _details(to_grpc_status(error, correlation_id="c", now=NOW))["flow_error"]
    assert isinstance(flow_error, errors_pb2.FlowError)
    assert list(flow_error.valid_flow_transitions) == [
        states_pb2.FLOW_STATUS_PAUSED,
        states_pb2.FLOW_STATUS_CANCELLED,
    ]


def test_typed_fields_come_from_the_details() -> None:
    error = FlowStateError(
        C.MAX_RETRIES_EXCEEDED,
        "no",
        blocking_phases=["a"],
        dependent_phases=["b", "c"],
        current_version=7,
        attempts_remaining=0,
        recovery=["rollback", "cancel"],
    )
    found = _details(to_grpc_status(error, correlation_id="c", now=NOW))
    flow_error = found["flow_error"]
    assert isinstance(flow_error, errors_pb2.FlowError)
    assert list(flow_error.blocking_phases) == ["a"]
    assert list(flow_error.dependent_phases) == ["b", "c"]
    assert flow_error.current_version == 7
    assert flow_error.HasField("attempts_remaining")
    assert flow_error.attempts_remaining == 0
    assert list(flow_error.recovery) == ["rollback", "cancel"]
    info = found["error_info"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.metadata["dependent_phases"] == "b,c"
    assert info.metadata["current_version"] == "7"


def test_retryable_errors_carry_retry_info() -> None:
    error = FlowStateError(C.TEMPORARY_RESOURCE_UNAVAILABLE, "db down", retry_allowed=True)
    found = _details(to_grpc_status(error, correlation_id="c", now=NOW))
    retry_info = found["retry_info"]
    assert isinstance(retry_info, error_details_pb2.RetryInfo)
    assert retry_info.retry_delay.ToTimedelta().total_seconds() > 0
    flow_error = found["flow_error"]
    assert isinstance(flow_error, errors_pb2.FlowError)
    assert flow_error.retry_allowed


def test_malformed_requests_carry_bad_request_field_violations() -> None:
    error = FlowStateError(
        C.MALFORMED_REQUEST,
        "flow_id: bad",
        field="flow_id",
        field_violations=[
            {"field": "flow_id", "description": "bad"},
            {"field": "request_id", "description": "missing"},
        ],
    )
    bad_request = _details(to_grpc_status(error, correlation_id="c", now=NOW))["bad_request"]
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("flow_id", "bad"),
        ("request_id", "missing"),
    ]


def test_a_single_field_detail_becomes_a_violation_named_like_the_request_field() -> None:
    # The core names the failure report `error`; the request field is `failure`.
    error = FlowStateError(C.MALFORMED_REQUEST, "must report the error", field="error")
    bad_request = _details(to_grpc_status(error, correlation_id="c", now=NOW))["bad_request"]
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["failure"]


def test_internal_error_says_nothing_but_the_correlation_id() -> None:
    error = internal_error("cid-42")
    status = to_grpc_status(error, correlation_id="cid-42", now=NOW)
    assert status.code is G.INTERNAL
    assert status.details == "internal error (correlation id cid-42)"
    flow_error = _details(status)["flow_error"]
    assert isinstance(flow_error, errors_pb2.FlowError)
    assert not flow_error.details.fields
    assert not flow_error.retry_allowed


def _decoded(status: grpc.Status) -> tuple[object, ...]:
    """Everything a client decodes from `status`: code, message, trailers, each detail."""
    trailing = dict(status.trailing_metadata)
    raw = trailing["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    rich = status_pb2.Status.FromString(raw)
    details = []
    for packed in rich.details:
        message = next(
            t() for t in DETAIL_TYPES.values() if packed.TypeName() == t.DESCRIPTOR.full_name
        )
        packed.Unpack(message)
        details.append((packed.type_url, message))
    return (
        status.code,
        status.details,
        sorted(trailing),
        trailing["x-correlation-id"],
        rich.code,
        rich.message,
        details,
    )


_LIMITER = RateLimiter({"read": Limit(200, 400)})


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(_LIMITER.refusal("read", 0.004), id="rate-limited"),
        pytest.param(
            FlowStateError(
                C.INVALID_PHASE_TRANSITION,
                "no",
                phase="data_import",
                valid_transitions=["in_progress"],
                current_version=3,
            ),
            id="typed-details",
        ),
        pytest.param(
            FlowStateError(
                C.MALFORMED_REQUEST,
                "many",
                field_violations=[{"field": f"f{i}", "description": "x" * 200} for i in range(40)],
            ),
            id="bounded-violations",
        ),
        pytest.param(internal_error("cid"), id="internal"),
    ],
)
def test_a_prebuilt_status_decodes_exactly_like_the_status_built_per_call(
    error: FlowStateError,
) -> None:
    prebuilt = PrebuiltStatus(error)
    for correlation_id, now in (("cid-1", NOW), ("0123456789abcdef" * 8, datetime.now(UTC))):
        fast = prebuilt.status(correlation_id=correlation_id, now=now)
        slow = to_grpc_status(error, correlation_id=correlation_id, now=now)
        assert _decoded(fast) == _decoded(slow)
