"""The pure command layer: decide what a command does to a flow, or refuse it.

`create_flow` builds a new flow; `apply_command(flow, definition, command, ctx)` returns a
`Decision` (the new flow and the history entries to append) or raises `FlowStateError`;
`validate_command` is the same decision as a dry run that returns the refusal instead. Nothing
here reads a clock or performs I/O: time and identity come in through `Context`.

Each change appends exactly one `HistoryEntry`, numbered flow.version + 1, + 2, ... (a cascade
rollback is one entry per phase). The returned flow has the new phases, the status derived by
`determine_flow_status` after each step, `calculate_progress`, the last version and
`updated_at = ctx.now`.

Decisions DESIGN.md leaves open, fixed here:

- **Check order** for a phase command: unknown phase (INVALID_PHASE) → terminal flow
  (FLOW_TERMINAL) → phase table (INVALID_PHASE_TRANSITION, with `valid_transitions`) → request
  payload (MALFORMED_REQUEST) → retry gate (MAX_RETRIES_EXCEEDED, then RETRY_NOT_ALLOWED) →
  dependencies (PHASE_ORDER_VIOLATION) → pause (FLOW_PAUSED). Permanent reasons come before
  transient ones, so the first refusal is the one worth acting on.
- **Phase errors.** A `TransitionPhase` into FAILED or RETRY_NEEDED must carry `error`, except
  when the phase leaves FAILED or RETRY_NEEDED (it already carries one, which is kept unless a new
  one is given). An `error` on any other transition is MALFORMED_REQUEST. The error stays on the
  phase until it reaches COMPLETED.
- **Starting** means entering IN_PROGRESS from any state (first start, retry, restart after a
  rollback, changes requested after WAITING_APPROVAL): each needs every dependency COMPLETED and
  a flow that is not PAUSED.
- **Retry gate.** FAILED → RETRY_NEEDED and RETRY_NEEDED → IN_PROGRESS are retry steps whichever
  command asks for them (`Retry` or `TransitionPhase`), so limits cannot be bypassed: refused with
  MAX_RETRIES_EXCEEDED once `retry_count >= max_retries`, and with RETRY_NOT_ALLOWED when the
  phase error is non-retryable, unless `Retry(force=True)` comes from an admin (`ctx.is_admin`).
  Force does not lift the retry limit: past it, roll back and restart. Only RETRY_NEEDED →
  IN_PROGRESS counts an attempt (`retry_count + 1`, `last_retry_at = now`). A missing error counts
  as retryable. `retry_count` is never reset (it is an audit figure); restarting a ROLLED_BACK
  phase is not a retry.
- **Rollback.** `TransitionPhase(..., ROLLED_BACK)` is a rollback with cascade. Cascade steps move
  downstream phases to ROLLED_BACK from whatever state they are in (an invalidation, outside the
  phase table); phases still NOT_STARTED or already ROLLED_BACK are left alone. Rolled-back
  phases keep their error context (they did not succeed).
- **Progress reports.** Only while IN_PROGRESS, f a finite number in [0, 1]; f may go down (a
  worker may restart a sub-step). A report equal to the phase's current in-phase progress is a
  no-op: the flow comes back unchanged with no entries and no new version. Every state change
  resets the in-phase progress to 0.
- **Timestamps.** `state_entered_at` is set on every state change; `started_at` when the phase
  last entered IN_PROGRESS; `completed_at` while COMPLETED only.
- **Skip** (DESIGN.md section 9). `SkipPhase`, or `TransitionPhase(..., SKIPPED)`, moves an
  *optional* phase to SKIPPED from NOT_STARTED, ROLLED_BACK, FAILED or RETRY_NEEDED; for a phase
  that is not optional it is INVALID_PHASE_TRANSITION, and `valid_transitions` of a
  non-optional phase never list SKIPPED. A skip is ordered like a start (every dependency done,
  flow not PAUSED): skipping decides the phase's outcome, so it waits for its inputs like any
  outcome would, and a rollback upstream can always undo it. The skip clears the phase error (the
  failure is settled; history keeps it). A dependency is satisfied by COMPLETED or SKIPPED
  (`DONE_STATES`), so a join starts once each of its dependencies completed or was skipped.
- **Pause.** Only starts are refused on a PAUSED flow: outcomes, progress, rollbacks and the
  FAILED → RETRY_NEEDED retry step still apply. While paused, `status_before_pause` follows the
  phases (it holds the status the flow would have if it were not paused), so resume goes straight
  to the derived status. Cancel clears it.
- **Flow commands** are checked against the flow table: pause/cancel of a terminal flow, pause
  of a paused flow and resume of a flow that is not paused are INVALID_FLOW_TRANSITION.
- **Approvals** (DESIGN.md section 10, docs/approvals.md). `DecidePhase` works on a phase in
  WAITING_APPROVAL: APPROVE → COMPLETED, REQUEST_CHANGES → IN_PROGRESS (a start: ordered and
  refused while PAUSED), REJECT → FAILED with the non-retryable APPROVAL_REJECTED. The checks:
  unknown phase → terminal flow → the policy's scope / claim (PERMISSION_DENIED: the decider's
  identity is checked before anything about the flow's state is revealed) → phase state
  (INVALID_PHASE_TRANSITION). The decision (approver = ``ctx.user_id``, comment, time) is kept
  on the phase and in the DECISION entry. A phase whose policy has `required` cannot complete
  without a decision: a `TransitionPhase` to COMPLETED from IN_PROGRESS or WAITING_VALIDATION
  lands in WAITING_APPROVAL instead (the entry records the target asked for in its metadata),
  and a `TransitionPhase` out of WAITING_APPROVAL is refused with APPROVAL_REQUIRED.
- **Alerts** (`flowstate.core.alerts`). `RaiseAlert` appends an ALERT entry and adds the alert
  to `Flow.alerts` without changing any phase or `updated_at` (an alert is not activity, so
  it does not reset the stuck clock); it is a no-op when an alert of the same kind (and
  phase) is already in force, which makes each breach raise once. Every other change prunes
  the alerts that are over (`alerts_in_force`). `ExpireApproval` is the approval timeout's
  REJECT, as `system:timer`; void (a no-op) when the phase is no longer the same wait.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, assert_never

from flowstate.core.alerts import alert_due_at, alerts_in_force, approval_wait_due
from flowstate.core.definitions import (
    ApprovalPolicy,
    ChildFlowSpec,
    FlowDefinition,
    ParentCancelPolicy,
    PhaseDefinition,
)
from flowstate.core.derivation import calculate_progress, determine_flow_status
from flowstate.core.errors import FlowStateError
from flowstate.core.model import (
    AlertKind,
    ApprovalDecision,
    ErrorCode,
    ExternalDependency,
    Flow,
    FlowAlert,
    FlowStatus,
    HistoryEntry,
    HistoryKind,
    Phase,
    PhaseApproval,
    PhaseError,
    PhaseState,
    Tenant,
)
from flowstate.core.retries import next_attempt_at
from flowstate.core.rules import (
    DONE_STATES,
    ERROR_STATES,
    TERMINAL_STATUSES,
    RecoveryAction,
    flow_transition_allowed,
    phase_transition_allowed,
    valid_flow_targets,
    valid_phase_targets,
)

__all__ = [
    "FOLLOWING_STATES",
    "CancelChild",
    "CancelFlow",
    "Command",
    "Context",
    "DecidePhase",
    "Decision",
    "Effect",
    "ExpireApproval",
    "FollowChild",
    "LinkChild",
    "PauseFlow",
    "RaiseAlert",
    "ResumeFlow",
    "Retry",
    "Rollback",
    "SkipPhase",
    "StartChild",
    "TransitionPhase",
    "UpdatePhaseProgress",
    "apply_command",
    "breaches",
    "calculate_progress",
    "check_heartbeat",
    "check_phase_order",
    "create_flow",
    "determine_flow_status",
    "may_decide",
    "phase_targets",
    "validate_command",
    "validate_flow_status_transition",
    "validate_phase_transition",
]


@dataclass(frozen=True, slots=True)
class Context:
    """Who asks, and when: the only source of time and identity for the core."""

    now: datetime
    user_id: str = ""
    request_id: str = ""
    is_admin: bool = False
    external_states: Mapping[tuple[str, str], PhaseState] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """(flow id, phase) → state of the phases of other flows this flow's
    `external_dependencies` name, read by the use case; a missing one counts as NOT_STARTED."""
    grants: frozenset[str] = frozenset()
    """The scope names the caller's token carries (as written, unknown ones included)."""
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The caller's string claims (a list of strings keeps every string), for approval policies."""


