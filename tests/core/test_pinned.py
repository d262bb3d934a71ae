"""Behaviours at the edges of the rules, each pinned because a one-line change survived once.

Every test here names the single-line change it catches (issue 23: ten one-line changes to the
core, six of which the whole suite let through).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from flowstate.core import (
    DISCOVERY,
    ErrorCode,
    Flow,
    FlowDefinition,
    FlowStateError,
    FlowStatus,
    HistoryKind,
    PauseFlow,
    Phase,
    PhaseDefinition,
    ResumeFlow,
    Retry,
    Rollback,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    calculate_progress,
    determine_flow_status,
)
from flowstate.core.derivation import phase_factor

from .support import RETRYABLE, F, S, at, ctx, flow_with, run

# --- in-phase progress of exactly 1.0 (the bound itself) --------------------------------------


def test_progress_report_of_exactly_one_is_accepted() -> None:
    """Catches `0.0 <= f <= 1.0` turned into `0.0 <= f < 1.0`."""
    flow = flow_with({"data_import": S.IN_PROGRESS})
    after, entries = run(flow, UpdatePhaseProgress("data_import", 1.0))
    assert after.phase("data_import").progress == 1.0
    # 20 * (0.3 + 0.4 * 1.0): the whole span counts, and no more.
    assert after.progress == 14.0
    assert [e.kind for e in entries] == [HistoryKind.PROGRESS]
    assert entries[0].phase_progress == 1.0


def test_progress_report_of_exactly_zero_is_accepted() -> None:
    """The lower bound too (`0.0 <= f` turned into `0.0 < f`)."""
    flow = flow_with({"data_import": S.IN_PROGRESS})
    half, _ = run(flow, UpdatePhaseProgress("data_import", 0.5))
    after, entries = run(half, UpdatePhaseProgress("data_import", 0.0))
    assert after.phase("data_import").progress == 0.0
    assert after.progress == 6.0
    assert [e.kind for e in entries] == [HistoryKind.PROGRESS]


# --- the clamp: a stored in-phase progress outside [0, 1] --------------------------------------


@pytest.mark.parametrize("stored", [-0.5, -1e9])
def test_negative_stored_progress_does_not_lower_flow_progress(stored: float) -> None:
    """Catches the lower clamp `max(f, 0.0)` removed or weakened."""
    assert phase_factor(S.IN_PROGRESS, stored) == 0.3
    phases = [
        Phase("data_import", S.COMPLETED),
        Phase("field_mapping", S.IN_PROGRESS, progress=stored),
    ]
    # 20 * 1.0 + 20 * 0.3: the running phase counts as having just started.
    assert calculate_progress(DISCOVERY, phases) == 26.0


@pytest.mark.parametrize("stored", [1.5, 1e9])
def test_stored_progress_above_one_counts_as_one(stored: float) -> None:
    """The upper clamp: 0.3 + 0.4 at most, never a share of another phase's weight."""
    assert phase_factor(S.IN_PROGRESS, stored) == pytest.approx(0.7)
    phases = [Phase("data_import", S.IN_PROGRESS, progress=stored)]
    assert calculate_progress(DISCOVERY, phases) == 14.0


def test_in_phase_progress_counts_only_while_in_progress() -> None:
    """A stale in-phase figure on a phase in another state adds nothing."""
    assert phase_factor(S.WAITING_VALIDATION, 0.9) == 0.7
    assert phase_factor(S.RETRY_NEEDED, 1.0) == 0.1


# --- the definition check compares phase names ------------------------------------------------


def test_flow_whose_phase_names_differ_from_its_definition_is_refused() -> None:
    """Catches the phase-name comparison dropped from `_check_definition`.

    Same definition name and version, but the stored phases are not the definition's: applying
    a command would silently derive status and progress from the wrong phases.
    """
    flow = flow_with({"data_import": S.IN_PROGRESS})
    renamed = replace(
        flow,
        phases=(*flow.phases[:-1], replace(flow.phases[-1], name="something_else")),
    )
    with pytest.raises(ValueError, match=r"follows 'discovery' v1"):
        apply_command(renamed, DISCOVERY, UpdatePhaseProgress("data_import", 0.5), ctx(5))
    reordered = replace(flow, phases=tuple(reversed(flow.phases)))
    with pytest.raises(ValueError, match=r"follows 'discovery' v1"):
        apply_command(reordered, DISCOVERY, UpdatePhaseProgress("data_import", 0.5), ctx(5))
    missing = replace(flow, phases=flow.phases[:-1])
    with pytest.raises(ValueError, match=r"follows 'discovery' v1"):
        apply_command(missing, DISCOVERY, UpdatePhaseProgress("data_import", 0.5), ctx(5))


