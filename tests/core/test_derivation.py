"""Flow status derivation (the 8 ordered rules) and progress (DESIGN.md section 2)."""

from __future__ import annotations

import pytest

from flowstate.core import (
    DISCOVERY,
    FlowStatus,
    Phase,
    PhaseState,
    calculate_progress,
    determine_flow_status,
)

from .support import BRANCHY, F, S

NAMES = DISCOVERY.phase_names


def _states(*states: PhaseState) -> dict[str, PhaseState]:
    """Discovery phase states in definition order; missing ones stay NOT_STARTED."""
    return dict(zip(NAMES, states, strict=False))


# --- status: one group of cases per rule ------------------------------------------------------


@pytest.mark.parametrize("sticky", [F.CANCELLED, F.COMPLETED, F.PAUSED])
@pytest.mark.parametrize(
    "states",
    [_states(), _states(S.COMPLETED, S.FAILED), _states(*[S.COMPLETED] * 5)],
    ids=["nothing-started", "failed", "all-completed"],
)
def test_rule_1_terminal_and_paused_are_sticky(
    sticky: FlowStatus, states: dict[str, PhaseState]
) -> None:
    assert determine_flow_status(DISCOVERY, states, sticky) is sticky


@pytest.mark.parametrize("current", [F.INITIALIZED, F.ACTIVE, F.DISCOVERY, F.FAILED])
def test_rule_2_nothing_started_keeps_the_current_status(current: FlowStatus) -> None:
    assert determine_flow_status(DISCOVERY, _states(), current) is current


def test_rule_3_every_phase_completed() -> None:
    assert determine_flow_status(DISCOVERY, _states(*[S.COMPLETED] * 5), F.PLANNING) is F.COMPLETED


@pytest.mark.parametrize(
    "states",
    [
        _states(S.FAILED),
        _states(S.COMPLETED, S.FAILED),
        _states(S.COMPLETED, S.COMPLETED, S.WAITING_APPROVAL, S.FAILED),
    ],
    ids=["first-failed", "second-failed", "failed-beats-waiting-approval"],
)
def test_rule_4_failed_without_retry_or_running_phase(states: dict[str, PhaseState]) -> None:
    assert determine_flow_status(DISCOVERY, states, F.DISCOVERY) is F.FAILED


@pytest.mark.parametrize(
    "states",
    [
        _states(S.COMPLETED, S.RETRY_NEEDED),
        _states(S.RETRY_NEEDED, S.COMPLETED, S.FAILED),
        _states(S.COMPLETED, S.IN_PROGRESS, S.RETRY_NEEDED),
    ],
    ids=["retry-needed", "retry-needed-beats-failed", "retry-needed-beats-running"],
)
def test_rule_5_retry_needed(states: dict[str, PhaseState]) -> None:
    assert determine_flow_status(DISCOVERY, states, F.DISCOVERY) is F.RETRY_PENDING


@pytest.mark.parametrize("current", [F.RETRY_PENDING, F.ERROR_RECOVERY, F.FAILED])
def test_rule_6_running_again_after_trouble_is_error_recovery(current: FlowStatus) -> None:
    states = _states(S.COMPLETED, S.IN_PROGRESS)
    assert determine_flow_status(DISCOVERY, states, current) is F.ERROR_RECOVERY


def test_rule_6_needs_a_troubled_current_status() -> None:
    states = _states(S.COMPLETED, S.IN_PROGRESS)
    assert determine_flow_status(DISCOVERY, states, F.DATA_GATHERING) is F.DISCOVERY


def test_rule_4_does_not_apply_while_a_phase_runs() -> None:
    # A parallel branch still running: neither FAILED nor (from a healthy status) recovery;
    # rule 8 then picks "right", the furthest started phase, which has no group.
    states = {"extract": S.COMPLETED, "left": S.FAILED, "right": S.IN_PROGRESS}
    assert determine_flow_status(BRANCHY, states, F.DISCOVERY) is F.ACTIVE
    assert determine_flow_status(BRANCHY, states, F.FAILED) is F.ERROR_RECOVERY