@dataclass(frozen=True, slots=True)
class DecidePhase:
    """Decide on a phase waiting for approval (approver: ``ctx.user_id``)."""

    phase: str
    decision: ApprovalDecision
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ExpireApproval:
    """The approval timeout's REJECT: fail the phase if it still waits since `waiting_since`."""

    phase: str
    waiting_since: datetime


@dataclass(frozen=True, slots=True)
class RaiseAlert:
    """Raise `alert` on the flow, unless an alert of its kind (and phase) is in force."""

    alert: FlowAlert


@dataclass(frozen=True, slots=True)
class TransitionPhase:
    """Move one phase to `target_state`; FAILED and RETRY_NEEDED carry the phase `error`."""

    phase: str
    target_state: PhaseState
    reason: str = ""
    error: PhaseError | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdatePhaseProgress:
    """Report in-phase progress f ∈ [0, 1] of a running (IN_PROGRESS) phase."""

    phase: str
    progress: float
    reason: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rollback:
    """Roll a COMPLETED or FAILED phase back, cascading to active downstream phases."""

    phase: str
    cascade: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry a phase: FAILED → RETRY_NEEDED, RETRY_NEEDED → IN_PROGRESS (one attempt)."""

    phase: str
    force: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SkipPhase:
    """Skip an optional phase: → SKIPPED, which satisfies its dependents and counts as done."""

    phase: str
    reason: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PauseFlow:
    """Pause the flow: no phase may start until it is resumed."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class ResumeFlow:
    """Resume a paused flow to its derived status."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancelFlow:
    """Cancel the flow for good."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class FollowChild:
    """A child flow changed: its parent's `phase` follows it (a system command).

    `child_status` / `child_progress` are the child's after its change; `child_error` the
    error its failure carries (`flowstate.core.children.child_failure`). Nothing happens when
    the phase no longer follows `child_flow_id` or the parent is terminal.
    """

    phase: str
    child_flow_id: str
    child_status: FlowStatus
    child_progress: float = 0.0
    child_error: PhaseError | None = None


@dataclass(frozen=True, slots=True)
class LinkChild:
    """Start the child_flow `phase` following an existing flow instead of a new one
    (`LinkChildFlow`); the use case has checked the child may be linked."""

    phase: str
    child: FollowChild
    reason: str = ""


_EMPTY: Mapping[str, Any] = MappingProxyType({})

Command = (
    TransitionPhase
    | UpdatePhaseProgress
    | Rollback
    | Retry
    | SkipPhase
    | PauseFlow
    | ResumeFlow
    | CancelFlow
    | DecidePhase
    | ExpireApproval
    | RaiseAlert
    | FollowChild
    | LinkChild
)
"""Every command `apply_command` accepts."""


@dataclass(frozen=True, slots=True)
class StartChild:
    """Effect: create child flow `child_flow_id` of `spec` for `phase`, in the same transaction."""

    phase: str
    child_flow_id: str
    spec: ChildFlowSpec


@dataclass(frozen=True, slots=True)
class CancelChild:
    """Effect: cancel child flow `child_flow_id` (of `phase`) when it is not terminal yet, in
    the same transaction."""

    phase: str
    child_flow_id: str
    reason: str


Effect = StartChild | CancelChild
"""What a decision asks the use case to do to other flows (described, never performed here)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a command: the new flow, the history entries it appends, in order, and
    the effects on child flows the use case performs in the same transaction."""

    flow: Flow
    entries: tuple[HistoryEntry, ...]
    effects: tuple[Effect, ...] = ()


def create_flow(
    flow_id: str,
    tenant: Tenant,
    definition: FlowDefinition,
    ctx: Context,
    *,
    display_name: str = "",
    labels: Mapping[str, str] = _EMPTY,
    deadline: datetime | None = None,
) -> Decision:
    """A new flow (version 1, INITIALIZED, every phase NOT_STARTED) and its CREATED entry.

    `deadline` (None: creation plus the definition's `deadline_seconds`, if any) is when the
    flow should be finished.
    """
    if not flow_id:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST, "flow_id must not be empty", field="flow_id"
        )
    flow = Flow(
        flow_id=flow_id,
        tenant=tenant,
        definition_name=definition.name,
        definition_version=definition.version,
        phases=tuple(Phase(name=name) for name in definition.phase_names),
        status=FlowStatus.INITIALIZED,
        progress=0.0,
        version=1,
        created_at=ctx.now,
        updated_at=ctx.now,
        display_name=display_name,
        labels=dict(labels),
    )
    if deadline is None and definition.deadline_seconds is not None:
        deadline = ctx.now + timedelta(seconds=definition.deadline_seconds)
    flow = replace(flow, deadline=deadline)
    flow = replace(flow, alert_due_at=alert_due_at(flow, definition))
    entry = HistoryEntry(
        flow_version=1,
        kind=HistoryKind.CREATED,
        status_before=FlowStatus.INITIALIZED,
        status_after=FlowStatus.INITIALIZED,
        occurred_at=ctx.now,
        user_id=ctx.user_id,
        request_id=ctx.request_id,
        metadata={"definition": definition.name, "definition_version": definition.version},
        **_facts_after(flow),
    )
    return Decision(flow=flow, entries=(entry,))


