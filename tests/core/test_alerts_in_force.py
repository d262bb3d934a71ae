"""Which alerts stay in force after a change, and when an approval wait is due
(`flowstate.core.alerts`), written out case by case. Found missing by ``make mutate``
(docs/testing.md): the approval-timeout alert of a phase that stopped waiting, of a phase the
definition lost, and a policy with only half a timeout were not pinned.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from flowstate.core.alerts import alert_due_at, alerts_in_force, approval_wait_due
from flowstate.core.definitions import (
    ApprovalPolicy,
    ApprovalTimeoutAction,
    FlowDefinition,
    PhaseDefinition,
)
from flowstate.core.model import AlertKind, FlowAlert

from .support import T0, F, S, at, flow_with

ESCALATE = ApprovalPolicy(
    required=True, timeout_seconds=60.0, on_timeout=ApprovalTimeoutAction.ESCALATE
)


def gated(approval: ApprovalPolicy | None = ESCALATE) -> FlowDefinition:
    return FlowDefinition(
        name="gated",
        version=1,
        phases=(
            PhaseDefinition("review", (), 50, 0, None, approval=approval),
            PhaseDefinition("ship", ("review",), 50, 0, None),
        ),
    )


def alert(kind: AlertKind, phase: str = "", due: float = 60) -> FlowAlert:
    return FlowAlert(kind=kind, due_at=at(due), raised_at=at(due), status=F.ACTIVE, phase=phase)


def test_approval_wait_due_needs_a_wait_with_a_whole_timeout() -> None:
    waiting = flow_with({"review": S.WAITING_APPROVAL}, definition=gated())
    assert approval_wait_due(waiting, gated(), "review") == T0 + timedelta(seconds=60)
    assert approval_wait_due(waiting, gated(None), "review") is None
    no_action = replace(ESCALATE, on_timeout=None)
    assert approval_wait_due(waiting, gated(no_action), "review") is None
    no_timeout = replace(ESCALATE, timeout_seconds=None)
    assert approval_wait_due(waiting, gated(no_timeout), "review") is None
    unstamped = replace(
        waiting, phases=tuple(replace(p, state_entered_at=None) for p in waiting.phases)
    )
    assert approval_wait_due(unstamped, gated(), "review") is None
    running = flow_with({"review": S.IN_PROGRESS}, definition=gated())
    assert approval_wait_due(running, gated(), "review") is None


def test_alerts_in_force_after_a_change() -> None:
    deadline = alert(AlertKind.DEADLINE_EXCEEDED)
    stuck = alert(AlertKind.STUCK)
    timeout = alert(AlertKind.APPROVAL_TIMEOUT, "review")
    stale = alert(AlertKind.APPROVAL_TIMEOUT, "review", due=30)  # an earlier wait's
    lost = alert(AlertKind.APPROVAL_TIMEOUT, "gone")  # a phase the definition does not have
    waiting = flow_with({"review": S.WAITING_APPROVAL}, definition=gated())
    flow = replace(waiting, alerts=(deadline, stuck, timeout, stale, lost))
    assert alerts_in_force(flow, gated()) == (deadline, timeout)
    moved_on = replace(flow_with({"review": S.COMPLETED}, definition=gated()), alerts=flow.alerts)
    assert alerts_in_force(moved_on, gated()) == (deadline,)
    assert alerts_in_force(replace(flow, status=F.CANCELLED), gated()) == ()


def test_alert_due_at_is_the_deadline_until_a_deadline_alert_handles_it() -> None:
    flow = replace(flow_with({}, definition=gated()), deadline=at(3600))
    assert alert_due_at(flow, gated()) == at(3600)
    # Other alerts, even without a phase, do not handle the deadline.
    others = replace(flow, alerts=(alert(AlertKind.STUCK),))
    assert alert_due_at(others, gated()) == at(3600)
    handled = replace(flow, alerts=(alert(AlertKind.DEADLINE_EXCEEDED),))
    assert alert_due_at(handled, gated()) is None
    assert alert_due_at(replace(flow, status=F.COMPLETED), gated()) is None
