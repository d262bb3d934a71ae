"""apply_command, create_flow and validate_command: the rules of DESIGN.md section 2."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from flowstate.core import (
    BUILTIN_DEFINITIONS,
    DISCOVERY,
    CancelFlow,
    Command,
    ErrorCode,
    Flow,
    FlowStateError,
    HistoryKind,
    PauseFlow,
    PhaseError,
    PhaseState,
    ResumeFlow,
    Retry,
    Rollback,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    create_flow,
    validate_command,
)
from flowstate.core.definitions import FlowDefinition

from .support import (
    BRANCHY,
    FATAL,
    RETRYABLE,
    T0,
    TENANT,
    F,
    S,
    at,
    ctx,
    flow_with,
    new_flow,
    run,
)


def refusal(
    flow: Flow,
    command: Command,
    *,
    definition: FlowDefinition = DISCOVERY,
    admin: bool = False,
) -> FlowStateError:
    """The refusal `command` gets; also checks validate_command agrees."""
    with pytest.raises(FlowStateError) as raised:
        apply_command(flow, definition, command, ctx(99, admin=admin))
    dry_run = validate_command(flow, definition, command, ctx(99, admin=admin))
    assert dry_run is not None
    assert dry_run.code is raised.value.code
    return raised.value


START = PhaseState.IN_PROGRESS


# --- create ------------------------------------------------------------------------------------


def test_create_flow() -> None:
    decision = create_flow(
        "flow-9",
        TENANT,
        DISCOVERY,
        ctx(0, user="alice"),
        display_name="Acme discovery",
        labels={"team": "blue"},
    )
    flow = decision.flow
    assert (flow.flow_id, flow.tenant, flow.version, flow.status) == (
        "flow-9",
        TENANT,
        1,
        F.INITIALIZED,
    )
    assert (flow.definition_name, flow.definition_version) == ("discovery", 1)
    assert flow.phase_states == dict.fromkeys(DISCOVERY.phase_names, S.NOT_STARTED)
    assert (flow.progress, flow.created_at, flow.updated_at) == (0.0, T0, T0)
    assert (flow.display_name, flow.labels) == ("Acme discovery", {"team": "blue"})
    (entry,) = decision.entries
    assert (entry.flow_version, entry.kind, entry.user_id) == (1, HistoryKind.CREATED, "alice")
    assert (entry.status_before, entry.status_after, entry.occurred_at) == (
        F.INITIALIZED,
        F.INITIALIZED,
        T0,
    )


def test_create_flow_needs_an_id() -> None:
    with pytest.raises(FlowStateError) as raised:
        create_flow("", TENANT, DISCOVERY, ctx())
    assert raised.value.code is ErrorCode.MALFORMED_REQUEST
    assert raised.value.details["field"] == "flow_id"


# --- transitions and the history they write -----------------------------------------------------


def test_transition_records_one_complete_entry() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS}, status=F.DATA_GATHERING)
    command = TransitionPhase(
        "data_import", S.COMPLETED, reason="import done", metadata={"rows": 1200}
    )
    decision = apply_command(flow, DISCOVERY, command, ctx(90, user="bob"))
    (entry,) = decision.entries
    assert entry.flow_version == 11 == decision.flow.version
    assert entry.kind is HistoryKind.TRANSITION
    assert (entry.phase, entry.from_state, entry.to_state) == ("data_import", START, S.COMPLETED)
    assert (entry.status_before, entry.status_after) == (F.DATA_GATHERING, F.DATA_GATHERING)
    assert (entry.reason, entry.user_id, entry.request_id) == ("import done", "bob", "req-90")
    assert entry.metadata == {"rows": 1200}
    assert (entry.occurred_at, entry.time_in_state_seconds) == (at(90), 90.0)
    assert entry.progress_after == 20.0 == decision.flow.progress
    assert decision.flow.updated_at == at(90)
    assert flow.version == 10  # the input is untouched


def test_phase_timestamps() -> None:
    flow, _ = run(
        new_flow(),
        TransitionPhase("data_import", START),
        TransitionPhase("data_import", S.COMPLETED),
    )
    phase = flow.phase("data_import")
    assert (phase.started_at, phase.completed_at, phase.state_entered_at) == (
        at(10),
        at(20),
        at(20),
    )
    flow, _ = run(flow, Rollback("data_import"))
    assert flow.phase("data_import").completed_at is None


@pytest.mark.parametrize(
    "command",
    [
        TransitionPhase("data_export", START),
        UpdatePhaseProgress("data_export", 0.5),
        Rollback("data_export"),
        Retry("data_export"),
    ],
    ids=["transition", "progress", "rollback", "retry"],
)
def test_unknown_phase_is_invalid_phase(command: Command) -> None:
    error = refusal(new_flow(), command)
    assert error.code is ErrorCode.INVALID_PHASE
    assert error.details["phase"] == "data_export"


def test_order_violation_names_the_blocking_phases() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    error = refusal(flow, TransitionPhase("field_mapping", START))
    assert error.code is ErrorCode.PHASE_ORDER_VIOLATION
    assert error.details["blocking_phases"] == ["data_import"]


def test_order_violation_with_parallel_branches() -> None:
    flow = flow_with(
        {"extract": S.COMPLETED, "left": S.COMPLETED, "right": S.WAITING_APPROVAL},
        definition=BRANCHY,
    )
    error = refusal(flow, TransitionPhase("merge", START), definition=BRANCHY)
    assert error.details["blocking_phases"] == ["right"]


def test_order_applies_to_every_start() -> None:
    # Upstream sent back for rework: the downstream phase may not restart meanwhile.
    flow = flow_with({"data_import": S.RETRY_NEEDED, "field_mapping": S.ROLLED_BACK})
    error = refusal(flow, TransitionPhase("field_mapping", START))
    assert error.code is ErrorCode.PHASE_ORDER_VIOLATION


@pytest.mark.parametrize("target", [S.FAILED, S.RETRY_NEEDED])
def test_failure_reports_must_carry_the_error(target: PhaseState) -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    error = refusal(flow, TransitionPhase("data_import", target))
    assert error.code is ErrorCode.MALFORMED_REQUEST
    assert error.details["field"] == "error"


@pytest.mark.parametrize("target", [S.COMPLETED, S.WAITING_APPROVAL])
def test_an_error_on_a_success_is_malformed(target: PhaseState) -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    error = refusal(flow, TransitionPhase("data_import", target, error=RETRYABLE))
    assert error.code is ErrorCode.MALFORMED_REQUEST


def test_the_error_is_kept_until_the_phase_completes() -> None:
    flow, entries = run(
        flow_with({"data_import": S.IN_PROGRESS}),
        TransitionPhase("data_import", S.FAILED, error=RETRYABLE),
        Retry("data_import"),
        Retry("data_import"),
        TransitionPhase("data_import", S.WAITING_VALIDATION),
    )
    assert flow.phase("data_import").error == RETRYABLE
    assert all(entry.error == RETRYABLE for entry in entries)
    flow, entries = run(flow, TransitionPhase("data_import", S.COMPLETED))
    assert flow.phase("data_import").error is None
    assert entries[0].error is None


def test_leaving_an_error_state_keeps_the_error_or_takes_a_new_one() -> None:
    flow = flow_with({"data_import": S.RETRY_NEEDED})
    abandoned, _ = run(flow, TransitionPhase("data_import", S.FAILED, reason="give up"))
    assert abandoned.phase("data_import").error == RETRYABLE
    replaced, _ = run(flow, TransitionPhase("data_import", S.FAILED, error=FATAL))
    assert replaced.phase("data_import").error == FATAL


def test_state_changes_reset_in_phase_progress() -> None:
    flow, _ = run(
        flow_with({"data_import": S.IN_PROGRESS}),
        UpdatePhaseProgress("data_import", 0.9),
        TransitionPhase("data_import", S.WAITING_APPROVAL),
        TransitionPhase("data_import", START, reason="changes requested"),
    )
    assert flow.phase("data_import").progress == 0.0
    assert flow.progress == 6.0


def test_a_definition_that_is_not_the_flows_is_a_bug() -> None:
    with pytest.raises(ValueError, match="follows 'discovery'"):
        apply_command(new_flow(), BRANCHY, PauseFlow(), ctx())


def test_a_whole_discovery_run() -> None:
    commands: list[Command] = []
    for name in DISCOVERY.phase_names:
        commands += [TransitionPhase(name, START), TransitionPhase(name, S.COMPLETED)]
    flow, entries = run(new_flow(), *commands)
    assert flow.status is F.COMPLETED
    assert flow.progress == 100.0
    assert [e.flow_version for e in entries] == list(range(2, 12))
    statuses = [e.status_after for e in entries]
    assert statuses[:3] == [F.DATA_GATHERING, F.DATA_GATHERING, F.DISCOVERY]
    assert statuses[-2:] == [F.PLANNING, F.COMPLETED]


def test_custom_definitions_drop_in() -> None:
    flow = create_flow("flow-b", TENANT, BRANCHY, ctx()).flow
    flow, _ = run(
        flow,
        TransitionPhase("extract", START),
        TransitionPhase("extract", S.COMPLETED),
        TransitionPhase("right", START),
        TransitionPhase("left", START),
        definition=BRANCHY,
    )
    # Rule 8 looks at the furthest started phase in definition order: "right", no group.
    assert flow.status is F.ACTIVE
    assert flow.progress == 25.0 + 7.5 + 7.5
    assert "discovery" in BUILTIN_DEFINITIONS


# --- progress reports ----------------------------------------------------------------------------


def test_progress_report_is_recorded() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS}, status=F.DATA_GATHERING)
    decision = apply_command(flow, DISCOVERY, UpdatePhaseProgress("data_import", 0.5), ctx(30))
    (entry,) = decision.entries
    assert entry.kind is HistoryKind.PROGRESS
    assert (entry.from_state, entry.to_state) == (START, START)
    assert (entry.phase_progress, entry.progress_after) == (0.5, 10.0)
    assert entry.time_in_state_seconds == 30.0
    assert decision.flow.phase("data_import").progress == 0.5
    assert decision.flow.phase("data_import").state_entered_at == T0


def test_repeated_progress_report_is_a_no_op() -> None:
    flow, _ = run(
        flow_with({"data_import": S.IN_PROGRESS}), UpdatePhaseProgress("data_import", 0.4)
    )
    decision = apply_command(flow, DISCOVERY, UpdatePhaseProgress("data_import", 0.4), ctx(50))
    assert decision.entries == ()
    assert decision.flow == flow


def test_progress_may_go_down() -> None:
    _, entries = run(
        flow_with({"data_import": S.IN_PROGRESS}),
        UpdatePhaseProgress("data_import", 0.8),
        UpdatePhaseProgress("data_import", 0.2),
    )
    assert [e.phase_progress for e in entries] == [0.8, 0.2]


@pytest.mark.parametrize("value", [-0.1, 1.01, math.nan, math.inf, True], ids=str)
def test_progress_out_of_range_is_malformed(value: float) -> None:
    error = refusal(
        flow_with({"data_import": S.IN_PROGRESS}), UpdatePhaseProgress("data_import", value)
    )
    assert error.code is ErrorCode.MALFORMED_REQUEST
    assert error.details["field"] == "progress"


@pytest.mark.parametrize("state", [s for s in PhaseState if s is not START], ids=str)
def test_progress_only_while_in_progress(state: PhaseState) -> None:
    error = refusal(flow_with({"data_import": state}), UpdatePhaseProgress("data_import", 0.5))
    assert error.code is ErrorCode.INVALID_PHASE_TRANSITION
    assert "while phase 'data_import' is in_progress" in error.message


# --- rollback ----------------------------------------------------------------------------------

MID_RUN = {
    "data_import": S.COMPLETED,
    "field_mapping": S.COMPLETED,
    "data_cleansing": S.COMPLETED,
    "asset_inventory": S.IN_PROGRESS,
}


def test_rollback_cascades_to_every_started_downstream_phase() -> None:
    flow = flow_with(MID_RUN)
    decision = apply_command(flow, DISCOVERY, Rollback("field_mapping", reason="bad map"), ctx(60))
    kinds = [(e.kind, e.phase, e.from_state, e.cause, e.flow_version) for e in decision.entries]
    assert kinds == [
        (HistoryKind.ROLLBACK, "field_mapping", S.COMPLETED, "", 11),
        (HistoryKind.CASCADE_ROLLBACK, "data_cleansing", S.COMPLETED, "field_mapping", 12),
        (HistoryKind.CASCADE_ROLLBACK, "asset_inventory", S.IN_PROGRESS, "field_mapping", 13),
    ]
    assert all(e.reason == "bad map" and e.to_state is S.ROLLED_BACK for e in decision.entries)
    assert decision.flow.version == 13
    assert decision.flow.phase_states == {
        "data_import": S.COMPLETED,
        "field_mapping": S.ROLLED_BACK,
        "data_cleansing": S.ROLLED_BACK,
        "asset_inventory": S.ROLLED_BACK,
        "dependency_analysis": S.NOT_STARTED,
    }
    assert decision.flow.progress == 20.0
    for before, after in zip(decision.entries, decision.entries[1:], strict=False):
        assert before.status_after == after.status_before


def test_rollback_without_cascade_refuses_active_dependents() -> None:
    error = refusal(flow_with(MID_RUN), Rollback("field_mapping", cascade=False))
    assert error.code is ErrorCode.DEPENDENT_PHASES_ACTIVE
    assert error.details["dependent_phases"] == ["data_cleansing", "asset_inventory"]


def test_rollback_without_cascade_when_nothing_downstream_started() -> None:
    flow = flow_with({"data_import": S.COMPLETED, "field_mapping": S.ROLLED_BACK})
    decision = apply_command(flow, DISCOVERY, Rollback("data_import", cascade=False), ctx(5))
    assert len(decision.entries) == 1


def test_rollback_of_a_failed_phase() -> None:
    flow = flow_with({"data_import": S.COMPLETED, "field_mapping": S.FAILED})
    flow, entries = run(flow, Rollback("field_mapping"))
    assert flow.phase("field_mapping").state is S.ROLLED_BACK
    assert flow.phase("field_mapping").error == RETRYABLE  # it did not succeed
    assert (entries[0].status_before, entries[0].status_after) == (F.FAILED, F.DISCOVERY)


@pytest.mark.parametrize(
    "state", [S.NOT_STARTED, S.IN_PROGRESS, S.WAITING_APPROVAL, S.RETRY_NEEDED, S.ROLLED_BACK]
)
def test_only_completed_or_failed_phases_roll_back(state: PhaseState) -> None:
    error = refusal(flow_with({"data_import": state}), Rollback("data_import"))
    assert error.code is ErrorCode.INVALID_PHASE_TRANSITION


def test_transition_to_rolled_back_is_a_cascading_rollback() -> None:
    decision = apply_command(
        flow_with(MID_RUN), DISCOVERY, TransitionPhase("data_cleansing", S.ROLLED_BACK), ctx(1)
    )
    assert [e.kind for e in decision.entries] == [
        HistoryKind.ROLLBACK,
        HistoryKind.CASCADE_ROLLBACK,
    ]


def test_rollback_across_parallel_branches() -> None:
    flow = flow_with(
        {"extract": S.COMPLETED, "left": S.COMPLETED, "right": S.FAILED}, definition=BRANCHY
    )
    decision = apply_command(flow, BRANCHY, Rollback("extract"), ctx(1))
    assert [e.phase for e in decision.entries] == ["extract", "left", "right"]
    assert decision.flow.phase("merge").state is S.NOT_STARTED


def test_a_rolled_back_phase_restarts_without_counting_a_retry() -> None:
    flow = flow_with({"data_import": S.ROLLED_BACK}, retry_counts={"data_import": 3})
    flow, entries = run(flow, TransitionPhase("data_import", START))
    assert flow.phase("data_import").retry_count == 3
    assert entries[0].kind is HistoryKind.TRANSITION


# --- retry ---------------------------------------------------------------------------------------


def test_retry_marks_then_restarts_and_counts_one_attempt() -> None:
    flow = flow_with({"data_import": S.FAILED})
    flow, entries = run(flow, Retry("data_import"))
    assert flow.phase("data_import").state is S.RETRY_NEEDED
    assert flow.phase("data_import").retry_count == 0
    assert (entries[0].kind, entries[0].status_after) == (HistoryKind.RETRY, F.RETRY_PENDING)
    flow, entries = run(flow, Retry("data_import"))
    phase = flow.phase("data_import")
    assert (phase.state, phase.retry_count, phase.last_retry_at) == (START, 1, at(10))
    assert entries[0].status_after is F.ERROR_RECOVERY


@pytest.mark.parametrize(
    ("name", "max_retries"),
    [
        ("data_import", 3),
        ("field_mapping", 3),
        ("data_cleansing", 2),
        ("asset_inventory", 3),
        ("dependency_analysis", 2),
    ],
)
def test_retry_limit_per_phase(name: str, max_retries: int) -> None:
    upstream = DISCOVERY.phase_names[: DISCOVERY.index(name)]
    flow = flow_with({**dict.fromkeys(upstream, S.COMPLETED), name: S.FAILED})
    fail = TransitionPhase(name, S.FAILED, error=RETRYABLE)
    attempts = 0
    while validate_command(flow, DISCOVERY, Retry(name), ctx()) is None:
        flow, _ = run(flow, Retry(name), Retry(name), fail)
        attempts += 1
    assert attempts == max_retries == flow.phase(name).retry_count
    error = refusal(flow, Retry(name))
    assert error.code is ErrorCode.MAX_RETRIES_EXCEEDED
    assert error.details["attempts_remaining"] == 0
    assert error.details["recovery"] == ["rollback", "cancel"]


def test_max_retries_on_a_retry_needed_phase_says_what_remains() -> None:
    flow = flow_with({"data_cleansing": S.RETRY_NEEDED}, retry_counts={"data_cleansing": 2})
    error = refusal(flow, Retry("data_cleansing"))
    assert error.code is ErrorCode.MAX_RETRIES_EXCEEDED
    assert error.details["recovery"] == ["abandon", "cancel"]
    assert (error.details["retry_count"], error.details["max_retries"]) == (2, 2)


def test_transition_phase_cannot_bypass_the_retry_limit() -> None:
    flow = flow_with({"data_cleansing": S.RETRY_NEEDED}, retry_counts={"data_cleansing": 2})
    error = refusal(flow, TransitionPhase("data_cleansing", START))
    assert error.code is ErrorCode.MAX_RETRIES_EXCEEDED
    ok = flow_with({"data_import": S.RETRY_NEEDED})
    counted, _ = run(ok, TransitionPhase("data_import", START))
    assert counted.phase("data_import").retry_count == 1


@pytest.mark.parametrize("state", [S.NOT_STARTED, S.IN_PROGRESS, S.COMPLETED, S.ROLLED_BACK])
def test_only_failed_or_retry_needed_phases_retry(state: PhaseState) -> None:
    error = refusal(flow_with({"data_import": state}), Retry("data_import"))
    assert error.code is ErrorCode.INVALID_PHASE_TRANSITION


@pytest.mark.parametrize("state", [S.FAILED, S.RETRY_NEEDED])
def test_non_retryable_error_refuses_retry(state: PhaseState) -> None:
    flow = flow_with({"data_import": state}, errors={"data_import": FATAL})
    error = refusal(flow, Retry("data_import"))
    assert error.code is ErrorCode.RETRY_NOT_ALLOWED
    assert error.details["error_code"] == "DATA_VALIDATION_FAILED"
    assert error.details["attempts_remaining"] == 3
    assert error.details["recovery"][0] == "force_retry"
    assert "cancel" in error.details["recovery"]
    assert not error.retry_allowed


@pytest.mark.parametrize(("force", "admin"), [(True, False), (False, True)])
def test_force_needs_an_admin_and_admin_needs_force(force: bool, admin: bool) -> None:
    flow = flow_with({"data_import": S.FAILED}, errors={"data_import": FATAL})
    error = refusal(flow, Retry("data_import", force=force), admin=admin)
    assert error.code is ErrorCode.RETRY_NOT_ALLOWED


def test_admin_force_retries_a_non_retryable_failure() -> None:
    flow = flow_with({"data_import": S.FAILED}, errors={"data_import": FATAL})
    flow, entries = run(flow, Retry("data_import", force=True), admin=True)
    assert flow.phase("data_import").state is S.RETRY_NEEDED
    assert entries[0].metadata == {"forced": True}
    flow, _ = run(flow, Retry("data_import", force=True), admin=True)
    assert flow.phase("data_import").retry_count == 1


def test_force_does_not_lift_the_retry_limit() -> None:
    flow = flow_with(
        {"data_import": S.FAILED}, errors={"data_import": FATAL}, retry_counts={"data_import": 3}
    )
    error = refusal(flow, Retry("data_import", force=True), admin=True)
    assert error.code is ErrorCode.MAX_RETRIES_EXCEEDED


def test_a_phase_without_error_context_counts_as_retryable() -> None:
    flow = flow_with({"data_import": S.FAILED}, errors={"data_import": None})
    assert validate_command(flow, DISCOVERY, Retry("data_import"), ctx()) is None


# --- pause and resume ----------------------------------------------------------------------------


def test_pause_blocks_starts_but_lets_running_phases_finish() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS}, status=F.DATA_GATHERING)
    flow, entries = run(flow, PauseFlow(reason="maintenance"))
    assert (flow.status, flow.status_before_pause) == (F.PAUSED, F.DATA_GATHERING)
    assert (entries[0].kind, entries[0].phase, entries[0].reason) == (
        HistoryKind.PAUSE,
        None,
        "maintenance",
    )
    flow, _ = run(
        flow,
        UpdatePhaseProgress("data_import", 0.7),
        TransitionPhase("data_import", S.COMPLETED),
    )
    assert flow.status is F.PAUSED
    assert flow.progress == 20.0
    error = refusal(flow, TransitionPhase("field_mapping", START))
    assert error.code is ErrorCode.FLOW_PAUSED
    assert error.details["recovery"] == ["resume"]
    flow, entries = run(flow, ResumeFlow(reason="done"))
    assert (flow.status, flow.status_before_pause) == (F.DATA_GATHERING, None)
    assert (entries[0].kind, entries[0].status_before, entries[0].status_after) == (
        HistoryKind.RESUME,
        F.PAUSED,
        F.DATA_GATHERING,
    )
    flow, _ = run(flow, TransitionPhase("field_mapping", START))
    assert flow.status is F.DISCOVERY


def test_while_paused_the_resume_status_follows_the_phases() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS}, status=F.DATA_GATHERING)
    flow, _ = run(
        flow,
        PauseFlow(),
        TransitionPhase("data_import", S.FAILED, error=RETRYABLE),
        Retry("data_import"),
    )
    assert (flow.status, flow.status_before_pause) == (F.PAUSED, F.RETRY_PENDING)
    assert refusal(flow, Retry("data_import")).code is ErrorCode.FLOW_PAUSED
    flow, _ = run(flow, ResumeFlow(), Retry("data_import"))
    assert flow.status is F.ERROR_RECOVERY


def test_rollback_is_allowed_while_paused() -> None:
    flow = flow_with(MID_RUN)
    flow, _ = run(flow, PauseFlow(), Rollback("data_cleansing"))
    assert flow.status is F.PAUSED
    assert flow.phase("asset_inventory").state is S.ROLLED_BACK


def test_pause_twice_and_resume_unpaused_are_invalid_flow_transitions() -> None:
    paused, _ = run(new_flow(), PauseFlow())
    assert refusal(paused, PauseFlow()).code is ErrorCode.INVALID_FLOW_TRANSITION
    assert refusal(new_flow(), ResumeFlow()).code is ErrorCode.INVALID_FLOW_TRANSITION


def test_extension_paused_before_anything_started_resumes_to_initialized() -> None:
    flow, entries = run(new_flow(), PauseFlow(), ResumeFlow())
    assert flow.status is F.INITIALIZED
    assert (entries[1].status_before, entries[1].status_after) == (F.PAUSED, F.INITIALIZED)


def test_extension_phases_completed_while_paused_resume_to_completed() -> None:
    states = dict.fromkeys(DISCOVERY.phase_names, S.COMPLETED) | {"dependency_analysis": START}
    flow, _ = run(
        flow_with(states),
        PauseFlow(),
        TransitionPhase("dependency_analysis", S.COMPLETED),
    )
    assert (flow.status, flow.status_before_pause) == (F.PAUSED, F.COMPLETED)
    flow, _ = run(flow, ResumeFlow())
    assert flow.status is F.COMPLETED


def test_extension_a_failed_flow_can_be_paused() -> None:
    flow = flow_with({"data_import": S.FAILED})
    assert flow.status is F.FAILED
    flow, _ = run(flow, PauseFlow())
    assert (flow.status, flow.status_before_pause) == (F.PAUSED, F.FAILED)
    flow, _ = run(flow, ResumeFlow())
    assert flow.status is F.FAILED


def test_extension_failed_to_waiting_approval_by_rolling_back_the_failed_phase() -> None:
    flow = flow_with(
        {"extract": S.COMPLETED, "left": S.WAITING_APPROVAL, "right": S.FAILED},
        definition=BRANCHY,
    )
    assert flow.status is F.FAILED
    flow, entries = run(flow, Rollback("right"), definition=BRANCHY)
    assert (entries[0].status_before, entries[0].status_after) == (F.FAILED, F.WAITING_APPROVAL)


# --- cancel and terminal flows ------------------------------------------------------------------

PHASE_COMMANDS: list[Command] = [
    TransitionPhase("data_import", START),
    TransitionPhase("dependency_analysis", S.ROLLED_BACK),
    UpdatePhaseProgress("data_import", 0.5),
    Rollback("data_import"),
    Retry("data_import"),
]


def test_cancel() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    flow, entries = run(flow, CancelFlow(reason="customer left"))
    assert flow.status is F.CANCELLED
    assert flow.phase("data_import").state is S.IN_PROGRESS  # phases are left as they were
    assert (entries[0].kind, entries[0].reason) == (HistoryKind.CANCEL, "customer left")


def test_a_paused_flow_can_be_cancelled() -> None:
    flow, _ = run(new_flow(), PauseFlow(), CancelFlow())
    assert (flow.status, flow.status_before_pause) == (F.CANCELLED, None)


@pytest.mark.parametrize("terminal", [F.CANCELLED, F.COMPLETED])
@pytest.mark.parametrize("command", PHASE_COMMANDS, ids=lambda c: type(c).__name__)
def test_terminal_flows_refuse_phase_changes(terminal: F, command: Command) -> None:
    states = dict.fromkeys(DISCOVERY.phase_names, S.COMPLETED) | {"data_import": S.FAILED}
    flow = replace(flow_with(states), status=terminal)
    error = refusal(flow, command)
    assert error.code is ErrorCode.FLOW_TERMINAL


@pytest.mark.parametrize("terminal", [F.CANCELLED, F.COMPLETED])
@pytest.mark.parametrize("command", [PauseFlow(), ResumeFlow(), CancelFlow()], ids=repr)
def test_terminal_flows_refuse_flow_changes(terminal: F, command: Command) -> None:
    flow = replace(new_flow(), status=terminal)
    assert refusal(flow, command).code is ErrorCode.INVALID_FLOW_TRANSITION


def test_a_completed_flow_stays_completed() -> None:
    flow = flow_with(dict.fromkeys(DISCOVERY.phase_names, S.COMPLETED))
    assert flow.status is F.COMPLETED
    assert refusal(flow, Rollback("data_import")).code is ErrorCode.FLOW_TERMINAL


# --- validate_command ----------------------------------------------------------------------------


def test_validate_command_never_raises_for_a_refusal() -> None:
    flow = new_flow()
    assert validate_command(flow, DISCOVERY, TransitionPhase("data_import", START), ctx()) is None
    error = validate_command(flow, DISCOVERY, TransitionPhase("data_import", S.COMPLETED), ctx())
    assert error is not None
    assert error.details["valid_transitions"] == ["in_progress"]


def test_errors_carry_phase_error_values_unchanged() -> None:
    custom = PhaseError(ErrorCode.EXTERNAL_SERVICE_ERROR, "CMDB down", {"status": 503})
    flow, _ = run(
        flow_with({"data_import": START}), TransitionPhase("data_import", S.FAILED, error=custom)
    )
    assert flow.phase("data_import").error == custom


def test_states_given_as_strings_follow_the_same_rules() -> None:
    # A plain string must not slip past the order check (it compares by identity).
    flow = flow_with({"data_import": S.IN_PROGRESS})
    command = TransitionPhase("field_mapping", "in_progress")  # type: ignore[arg-type]
    assert refusal(flow, command).code is ErrorCode.PHASE_ORDER_VIOLATION
    failing = TransitionPhase("data_import", "failed", error=RETRYABLE)  # type: ignore[arg-type]
    assert run(flow, failing)[0].phase("data_import").state is S.FAILED
    garbage = TransitionPhase("data_import", "asleep")  # type: ignore[arg-type]
    assert refusal(flow, garbage).code is ErrorCode.MALFORMED_REQUEST
