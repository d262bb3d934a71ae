"""Conversions between the core's domain values and the `flowstate.v1` messages.

Enum tables are built once at import from the names (``PhaseState.IN_PROGRESS`` <->
``PHASE_STATE_IN_PROGRESS``), so a domain value without a proto counterpart fails at start-up,
not on a request. Per-definition data (phase weights and retry limits, the `FlowDefinition`
message) is cached by `DefinitionView`, because definitions are immutable per (name, version).

Nothing here validates requests (see `flowstate.server.validation`) or talks to the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2, unknown_fields

from flowstate.core.bulk import BulkActionKind, BulkActionState, BulkOutcome
from flowstate.core.commands import (
    CancelFlow,
    Command,
    PauseFlow,
    ResumeFlow,
    Retry,
    Rollback,
    SkipPhase,
    TransitionPhase,
    UpdatePhaseProgress,
)
from flowstate.core.definitions import (
    ApprovalPolicy,
    ApprovalTimeoutAction,
    FlowDefinition,
    ParentCancelPolicy,
    PhaseDefinition,
    PhasePolicy,
)
from flowstate.core.model import (
    AlertKind,
    ApprovalDecision,
    ErrorCode,
    Flow,
    FlowAlert,
    FlowStatus,
    HistoryEntry,
    HistoryKind,
    Phase,
    PhaseApproval,
    PhaseError,
    PhaseState,
)
from flowstate.core.recovery import RecoveryAction, RecoveryOption
from flowstate.core.rules import FLOW_TRANSITIONS, PHASE_PROGRESS_FACTORS, PHASE_TRANSITIONS
from flowstate.storage.bulk import BulkAction
from flowstate.storage.retention import RetentionPolicy
from flowstate.v1 import (
    approvals_pb2,
    definition_pb2,
    errors_pb2,
    flow_pb2,
    flow_service_pb2,
    history_pb2,
    states_pb2,
)

__all__ = [
    "ALERT_KIND_TO_PROTO",
    "APPROVAL_DECISION_FROM_PROTO",
    "APPROVAL_DECISION_TO_PROTO",
    "BULK_KIND_TO_PROTO",
    "BULK_OUTCOME_TO_PROTO",
    "BULK_STATE_TO_PROTO",
    "ERROR_CODE_FROM_PROTO",
    "ERROR_CODE_TO_PROTO",
    "FLOW_STATUS_FROM_PROTO",
    "FLOW_STATUS_TO_PROTO",
    "FLOW_TARGETS",
    "HISTORY_KIND_TO_PROTO",
    "PHASE_STATE_FROM_PROTO",
    "PHASE_STATE_TO_PROTO",
    "PHASE_TARGETS",
    "PHASE_TARGETS_NOT_OPTIONAL",
    "RECOVERY_ACTION_TO_PROTO",
    "DefinitionView",
    "alert_to_proto",
    "approval_to_proto",
    "bulk_action_to_proto",
    "command_to_request",
    "dict_to_struct",
    "entries_to_proto",
    "entry_to_proto",
    "fill_event_change",
    "phase_error_to_proto",
    "phase_targets_proto",
    "policy_document",
    "policy_to_proto",
    "recovery_option_to_proto",
    "retention_policy_to_proto",
    "set_timestamp",
    "sorted_flow_statuses",
    "sorted_phase_states",
    "struct_to_dict",
    "timestamp",
]

PHASE_STATE_TO_PROTO: Mapping[PhaseState, states_pb2.PhaseState.ValueType] = {
    member: states_pb2.PhaseState.Value("PHASE_STATE_" + member.name) for member in PhaseState
}
"""Domain phase state -> proto number (matched by name; a missing one fails at import)."""
PHASE_STATE_FROM_PROTO: Mapping[int, PhaseState] = {v: k for k, v in PHASE_STATE_TO_PROTO.items()}
"""Proto number -> domain phase state; 0 (UNSPECIFIED) and unknown numbers are absent."""
FLOW_STATUS_TO_PROTO: Mapping[FlowStatus, states_pb2.FlowStatus.ValueType] = {
    member: states_pb2.FlowStatus.Value("FLOW_STATUS_" + member.name) for member in FlowStatus
}
"""Domain flow status -> proto number."""
FLOW_STATUS_FROM_PROTO: Mapping[int, FlowStatus] = {v: k for k, v in FLOW_STATUS_TO_PROTO.items()}
"""Proto number -> domain flow status; 0 and unknown numbers are absent."""
ERROR_CODE_TO_PROTO: Mapping[ErrorCode, errors_pb2.ErrorCode.ValueType] = {
    member: errors_pb2.ErrorCode.Value("ERROR_CODE_" + member.name) for member in ErrorCode
}
"""Domain error code -> proto number."""
ERROR_CODE_FROM_PROTO: Mapping[int, ErrorCode] = {v: k for k, v in ERROR_CODE_TO_PROTO.items()}
"""Proto number -> domain error code; 0 and unknown numbers are absent."""
HISTORY_KIND_TO_PROTO: Mapping[HistoryKind, history_pb2.HistoryEventKind.ValueType] = {
    member: history_pb2.HistoryEventKind.Value("HISTORY_EVENT_KIND_" + member.name)
    for member in HistoryKind
}
"""Domain history kind -> proto number."""
RECOVERY_ACTION_TO_PROTO: Mapping[RecoveryAction, flow_service_pb2.RecoveryAction.ValueType] = {
    member: flow_service_pb2.RecoveryAction.Value("RECOVERY_ACTION_" + member.name)
    for member in RecoveryAction
}
"""Domain recovery action -> proto number."""
APPROVAL_DECISION_TO_PROTO: Mapping[ApprovalDecision, approvals_pb2.ApprovalDecision.ValueType] = {
    member: approvals_pb2.ApprovalDecision.Value("APPROVAL_DECISION_" + member.name)
    for member in ApprovalDecision
}
"""Domain approval decision -> proto number."""
APPROVAL_DECISION_FROM_PROTO: Mapping[int, ApprovalDecision] = {
    v: k for k, v in APPROVAL_DECISION_TO_PROTO.items()
}
"""Proto number -> domain approval decision; 0 and unknown numbers are absent."""
ALERT_KIND_TO_PROTO: Mapping[AlertKind, approvals_pb2.AlertKind.ValueType] = {
    member: approvals_pb2.AlertKind.Value("ALERT_KIND_" + member.name) for member in AlertKind
}
"""Domain alert kind -> proto number."""
_TIMEOUT_ACTION_TO_PROTO: Mapping[
    ApprovalTimeoutAction, approvals_pb2.ApprovalTimeoutAction.ValueType
] = {
    member: approvals_pb2.ApprovalTimeoutAction.Value("APPROVAL_TIMEOUT_ACTION_" + member.name)
    for member in ApprovalTimeoutAction
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seconds_nanos(moment: datetime) -> tuple[int, int]:
    """(seconds, nanos) of `moment` (timezone-aware, or naive meaning UTC) since the epoch."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Exact integer arithmetic from the timedelta's normalised fields (days may be negative,
    # seconds and microseconds never are, as Timestamp wants): several times faster than
    # Timestamp.FromDatetime, and a flow message carries a dozen timestamps.
    since = moment - _EPOCH
    return since.days * 86400 + since.seconds, since.microseconds * 1000


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """`moment` (timezone-aware, or naive meaning UTC) as a Timestamp."""
    seconds, nanos = _seconds_nanos(moment)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def set_timestamp(target: timestamp_pb2.Timestamp, moment: datetime) -> None:
    """Set the Timestamp field `target` (of some message) to `moment`, in place (no copy)."""
    target.seconds, target.nanos = _seconds_nanos(moment)


