"""Typed, immutable views of the ``flowstate.v1`` messages the SDK returns.

Every class is a frozen dataclass built by ``_from_proto`` from the message the server sent; that
message stays available as ``.raw``, an escape hatch for fields this SDK version does not know.
Timestamps are timezone-aware UTC datetimes, durations are timedeltas, ``google.protobuf.Struct``
values are plain dicts, and enum values are the `IntEnum` mirrors of `flowstate.client._enums`.
A proto enum left UNSPECIFIED where it means "none" (a flow-level history entry's phase states,
the status before a pause) becomes None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from flowstate.client._enums import (
    AlertKind,
    ApprovalDecision,
    BulkActionState,
    BulkActionType,
    BulkFlowOutcome,
    ErrorCode,
    FlowEventKind,
    FlowStatus,
    HistoryEventKind,
    PhaseState,
    RecoveryAction,
    WatchRelation,
)
from flowstate.client._errors import FlowstateError, error_from_flow_error, whole_numbers
from flowstate.v1 import (
    approvals_pb2,
    definition_pb2,
    errors_pb2,
    flow_pb2,
    flow_service_pb2,
    history_pb2,
)

if TYPE_CHECKING:
    from flowstate.client._async_client import AsyncFlowstateClient
    from flowstate.client._sync_client import FlowstateClient

__all__ = [
    "BulkAction",
    "BulkFlowResult",
    "DefinitionPage",
    "DefinitionRegistration",
    "ExternalDependency",
    "Flow",
    "FlowAlert",
    "FlowDefinition",
    "FlowEvent",
    "FlowPage",
    "HeartbeatResult",
    "HistoryEntry",
    "HistoryPage",
    "MutationResult",
    "Phase",
    "PhaseApproval",
    "PhaseDefinition",
    "PhaseFailure",
    "RecoveryOption",
    "RecoveryOptions",
    "ValidationResult",
    "WaitingPhase",
]

_E = TypeVar("_E", PhaseState, FlowStatus)


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _duration(message: Any, field: str) -> timedelta | None:
    if not message.HasField(field):
        return None
    value: duration_pb2.Duration = getattr(message, field)
    return value.ToTimedelta()


def _struct(message: Any, field: str) -> dict[str, Any]:
    if not message.HasField(field):
        return {}
    value: struct_pb2.Struct = getattr(message, field)
    # Struct numbers are doubles on the wire; give back the ints callers put in.
    return {key: whole_numbers(item) for key, item in json_format.MessageToDict(value).items()}


def _optional_enum(cls: type[_E], value: int) -> _E | None:
    return None if value == 0 else cls(value)


def _optional_int(message: Any, field: str) -> int | None:
    return int(getattr(message, field)) if message.HasField(field) else None


@dataclass(frozen=True, slots=True)
class PhaseFailure:
    """A phase failure report, kept as a phase's error context until the phase succeeds."""

    error_code: ErrorCode
    message: str
    details: dict[str, Any]
    retryable: bool
    raw: errors_pb2.PhaseFailure = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: errors_pb2.PhaseFailure) -> PhaseFailure:
        return cls(
            error_code=ErrorCode(raw.error_code),
            message=raw.message,
            details=_struct(raw, "details"),
            retryable=raw.retryable,
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class PhaseApproval:
    """Who decided what about a phase waiting for approval, and when."""

    decision: ApprovalDecision
    #: The decider's token subject (``system:timer`` for an approval timeout).
    approver: str
    comment: str
    decide_time: datetime | None
    raw: approvals_pb2.PhaseApproval = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: approvals_pb2.PhaseApproval) -> PhaseApproval:
        return cls(
            decision=ApprovalDecision(raw.decision),
            approver=raw.approver,
            comment=raw.comment,
            decide_time=_time(raw, "decide_time"),
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class FlowAlert:
    """A breach the server raised on a flow: a passed deadline, a stuck flow, an approval
    timeout escalated."""

    kind: AlertKind
    #: The phase it is about (APPROVAL_TIMEOUT); None otherwise.
    phase: str | None
    #: The flow status when the alert was raised.
    status: FlowStatus
    #: When the breached limit was due.
    due_time: datetime | None
    raise_time: datetime | None
    message: str
    raw: approvals_pb2.FlowAlert = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: approvals_pb2.FlowAlert) -> FlowAlert:
        return cls(
            kind=AlertKind(raw.kind),
            phase=raw.phase or None,
            status=FlowStatus(raw.status),
            due_time=_time(raw, "due_time"),
            raise_time=_time(raw, "raise_time"),
            message=raw.message,
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class Phase:
    """The state of one phase of a flow."""

    name: str
    state: PhaseState
    #: In-phase progress f in [0, 1] reported by the worker (counts while IN_PROGRESS).
    progress: float
    retry_count: int
    max_retries: int
    weight: int
    last_retry_time: datetime | None
    error_context: PhaseFailure | None
    state_enter_time: datetime | None
    start_time: datetime | None
    complete_time: datetime | None
    raw: flow_pb2.Phase = dataclasses.field(repr=False, compare=False)
    #: Whether the definition marks the phase optional (it may be skipped).
    optional: bool = False
    #: When the server moves the phase to RETRY_NEEDED by itself (its retry policy): set while
    #: FAILED with a retry scheduled, kept in RETRY_NEEDED; None otherwise.
    next_attempt_time: datetime | None = None
    #: The last approval decision on the phase (`decide_phase`); None if none.
    approval: PhaseApproval | None = None
    #: For a phase of kind child_flow: the child flow of its latest start (None otherwise).
    child_flow_id: str | None = None

    @property
    def attempts_remaining(self) -> int:
        """Retry attempts the phase has left."""
        return max(0, self.max_retries - self.retry_count)

    @classmethod
    def _from_proto(cls, raw: flow_pb2.Phase) -> Phase:
        return cls(
            name=raw.name,
            state=PhaseState(raw.state),
            progress=raw.progress,
            retry_count=raw.retry_count,
            max_retries=raw.max_retries,
            weight=raw.weight,
            last_retry_time=_time(raw, "last_retry_time"),
            error_context=(
                PhaseFailure._from_proto(raw.error_context)
                if raw.HasField("error_context")
                else None
            ),
            state_enter_time=_time(raw, "state_enter_time"),
            start_time=_time(raw, "start_time"),
            complete_time=_time(raw, "complete_time"),
            raw=raw,
            optional=raw.optional,
            next_attempt_time=_time(raw, "next_attempt_time"),
            approval=(
                PhaseApproval._from_proto(raw.approval) if raw.HasField("approval") else None
            ),
            child_flow_id=raw.child_flow_id or None,
        )


@dataclass(frozen=True, slots=True)
class ExternalDependency:
    """A phase of this flow that may start only once a phase of another flow is done."""

    #: The phase of this flow that waits.
    phase: str
    #: The other flow (same tenant).
    flow_id: str
    #: The phase of the other flow it waits for (COMPLETED or SKIPPED).
    flow_phase: str

    def _to_proto(self) -> flow_pb2.ExternalDependency:
        return flow_pb2.ExternalDependency(
            phase=self.phase, flow_id=self.flow_id, flow_phase=self.flow_phase
        )


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow: one run of a flow definition, owned by one tenant."""

    flow_id: str
    client_account_id: str
    engagement_id: str
    definition_name: str
    definition_version: int
    status: FlowStatus
    #: While PAUSED: the status the flow had when it was paused; None otherwise.
    status_before_pause: FlowStatus | None
    phases: tuple[Phase, ...]
    #: Overall progress in percent, [0, 100], one decimal.
    progress: float
    #: 1 after creation, +1 per change: pass it as ``expected_version``.
    version: int
    create_time: datetime | None
    update_time: datetime | None
    display_name: str
    labels: Mapping[str, str]
    raw: flow_pb2.Flow = dataclasses.field(repr=False, compare=False)
    #: When the flow should be finished; None: no deadline.
    deadline: datetime | None = None
    #: The alerts in force (raised and not over yet).
    alerts: tuple[FlowAlert, ...] = ()
    #: The flow whose child_flow phase this flow is the child of (None for a root flow).
    parent_flow_id: str | None = None
    #: That phase of the parent.
    parent_phase: str | None = None
    #: Phases of other flows this flow's phases wait for (set at creation).
    external_dependencies: tuple[ExternalDependency, ...] = ()

    @property
    def is_terminal(self) -> bool:
        """Whether the flow is COMPLETED or CANCELLED (nothing changes it any more)."""
        return self.status.is_terminal

    def phase(self, name: str) -> Phase:
        """The phase called `name`.

        Raises:
            KeyError: the flow has no such phase.
        """
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)

    @classmethod
    def _from_proto(cls, raw: flow_pb2.Flow) -> Flow:
        return cls(
            flow_id=raw.flow_id,
            client_account_id=raw.client_account_id,
            engagement_id=raw.engagement_id,
            definition_name=raw.definition_name,
            definition_version=raw.definition_version,
            status=FlowStatus(raw.status),
            status_before_pause=_optional_enum(FlowStatus, raw.status_before_pause),
            phases=tuple(Phase._from_proto(phase) for phase in raw.phases),
            progress=raw.progress,
            version=raw.version,
            create_time=_time(raw, "create_time"),
            update_time=_time(raw, "update_time"),
            display_name=raw.display_name,
            labels=dict(raw.labels),
            raw=raw,
            deadline=_time(raw, "deadline"),
            alerts=tuple(FlowAlert._from_proto(alert) for alert in raw.alerts),
            parent_flow_id=raw.parent_flow_id or None,
            parent_phase=raw.parent_phase or None,
            external_dependencies=tuple(
                ExternalDependency(d.phase, d.flow_id, d.flow_phase)
                for d in raw.external_dependencies
            ),
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One immutable audit record: the change that produced one flow version."""

    flow_id: str
    flow_version: int
    kind: HistoryEventKind
    #: The phase that changed; None for flow-level changes (pause, resume, cancel).
    phase: str | None
    from_state: PhaseState | None
    to_state: PhaseState | None
    status_before: FlowStatus
    status_after: FlowStatus
    reason: str
    user_id: str
    request_id: str
    metadata: dict[str, Any]
    error_context: PhaseFailure | None
    occur_time: datetime | None
    #: How long the phase spent in the state it left (None for flow-level changes).
    time_in_state: timedelta | None
    progress_after: float
    #: For CASCADE_ROLLBACK: the phase whose rollback invalidated this one.
    cause_phase: str | None
    raw: history_pb2.HistoryEntry = dataclasses.field(repr=False, compare=False)
    #: For a failure the phase's retry policy retries: when the server moves it to RETRY_NEEDED.
    next_attempt_time: datetime | None = None
    #: For DECISION entries: the decision, approver and comment.
    approval: PhaseApproval | None = None
    #: For ALERT entries: the alert raised.
    alert: FlowAlert | None = None

    @classmethod
    def _from_proto(cls, raw: history_pb2.HistoryEntry) -> HistoryEntry:
        return cls(
            flow_id=raw.flow_id,
            flow_version=raw.flow_version,
            kind=HistoryEventKind(raw.kind),
            phase=raw.phase or None,
            from_state=_optional_enum(PhaseState, raw.from_state),
            to_state=_optional_enum(PhaseState, raw.to_state),
            status_before=FlowStatus(raw.status_before),
            status_after=FlowStatus(raw.status_after),
            reason=raw.reason,
            user_id=raw.user_id,
            request_id=raw.request_id,
            metadata=_struct(raw, "metadata"),
            error_context=(
                PhaseFailure._from_proto(raw.error_context)
                if raw.HasField("error_context")
                else None
            ),
            occur_time=_time(raw, "occur_time"),
            time_in_state=_duration(raw, "time_in_state"),
            progress_after=raw.progress_after,
            cause_phase=raw.cause_phase or None,
            raw=raw,
            next_attempt_time=_time(raw, "next_attempt_time"),
            approval=(
                PhaseApproval._from_proto(raw.approval) if raw.HasField("approval") else None
            ),
            alert=FlowAlert._from_proto(raw.alert) if raw.HasField("alert") else None,
        )


_MutationResponse = (
    flow_service_pb2.CreateFlowResponse
    | flow_service_pb2.TransitionPhaseResponse
    | flow_service_pb2.UpdatePhaseProgressResponse
    | flow_service_pb2.RollbackResponse
    | flow_service_pb2.RetryResponse
    | flow_service_pb2.PauseFlowResponse
    | flow_service_pb2.ResumeFlowResponse
    | flow_service_pb2.CancelFlowResponse
    | flow_service_pb2.SkipPhaseResponse
    | flow_service_pb2.DecidePhaseResponse
    | flow_service_pb2.LinkChildFlowResponse
)


@dataclass(frozen=True, slots=True)
class MutationResult:
    """What every mutation returns: the flow after the change and the entries it appended."""

    flow: Flow
    history_entries: tuple[HistoryEntry, ...]
    raw: _MutationResponse = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: _MutationResponse) -> MutationResult:
        return cls(
            flow=Flow._from_proto(raw.flow),
            history_entries=tuple(HistoryEntry._from_proto(e) for e in raw.history_entries),
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """What `heartbeat` returns: the flow's version (a heartbeat does not change it) and when
    the phase times out without a further heartbeat (None: it has no heartbeat timeout)."""

    flow_version: int
    heartbeat_deadline_time: datetime | None
    raw: flow_service_pb2.HeartbeatResponse = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.HeartbeatResponse) -> HeartbeatResult:
        return cls(
            flow_version=raw.flow_version,
            heartbeat_deadline_time=_time(raw, "heartbeat_deadline_time"),
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class FlowPage:
    """One page of `list_flows`."""

    flows: tuple[Flow, ...]
    #: Pass as ``page_token`` to get the next page; None on the last page.
    next_page_token: str | None
    raw: flow_service_pb2.ListFlowsResponse = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.ListFlowsResponse) -> FlowPage:
        return cls(
            flows=tuple(Flow._from_proto(flow) for flow in raw.flows),
            next_page_token=raw.next_page_token or None,
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class FlowCount:
    """The answer of `count_flows`: the total and, with a grouping, one count per key."""

    total: int
    #: ``{key: count}``, largest first: status or phase-state names ("FAILED"), or definition
    #: names; empty without ``group_by``.
    groups: dict[str, int]
    raw: flow_service_pb2.CountFlowsResponse = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.CountFlowsResponse) -> FlowCount:
        return cls(total=raw.total_count, groups={g.key: g.count for g in raw.groups}, raw=raw)


