"""The exceptions of the Flowstate SDK, chosen by the ``google.rpc.ErrorInfo`` reason.

Every refusal of the server is a gRPC status carrying an ``ErrorInfo`` (reason = the error code),
a ``flowstate.v1.FlowError`` and, when retrying may help, a ``RetryInfo``. The SDK raises one
exception per reason, grouped under an intermediate class per gRPC status code, so callers can
catch as precisely as they need::

    FlowstateError                      every error raised by the SDK for a failed call
    ├── InvalidArgument                 INVALID_ARGUMENT
    │   ├── InvalidPhase                    the phase is not part of the flow's definition
    │   ├── MalformedRequest                a field is missing, out of range or malformed
    │   └── RequestIdReused                 a request id was reused with another payload
    ├── FailedPrecondition              FAILED_PRECONDITION
    │   ├── InvalidPhaseTransition          .valid_transitions
    │   ├── InvalidFlowTransition           .valid_flow_transitions
    │   ├── PhaseOrderViolation             .blocking_phases
    │   ├── DependentPhasesActive           .dependent_phases
    │   ├── FlowPaused
    │   ├── FlowTerminal
    │   ├── MaxRetriesExceeded              .attempts_remaining, .recovery
    │   ├── RetryNotAllowed                 .recovery
    │   ├── DefinitionShadowsBuiltin        needs allow_shadow_builtin
    │   ├── PhaseFollowsChildFlow           the phase's outcome comes from its child flow
    │   ├── ChildFlowLimitExceeded          too deep, or too many children
    │   └── ChildFlowNotLinkable            already a child, other definition, or a cycle
    ├── Aborted                         ABORTED
    │   └── VersionConflict                 .current_version
    ├── NotFound                        NOT_FOUND
    │   ├── FlowNotFound
    │   ├── DefinitionNotFound              also another tenant's definition
    │   └── WebhookNotFound                 also another tenant's webhook
    ├── Unauthenticated                 UNAUTHENTICATED
    ├── PermissionDenied                PERMISSION_DENIED
    ├── ResourceExhausted               RESOURCE_EXHAUSTED
    │   ├── RateLimited                     the tenant's request budget (retried first)
    │   └── SubscriberTooSlow               a status stream was read too slowly
    ├── Unavailable                     UNAVAILABLE (database or server unreachable)
    │   └── ServerShuttingDown              reconnect, possibly to another replica
    ├── DeadlineExceeded                DEADLINE_EXCEEDED (the call's timeout ran out)
    └── InternalError                   INTERNAL, UNKNOWN, DATA_LOSS (.correlation_id)

A reason the SDK does not know yet (a newer server) falls back to the class of its gRPC code, and
a status without details (e.g. a connection failure) to the class of its code too, so ``except
Unavailable`` works whether the database or the network is down. Any other gRPC code (CANCELLED,
UNIMPLEMENTED, ...) raises `FlowstateError` itself.
"""

# ruff: noqa: N818  # names follow the error codes and gRPC codes (InvalidPhase, NotFound), not "...Error"

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, cast

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from flowstate.client._enums import ErrorCode, FlowStatus, PhaseState
from flowstate.v1 import errors_pb2

__all__ = [
    "Aborted",
    "BulkActionNotFound",
    "ChildFlowLimitExceeded",
    "ChildFlowNotLinkable",
    "DeadlineExceeded",
    "DefinitionNotFound",
    "DefinitionShadowsBuiltin",
    "DependentPhasesActive",
    "FailedPrecondition",
    "FlowNotFound",
    "FlowPaused",
    "FlowTerminal",
    "FlowstateError",
    "InternalError",
    "InvalidArgument",
    "InvalidFlowTransition",
    "InvalidPhase",
    "InvalidPhaseTransition",
    "MalformedRequest",
    "MaxRetriesExceeded",
    "NotFound",
    "PermissionDenied",
    "PhaseFollowsChildFlow",
    "PhaseOrderViolation",
    "RateLimited",
    "RequestIdReused",
    "ResourceExhausted",
    "RetryNotAllowed",
    "ServerShuttingDown",
    "SubscriberTooSlow",
    "Unauthenticated",
    "Unavailable",
    "VersionConflict",
    "WebhookNotFound",
]

ERROR_DOMAIN = "flowstate.v1"