def _duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(timedelta(seconds=seconds))
    return message


def _set_duration(target: duration_pb2.Duration, seconds: float) -> None:
    """Set the Duration field `target` in place, as `Duration.FromTimedelta` of
    ``timedelta(seconds=seconds)`` would (rounded to microseconds, nanos with the sign of
    seconds)."""
    span = timedelta(seconds=seconds)
    whole, nanos = span.days * 86400 + span.seconds, span.microseconds * 1000
    if whole < 0 and nanos > 0:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    target.seconds, target.nanos = whole, nanos


# --- google.protobuf.Struct <-> dict ---------------------------------------------------------


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # JSON has one number type; give integral values back as ints so that details such as
        # {"rows": 5} survive a round trip unchanged.
        if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    return None


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict (integral numbers as ints)."""
    return {key: _value_to_python(value) for key, value in message.fields.items()}


def dict_to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON-able mapping as a Struct."""
    message = struct_pb2.Struct()
    if data:
        message.update(data)
    return message


# --- domain -> proto ---------------------------------------------------------------------------


def phase_error_to_proto(error: PhaseError) -> errors_pb2.PhaseFailure:
    """A phase failure report as a PhaseFailure message."""
    return errors_pb2.PhaseFailure(
        error_code=ERROR_CODE_TO_PROTO[error.error_code],
        message=error.message,
        details=dict_to_struct(error.details),
        retryable=error.retryable,
    )