@dataclass(frozen=True, slots=True)
class BulkAction:
    """A bulk action (`start_bulk_action`): what it does, to how many flows, how far it got."""

    bulk_action_id: str
    action: BulkActionType
    phase: str | None
    filter: str
    reason: str
    user_id: str
    state: BulkActionState
    total: int
    applied: int
    refused: int
    skipped: int
    create_time: datetime | None
    update_time: datetime | None
    end_time: datetime | None
    raw: flow_service_pb2.BulkAction = dataclasses.field(repr=False, compare=False)

    @property
    def done(self) -> int:
        """Flows taken so far (applied, refused or skipped)."""
        return self.applied + self.refused + self.skipped

    @property
    def finished(self) -> bool:
        """Whether it will not change any more (SUCCEEDED or CANCELLED)."""
        return self.state != BulkActionState.RUNNING

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.BulkAction) -> BulkAction:
        return cls(
            bulk_action_id=raw.bulk_action_id,
            action=BulkActionType(raw.action),
            phase=raw.phase or None,
            filter=raw.filter,
            reason=raw.reason,
            user_id=raw.user_id,
            state=BulkActionState(raw.state),
            total=raw.total_count,
            applied=raw.applied_count,
            refused=raw.refused_count,
            skipped=raw.skipped_count,
            create_time=_time(raw, "create_time"),
            update_time=_time(raw, "update_time"),
            end_time=_time(raw, "end_time"),
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class BulkFlowResult:
    """What a bulk action did to one flow; `error_code`/`message`/`details` for a refusal."""

    flow_id: str
    outcome: BulkFlowOutcome
    phase: str | None
    error_code: ErrorCode | None
    message: str
    details: dict[str, Any]
    skip_reason: str
    done_time: datetime | None
    raw: flow_service_pb2.BulkFlowResult = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.BulkFlowResult) -> BulkFlowResult:
        refused = raw.HasField("error")
        return cls(
            flow_id=raw.flow_id,
            outcome=BulkFlowOutcome(raw.outcome),
            phase=raw.phase or None,
            error_code=ErrorCode(raw.error.error_code) if refused else None,
            message=raw.error.message if refused else "",
            details=_struct(raw.error, "details") if refused else {},
            skip_reason=raw.skip_reason,
            done_time=_time(raw, "done_time"),
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class FlowTree:
    """A flow and its descendants (`get_flow_tree`), level by level."""

    flow: Flow
    #: Every child flow down to the asked depth; each names its parent (``parent_flow_id``).
    descendants: tuple[Flow, ...]
    #: Whether the server cut the descendants at its limit (500).
    truncated: bool
    raw: flow_service_pb2.GetFlowResponse = dataclasses.field(repr=False, compare=False)

    def children(self, flow_id: str) -> tuple[Flow, ...]:
        """The direct children of `flow_id` among the descendants, oldest first."""
        return tuple(f for f in self.descendants if f.parent_flow_id == flow_id)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.GetFlowResponse) -> FlowTree:
        return cls(
            flow=Flow._from_proto(raw.flow),
            descendants=tuple(Flow._from_proto(f) for f in raw.descendants),
            truncated=raw.descendants_truncated,
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The tenant's retention policy (`get_retention_policy`, `set_retention_policy`)."""

    #: Days a COMPLETED or CANCELLED flow is kept after its last change before it is archived
    #: and deleted; 0: the tenant has no policy of its own (the server's default applies).
    retain_days: int
    #: When it was last set, and by whom (None and "" without a policy).
    update_time: datetime | None
    updated_by: str
    raw: flow_service_pb2.RetentionPolicy = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.RetentionPolicy) -> RetentionPolicy:
        return cls(
            retain_days=raw.retain_days,
            update_time=_time(raw, "update_time"),
            updated_by=raw.updated_by,
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of `list_flow_history`, in version order."""

    history_entries: tuple[HistoryEntry, ...]
    #: Pass as ``page_token`` to get the next page; None on the last page.
    next_page_token: str | None
    raw: flow_service_pb2.ListFlowHistoryResponse = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.ListFlowHistoryResponse) -> HistoryPage:
        return cls(
            history_entries=tuple(HistoryEntry._from_proto(e) for e in raw.history_entries),
            next_page_token=raw.next_page_token or None,
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The answer of a dry run (`validate_transition`): legal or not, and why."""

    allowed: bool
    #: The error the transition would get (not raised); None when allowed.
    error: FlowstateError | None
    valid_transitions: tuple[PhaseState, ...]
    valid_flow_transitions: tuple[FlowStatus, ...]
    blocking_phases: tuple[str, ...]
    attempts_remaining: int | None
    #: The flow version the answer was computed on (0 without a flow id).
    flow_version: int
    #: The status and progress the transition would produce (when a flow is named and allowed).
    resulting_status: FlowStatus | None
    resulting_progress: float | None
    raw: flow_service_pb2.ValidateTransitionResponse = dataclasses.field(repr=False, compare=False)

    def raise_for_error(self) -> None:
        """Raise `error` when the transition is not allowed; do nothing otherwise."""
        if self.error is not None:
            raise self.error

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.ValidateTransitionResponse) -> ValidationResult:
        error = error_from_flow_error(raw.error) if raw.HasField("error") else None
        resulting_status = _optional_enum(FlowStatus, raw.resulting_status)
        return cls(
            allowed=raw.allowed,
            error=error,
            valid_transitions=tuple(PhaseState(v) for v in raw.valid_transitions),
            valid_flow_transitions=tuple(FlowStatus(v) for v in raw.valid_flow_transitions),
            blocking_phases=tuple(raw.blocking_phases),
            attempts_remaining=_optional_int(raw, "attempts_remaining"),
            flow_version=raw.flow_version,
            resulting_status=resulting_status,
            resulting_progress=raw.resulting_progress if resulting_status is not None else None,
            raw=raw,
        )