class FlowstateError(Exception):
    """A call to Flowstate failed: the structured error the server sent, decoded.

    Attributes:
        message: The human-readable explanation (safe to show to an operator).
        code: The Flowstate error code (the ``ErrorInfo`` reason); ``ErrorCode.UNSPECIFIED``
            when the status carried none (e.g. a transport failure with an unusual code).
        grpc_code: The gRPC status code of the call.
        details: The free-form details of the ``FlowError`` (``valid_transitions``,
            ``blocking_phases``, ``current_version``...), as plain Python values.
        flow_error: The decoded ``flowstate.v1.FlowError``, or None when the status had none.
        retry_allowed: Whether sending the same request again may succeed.
        correlation_id: The id under which the server logged the request, if it sent one.
        phase: The phase the error is about, if any.
        retry_delay: The server's suggested wait before retrying (``RetryInfo``), if any.
        status: The raw ``google.rpc.Status``, or None when the call carried no rich status.
    """

    #: The gRPC code this class stands for; the default when an error is built from a
    #: ``FlowError`` alone (e.g. `ValidationResult.error`).
    default_grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    message: str
    code: ErrorCode
    grpc_code: grpc.StatusCode
    details: dict[str, Any]
    flow_error: errors_pb2.FlowError | None
    retry_allowed: bool
    correlation_id: str | None
    phase: str | None
    retry_delay: timedelta | None
    status: status_pb2.Status | None

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode = ErrorCode.UNSPECIFIED,
        grpc_code: grpc.StatusCode | None = None,
        details: dict[str, Any] | None = None,
        flow_error: errors_pb2.FlowError | None = None,
        retry_allowed: bool | None = None,
        correlation_id: str | None = None,
        phase: str | None = None,
        retry_delay: timedelta | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        """Build the error; the SDK does this for you from a failed call."""
        super().__init__(message)
        self.message = message
        self.code = code
        self.grpc_code = grpc_code if grpc_code is not None else self.default_grpc_code
        self.details = dict(details or {})
        self.flow_error = flow_error
        if retry_allowed is None:
            retry_allowed = self.grpc_code == grpc.StatusCode.UNAVAILABLE
        self.retry_allowed = retry_allowed
        self.correlation_id = correlation_id or None
        self.phase = phase or None
        self.retry_delay = retry_delay
        self.status = status

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """(field, description) of each ``google.rpc.BadRequest`` violation of the status.

        A malformed request names every problem with its path, e.g. a refused flow definition
        ``("phases[2].depends_on[0]", "unknown phase 'ghost'")``; empty for other errors.
        """
        if self.status is None:
            return []
        found: list[tuple[str, str]] = []
        for packed in self.status.details:
            bad_request = error_details_pb2.BadRequest()
            if packed.Unpack(bad_request):  # False for every other detail type
                found += [(v.field, v.description) for v in bad_request.field_violations]
        return found

    def __str__(self) -> str:
        """``CODE: message``, plus the correlation id when there is one."""
        label = self.code.name if self.code != ErrorCode.UNSPECIFIED else self.grpc_code.name
        text = f"{label}: {self.message}"
        if self.correlation_id and self.correlation_id not in self.message:
            text += f" (correlation id {self.correlation_id})"
        return text

    def __repr__(self) -> str:
        """The class, code and message: what a reader of a log needs first."""
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-able data (what the CLI prints with ``--json``)."""
        return {
            "code": self.code.name,
            "grpc_code": self.grpc_code.name,
            "message": self.message,
            "details": self.details,
            "retry_allowed": self.retry_allowed,
            "correlation_id": self.correlation_id,
            "phase": self.phase,
        }

    def _detail_list(self, key: str) -> list[Any]:
        value = self.details.get(key)
        return list(value) if isinstance(value, list) else []


# --- INVALID_ARGUMENT ------------------------------------------------------------------------


class InvalidArgument(FlowstateError):
    """The request is invalid whatever the flow's state (INVALID_ARGUMENT)."""

    default_grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidPhase(InvalidArgument):
    """The phase name is not part of the flow's definition."""


class MalformedRequest(InvalidArgument):
    """A field is missing, out of range or malformed (``details["field"]`` names it)."""


class RequestIdReused(InvalidArgument):
    """A request id was reused with a different payload; it is never silently replayed."""


# --- FAILED_PRECONDITION ---------------------------------------------------------------------


class FailedPrecondition(FlowstateError):
    """The request is refused in the flow's current state (FAILED_PRECONDITION)."""

    default_grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    @property
    def recovery(self) -> list[str]:
        """Recovery actions that remain possible (e.g. ``["rollback", "cancel"]``)."""
        if self.flow_error is not None and self.flow_error.recovery:
            return list(self.flow_error.recovery)
        return [str(item) for item in self._detail_list("recovery")]


