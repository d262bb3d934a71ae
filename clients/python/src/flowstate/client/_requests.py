"""Build the ``flowstate.v1`` request messages from the clients' Python arguments.

Shared by the async and the sync client so that both send byte-for-byte the same requests.
Mutations get a fresh ``request_id`` (a uuid4) when the caller gives none; the client reuses that
request for every retry of the call, so a retried mutation is never applied twice.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from flowstate.client._enums import ApprovalDecision, ErrorCode, FlowStatus, PhaseState
from flowstate.client._models import ExternalDependency
from flowstate.v1 import approvals_pb2, definition_pb2, errors_pb2, flow_service_pb2, states_pb2

__all__ = [
    "EnumLike",
    "cancel_flow",
    "create_flow",
    "create_flow_definition",
    "definition_message",
    "get_flow",
    "list_flow_history",
    "list_flows",
    "new_request_id",
    "pause_flow",
    "resume_flow",
    "retry",
    "rollback",
    "skip_phase",
    "transition_phase",
    "update_phase_progress",
    "validate_transition",
    "watch_flow",
    "watch_flows",
    "with_request_id",
]

#: What the clients accept for an enum argument: a member, a proto number or a name.
EnumLike = int | str


_M = TypeVar("_M", bound=Message)


def _phase_state(value: EnumLike) -> states_pb2.PhaseState.ValueType:
    return states_pb2.PhaseState.ValueType(PhaseState.parse(value))


def flow_status(value: EnumLike) -> states_pb2.FlowStatus.ValueType:
    """The proto number of a `FlowStatus`, its number or its name."""
    return states_pb2.FlowStatus.ValueType(FlowStatus.parse(value))


_flow_status = flow_status


def _error_code(value: EnumLike) -> errors_pb2.ErrorCode.ValueType:
    return errors_pb2.ErrorCode.ValueType(ErrorCode.parse(value))


def with_request_id(request: _M, request_id: str | None) -> _M:
    """A copy of a mutation request (e.g. a recovery option's) with a ``request_id`` set."""
    copy = type(request)()
    copy.CopyFrom(request)
    setattr(copy, "request_id", request_id or new_request_id())  # noqa: B010  # any mutation
    return copy


def new_request_id() -> str:
    """A fresh idempotency key."""
    return str(uuid.uuid4())


def _struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not values:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


def _flow_id(flow_id: str) -> str:
    if not flow_id:
        raise ValueError("flow_id must not be empty")
    return flow_id


def create_flow(
    *,
    definition_name: str,
    definition_version: int,
    flow_id: str | None,
    display_name: str,
    labels: Mapping[str, str] | None,
    request_id: str | None,
    deadline: datetime | None = None,
    external_dependencies: Iterable[ExternalDependency] = (),
) -> flow_service_pb2.CreateFlowRequest:
    """A ``CreateFlowRequest``."""
    request = flow_service_pb2.CreateFlowRequest(
        request_id=request_id or new_request_id(),
        definition_name=definition_name,
        definition_version=definition_version,
        flow_id=flow_id or "",
        display_name=display_name,
        labels=dict(labels or {}),
        external_dependencies=[d._to_proto() for d in external_dependencies],
    )
    if deadline is not None:
        if deadline.tzinfo is None:
            raise ValueError("deadline must be timezone-aware")
        request.deadline.FromDatetime(deadline)
    return request


def decide_phase(
    flow_id: str,
    phase: str,
    decision: EnumLike,
    *,
    comment: str,
    request_id: str | None,
    expected_version: int | None,
) -> flow_service_pb2.DecidePhaseRequest:
    """A ``DecidePhaseRequest`` (`decision`: an `ApprovalDecision`, its number or name)."""
    return flow_service_pb2.DecidePhaseRequest(
        flow_id=_flow_id(flow_id),
        phase=phase,
        decision=approvals_pb2.ApprovalDecision.ValueType(ApprovalDecision.parse(decision)),
        comment=comment,
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def definition_message(
    definition: Mapping[str, Any] | definition_pb2.FlowDefinition,
) -> definition_pb2.FlowDefinition:
    """A ``FlowDefinition`` message from a message or a plain mapping (a parsed YAML/JSON file).

    The mapping has the keys of the message: ``name``, ``display_name``, ``description`` and
    ``phases``, each phase with ``name``, ``depends_on``, ``weight``, ``max_retries``,
    ``status_group`` (a `FlowStatus`, its number or its name), ``optional``, ``display_name``,
    ``description``, ``kind`` and ``child_flow`` (docs/child_flows.md: ``kind: child_flow``,
    ``child_flow: {definition, version, on_parent_cancel}`` or the message's names), and
    ``policy`` (``timeout``, ``heartbeat_timeout``, ``retry_policy`` with ``initial_backoff``,
    ``multiplier``, ``max_backoff``, ``retry_on``; durations as seconds or ``"500ms"``,
    ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``; codes as `ErrorCode` members, numbers or names).
    The server checks the structure and the limits (and names every problem with its path);
    here a key the message has no field for, or a value of the wrong type, raises ValueError.
    """
    if isinstance(definition, definition_pb2.FlowDefinition):
        return definition
    data = dict(definition)
    phases = []
    for phase in data.pop("phases", None) or []:
        entry = dict(phase) if isinstance(phase, Mapping) else {"name": phase}
        group = entry.get("status_group")
        if group is not None and group != "":
            entry["status_group"] = FlowStatus.parse(group).proto_name
        if isinstance(entry.get("policy"), Mapping):
            entry["policy"] = _policy_json(entry["policy"])
        _child_flow_keys(entry)
        phases.append(entry)
    data["phases"] = phases
    message = definition_pb2.FlowDefinition()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise ValueError(f"not a flow definition: {exc}") from None
    return message


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration_json(value: Any) -> Any:
    """A duration (seconds, or ``"30s"``, ``"5m"``, ...) in the JSON form of a proto Duration;
    anything else unchanged (the message parser refuses it)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        return value
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _policy_json(policy: Mapping[str, Any]) -> dict[str, Any]:
    """A phase policy mapping in the JSON form of ``PhasePolicy`` (see `definition_message`)."""
    data = dict(policy)
    for key in ("timeout", "heartbeat_timeout"):
        if key in data:
            data[key] = _duration_json(data[key])
    retry = data.get("retry_policy")
    if isinstance(retry, Mapping):
        retry = dict(retry)
        for key in ("initial_backoff", "max_backoff"):
            if key in retry:
                retry[key] = _duration_json(retry[key])
        codes = retry.get("retry_on")
        if isinstance(codes, list):
            retry["retry_on"] = [
                ErrorCode.parse(code).proto_name if isinstance(code, int | str) else code
                for code in codes
            ]
        data["retry_policy"] = retry
    return data


def _enum_name(value: object, prefix: str) -> object:
    """``child_flow`` -> ``PHASE_KIND_CHILD_FLOW`` (names given in the file's short form)."""
    if isinstance(value, str) and not value.upper().startswith(prefix):
        return prefix + value.upper()
    return value


def _child_flow_keys(entry: dict[str, Any]) -> None:
    """Accept a phase's ``kind`` and ``child_flow`` in the file form of docs/child_flows.md
    (``kind: child_flow``, ``child_flow: {definition, version, on_parent_cancel}``) as well as
    in the message's."""
    if "kind" in entry:
        entry["kind"] = _enum_name(entry["kind"], "PHASE_KIND_")
    child = entry.get("child_flow")
    if isinstance(child, Mapping):
        spec = dict(child)
        if "definition" in spec:
            spec["definition_name"] = spec.pop("definition")
        if "version" in spec:
            spec["definition_version"] = spec.pop("version")
        if "on_parent_cancel" in spec:
            spec["on_parent_cancel"] = _enum_name(spec["on_parent_cancel"], "PARENT_CANCEL_POLICY_")
        entry["child_flow"] = spec


def create_flow_definition(
    definition: Mapping[str, Any] | definition_pb2.FlowDefinition,
    *,
    allow_shadow_builtin: bool,
    validate_only: bool,
    request_id: str | None,
) -> flow_service_pb2.CreateFlowDefinitionRequest:
    """A ``CreateFlowDefinitionRequest``."""
    return flow_service_pb2.CreateFlowDefinitionRequest(
        request_id=request_id or new_request_id(),
        definition=definition_message(definition),
        allow_shadow_builtin=allow_shadow_builtin,
        validate_only=validate_only,
    )


def skip_phase(
    flow_id: str,
    phase: str,
    *,
    reason: str,
    metadata: Mapping[str, Any] | None,
    request_id: str | None,
    expected_version: int | None,
) -> flow_service_pb2.SkipPhaseRequest:
    """A ``SkipPhaseRequest``."""
    return flow_service_pb2.SkipPhaseRequest(
        flow_id=_flow_id(flow_id),
        phase=phase,
        reason=reason,
        metadata=_struct(metadata),
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def get_flow(flow_id: str, *, children_depth: int = 0) -> flow_service_pb2.GetFlowRequest:
    """A ``GetFlowRequest`` (with the flow's descendants down to `children_depth` levels)."""
    return flow_service_pb2.GetFlowRequest(flow_id=_flow_id(flow_id), children_depth=children_depth)


def link_child_flow(
    flow_id: str,
    phase: str,
    child_flow_id: str,
    *,
    reason: str,
    request_id: str | None,
    expected_version: int | None,
) -> flow_service_pb2.LinkChildFlowRequest:
    """A ``LinkChildFlowRequest``."""
    return flow_service_pb2.LinkChildFlowRequest(
        flow_id=_flow_id(flow_id),
        phase=phase,
        child_flow_id=_flow_id(child_flow_id),
        reason=reason,
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def list_flows(
    *,
    statuses: Iterable[EnumLike],
    phase_states: Mapping[str, Iterable[EnumLike] | EnumLike] | None,
    updated_before: datetime | timedelta | None,
    definition_name: str | None,
    page_size: int,
    page_token: str | None,
    now: datetime | None = None,
    filter: str = "",
    alerting: bool = False,
    parent_flow_id: str | None = None,
) -> flow_service_pb2.ListFlowsRequest:
    """A ``ListFlowsRequest``; a `timedelta` `updated_before` means "not changed for that long"."""
    request = flow_service_pb2.ListFlowsRequest(
        page_size=page_size,
        page_token=page_token or "",
        filter=filter,
        statuses=[_flow_status(status) for status in statuses],
        definition_name=definition_name or "",
        alerting=alerting,
        parent_flow_id=_flow_id(parent_flow_id) if parent_flow_id else "",
    )
    for phase, states in (phase_states or {}).items():
        values = [states] if isinstance(states, int | str) else list(states)
        request.phase_states.add(phase=phase, states=[_phase_state(s) for s in values])
    if updated_before is not None:
        if isinstance(updated_before, timedelta):
            updated_before = (now or datetime.now(UTC)) - updated_before
        if updated_before.tzinfo is None:
            raise ValueError("updated_before must be timezone-aware")
        request.updated_before.FromDatetime(updated_before)
    return request


def validate_transition(
    *,
    flow_id: str | None,
    definition_name: str | None,
    phase: str | None,
    from_state: EnumLike | None,
    to_state: EnumLike | None,
    from_status: EnumLike | None,
    to_status: EnumLike | None,
) -> flow_service_pb2.ValidateTransitionRequest:
    """A ``ValidateTransitionRequest`` for a phase transition (`phase`) or a flow transition."""
    request = flow_service_pb2.ValidateTransitionRequest(
        flow_id=flow_id or "", definition_name=definition_name or ""
    )
    if phase is not None or to_state is not None:
        if phase is None or to_state is None:
            raise ValueError("a phase transition needs both phase and to_state")
        if from_state is None and not flow_id:
            raise ValueError("without a flow_id, a phase transition needs from_state")
        request.phase_transition.phase = phase
        request.phase_transition.to_state = _phase_state(to_state)
        if from_state is not None:
            request.phase_transition.from_state = _phase_state(from_state)
    elif to_status is not None:
        if from_status is None and not flow_id:
            raise ValueError("without a flow_id, a flow transition needs from_status")
        request.flow_transition.to_status = _flow_status(to_status)
        if from_status is not None:
            request.flow_transition.from_status = _flow_status(from_status)
    else:
        raise ValueError("give a phase transition (phase, to_state) or a flow one (to_status)")
    return request


def transition_phase(
    flow_id: str,
    phase: str,
    target_state: EnumLike,
    *,
    reason: str,
    error_code: EnumLike | None,
    error_message: str,
    error_details: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    request_id: str | None,
    expected_version: int | None,
) -> flow_service_pb2.TransitionPhaseRequest:
    """A ``TransitionPhaseRequest``; the error fields make the failure report."""
    failure = None
    if error_code is not None or error_message or error_details:
        failure = errors_pb2.PhaseFailure(
            error_code=_error_code(error_code if error_code is not None else 0),
            message=error_message,
            details=_struct(error_details),
        )
    return flow_service_pb2.TransitionPhaseRequest(
        flow_id=_flow_id(flow_id),
        phase=phase,
        target_state=_phase_state(target_state),
        reason=reason,
        failure=failure,
        metadata=_struct(metadata),
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def update_phase_progress(
    flow_id: str,
    phase: str,
    progress: float,
    *,
    reason: str,
    metadata: Mapping[str, Any] | None,
    request_id: str | None,
    expected_version: int | None,
) -> flow_service_pb2.UpdatePhaseProgressRequest:
    """An ``UpdatePhaseProgressRequest``."""
    return flow_service_pb2.UpdatePhaseProgressRequest(
        flow_id=_flow_id(flow_id),
        phase=phase,
        progress=progress,
        reason=reason,
        metadata=_struct(metadata),
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def heartbeat(flow_id: str, phase: str) -> flow_service_pb2.HeartbeatRequest:
    """A ``HeartbeatRequest``."""
    return flow_service_pb2.HeartbeatRequest(flow_id=_flow_id(flow_id), phase=phase)


def rollback(
    flow_id: str,
    phase: str,
    *,
    cascade: bool,
    reason: str,
    request_id: str | None,
    expected_version: int | None,
) -> flow_service_pb2.RollbackRequest:
    """A ``RollbackRequest`` (``cascade`` always sent explicitly)."""
    return flow_service_pb2.RollbackRequest(
        flow_id=_flow_id(flow_id),
        phase=phase,
        cascade=cascade,
        reason=reason,
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def retry(
    flow_id: str,
    phase: str,
    *,
    force: bool,
    reason: str,
    request_id: str | None,
    expected_version: int | None,
) -> flow_service_pb2.RetryRequest:
    """A ``RetryRequest``."""
    return flow_service_pb2.RetryRequest(
        flow_id=_flow_id(flow_id),
        phase=phase,
        force=force,
        reason=reason,
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def pause_flow(
    flow_id: str, *, reason: str, request_id: str | None, expected_version: int | None
) -> flow_service_pb2.PauseFlowRequest:
    """A ``PauseFlowRequest``."""
    return flow_service_pb2.PauseFlowRequest(
        flow_id=_flow_id(flow_id),
        reason=reason,
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def resume_flow(
    flow_id: str, *, reason: str, request_id: str | None, expected_version: int | None
) -> flow_service_pb2.ResumeFlowRequest:
    """A ``ResumeFlowRequest``."""
    return flow_service_pb2.ResumeFlowRequest(
        flow_id=_flow_id(flow_id),
        reason=reason,
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def cancel_flow(
    flow_id: str, *, reason: str, request_id: str | None, expected_version: int | None
) -> flow_service_pb2.CancelFlowRequest:
    """A ``CancelFlowRequest``."""
    return flow_service_pb2.CancelFlowRequest(
        flow_id=_flow_id(flow_id),
        reason=reason,
        request_id=request_id or new_request_id(),
        expected_version=expected_version,
    )


def list_flow_history(
    flow_id: str, *, after_version: int, page_size: int, page_token: str | None
) -> flow_service_pb2.ListFlowHistoryRequest:
    """A ``ListFlowHistoryRequest``."""
    return flow_service_pb2.ListFlowHistoryRequest(
        flow_id=_flow_id(flow_id),
        after_version=after_version,
        page_size=page_size,
        page_token=page_token or "",
    )


def watch_flow(
    flow_id: str,
    *,
    after_version: int | None,
    keep_open: bool,
    children_depth: int = 0,
    include_dependencies: bool = False,
    cursor: str | None = None,
) -> flow_service_pb2.WatchFlowRequest:
    """A ``WatchFlowRequest``."""
    return flow_service_pb2.WatchFlowRequest(
        flow_id=_flow_id(flow_id),
        after_version=after_version,
        keep_open=keep_open,
        children_depth=children_depth,
        include_dependencies=include_dependencies,
        cursor=cursor or "",
    )


def watch_flows(
    *,
    statuses: Iterable[EnumLike],
    definition_name: str | None,
    flow_ids: Iterable[str],
    cursor: str | None,
    filter: str = "",
) -> flow_service_pb2.WatchFlowsRequest:
    """A ``WatchFlowsRequest``."""
    return flow_service_pb2.WatchFlowsRequest(
        statuses=[_flow_status(status) for status in statuses],
        definition_name=definition_name or "",
        flow_ids=list(flow_ids),
        cursor=cursor or "",
        filter=filter,
    )