_RecoveryRequest = (
    flow_service_pb2.RetryRequest
    | flow_service_pb2.RollbackRequest
    | flow_service_pb2.TransitionPhaseRequest
    | flow_service_pb2.ResumeFlowRequest
    | flow_service_pb2.CancelFlowRequest
    | flow_service_pb2.PauseFlowRequest
    | flow_service_pb2.SkipPhaseRequest
)


@dataclass(frozen=True, slots=True)
class RecoveryOption:
    """One recovery action for a flow's current state, ready to execute."""

    action: RecoveryAction
    #: The phase it acts on; None for flow-level actions.
    phase: str | None
    target_state: PhaseState | None
    target_status: FlowStatus | None
    reason: str
    allowed: bool
    #: When not allowed: the error it would get, and what blocks it for a human.
    blocked_by: ErrorCode | None
    blocking_detail: str
    attempts_remaining: int | None
    #: The exact request that performs the action (without a ``request_id``).
    request: _RecoveryRequest | None = dataclasses.field(repr=False, compare=False)
    raw: flow_service_pb2.RecoveryOption = dataclasses.field(repr=False, compare=False)
    #: For a retry the server will make by itself (the phase's retry policy): when.
    next_attempt_time: datetime | None = None

    @overload
    def execute(
        self, client: AsyncFlowstateClient, *, request_id: str | None = None
    ) -> Awaitable[MutationResult]: ...

    @overload
    def execute(
        self, client: FlowstateClient, *, request_id: str | None = None
    ) -> MutationResult: ...

    def execute(
        self,
        client: AsyncFlowstateClient | FlowstateClient,
        *,
        request_id: str | None = None,
    ) -> Awaitable[MutationResult] | MutationResult:
        """Perform the action through `client` (await the result with the async client).

        The SDK generates a ``request_id`` unless one is given.

        Raises:
            ValueError: the option carries no request (the server offered nothing to send).
        """
        return client.execute_recovery(self, request_id=request_id)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.RecoveryOption) -> RecoveryOption:
        which = raw.WhichOneof("request")
        request: _RecoveryRequest | None = getattr(raw, which) if which else None
        return cls(
            action=RecoveryAction(raw.action),
            phase=raw.phase or None,
            target_state=_optional_enum(PhaseState, raw.target_state),
            target_status=_optional_enum(FlowStatus, raw.target_status),
            reason=raw.reason,
            allowed=raw.allowed,
            blocked_by=None if raw.blocked_by == 0 else ErrorCode(raw.blocked_by),
            blocking_detail=raw.blocking_detail,
            attempts_remaining=_optional_int(raw, "attempts_remaining"),
            request=request,
            raw=raw,
            next_attempt_time=_time(raw, "next_attempt_time"),
        )


