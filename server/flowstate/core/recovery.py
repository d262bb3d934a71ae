"""Recovery options: what can be done about the current state of a flow, ranked.

`get_recovery_options(flow, definition)` lists, for a non-terminal flow:

- PAUSED flow → `resume` (to the derived status);
- FAILED phase → `retry` (→ RETRY_NEEDED), `force_retry` when its error is non-retryable
  (admin only), `rollback` (→ ROLLED_BACK, cascading);
- RETRY_NEEDED phase → `retry` (→ IN_PROGRESS, one attempt), `force_retry` when its error is
  non-retryable, `abandon` (→ FAILED, after which it can be rolled back);
- FAILED or RETRY_NEEDED phase that its definition marks optional → also `skip` (→ SKIPPED,
  which satisfies its dependents so the flow goes on without it);
- ROLLED_BACK phase → `restart` (→ IN_PROGRESS);
- COMPLETED or SKIPPED phase → `rollback` (→ ROLLED_BACK, cascading);
- always → `cancel`.

A terminal flow (COMPLETED, CANCELLED) has no options: nothing can change it.

Each option carries the exact `command` that performs it. Whether it is `allowed` is decided by
running that command through `apply_command` (a pure dry run), so an allowed option always
applies and a blocked one names the refusal it would get (`blocked_by`, `blocking_detail`):
retries exhausted, non-retryable error, dependencies not completed, flow paused... `force_retry`
is evaluated as an admin would send it; every other option as a plain caller.

Ranking, most useful first:

1. allowed options before blocked ones;
2. then by action: resume, retry, force_retry, restart, rollback of a FAILED phase, skip,
   abandon, rollback of a COMPLETED or SKIPPED phase, cancel — fix the failure in place first,
   undo work later, give up last;
3. then by phase: definition order, except rollbacks of COMPLETED or SKIPPED phases, which come
   latest phase first (undoing the most recent work loses the least).

Several failed branches (parallel phases that failed independently) each get their own options,
ranked by the rules above; since rank 2 comes before rank 3, every branch's retry is offered
before any rollback, and the branches' options of one kind follow definition order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from flowstate.core.commands import (
    CancelFlow,
    Command,
    Context,
    Decision,
    ResumeFlow,
    Retry,
    Rollback,
    SkipPhase,
    TransitionPhase,
    apply_command,
    attempts_remaining,
)
from flowstate.core.definitions import FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow, FlowStatus, Phase, PhaseState
from flowstate.core.rules import TERMINAL_STATUSES, RecoveryAction

__all__ = ["RecoveryAction", "RecoveryOption", "get_recovery_options"]

# Stands in for "now" in dry runs of a flow that carries no timestamp; only entries use it.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RecoveryOption:
    """One recovery step, ready to send as `command`; `allowed` says whether it would apply now.

    `target_state` is the state the phase moves to (None for flow-level options);
    `target_status` the flow status after the step (None when blocked, except for resume and
    cancel whose target is known). `attempts_remaining` is set for retries only.
    """

    action: RecoveryAction
    phase: str | None
    target_state: PhaseState | None
    target_status: FlowStatus | None
    reason: str
    allowed: bool
    blocked_by: ErrorCode | None
    blocking_detail: str
    attempts_remaining: int | None
    command: Command


@dataclass(frozen=True, slots=True)
class _Candidate:
    action: RecoveryAction
    phase: str | None
    target_state: PhaseState | None
    reason: str
    command: Command
    rank: int
    order: int
    attempts_remaining: int | None = None
    as_admin: bool = False
    target_status: FlowStatus | None = None


def get_recovery_options(flow: Flow, definition: FlowDefinition) -> list[RecoveryOption]:
    """Every recovery option for `flow`, most useful first (see the module docstring)."""
    if flow.status in TERMINAL_STATUSES:
        return []
    candidates: list[_Candidate] = []
    if flow.status is FlowStatus.PAUSED:
        candidates.append(_resume_candidate())
    for index, phase in enumerate(flow.phases):
        candidates.extend(_phase_candidates(flow, definition, phase, index))
    candidates.append(
        _Candidate(
            action=RecoveryAction.CANCEL,
            phase=None,
            target_state=None,
            reason="Cancel the flow for good",
            command=CancelFlow(reason="recovery: cancel"),
            rank=8,
            order=0,
            target_status=FlowStatus.CANCELLED,
        )
    )
    options = [(_evaluate(flow, definition, c), c) for c in candidates]
    options.sort(key=lambda pair: (not pair[0].allowed, pair[1].rank, pair[1].order))
    return [option for option, _ in options]


def _resume_candidate() -> _Candidate:
    return _Candidate(
        action=RecoveryAction.RESUME,
        phase=None,
        target_state=None,
        reason="The flow is paused; resume it so phases can start again",
        command=ResumeFlow(reason="recovery: resume"),
        rank=0,
        order=0,
    )


def _phase_candidates(
    flow: Flow, definition: FlowDefinition, phase: Phase, index: int
) -> list[_Candidate]:
    name = phase.name
    remaining = attempts_remaining(definition.phase(name), phase)
    state = phase.state
    skip = _skip_candidates(definition, phase, index)
    if state is PhaseState.FAILED:
        return [
            *_retry_candidates(phase, PhaseState.RETRY_NEEDED, remaining, index),
            *skip,
            _Candidate(
                action=RecoveryAction.ROLLBACK,
                phase=name,
                target_state=PhaseState.ROLLED_BACK,
                reason=f"Roll back failed phase '{name}'{_cascade_note(flow, definition, name)}"
                " so it can be restarted",
                command=Rollback(phase=name, reason="recovery: rollback"),
                rank=4,
                order=index,
            ),
        ]
    if state is PhaseState.RETRY_NEEDED:
        return [
            *_retry_candidates(phase, PhaseState.IN_PROGRESS, remaining, index),
            *skip,
            _Candidate(
                action=RecoveryAction.ABANDON,
                phase=name,
                target_state=PhaseState.FAILED,
                reason=f"Stop retrying phase '{name}': mark it failed so it can be rolled back",
                command=TransitionPhase(name, PhaseState.FAILED, reason="recovery: abandon"),
                rank=6,
                order=index,
            ),
        ]
    if state is PhaseState.ROLLED_BACK:
        return [
            _Candidate(
                action=RecoveryAction.RESTART,
                phase=name,
                target_state=PhaseState.IN_PROGRESS,
                reason=f"Phase '{name}' was rolled back; run it again",
                command=TransitionPhase(name, PhaseState.IN_PROGRESS, reason="recovery: restart"),
                rank=3,
                order=index,
            )
        ]
    if state in (PhaseState.COMPLETED, PhaseState.SKIPPED):
        what = "completed" if state is PhaseState.COMPLETED else "skipped"
        return [
            _Candidate(
                action=RecoveryAction.ROLLBACK,
                phase=name,
                target_state=PhaseState.ROLLED_BACK,
                reason=f"Roll back {what} phase '{name}'{_cascade_note(flow, definition, name)}"
                " to revise it",
                command=Rollback(phase=name, reason="recovery: rollback"),
                rank=7,
                order=-index,  # latest completed phase first
            )
        ]
    return []


def _skip_candidates(definition: FlowDefinition, phase: Phase, index: int) -> list[_Candidate]:
    if not definition.phase(phase.name).optional:
        return []
    return [
        _Candidate(
            action=RecoveryAction.SKIP,
            phase=phase.name,
            target_state=PhaseState.SKIPPED,
            reason=f"Phase '{phase.name}' is optional: skip it so the flow goes on without it",
            command=SkipPhase(phase=phase.name, reason="recovery: skip"),
            rank=5,
            order=index,
        )
    ]


def _retry_candidates(
    phase: Phase, target: PhaseState, remaining: int, index: int
) -> list[_Candidate]:
    name = phase.name
    what = (
        f"mark failed phase '{name}' for retry"
        if target is PhaseState.RETRY_NEEDED
        else f"restart phase '{name}' (counts one attempt)"
    )
    error = phase.error
    cause = f" after {error.error_code.value}: {error.message}" if error else ""
    retry = _Candidate(
        action=RecoveryAction.RETRY,
        phase=name,
        target_state=target,
        reason=f"Retry: {what}{cause}; {remaining} attempt(s) left",
        command=Retry(phase=name, reason="recovery: retry"),
        rank=1,
        order=index,
        attempts_remaining=remaining,
    )
    if error is None or error.retryable:
        return [retry]
    forced = _Candidate(
        action=RecoveryAction.FORCE_RETRY,
        phase=name,
        target_state=target,
        reason=f"Admin only: {what} despite non-retryable {error.error_code.value}; "
        f"{remaining} attempt(s) left",
        command=Retry(phase=name, force=True, reason="recovery: forced retry"),
        rank=2,
        order=index,
        attempts_remaining=remaining,
        as_admin=True,
    )
    return [retry, forced]


def _cascade_note(flow: Flow, definition: FlowDefinition, name: str) -> str:
    untouched = {PhaseState.NOT_STARTED, PhaseState.ROLLED_BACK}
    active = [d for d in definition.dependents(name) if flow.phase(d).state not in untouched]
    return f" (and downstream {', '.join(active)})" if active else ""


def _evaluate(flow: Flow, definition: FlowDefinition, candidate: _Candidate) -> RecoveryOption:
    """Dry-run the candidate's command to learn whether it is allowed, and where it leads."""
    now = flow.updated_at or flow.created_at or _EPOCH
    ctx = Context(now=now, is_admin=candidate.as_admin)
    outcome: Decision | FlowStateError
    try:
        outcome = apply_command(flow, definition, candidate.command, ctx)
    except FlowStateError as refusal:
        outcome = refusal
    if isinstance(outcome, Decision):
        return _option(candidate, outcome.flow.status, None, "")
    return _option(candidate, candidate.target_status, outcome.code, outcome.message)


def _option(
    candidate: _Candidate,
    target_status: FlowStatus | None,
    blocked_by: ErrorCode | None,
    blocking_detail: str,
) -> RecoveryOption:
    return RecoveryOption(
        action=candidate.action,
        phase=candidate.phase,
        target_state=candidate.target_state,
        target_status=target_status,
        reason=candidate.reason,
        allowed=blocked_by is None,
        blocked_by=blocked_by,
        blocking_detail=blocking_detail,
        attempts_remaining=candidate.attempts_remaining,
        command=candidate.command,
    )
