"""Optional phases, SkipPhase and parallel branches (DESIGN.md section 9), case by case."""

from __future__ import annotations

import pytest

from flowstate.core import (
    Command,
    ErrorCode,
    FlowDefinition,
    FlowStateError,
    HistoryKind,
    PauseFlow,
    PhaseDefinition,
    RecoveryAction,
    RecoveryOption,
    Retry,
    Rollback,
    SkipPhase,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    get_recovery_options,
)

from .support import RETRYABLE, F, S, at, ctx, flow_with, new_flow, run

# A diamond: a -> b, a -> c, b + c -> d; c is optional. b and c are in different groups.
DIAMOND = FlowDefinition(
    name="diamond",
    version=1,
    phases=(
        PhaseDefinition("a", (), 25, 1, F.DATA_GATHERING),
        PhaseDefinition("b", ("a",), 25, 1, F.DISCOVERY),
        PhaseDefinition("c", ("a",), 25, 1, F.ASSESSMENT_READY, optional=True),
        PhaseDefinition("d", ("b", "c"), 25, 1, F.PLANNING),
    ),
)


def start(name: str) -> TransitionPhase:
    return TransitionPhase(name, S.IN_PROGRESS)


def complete(name: str) -> TransitionPhase:
    return TransitionPhase(name, S.COMPLETED)


def test_parallel_branches_run_at_once_and_a_skip_satisfies_the_join() -> None:
    flow, entries = run(
        new_flow(DIAMOND),
        start("a"),
        complete("a"),
        start("b"),
        start("c"),
        definition=DIAMOND,
    )
    assert flow.phase("b").state is S.IN_PROGRESS
    assert flow.phase("c").state is S.IN_PROGRESS
    # Both branches run; c is listed after b, so its group wins (rule 8 for parallel phases).
    assert flow.status is F.ASSESSMENT_READY
    flow = apply_command(
        flow, DIAMOND, TransitionPhase("c", S.FAILED, error=RETRYABLE), ctx(60)
    ).flow
    # b still runs, so not FAILED (rule 4 needs nothing running); c is still the latest phase
    # that left NOT_STARTED, so its group stays.
    assert flow.status is F.ASSESSMENT_READY
    with pytest.raises(FlowStateError) as blocked:
        apply_command(flow, DIAMOND, start("d"), ctx(61))
    assert blocked.value.code is ErrorCode.PHASE_ORDER_VIOLATION
    assert blocked.value.details["blocking_phases"] == ["b", "c"]
    flow, entries = run(
        flow, SkipPhase("c", reason="not needed"), complete("b"), definition=DIAMOND
    )
    assert entries[0].kind is HistoryKind.SKIP
    assert (entries[0].from_state, entries[0].to_state) == (S.FAILED, S.SKIPPED)
    assert flow.phase("c").error is None
    assert flow.progress == 75.0  # a, b completed and c skipped count fully
    flow, _ = run(flow, start("d"), complete("d"), definition=DIAMOND)
    assert flow.status is F.COMPLETED
    assert flow.progress == 100.0


def test_a_phase_that_is_not_optional_cannot_be_skipped() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=DIAMOND)
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, DIAMOND, SkipPhase("b"), ctx(1))
    assert refused.value.code is ErrorCode.INVALID_PHASE_TRANSITION
    assert "not optional" in refused.value.message
    assert refused.value.details["valid_transitions"] == ["in_progress"]


def test_a_skip_waits_for_the_dependencies_and_for_resume() -> None:
    with pytest.raises(FlowStateError) as early:
        apply_command(new_flow(DIAMOND), DIAMOND, SkipPhase("c"), ctx(1))
    assert early.value.code is ErrorCode.PHASE_ORDER_VIOLATION
    assert str(early.value) == "Phase 'c' cannot be skipped before 'a' completed"
    assert early.value.details == {
        "phase": "c",
        "from_state": "not_started",
        "to_state": "skipped",
        "blocking_phases": ["a"],
    }
    flow, _ = run(
        flow_with({"a": S.COMPLETED}, definition=DIAMOND), PauseFlow(), definition=DIAMOND
    )
    with pytest.raises(FlowStateError) as paused:
        apply_command(flow, DIAMOND, SkipPhase("c"), ctx(30))
    assert paused.value.code is ErrorCode.FLOW_PAUSED
    assert str(paused.value) == "Flow is paused: phase 'c' cannot be skipped until it is resumed"
    assert paused.value.details == {
        "phase": "c",
        "from_state": "not_started",
        "to_state": "skipped",
        "recovery": ["resume"],
    }