def entry_to_proto(flow_id: str, entry: HistoryEntry) -> history_pb2.HistoryEntry:
    """One history entry of flow `flow_id` as a message."""
    message = history_pb2.HistoryEntry(
        flow_id=flow_id,
        flow_version=entry.flow_version,
        kind=HISTORY_KIND_TO_PROTO[entry.kind],
        phase=entry.phase or "",
        status_before=FLOW_STATUS_TO_PROTO[entry.status_before],
        status_after=FLOW_STATUS_TO_PROTO[entry.status_after],
        reason=entry.reason,
        user_id=entry.user_id,
        request_id=entry.request_id,
        progress_after=entry.progress_after,
        cause_phase=entry.cause,
    )
    set_timestamp(message.occur_time, entry.occurred_at)
    if entry.from_state is not None:
        message.from_state = PHASE_STATE_TO_PROTO[entry.from_state]
    if entry.to_state is not None:
        message.to_state = PHASE_STATE_TO_PROTO[entry.to_state]
    if entry.metadata:
        message.metadata.update(entry.metadata)
    if entry.error is not None:
        message.error_context.CopyFrom(phase_error_to_proto(entry.error))
    if entry.time_in_state_seconds is not None:
        _set_duration(message.time_in_state, entry.time_in_state_seconds)
    if entry.next_attempt_at is not None:
        set_timestamp(message.next_attempt_time, entry.next_attempt_at)
    if entry.approval is not None:
        message.approval.CopyFrom(approval_to_proto(entry.approval))
    if entry.alert is not None:
        message.alert.CopyFrom(alert_to_proto(entry.alert))
    return message


def entries_to_proto(
    flow_id: str, entries: Iterable[HistoryEntry]
) -> list[history_pb2.HistoryEntry]:
    """Several history entries of flow `flow_id`, in order."""
    return [entry_to_proto(flow_id, entry) for entry in entries]