class InvalidPhaseTransition(FailedPrecondition):
    """The phase cannot move from its state to the target."""

    @property
    def valid_transitions(self) -> list[PhaseState]:
        """The legal target states from the phase's current state."""
        if self.flow_error is not None and self.flow_error.valid_transitions:
            return [PhaseState(value) for value in self.flow_error.valid_transitions]
        return [PhaseState.parse(value) for value in self._detail_list("valid_transitions")]


class InvalidFlowTransition(FailedPrecondition):
    """The flow cannot move from its status to the target."""

    @property
    def valid_flow_transitions(self) -> list[FlowStatus]:
        """The legal target statuses from the flow's current status."""
        if self.flow_error is not None and self.flow_error.valid_flow_transitions:
            return [FlowStatus(value) for value in self.flow_error.valid_flow_transitions]
        values = self._detail_list("valid_flow_transitions") or self._detail_list(
            "valid_transitions"
        )
        return [FlowStatus.parse(value) for value in values]


class PhaseOrderViolation(FailedPrecondition):
    """A dependency of the phase is not COMPLETED, so it may not start."""

    @property
    def blocking_phases(self) -> list[str]:
        """The dependencies that are not COMPLETED yet."""
        if self.flow_error is not None and self.flow_error.blocking_phases:
            return list(self.flow_error.blocking_phases)
        return [str(item) for item in self._detail_list("blocking_phases")]


class DependentPhasesActive(FailedPrecondition):
    """A rollback with ``cascade=False`` found downstream phases that have left NOT_STARTED."""

    @property
    def dependent_phases(self) -> list[str]:
        """The downstream phases that block the rollback."""
        if self.flow_error is not None and self.flow_error.dependent_phases:
            return list(self.flow_error.dependent_phases)
        return [str(item) for item in self._detail_list("dependent_phases")]


class FlowPaused(FailedPrecondition):
    """The flow is PAUSED, so no phase may start until it is resumed."""


class FlowTerminal(FailedPrecondition):
    """The flow is COMPLETED or CANCELLED; nothing changes it any more."""


class ApprovalRequired(FailedPrecondition):
    """The phase's policy requires an approval decision: use `decide_phase` (flows:approve)."""


class _RetryAccounting(FailedPrecondition):
    @property
    def attempts_remaining(self) -> int | None:
        """Retry attempts left for the phase, when the server said."""
        if self.flow_error is not None and self.flow_error.HasField("attempts_remaining"):
            return self.flow_error.attempts_remaining
        value = self.details.get("attempts_remaining")
        return int(value) if isinstance(value, int | float) else None


class MaxRetriesExceeded(_RetryAccounting):
    """The phase has used all of its retries (see `recovery` for what remains)."""


class RetryNotAllowed(_RetryAccounting):
    """The phase failed with a non-retryable code; only an admin may force a retry."""


# --- ABORTED ---------------------------------------------------------------------------------


class Aborted(FlowstateError):
    """The request lost a race with another change (ABORTED)."""

    default_grpc_code = grpc.StatusCode.ABORTED


class VersionConflict(Aborted):
    """``expected_version`` is stale: the flow changed since it was read."""

    @property
    def current_version(self) -> int | None:
        """The flow's version now; re-read the flow and decide again."""
        if self.flow_error is not None and self.flow_error.current_version:
            return self.flow_error.current_version
        value = self.details.get("current_version")
        return int(value) if isinstance(value, int | float) else None


# --- other codes -----------------------------------------------------------------------------


class NotFound(FlowstateError):
    """The resource does not exist for the caller (NOT_FOUND)."""

    default_grpc_code = grpc.StatusCode.NOT_FOUND


class FlowNotFound(NotFound):
    """No such flow for the caller's tenant (also the answer for another tenant's flow)."""


class DefinitionNotFound(NotFound):
    """No such flow definition (or version) for the caller's tenant (also another tenant's)."""


class WebhookNotFound(NotFound):
    """No such webhook for the caller's tenant (also another tenant's)."""


class BulkActionNotFound(NotFound):
    """No such bulk action for the caller's tenant (also another tenant's)."""


class DefinitionShadowsBuiltin(FailedPrecondition):
    """The definition's name is a built-in's; register it with ``allow_shadow_builtin=True``."""