def apply_command(
    flow: Flow, definition: FlowDefinition, command: Command, ctx: Context
) -> Decision:
    """Decide `command` on `flow`; raise FlowStateError when it is refused.

    Raises ValueError (a bug, not a refusal) when `definition` is not the flow's definition.
    """
    _check_definition(flow, definition)
    builder = _Builder(flow, definition, ctx)
    match command:
        case TransitionPhase():
            _transition_phase(builder, command)
        case UpdatePhaseProgress():
            _update_progress(builder, command)
        case Rollback():
            _rollback(builder, command.phase, command.cascade, command.reason, _EMPTY)
        case Retry():
            _retry(builder, command)
        case SkipPhase():
            _skip(builder, command.phase, command.reason, command.metadata)
        case PauseFlow():
            _pause(builder, command)
        case ResumeFlow():
            _resume(builder, command)
        case CancelFlow():
            _cancel(builder, command)
        case DecidePhase():
            _decide(builder, command)
        case ExpireApproval():
            _expire_approval(builder, command)
        case RaiseAlert():
            _raise_alert(builder, command.alert)
        case FollowChild():
            _follow_child(builder, command)
        case LinkChild():
            _link_child(builder, command)
        case _:
            assert_never(command)
    return builder.decision()


def validate_command(
    flow: Flow, definition: FlowDefinition, command: Command, ctx: Context
) -> FlowStateError | None:
    """Dry run of `apply_command`: the refusal it would raise, or None when it would apply."""
    try:
        apply_command(flow, definition, command, ctx)
    except FlowStateError as refusal:
        return refusal
    return None


def validate_flow_status_transition(
    current: FlowStatus, target: FlowStatus
) -> FlowStateError | None:
    """INVALID_FLOW_TRANSITION when the flow table does not allow `current` → `target`."""
    if flow_transition_allowed(current, target):
        return None
    targets = valid_flow_targets(current)
    why = " (it is terminal)" if current in TERMINAL_STATUSES else ""
    return FlowStateError(
        ErrorCode.INVALID_FLOW_TRANSITION,
        f"Cannot transition flow from '{current.value}' to '{target.value}'{why}",
        from_status=current,
        to_status=target,
        valid_transitions=[s for s in FlowStatus if s in targets],
    )


def validate_phase_transition(
    phase: str, current: PhaseState, target: PhaseState, *, optional: bool = True
) -> FlowStateError | None:
    """INVALID_PHASE_TRANSITION (with `valid_transitions`) when the phase table refuses the move.

    A phase that is not `optional` may never be skipped: SKIPPED is neither allowed nor listed.
    """
    if phase_transition_allowed(current, target) and (optional or target is not PhaseState.SKIPPED):
        return None
    targets = phase_targets(current, optional=optional)
    why = " (it is not optional)" if target is PhaseState.SKIPPED and not optional else ""
    return FlowStateError(
        ErrorCode.INVALID_PHASE_TRANSITION,
        f"Cannot transition phase '{phase}' from '{current.value}' to '{target.value}'{why}",
        phase=phase,
        from_state=current,
        to_state=target,
        valid_transitions=[s for s in PhaseState if s in targets],
    )


def phase_targets(current: PhaseState, *, optional: bool) -> frozenset[PhaseState]:
    """The legal targets of a phase in `current`; SKIPPED only when the phase is optional."""
    targets = valid_phase_targets(current)
    return targets if optional else targets - {PhaseState.SKIPPED}


def blocking_phases(
    definition: FlowDefinition, phase_states: Mapping[str, PhaseState], phase: str
) -> list[str]:
    """The dependencies of `phase` that are neither COMPLETED nor SKIPPED (missing ones count
    as NOT_STARTED)."""
    return [
        name
        for name in definition.dependencies(phase)
        if phase_states.get(name, PhaseState.NOT_STARTED) not in DONE_STATES
    ]


def attempts_remaining(definition: PhaseDefinition, phase: Phase) -> int:
    """Retries the phase has left under its definition's `max_retries`."""
    return max(definition.max_retries - phase.retry_count, 0)


def check_phase_order(
    definition: FlowDefinition,
    phase_states: Mapping[str, PhaseState],
    phase: str,
    target: PhaseState,
) -> FlowStateError | None:
    """PHASE_ORDER_VIOLATION naming the blocking phases when `phase` may not enter `target`.

    Entering IN_PROGRESS and SKIPPED is ordered: it needs every dependency COMPLETED or SKIPPED.
    Phases missing from `phase_states` count as NOT_STARTED.
    """
    if target not in (PhaseState.IN_PROGRESS, PhaseState.SKIPPED):
        return None
    blocking = blocking_phases(definition, phase_states, phase)
    if not blocking:
        return None
    verb = "start" if target is PhaseState.IN_PROGRESS else "be skipped"
    return FlowStateError(
        ErrorCode.PHASE_ORDER_VIOLATION,
        f"Phase '{phase}' cannot {verb} before {', '.join(repr(b) for b in blocking)} completed",
        phase=phase,
        from_state=phase_states.get(phase, PhaseState.NOT_STARTED),
        to_state=target,
        blocking_phases=blocking,
    )


def blocking_external(
    flow: Flow, external_states: Mapping[tuple[str, str], PhaseState], phase: str
) -> list[ExternalDependency]:
    """The external dependencies of `phase` whose phase is not done (missing: NOT_STARTED)."""
    return [
        d
        for d in flow.external_dependencies
        if d.phase == phase
        and external_states.get((d.flow_id, d.flow_phase), PhaseState.NOT_STARTED)
        not in DONE_STATES
    ]


def external_name(dependency: ExternalDependency) -> str:
    """How errors and recovery options name a phase of another flow: ``<flow id>/<phase>``."""
    return f"{dependency.flow_id}/{dependency.flow_phase}"


def check_external_order(
    flow: Flow,
    external_states: Mapping[tuple[str, str], PhaseState],
    phase: str,
    target: PhaseState,
) -> FlowStateError | None:
    """PHASE_ORDER_VIOLATION naming the phases of other flows `phase` still waits for."""
    if target not in (PhaseState.IN_PROGRESS, PhaseState.SKIPPED):
        return None
    blocking = blocking_external(flow, external_states, phase)
    if not blocking:
        return None
    names = [external_name(d) for d in blocking]
    verb = "start" if target is PhaseState.IN_PROGRESS else "be skipped"
    return FlowStateError(
        ErrorCode.PHASE_ORDER_VIOLATION,
        f"Phase '{phase}' cannot {verb} before phase(s) of other flows completed: "
        + ", ".join(repr(n) for n in names),
        phase=phase,
        from_state=flow.phase(phase).state if phase in flow.phase_states else None,
        to_state=target,
        blocking_phases=names,
        blocking_external=[{"flow_id": d.flow_id, "phase": d.flow_phase} for d in blocking],
    )