@dataclass(frozen=True, slots=True)
class RecoveryOptions:
    """What `get_recovery_options` returns: the flow and its options, most useful first."""

    flow: Flow
    options: tuple[RecoveryOption, ...]
    raw: flow_service_pb2.GetRecoveryOptionsResponse = dataclasses.field(repr=False, compare=False)

    @property
    def allowed(self) -> tuple[RecoveryOption, ...]:
        """The options that are legal now."""
        return tuple(option for option in self.options if option.allowed)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.GetRecoveryOptionsResponse) -> RecoveryOptions:
        return cls(
            flow=Flow._from_proto(raw.flow),
            options=tuple(RecoveryOption._from_proto(option) for option in raw.options),
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class PhaseDefinition:
    """One phase of a flow definition."""

    name: str
    depends_on: tuple[str, ...]
    weight: int
    max_retries: int
    #: The flow status while this is the furthest phase started; None means ACTIVE.
    status_group: FlowStatus | None
    display_name: str
    description: str
    raw: definition_pb2.PhaseDefinition = dataclasses.field(repr=False, compare=False)
    #: Whether the phase may be skipped (`skip_phase`).
    optional: bool = False

    @classmethod
    def _from_proto(cls, raw: definition_pb2.PhaseDefinition) -> PhaseDefinition:
        return cls(
            name=raw.name,
            depends_on=tuple(raw.depends_on),
            weight=raw.weight,
            max_retries=raw.max_retries,
            status_group=_optional_enum(FlowStatus, raw.status_group),
            display_name=raw.display_name,
            description=raw.description,
            raw=raw,
            optional=raw.optional,
        )


@dataclass(frozen=True, slots=True)
class FlowDefinition:
    """A flow definition: ordered phases, the phase transition table and progress factors."""

    name: str
    version: int
    phases: tuple[PhaseDefinition, ...]
    display_name: str
    description: str
    #: Legal targets of each phase state.
    phase_transitions: Mapping[PhaseState, tuple[PhaseState, ...]]
    #: Progress factor of each phase state.
    progress_factors: Mapping[PhaseState, float]
    raw: definition_pb2.FlowDefinition = dataclasses.field(repr=False, compare=False)
    #: Whether this is a built-in definition (visible to every tenant).
    builtin: bool = False
    #: When this version was registered (a built-in: when the database first stored it).
    create_time: datetime | None = None

    def phase(self, name: str) -> PhaseDefinition:
        """The phase called `name`.

        Raises:
            KeyError: the definition has no such phase.
        """
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)

    def can_transition(self, from_state: PhaseState, to_state: PhaseState) -> bool:
        """Whether the phase transition table allows `from_state` → `to_state` (local check)."""
        return to_state in self.phase_transitions.get(from_state, ())

    @classmethod
    def _from_proto(cls, raw: definition_pb2.FlowDefinition) -> FlowDefinition:
        return cls(
            name=raw.name,
            version=raw.version,
            phases=tuple(PhaseDefinition._from_proto(phase) for phase in raw.phases),
            display_name=raw.display_name,
            description=raw.description,
            phase_transitions={
                PhaseState(rule.from_state): tuple(PhaseState(s) for s in rule.to_states)
                for rule in raw.phase_transitions
            },
            progress_factors={PhaseState(item.state): item.factor for item in raw.progress_factors},
            raw=raw,
            builtin=raw.builtin,
            create_time=_time(raw, "create_time"),
        )