class DefinitionView:
    """A definition with what the conversions need precomputed: its message, weights, limits."""

    __slots__ = ("_limits", "_phase_names", "_skeleton", "definition", "message")

    def __init__(self, definition: FlowDefinition) -> None:
        """Precompute the FlowDefinition message and the per-phase weight and retry limit."""
        self.definition = definition
        self._limits = {p.name: (p.weight, p.max_retries, p.optional) for p in definition.phases}
        self._phase_names = tuple(p.name for p in definition.phases)
        # What every flow message of this definition shares: the phases' names and limits, in
        # definition order (the order of a flow's phases). Copied, then filled per flow.
        self._skeleton = flow_pb2.Flow(
            phases=[
                flow_pb2.Phase(
                    name=p.name, max_retries=p.max_retries, weight=p.weight, optional=p.optional
                )
                for p in definition.phases
            ]
        )
        self.message = definition_pb2.FlowDefinition(
            name=definition.name,
            version=definition.version,
            display_name=definition.display_name,
            description=definition.description,
            phases=[
                definition_pb2.PhaseDefinition(
                    name=p.name,
                    depends_on=list(p.depends_on),
                    weight=p.weight,
                    max_retries=p.max_retries,
                    status_group=(
                        FLOW_STATUS_TO_PROTO[p.status_group]
                        if p.status_group is not None
                        else states_pb2.FLOW_STATUS_UNSPECIFIED
                    ),
                    display_name=p.display_name,
                    description=p.description,
                    optional=p.optional,
                    policy=policy_to_proto(p.policy, p.approval),
                    **_kind_fields(p),
                )
                for p in definition.phases
            ],
            phase_transitions=[
                definition_pb2.PhaseTransitionRule(
                    from_state=PHASE_STATE_TO_PROTO[state],
                    to_states=sorted_phase_states(PHASE_TRANSITIONS[state]),
                )
                for state in PhaseState
            ],
            progress_factors=[
                definition_pb2.PhaseStateProgress(
                    state=PHASE_STATE_TO_PROTO[state],
                    factor=PHASE_PROGRESS_FACTORS[state],
                )
                for state in PhaseState
            ],
        )
        if definition.deadline_seconds is not None:
            self.message.deadline.CopyFrom(_duration(definition.deadline_seconds))

    def phase_to_proto(self, phase: Phase) -> flow_pb2.Phase:
        """One phase of a flow of this definition as a message."""
        weight, max_retries, optional = self._limits.get(phase.name, (0, 0, False))
        message = flow_pb2.Phase(
            name=phase.name, max_retries=max_retries, weight=weight, optional=optional
        )
        _fill_phase(message, phase)
        return message

    def flow_to_proto(self, flow: Flow) -> flow_pb2.Flow:
        """A flow of this definition as a message."""
        message = flow_pb2.Flow()
        self.fill_flow(message, flow)
        return message

    def fill_flow(self, message: flow_pb2.Flow, flow: Flow) -> None:
        """Make `message` (e.g. a response's field) `flow`, in place; what it held is replaced.

        Filling the response's own field saves building the message and copying it in.
        """
        phases = flow.phases
        if len(phases) == len(self._phase_names) and all(
            phase.name == name for phase, name in zip(phases, self._phase_names, strict=True)
        ):
            message.CopyFrom(self._skeleton)
            for phase_message, phase in zip(message.phases, phases, strict=True):
                _fill_phase(phase_message, phase)
        else:  # not this definition's phases: each phase on its own, as phase_to_proto does
            message.Clear()
            message.phases.extend(self.phase_to_proto(phase) for phase in phases)
        message.flow_id = flow.flow_id
        message.client_account_id = flow.tenant.client_account_id
        message.engagement_id = flow.tenant.engagement_id
        message.definition_name = flow.definition_name
        message.definition_version = flow.definition_version
        message.status = FLOW_STATUS_TO_PROTO[flow.status]
        message.progress = flow.progress
        message.version = flow.version
        message.display_name = flow.display_name
        if flow.labels:
            message.labels.update(flow.labels)
        if flow.status_before_pause is not None:
            message.status_before_pause = FLOW_STATUS_TO_PROTO[flow.status_before_pause]
        if flow.created_at is not None:
            set_timestamp(message.create_time, flow.created_at)
        if flow.updated_at is not None:
            set_timestamp(message.update_time, flow.updated_at)
        if flow.deadline is not None:
            set_timestamp(message.deadline, flow.deadline)
        if flow.alerts:
            message.alerts.extend(alert_to_proto(alert) for alert in flow.alerts)
        if flow.parent_flow_id is not None:
            message.parent_flow_id = flow.parent_flow_id
            message.parent_phase = flow.parent_phase or ""
        for dependency in flow.external_dependencies:
            message.external_dependencies.add(
                phase=dependency.phase,
                flow_id=dependency.flow_id,
                flow_phase=dependency.flow_phase,
            )


def _kind_fields(phase: PhaseDefinition) -> dict[str, Any]:
    """`kind` and `child_flow` of a PhaseDefinition message (a TASK phase: kind only)."""
    child = phase.child_flow
    if child is None:
        return {"kind": definition_pb2.PHASE_KIND_TASK}
    return {
        "kind": definition_pb2.PHASE_KIND_CHILD_FLOW,
        "child_flow": definition_pb2.ChildFlowSpec(
            definition_name=child.definition_name,
            definition_version=child.definition_version,
            on_parent_cancel=(
                definition_pb2.PARENT_CANCEL_POLICY_ABANDON
                if child.on_parent_cancel is ParentCancelPolicy.ABANDON
                else definition_pb2.PARENT_CANCEL_POLICY_CASCADE
            ),
        ),
    }


