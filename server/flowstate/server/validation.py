"""Request validation: every check that can be made without the store, made before it.

Each function takes one request message and returns the domain values the servicer passes on
(a core `Command`, ids, filters), or raises `FlowStateError(MALFORMED_REQUEST)` listing *every*
malformed field (`field_violations`, sent as `google.rpc.BadRequest`). A malformed request never
reaches SQL and never changes anything.

What is checked (limits as documented in the protos):

- ids: flow ids are canonical UUIDs (lower-cased here); request ids are 1-128 printable
  characters and required on every mutation;
- enums: 0 (UNSPECIFIED) and numbers unknown to this server are refused;
- text: no NUL byte anywhere (Postgres text and JSONB refuse it); reasons at most 1024
  characters, display names 256, phase and definition names 128, at most 64 labels with keys
  of 1-63 and values of at most 256 characters, failure messages 4096;
- structs (metadata, failure details): at most 16 KiB as JSON, finite numbers, no NUL;
- numbers: in-phase progress finite and in [0, 1], versions non-negative, page sizes not
  negative (above the maximum: lowered to it, as AIP-158 asks).

Semantic checks (unknown phase, illegal transition...) belong to the core, not here. Every limit
comes from the one table, `flowstate.storage.limits` (which the use cases and the store check
with too), so the layers never disagree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf import struct_pb2, timestamp_pb2

from flowstate.core.bulk import PHASE_KINDS, BulkActionKind, BulkOutcome
from flowstate.core.commands import (
    CancelFlow,
    Command,
    DecidePhase,
    PauseFlow,
    ResumeFlow,
    Retry,
    Rollback,
    TransitionPhase,
    UpdatePhaseProgress,
)
from flowstate.core.filters import Filter, parse_filter
from flowstate.core.model import ExternalDependency, FlowStatus, PhaseError, PhaseState
from flowstate.core.rules import ERROR_STATES
from flowstate.server.convert import (
    APPROVAL_DECISION_FROM_PROTO,
    ERROR_CODE_FROM_PROTO,
    FLOW_STATUS_FROM_PROTO,
    PHASE_STATE_FROM_PROTO,
    struct_to_dict,
)
from flowstate.service.flows import TransitionCheck
from flowstate.storage.codec import EncodedJson
from flowstate.storage.limits import (
    DEFAULT_FLOW_PAGE_SIZE,
    DEFAULT_HISTORY_PAGE_SIZE,
    MAX_CHILD_FLOW_DEPTH,
    MAX_DISPLAY_NAME_LENGTH,
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_EXTERNAL_DEPENDENCIES,
    MAX_FILTER_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_FILTER_TERMS,
    MAX_FILTERS,
    MAX_FLOW_IDS_PER_QUERY,
    MAX_FLOW_PAGE_SIZE,
    MAX_HISTORY_PAGE_SIZE,
    MAX_JSON_BYTES,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_NAME_LENGTH,
    MAX_PAGE_TOKEN_LENGTH,
    MAX_REASON_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_WEBHOOK_URL_LENGTH,
    MIN_EXPECTED_VERSION,
    field_violations,
)
from flowstate.v1 import errors_pb2, flow_service_pb2, webhook_pb2

__all__ = [
    "BULK_KIND_FROM_PROTO",
    "BULK_OUTCOME_FROM_PROTO",
    "DEFAULT_DEFINITION",
    "MAX_HISTORY_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "CreateFlowArgs",
    "CreateWebhookArgs",
    "ListFlowsArgs",
    "ListHistoryArgs",
    "Mutation",
    "StartBulkArgs",
    "TransitionCheck",
    "WatchFlowArgs",
    "WatchFlowsArgs",
    "bulk_action_id",
    "cancel_flow",
    "count_group",
    "create_flow",
    "create_webhook",
    "flow_filter",
    "flow_id",
    "get_flow_definition",
    "heartbeat",
    "list_bulk_action_results",
    "list_bulk_actions",
    "list_flow_history",
    "list_flows",
    "malformed",
    "pause_flow",
    "resume_flow",
    "retry",
    "rollback",
    "start_bulk_action",
    "transition_phase",
    "update_phase_progress",
    "validate_transition",
    "watch_flow",
    "watch_flows",
    "webhook_id",
]

DEFAULT_DEFINITION: Final = "discovery"
"""The definition used when a request leaves `definition_name` empty."""
MAX_PAGE_SIZE: Final = MAX_FLOW_PAGE_SIZE
"""ListFlows' largest page (the limits table's `MAX_FLOW_PAGE_SIZE`)."""

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Timestamp.ToDatetime accepts 0001-01-01 .. 9999-12-31.
_MIN_SECONDS: Final = -62135596800
_MAX_SECONDS: Final = 253402300799


malformed = field_violations
"""The MALFORMED_REQUEST error listing every violation (`flowstate.storage.limits`)."""


class _Checker:
    """Collects the violations of one request; `done()` raises them all at once."""

    __slots__ = ("violations",)

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append((field, description))

    def done(self) -> None:
        if self.violations:
            raise malformed(self.violations)

    def text(self, field: str, value: str, *, max_len: int, required: bool = False) -> str:
        if required and not value:
            self.fail(field, "is required")
        elif len(value) > max_len:
            self.fail(field, f"must be at most {max_len} characters")
        elif "\x00" in value:
            self.fail(field, "must not contain NUL bytes")
        return value

    def name(self, field: str, value: str, *, required: bool = True) -> str:
        return self.text(field, value, max_len=MAX_NAME_LENGTH, required=required)

    def request_id(self, value: str) -> str:
        if not value:
            self.fail("request_id", "is required on every mutation (an idempotency key)")
        elif len(value) > MAX_REQUEST_ID_LENGTH or not value.isprintable():
            self.fail("request_id", f"must be 1-{MAX_REQUEST_ID_LENGTH} printable characters")
        return value

    def uuid(self, field: str, value: str, *, required: bool = True) -> str:
        if not value:
            if required:
                self.fail(field, "is required")
            return ""
        if len(value) != 36 or not _UUID.fullmatch(value):
            self.fail(field, "must be a UUID (8-4-4-4-12 hex digits)")
            return ""
        return value.lower()

    def phase_state(self, field: str, value: int) -> PhaseState | None:
        state = PHASE_STATE_FROM_PROTO.get(value)
        if state is None:
            self.fail(field, _enum_problem(value, "PhaseState"))
        return state

    def flow_status(self, field: str, value: int) -> FlowStatus | None:
        status = FLOW_STATUS_FROM_PROTO.get(value)
        if status is None:
            self.fail(field, _enum_problem(value, "FlowStatus"))
        return status

    def struct(self, field: str, message: struct_pb2.Struct) -> Mapping[str, Any]:
        if not message.fields:
            return {}
        data = struct_to_dict(message)
        try:
            encoded = EncodedJson(data)  # the one encoding: later layers reuse its text
        except ValueError:
            self.fail(field, "numbers must be finite (no NaN or Infinity)")
            return {}
        if len(encoded.text.encode()) > MAX_JSON_BYTES:
            self.fail(field, f"must be at most {MAX_JSON_BYTES} bytes as JSON")
        elif _has_nul(data):  # a real NUL, not the text "\\u0000" (which is stored verbatim)
            self.fail(field, "must not contain NUL bytes")
        return encoded

    def expected_version(self, message: Any) -> int | None:
        if not message.HasField("expected_version"):
            return None
        version = int(message.expected_version)
        if version < MIN_EXPECTED_VERSION:
            self.fail("expected_version", f"must be >= {MIN_EXPECTED_VERSION} when set")
        return version

    def page(self, size: int, token: str, *, default: int, maximum: int) -> tuple[int, str]:
        # AIP-158: a size above the maximum is lowered to it, not refused.
        if size < 0:
            self.fail("page_size", f"must be >= 0 (0: {default}; above {maximum}: {maximum})")
        self.text("page_token", token, max_len=MAX_PAGE_TOKEN_LENGTH)
        return min(size or default, maximum), token

    def timestamp(self, field: str, message: timestamp_pb2.Timestamp) -> datetime | None:
        if not _MIN_SECONDS <= message.seconds <= _MAX_SECONDS or not (
            0 <= message.nanos < 1_000_000_000
        ):
            self.fail(field, "is not a valid timestamp")
            return None
        return message.ToDatetime(tzinfo=UTC)


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string (key or value) of a JSON-like value."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _enum_problem(value: int, enum_name: str) -> str:
    if value == 0:
        return f"is required ({enum_name} UNSPECIFIED is not a value)"
    return f"unknown {enum_name} value {value}"


def _reason(check: _Checker, value: str) -> str:
    return check.text("reason", value, max_len=MAX_REASON_LENGTH)


# --- mutations --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mutation:
    """A validated mutation request: which flow, what to do, idempotency key, expected version."""

    flow_id: str
    command: Command
    request_id: str
    expected_version: int | None


@dataclass(frozen=True, slots=True)
class CreateFlowArgs:
    """A validated CreateFlow request."""

    request_id: str
    definition_name: str
    definition_version: int
    flow_id: str | None
    display_name: str
    labels: dict[str, str]
    deadline: datetime | None = None
    external_dependencies: tuple[ExternalDependency, ...] = ()


def create_flow(request: flow_service_pb2.CreateFlowRequest) -> CreateFlowArgs:
    """Check a CreateFlow request."""
    check = _Checker()
    request_id = check.request_id(request.request_id)
    definition_name = check.name("definition_name", request.definition_name, required=False)
    if request.definition_version < 0:
        check.fail("definition_version", "must be >= 0 (0: the latest)")
    flow_id = check.uuid("flow_id", request.flow_id, required=False)
    display_name = check.text("display_name", request.display_name, max_len=MAX_DISPLAY_NAME_LENGTH)
    labels = dict(request.labels)
    if len(labels) > MAX_LABELS:
        check.fail("labels", f"must have at most {MAX_LABELS} entries")
    for key, value in labels.items():
        check.text("labels", key, max_len=MAX_LABEL_KEY_LENGTH, required=True)
        check.text(f"labels[{key[:MAX_LABEL_KEY_LENGTH]}]", value, max_len=MAX_LABEL_VALUE_LENGTH)
    deadline = (
        check.timestamp("deadline", request.deadline) if request.HasField("deadline") else None
    )
    if len(request.external_dependencies) > MAX_EXTERNAL_DEPENDENCIES:
        check.fail(
            "external_dependencies", f"must have at most {MAX_EXTERNAL_DEPENDENCIES} entries"
        )
    externals = tuple(
        ExternalDependency(
            check.name(f"external_dependencies[{i}].phase", d.phase),
            check.uuid(f"external_dependencies[{i}].flow_id", d.flow_id),
            check.name(f"external_dependencies[{i}].flow_phase", d.flow_phase),
        )
        for i, d in enumerate(request.external_dependencies)
    )
    check.done()
    return CreateFlowArgs(
        external_dependencies=externals,
        request_id=request_id,
        definition_name=definition_name or DEFAULT_DEFINITION,
        definition_version=request.definition_version,
        flow_id=flow_id or None,
        display_name=display_name,
        labels=labels,
        deadline=deadline,
    )


def _phase_failure(check: _Checker, message: errors_pb2.PhaseFailure) -> PhaseError | None:
    code = ERROR_CODE_FROM_PROTO.get(message.error_code)
    if code is None:
        check.fail("failure.error_code", _enum_problem(message.error_code, "ErrorCode"))
    text = check.text("failure.message", message.message, max_len=MAX_ERROR_MESSAGE_LENGTH)
    details = check.struct("failure.details", message.details)
    return PhaseError(code, text, details) if code is not None else None


def transition_phase(request: flow_service_pb2.TransitionPhaseRequest) -> Mutation:
    """Check a TransitionPhase request.

    A `failure` is refused with any target but FAILED or RETRY_NEEDED. Whether one is *required*
    depends on the phase's current state (leaving RETRY_NEEDED for FAILED keeps the error it
    carries), so the core decides that.
    """
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    phase = check.name("phase", request.phase)
    target = check.phase_state("target_state", request.target_state)
    reason = _reason(check, request.reason)
    error: PhaseError | None = None
    if request.HasField("failure"):
        if target is not None and target not in ERROR_STATES:
            check.fail("failure", "is only allowed with a FAILED or RETRY_NEEDED target")
        error = _phase_failure(check, request.failure)
    metadata = check.struct("metadata", request.metadata)
    request_id = check.request_id(request.request_id)
    expected_version = check.expected_version(request)
    check.done()
    assert target is not None  # done() raised otherwise
    command = TransitionPhase(phase, target, reason=reason, error=error, metadata=metadata)
    return Mutation(flow_id, command, request_id, expected_version)


def heartbeat(request: flow_service_pb2.HeartbeatRequest) -> tuple[str, str]:
    """Check a Heartbeat request: (flow id, phase)."""
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    phase = check.name("phase", request.phase)
    check.done()
    return flow_id, phase


def update_phase_progress(request: flow_service_pb2.UpdatePhaseProgressRequest) -> Mutation:
    """Check an UpdatePhaseProgress request: progress finite and in [0, 1]."""
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    phase = check.name("phase", request.phase)
    progress = request.progress
    if not math.isfinite(progress) or not 0.0 <= progress <= 1.0:
        check.fail("progress", "must be a number in [0, 1]")
    reason = _reason(check, request.reason)
    metadata = check.struct("metadata", request.metadata)
    request_id = check.request_id(request.request_id)
    expected_version = check.expected_version(request)
    check.done()
    command = UpdatePhaseProgress(phase, progress, reason=reason, metadata=metadata)
    return Mutation(flow_id, command, request_id, expected_version)


def rollback(request: flow_service_pb2.RollbackRequest) -> Mutation:
    """Check a Rollback request; `cascade` defaults to true."""
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    phase = check.name("phase", request.phase)
    cascade = request.cascade if request.HasField("cascade") else True
    reason = _reason(check, request.reason)
    request_id = check.request_id(request.request_id)
    expected_version = check.expected_version(request)
    check.done()
    return Mutation(flow_id, Rollback(phase, cascade, reason), request_id, expected_version)


def retry(request: flow_service_pb2.RetryRequest) -> Mutation:
    """Check a Retry request (the servicer checks that `force` comes with flows:admin)."""
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    phase = check.name("phase", request.phase)
    reason = _reason(check, request.reason)
    request_id = check.request_id(request.request_id)
    expected_version = check.expected_version(request)
    check.done()
    return Mutation(flow_id, Retry(phase, request.force, reason), request_id, expected_version)


def _flow_level(
    request: (
        flow_service_pb2.PauseFlowRequest
        | flow_service_pb2.ResumeFlowRequest
        | flow_service_pb2.CancelFlowRequest
    ),
    command_type: type[PauseFlow] | type[ResumeFlow] | type[CancelFlow],
) -> Mutation:
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    reason = _reason(check, request.reason)
    request_id = check.request_id(request.request_id)
    expected_version = check.expected_version(request)
    check.done()
    return Mutation(flow_id, command_type(reason), request_id, expected_version)


def pause_flow(request: flow_service_pb2.PauseFlowRequest) -> Mutation:
    """Check a PauseFlow request."""
    return _flow_level(request, PauseFlow)


def resume_flow(request: flow_service_pb2.ResumeFlowRequest) -> Mutation:
    """Check a ResumeFlow request."""
    return _flow_level(request, ResumeFlow)


def cancel_flow(request: flow_service_pb2.CancelFlowRequest) -> Mutation:
    """Check a CancelFlow request."""
    return _flow_level(request, CancelFlow)


def decide_phase(request: flow_service_pb2.DecidePhaseRequest) -> Mutation:
    """Check a DecidePhase request: a known decision; the comment is a reason."""
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    phase = check.name("phase", request.phase)
    decision = APPROVAL_DECISION_FROM_PROTO.get(request.decision)
    if decision is None:
        check.fail("decision", _enum_problem(request.decision, "ApprovalDecision"))
    comment = _reason(check, request.comment)
    request_id = check.request_id(request.request_id)
    expected_version = check.expected_version(request)
    check.done()
    assert decision is not None  # done() raised otherwise
    return Mutation(flow_id, DecidePhase(phase, decision, comment), request_id, expected_version)


# --- reads ------------------------------------------------------------------------------------


def flow_id(value: str, field: str = "flow_id") -> str:
    """Check one required flow id; the canonical (lower-case) UUID."""
    check = _Checker()
    result = check.uuid(field, value)
    check.done()
    return result


@dataclass(frozen=True, slots=True)
class ListFlowsArgs:
    """A validated ListFlows request."""

    page_size: int
    page_token: str
    statuses: tuple[FlowStatus, ...]
    phase_states: Mapping[str, tuple[PhaseState, ...]]
    updated_before: datetime | None
    definition_name: str | None
    alerting: bool = False
    filter_text: str = ""
    parent_flow_id: str | None = None


def flow_filter(
    text: str,
    *,
    now: datetime,
    stuck_after: timedelta | Mapping[FlowStatus, float],
    field: str = "filter",
) -> Filter | None:
    """The parsed filter `text` (None when blank), its relative times and ``stuck`` resolved at
    `now`. ``stuck`` is the server's rule: unchanged for `stuck_after` (FLOWSTATE_STUCK_AFTER),
    or per status for a mapping of seconds (`ServerSettings.stuck_thresholds`, the thresholds of
    the STUCK alerts; 0: never stuck in that status).

    MALFORMED_REQUEST with ``position`` (0-based offset) when it does not parse; see
    `flowstate.core.filters` for the language and docs/filters.md for its reference.
    """
    check = _Checker()
    check.text(field, text, max_len=MAX_FILTER_LENGTH)
    check.done()
    stuck_before: datetime | dict[FlowStatus, datetime]
    if isinstance(stuck_after, timedelta):
        stuck_before = now - stuck_after
    else:
        stuck_before = {
            status: now - timedelta(seconds=seconds)
            for status, seconds in stuck_after.items()
            if seconds > 0
        }
    return parse_filter(
        text,
        now=now,
        stuck_before=stuck_before,
        field=field,
        max_depth=MAX_FILTER_DEPTH,
        max_terms=MAX_FILTER_TERMS,
    )


def count_group(group_by: str) -> tuple[str, str | None]:
    """CountFlows' `group_by`: ("", None), ("status", None), ("definition", None) or
    ("phase", name) for ``phase.<name>``; MALFORMED_REQUEST otherwise."""
    check = _Checker()
    head, dot, name = group_by.partition(".")
    if group_by in ("", "status", "definition"):
        return group_by, None
    if head == "phase" and dot and name:
        check.name("group_by", name)
        check.done()
        return "phase", name
    check.fail("group_by", "must be status, definition, phase.<name> or empty")
    check.done()
    raise AssertionError("unreachable")  # check.done raised


def list_flows(request: flow_service_pb2.ListFlowsRequest) -> ListFlowsArgs:
    """Check a ListFlows request (page size 1-500: 50 when 0, larger ones lowered to 500)."""
    check = _Checker()
    page_size, page_token = check.page(
        request.page_size,
        request.page_token,
        default=DEFAULT_FLOW_PAGE_SIZE,
        maximum=MAX_FLOW_PAGE_SIZE,
    )
    statuses = [
        check.flow_status(f"statuses[{i}]", value) for i, value in enumerate(request.statuses)
    ]
    if len(request.phase_states) > MAX_FILTERS:
        check.fail("phase_states", f"must have at most {MAX_FILTERS} filters")
    phase_states: dict[str, tuple[PhaseState, ...]] = {}
    for i, phase_filter in enumerate(request.phase_states):
        name = check.name(f"phase_states[{i}].phase", phase_filter.phase)
        if not phase_filter.states:
            check.fail(f"phase_states[{i}].states", "must name at least one state")
        states = [
            check.phase_state(f"phase_states[{i}].states[{j}]", value)
            for j, value in enumerate(phase_filter.states)
        ]
        if name in phase_states:
            check.fail(f"phase_states[{i}].phase", "names a phase filtered twice")
        phase_states[name] = tuple(s for s in states if s is not None)
    updated_before = (
        check.timestamp("updated_before", request.updated_before)
        if request.HasField("updated_before")
        else None
    )
    definition_name = check.name("definition_name", request.definition_name, required=False)
    parent_flow_id = check.uuid("parent_flow_id", request.parent_flow_id, required=False)
    check.done()
    return ListFlowsArgs(
        parent_flow_id=parent_flow_id or None,
        page_size=page_size,
        page_token=page_token,
        statuses=tuple(s for s in statuses if s is not None),
        phase_states=phase_states,
        updated_before=updated_before,
        definition_name=definition_name or None,
        filter_text=request.filter,
        alerting=request.alerting,
    )


@dataclass(frozen=True, slots=True)
class ListHistoryArgs:
    """A validated ListFlowHistory request."""

    flow_id: str
    after_version: int
    page_size: int
    page_token: str


def list_flow_history(request: flow_service_pb2.ListFlowHistoryRequest) -> ListHistoryArgs:
    """Check a ListFlowHistory request (page size 1-1000: 100 when 0, larger lowered to 1000)."""
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    if request.after_version < 0:
        check.fail("after_version", "must be >= 0")
    page_size, page_token = check.page(
        request.page_size,
        request.page_token,
        default=DEFAULT_HISTORY_PAGE_SIZE,
        maximum=MAX_HISTORY_PAGE_SIZE,
    )
    check.done()
    return ListHistoryArgs(flow_id, request.after_version, page_size, page_token)


def get_flow_definition(request: flow_service_pb2.GetFlowDefinitionRequest) -> tuple[str, int]:
    """Check a GetFlowDefinition request: (name, version); "discovery" and latest (0) default."""
    check = _Checker()
    name = check.name("name", request.name, required=False)
    if request.version < 0:
        check.fail("version", "must be >= 0 (0: the latest)")
    check.done()
    return name or DEFAULT_DEFINITION, request.version


def validate_transition(request: flow_service_pb2.ValidateTransitionRequest) -> TransitionCheck:
    """Check a ValidateTransition request: one transition; without a flow, its source too."""
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id, required=False) or None
    definition_name = check.name("definition_name", request.definition_name, required=False)
    definition_name = definition_name or DEFAULT_DEFINITION
    kind = request.WhichOneof("transition")
    result = TransitionCheck(flow_id, definition_name)
    if kind == "phase_transition":
        transition = request.phase_transition
        phase = check.name("phase_transition.phase", transition.phase)
        from_state = None
        if flow_id is None:
            from_state = check.phase_state("phase_transition.from_state", transition.from_state)
        to_state = check.phase_state("phase_transition.to_state", transition.to_state)
        result = TransitionCheck(
            flow_id, definition_name, phase=phase, from_state=from_state, to_state=to_state
        )
    elif kind == "flow_transition":
        flow_transition = request.flow_transition
        from_status = None
        if flow_id is None:
            from_status = check.flow_status(
                "flow_transition.from_status", flow_transition.from_status
            )
        to_status = check.flow_status("flow_transition.to_status", flow_transition.to_status)
        result = TransitionCheck(
            flow_id, definition_name, from_status=from_status, to_status=to_status
        )
    else:
        check.fail("transition", "one of phase_transition or flow_transition is required")
    check.done()
    return result


@dataclass(frozen=True, slots=True)
class WatchFlowArgs:
    """A validated WatchFlow request."""

    flow_id: str
    after_version: int | None
    keep_open: bool
    children_depth: int = 0
    include_dependencies: bool = False
    cursor: str = ""

    @property
    def tree(self) -> bool:
        """Whether the stream is a tree stream (children or dependencies; resumed by cursor)."""
        return self.children_depth > 0 or self.include_dependencies


def watch_flow(request: flow_service_pb2.WatchFlowRequest) -> WatchFlowArgs:
    """Check a WatchFlow request.

    A tree stream (children_depth > 0 or include_dependencies) resumes by `cursor`, a plain
    one by `after_version`: the other position is refused.
    """
    check = _Checker()
    flow_id = check.uuid("flow_id", request.flow_id)
    after_version: int | None = None
    if request.HasField("after_version"):
        after_version = request.after_version
        if after_version < 0:
            check.fail("after_version", "must be >= 0")
    depth = _check_children_depth(check, request.children_depth)
    cursor = check.text("cursor", request.cursor, max_len=MAX_PAGE_TOKEN_LENGTH) or ""
    args = WatchFlowArgs(
        flow_id, after_version, request.keep_open, depth, request.include_dependencies, cursor
    )
    if args.tree and after_version is not None:
        check.fail(
            "after_version",
            "a stream with children_depth or include_dependencies resumes by cursor",
        )
    if cursor and not args.tree:
        check.fail(
            "cursor", "only a stream with children_depth or include_dependencies takes a cursor"
        )
    check.done()
    return args


@dataclass(frozen=True, slots=True)
class WatchFlowsArgs:
    """A validated WatchFlows request."""

    statuses: tuple[FlowStatus, ...]
    definition_name: str | None
    flow_ids: tuple[str, ...]
    cursor: str | None
    filter_text: str = ""


def watch_flows(request: flow_service_pb2.WatchFlowsRequest) -> WatchFlowsArgs:
    """Check a WatchFlows request."""
    check = _Checker()
    statuses = [
        check.flow_status(f"statuses[{i}]", value) for i, value in enumerate(request.statuses)
    ]
    definition_name = check.name("definition_name", request.definition_name, required=False)
    if len(request.flow_ids) > MAX_FLOW_IDS_PER_QUERY:
        check.fail("flow_ids", f"must have at most {MAX_FLOW_IDS_PER_QUERY} entries")
    flow_ids = [check.uuid(f"flow_ids[{i}]", value) for i, value in enumerate(request.flow_ids)]
    cursor = check.text("cursor", request.cursor, max_len=MAX_PAGE_TOKEN_LENGTH)
    check.done()
    return WatchFlowsArgs(
        statuses=tuple(s for s in statuses if s is not None),
        definition_name=definition_name or None,
        flow_ids=tuple(flow_ids),
        cursor=cursor or None,
        filter_text=request.filter,
    )


@dataclass(frozen=True, slots=True)
class CreateWebhookArgs:
    """A validated CreateWebhook request (the URL policy and the secret are the use case's)."""

    url: str
    statuses: tuple[FlowStatus, ...]
    definition_name: str
    secret: str
    filter_text: str = ""


def create_webhook(request: webhook_pb2.CreateWebhookRequest) -> CreateWebhookArgs:
    """Check a CreateWebhook request's fields."""
    check = _Checker()
    url = check.text("url", request.url, max_len=MAX_WEBHOOK_URL_LENGTH, required=True)
    statuses = [
        check.flow_status(f"statuses[{i}]", value) for i, value in enumerate(request.statuses)
    ]
    definition_name = check.name("definition_name", request.definition_name, required=False)
    secret = check.text("secret", request.secret, max_len=MAX_PAGE_TOKEN_LENGTH)
    check.done()
    return CreateWebhookArgs(
        url=url,
        statuses=tuple(s for s in statuses if s is not None),
        definition_name=definition_name or "",
        secret=secret,
        filter_text=request.filter,
    )


def webhook_id(value: str) -> str:
    """Check a request's ``webhook_id`` (a UUID)."""
    check = _Checker()
    found = check.uuid("webhook_id", value)
    check.done()
    return found


BULK_KIND_FROM_PROTO: Final[Mapping[int, BulkActionKind]] = {
    flow_service_pb2.BulkActionType.Value("BULK_ACTION_TYPE_" + kind.name): kind
    for kind in BulkActionKind
}
"""Proto number -> bulk action kind; 0 and unknown numbers are absent."""
BULK_OUTCOME_FROM_PROTO: Final[Mapping[int, BulkOutcome]] = {
    flow_service_pb2.BulkFlowOutcome.Value("BULK_FLOW_OUTCOME_" + o.name): o for o in BulkOutcome
}
"""Proto number -> bulk flow outcome; 0 (every outcome) is absent."""


@dataclass(frozen=True, slots=True)
class StartBulkArgs:
    """A validated StartBulkAction request (the filter is parsed by the servicer)."""

    request_id: str
    kind: BulkActionKind
    phase: str | None
    filter_text: str
    flow_ids: tuple[str, ...]
    reason: str


def start_bulk_action(request: flow_service_pb2.StartBulkActionRequest) -> StartBulkArgs:
    """Check a StartBulkAction request: a known action, a filter or ids (not both), the phase
    a ROLLBACK or SKIP needs."""
    check = _Checker()
    request_id = check.request_id(request.request_id)
    kind = BULK_KIND_FROM_PROTO.get(request.action)
    if kind is None:
        check.fail("action", "must be RETRY, CANCEL, PAUSE, RESUME, ROLLBACK or SKIP")
    phase = check.name("phase", request.phase, required=kind in PHASE_KINDS) or None
    check.text("filter", request.filter, max_len=MAX_FILTER_LENGTH)
    if len(request.flow_ids) > MAX_FLOW_IDS_PER_QUERY:
        check.fail("flow_ids", f"must have at most {MAX_FLOW_IDS_PER_QUERY} entries")
    flow_ids = [check.uuid(f"flow_ids[{i}]", v) for i, v in enumerate(request.flow_ids)]
    if request.filter and flow_ids:
        check.fail("flow_ids", "give a filter or flow ids, not both")
    if not request.filter.strip() and not flow_ids:
        check.fail("filter", "is required (or flow_ids)")
    reason = check.text("reason", request.reason, max_len=MAX_REASON_LENGTH)
    check.done()
    assert kind is not None
    return StartBulkArgs(request_id, kind, phase, request.filter, tuple(flow_ids), reason)


def bulk_action_id(value: str) -> str:
    """A bulk action id (a UUID, lower-cased)."""
    check = _Checker()
    action_id = check.uuid("bulk_action_id", value)
    check.done()
    return action_id


def list_bulk_actions(request: flow_service_pb2.ListBulkActionsRequest) -> tuple[int, str]:
    """Check a ListBulkActions request: (page size, page token)."""
    check = _Checker()
    page = check.page(
        request.page_size,
        request.page_token,
        default=DEFAULT_FLOW_PAGE_SIZE,
        maximum=MAX_FLOW_PAGE_SIZE,
    )
    check.done()
    return page


def list_bulk_action_results(
    request: flow_service_pb2.ListBulkActionResultsRequest,
) -> tuple[str, BulkOutcome | None, int, str]:
    """Check a ListBulkActionResults request: (id, outcome or None, page size, page token)."""
    check = _Checker()
    action_id = check.uuid("bulk_action_id", request.bulk_action_id)
    outcome = BULK_OUTCOME_FROM_PROTO.get(request.outcome)
    if request.outcome and outcome is None:
        check.fail("outcome", "is not a known outcome")
    size, token = check.page(
        request.page_size,
        request.page_token,
        default=DEFAULT_HISTORY_PAGE_SIZE,
        maximum=MAX_HISTORY_PAGE_SIZE,
    )
    check.done()
    return action_id, outcome, size, token


# --- child flows (docs/child_flows.md) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkChildArgs:
    """A validated LinkChildFlow request."""

    flow_id: str
    phase: str
    child_flow_id: str
    reason: str
    request_id: str
    expected_version: int | None


def link_child_flow(request: flow_service_pb2.LinkChildFlowRequest) -> LinkChildArgs:
    """Check a LinkChildFlow request."""
    check = _Checker()
    parent = check.uuid("flow_id", request.flow_id)
    phase = check.name("phase", request.phase)
    child = check.uuid("child_flow_id", request.child_flow_id)
    if parent and parent == child:
        check.fail("child_flow_id", "must not be the parent flow itself")
    reason = _reason(check, request.reason)
    request_id = check.request_id(request.request_id)
    expected_version = check.expected_version(request)
    check.done()
    return LinkChildArgs(parent, phase, child, reason, request_id, expected_version)


def children_depth(value: int) -> int:
    """Check GetFlow's `children_depth`: 0 to `MAX_CHILD_FLOW_DEPTH`."""
    check = _Checker()
    _check_children_depth(check, value)
    check.done()
    return value


def _check_children_depth(check: _Checker, value: int) -> int:
    """The one rule of `children_depth` (GetFlow, WatchFlow): 0 to `MAX_CHILD_FLOW_DEPTH`."""
    if not 0 <= value <= MAX_CHILD_FLOW_DEPTH:
        check.fail("children_depth", f"must be in [0, {MAX_CHILD_FLOW_DEPTH}]")
    return value
