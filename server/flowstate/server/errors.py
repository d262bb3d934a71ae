"""The one table from domain error codes to gRPC status codes, and the rich status built on it.

Every refusal leaves the server as a `google.rpc.Status` (via grpcio-status) whose details are:

- `google.rpc.ErrorInfo`: reason = the error code (e.g. ``INVALID_PHASE_TRANSITION``), domain
  ``flowstate.v1``, metadata = the error's details as strings (lists comma-joined, other
  non-strings as compact JSON; field violations excepted, see below) plus ``correlation_id``;
- `flowstate.v1.FlowError`: the seed guide's structured error (code, message, details Struct,
  retry_allowed, timestamp, correlation id) with the typed fields filled from the details
  (phase, valid transitions, blocking/dependent phases, current version, attempts, recovery);
- `google.rpc.RetryInfo` when `retry_allowed` (the same request may succeed later): the delay
  is 1 s, or the error's ``retry_after_seconds`` (RATE_LIMITED: when the next token is there);
- `google.rpc.BadRequest` with field violations for malformed requests (details
  ``field_violations`` or ``field``).

The whole status stays small whatever the input, far under gRPC's default 8 KiB metadata
limit (past which a client sees RESOURCE_EXHAUSTED instead of the refusal): the field
violations travel in BadRequest only (not again in ErrorInfo and FlowError), at most
`MAX_LISTED_VIOLATIONS` of them, and ErrorInfo and FlowError say how many were left out
(``field_violations_omitted``); every text is clipped; if the details still exceed
`MAX_DETAILS_BYTES`, the free-form ones are dropped (the typed fields remain).

The trailing metadata also carries ``x-correlation-id``. Unexpected exceptions become INTERNAL
with nothing but ``internal error (correlation id X)``: no exception text, no stack, no SQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, PhaseState
from flowstate.server.convert import (
    ERROR_CODE_TO_PROTO,
    FLOW_STATUS_TO_PROTO,
    PHASE_STATE_TO_PROTO,
    dict_to_struct,
    timestamp,
)
from flowstate.v1 import errors_pb2

__all__ = [
    "CORRELATION_ID_HEADER",
    "ERROR_DOMAIN",
    "GRPC_STATUS_BY_CODE",
    "MAX_DETAILS_BYTES",
    "MAX_LISTED_VIOLATIONS",
    "PrebuiltStatus",
    "flow_error_to_proto",
    "internal_error",
    "to_grpc_status",
]

ERROR_DOMAIN: Final = "flowstate.v1"
"""`ErrorInfo.domain` of every Flowstate error."""

CORRELATION_ID_HEADER: Final = "x-correlation-id"
"""Request and response metadata key carrying the correlation id."""

_C = ErrorCode
_S = grpc.StatusCode

GRPC_STATUS_BY_CODE: Mapping[ErrorCode, grpc.StatusCode] = {
    # INVALID_ARGUMENT: the request itself is wrong.
    _C.INVALID_PHASE: _S.INVALID_ARGUMENT,
    _C.MALFORMED_REQUEST: _S.INVALID_ARGUMENT,
    _C.REQUEST_ID_REUSED: _S.INVALID_ARGUMENT,
    # FAILED_PRECONDITION: the flow is not in a state that allows the request.
    _C.INVALID_PHASE_TRANSITION: _S.FAILED_PRECONDITION,
    _C.INVALID_FLOW_TRANSITION: _S.FAILED_PRECONDITION,
    _C.PHASE_ORDER_VIOLATION: _S.FAILED_PRECONDITION,
    _C.DEPENDENT_PHASES_ACTIVE: _S.FAILED_PRECONDITION,
    _C.FLOW_PAUSED: _S.FAILED_PRECONDITION,
    _C.FLOW_TERMINAL: _S.FAILED_PRECONDITION,
    _C.MAX_RETRIES_EXCEEDED: _S.FAILED_PRECONDITION,
    _C.RETRY_NOT_ALLOWED: _S.FAILED_PRECONDITION,
    _C.APPROVAL_REQUIRED: _S.FAILED_PRECONDITION,
    # ABORTED: a concurrency conflict; re-read and decide again.
    _C.VERSION_CONFLICT: _S.ABORTED,
    _C.FLOW_NOT_FOUND: _S.NOT_FOUND,
    _C.DEFINITION_NOT_FOUND: _S.NOT_FOUND,
    _C.BULK_ACTION_NOT_FOUND: _S.NOT_FOUND,
    _C.DEFINITION_SHADOWS_BUILTIN: _S.FAILED_PRECONDITION,
    _C.WEBHOOK_NOT_FOUND: _S.NOT_FOUND,
    # The caller's tenant spent its request budget for this kind of call (RetryInfo says when).
    _C.RATE_LIMITED: _S.RESOURCE_EXHAUSTED,
    _C.UNAUTHENTICATED: _S.UNAUTHENTICATED,
    _C.PERMISSION_DENIED: _S.PERMISSION_DENIED,
    _C.TEMPORARY_RESOURCE_UNAVAILABLE: _S.UNAVAILABLE,
    _C.SERVER_SHUTTING_DOWN: _S.UNAVAILABLE,
    _C.SUBSCRIBER_TOO_SLOW: _S.RESOURCE_EXHAUSTED,
    _C.INTERNAL: _S.INTERNAL,
    # Phase failure codes describe a worker's failure, never a refusal of a request; if one is
    # ever raised as a refusal, it is a server bug.
    _C.PHASE_EXECUTION_FAILED: _S.INTERNAL,
    _C.AGENT_TIMEOUT: _S.INTERNAL,
    _C.EXTERNAL_SERVICE_ERROR: _S.INTERNAL,
    _C.DATA_VALIDATION_FAILED: _S.INTERNAL,
    _C.INVALID_TRANSITION: _S.INTERNAL,
    _C.APPROVAL_REJECTED: _S.INTERNAL,
    _C.CHILD_FLOW_CANCELLED: _S.INTERNAL,
    # Child flows (docs/child_flows.md).
    _C.PHASE_FOLLOWS_CHILD_FLOW: _S.FAILED_PRECONDITION,
    _C.CHILD_FLOW_LIMIT_EXCEEDED: _S.FAILED_PRECONDITION,
    _C.CHILD_FLOW_NOT_LINKABLE: _S.FAILED_PRECONDITION,
}
"""DESIGN.md section 4: the gRPC status code of every error code."""

_MISSING = set(ErrorCode) - set(GRPC_STATUS_BY_CODE)
if _MISSING:  # pragma: no cover - guards the table against a new ErrorCode
    raise RuntimeError(f"no gRPC status code for {sorted(_MISSING)}")

_RPC_CODE: Mapping[grpc.StatusCode, int] = {
    status: getattr(code_pb2, status.name) for status in set(GRPC_STATUS_BY_CODE.values())
}
_RETRY_DELAY: Final = duration_pb2.Duration(seconds=1)

MAX_LISTED_VIOLATIONS: Final = 10
"""Field violations listed in BadRequest; the rest are counted (``field_violations_omitted``)."""
MAX_DETAILS_BYTES: Final = 4096
"""Upper bound of the serialized status details (base64 on the wire: under 5.5 KiB)."""
_MAX_TEXT: Final = 256  # each metadata value, violation description, field path
_MAX_MESSAGE: Final = 512  # the status message
_VIOLATIONS: Final = "field_violations"
_OMITTED: Final = "field_violations_omitted"
# Core command fields that have another name in the request messages.
_REQUEST_FIELDS: Final = {"error": "failure"}


def _metadata_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


_PHASE_STATE_BY_VALUE = {s.value: PHASE_STATE_TO_PROTO[s] for s in PhaseState}
_FLOW_STATUS_BY_VALUE = {s.value: FLOW_STATUS_TO_PROTO[s] for s in FlowStatus}


def _states(values: list[Any]) -> list[Any]:
    return [_PHASE_STATE_BY_VALUE[v] for v in values if v in _PHASE_STATE_BY_VALUE]


def _statuses(values: list[Any]) -> list[Any]:
    return [_FLOW_STATUS_BY_VALUE[v] for v in values if v in _FLOW_STATUS_BY_VALUE]


def _strings(values: Any) -> list[str]:
    return [str(v) for v in values] if isinstance(values, list) else []


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flow_error_to_proto(
    error: FlowStateError, *, correlation_id: str, now: datetime | None
) -> errors_pb2.FlowError:
    """The `flowstate.v1.FlowError` of `error`, typed fields taken from its details (no
    `timestamp` without `now`)."""
    details = error.details
    message = errors_pb2.FlowError(
        error_code=ERROR_CODE_TO_PROTO[error.code],
        message=_clip(error.message, _MAX_MESSAGE),
        details=dict_to_struct(details),
        retry_allowed=error.retry_allowed,
        timestamp=None if now is None else timestamp(now),
        correlation_id=correlation_id,
        phase=str(details.get("phase") or ""),
        blocking_phases=_strings(details.get("blocking_phases")),
        dependent_phases=_strings(details.get("dependent_phases")),
        recovery=_strings(details.get("recovery")),
    )
    valid = details.get("valid_transitions")
    if isinstance(valid, list):
        # The core uses one key for both tables; the code says which one it is.
        if error.code is ErrorCode.INVALID_FLOW_TRANSITION:
            message.valid_flow_transitions.extend(_statuses(valid))
        else:
            message.valid_transitions.extend(_states(valid))
    flow_valid = details.get("valid_flow_transitions")
    if isinstance(flow_valid, list):
        message.valid_flow_transitions.extend(_statuses(flow_valid))
    current_version = details.get("current_version")
    if isinstance(current_version, int):
        message.current_version = current_version
    attempts = details.get("attempts_remaining")
    if isinstance(attempts, int):
        message.attempts_remaining = attempts
    return message


def _violations(error: FlowStateError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """Every field violation of `error` (clipped texts), from its details."""
    violations = error.details.get(_VIOLATIONS)
    if isinstance(violations, list) and violations:
        return [
            error_details_pb2.BadRequest.FieldViolation(
                field=_clip(str(v.get("field", ""))),
                description=_clip(str(v.get("description", ""))),
            )
            for v in violations
            if isinstance(v, Mapping)
        ]
    field = error.details.get("field")
    if isinstance(field, str) and field:
        field = _REQUEST_FIELDS.get(field, field)
        return [
            error_details_pb2.BadRequest.FieldViolation(
                field=_clip(field), description=_clip(error.message)
            )
        ]
    return []


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _status_parts(
    error: FlowStateError,
    violations: list[error_details_pb2.BadRequest.FieldViolation],
    *,
    listed: int,
    free_form: bool,
    correlation_id: str,
    now: datetime | None,
) -> tuple[error_details_pb2.ErrorInfo, errors_pb2.FlowError, list[Any]]:
    """ErrorInfo, FlowError and the other details (RetryInfo, BadRequest) of a status with the
    first `listed` violations; without free-form details unless `free_form` (the typed FlowError
    fields and the codes always remain). Without `correlation_id` / `now` (`PrebuiltStatus`),
    the correlation id and the timestamp are left out."""
    details = {k: v for k, v in error.details.items() if k != _VIOLATIONS} if free_form else {}
    omitted = len(violations) - listed
    if omitted > 0:
        details[_OMITTED] = omitted
    metadata = {key: _clip(_metadata_value(value)) for key, value in details.items()}
    if correlation_id:
        metadata["correlation_id"] = correlation_id
    flow_error = flow_error_to_proto(error, correlation_id=correlation_id, now=now)
    flow_error.details.CopyFrom(dict_to_struct(details))
    error_info = error_details_pb2.ErrorInfo(
        reason=error.code.value, domain=ERROR_DOMAIN, metadata=metadata
    )
    others: list[Any] = []
    if error.retry_allowed:
        others.append(error_details_pb2.RetryInfo(retry_delay=_retry_delay(error)))
    if listed > 0:
        others.append(error_details_pb2.BadRequest(field_violations=violations[:listed]))
    return error_info, flow_error, others


def _status_proto(
    error: FlowStateError,
    violations: list[error_details_pb2.BadRequest.FieldViolation],
    *,
    listed: int,
    free_form: bool,
    correlation_id: str,
    now: datetime,
) -> status_pb2.Status:
    """The status with the first `listed` violations (see `_status_parts`)."""
    error_info, flow_error, others = _status_parts(
        error,
        violations,
        listed=listed,
        free_form=free_form,
        correlation_id=correlation_id,
        now=now,
    )
    return status_pb2.Status(
        code=_RPC_CODE[GRPC_STATUS_BY_CODE[error.code]],
        message=_clip(error.message, _MAX_MESSAGE),
        details=[_packed(message) for message in (error_info, flow_error, *others)],
    )


def _retry_delay(error: FlowStateError) -> duration_pb2.Duration:
    """The RetryInfo delay: the error's ``retry_after_seconds`` (a rate limit), else 1 s."""
    after = error.details.get("retry_after_seconds")
    if isinstance(after, int | float) and not isinstance(after, bool) and 0 <= after < 86400:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1_000_000, int(after * 1e9)))  # at least 1 ms
        return delay
    return _RETRY_DELAY


