"""Domain values of the Flowstate core: states, statuses, error codes, flows, history.

Everything here is an immutable value (frozen dataclasses, str enums). The storage layer maps
rows to these values, the servicer maps protobuf messages to them; the rules that change them
live in the sibling modules. Standard library only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class PhaseState(enum.StrEnum):
    """State of one phase. Values are the seed guide's lowercase strings."""

    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    WAITING_VALIDATION = "waiting_validation"
    WAITING_APPROVAL = "waiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY_NEEDED = "retry_needed"
    ROLLED_BACK = "rolled_back"
    SKIPPED = "skipped"
    """An optional phase that was skipped (`SkipPhase`): counts as done, never ran."""


class FlowStatus(enum.StrEnum):
    """Overall status of a flow, derived from its phases (DESIGN.md section 2)."""

    INITIALIZED = "initialized"
    ACTIVE = "active"
    DATA_GATHERING = "data_gathering"
    DISCOVERY = "discovery"
    ASSESSMENT_READY = "assessment_ready"
    PLANNING = "planning"
    WAITING_APPROVAL = "waiting_approval"
    RETRY_PENDING = "retry_pending"
    ERROR_RECOVERY = "error_recovery"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class ErrorCode(enum.StrEnum):
    """Every error code of DESIGN.md: refusals (section 4) and phase failure codes (section 2)."""

    # Refusals of a request.
    INVALID_PHASE = "INVALID_PHASE"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    INVALID_PHASE_TRANSITION = "INVALID_PHASE_TRANSITION"
    INVALID_FLOW_TRANSITION = "INVALID_FLOW_TRANSITION"
    PHASE_ORDER_VIOLATION = "PHASE_ORDER_VIOLATION"
    DEPENDENT_PHASES_ACTIVE = "DEPENDENT_PHASES_ACTIVE"
    FLOW_PAUSED = "FLOW_PAUSED"
    FLOW_TERMINAL = "FLOW_TERMINAL"
    MAX_RETRIES_EXCEEDED = "MAX_RETRIES_EXCEEDED"
    RETRY_NOT_ALLOWED = "RETRY_NOT_ALLOWED"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    FLOW_NOT_FOUND = "FLOW_NOT_FOUND"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    DEFINITION_NOT_FOUND = "DEFINITION_NOT_FOUND"
    DEFINITION_SHADOWS_BUILTIN = "DEFINITION_SHADOWS_BUILTIN"
    WEBHOOK_NOT_FOUND = "WEBHOOK_NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    BULK_ACTION_NOT_FOUND = "BULK_ACTION_NOT_FOUND"
    APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    TEMPORARY_RESOURCE_UNAVAILABLE = "TEMPORARY_RESOURCE_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    # Phase failure codes reported by workers (carried in a phase's error_context).
    PHASE_EXECUTION_FAILED = "PHASE_EXECUTION_FAILED"
    AGENT_TIMEOUT = "AGENT_TIMEOUT"
    EXTERNAL_SERVICE_ERROR = "EXTERNAL_SERVICE_ERROR"
    DATA_VALIDATION_FAILED = "DATA_VALIDATION_FAILED"
    INVALID_TRANSITION = "INVALID_TRANSITION"  # the seed guide's name, kept for compatibility
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    """A person rejected the phase's result (DecidePhase REJECT) or its approval timed out."""
    # Ends of a status stream.
    SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
    # Child flows (docs/child_flows.md).
    CHILD_FLOW_CANCELLED = "CHILD_FLOW_CANCELLED"
    """Phase failure code: the phase's child flow was cancelled (retryable: a retry starts a
    new child)."""
    PHASE_FOLLOWS_CHILD_FLOW = "PHASE_FOLLOWS_CHILD_FLOW"
    """Refusal: the phase's outcome and progress come from its child flow, not from a worker."""
    CHILD_FLOW_LIMIT_EXCEEDED = "CHILD_FLOW_LIMIT_EXCEEDED"
    """Refusal: a new child would pass the maximum depth or the children per flow."""
    CHILD_FLOW_NOT_LINKABLE = "CHILD_FLOW_NOT_LINKABLE"
    """Refusal: the flow to link already has a parent, follows another definition, or would
    become its own ancestor."""


RETRYABLE_ERROR_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.PHASE_EXECUTION_FAILED,
        ErrorCode.AGENT_TIMEOUT,
        ErrorCode.EXTERNAL_SERVICE_ERROR,
        ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE,
        ErrorCode.CHILD_FLOW_CANCELLED,
    }
)
"""Failure codes after which a phase may be retried; every other code is non-retryable."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """The owner of a flow; always taken from the caller's credentials."""

    client_account_id: str
    engagement_id: str


@dataclass(frozen=True, slots=True)
class PhaseError:
    """A phase failure report, kept as the phase's error context until the phase succeeds."""

    error_code: ErrorCode
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def retryable(self) -> bool:
        """Whether a phase that failed with this error may be retried without admin force."""
        return self.error_code in RETRYABLE_ERROR_CODES


class ApprovalDecision(enum.StrEnum):
    """A person's decision on a phase waiting for approval (`DecidePhase`)."""

    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CHANGES = "request_changes"


@dataclass(frozen=True, slots=True)
class PhaseApproval:
    """Who decided what about a phase, and when (kept on the phase and in history)."""

    decision: ApprovalDecision
    approver: str
    comment: str
    decided_at: datetime


