"""The timers of a flow: which are due when, and what firing one does (pure; no clock).

The server keeps one timer row per (flow, phase, kind) in Postgres (docs/timers.md). This module
decides everything about them; the storage layer only stores and claims rows, and the service
runs a fired timer's command through the ordinary mutation path as `SYSTEM_TIMER_USER`.

- `plan_timers(flow, definition, entries, now)` is the set of timers a flow needs after a
  change (the decision's `entries`): each as a `PlannedTimer` with its kind, phase and due time.
  The store replaces the flow's rows with it in the same transaction (a row whose due time is
  later than planned keeps it: that is how a `Heartbeat` pushes a heartbeat timer back).
- `timer_command(flow, definition, kind, phase)` is the command a due timer runs, or None when
  the flow no longer needs it (the timer is then void).

Kinds (`TimerKind`) and their rules:

- ``phase_timeout``: the phase is IN_PROGRESS and has `policy.timeout`; due `timeout` after it
  entered IN_PROGRESS. Fires FAILED with AGENT_TIMEOUT (retryable).
- ``heartbeat_timeout``: the phase is IN_PROGRESS and has `policy.heartbeat_timeout`; due that
  long after the later of entering IN_PROGRESS and its last progress report in this change
  (Heartbeat RPCs move the stored row directly). Fires FAILED with AGENT_TIMEOUT.
- ``retry_backoff``: the phase is FAILED with `next_attempt_at` set (its `retry_policy`
  matched, `flowstate.core.retries`); due then. Fires the retry step FAILED → RETRY_NEEDED.
- ``approval_timeout``: the phase is WAITING_APPROVAL and its `approval` policy has an
  `approval_timeout` (docs/approvals.md); due that long after it entered WAITING_APPROVAL.
  Fires `ExpireApproval` (on_timeout ``reject``: FAILED with APPROVAL_REJECTED as
  `system:timer`) or `RaiseAlert` (``escalate``: one APPROVAL_TIMEOUT alert; not planned again
  while that alert is in force).

Adding a kind: a `TimerKind` value, a rule in `plan_timers`, a case in `timer_command`
(docs/timers.md walks through it).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from flowstate.core.alerts import approval_wait_due, approval_waits
from flowstate.core.commands import (
    Command,
    ExpireApproval,
    RaiseAlert,
    Retry,
    TransitionPhase,
)
from flowstate.core.definitions import ApprovalTimeoutAction, FlowDefinition
from flowstate.core.model import (
    AlertKind,
    ErrorCode,
    Flow,
    FlowAlert,
    HistoryEntry,
    HistoryKind,
    PhaseError,
    PhaseState,
)
from flowstate.core.rules import TERMINAL_STATUSES

__all__ = [
    "SYSTEM_TIMER_USER",
    "PlannedTimer",
    "TimerKind",
    "plan_timers",
    "timer_command",
]

SYSTEM_TIMER_USER = "system:timer"
"""The user id of every change a timer makes (history, streams)."""


class TimerKind(enum.StrEnum):
    """What a timer is for; the value is stored in the timer row."""

    PHASE_TIMEOUT = "phase_timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    RETRY_BACKOFF = "retry_backoff"
    APPROVAL_TIMEOUT = "approval_timeout"


@dataclass(frozen=True, slots=True)
class PlannedTimer:
    """A timer a flow needs: fire `kind` for `phase` at `due_at`."""

    kind: TimerKind
    phase: str
    due_at: datetime
    reset: bool = False
    """Whether this change pushes the timer back (a progress report resets the heartbeat); a
    stored timer keeps its due time otherwise: it fires once per due time."""


def _last_progress(entries: Iterable[HistoryEntry], phase: str) -> datetime | None:
    times = [e.occurred_at for e in entries if e.kind is HistoryKind.PROGRESS and e.phase == phase]
    return max(times) if times else None


def plan_timers(
    flow: Flow,
    definition: FlowDefinition,
    entries: Iterable[HistoryEntry] = (),
) -> tuple[PlannedTimer, ...]:
    """The timers `flow` needs after the change that appended `entries` (see module doc)."""
    if flow.status in TERMINAL_STATUSES or not definition.has_timers:
        return ()
    entries = tuple(entries)
    planned: list[PlannedTimer] = []
    for waiting, due, action in approval_waits(flow, definition):
        escalated = any(
            a.kind is AlertKind.APPROVAL_TIMEOUT and a.phase == waiting for a in flow.alerts
        )
        if action is ApprovalTimeoutAction.REJECT or not escalated:
            planned.append(PlannedTimer(TimerKind.APPROVAL_TIMEOUT, waiting, due))
    for phase in flow.phases:
        policy = definition.phase(phase.name).policy
        if policy.is_empty:
            continue
        if phase.state is PhaseState.IN_PROGRESS and phase.state_entered_at is not None:
            entered = phase.state_entered_at
            if policy.timeout is not None:
                due = entered + timedelta(seconds=policy.timeout)
                planned.append(PlannedTimer(TimerKind.PHASE_TIMEOUT, phase.name, due))
            if policy.heartbeat_timeout is not None:
                beat = _last_progress(entries, phase.name)
                base = entered if beat is None else max(entered, beat)
                due = base + timedelta(seconds=policy.heartbeat_timeout)
                planned.append(
                    PlannedTimer(TimerKind.HEARTBEAT_TIMEOUT, phase.name, due, beat is not None)
                )
        elif phase.state is PhaseState.FAILED and phase.next_attempt_at is not None:
            planned.append(PlannedTimer(TimerKind.RETRY_BACKOFF, phase.name, phase.next_attempt_at))
    return tuple(planned)


def timer_command(
    flow: Flow, definition: FlowDefinition, kind: TimerKind, phase: str
) -> Command | None:
    """The command a due timer of `kind` for `phase` runs, or None when it is void (the flow
    no longer needs that timer: `plan_timers` would not plan it)."""
    if not any(t.kind is kind and t.phase == phase for t in plan_timers(flow, definition)):
        return None
    policy = definition.phase(phase).policy
    match kind:
        case TimerKind.PHASE_TIMEOUT:
            assert policy.timeout is not None
            return _timed_out(phase, "timeout", policy.timeout, "in progress")
        case TimerKind.HEARTBEAT_TIMEOUT:
            assert policy.heartbeat_timeout is not None
            return _timed_out(
                phase, "heartbeat_timeout", policy.heartbeat_timeout, "without a heartbeat"
            )
        case TimerKind.RETRY_BACKOFF:
            return Retry(phase, reason="automatic retry (retry_policy): backoff passed")
        case TimerKind.APPROVAL_TIMEOUT:
            return _approval_timed_out(flow, definition, phase)
    raise ValueError(f"unknown timer kind {kind!r}")  # pragma: no cover - exhaustive above


def _approval_timed_out(flow: Flow, definition: FlowDefinition, phase: str) -> Command:
    """The approval timeout's command: reject the wait, or raise one APPROVAL_TIMEOUT alert."""
    approval = definition.phase(phase).approval
    due = approval_wait_due(flow, definition, phase)
    waiting_since = flow.phase(phase).state_entered_at
    assert approval is not None
    assert due is not None
    assert waiting_since is not None
    if approval.on_timeout is ApprovalTimeoutAction.REJECT:
        return ExpireApproval(phase, waiting_since)
    message = f"phase '{phase}' has waited for approval since {waiting_since.isoformat()}"
    # raised_at and status are the firing's (RaiseAlert stamps them).
    alert = FlowAlert(AlertKind.APPROVAL_TIMEOUT, due, due, flow.status, phase, message)
    return RaiseAlert(alert)


def _timed_out(phase: str, policy: str, seconds: float, what: str) -> TransitionPhase:
    message = f"Phase '{phase}' was {what} for more than {seconds:g} s ({policy})"
    return TransitionPhase(
        phase,
        PhaseState.FAILED,
        reason=f"{policy} passed",
        error=PhaseError(ErrorCode.AGENT_TIMEOUT, message, {"policy": policy, "seconds": seconds}),
    )