def test_transition_to_skipped_is_a_skip() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=DIAMOND)
    decision = apply_command(flow, DIAMOND, TransitionPhase("c", S.SKIPPED), ctx(1))
    assert decision.flow.phase("c").state is S.SKIPPED
    assert decision.entries[0].kind is HistoryKind.SKIP


def test_a_rollback_upstream_undoes_the_skip_and_every_started_descendant() -> None:
    flow = flow_with(
        {"a": S.COMPLETED, "b": S.COMPLETED, "c": S.SKIPPED, "d": S.IN_PROGRESS},
        definition=DIAMOND,
    )
    decision = apply_command(flow, DIAMOND, Rollback("a"), ctx(1))
    assert {p.name: p.state for p in decision.flow.phases} == dict.fromkeys("abcd", S.ROLLED_BACK)
    assert [(e.kind, e.phase) for e in decision.entries] == [
        (HistoryKind.ROLLBACK, "a"),
        *[(HistoryKind.CASCADE_ROLLBACK, name) for name in "bcd"],
    ]
    # A skip on its own can be rolled back too, and the phase can then run.
    skipped = flow_with({"a": S.COMPLETED, "c": S.SKIPPED}, definition=DIAMOND)
    undone, _ = run(skipped, Rollback("c"), start("c"), definition=DIAMOND)
    assert undone.phase("c").state is S.IN_PROGRESS


def test_skipping_the_last_failed_optional_phase_completes_a_failed_flow() -> None:
    flow = flow_with(
        {"a": S.COMPLETED, "b": S.COMPLETED, "c": S.FAILED, "d": S.NOT_STARTED},
        definition=DIAMOND,
    )
    assert flow.status is F.FAILED
    flow, _ = run(flow, SkipPhase("c"), start("d"), complete("d"), definition=DIAMOND)
    assert flow.status is F.COMPLETED


def test_recovery_for_several_failed_branches() -> None:
    flow = flow_with({"a": S.COMPLETED, "b": S.FAILED, "c": S.FAILED}, definition=DIAMOND)
    assert flow.status is F.FAILED
    options = [(o.action, o.phase) for o in get_recovery_options(flow, DIAMOND) if o.allowed]
    assert options == [
        (RecoveryAction.RETRY, "b"),
        (RecoveryAction.RETRY, "c"),
        (RecoveryAction.ROLLBACK, "b"),
        (RecoveryAction.ROLLBACK, "c"),
        (RecoveryAction.SKIP, "c"),  # only c is optional
        (RecoveryAction.ROLLBACK, "a"),
        (RecoveryAction.CANCEL, None),
    ]


def test_recovery_offers_rollback_of_a_skipped_phase() -> None:
    flow = flow_with({"a": S.COMPLETED, "c": S.SKIPPED}, definition=DIAMOND)
    actions = {(o.action, o.phase) for o in get_recovery_options(flow, DIAMOND)}
    assert (RecoveryAction.ROLLBACK, "c") in actions


def test_status_rule_8_ignores_skipped_phases_unless_only_skips_happened() -> None:
    flow = flow_with({"a": S.COMPLETED, "b": S.IN_PROGRESS, "c": S.SKIPPED}, definition=DIAMOND)
    assert flow.status is F.DISCOVERY
    only_skip = FlowDefinition(
        name="s",
        version=1,
        phases=(
            PhaseDefinition("x", (), 50, 0, F.PLANNING, optional=True),
            PhaseDefinition("y", (), 50, 0, None),
        ),
    )
    assert flow_with({"x": S.SKIPPED}, definition=only_skip).status is F.PLANNING
    assert flow_with({"x": S.SKIPPED, "y": S.IN_PROGRESS}, definition=only_skip).status is F.ACTIVE
    assert flow_with({"x": S.SKIPPED, "y": S.COMPLETED}, definition=only_skip).status is F.COMPLETED


