"""Approvals and alerts in the pure core: DecidePhase, the approval policy, breach predicates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flowstate.core.commands import (
    CancelFlow,
    Context,
    DecidePhase,
    ExpireApproval,
    RaiseAlert,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    breaches,
    create_flow,
)
from flowstate.core.definition_document import check_document, definition_from_document
from flowstate.core.definitions import (
    ApprovalPolicy,
    ApprovalTimeoutAction,
    FlowDefinition,
    PhaseDefinition,
    definition_from_dict,
    definition_to_dict,
)
from flowstate.core.errors import FlowStateError
from flowstate.core.model import (
    AlertKind,
    ApprovalDecision,
    ErrorCode,
    Flow,
    FlowAlert,
    FlowStatus,
    HistoryKind,
    PhaseApproval,
    PhaseError,
    PhaseState,
)
from flowstate.core.timers import (
    SYSTEM_TIMER_USER,
    PlannedTimer,
    TimerKind,
    plan_timers,
    timer_command,
)

from .support import RETRYABLE, TENANT, at

S = PhaseState


def _definition(policy: ApprovalPolicy | None, *, deadline: float | None = None) -> FlowDefinition:
    return FlowDefinition(
        name="review",
        version=1,
        phases=(
            PhaseDefinition("draft", (), 50, 1, None),
            PhaseDefinition("publish", ("draft",), 50, 1, None, approval=policy),
        ),
        deadline_seconds=deadline,
    )


def _ctx(seconds: float, user: str = "alice", **extra: Any) -> Context:
    return Context(now=at(seconds), user_id=user, **extra)


def _run(flow: Flow, definition: FlowDefinition, *steps: tuple[object, Context]) -> Flow:
    for command, ctx in steps:
        flow = apply_command(flow, definition, command, ctx).flow  # type: ignore[arg-type]
    return flow


def _waiting(definition: FlowDefinition) -> Flow:
    """A flow whose `publish` phase waits for approval (entered at T0 + 30 s)."""
    flow = create_flow("f-1", TENANT, definition, _ctx(0)).flow
    return _run(
        flow,
        definition,
        (TransitionPhase("draft", S.IN_PROGRESS), _ctx(10)),
        (TransitionPhase("draft", S.COMPLETED), _ctx(11)),
        (TransitionPhase("publish", S.IN_PROGRESS), _ctx(20)),
        (TransitionPhase("publish", S.WAITING_APPROVAL), _ctx(30)),
    )


@pytest.mark.parametrize(
    ("decision", "target"),
    [
        (ApprovalDecision.APPROVE, S.COMPLETED),
        (ApprovalDecision.REQUEST_CHANGES, S.IN_PROGRESS),
        (ApprovalDecision.REJECT, S.FAILED),
    ],
)
def test_a_decision_moves_the_phase_and_records_who_decided(
    decision: ApprovalDecision, target: PhaseState
) -> None:
    definition = _definition(None)
    flow = _waiting(definition)
    result = apply_command(
        flow, definition, DecidePhase("publish", decision, "looks fine"), _ctx(40, "bob")
    )
    phase = result.flow.phase("publish")
    assert phase.state is target
    assert phase.approval is not None
    assert (phase.approval.decision, phase.approval.approver, phase.approval.comment) == (
        decision,
        "bob",
        "looks fine",
    )
    (entry,) = result.entries
    assert entry.kind is HistoryKind.DECISION
    assert (entry.from_state, entry.to_state, entry.user_id) == (S.WAITING_APPROVAL, target, "bob")
    assert entry.approval == phase.approval
    if target is S.FAILED:
        assert phase.error is not None
        assert phase.error.error_code is ErrorCode.APPROVAL_REJECTED
        assert not phase.error.retryable


def test_deciding_a_phase_that_does_not_wait_is_refused() -> None:
    definition = _definition(None)
    flow = create_flow("f-1", TENANT, definition, _ctx(0)).flow
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, definition, DecidePhase("draft", ApprovalDecision.APPROVE), _ctx(1))
    assert refused.value.code is ErrorCode.INVALID_PHASE_TRANSITION


def test_required_approval_turns_a_completion_into_a_wait_and_only_a_decision_ends_it() -> None:
    definition = _definition(ApprovalPolicy(required=True))
    flow = _run(
        create_flow("f-1", TENANT, definition, _ctx(0)).flow,
        definition,
        (TransitionPhase("draft", S.IN_PROGRESS), _ctx(1)),
        (TransitionPhase("draft", S.COMPLETED), _ctx(2)),
        (TransitionPhase("publish", S.IN_PROGRESS), _ctx(3)),
    )
    result = apply_command(flow, definition, TransitionPhase("publish", S.COMPLETED), _ctx(4))
    assert result.flow.phase("publish").state is S.WAITING_APPROVAL
    assert result.entries[0].metadata["requested_state"] == "completed"
    for target in (S.COMPLETED, S.FAILED, S.IN_PROGRESS):
        with pytest.raises(FlowStateError) as refused:
            apply_command(result.flow, definition, TransitionPhase("publish", target), _ctx(5))
        assert refused.value.code is ErrorCode.APPROVAL_REQUIRED
        assert str(refused.value) == (
            "Phase 'publish' requires an approval decision: only DecidePhase "
            "(scope flows:approve) moves it out of waiting_approval"
        )


@pytest.mark.parametrize(
    ("policy", "extra", "allowed"),
    [
        (ApprovalPolicy(scope="approve:finance"), {}, False),
        (ApprovalPolicy(scope="approve:finance"), {"grants": frozenset({"approve:finance"})}, True),
        (ApprovalPolicy(claim="groups", claim_value="finance"), {}, False),
        (
            ApprovalPolicy(claim="groups", claim_value="finance"),
            {"claims": {"groups": ("sales",)}},
            False,
        ),
        (
            ApprovalPolicy(claim="groups", claim_value="finance"),
            {"claims": {"groups": ("sales", "finance")}},
            True,
        ),
    ],
)
def test_the_policy_names_who_may_decide(
    policy: ApprovalPolicy, extra: dict[str, Any], allowed: bool
) -> None:
    definition = _definition(policy)
    flow = _waiting(definition)
    command = DecidePhase("publish", ApprovalDecision.APPROVE)
    if allowed:
        assert apply_command(flow, definition, command, _ctx(40, **extra)).entries
        return
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, definition, command, _ctx(40, **extra))
    assert refused.value.code is ErrorCode.PERMISSION_DENIED


def test_a_deadline_breach_is_raised_once_and_stays_until_the_flow_ends() -> None:
    definition = _definition(None, deadline=60)
    flow = create_flow("f-1", TENANT, definition, _ctx(0)).flow
    assert flow.deadline == at(60)
    assert flow.alert_due_at == at(60)
    assert breaches(flow, definition, at(59), {}) == []
    (command,) = breaches(flow, definition, at(61), {})
    assert isinstance(command, RaiseAlert)
    assert (command.alert.due_at, command.alert.raised_at) == (at(60), at(61))
    decision = apply_command(flow, definition, command, _ctx(61, SYSTEM_TIMER_USER))
    (entry,) = decision.entries
    assert entry.kind is HistoryKind.ALERT
    assert entry.alert is not None
    assert entry.alert.kind is AlertKind.DEADLINE_EXCEEDED
    assert (entry.alert.due_at, entry.alert.raised_at) == (at(60), at(61))
    flow = decision.flow
    assert flow.updated_at == at(0)  # an alert is not activity
    assert flow.alert_due_at is None
    assert breaches(flow, definition, at(120), {}) == []
    # Applying the same alert again (a second replica) changes nothing.
    assert apply_command(flow, definition, command, _ctx(62, SYSTEM_TIMER_USER)).entries == ()
    flow = _run(flow, definition, (TransitionPhase("draft", S.IN_PROGRESS), _ctx(70)))
    assert [a.kind for a in flow.alerts] == [AlertKind.DEADLINE_EXCEEDED]


def test_a_stuck_alert_ends_with_the_next_change_and_may_be_raised_again() -> None:
    definition = _definition(None)
    flow = _run(
        create_flow("f-1", TENANT, definition, _ctx(0)).flow,
        definition,
        (TransitionPhase("draft", S.IN_PROGRESS), _ctx(1)),
    )
    thresholds = {FlowStatus.ACTIVE: 100.0}
    assert breaches(flow, definition, at(100), thresholds) == []
    (command,) = breaches(flow, definition, at(101), thresholds)
    flow = apply_command(flow, definition, command, _ctx(101, SYSTEM_TIMER_USER)).flow
    assert [a.kind for a in flow.alerts] == [AlertKind.STUCK]
    assert breaches(flow, definition, at(500), thresholds) == []
    flow = _run(flow, definition, (UpdatePhaseProgress("draft", 0.5), _ctx(600)))
    assert flow.alerts == ()
    assert len(breaches(flow, definition, at(701), thresholds)) == 1
    assert breaches(flow, definition, at(701), {FlowStatus.ACTIVE: 0.0}) == []


def test_an_approval_timeout_rejects_as_the_timer_or_escalates_once() -> None:
    """The approval timeout is a timer of the timer engine (kind approval_timeout)."""
    reject = _definition(
        ApprovalPolicy(timeout_seconds=60, on_timeout=ApprovalTimeoutAction.REJECT)
    )
    assert reject.has_timers
    flow = _waiting(reject)
    assert plan_timers(flow, reject) == (
        PlannedTimer(TimerKind.APPROVAL_TIMEOUT, "publish", at(90)),
    )
    assert flow.alert_due_at is None  # not the alert scan's: the timer's
    command = timer_command(flow, reject, TimerKind.APPROVAL_TIMEOUT, "publish")
    assert command == ExpireApproval("publish", at(30))
    result = apply_command(flow, reject, command, _ctx(90, SYSTEM_TIMER_USER))
    phase = result.flow.phase("publish")
    assert phase.state is S.FAILED
    assert phase.approval is not None
    assert (phase.approval.decision, phase.approval.approver) == (
        ApprovalDecision.REJECT,
        SYSTEM_TIMER_USER,
    )
    assert plan_timers(result.flow, reject) == ()
    assert timer_command(result.flow, reject, TimerKind.APPROVAL_TIMEOUT, "publish") is None
    # Void once the wait it was about is over.
    assert apply_command(result.flow, reject, command, _ctx(91, SYSTEM_TIMER_USER)).entries == ()

    escalate = _definition(
        ApprovalPolicy(timeout_seconds=60, on_timeout=ApprovalTimeoutAction.ESCALATE)
    )
    flow = _waiting(escalate)
    command = timer_command(flow, escalate, TimerKind.APPROVAL_TIMEOUT, "publish")
    assert isinstance(command, RaiseAlert)
    flow = apply_command(flow, escalate, command, _ctx(95, SYSTEM_TIMER_USER)).flow
    assert flow.phase("publish").state is S.WAITING_APPROVAL
    assert [(a.kind, a.phase, a.due_at, a.raised_at) for a in flow.alerts] == [
        (AlertKind.APPROVAL_TIMEOUT, "publish", at(90), at(95))
    ]
    assert plan_timers(flow, escalate) == ()  # escalated once: not planned again
    assert breaches(flow, escalate, at(200), {}) == []
    decided = apply_command(
        flow, escalate, DecidePhase("publish", ApprovalDecision.APPROVE), _ctx(300)
    ).flow
    assert decided.alerts == ()


def test_approval_policies_are_checked_with_paths_and_round_trip() -> None:
    document = {
        "name": "review",
        "deadline": "2h",
        "phases": [
            {"name": "draft", "weight": 50},
            {
                "name": "publish",
                "weight": 50,
                "depends_on": ["draft"],
                "policy": {
                    "approval": {
                        "required": True,
                        "claim": "groups",
                        "claim_value": "finance",
                        "approval_timeout": "3600s",
                        "on_timeout": "APPROVAL_TIMEOUT_ACTION_ESCALATE",
                    }
                },
            },
        ],
    }
    definition = definition_from_document(document)
    assert definition.deadline_seconds == 7200
    policy = definition.phase("publish").approval
    assert policy == ApprovalPolicy(
        required=True,
        claim="groups",
        claim_value="finance",
        timeout_seconds=3600,
        on_timeout=ApprovalTimeoutAction.ESCALATE,
    )
    assert definition_from_dict(definition_to_dict(definition)) == definition
    bad = {
        "name": "review",
        "deadline": "soon",
        "phases": [
            {
                "name": "publish",
                "weight": 100,
                "policy": {
                    "approval": {
                        "required": "yes",
                        "claim": "groups",
                        "approval_timeout": -5,
                        "on_timeout": "ignore",
                        "who": "me",
                    }
                },
            }
        ],
    }
    fields = {v.field for v in check_document(bad)}
    prefix = "phases[0].policy.approval"
    assert fields == {
        "deadline",
        f"{prefix}.who",
        f"{prefix}.required",
        f"{prefix}.claim_value",
        f"{prefix}.approval_timeout",
        f"{prefix}.on_timeout",
    }


def test_a_flow_deadline_given_at_creation_wins_over_the_definition() -> None:
    definition = _definition(None, deadline=60)
    flow = create_flow("f-1", TENANT, definition, _ctx(0), deadline=at(0) + timedelta(hours=1))
    assert flow.flow.deadline == at(3600)


def test_an_unknown_decision_is_a_malformed_request_naming_the_valid_ones() -> None:
    definition = _definition(None)
    flow = _waiting(definition)
    command = DecidePhase("publish", "maybe")  # type: ignore[arg-type]
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, definition, command, _ctx(40))
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.message == "Unknown decision 'maybe'"
    assert refused.value.details == {
        "field": "decision",
        "valid_decisions": ["approve", "reject", "request_changes"],
    }


def test_the_refusal_to_decide_on_a_phase_that_does_not_wait_is_whole() -> None:
    definition = _definition(None)
    flow = _run(
        create_flow("f-1", TENANT, definition, _ctx(0)).flow,
        definition,
        (TransitionPhase("draft", S.IN_PROGRESS), _ctx(1)),
    )
    command = DecidePhase("draft", ApprovalDecision.REJECT)
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, definition, command, _ctx(2))
    assert refused.value.message == (
        "Only a phase waiting for approval can be decided on; phase 'draft' is 'in_progress'"
    )
    assert refused.value.details == {
        "phase": "draft",
        "from_state": "in_progress",
        "to_state": "failed",
        "valid_transitions": [
            "waiting_validation",
            "waiting_approval",
            "completed",
            "failed",
            "retry_needed",
        ],
    }


@pytest.mark.parametrize(
    ("comment", "message"), [("not ready", "not ready"), ("", "rejected by bob")]
)
def test_a_rejection_carries_the_comment_as_its_reason_and_error(
    comment: str, message: str
) -> None:
    definition = _definition(None)
    flow = _waiting(definition)
    result = apply_command(
        flow, definition, DecidePhase("publish", ApprovalDecision.REJECT, comment), _ctx(40, "bob")
    )
    (entry,) = result.entries
    assert entry.reason == comment
    assert entry.error is not None
    assert (entry.error.error_code, entry.error.message, entry.error.details) == (
        ErrorCode.APPROVAL_REJECTED,
        message,
        {"approver": "bob"},
    )


def test_a_decision_is_stamped_with_its_time() -> None:
    definition = _definition(None)
    result = apply_command(
        _waiting(definition),
        definition,
        DecidePhase("publish", ApprovalDecision.APPROVE, "ok"),
        _ctx(40, "bob"),
    )
    assert result.flow.phase("publish").approval == PhaseApproval(
        ApprovalDecision.APPROVE, "bob", "ok", at(40)
    )


def test_deciding_on_an_ended_flow_names_the_phase() -> None:
    definition = _definition(None)
    cancelled = _run(_waiting(definition), definition, (CancelFlow(), _ctx(35)))
    with pytest.raises(FlowStateError) as refused:
        apply_command(
            cancelled, definition, DecidePhase("publish", ApprovalDecision.APPROVE), _ctx(40)
        )
    assert refused.value.code is ErrorCode.FLOW_TERMINAL
    assert refused.value.message == "Flow is cancelled: phase 'publish' can no longer change"
    assert refused.value.details == {"phase": "publish", "flow_status": "cancelled"}


def test_the_refusal_on_an_optional_phase_offers_the_skip() -> None:
    definition = FlowDefinition(
        name="review",
        version=1,
        phases=(
            PhaseDefinition("draft", (), 100, 1, None),
            PhaseDefinition(
                "publish", ("draft",), 0, 1, None, optional=True, approval=ApprovalPolicy()
            ),
        ),
    )
    flow = create_flow("f-1", TENANT, definition, _ctx(0)).flow
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, definition, DecidePhase("publish", ApprovalDecision.APPROVE), _ctx(1))
    assert refused.value.details["valid_transitions"] == ["in_progress", "skipped"]


# --- found missing by ``make mutate`` (docs/testing.md) --------------------------------------


@pytest.mark.parametrize(
    ("policy", "message", "details"),
    [
        (
            ApprovalPolicy(scope="approve:finance"),
            "deciding on this phase needs the approve:finance scope",
            {"required_scope": "approve:finance"},
        ),
        (
            ApprovalPolicy(claim="groups", claim_value="finance"),
            "deciding on this phase needs the claim groups = 'finance'",
            {"required_claim": "groups", "required_claim_value": "finance"},
        ),
    ],
)
def test_a_refusal_by_the_policy_names_what_the_caller_lacks(
    policy: ApprovalPolicy, message: str, details: dict[str, str]
) -> None:
    definition = _definition(policy)
    command = DecidePhase("publish", ApprovalDecision.APPROVE)
    with pytest.raises(FlowStateError) as refused:
        apply_command(_waiting(definition), definition, command, _ctx(40))
    assert refused.value.code is ErrorCode.PERMISSION_DENIED
    assert refused.value.message == message
    assert refused.value.details == details


def test_requested_changes_send_a_retried_phase_back_with_its_last_error() -> None:
    definition = _definition(None)
    flow = _run(
        _waiting(definition),
        definition,
        (TransitionPhase("publish", S.IN_PROGRESS), _ctx(31)),
        (TransitionPhase("publish", S.FAILED, error=RETRYABLE), _ctx(32)),
        (TransitionPhase("publish", S.RETRY_NEEDED), _ctx(33)),
        (TransitionPhase("publish", S.IN_PROGRESS), _ctx(34)),
        (TransitionPhase("publish", S.WAITING_APPROVAL), _ctx(35)),
    )
    decide = DecidePhase("publish", ApprovalDecision.REQUEST_CHANGES, "again")
    result = apply_command(flow, definition, decide, _ctx(40, "bob"))
    phase = result.flow.phase("publish")
    assert (phase.state, phase.error, phase.state_entered_at, phase.started_at) == (
        S.IN_PROGRESS,
        RETRYABLE,
        at(40),
        at(40),
    )
    (entry,) = result.entries
    assert (entry.error, entry.time_in_state_seconds) == (RETRYABLE, 5.0)


def test_a_rejection_without_comment_or_approver_names_an_approver() -> None:
    definition = _definition(None)
    command = DecidePhase("publish", ApprovalDecision.REJECT)
    result = apply_command(_waiting(definition), definition, command, _ctx(40, ""))
    phase = result.flow.phase("publish")
    assert phase.error == PhaseError(
        ErrorCode.APPROVAL_REJECTED, "rejected by an approver", {"approver": ""}
    )
    assert (phase.state, phase.state_entered_at) == (S.FAILED, at(40))


def _expire(definition: FlowDefinition, flow: Flow, since: float = 30) -> tuple[Any, ...]:
    command = ExpireApproval("publish", at(since))
    return apply_command(flow, definition, command, _ctx(90, SYSTEM_TIMER_USER)).entries


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        (
            ApprovalPolicy(timeout_seconds=60, on_timeout=ApprovalTimeoutAction.REJECT),
            "approval timed out after 60 s",
        ),
        # A wait the definition has no timeout for (entered by a plain transition).
        (None, "approval timed out"),
    ],
)
def test_an_expired_approval_is_a_rejection_by_the_timer_saying_why(
    policy: ApprovalPolicy | None, why: str
) -> None:
    definition = _definition(policy)
    (entry,) = _expire(definition, _waiting(definition))
    approval = PhaseApproval(ApprovalDecision.REJECT, SYSTEM_TIMER_USER, why, at(90))
    error = PhaseError(ErrorCode.APPROVAL_REJECTED, why, {"approver": SYSTEM_TIMER_USER})
    assert (entry.kind, entry.reason, entry.user_id) == (
        HistoryKind.DECISION,
        why,
        SYSTEM_TIMER_USER,
    )
    assert (entry.to_state, entry.approval, entry.error) == (S.FAILED, approval, error)


def test_an_expired_approval_of_another_wait_or_an_ended_flow_is_void() -> None:
    definition = _definition(
        ApprovalPolicy(timeout_seconds=60, on_timeout=ApprovalTimeoutAction.REJECT)
    )
    flow = _waiting(definition)
    assert _expire(definition, flow, since=29) == ()  # the phase waits, but since 30
    cancelled = _run(flow, definition, (CancelFlow(), _ctx(35)))
    assert cancelled.phase("publish").state is S.WAITING_APPROVAL
    assert _expire(definition, cancelled) == ()


def test_an_escalation_is_the_alert_of_the_wait_it_is_about() -> None:
    escalate = _definition(
        ApprovalPolicy(timeout_seconds=60, on_timeout=ApprovalTimeoutAction.ESCALATE)
    )
    flow = _waiting(escalate)
    message = "phase 'publish' has waited for approval since 2025-01-19T10:30:30+00:00"
    command = timer_command(flow, escalate, TimerKind.APPROVAL_TIMEOUT, "publish")
    assert command == RaiseAlert(
        FlowAlert(
            AlertKind.APPROVAL_TIMEOUT,
            at(90),
            at(90),
            FlowStatus.WAITING_APPROVAL,
            "publish",
            message,
        )
    )
    (entry,) = apply_command(flow, escalate, command, _ctx(95, SYSTEM_TIMER_USER)).entries
    assert (entry.kind, entry.reason) == (HistoryKind.ALERT, message)


PAIR = FlowDefinition(
    name="pair",
    version=1,
    phases=tuple(
        PhaseDefinition(
            name,
            (),
            50,
            1,
            None,
            approval=ApprovalPolicy(timeout_seconds=60, on_timeout=ApprovalTimeoutAction.ESCALATE),
        )
        for name in ("legal", "finance")
    ),
)


def test_an_escalated_wait_does_not_stop_the_timer_of_another() -> None:
    flow = _run(
        create_flow("f-1", TENANT, PAIR, _ctx(0)).flow,
        PAIR,
        (TransitionPhase("legal", S.IN_PROGRESS), _ctx(1)),
        (TransitionPhase("finance", S.IN_PROGRESS), _ctx(2)),
        (TransitionPhase("legal", S.WAITING_APPROVAL), _ctx(10)),
        (TransitionPhase("finance", S.WAITING_APPROVAL), _ctx(20)),
    )
    command = timer_command(flow, PAIR, TimerKind.APPROVAL_TIMEOUT, "legal")
    assert command is not None
    flow = apply_command(flow, PAIR, command, _ctx(70, SYSTEM_TIMER_USER)).flow
    assert plan_timers(flow, PAIR) == (PlannedTimer(TimerKind.APPROVAL_TIMEOUT, "finance", at(80)),)


def _deadline_alert(status: FlowStatus, now: float = 60) -> FlowAlert:
    message = "the flow's deadline 2025-01-19T10:31:00+00:00 has passed"
    return FlowAlert(AlertKind.DEADLINE_EXCEEDED, at(60), at(now), status, message=message)


def test_a_deadline_is_breached_at_its_very_time_and_recorded_with_its_message() -> None:
    definition = _definition(None, deadline=60)
    flow = create_flow("f-1", TENANT, definition, _ctx(0)).flow
    alert = _deadline_alert(FlowStatus.INITIALIZED)
    assert breaches(flow, definition, at(60), {}) == [RaiseAlert(alert)]
    (entry,) = apply_command(flow, definition, RaiseAlert(alert), _ctx(60)).entries
    assert (entry.kind, entry.reason, entry.alert) == (HistoryKind.ALERT, alert.message, alert)


def test_a_change_keeps_the_deadline_due_until_an_alert_handles_it() -> None:
    definition = _definition(None, deadline=60)
    flow = _run(
        create_flow("f-1", TENANT, definition, _ctx(0)).flow,
        definition,
        (TransitionPhase("draft", S.IN_PROGRESS), _ctx(10)),
    )
    assert flow.alert_due_at == at(60)


def test_an_alert_computed_before_a_change_is_raised_with_the_status_it_finds() -> None:
    definition = _definition(None, deadline=60)
    flow = create_flow("f-1", TENANT, definition, _ctx(0)).flow
    (command,) = breaches(flow, definition, at(61), {})
    flow = _run(flow, definition, (TransitionPhase("draft", S.IN_PROGRESS), _ctx(62)))
    raised = apply_command(flow, definition, command, _ctx(63)).flow
    assert raised.alerts == (_deadline_alert(FlowStatus.ACTIVE, now=63),)


def test_a_stuck_flow_is_found_after_a_fraction_of_a_second_and_alerted_whole() -> None:
    definition = _definition(None)
    flow = _run(
        create_flow("f-1", TENANT, definition, _ctx(0)).flow,
        definition,
        (TransitionPhase("draft", S.IN_PROGRESS), _ctx(1)),
    )
    message = "no change for 0.5 s in status active"
    stuck = FlowAlert(AlertKind.STUCK, at(1.5), at(2), FlowStatus.ACTIVE, message=message)
    assert breaches(flow, definition, at(2), {FlowStatus.ACTIVE: 0.5}) == [RaiseAlert(stuck)]


def test_a_deadline_alert_in_force_does_not_hide_a_stuck_one() -> None:
    definition = _definition(None, deadline=60)
    flow = _run(
        create_flow("f-1", TENANT, definition, _ctx(0)).flow,
        definition,
        (TransitionPhase("draft", S.IN_PROGRESS), _ctx(1)),
    )
    commands = breaches(flow, definition, at(100), {FlowStatus.ACTIVE: 50.0})
    flow = _run(flow, definition, *((command, _ctx(100)) for command in commands))
    assert [a.kind for a in flow.alerts] == [AlertKind.DEADLINE_EXCEEDED, AlertKind.STUCK]