class _Builder:
    """Accumulates the steps of one decision: each step is a new flow value plus its entry."""

    def __init__(self, flow: Flow, definition: FlowDefinition, ctx: Context) -> None:
        self.flow = flow
        self.definition = definition
        self.ctx = ctx
        self.entries: list[HistoryEntry] = []
        self.effects: list[Effect] = []

    def change_phase(
        self,
        new_phase: Phase,
        *,
        kind: HistoryKind,
        reason: str,
        metadata: Mapping[str, Any] = _EMPTY,
        cause: str = "",
        phase_progress: float | None = None,
        approval: PhaseApproval | None = None,
    ) -> None:
        """Replace one phase, re-derive status and progress, and record the step."""
        old_phase = self.flow.phase(new_phase.name)
        new_phase = self._schedule_retry(old_phase, new_phase)
        phases = tuple(new_phase if p.name == new_phase.name else p for p in self.flow.phases)
        status, before_pause = self._derive_status(phases)
        new_flow = replace(
            self.flow,
            phases=phases,
            status=status,
            status_before_pause=before_pause,
            progress=calculate_progress(self.definition, phases),
        )
        self._record(
            new_flow,
            kind=kind,
            reason=reason,
            metadata=metadata,
            phase=new_phase.name,
            from_state=old_phase.state,
            to_state=new_phase.state,
            error=new_phase.error,
            time_in_state_seconds=_seconds_between(old_phase.state_entered_at, self.ctx.now),
            cause=cause,
            phase_progress=phase_progress,
            next_attempt_at=(
                new_phase.next_attempt_at if new_phase.state is PhaseState.FAILED else None
            ),
            approval=approval,
        )

    def _schedule_retry(self, old: Phase, new: Phase) -> Phase:
        """Stamp or clear `next_attempt_at` (the automatic retry, `flowstate.core.timers`)."""
        if new.state is PhaseState.FAILED and old.state is not PhaseState.FAILED:
            due = next_attempt_at(self.definition.phase(new.name), new, self.ctx.now)
            return replace(new, next_attempt_at=due)
        if new.state is old.state or (
            old.state is PhaseState.FAILED and new.state is PhaseState.RETRY_NEEDED
        ):
            due = old.next_attempt_at
        else:
            due = None
        # (A copy only when it changes: most phases have no automatic retry scheduled.)
        return new if new.next_attempt_at == due else replace(new, next_attempt_at=due)

    def raise_alert(self, alert: FlowAlert) -> None:
        """Add `alert` to the flow's alerts in force and record it (nothing else changes)."""
        new_flow = replace(self.flow, alerts=(*self.flow.alerts, alert))
        self._record(new_flow, kind=HistoryKind.ALERT, reason=alert.message, alert=alert)

    def change_status(
        self, status: FlowStatus, before_pause: FlowStatus | None, kind: HistoryKind, reason: str
    ) -> None:
        """Change the flow status directly (pause, resume, cancel) and record the step."""
        new_flow = replace(self.flow, status=status, status_before_pause=before_pause)
        self._record(new_flow, kind=kind, reason=reason)

    def decision(self) -> Decision:
        """The flow after every step, and the steps' entries."""
        flow = self.flow
        if self.entries:
            due = alert_due_at(flow, self.definition)
            if due != flow.alert_due_at:
                flow = replace(flow, alert_due_at=due)
        return Decision(flow=flow, entries=tuple(self.entries), effects=tuple(self.effects))

    def cancel_child(self, phase: Phase, reason: str) -> None:
        """Ask for the phase's child to be cancelled, when it has one (a no-op on a terminal
        child)."""
        if phase.child_flow_id is not None:
            self.effects.append(CancelChild(phase.name, phase.child_flow_id, reason))

    def _derive_status(self, phases: tuple[Phase, ...]) -> tuple[FlowStatus, FlowStatus | None]:
        if self.flow.status is FlowStatus.PAUSED:
            # The flow stays PAUSED; what it resumes to follows the phases meanwhile.
            resume_to = self.flow.status_before_pause or FlowStatus.INITIALIZED
            return FlowStatus.PAUSED, determine_flow_status(self.definition, phases, resume_to)
        return determine_flow_status(self.definition, phases, self.flow.status), None

    def _record(self, new_flow: Flow, *, kind: HistoryKind, reason: str, **fields: Any) -> None:
        version = self.flow.version + 1
        if kind is HistoryKind.ALERT:
            new_flow = replace(new_flow, version=version)
        else:
            # The alerts in force depend on status, phases and alerts, not on version and time.
            alerts = alerts_in_force(new_flow, self.definition)
            new_flow = replace(new_flow, version=version, updated_at=self.ctx.now, alerts=alerts)
        entry = HistoryEntry(
            flow_version=version,
            kind=kind,
            status_before=self.flow.status,
            status_after=new_flow.status,
            occurred_at=self.ctx.now,
            reason=reason,
            user_id=self.ctx.user_id,
            request_id=self.ctx.request_id,
            progress_after=new_flow.progress,
            **_facts_after(new_flow),
            **fields,
        )
        self.flow = new_flow
        self.entries.append(entry)


def _facts_after(flow: Flow) -> dict[str, Any]:
    """An entry's record of the flow it leaves: every phase's state and the open errors."""
    return {
        "phase_states_after": {p.name: p.state for p in flow.phases},
        "error_codes_after": frozenset(p.error.error_code for p in flow.phases if p.error),
    }


def _check_definition(flow: Flow, definition: FlowDefinition) -> None:
    same = (
        flow.definition_name == definition.name
        and flow.definition_version == definition.version
        and tuple(p.name for p in flow.phases) == definition.phase_names
    )
    if not same:
        raise ValueError(
            f"flow {flow.flow_id!r} follows {flow.definition_name!r} v{flow.definition_version}, "
            f"not {definition.name!r} v{definition.version}"
        )


def _seconds_between(start: datetime | None, end: datetime) -> float | None:
    if start is None:
        return None
    try:
        return (end - start).total_seconds()
    except TypeError:  # naive vs aware datetimes: unknown rather than a crash
        return None


def _moved(phase: Phase, target: PhaseState, now: datetime, error: PhaseError | None) -> Phase:
    """`phase` after a state change at `now`, carrying `error` (cleared on COMPLETED)."""
    return replace(
        phase,
        state=target,
        progress=0.0,
        state_entered_at=now,
        started_at=now if target is PhaseState.IN_PROGRESS else phase.started_at,
        completed_at=now if target is PhaseState.COMPLETED else None,
        error=None if target is PhaseState.COMPLETED else error,
    )