def test_flow_of_another_definition_version_is_refused() -> None:
    flow = replace(flow_with({"data_import": S.IN_PROGRESS}), definition_version=2)
    with pytest.raises(ValueError, match=r"follows 'discovery' v2, not 'discovery' v1"):
        apply_command(flow, DISCOVERY, PauseFlow(), ctx(5))
    other_name = replace(flow_with({}), definition_name="other")
    with pytest.raises(ValueError, match=r"follows 'other' v1, not 'discovery' v1"):
        apply_command(other_name, DISCOVERY, PauseFlow(), ctx(5))


# --- started_at is when the phase last entered IN_PROGRESS -------------------------------------


def test_started_at_is_reset_by_a_retry() -> None:
    """Catches `started_at` kept from the first start (`phase.started_at or now`)."""
    flow = flow_with({})
    flow, _ = run(
        flow,
        TransitionPhase("data_import", S.IN_PROGRESS),  # t=10
        TransitionPhase("data_import", S.FAILED, error=RETRYABLE),  # t=20
        Retry("data_import"),  # t=30: FAILED -> RETRY_NEEDED
        Retry("data_import"),  # t=40: RETRY_NEEDED -> IN_PROGRESS
    )
    phase = flow.phase("data_import")
    assert phase.state is S.IN_PROGRESS
    assert phase.retry_count == 1
    assert phase.started_at == at(40)
    assert phase.state_entered_at == at(40)


def test_started_at_is_reset_by_a_restart_after_rollback() -> None:
    flow = flow_with({})
    flow, _ = run(
        flow,
        TransitionPhase("data_import", S.IN_PROGRESS),  # t=10
        TransitionPhase("data_import", S.COMPLETED),  # t=20
        Rollback("data_import"),  # t=30
    )
    rolled_back = flow.phase("data_import")
    assert rolled_back.state is S.ROLLED_BACK
    assert rolled_back.started_at == at(10)  # kept while not running
    assert rolled_back.completed_at is None
    after = apply_command(
        flow, DISCOVERY, TransitionPhase("data_import", S.IN_PROGRESS), ctx(77)
    ).flow
    restarted = after.phase("data_import")
    assert restarted.started_at == at(77)
    assert restarted.retry_count == 0  # a restart is not a retry


def test_started_at_is_kept_by_changes_that_do_not_start() -> None:
    flow = flow_with({})
    flow, _ = run(
        flow,
        TransitionPhase("data_import", S.IN_PROGRESS),  # t=10
        UpdatePhaseProgress("data_import", 0.4),  # t=20
        TransitionPhase("data_import", S.WAITING_VALIDATION),  # t=30
    )
    phase = flow.phase("data_import")
    assert phase.started_at == at(10)
    assert phase.state_entered_at == at(30)


# --- a phase of weight 0 ----------------------------------------------------------------------


def _zero_weight() -> FlowDefinition:
    """Built when called, not at import: the validation must run under test."""
    return FlowDefinition(
        name="with_gate",
        version=1,
        phases=(
            PhaseDefinition("gate", (), 0, 1, None),
            PhaseDefinition("work", ("gate",), 100, 1, FlowStatus.PLANNING),
        ),
    )


def test_a_phase_of_weight_zero_is_a_valid_definition() -> None:
    """Catches `weight < 0` turned into `weight <= 0` (DESIGN: weights are non-negative)."""
    assert _zero_weight().weights == {"gate": 0, "work": 100}