class AlertKind(enum.StrEnum):
    """What an alert is about."""

    DEADLINE_EXCEEDED = "deadline_exceeded"
    STUCK = "stuck"
    APPROVAL_TIMEOUT = "approval_timeout"


@dataclass(frozen=True, slots=True)
class FlowAlert:
    """A breach raised on a flow (once per breach; see `flowstate.core.alerts`)."""

    kind: AlertKind
    due_at: datetime
    """When the breached limit was due."""
    raised_at: datetime
    status: FlowStatus
    """The flow status when the alert was raised."""
    phase: str = ""
    """The phase it is about (APPROVAL_TIMEOUT); empty otherwise."""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Phase:
    """The state of one phase of one flow."""

    name: str
    state: PhaseState = PhaseState.NOT_STARTED
    progress: float = 0.0
    """In-phase progress f in [0, 1] reported by the worker; only counts while IN_PROGRESS."""
    retry_count: int = 0
    last_retry_at: datetime | None = None
    error: PhaseError | None = None
    state_entered_at: datetime | None = None
    """When the phase entered its current state (None while NOT_STARTED); gives time-in-state."""
    started_at: datetime | None = None
    completed_at: datetime | None = None
    next_attempt_at: datetime | None = None
    """When the server retries the phase automatically (its `retry_policy`): set when the phase
    fails with a matching code, kept when the timer moves it to RETRY_NEEDED, cleared by any
    other change of state. None when no automatic retry is scheduled."""
    approval: PhaseApproval | None = None
    """The last approval decision on the phase (None if none)."""
    child_flow_id: str | None = None
    """For a phase of kind child_flow: the child flow of its latest start (kept afterwards, so
    the flow page and history can name it; a retry or restart replaces it)."""


@dataclass(frozen=True, slots=True)
class ExternalDependency:
    """A phase of another flow (same tenant) that must be done before `phase` may start."""

    phase: str
    flow_id: str
    flow_phase: str


@dataclass(frozen=True, slots=True)
class Flow:
    """A whole flow: the value the core decides on and the store persists."""

    flow_id: str
    tenant: Tenant
    definition_name: str
    definition_version: int
    phases: tuple[Phase, ...]
    """In definition order."""
    status: FlowStatus = FlowStatus.INITIALIZED
    status_before_pause: FlowStatus | None = None
    progress: float = 0.0
    version: int = 0
    """Per-flow sequence: 1 after creation, +1 per change."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    display_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    deadline: datetime | None = None
    """When the flow should be finished (one DEADLINE_EXCEEDED alert if it is not by then)."""
    alerts: tuple[FlowAlert, ...] = ()
    """The alerts in force (see `flowstate.core.alerts`): raised and not over yet."""
    alert_due_at: datetime | None = None
    """Derived: the earliest deadline or approval timeout not handled yet (the alert scan's
    index; `flowstate.core.alerts.alert_due_at`)."""
    parent_flow_id: str | None = None
    """The flow whose child_flow phase this flow is the child of (None for a root flow)."""
    parent_phase: str | None = None
    """That phase of the parent."""
    external_dependencies: tuple[ExternalDependency, ...] = ()
    """Phases of other flows that phases of this flow wait for (set at creation)."""

    def phase(self, name: str) -> Phase:
        """The phase called `name`; KeyError when the flow has none."""
        for candidate in self.phases:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    @property
    def phase_states(self) -> dict[str, PhaseState]:
        """Phase name → state, the shape the seed guide's API works on."""
        return {p.name: p.state for p in self.phases}


class HistoryKind(enum.StrEnum):
    """What kind of change a history entry records."""

    CREATED = "created"
    TRANSITION = "transition"
    PROGRESS = "progress"
    ROLLBACK = "rollback"
    CASCADE_ROLLBACK = "cascade_rollback"
    RETRY = "retry"
    SKIP = "skip"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    DECISION = "decision"
    ALERT = "alert"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One immutable audit record; exactly one per flow version."""

    flow_version: int
    kind: HistoryKind
    status_before: FlowStatus
    status_after: FlowStatus
    occurred_at: datetime
    phase: str | None = None
    from_state: PhaseState | None = None
    to_state: PhaseState | None = None
    reason: str = ""
    user_id: str = ""
    request_id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error: PhaseError | None = None
    time_in_state_seconds: float | None = None
    """How long the phase spent in the state it left (None for flow-level changes)."""
    progress_after: float = 0.0
    cause: str = ""
    """For cascade steps: the phase whose rollback invalidated this one."""
    phase_progress: float | None = None
    """For PROGRESS entries: the in-phase progress f the worker reported (None otherwise)."""
    next_attempt_at: datetime | None = None
    """For a failure with a matching retry policy: when the automatic retry is due."""
    approval: PhaseApproval | None = None
    """For DECISION entries: the decision, approver and comment."""
    alert: FlowAlert | None = None
    """For ALERT entries: the alert raised."""
    phase_states_after: Mapping[str, PhaseState] | None = None
    """Every phase's state after this entry: with `status_after`, the flow as this version
    left it, for filters on changes (WatchFlows, webhooks). None on an entry stored before
    migration 0017 recorded it."""
    error_codes_after: frozenset[ErrorCode] | None = None
    """The codes of the phases' open errors after this entry (None as above)."""