def _as_state(value: PhaseState | str) -> PhaseState:
    """The state itself: a plain string would slip past the identity checks below."""
    try:
        return PhaseState(value)
    except ValueError:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"Unknown phase state {value!r}",
            field="target_state",
            valid_states=list(PhaseState),
        ) from None


def _counted_attempt(phase: Phase, now: datetime) -> Phase:
    return replace(phase, retry_count=phase.retry_count + 1, last_retry_at=now)


def _is_retry_step(current: PhaseState, target: PhaseState) -> bool:
    return (current, target) in {
        (PhaseState.FAILED, PhaseState.RETRY_NEEDED),
        (PhaseState.RETRY_NEEDED, PhaseState.IN_PROGRESS),
    }


# --- checks (each raises the refusal) -----------------------------------------------------


def _ensure_not_terminal(flow: Flow, phase: str) -> None:
    if flow.status in TERMINAL_STATUSES:
        raise FlowStateError(
            ErrorCode.FLOW_TERMINAL,
            f"Flow is {flow.status.value}: phase '{phase}' can no longer change",
            phase=phase,
            flow_status=flow.status,
        )


def _ensure_in_table(phase: Phase, target: PhaseState, optional: bool) -> None:
    refusal = validate_phase_transition(phase.name, phase.state, target, optional=optional)
    if refusal is not None:
        raise refusal


def _ensure_can_start(
    builder: _Builder, phase: Phase, target: PhaseState = PhaseState.IN_PROGRESS
) -> None:
    """Entering IN_PROGRESS (or SKIPPED): every dependency done, and the flow not PAUSED."""
    flow = builder.flow
    refusal = check_phase_order(builder.definition, flow.phase_states, phase.name, target)
    if refusal is None:
        refusal = check_external_order(flow, builder.ctx.external_states, phase.name, target)
    if refusal is not None:
        raise refusal
    if flow.status is FlowStatus.PAUSED:
        verb = "start" if target is PhaseState.IN_PROGRESS else "be skipped"
        raise FlowStateError(
            ErrorCode.FLOW_PAUSED,
            f"Flow is paused: phase '{phase.name}' cannot {verb} until it is resumed",
            phase=phase.name,
            from_state=phase.state,
            to_state=target,
            recovery=[RecoveryAction.RESUME],
        )


def _ensure_retry_allowed(
    definition: PhaseDefinition, phase: Phase, force: bool, ctx: Context
) -> bool:
    """Apply the retry gate; True when an admin force lifted a non-retryable error."""
    remaining = attempts_remaining(definition, phase)
    if remaining == 0:
        raise FlowStateError(
            ErrorCode.MAX_RETRIES_EXCEEDED,
            f"Phase '{phase.name}' has used all {definition.max_retries} retries",
            phase=phase.name,
            retry_count=phase.retry_count,
            max_retries=definition.max_retries,
            attempts_remaining=0,
            recovery=_recovery_without_retry(phase.state, can_force=False),
        )
    if phase.error is None or phase.error.retryable:
        return False
    if force and ctx.is_admin:
        return True
    needs = "admin force" if not force else "an admin (force was asked by a non-admin)"
    raise FlowStateError(
        ErrorCode.RETRY_NOT_ALLOWED,
        f"Phase '{phase.name}' failed with non-retryable {phase.error.error_code.value}; "
        f"retrying it needs {needs}",
        phase=phase.name,
        error_code=phase.error.error_code,
        attempts_remaining=remaining,
        recovery=_recovery_without_retry(phase.state, can_force=True),
    )


def _recovery_without_retry(state: PhaseState, *, can_force: bool) -> list[RecoveryAction]:
    """What is left for a phase whose retry was refused (see `flowstate.core.recovery`)."""
    forced = [RecoveryAction.FORCE_RETRY] if can_force else []
    if state is PhaseState.RETRY_NEEDED:
        return [*forced, RecoveryAction.ABANDON, RecoveryAction.CANCEL]
    return [*forced, RecoveryAction.ROLLBACK, RecoveryAction.CANCEL]


def _failure_error(
    phase: Phase, target: PhaseState, reported: PhaseError | None
) -> PhaseError | None:
    """The error the phase carries after moving to `target`; MALFORMED_REQUEST when wrong."""
    if target not in ERROR_STATES:
        if reported is not None:
            raise FlowStateError(
                ErrorCode.MALFORMED_REQUEST,
                f"An error may only be reported with a transition to FAILED or RETRY_NEEDED, "
                f"not to '{target.value}'",
                field="error",
                phase=phase.name,
                to_state=target,
            )
        return phase.error
    if reported is None and phase.state not in ERROR_STATES:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"A transition of phase '{phase.name}' to '{target.value}' must report the error",
            field="error",
            phase=phase.name,
            to_state=target,
        )
    return reported or phase.error


# --- commands ---------------------------------------------------------------------------------


def _transition_phase(builder: _Builder, command: TransitionPhase) -> None:
    definition = builder.definition.phase(command.phase)
    _ensure_not_terminal(builder.flow, command.phase)
    phase = builder.flow.phase(command.phase)
    target = _as_state(command.target_state)
    _ensure_in_table(phase, target, definition.optional)
    metadata = command.metadata
    if definition.approval is not None and definition.approval.required:
        if phase.state is PhaseState.WAITING_APPROVAL:
            raise FlowStateError(
                ErrorCode.APPROVAL_REQUIRED,
                f"Phase '{phase.name}' requires an approval decision: only DecidePhase "
                "(scope flows:approve) moves it out of waiting_approval",
                phase=phase.name,
                from_state=phase.state,
                to_state=target,
            )
        if target is PhaseState.COMPLETED:
            target = PhaseState.WAITING_APPROVAL
            metadata = {**metadata, "requested_state": PhaseState.COMPLETED.value}
    if target is PhaseState.ROLLED_BACK:
        _rollback(builder, phase.name, True, command.reason, command.metadata, command.error)
        return
    if target is PhaseState.SKIPPED:
        _skip(builder, phase.name, command.reason, command.metadata, command.error)
        return
    if definition.child_flow is not None and not _caller_may_move_child_phase(phase, target):
        raise _follows_child(phase, target)
    error = _failure_error(phase, target, command.error)
    counted = _is_retry_step(phase.state, target)
    if counted:
        _ensure_retry_allowed(definition, phase, False, builder.ctx)
    if target is PhaseState.IN_PROGRESS:
        _ensure_can_start(builder, phase)
    new_phase = _moved(phase, target, builder.ctx.now, error)
    if counted and target is PhaseState.IN_PROGRESS:
        new_phase = _counted_attempt(new_phase, builder.ctx.now)
    if definition.child_flow is not None:
        if target is PhaseState.IN_PROGRESS:
            new_phase, metadata = _start_child(builder, new_phase, definition.child_flow, metadata)
        elif target is PhaseState.RETRY_NEEDED:  # the failed child is given up for a new one
            builder.cancel_child(phase, f"phase '{phase.name}' of the parent is retried")
    builder.change_phase(
        new_phase, kind=HistoryKind.TRANSITION, reason=command.reason, metadata=metadata
    )