@pytest.mark.parametrize("current", [F.DISCOVERY, F.ERROR_RECOVERY])
def test_rule_7_waiting_approval(current: FlowStatus) -> None:
    states = _states(S.COMPLETED, S.WAITING_APPROVAL)
    assert determine_flow_status(DISCOVERY, states, current) is F.WAITING_APPROVAL


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (_states(S.IN_PROGRESS), F.DATA_GATHERING),
        (_states(S.COMPLETED), F.DATA_GATHERING),
        (_states(S.COMPLETED, S.IN_PROGRESS), F.DISCOVERY),
        (_states(S.COMPLETED, S.COMPLETED, S.WAITING_VALIDATION), F.DISCOVERY),
        (_states(S.COMPLETED, S.COMPLETED, S.COMPLETED, S.COMPLETED), F.ASSESSMENT_READY),
        (_states(S.COMPLETED, S.COMPLETED, S.COMPLETED, S.COMPLETED, S.IN_PROGRESS), F.PLANNING),
        (_states(S.COMPLETED, S.ROLLED_BACK), F.DISCOVERY),
    ],
    ids=[
        "import-running",
        "import-completed",
        "mapping-running",
        "cleansing-validating",
        "inventory-completed",
        "analysis-running",
        "rolled-back-counts-as-started",
    ],
)
def test_rule_8_status_group_of_the_furthest_started_phase(
    states: dict[str, PhaseState], expected: FlowStatus
) -> None:
    assert determine_flow_status(DISCOVERY, states, F.INITIALIZED) is expected


def test_rule_8_active_when_the_phase_has_no_status_group() -> None:
    assert determine_flow_status(BRANCHY, {"extract": S.IN_PROGRESS}, F.INITIALIZED) is F.ACTIVE
    states = {"extract": S.COMPLETED, "left": S.COMPLETED, "right": S.IN_PROGRESS}
    assert determine_flow_status(BRANCHY, states, F.DISCOVERY) is F.ACTIVE


def test_derivation_accepts_phase_values_and_ignores_unknown_names() -> None:
    phases = [Phase("data_import", S.COMPLETED), Phase("field_mapping", S.IN_PROGRESS)]
    assert determine_flow_status(DISCOVERY, phases, F.INITIALIZED) is F.DISCOVERY
    states = {"data_import": S.COMPLETED, "no_such_phase": S.FAILED}
    assert determine_flow_status(DISCOVERY, states, F.INITIALIZED) is F.DATA_GATHERING


# --- progress -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (_states(), 0.0),
        (_states(S.IN_PROGRESS), 6.0),
        (_states(S.COMPLETED), 20.0),
        (_states(S.COMPLETED, S.IN_PROGRESS, S.NOT_STARTED, S.WAITING_APPROVAL, S.FAILED), 42.0),
        (_states(S.COMPLETED, S.RETRY_NEEDED), 22.0),
        (_states(*[S.COMPLETED] * 5), 100.0),
        (_states(S.WAITING_VALIDATION), 14.0),
        (_states(S.COMPLETED, S.ROLLED_BACK), 20.0),
    ],
    ids=[
        "nothing",
        "one-in-progress",
        "one-completed",
        "design-example-42",
        "design-example-22",
        "all-completed",
        "waiting-validation",
        "rolled-back-counts-zero",
    ],
)
def test_progress_examples(states: dict[str, PhaseState], expected: float) -> None:
    assert calculate_progress(DISCOVERY, states) == expected


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 6.0), (0.25, 8.0), (0.5, 10.0), (1.0, 14.0), (0.333, 8.7)],
)
def test_in_phase_progress_moves_smoothly(fraction: float, expected: float) -> None:
    phases = [Phase("data_import", S.IN_PROGRESS, progress=fraction)]
    assert calculate_progress(DISCOVERY, phases) == expected


def test_in_phase_progress_counts_only_while_in_progress() -> None:
    phases = [Phase("data_import", S.WAITING_VALIDATION, progress=1.0)]
    assert calculate_progress(DISCOVERY, phases) == 14.0


def test_out_of_range_stored_progress_is_clamped() -> None:
    phases = [Phase("data_import", S.IN_PROGRESS, progress=7.0)]
    assert calculate_progress(DISCOVERY, phases) == 14.0
