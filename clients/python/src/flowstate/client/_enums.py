"""Python enums mirroring the ``flowstate.v1`` proto enums, without the value prefix.

Each enum is an `enum.IntEnum` whose values are the proto numbers, so a member can be passed
wherever a proto enum value is expected and compared with one (``PhaseState.IN_PROGRESS ==
states_pb2.PHASE_STATE_IN_PROGRESS``). A number the SDK does not know (a newer server) becomes a
pseudo-member named ``UNKNOWN_<n>`` instead of failing, so old clients keep reading new flows.
"""

from __future__ import annotations

import enum
from typing import Any, Self

__all__ = [
    "AlertKind",
    "ApprovalDecision",
    "BulkActionState",
    "BulkActionType",
    "BulkFlowOutcome",
    "ErrorCode",
    "FlowEventKind",
    "FlowStatus",
    "HistoryEventKind",
    "PhaseState",
    "RecoveryAction",
    "WatchRelation",
]


class _ProtoEnum(enum.IntEnum):
    """Base of the proto mirrors: unknown numbers become ``UNKNOWN_<n>`` pseudo-members."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            return member
        return None

    @classmethod
    def proto_prefix(cls) -> str:
        """The prefix of this enum's values in the proto (``PHASE_STATE_`` for `PhaseState`)."""
        return _PREFIXES[cls.__name__]

    @classmethod
    def parse(cls, value: int | str) -> Self:
        """A member from a member, a proto number or a name.

        Names are case-insensitive and may carry the proto prefix: ``"in_progress"``,
        ``"IN_PROGRESS"`` and ``"PHASE_STATE_IN_PROGRESS"`` all give ``PhaseState.IN_PROGRESS``.

        Raises:
            ValueError: `value` names no member.
            TypeError: `value` is neither an int nor a str.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"{cls.__name__} expects an int or a str, got {value!r}")
        if isinstance(value, int):
            return cls(value)
        name = value.strip().upper().replace("-", "_")
        prefix = cls.proto_prefix()
        if name.startswith(prefix):
            name = name[len(prefix) :]
        try:
            return cls[name]
        except KeyError:
            known = ", ".join(m.name for m in cls if m.value != 0)
            message = f"unknown {cls.__name__} {value!r} (expected one of: {known})"
            raise ValueError(message) from None

    @property
    def proto_name(self) -> str:
        """The value's name in the proto, e.g. ``PHASE_STATE_IN_PROGRESS``."""
        return self.proto_prefix() + self.name


class PhaseState(_ProtoEnum):
    """The state of one phase of a flow (``flowstate.v1.PhaseState``)."""

    UNSPECIFIED = 0
    NOT_STARTED = 1
    IN_PROGRESS = 2
    WAITING_VALIDATION = 3
    WAITING_APPROVAL = 4
    COMPLETED = 5
    FAILED = 6
    RETRY_NEEDED = 7
    ROLLED_BACK = 8
    #: An optional phase that was skipped: satisfies its dependents, counts as done.
    SKIPPED = 9

    @property
    def is_done(self) -> bool:
        """Whether the phase counts as done (COMPLETED or SKIPPED): its dependents may start."""
        return self in (PhaseState.COMPLETED, PhaseState.SKIPPED)


class FlowStatus(_ProtoEnum):
    """The overall status of a flow, derived from its phases (``flowstate.v1.FlowStatus``)."""

    UNSPECIFIED = 0
    INITIALIZED = 1
    ACTIVE = 2
    DATA_GATHERING = 3
    DISCOVERY = 4
    ASSESSMENT_READY = 5
    PLANNING = 6
    WAITING_APPROVAL = 7
    RETRY_PENDING = 8
    ERROR_RECOVERY = 9
    COMPLETED = 10
    FAILED = 11
    PAUSED = 12
    CANCELLED = 13

    @property
    def is_terminal(self) -> bool:
        """Whether nothing can change a flow in this status (COMPLETED, CANCELLED)."""
        return self in (FlowStatus.COMPLETED, FlowStatus.CANCELLED)


class ErrorCode(_ProtoEnum):
    """Every Flowstate error code: request refusals and phase failure codes."""

    UNSPECIFIED = 0
    INVALID_PHASE = 1
    MALFORMED_REQUEST = 2
    INVALID_PHASE_TRANSITION = 3
    INVALID_FLOW_TRANSITION = 4
    PHASE_ORDER_VIOLATION = 5
    DEPENDENT_PHASES_ACTIVE = 6
    FLOW_PAUSED = 7
    FLOW_TERMINAL = 8
    MAX_RETRIES_EXCEEDED = 9
    RETRY_NOT_ALLOWED = 10
    VERSION_CONFLICT = 11
    FLOW_NOT_FOUND = 12
    REQUEST_ID_REUSED = 13
    UNAUTHENTICATED = 14
    PERMISSION_DENIED = 15
    TEMPORARY_RESOURCE_UNAVAILABLE = 16
    INTERNAL = 17
    PHASE_EXECUTION_FAILED = 18
    AGENT_TIMEOUT = 19
    EXTERNAL_SERVICE_ERROR = 20
    DATA_VALIDATION_FAILED = 21
    INVALID_TRANSITION = 22
    SUBSCRIBER_TOO_SLOW = 23
    SERVER_SHUTTING_DOWN = 24
    DEFINITION_NOT_FOUND = 25
    DEFINITION_SHADOWS_BUILTIN = 26
    WEBHOOK_NOT_FOUND = 45
    RATE_LIMITED = 46
    BULK_ACTION_NOT_FOUND = 40
    #: Phase failure code (non-retryable): a person rejected the phase (or its approval timed out).
    APPROVAL_REJECTED = 35
    #: Refusal: the phase's policy requires a DecidePhase decision.
    APPROVAL_REQUIRED = 36
    CHILD_FLOW_CANCELLED = 60
    PHASE_FOLLOWS_CHILD_FLOW = 61
    CHILD_FLOW_LIMIT_EXCEEDED = 62
    CHILD_FLOW_NOT_LINKABLE = 63