def _ensure_running(phase: Phase, optional: bool, what: str) -> None:
    if phase.state is not PhaseState.IN_PROGRESS:
        raise FlowStateError(
            ErrorCode.INVALID_PHASE_TRANSITION,
            f"{what} can only be reported while phase '{phase.name}' is in_progress; "
            f"it is '{phase.state.value}'",
            phase=phase.name,
            from_state=phase.state,
            to_state=phase.state,
            valid_transitions=[
                s for s in PhaseState if s in phase_targets(phase.state, optional=optional)
            ],
        )


def check_heartbeat(flow: Flow, definition: FlowDefinition, phase: str) -> None:
    """Refuse a worker's heartbeat for a phase that is not running, as a progress report is
    refused: INVALID_PHASE, FLOW_TERMINAL, INVALID_PHASE_TRANSITION (with its state)."""
    phase_definition = definition.phase(phase)
    _ensure_not_terminal(flow, phase)
    _ensure_running(flow.phase(phase), phase_definition.optional, "Heartbeats")


def _update_progress(builder: _Builder, command: UpdatePhaseProgress) -> None:
    definition = builder.definition.phase(command.phase)
    _ensure_not_terminal(builder.flow, command.phase)
    phase = builder.flow.phase(command.phase)
    fraction = command.progress
    valid_number = isinstance(fraction, int | float) and not isinstance(fraction, bool)
    if not valid_number or not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"In-phase progress must be a number in [0, 1], got {fraction!r}",
            field="progress",
            phase=phase.name,
        )
    _ensure_running(phase, definition.optional, "Progress")
    if definition.child_flow is not None:
        raise _follows_child(phase, phase.state)
    if float(fraction) == phase.progress:
        return  # a repeated report changes nothing, so it records nothing
    builder.change_phase(
        replace(phase, progress=float(fraction)),
        kind=HistoryKind.PROGRESS,
        reason=command.reason,
        metadata=command.metadata,
        phase_progress=float(fraction),
    )


def _rollback(
    builder: _Builder,
    name: str,
    cascade: bool,
    reason: str,
    metadata: Mapping[str, Any],
    error: PhaseError | None = None,
) -> None:
    definition = builder.definition
    optional = definition.phase(name).optional
    _ensure_not_terminal(builder.flow, name)
    phase = builder.flow.phase(name)
    _ensure_in_table(phase, PhaseState.ROLLED_BACK, optional)
    if error is not None:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            "An error may only be reported with a transition to FAILED or RETRY_NEEDED",
            field="error",
            phase=name,
            to_state=PhaseState.ROLLED_BACK,
        )
    untouched = {PhaseState.NOT_STARTED, PhaseState.ROLLED_BACK}
    active = [
        d for d in definition.dependents(name) if builder.flow.phase(d).state not in untouched
    ]
    if active and not cascade:
        raise FlowStateError(
            ErrorCode.DEPENDENT_PHASES_ACTIVE,
            f"Cannot roll back phase '{name}' without cascade: downstream phase(s) "
            f"{', '.join(repr(d) for d in active)} have started",
            phase=name,
            dependent_phases=active,
            recovery=[RecoveryAction.ROLLBACK, RecoveryAction.CANCEL],
        )
    now = builder.ctx.now
    builder.cancel_child(phase, f"phase '{name}' of the parent was rolled back")
    builder.change_phase(
        _moved(phase, PhaseState.ROLLED_BACK, now, phase.error),
        kind=HistoryKind.ROLLBACK,
        reason=reason,
        metadata=metadata,
    )
    for dependent in active:
        current = builder.flow.phase(dependent)
        builder.cancel_child(current, f"phase '{dependent}' of the parent was rolled back")
        builder.change_phase(
            _moved(current, PhaseState.ROLLED_BACK, now, current.error),
            kind=HistoryKind.CASCADE_ROLLBACK,
            reason=reason,
            cause=name,
        )


def _retry(builder: _Builder, command: Retry) -> None:
    definition = builder.definition.phase(command.phase)
    _ensure_not_terminal(builder.flow, command.phase)
    phase = builder.flow.phase(command.phase)
    if phase.state is PhaseState.FAILED:
        target = PhaseState.RETRY_NEEDED
    elif phase.state is PhaseState.RETRY_NEEDED:
        target = PhaseState.IN_PROGRESS
    else:
        raise FlowStateError(
            ErrorCode.INVALID_PHASE_TRANSITION,
            f"Only a failed or retry_needed phase can be retried; phase '{phase.name}' is "
            f"'{phase.state.value}'",
            phase=phase.name,
            from_state=phase.state,
            valid_transitions=[
                s
                for s in PhaseState
                if s in phase_targets(phase.state, optional=definition.optional)
            ],
        )
    forced = _ensure_retry_allowed(definition, phase, command.force, builder.ctx)
    if target is PhaseState.IN_PROGRESS:
        _ensure_can_start(builder, phase)
    new_phase = _moved(phase, target, builder.ctx.now, phase.error)
    metadata: Mapping[str, Any] = {"forced": True} if forced else _EMPTY
    if target is PhaseState.IN_PROGRESS:
        new_phase = _counted_attempt(new_phase, builder.ctx.now)
    if definition.child_flow is not None:
        if target is PhaseState.IN_PROGRESS:
            new_phase, metadata = _start_child(builder, new_phase, definition.child_flow, metadata)
        else:
            builder.cancel_child(phase, f"phase '{phase.name}' of the parent is retried")
    builder.change_phase(
        new_phase, kind=HistoryKind.RETRY, reason=command.reason, metadata=metadata
    )


def _skip(
    builder: _Builder,
    name: str,
    reason: str,
    metadata: Mapping[str, Any],
    error: PhaseError | None = None,
) -> None:
    definition = builder.definition.phase(name)
    _ensure_not_terminal(builder.flow, name)
    phase = builder.flow.phase(name)
    _ensure_in_table(phase, PhaseState.SKIPPED, definition.optional)
    if error is not None:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            "An error may only be reported with a transition to FAILED or RETRY_NEEDED",
            field="error",
            phase=name,
            to_state=PhaseState.SKIPPED,
        )
    _ensure_can_start(builder, phase, PhaseState.SKIPPED)
    builder.cancel_child(phase, f"phase '{name}' of the parent was skipped")
    builder.change_phase(
        _moved(phase, PhaseState.SKIPPED, builder.ctx.now, None),
        kind=HistoryKind.SKIP,
        reason=reason,
        metadata=metadata,
    )