def _fill_phase(message: flow_pb2.Phase, phase: Phase) -> None:
    """Set the per-flow fields of a Phase message (name and limits are already there)."""
    message.state = PHASE_STATE_TO_PROTO[phase.state]
    if phase.progress:  # zero is what the message holds already
        message.progress = phase.progress
    if phase.retry_count:
        message.retry_count = phase.retry_count
    if phase.last_retry_at is not None:
        set_timestamp(message.last_retry_time, phase.last_retry_at)
    if phase.error is not None:
        message.error_context.CopyFrom(phase_error_to_proto(phase.error))
    if phase.state_entered_at is not None:
        set_timestamp(message.state_enter_time, phase.state_entered_at)
    if phase.started_at is not None:
        set_timestamp(message.start_time, phase.started_at)
    if phase.completed_at is not None:
        set_timestamp(message.complete_time, phase.completed_at)
    if phase.next_attempt_at is not None:
        set_timestamp(message.next_attempt_time, phase.next_attempt_at)
    if phase.approval is not None:
        message.approval.CopyFrom(approval_to_proto(phase.approval))
    if phase.child_flow_id is not None:
        message.child_flow_id = phase.child_flow_id


def sorted_phase_states(states: Iterable[PhaseState]) -> list[states_pb2.PhaseState.ValueType]:
    """Proto numbers of `states`, in enum order (stable output for clients and tests)."""
    return sorted(PHASE_STATE_TO_PROTO[s] for s in states)


def sorted_flow_statuses(statuses: Iterable[FlowStatus]) -> list[states_pb2.FlowStatus.ValueType]:
    """Proto numbers of `statuses`, in enum order."""
    return sorted(FLOW_STATUS_TO_PROTO[s] for s in statuses)


PHASE_TARGETS: Mapping[PhaseState, tuple[states_pb2.PhaseState.ValueType, ...]] = {
    state: tuple(sorted_phase_states(PHASE_TRANSITIONS[state])) for state in PhaseState
}
"""Legal targets of each phase state as proto numbers, in enum order (precomputed)."""
PHASE_TARGETS_NOT_OPTIONAL: Mapping[PhaseState, tuple[states_pb2.PhaseState.ValueType, ...]] = {
    state: tuple(sorted_phase_states(PHASE_TRANSITIONS[state] - {PhaseState.SKIPPED}))
    for state in PhaseState
}
"""`PHASE_TARGETS` for a phase that is not optional: never SKIPPED."""


def phase_targets_proto(
    state: PhaseState, *, optional: bool
) -> tuple[states_pb2.PhaseState.ValueType, ...]:
    """Legal targets of a phase in `state` as proto numbers; SKIPPED only when optional."""
    return (PHASE_TARGETS if optional else PHASE_TARGETS_NOT_OPTIONAL)[state]


FLOW_TARGETS: Mapping[FlowStatus, tuple[states_pb2.FlowStatus.ValueType, ...]] = {
    status: tuple(sorted_flow_statuses(FLOW_TRANSITIONS[status])) for status in FlowStatus
}
"""Legal targets of each flow status as proto numbers, in enum order (precomputed)."""


def command_to_request(
    flow_id: str, command: Command, expected_version: int | None
) -> dict[str, Any]:
    """The `RecoveryOption.request` oneof for `command`: ``{field name: request message}``.

    The request carries no `request_id` (the caller sets one before sending it).
    """
    if isinstance(command, Retry):
        return {
            "retry": flow_service_pb2.RetryRequest(
                flow_id=flow_id,
                phase=command.phase,
                force=command.force,
                reason=command.reason,
                expected_version=expected_version,
            )
        }
    if isinstance(command, Rollback):
        return {
            "rollback": flow_service_pb2.RollbackRequest(
                flow_id=flow_id,
                phase=command.phase,
                cascade=command.cascade,
                reason=command.reason,
                expected_version=expected_version,
            )
        }
    if isinstance(command, TransitionPhase):
        request = flow_service_pb2.TransitionPhaseRequest(
            flow_id=flow_id,
            phase=command.phase,
            target_state=PHASE_STATE_TO_PROTO[command.target_state],
            reason=command.reason,
            expected_version=expected_version,
        )
        if command.error is not None:
            request.failure.CopyFrom(phase_error_to_proto(command.error))
        if command.metadata:
            request.metadata.update(command.metadata)
        return {"transition_phase": request}
    if isinstance(command, SkipPhase):
        skip = flow_service_pb2.SkipPhaseRequest(
            flow_id=flow_id,
            phase=command.phase,
            reason=command.reason,
            expected_version=expected_version,
        )
        if command.metadata:
            skip.metadata.update(command.metadata)
        return {"skip_phase": skip}
    if isinstance(command, PauseFlow):
        return {
            "pause_flow": flow_service_pb2.PauseFlowRequest(
                flow_id=flow_id, reason=command.reason, expected_version=expected_version
            )
        }
    if isinstance(command, ResumeFlow):
        return {
            "resume_flow": flow_service_pb2.ResumeFlowRequest(
                flow_id=flow_id, reason=command.reason, expected_version=expected_version
            )
        }
    if isinstance(command, CancelFlow):
        return {
            "cancel_flow": flow_service_pb2.CancelFlowRequest(
                flow_id=flow_id, reason=command.reason, expected_version=expected_version
            )
        }
    if isinstance(command, UpdatePhaseProgress):  # never a recovery step; no request field
        return {}
    raise TypeError(f"unknown command {command!r}")