@dataclass(frozen=True, slots=True)
class DefinitionRegistration:
    """The result of `create_flow_definition`: the stored version and whether it is new."""

    definition: FlowDefinition
    #: False when an identical body already existed (or with validate_only).
    created: bool
    raw: flow_service_pb2.CreateFlowDefinitionResponse = dataclasses.field(
        repr=False, compare=False
    )

    @classmethod
    def _from_proto(
        cls, raw: flow_service_pb2.CreateFlowDefinitionResponse
    ) -> DefinitionRegistration:
        return cls(
            definition=FlowDefinition._from_proto(raw.definition), created=raw.created, raw=raw
        )


@dataclass(frozen=True, slots=True)
class DefinitionPage:
    """One page of `list_flow_definitions`."""

    definitions: tuple[FlowDefinition, ...]
    #: Pass as ``page_token`` to get the next page; None on the last page.
    next_page_token: str | None
    raw: flow_service_pb2.ListFlowDefinitionsResponse = dataclasses.field(repr=False, compare=False)

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.ListFlowDefinitionsResponse) -> DefinitionPage:
        return cls(
            definitions=tuple(FlowDefinition._from_proto(d) for d in raw.definitions),
            next_page_token=raw.next_page_token or None,
            raw=raw,
        )


@dataclass(frozen=True, slots=True)
class WaitingPhase:
    """A phase that waits for a phase of another flow (on `FlowEvent.waiting`)."""

    #: The waiting flow: the watched flow or one of its descendants.
    flow_id: str
    #: Its waiting phase.
    phase: str
    #: The phase of the event's flow it waits for.
    flow_phase: str

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.WaitingPhase) -> WaitingPhase:
        return cls(flow_id=raw.flow_id, phase=raw.phase, flow_phase=raw.flow_phase)


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """One event of a status stream (`watch` or `watch_flows`)."""

    kind: FlowEventKind
    #: The flow the event is about; empty for heartbeats of `watch_flows`.
    flow_id: str
    #: The flow version after the event (the snapshot's version for snapshots).
    flow_version: int
    status: FlowStatus
    progress: float
    #: The flow as it is (``kind == SNAPSHOT``).
    snapshot: Flow | None
    #: The committed change (``kind == CHANGE``).
    change: HistoryEntry | None
    #: The server's clock (``kind == HEARTBEAT``).
    heartbeat_time: datetime | None
    #: For `watch_flows` (and `watch` with ``children_depth`` / ``include_dependencies``):
    #: resume after this event by passing it as ``cursor``.
    cursor: str | None
    raw: flow_service_pb2.FlowEvent = dataclasses.field(repr=False, compare=False)
    #: The alert the server raised (``kind == ALERT``).
    alert: FlowAlert | None = None
    #: With ``children_depth`` / ``include_dependencies``: how the event's flow relates to the
    #: watched one (UNSPECIFIED on plain streams).
    relation: WatchRelation = WatchRelation.UNSPECIFIED
    #: For DESCENDANT events: the parent of the event's flow.
    parent_flow_id: str | None = None
    #: For DEPENDENCY events: the phases that wait for this flow's phase.
    waiting: tuple[WaitingPhase, ...] = ()

    @classmethod
    def _from_watch(cls, response: flow_service_pb2.WatchFlowResponse) -> FlowEvent:
        """The event of a WatchFlow response, with its cursor, relation and waiting phases."""
        event = cls._from_proto(response.event, cursor=response.cursor)
        return dataclasses.replace(
            event,
            relation=WatchRelation(response.relation),
            parent_flow_id=response.parent_flow_id or None,
            waiting=tuple(WaitingPhase._from_proto(w) for w in response.waiting),
        )

    @classmethod
    def _from_proto(cls, raw: flow_service_pb2.FlowEvent, cursor: str | None = None) -> FlowEvent:
        which = raw.WhichOneof("kind")
        kind = FlowEventKind(which) if which else FlowEventKind.HEARTBEAT
        return cls(
            kind=kind,
            flow_id=raw.flow_id,
            flow_version=raw.flow_version,
            status=FlowStatus(raw.status),
            progress=raw.progress,
            snapshot=Flow._from_proto(raw.snapshot) if which == "snapshot" else None,
            change=HistoryEntry._from_proto(raw.change) if which == "change" else None,
            heartbeat_time=(_time(raw.heartbeat, "server_time") if which == "heartbeat" else None),
            cursor=cursor or None,
            raw=raw,
            alert=FlowAlert._from_proto(raw.alert) if which == "alert" else None,
        )