def _bounds(
    error: FlowStateError,
    violations: list[error_details_pb2.BadRequest.FieldViolation],
    *,
    correlation_id: str,
    now: datetime,
) -> tuple[int, bool]:
    """How many violations, and whether the free-form details, fit in `MAX_DETAILS_BYTES`:
    at most `MAX_LISTED_VIOLATIONS`, halved until they fit, then no free-form details at all."""
    listed = min(len(violations), MAX_LISTED_VIOLATIONS)
    free_form = True
    while True:
        proto = _status_proto(
            error,
            violations,
            listed=listed,
            free_form=free_form,
            correlation_id=correlation_id,
            now=now,
        )
        if proto.ByteSize() <= MAX_DETAILS_BYTES or (listed <= 1 and not free_form):
            return listed, free_form
        if listed > 1:
            listed //= 2
        else:
            free_form = False


def to_grpc_status(error: FlowStateError, *, correlation_id: str, now: datetime) -> grpc.Status:
    """The rich gRPC status of a refusal, ready for `context.abort_with_status`.

    Bounded (module docstring): at most `MAX_LISTED_VIOLATIONS` violations, fewer if they
    would not fit in `MAX_DETAILS_BYTES`, then no free-form details at all if even that is too
    much.
    """
    violations = _violations(error)
    listed, free_form = _bounds(error, violations, correlation_id=correlation_id, now=now)
    proto = _status_proto(
        error,
        violations,
        listed=listed,
        free_form=free_form,
        correlation_id=correlation_id,
        now=now,
    )
    return _with_correlation_id(rpc_status.to_status(proto), correlation_id)