def test_a_phase_of_weight_zero_adds_nothing_but_still_orders_and_derives() -> None:
    ZERO_WEIGHT = _zero_weight()  # noqa: N806
    flow = flow_with({}, definition=ZERO_WEIGHT)
    flow, _ = run(flow, TransitionPhase("gate", S.IN_PROGRESS), definition=ZERO_WEIGHT)
    assert flow.progress == 0.0
    assert flow.status is F.ACTIVE  # no status group: ACTIVE
    flow, _ = run(flow, TransitionPhase("gate", S.COMPLETED), definition=ZERO_WEIGHT)
    assert flow.progress == 0.0
    flow, _ = run(flow, TransitionPhase("work", S.IN_PROGRESS), definition=ZERO_WEIGHT)
    assert flow.progress == 30.0
    assert flow.status is F.PLANNING
    flow, _ = run(flow, TransitionPhase("work", S.COMPLETED), definition=ZERO_WEIGHT)
    assert flow.progress == 100.0
    assert flow.status is F.COMPLETED


# --- pause then resume returns to the status before the pause ---------------------------------


def _in_error_recovery() -> Flow:
    flow = flow_with({"data_import": S.RETRY_NEEDED})
    assert flow.status is F.RETRY_PENDING
    flow, _ = run(flow, Retry("data_import"))
    assert flow.status is F.ERROR_RECOVERY
    return flow


def test_pause_then_resume_of_a_flow_in_error_recovery_returns_to_error_recovery() -> None:
    """Catches resume deriving from the status group (DATA_GATHERING) instead of the status
    the flow had before the pause."""
    flow = _in_error_recovery()
    paused, pause_entries = run(flow, PauseFlow("look"))
    assert paused.status is F.PAUSED
    assert paused.status_before_pause is F.ERROR_RECOVERY
    assert pause_entries[0].status_before is F.ERROR_RECOVERY
    resumed, entries = run(paused, ResumeFlow("go on"))
    assert resumed.status is F.ERROR_RECOVERY
    assert resumed.status_before_pause is None
    assert [(e.kind, e.status_before, e.status_after) for e in entries] == [
        (HistoryKind.RESUME, F.PAUSED, F.ERROR_RECOVERY)
    ]


def test_progress_while_paused_in_error_recovery_keeps_error_recovery() -> None:
    flow = _in_error_recovery()
    flow, _ = run(
        flow,
        PauseFlow(),
        UpdatePhaseProgress("data_import", 0.5),
    )
    assert flow.status is F.PAUSED
    assert flow.status_before_pause is F.ERROR_RECOVERY
    resumed, _ = run(flow, ResumeFlow())
    assert resumed.status is F.ERROR_RECOVERY


def test_recovery_completing_while_paused_resumes_to_the_status_group() -> None:
    """The recovered phase completes while paused: resume goes to where the flow now is."""
    flow = _in_error_recovery()
    flow, _ = run(
        flow,
        PauseFlow(),
        TransitionPhase("data_import", S.COMPLETED),
    )
    assert flow.status_before_pause is F.DATA_GATHERING
    resumed, _ = run(flow, ResumeFlow())
    assert resumed.status is F.DATA_GATHERING


def test_derivation_keeps_error_recovery_only_from_a_recovering_status() -> None:
    phases = {"data_import": S.IN_PROGRESS}
    for recovering in (F.RETRY_PENDING, F.ERROR_RECOVERY, F.FAILED):
        assert determine_flow_status(DISCOVERY, phases, recovering) is F.ERROR_RECOVERY
    assert determine_flow_status(DISCOVERY, phases, F.INITIALIZED) is F.DATA_GATHERING
    assert determine_flow_status(DISCOVERY, phases, F.PAUSED) is F.PAUSED


def test_resume_of_a_flow_that_is_not_paused_is_a_complete_refusal() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, DISCOVERY, ResumeFlow(), ctx(5))
    assert refused.value.code is ErrorCode.INVALID_FLOW_TRANSITION
    assert refused.value.message == (
        "Only a paused flow can be resumed; the flow is 'data_gathering'"
    )
    assert refused.value.details == {
        "from_status": "data_gathering",
        "valid_transitions": [
            "active",
            "discovery",
            "assessment_ready",
            "planning",
            "waiting_approval",
            "retry_pending",
            "error_recovery",
            "completed",
            "failed",
            "paused",
            "cancelled",
        ],
    }
