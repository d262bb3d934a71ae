"""The seed guide's own examples run unchanged against `flowstate.flow_state_machine`.

The code blocks below are copied verbatim from seed/flow-state-machine-guide.md ("Usage Examples":
"Basic Phase Transition" and "Get Recovery Options"; "Structured Error Responses"); the only
change made before running them is the import path (``app.services.flow_state_machine`` →
``flowstate.flow_state_machine``). The other usage examples call the guide's database command
layer, whose counterpart is the gRPC API (covered by the server's tests).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flowstate.flow_state_machine import (
    ErrorCode,
    FlowStateMachine,
    FlowTransitionError,
    PhaseState,
    PhaseTransition,
)

GUIDE_IMPORT = "from app.services.flow_state_machine import FlowStateMachine, PhaseState"
OUR_IMPORT = "from flowstate.flow_state_machine import FlowStateMachine, PhaseState"

BASIC_PHASE_TRANSITION = """\
from app.services.flow_state_machine import FlowStateMachine, PhaseState

state_machine = FlowStateMachine()

# Validate transition
is_valid, error = state_machine.validate_phase_transition(
    "data_import", PhaseState.NOT_STARTED, PhaseState.IN_PROGRESS
)

if is_valid:
    # Execute transition
    success, error = state_machine.transition_phase(
        phase="data_import",
        current_state=PhaseState.NOT_STARTED,
        target_state=PhaseState.IN_PROGRESS,
        reason="user_initiated",
        user_id="user123"
    )
"""

GET_RECOVERY_OPTIONS = """\
phase_states = {
    "data_import": PhaseState.COMPLETED,
    "field_mapping": PhaseState.FAILED,
    "data_cleansing": PhaseState.NOT_STARTED
}

recovery_options = state_machine.get_recovery_options(phase_states)
# Returns list of available recovery actions
"""

STRUCTURED_ERROR_RESPONSE = """\
{
    "status": "failed",
    "error_code": "INVALID_PHASE_TRANSITION",
    "message": "Cannot transition phase 'data_import' from 'not_started' to 'completed'",
    "details": {
        "valid_transitions": ["in_progress"]
    },
    "retry_allowed": false,
    "timestamp": "2025-01-19T10:30:00Z"
}
"""


def _run(*blocks: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    source = "\n".join(blocks)
    exec(compile(source.replace(GUIDE_IMPORT, OUR_IMPORT), "<seed guide>", "exec"), namespace)
    return namespace


def test_the_basic_phase_transition_example_runs_unchanged() -> None:
    assert GUIDE_IMPORT in BASIC_PHASE_TRANSITION
    done = _run(BASIC_PHASE_TRANSITION)
    assert (done["is_valid"], done["success"], done["error"]) == (True, True, None)
    [record] = done["state_machine"].transition_history
    assert isinstance(record, PhaseTransition)
    assert (record.phase, record.reason, record.user_id) == (
        "data_import",
        "user_initiated",
        "user123",
    )
    assert (record.from_state, record.to_state) == (PhaseState.NOT_STARTED, "in_progress")
    assert record.metadata == {}
    assert record.timestamp.tzinfo is not None


def test_the_recovery_options_example_runs_unchanged() -> None:
    done = _run(BASIC_PHASE_TRANSITION, GET_RECOVERY_OPTIONS)
    options = done["recovery_options"]
    assert [(o["action"], o["phase"]) for o in options][:2] == [
        ("retry", "field_mapping"),
        ("rollback", "field_mapping"),
    ]


def test_a_refusal_is_the_guides_structured_error_response() -> None:
    stamp = datetime(2025, 1, 19, 10, 30, tzinfo=UTC)
    machine = FlowStateMachine(clock=lambda: stamp)
    is_valid, error = machine.validate_phase_transition(
        "data_import", PhaseState.NOT_STARTED, PhaseState.COMPLETED
    )
    assert not is_valid
    assert isinstance(error, FlowTransitionError)
    assert error.error_code == "INVALID_PHASE_TRANSITION"
    assert error.error_code is error.code is ErrorCode.INVALID_PHASE_TRANSITION
    guide = json.loads(STRUCTURED_ERROR_RESPONSE)
    response = machine.create_error_response(error.error_code, error.message, **error.details)
    assert set(response) == set(guide)
    assert {k: v for k, v in response.items() if k != "details"} == {
        k: v for k, v in guide.items() if k != "details"
    }
    # The guide shows one detail; the core adds the phase and both states next to it.
    assert response["details"]["valid_transitions"] == guide["details"]["valid_transitions"]
    assert error.to_dict(stamp) == response