def _pause(builder: _Builder, command: PauseFlow) -> None:
    status = builder.flow.status
    refusal = validate_flow_status_transition(status, FlowStatus.PAUSED)
    if refusal is not None:
        raise refusal
    builder.change_status(FlowStatus.PAUSED, status, HistoryKind.PAUSE, command.reason)


def _resume(builder: _Builder, command: ResumeFlow) -> None:
    flow = builder.flow
    if flow.status is not FlowStatus.PAUSED:
        raise FlowStateError(
            ErrorCode.INVALID_FLOW_TRANSITION,
            f"Only a paused flow can be resumed; the flow is '{flow.status.value}'",
            from_status=flow.status,
            valid_transitions=[s for s in FlowStatus if s in valid_flow_targets(flow.status)],
        )
    resume_to = flow.status_before_pause or FlowStatus.INITIALIZED
    target = determine_flow_status(builder.definition, flow.phases, resume_to)
    refusal = validate_flow_status_transition(flow.status, target)
    if refusal is not None:
        raise refusal
    builder.change_status(target, None, HistoryKind.RESUME, command.reason)


def _cancel(builder: _Builder, command: CancelFlow) -> None:
    refusal = validate_flow_status_transition(builder.flow.status, FlowStatus.CANCELLED)
    if refusal is not None:
        raise refusal
    for definition in builder.definition.phases:
        phase = builder.flow.phase(definition.name)
        cascade = (
            definition.child_flow is not None
            and definition.child_flow.on_parent_cancel is ParentCancelPolicy.CASCADE
        )
        if cascade and phase.state in FOLLOWING_STATES:
            builder.cancel_child(phase, "the parent flow was cancelled")
    builder.change_status(FlowStatus.CANCELLED, None, HistoryKind.CANCEL, command.reason)


# --- approvals and alerts ------------------------------------------------------------------------

_DECISION_TARGETS: Mapping[ApprovalDecision, PhaseState] = MappingProxyType(
    {
        ApprovalDecision.APPROVE: PhaseState.COMPLETED,
        ApprovalDecision.REQUEST_CHANGES: PhaseState.IN_PROGRESS,
        ApprovalDecision.REJECT: PhaseState.FAILED,
    }
)


def may_decide(policy: ApprovalPolicy | None, ctx: Context) -> FlowStateError | None:
    """PERMISSION_DENIED when the caller does not satisfy the approval policy's scope or claim.

    (The flows:approve scope itself is the server's check, before any use case runs.)
    """
    if policy is None:
        return None
    if policy.scope and policy.scope not in ctx.grants:
        return FlowStateError(
            ErrorCode.PERMISSION_DENIED,
            f"deciding on this phase needs the {policy.scope} scope",
            required_scope=policy.scope,
        )
    if policy.claim and policy.claim_value not in ctx.claims.get(policy.claim, ()):
        return FlowStateError(
            ErrorCode.PERMISSION_DENIED,
            f"deciding on this phase needs the claim {policy.claim} = {policy.claim_value!r}",
            required_claim=policy.claim,
            required_claim_value=policy.claim_value,
        )
    return None


def _decide(builder: _Builder, command: DecidePhase) -> None:
    definition = builder.definition.phase(command.phase)
    _ensure_not_terminal(builder.flow, command.phase)
    refusal = may_decide(definition.approval, builder.ctx)
    if refusal is not None:
        raise refusal
    phase = builder.flow.phase(command.phase)
    try:
        decision = ApprovalDecision(command.decision)
    except ValueError:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"Unknown decision {command.decision!r}",
            field="decision",
            valid_decisions=list(ApprovalDecision),
        ) from None
    if phase.state is not PhaseState.WAITING_APPROVAL:
        raise FlowStateError(
            ErrorCode.INVALID_PHASE_TRANSITION,
            f"Only a phase waiting for approval can be decided on; phase '{phase.name}' is "
            f"'{phase.state.value}'",
            phase=phase.name,
            from_state=phase.state,
            to_state=_DECISION_TARGETS[decision],
            valid_transitions=[
                s
                for s in PhaseState
                if s in phase_targets(phase.state, optional=definition.optional)
            ],
        )
    approval = PhaseApproval(decision, builder.ctx.user_id, command.comment, builder.ctx.now)
    _apply_decision(builder, phase, approval, command.comment)


def _apply_decision(builder: _Builder, phase: Phase, approval: PhaseApproval, reason: str) -> None:
    target = _DECISION_TARGETS[approval.decision]
    error = phase.error
    if target is PhaseState.IN_PROGRESS:
        _ensure_can_start(builder, phase)
    elif target is PhaseState.FAILED:
        error = PhaseError(
            ErrorCode.APPROVAL_REJECTED,
            reason or f"rejected by {approval.approver or 'an approver'}",
            {"approver": approval.approver},
        )
    new_phase = replace(_moved(phase, target, builder.ctx.now, error), approval=approval)
    builder.change_phase(new_phase, kind=HistoryKind.DECISION, reason=reason, approval=approval)


def _expire_approval(builder: _Builder, command: ExpireApproval) -> None:
    flow = builder.flow
    phase = flow.phase(command.phase)
    if (
        flow.status in TERMINAL_STATUSES
        or phase.state is not PhaseState.WAITING_APPROVAL
        or phase.state_entered_at != command.waiting_since
    ):
        return  # void: the wait it was about is over
    timeout = builder.definition.phase(command.phase).approval
    seconds = timeout.timeout_seconds if timeout else None
    why = f"approval timed out after {seconds:g} s" if seconds else "approval timed out"
    approval = PhaseApproval(ApprovalDecision.REJECT, builder.ctx.user_id, why, builder.ctx.now)
    _apply_decision(builder, phase, approval, why)


def _raise_alert(builder: _Builder, alert: FlowAlert) -> None:
    flow = builder.flow
    if flow.status in TERMINAL_STATUSES:
        return
    same = any(a.kind is alert.kind and a.phase == alert.phase for a in flow.alerts)
    if same:
        return  # raised once per breach
    if (
        alert.kind is AlertKind.APPROVAL_TIMEOUT
        and approval_wait_due(flow, builder.definition, alert.phase) != alert.due_at
    ):
        return  # void: the wait it was about is over
    builder.raise_alert(replace(alert, status=flow.status, raised_at=builder.ctx.now))