def test_a_skip_records_its_reason_metadata_and_time() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=DIAMOND)
    command = SkipPhase("c", reason="not needed", metadata={"ticket": 7})

    decision = apply_command(flow, DIAMOND, command, ctx(5))

    (entry,) = decision.entries
    assert (entry.kind, entry.reason, entry.metadata) == (
        HistoryKind.SKIP,
        "not needed",
        {"ticket": 7},
    )
    assert decision.flow.phase("c").state_entered_at == at(5)


def test_a_skip_in_a_terminal_flow_is_refused_naming_the_phase() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=DIAMOND, status=F.CANCELLED)

    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, DIAMOND, SkipPhase("c"), ctx(1))

    assert refused.value.code is ErrorCode.FLOW_TERMINAL
    assert str(refused.value) == "Flow is cancelled: phase 'c' can no longer change"
    assert refused.value.details == {"phase": "c", "flow_status": "cancelled"}


def test_an_error_reported_with_a_skip_is_refused_with_whole_details() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=DIAMOND)

    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, DIAMOND, TransitionPhase("c", S.SKIPPED, error=RETRYABLE), ctx(1))

    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details == {"field": "error", "phase": "c", "to_state": "skipped"}


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            UpdatePhaseProgress("c", 0.5),
            "Progress can only be reported while phase 'c' is in_progress; it is 'not_started'",
        ),
        (
            Retry("c"),
            "Only a failed or retry_needed phase can be retried; phase 'c' is 'not_started'",
        ),
    ],
    ids=["progress", "retry"],
)
def test_a_refused_report_on_an_optional_phase_lists_the_skip_among_its_moves(
    command: Command, message: str
) -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=DIAMOND)

    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, DIAMOND, command, ctx(1))

    assert refused.value.code is ErrorCode.INVALID_PHASE_TRANSITION
    assert str(refused.value) == message
    expected = {"phase": "c", "from_state": "not_started"}
    if isinstance(command, UpdatePhaseProgress):
        expected["to_state"] = "not_started"
    assert refused.value.details == {**expected, "valid_transitions": ["in_progress", "skipped"]}


def test_recovery_offers_the_skip_of_a_failed_optional_phase_as_a_whole_option() -> None:
    flow = flow_with({"a": S.COMPLETED, "c": S.FAILED}, definition=DIAMOND)

    (skip,) = [o for o in get_recovery_options(flow, DIAMOND) if o.action is RecoveryAction.SKIP]

    assert skip == RecoveryOption(
        action=RecoveryAction.SKIP,
        phase="c",
        target_state=S.SKIPPED,
        target_status=F.DATA_GATHERING,
        reason="Phase 'c' is optional: skip it so the flow goes on without it",
        allowed=True,
        blocked_by=None,
        blocking_detail="",
        attempts_remaining=None,
        command=SkipPhase(phase="c", reason="recovery: skip"),
    )


def test_recovery_names_a_skipped_phase_in_its_rollback() -> None:
    flow = flow_with({"a": S.COMPLETED, "c": S.SKIPPED}, definition=DIAMOND)

    reasons = {
        o.phase: o.reason
        for o in get_recovery_options(flow, DIAMOND)
        if o.action is RecoveryAction.ROLLBACK
    }

    assert reasons["c"] == "Roll back skipped phase 'c' to revise it"
    assert reasons["a"] == "Roll back completed phase 'a' (and downstream c) to revise it"


def test_recovery_offers_every_skip_before_any_abandon() -> None:
    flow = flow_with(
        {"a": S.COMPLETED, "b": S.RETRY_NEEDED, "c": S.RETRY_NEEDED}, definition=DIAMOND
    )

    options = [(o.action, o.phase) for o in get_recovery_options(flow, DIAMOND) if o.allowed]

    assert options == [
        (RecoveryAction.RETRY, "b"),
        (RecoveryAction.RETRY, "c"),
        (RecoveryAction.SKIP, "c"),
        (RecoveryAction.ABANDON, "b"),
        (RecoveryAction.ABANDON, "c"),
        (RecoveryAction.ROLLBACK, "a"),
        (RecoveryAction.CANCEL, None),
    ]
