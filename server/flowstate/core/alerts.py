"""Breach predicates: when a flow's deadline, stuck threshold or approval timeout is due.

Pure functions over a flow and its definition (no clock: `now` comes in). Deadlines and stuck
flows are found by the server's alert scan (`flowstate.service.alerts`), which asks
`flowstate.core.commands.breaches` what is due for a flow it locked and applies the
`RaiseAlert` commands it gets in the same transaction, so each breach is raised once however
many replicas scan: the alert in force is the marker. Approval timeouts are timers of the timer
engine (`flowstate.core.timers`, kind ``approval_timeout``), planned from `approval_waits`.

- **Deadline**: a flow that is not terminal at `Flow.deadline` gets one DEADLINE_EXCEEDED alert;
  it stays in force until the flow ends.
- **Stuck**: a flow that is not terminal and has not changed (`updated_at`; alerts do not count
  as changes) for the threshold of its status gets one STUCK alert; its next change ends it,
  and a new quiet period may raise a new one.
- **Approval timeout**: a phase WAITING_APPROVAL longer than its policy's `approval_timeout` is
  rejected (`on_timeout: reject`, the `ExpireApproval` command) or gets one APPROVAL_TIMEOUT
  alert (`escalate`), which ends when the phase stops waiting.

`alert_due_at` is the flow's deadline while it is not handled yet: the store keeps it in an
indexed column, so the scan finds due flows without reading the others. Stuck breaches are
found on `updated_at` (the stuck-flows index) instead, because their thresholds are server
settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from flowstate.core.definitions import ApprovalTimeoutAction, FlowDefinition
from flowstate.core.model import AlertKind, Flow, FlowAlert, PhaseState
from flowstate.core.rules import TERMINAL_STATUSES

__all__ = ["alert_due_at", "alerts_in_force", "approval_wait_due", "approval_waits"]


def approval_wait_due(flow: Flow, definition: FlowDefinition, phase: str) -> datetime | None:
    """When phase `phase`'s current approval wait times out (None: not waiting, no timeout)."""
    current = flow.phase(phase)
    policy = definition.phase(phase).approval
    if (
        current.state is not PhaseState.WAITING_APPROVAL
        or current.state_entered_at is None
        or policy is None
        or policy.timeout_seconds is None
        or policy.on_timeout is None
    ):
        return None
    return current.state_entered_at + timedelta(seconds=policy.timeout_seconds)


def approval_waits(
    flow: Flow, definition: FlowDefinition
) -> Iterator[tuple[str, datetime, ApprovalTimeoutAction]]:
    """(phase, due time, action) of every approval wait with a timeout, in definition order."""
    for phase in flow.phases:
        due = approval_wait_due(flow, definition, phase.name)
        if due is not None:
            policy = definition.phase(phase.name).approval
            assert policy is not None
            assert policy.on_timeout is not None
            yield phase.name, due, policy.on_timeout


def _has_alert(flow: Flow, kind: AlertKind, phase: str = "") -> bool:
    return any(a.kind is kind and a.phase == phase for a in flow.alerts)


def alerts_in_force(flow: Flow, definition: FlowDefinition) -> tuple[FlowAlert, ...]:
    """The alerts of `flow` still in force after a change (not an alert) made it `flow`."""
    if flow.status in TERMINAL_STATUSES:
        return ()
    kept: list[FlowAlert] = []
    for alert in flow.alerts:
        if alert.kind is AlertKind.DEADLINE_EXCEEDED or (
            alert.kind is AlertKind.APPROVAL_TIMEOUT
            and definition.has_phase(alert.phase)
            and approval_wait_due(flow, definition, alert.phase) == alert.due_at
        ):
            kept.append(alert)
        # STUCK: any change ends the quiet period it was about.
    return tuple(kept)


def alert_due_at(flow: Flow, definition: FlowDefinition) -> datetime | None:
    """The deadline of `flow` while no DEADLINE_EXCEEDED alert handled it (None: nothing due)."""
    del definition  # the deadline is the flow's own (set from the definition at creation)
    if flow.status in TERMINAL_STATUSES or _has_alert(flow, AlertKind.DEADLINE_EXCEEDED):
        return None
    return flow.deadline
