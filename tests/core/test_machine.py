"""The seed guide's FlowStateMachine API (`flowstate.flow_state_machine`) works as its usage
examples show."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flowstate.core import BUILTIN_DEFINITIONS, DISCOVERY
from flowstate.flow_state_machine import (
    ErrorCode,
    FlowStateMachine,
    FlowStatus,
    FlowTransitionError,
    PhaseState,
    PhaseTransition,
)

from .support import BRANCHY, T0

S = PhaseState


@pytest.fixture
def machine() -> FlowStateMachine:
    return FlowStateMachine(clock=lambda: T0)


def test_the_guide_basic_phase_transition_example(machine: FlowStateMachine) -> None:
    is_valid, error = machine.validate_phase_transition(
        "data_import", PhaseState.NOT_STARTED, PhaseState.IN_PROGRESS
    )
    assert (is_valid, error) == (True, None)
    success, error = machine.transition_phase(
        phase="data_import",
        current_state=PhaseState.NOT_STARTED,
        target_state=PhaseState.IN_PROGRESS,
        reason="user_initiated",
        user_id="user123",
    )
    assert (success, error) == (True, None)
    assert machine.transition_history == [
        PhaseTransition(
            phase="data_import",
            from_state=PhaseState.NOT_STARTED,
            to_state=PhaseState.IN_PROGRESS,
            reason="user_initiated",
            user_id="user123",
            timestamp=T0,
            metadata={},
        )
    ]
    record = machine.transition_history[0]
    assert (record.from_state, record.to_state) == ("not_started", "in_progress")


def test_the_guide_error_example(machine: FlowStateMachine) -> None:
    is_valid, error = machine.validate_phase_transition("data_import", S.NOT_STARTED, S.COMPLETED)
    assert not is_valid
    assert error is not None
    assert error.to_dict(datetime(2025, 1, 19, 10, 30, tzinfo=UTC)) == {
        "status": "failed",
        "error_code": "INVALID_PHASE_TRANSITION",
        "message": "Cannot transition phase 'data_import' from 'not_started' to 'completed'",
        "details": {
            "phase": "data_import",
            "from_state": "not_started",
            "to_state": "completed",
            "valid_transitions": ["in_progress"],
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    }


def test_refused_transitions_are_not_recorded(machine: FlowStateMachine) -> None:
    success, error = machine.transition_phase("data_import", S.COMPLETED, S.NOT_STARTED, "x")
    assert not success
    assert error is not None
    assert machine.transition_history == []


def test_states_may_be_given_as_strings_and_garbage_is_malformed(
    machine: FlowStateMachine,
) -> None:
    assert machine.validate_phase_transition("data_import", "not_started", "in_progress") == (
        True,
        None,
    )
    ok, error = machine.validate_phase_transition("data_import", "sleeping", "in_progress")
    assert not ok
    assert error is not None
    assert error.code is ErrorCode.MALFORMED_REQUEST
    ok, error = machine.validate_phase_transition("data_export", S.NOT_STARTED, S.IN_PROGRESS)
    assert error is not None
    assert error.code is ErrorCode.INVALID_PHASE
    assert isinstance(error, FlowTransitionError)
    assert error.error_code == "INVALID_PHASE"


def test_validate_flow_transition(machine: FlowStateMachine) -> None:
    assert machine.validate_flow_transition(FlowStatus.INITIALIZED, FlowStatus.ACTIVE) == (
        True,
        None,
    )
    ok, error = machine.validate_flow_transition(FlowStatus.COMPLETED, FlowStatus.ACTIVE)
    assert not ok
    assert error is not None
    assert error.code is ErrorCode.INVALID_FLOW_TRANSITION
    assert error.details["valid_transitions"] == []


def test_validate_phase_order(machine: FlowStateMachine) -> None:
    states = {"data_import": S.IN_PROGRESS}
    ok, message = machine.validate_phase_order(states, "field_mapping", S.IN_PROGRESS)
    assert not ok
    assert message == "Phase 'field_mapping' cannot start before 'data_import' completed"
    assert machine.validate_phase_order(states, "field_mapping", S.FAILED) == (True, None)
    states = {"data_import": S.COMPLETED}
    assert machine.validate_phase_order(states, "field_mapping", S.IN_PROGRESS) == (True, None)


def test_progress_and_status(machine: FlowStateMachine) -> None:
    states = {
        "data_import": S.COMPLETED,
        "field_mapping": S.IN_PROGRESS,
        "data_cleansing": S.NOT_STARTED,
        "asset_inventory": S.WAITING_APPROVAL,
        "dependency_analysis": S.FAILED,
    }
    assert machine.calculate_progress(states) == 42.0
    expected = FlowStatus.WAITING_APPROVAL  # rule 7: a phase runs, so rule 4 does not apply
    assert machine.determine_flow_status(states, FlowStatus.DISCOVERY) is expected
    assert machine.determine_flow_status(states, "completed") is FlowStatus.COMPLETED
    assert machine.calculate_progress({"data_import": "completed"}) == 20.0


def test_the_guide_recovery_options_example(machine: FlowStateMachine) -> None:
    phase_states = {
        "data_import": PhaseState.COMPLETED,
        "field_mapping": PhaseState.FAILED,
        "data_cleansing": PhaseState.NOT_STARTED,
    }
    options = machine.get_recovery_options(phase_states)
    assert [(o["action"], o["phase"], o["target_state"]) for o in options] == [
        ("retry", "field_mapping", "retry_needed"),
        ("rollback", "field_mapping", "rolled_back"),
        ("rollback", "data_import", "rolled_back"),
        ("cancel", None, None),
    ]
    assert options[0]["allowed"] is True
    assert options[0]["attempts_remaining"] == 3


def test_class_and_instance_attributes(machine: FlowStateMachine) -> None:
    phases, weights = machine.PHASES, machine.PHASE_WEIGHTS
    assert phases == list(DISCOVERY.phase_names)
    assert weights == dict.fromkeys(DISCOVERY.phase_names, 20)
    assert machine.PHASE_PROGRESS_WEIGHTS[S.WAITING_APPROVAL] == 0.8
    assert machine.VALID_PHASE_TRANSITIONS[S.NOT_STARTED] == {S.IN_PROGRESS, S.SKIPPED}
    assert machine.get_phase_dependencies() == {
        "data_import": [],
        "field_mapping": ["data_import"],
        "data_cleansing": ["field_mapping"],
        "asset_inventory": ["data_cleansing"],
        "dependency_analysis": ["asset_inventory"],
    }
    assert FlowStateMachine().definition is BUILTIN_DEFINITIONS["discovery"]


def test_a_machine_for_a_custom_definition() -> None:
    machine = FlowStateMachine(BRANCHY)
    assert machine.PHASES == ["extract", "left", "right", "merge"]
    ok, message = machine.validate_phase_order(
        {"extract": S.COMPLETED, "left": S.COMPLETED}, "merge", S.IN_PROGRESS
    )
    assert (ok, message) == (False, "Phase 'merge' cannot start before 'right' completed")


@pytest.mark.parametrize(
    ("code", "retry_allowed"),
    [
        ("PHASE_EXECUTION_FAILED", True),
        ("AGENT_TIMEOUT", True),
        ("EXTERNAL_SERVICE_ERROR", True),
        ("TEMPORARY_RESOURCE_UNAVAILABLE", True),
        ("INVALID_TRANSITION", False),
        ("DATA_VALIDATION_FAILED", False),
        ("PERMISSION_DENIED", False),
        ("MALFORMED_REQUEST", False),
        ("INVALID_PHASE_TRANSITION", False),
    ],
)
def test_create_error_response(machine: FlowStateMachine, code: str, retry_allowed: bool) -> None:
    response = machine.create_error_response(code, "it broke", phase="data_import")
    assert response == {
        "status": "failed",
        "error_code": code,
        "message": "it broke",
        "details": {"phase": "data_import"},
        "retry_allowed": retry_allowed,
        "timestamp": "2025-01-19T10:30:00Z",
    }
    assert isinstance(FlowTransitionError(ErrorCode(code), "x"), Exception)


ALL_STATUSES = [
    "initialized",
    "active",
    "data_gathering",
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
]
ALL_STATES = [s.value for s in PhaseState]  # the enum is the list; its order is the API's


@pytest.mark.parametrize(("current", "target"), [("bogus", "active"), ("active", "bogus")])
def test_an_unknown_flow_status_is_a_complete_malformed_request(
    machine: FlowStateMachine, current: str, target: str
) -> None:
    ok, error = machine.validate_flow_transition(current, target)
    assert not ok
    assert error is not None
    assert error.to_dict(T0) == {
        "status": "failed",
        "error_code": "MALFORMED_REQUEST",
        "message": "Unknown flow status 'bogus'",
        "details": {"field": "status", "valid_statuses": ALL_STATUSES},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    }
    with pytest.raises(FlowTransitionError) as raised:
        machine.determine_flow_status({}, "bogus")
    assert raised.value.details == {"field": "status", "valid_statuses": ALL_STATUSES}


@pytest.mark.parametrize(
    ("current", "target"), [("sleeping", "in_progress"), ("not_started", "sleeping")]
)
def test_an_unknown_phase_state_is_a_complete_malformed_request(
    machine: FlowStateMachine, current: str, target: str
) -> None:
    ok, error = machine.validate_phase_transition("data_import", current, target)
    assert not ok
    assert error is not None
    assert (error.code, error.message) == (
        ErrorCode.MALFORMED_REQUEST,
        "Unknown phase state 'sleeping'",
    )
    assert error.details == {"field": "state", "valid_states": ALL_STATES}
    assert machine.validate_phase_order(
        {"data_import": "sleeping"}, "field_mapping", "in_progress"
    ) == (
        False,
        "Unknown phase state 'sleeping'",
    )
    assert machine.validate_phase_order({}, "nope", "in_progress") == (
        False,
        "Unknown phase 'nope' in flow definition 'discovery'",
    )


def _option(
    action: str,
    phase: str | None,
    target_state: str | None,
    target_status: str | None,
    reason: str,
    *,
    attempts: int | None = None,
    blocked_by: str | None = None,
    detail: str = "",
) -> dict[str, object]:
    return {
        "action": action,
        "phase": phase,
        "target_state": target_state,
        "target_status": target_status,
        "reason": reason,
        "allowed": blocked_by is None,
        "blocked_by": blocked_by,
        "blocking_detail": detail,
        "attempts_remaining": attempts,
    }


def test_recovery_options_are_complete_dicts(machine: FlowStateMachine) -> None:
    options = machine.get_recovery_options({"data_import": "completed", "field_mapping": "failed"})
    assert options == [
        _option(
            "retry",
            "field_mapping",
            "retry_needed",
            "retry_pending",
            "Retry: mark failed phase 'field_mapping' for retry; 3 attempt(s) left",
            attempts=3,
        ),
        _option(
            "rollback",
            "field_mapping",
            "rolled_back",
            "discovery",
            "Roll back failed phase 'field_mapping' so it can be restarted",
        ),
        _option(
            "rollback",
            "data_import",
            "rolled_back",
            "discovery",
            "Roll back completed phase 'data_import' (and downstream field_mapping) to revise it",
        ),
        _option("cancel", None, None, "cancelled", "Cancel the flow for good"),
    ]


def test_blocked_recovery_options_come_last_with_what_blocks_them(
    machine: FlowStateMachine,
) -> None:
    options = machine.get_recovery_options(
        {"data_import": "in_progress", "field_mapping": "retry_needed"}
    )
    assert options == [
        _option(
            "abandon",
            "field_mapping",
            "failed",
            "error_recovery",
            "Stop retrying phase 'field_mapping': mark it failed so it can be rolled back",
        ),
        _option("cancel", None, None, "cancelled", "Cancel the flow for good"),
        _option(
            "retry",
            "field_mapping",
            "in_progress",
            None,
            "Retry: restart phase 'field_mapping' (counts one attempt); 3 attempt(s) left",
            attempts=3,
            blocked_by="PHASE_ORDER_VIOLATION",
            detail="Phase 'field_mapping' cannot start before 'data_import' completed",
        ),
    ]


def test_the_default_clock_is_aware_utc() -> None:
    """Without an injected clock the machine stamps with the current UTC time, never naive."""
    before = datetime.now(UTC)
    response = FlowStateMachine().create_error_response(ErrorCode.FLOW_PAUSED, "paused")
    stamped = datetime.fromisoformat(response["timestamp"].replace("Z", "+00:00"))
    assert response["timestamp"].endswith("Z")
    assert stamped.tzinfo is not None
    assert stamped >= before.replace(microsecond=0)


def test_a_completed_flow_has_no_recovery_options(machine: FlowStateMachine) -> None:
    """The machine derives the flow's status from the phases: all COMPLETED is terminal."""
    assert machine.get_recovery_options({name: "completed" for name in machine.PHASES}) == []