def recovery_option_to_proto(flow: Flow, option: RecoveryOption) -> flow_service_pb2.RecoveryOption:
    """One recovery option, with the exact request to send (pinned to the flow's version)."""
    message = flow_service_pb2.RecoveryOption(
        action=RECOVERY_ACTION_TO_PROTO[option.action],
        phase=option.phase or "",
        reason=option.reason,
        allowed=option.allowed,
        blocking_detail=option.blocking_detail,
        flow_id=flow.flow_id,
        **command_to_request(flow.flow_id, option.command, flow.version),
    )
    if option.target_state is not None:
        message.target_state = PHASE_STATE_TO_PROTO[option.target_state]
    if option.target_status is not None:
        message.target_status = FLOW_STATUS_TO_PROTO[option.target_status]
    if option.blocked_by is not None:
        message.blocked_by = ERROR_CODE_TO_PROTO[option.blocked_by]
    if option.attempts_remaining is not None:
        message.attempts_remaining = option.attempts_remaining
    if option.phase and option.action in (RecoveryAction.RETRY, RecoveryAction.FORCE_RETRY):
        due = flow.phase(option.phase).next_attempt_at
        if due is not None:
            set_timestamp(message.next_attempt_time, due)
    return message


def policy_to_proto(
    policy: PhasePolicy, approval: ApprovalPolicy | None = None
) -> definition_pb2.PhasePolicy:
    """A phase's policies as a message (empty when it has none)."""
    message = definition_pb2.PhasePolicy()
    if approval is not None:
        message.approval.CopyFrom(_approval_policy_to_proto(approval))
    if policy.timeout is not None:
        message.timeout.CopyFrom(_duration(policy.timeout))
    if policy.heartbeat_timeout is not None:
        message.heartbeat_timeout.CopyFrom(_duration(policy.heartbeat_timeout))
    retry = policy.retry_policy
    if retry is not None:
        message.retry_policy.initial_backoff.CopyFrom(_duration(retry.initial_backoff))
        message.retry_policy.multiplier = retry.multiplier
        message.retry_policy.max_backoff.CopyFrom(_duration(retry.max_backoff))
        message.retry_policy.retry_on.extend(
            sorted(ERROR_CODE_TO_PROTO[code] for code in retry.retry_on)
        )
    return message


def policy_document(message: definition_pb2.PhasePolicy) -> dict[str, Any]:
    """The document form of a PhasePolicy message (checked by the definition checker)."""
    document: dict[str, Any] = {}
    if message.HasField("timeout"):
        document["timeout"] = message.timeout.ToTimedelta().total_seconds()
    if message.HasField("heartbeat_timeout"):
        document["heartbeat_timeout"] = message.heartbeat_timeout.ToTimedelta().total_seconds()
    if message.HasField("retry_policy"):
        retry = message.retry_policy
        codes = [ERROR_CODE_FROM_PROTO.get(code) for code in retry.retry_on]
        document["retry_policy"] = {
            "initial_backoff": retry.initial_backoff.ToTimedelta().total_seconds(),
            "multiplier": retry.multiplier or 1.0,
            "max_backoff": retry.max_backoff.ToTimedelta().total_seconds(),
            # An unknown number stays visible to the checker as a string it will refuse.
            "retry_on": [
                code.value if code is not None else f"#{number}"
                for code, number in zip(codes, retry.retry_on, strict=True)
            ],
        }
    if message.HasField("approval"):
        # The JSON form (durations as "3600s", enums by name), read by the checker like a file's.
        document["approval"] = json_format.MessageToDict(
            message.approval, preserving_proto_field_name=True
        )
    if len(unknown_fields.UnknownFieldSet(message)):
        # A policy this server does not know (a newer client's): refused, never ignored.
        document["unknown_policy"] = True
    return document