def breaches(
    flow: Flow,
    definition: FlowDefinition,
    now: datetime,
    stuck_after: Mapping[FlowStatus, float],
) -> list[Command]:
    """What is due on `flow` at `now`: the deadline and stuck alerts the alert scan raises, as
    `system:timer` (approval timeouts are timers: `flowstate.core.timers`).

    `stuck_after` maps a status to its stuck threshold in seconds (a status missing, or 0:
    never stuck). Each command is a no-op when what it is about is handled already, so a
    command computed before the flow's lock was taken stays safe to apply.
    """
    if flow.status in TERMINAL_STATUSES:
        return []
    due: list[Command] = []
    has = {(a.kind, a.phase) for a in flow.alerts}
    deadline = flow.deadline
    if deadline is not None and deadline <= now and (AlertKind.DEADLINE_EXCEEDED, "") not in has:
        message = f"the flow's deadline {deadline.isoformat()} has passed"
        alert = FlowAlert(AlertKind.DEADLINE_EXCEEDED, deadline, now, flow.status, message=message)
        due.append(RaiseAlert(alert))
    threshold = stuck_after.get(flow.status, 0)
    if threshold > 0 and flow.updated_at is not None and (AlertKind.STUCK, "") not in has:
        stuck_at = flow.updated_at + timedelta(seconds=threshold)
        if stuck_at <= now:
            message = f"no change for {threshold:g} s in status {flow.status.value}"
            due.append(
                RaiseAlert(FlowAlert(AlertKind.STUCK, stuck_at, now, flow.status, message=message))
            )
    return due


# --- child flows (docs/child_flows.md) ----------------------------------------------------------

_CHILD_PHASE_CALLER_MOVES = frozenset(
    {(PhaseState.FAILED, PhaseState.RETRY_NEEDED), (PhaseState.RETRY_NEEDED, PhaseState.FAILED)}
)
"""Moves of a child_flow phase a caller may ask for besides a start (a new child), a rollback
and a skip: the retry step out of FAILED (the failed child is cancelled) and abandoning a retry
(no child is active then); every other move follows the child."""


def _caller_may_move_child_phase(phase: Phase, target: PhaseState) -> bool:
    return target is PhaseState.IN_PROGRESS or (phase.state, target) in _CHILD_PHASE_CALLER_MOVES


FOLLOWING_STATES = frozenset({PhaseState.IN_PROGRESS, PhaseState.FAILED})
"""States in which a child_flow phase follows its child (FAILED: the child may still recover)."""
CHILD_SYSTEM_USER = "system:child_flow"
"""The user of history entries a phase gets from its child when no caller is known."""


def child_flow_id_for(flow_id: str, phase: str, version: int) -> str:
    """The id of the child a start of `phase` at flow `version` creates: a UUIDv5, so a
    decision stays pure and a replayed or retried transaction makes the same child."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"flowstate:{flow_id}/{phase}/{version}"))


def _follows_child(phase: Phase, target: PhaseState) -> FlowStateError:
    return FlowStateError(
        ErrorCode.PHASE_FOLLOWS_CHILD_FLOW,
        f"Phase '{phase.name}' follows its child flow: its progress and outcome come from "
        "the child (report them there, or cancel the child to fail the phase)",
        phase=phase.name,
        from_state=phase.state,
        to_state=target,
        child_flow_id=phase.child_flow_id or "",
    )


def _start_child(
    builder: _Builder, phase: Phase, spec: ChildFlowSpec, metadata: Mapping[str, Any]
) -> tuple[Phase, Mapping[str, Any]]:
    """`phase` entering IN_PROGRESS with a new child, and the StartChild effect."""
    child_id = child_flow_id_for(builder.flow.flow_id, phase.name, builder.flow.version + 1)
    builder.effects.append(StartChild(phase.name, child_id, spec))
    return replace(phase, child_flow_id=child_id), {**metadata, "child_flow_id": child_id}


def _link_child(builder: _Builder, command: LinkChild) -> None:
    definition = builder.definition.phase(command.phase)
    _ensure_not_terminal(builder.flow, command.phase)
    phase = builder.flow.phase(command.phase)
    if definition.child_flow is None:
        raise FlowStateError(
            ErrorCode.CHILD_FLOW_NOT_LINKABLE,
            f"Phase '{phase.name}' is not of kind child_flow",
            phase=phase.name,
        )
    _ensure_in_table(phase, PhaseState.IN_PROGRESS, definition.optional)
    counted = _is_retry_step(phase.state, PhaseState.IN_PROGRESS)
    if counted:
        _ensure_retry_allowed(definition, phase, False, builder.ctx)
    _ensure_can_start(builder, phase)
    new_phase = _moved(phase, PhaseState.IN_PROGRESS, builder.ctx.now, phase.error)
    if counted:
        new_phase = _counted_attempt(new_phase, builder.ctx.now)
    child_id = command.child.child_flow_id
    builder.change_phase(
        replace(new_phase, child_flow_id=child_id),
        kind=HistoryKind.TRANSITION,
        reason=command.reason,
        metadata={"child_flow_id": child_id, "linked": True},
    )
    _follow_child(builder, replace(command.child, phase=phase.name))


def _follow_child(builder: _Builder, command: FollowChild) -> None:
    flow = builder.flow
    phase = flow.phase(command.phase)
    if (
        flow.status in TERMINAL_STATUSES
        or phase.child_flow_id != command.child_flow_id
        or phase.state not in FOLLOWING_STATES
    ):
        return  # the phase moved on (rollback, retry, skip) or the parent ended: not following
    status = FlowStatus(command.child_status)
    metadata = {"child_flow_id": command.child_flow_id, "child_status": status.value}
    reason = f"child flow {command.child_flow_id} is {status.value}"
    now = builder.ctx.now
    if status is FlowStatus.COMPLETED:
        target, error = PhaseState.COMPLETED, None
    elif status is FlowStatus.FAILED:
        target = PhaseState.FAILED
        error = command.child_error or PhaseError(
            ErrorCode.PHASE_EXECUTION_FAILED,
            f"Child flow {command.child_flow_id} failed",
            {"child_flow_id": command.child_flow_id},
        )
    elif status is FlowStatus.CANCELLED:
        target = PhaseState.FAILED
        error = PhaseError(
            ErrorCode.CHILD_FLOW_CANCELLED,
            f"Child flow {command.child_flow_id} was cancelled",
            {"child_flow_id": command.child_flow_id},
        )
    else:
        target, error = PhaseState.IN_PROGRESS, None
    if target is not phase.state:
        # FAILED -> IN_PROGRESS / COMPLETED (the child recovered) is outside the phase table,
        # like a cascade step: the phase only mirrors the child, which moved legally.
        builder.change_phase(
            _moved(phase, target, now, error if target is PhaseState.FAILED else phase.error),
            kind=HistoryKind.TRANSITION,
            reason=reason,
            metadata=metadata,
        )
        phase = builder.flow.phase(command.phase)
    if target is PhaseState.IN_PROGRESS:
        fraction = min(max(command.child_progress / 100.0, 0.0), 1.0)
        if fraction != phase.progress:
            builder.change_phase(
                replace(phase, progress=fraction),
                kind=HistoryKind.PROGRESS,
                reason=reason,
                metadata=metadata,
                phase_progress=fraction,
            )