_ANY_PREFIX: Final = "type.googleapis.com/"
_ERROR_INFO_URL: Final = _ANY_PREFIX + error_details_pb2.ErrorInfo.DESCRIPTOR.full_name
_FLOW_ERROR_URL: Final = _ANY_PREFIX + errors_pb2.FlowError.DESCRIPTOR.full_name
_DETAILS_KEY: Final = "grpc-status-details-bin"  # what grpcio-status's to_status sets
_LONGEST_CORRELATION_ID: Final = "x" * 128  # sizes a PrebuiltStatus (rpc: at most 128)


class PrebuiltStatus:
    """The rich status of one refusal, serialized once and sent many times.

    `to_grpc_status` builds and serializes four messages per call; a flood of identical
    refusals (RATE_LIMITED of one tenant and family, `flowstate.server.rpc`) must cost less.
    Everything but the correlation id and the time is serialized here, once; `status` then
    appends the two: protobuf parses concatenated encodings of a message as one merged message
    (a map entry or a scalar field added by the second part), so ErrorInfo's metadata gains
    ``correlation_id`` and FlowError its `correlation_id` and `timestamp`, and the Status's
    repeated `details` keep their order (ErrorInfo, FlowError, then RetryInfo / BadRequest). A
    client decodes exactly what `to_grpc_status` would have sent
    (tests/server/test_errors.py compares them).
    """

    __slots__ = ("_code", "_error_info", "_flow_error", "_head", "_message", "_tail")

    def __init__(self, error: FlowStateError) -> None:
        """Serialize `error`'s status without its correlation id and time."""
        violations = _violations(error)
        listed, free_form = _bounds(
            error, violations, correlation_id=_LONGEST_CORRELATION_ID, now=datetime.now(UTC)
        )
        error_info, flow_error, others = _status_parts(
            error, violations, listed=listed, free_form=free_form, correlation_id="", now=None
        )
        self._code = GRPC_STATUS_BY_CODE[error.code]
        self._message = _clip(error.message, _MAX_MESSAGE)
        self._error_info = error_info.SerializeToString()
        self._flow_error = flow_error.SerializeToString()
        self._head = status_pb2.Status(
            code=_RPC_CODE[self._code], message=self._message
        ).SerializeToString()
        self._tail = status_pb2.Status(
            details=[_packed(message) for message in others]
        ).SerializeToString()

    def status(self, *, correlation_id: str, now: datetime) -> grpc.Status:
        """The status for one call: `to_grpc_status`'s, at a fraction of its cost."""
        error_info = (
            self._error_info
            + error_details_pb2.ErrorInfo(
                metadata={"correlation_id": correlation_id}
            ).SerializeToString()
        )
        flow_error = (
            self._flow_error
            + errors_pb2.FlowError(
                correlation_id=correlation_id, timestamp=timestamp(now)
            ).SerializeToString()
        )
        details = status_pb2.Status(
            details=(
                any_pb2.Any(type_url=_ERROR_INFO_URL, value=error_info),
                any_pb2.Any(type_url=_FLOW_ERROR_URL, value=flow_error),
            )
        ).SerializeToString()
        return _Status(
            self._code,
            self._message,
            (
                (_DETAILS_KEY, self._head + details + self._tail),
                (CORRELATION_ID_HEADER, correlation_id),
            ),
        )


def internal_error(correlation_id: str) -> FlowStateError:
    """The only thing a caller learns about an unexpected exception."""
    return FlowStateError(
        ErrorCode.INTERNAL,
        f"internal error (correlation id {correlation_id})",
        retry_allowed=False,
    )


class _Status(grpc.Status):
    """A concrete `grpc.Status` (grpcio-status's own class is private)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, Any], ...]
    ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _with_correlation_id(status: grpc.Status, correlation_id: str) -> grpc.Status:
    trailing = (*status.trailing_metadata, (CORRELATION_ID_HEADER, correlation_id))
    return _Status(status.code, status.details, trailing)