class HistoryEventKind(_ProtoEnum):
    """What kind of change a history entry records (``flowstate.v1.HistoryEventKind``)."""

    UNSPECIFIED = 0
    CREATED = 1
    TRANSITION = 2
    PROGRESS = 3
    ROLLBACK = 4
    CASCADE_ROLLBACK = 5
    RETRY = 6
    PAUSE = 7
    RESUME = 8
    CANCEL = 9
    SKIP = 10
    #: A person decided on a phase waiting for approval (`HistoryEntry.approval`).
    DECISION = 35
    #: The server raised an alert (`HistoryEntry.alert`); no phase changed.
    ALERT = 36


class ApprovalDecision(_ProtoEnum):
    """A decision on a phase waiting for approval (``flowstate.v1.ApprovalDecision``)."""

    UNSPECIFIED = 0
    APPROVE = 1
    REJECT = 2
    REQUEST_CHANGES = 3


class AlertKind(_ProtoEnum):
    """What an alert is about (``flowstate.v1.AlertKind``)."""

    UNSPECIFIED = 0
    DEADLINE_EXCEEDED = 1
    STUCK = 2
    APPROVAL_TIMEOUT = 3


class RecoveryAction(_ProtoEnum):
    """A recovery action offered by ``GetRecoveryOptions`` (``flowstate.v1.RecoveryAction``)."""

    UNSPECIFIED = 0
    RETRY = 1
    FORCE_RETRY = 2
    ROLLBACK = 3
    RESTART = 4
    RESUME = 5
    CANCEL = 6
    ABANDON = 7
    SKIP = 8


class FlowEventKind(enum.StrEnum):
    """What a status-stream event carries (the ``kind`` oneof of ``flowstate.v1.FlowEvent``)."""

    SNAPSHOT = "snapshot"
    CHANGE = "change"
    HEARTBEAT = "heartbeat"
    #: The server raised an alert on the flow (a deadline passed, stuck, approval timeout).
    ALERT = "alert"


class BulkActionType(_ProtoEnum):
    """What a bulk action does to each flow (``flowstate.v1.BulkActionType``)."""

    UNSPECIFIED = 0
    RETRY = 1
    CANCEL = 2
    PAUSE = 3
    RESUME = 4
    ROLLBACK = 5
    SKIP = 6


class BulkActionState(_ProtoEnum):
    """Where a bulk action stands (``flowstate.v1.BulkActionState``)."""

    UNSPECIFIED = 0
    RUNNING = 1
    SUCCEEDED = 2
    CANCELLED = 3


class BulkFlowOutcome(_ProtoEnum):
    """What a bulk action did to one flow (``flowstate.v1.BulkFlowOutcome``; UNSPECIFIED: not
    taken yet)."""

    UNSPECIFIED = 0
    APPLIED = 1
    REFUSED = 2
    SKIPPED = 3


class WatchRelation(_ProtoEnum):
    """How an event's flow relates to the flow `watch` watches (``flowstate.v1.WatchRelation``).

    Set on streams with ``children_depth`` or ``include_dependencies``; UNSPECIFIED otherwise.
    """

    UNSPECIFIED = 0
    #: The watched flow itself.
    SELF = 1
    #: One of its child flows (down to ``children_depth``).
    DESCENDANT = 2
    #: A flow one of the tree's phases depends on (``external_dependencies``).
    DEPENDENCY = 3


_PREFIXES = {
    "BulkActionType": "BULK_ACTION_TYPE_",
    "BulkActionState": "BULK_ACTION_STATE_",
    "BulkFlowOutcome": "BULK_FLOW_OUTCOME_",
    "PhaseState": "PHASE_STATE_",
    "FlowStatus": "FLOW_STATUS_",
    "ErrorCode": "ERROR_CODE_",
    "HistoryEventKind": "HISTORY_EVENT_KIND_",
    "RecoveryAction": "RECOVERY_ACTION_",
    "ApprovalDecision": "APPROVAL_DECISION_",
    "AlertKind": "ALERT_KIND_",
    "WatchRelation": "WATCH_RELATION_",
}