BULK_KIND_TO_PROTO: Mapping[BulkActionKind, flow_service_pb2.BulkActionType.ValueType] = {
    kind: flow_service_pb2.BulkActionType.Value("BULK_ACTION_TYPE_" + kind.name)
    for kind in BulkActionKind
}
"""Bulk action kind -> proto number."""
BULK_STATE_TO_PROTO: Mapping[BulkActionState, flow_service_pb2.BulkActionState.ValueType] = {
    state: flow_service_pb2.BulkActionState.Value("BULK_ACTION_STATE_" + state.name)
    for state in BulkActionState
}
"""Bulk action state -> proto number."""
BULK_OUTCOME_TO_PROTO: Mapping[BulkOutcome, flow_service_pb2.BulkFlowOutcome.ValueType] = {
    outcome: flow_service_pb2.BulkFlowOutcome.Value("BULK_FLOW_OUTCOME_" + outcome.name)
    for outcome in BulkOutcome
}
"""Bulk flow outcome -> proto number."""


def bulk_action_to_proto(action: BulkAction) -> flow_service_pb2.BulkAction:
    """The `flowstate.v1.BulkAction` of a stored action."""
    message = flow_service_pb2.BulkAction(
        bulk_action_id=action.action_id,
        action=BULK_KIND_TO_PROTO[action.kind],
        phase=action.phase or "",
        filter=action.filter,
        reason=action.reason,
        user_id=action.user_id,
        state=BULK_STATE_TO_PROTO[action.state],
        total_count=action.total,
        applied_count=action.applied,
        refused_count=action.refused,
        skipped_count=action.skipped,
    )
    set_timestamp(message.create_time, action.created_at)
    set_timestamp(message.update_time, action.updated_at)
    if action.finished_at is not None:
        set_timestamp(message.end_time, action.finished_at)
    return message


# --- approvals and alerts --------------------------------------------------------------------


def approval_to_proto(approval: PhaseApproval) -> approvals_pb2.PhaseApproval:
    """An approval decision as a PhaseApproval message."""
    message = approvals_pb2.PhaseApproval(
        decision=APPROVAL_DECISION_TO_PROTO[approval.decision],
        approver=approval.approver,
        comment=approval.comment,
    )
    set_timestamp(message.decide_time, approval.decided_at)
    return message


def alert_to_proto(alert: FlowAlert) -> approvals_pb2.FlowAlert:
    """An alert as a FlowAlert message."""
    message = approvals_pb2.FlowAlert(
        kind=ALERT_KIND_TO_PROTO[alert.kind],
        phase=alert.phase,
        status=FLOW_STATUS_TO_PROTO[alert.status],
        message=alert.message,
    )
    set_timestamp(message.due_time, alert.due_at)
    set_timestamp(message.raise_time, alert.raised_at)
    return message


def _approval_policy_to_proto(approval: ApprovalPolicy) -> approvals_pb2.ApprovalPolicy:
    message = approvals_pb2.ApprovalPolicy(
        required=approval.required,
        scope=approval.scope,
        claim=approval.claim,
        claim_value=approval.claim_value,
    )
    if approval.timeout_seconds is not None:
        message.approval_timeout.CopyFrom(_duration(approval.timeout_seconds))
    if approval.on_timeout is not None:
        message.on_timeout = _TIMEOUT_ACTION_TO_PROTO[approval.on_timeout]
    return message


def fill_event_change(event: flow_service_pb2.FlowEvent, flow_id: str, entry: HistoryEntry) -> None:
    """Set the `kind` of a stream event for one history entry, in place: an ALERT entry is the
    `alert` case (clients that do not know it ignore it), any other entry the `change` case."""
    if entry.kind is HistoryKind.ALERT and entry.alert is not None:
        event.alert.CopyFrom(alert_to_proto(entry.alert))
    else:
        event.change.CopyFrom(entry_to_proto(flow_id, entry))


def retention_policy_to_proto(policy: RetentionPolicy | None) -> flow_service_pb2.RetentionPolicy:
    """A tenant's retention policy; None (no policy of its own) is retain_days 0."""
    message = flow_service_pb2.RetentionPolicy()
    if policy is not None:
        message.retain_days = policy.retain_days
        message.updated_by = policy.updated_by
        if policy.updated_at is not None:
            set_timestamp(message.update_time, policy.updated_at)
    return message