class Unauthenticated(FlowstateError):
    """The credentials are missing, expired or forged (UNAUTHENTICATED)."""

    default_grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FlowstateError):
    """The credentials' scopes are too small for the call (PERMISSION_DENIED)."""

    default_grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(FlowstateError):
    """A limit was hit (RESOURCE_EXHAUSTED)."""

    default_grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimited(ResourceExhausted):
    """The tenant spent its request budget for this kind of call (RATE_LIMITED).

    Nothing was applied. The SDK already retried after the delay the server asked for
    (``retry_delay``, from google.rpc.RetryInfo) before raising this.
    """


class SubscriberTooSlow(ResourceExhausted):
    """A status stream was ended because it was read too slowly; resume from the last version.

    `AsyncFlowstateClient.watch` and `watch_flows` resume by themselves; this reaches callers
    only when resuming is impossible.
    """


class Unavailable(FlowstateError):
    """The server or its database cannot be reached now; retry with backoff (UNAVAILABLE).

    The SDK already retried with backoff before raising this.
    """

    default_grpc_code = grpc.StatusCode.UNAVAILABLE


class ServerShuttingDown(Unavailable):
    """The server is shutting down; reconnect (to another replica) and resume."""


class DeadlineExceeded(FlowstateError):
    """The call's timeout ran out before the server answered (DEADLINE_EXCEEDED).

    A mutation may still have been applied: send it again with the same ``request_id`` to get its
    result without applying it twice.
    """

    default_grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class PhaseFollowsChildFlow(FailedPrecondition):
    """The phase is of kind child_flow: its progress and outcome come from its child flow."""


class ChildFlowLimitExceeded(FailedPrecondition):
    """A new child flow would be too deep, or its parent has too many children."""


class ChildFlowNotLinkable(FailedPrecondition):
    """The flow to link already has a parent, follows another definition, or is an ancestor."""


class InternalError(FlowstateError):
    """The server failed unexpectedly; report `correlation_id` to its operators (INTERNAL)."""

    default_grpc_code = grpc.StatusCode.INTERNAL


_BY_REASON: dict[ErrorCode, type[FlowstateError]] = {
    ErrorCode.INVALID_PHASE: InvalidPhase,
    ErrorCode.MALFORMED_REQUEST: MalformedRequest,
    ErrorCode.REQUEST_ID_REUSED: RequestIdReused,
    ErrorCode.INVALID_PHASE_TRANSITION: InvalidPhaseTransition,
    ErrorCode.INVALID_FLOW_TRANSITION: InvalidFlowTransition,
    ErrorCode.PHASE_ORDER_VIOLATION: PhaseOrderViolation,
    ErrorCode.DEPENDENT_PHASES_ACTIVE: DependentPhasesActive,
    ErrorCode.FLOW_PAUSED: FlowPaused,
    ErrorCode.FLOW_TERMINAL: FlowTerminal,
    ErrorCode.MAX_RETRIES_EXCEEDED: MaxRetriesExceeded,
    ErrorCode.RETRY_NOT_ALLOWED: RetryNotAllowed,
    ErrorCode.VERSION_CONFLICT: VersionConflict,
    ErrorCode.FLOW_NOT_FOUND: FlowNotFound,
    ErrorCode.DEFINITION_NOT_FOUND: DefinitionNotFound,
    ErrorCode.BULK_ACTION_NOT_FOUND: BulkActionNotFound,
    ErrorCode.DEFINITION_SHADOWS_BUILTIN: DefinitionShadowsBuiltin,
    ErrorCode.WEBHOOK_NOT_FOUND: WebhookNotFound,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.APPROVAL_REQUIRED: ApprovalRequired,
    ErrorCode.PHASE_FOLLOWS_CHILD_FLOW: PhaseFollowsChildFlow,
    ErrorCode.CHILD_FLOW_LIMIT_EXCEEDED: ChildFlowLimitExceeded,
    ErrorCode.CHILD_FLOW_NOT_LINKABLE: ChildFlowNotLinkable,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE: Unavailable,
    ErrorCode.SUBSCRIBER_TOO_SLOW: SubscriberTooSlow,
    ErrorCode.SERVER_SHUTTING_DOWN: ServerShuttingDown,
    ErrorCode.INTERNAL: InternalError,
}

_BY_GRPC_CODE: dict[grpc.StatusCode, type[FlowstateError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}

# The code implied by a status without an ErrorInfo, for the classes that stand for one.
_IMPLIED_CODE: dict[type[FlowstateError], ErrorCode] = {
    Unauthenticated: ErrorCode.UNAUTHENTICATED,
    PermissionDenied: ErrorCode.PERMISSION_DENIED,
    Unavailable: ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE,
    InternalError: ErrorCode.INTERNAL,
}

_GRPC_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def error_class(code: ErrorCode, grpc_code: grpc.StatusCode | None = None) -> type[FlowstateError]:
    """The exception class for an error code, falling back to the class of a gRPC code."""
    cls = _BY_REASON.get(code)
    if cls is not None:
        return cls
    if grpc_code is not None:
        return _BY_GRPC_CODE.get(grpc_code, FlowstateError)
    return FlowstateError


def error_from_flow_error(
    flow_error: errors_pb2.FlowError,
    *,
    grpc_code: grpc.StatusCode | None = None,
    status: status_pb2.Status | None = None,
    retry_delay: timedelta | None = None,
    fallback_message: str = "",
    code: ErrorCode | None = None,
) -> FlowstateError:
    """The exception for a ``FlowError`` (from a failed call, or a dry run's answer).

    `code` overrides the ``FlowError``'s own code (the ``ErrorInfo`` reason wins when a call
    carried both).
    """
    if code is None:
        code = ErrorCode(flow_error.error_code)
    cls = error_class(code, grpc_code)
    return cls(
        flow_error.message or fallback_message,
        code=code,
        grpc_code=grpc_code,
        details=_struct_to_dict(flow_error),
        flow_error=flow_error,
        retry_allowed=flow_error.retry_allowed,
        correlation_id=flow_error.correlation_id,
        phase=flow_error.phase,
        retry_delay=retry_delay,
        status=status,
    )


def error_from_rpc_error(error: grpc.RpcError) -> FlowstateError:
    """The exception for a failed gRPC call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    The rich status is decoded with ``grpc_status.rpc_status.from_call``; the class is chosen by
    the ``ErrorInfo`` reason (domain ``flowstate.v1``), then the ``FlowError`` code, then the
    gRPC code.
    """
    call = cast("grpc.Call", error)
    grpc_code = call.code()
    message = call.details() or ""
    status = _rich_status(call)

    error_info: error_details_pb2.ErrorInfo | None = None
    retry_delay: timedelta | None = None
    flow_error: errors_pb2.FlowError | None = None
    for detail in status.details if status is not None else ():
        # Any.Unpack returns False (and leaves the message alone) when the type differs.
        info = error_details_pb2.ErrorInfo()
        retry_info = error_details_pb2.RetryInfo()
        decoded = errors_pb2.FlowError()
        if detail.Unpack(info):
            if info.domain in ("", ERROR_DOMAIN) and error_info is None:
                error_info = info
        elif detail.Unpack(retry_info):
            retry_delay = retry_info.retry_delay.ToTimedelta()
        elif detail.Unpack(decoded):
            flow_error = decoded

    code = ErrorCode.UNSPECIFIED
    if error_info is not None and error_info.reason:
        try:
            code = ErrorCode.parse(error_info.reason)
        except ValueError:
            code = ErrorCode.UNSPECIFIED
    if code == ErrorCode.UNSPECIFIED and flow_error is not None:
        code = ErrorCode(flow_error.error_code)

    if flow_error is not None:
        return error_from_flow_error(
            flow_error,
            grpc_code=grpc_code,
            status=status,
            retry_delay=retry_delay,
            fallback_message=message,
            code=code,
        )

    cls = error_class(code, grpc_code)
    if code == ErrorCode.UNSPECIFIED:
        code = _IMPLIED_CODE.get(cls, ErrorCode.UNSPECIFIED)
    metadata = dict(error_info.metadata) if error_info is not None else {}
    return cls(
        message,
        code=code,
        grpc_code=grpc_code,
        details=metadata,
        retry_allowed=retry_delay is not None or grpc_code == grpc.StatusCode.UNAVAILABLE,
        correlation_id=metadata.get("correlation_id"),
        retry_delay=retry_delay,
        status=status,
    )


def _rich_status(call: grpc.Call) -> status_pb2.Status | None:
    try:
        return cast("status_pb2.Status | None", rpc_status.from_call(call))
    except ValueError:
        # The status proto disagrees with the call's code or message (a proxy rewrote one of
        # them); its details are still the server's, so decode them anyway.
        for key, value in call.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                return status_pb2.Status.FromString(value)
        return None


def _struct_to_dict(flow_error: errors_pb2.FlowError) -> dict[str, Any]:
    if not flow_error.HasField("details"):
        return {}
    details = json_format.MessageToDict(flow_error.details)
    return {key: whole_numbers(value) for key, value in details.items()}


def whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles; give back ints where they are whole (versions, counts)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    return value


def grpc_code_from_number(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a ``google.rpc.Code`` number (UNKNOWN for an unknown one)."""
    return _GRPC_CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
