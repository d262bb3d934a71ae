"""Every refusal of the command layer in full: code, message, details (and the entries a few
commands record in full), so no part of a refusal can change unnoticed. Found unchecked by
`make mutate`; each case names the rule it refuses by.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowstate.core import (
    DISCOVERY,
    Command,
    Flow,
    FlowStateError,
    HistoryEntry,
    HistoryKind,
    PauseFlow,
    PhaseState,
    ResumeFlow,
    Retry,
    Rollback,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    create_flow,
)

from .support import FATAL, RETRYABLE, T0, TENANT, F, S, at, ctx, flow_with, run

ALL_BUT_PAUSED = [
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
    "cancelled",
]


def _cases() -> dict[str, tuple[Flow, Command]]:
    """Built when called: flows and commands of each case."""
    return {
        "progress-out-of-range": (
            flow_with({"data_import": S.IN_PROGRESS}),
            UpdatePhaseProgress("data_import", 1.5),
        ),
        "progress-not-running": (
            flow_with({"data_import": S.COMPLETED}),
            UpdatePhaseProgress("data_import", 0.5),
        ),
        "progress-terminal": (
            flow_with({"data_import": S.IN_PROGRESS}, status=F.CANCELLED),
            UpdatePhaseProgress("data_import", 0.5),
        ),
        "rollback-with-error": (
            flow_with({"data_import": S.COMPLETED}),
            TransitionPhase("data_import", S.ROLLED_BACK, error=RETRYABLE),
        ),
        "rollback-without-cascade": (
            flow_with({"data_import": S.COMPLETED, "field_mapping": S.IN_PROGRESS}),
            Rollback("data_import", cascade=False),
        ),
        "rollback-terminal": (
            flow_with({"data_import": S.COMPLETED}, status=F.CANCELLED),
            Rollback("data_import"),
        ),
        "retry-not-failed": (flow_with({"data_import": S.IN_PROGRESS}), Retry("data_import")),
        "retry-terminal": (
            flow_with({"data_import": S.FAILED}, status=F.CANCELLED),
            Retry("data_import"),
        ),
        "retry-exhausted": (
            flow_with({"data_import": S.RETRY_NEEDED}, retry_counts={"data_import": 3}),
            Retry("data_import"),
        ),
        "retry-fatal": (
            flow_with({"data_import": S.RETRY_NEEDED}, errors={"data_import": FATAL}),
            Retry("data_import"),
        ),
        "retry-fatal-force-non-admin": (
            flow_with({"data_import": S.FAILED}, errors={"data_import": FATAL}),
            Retry("data_import", force=True),
        ),
        "pause-terminal": (
            flow_with({"data_import": S.COMPLETED}, status=F.CANCELLED),
            PauseFlow(),
        ),
        "pause-paused": (
            flow_with(
                {"data_import": S.IN_PROGRESS},
                status=F.PAUSED,
                status_before_pause=F.DATA_GATHERING,
            ),
            PauseFlow(),
        ),
        "start-while-paused": (
            flow_with({}, status=F.PAUSED, status_before_pause=F.INITIALIZED),
            TransitionPhase("data_import", S.IN_PROGRESS),
        ),
        "start-before-dependency": (
            flow_with({"data_import": S.IN_PROGRESS}),
            TransitionPhase("field_mapping", S.IN_PROGRESS),
        ),
        "error-on-completion": (
            flow_with({"data_import": S.IN_PROGRESS}),
            TransitionPhase("data_import", S.COMPLETED, error=RETRYABLE),
        ),
        "failure-without-error": (
            flow_with({"data_import": S.IN_PROGRESS}),
            TransitionPhase("data_import", S.FAILED),
        ),
        "unknown-target-state": (
            flow_with({"data_import": S.IN_PROGRESS}),
            TransitionPhase("data_import", "sleeping"),  # type: ignore[arg-type]
        ),
        "transition-terminal": (
            flow_with({"data_import": S.IN_PROGRESS}, status=F.CANCELLED),
            TransitionPhase("data_import", S.COMPLETED),
        ),
        "transition-not-in-table": (flow_with({}), TransitionPhase("data_import", S.COMPLETED)),
        "retry-step-by-transition-exhausted": (
            flow_with({"data_import": S.FAILED}, retry_counts={"data_import": 3}),
            TransitionPhase("data_import", S.RETRY_NEEDED),
        ),
    }


EXPECTED: dict[str, dict[str, Any]] = {
    "progress-out-of-range": {
        "status": "failed",
        "error_code": "MALFORMED_REQUEST",
        "message": "In-phase progress must be a number in [0, 1], got 1.5",
        "details": {"field": "progress", "phase": "data_import"},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "progress-not-running": {
        "status": "failed",
        "error_code": "INVALID_PHASE_TRANSITION",
        "message": (
            "Progress can only be reported while phase 'data_import' is "
            "in_progress; it is 'completed'"
        ),
        "details": {
            "phase": "data_import",
            "from_state": "completed",
            "to_state": "completed",
            "valid_transitions": ["retry_needed", "rolled_back"],
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "progress-terminal": {
        "status": "failed",
        "error_code": "FLOW_TERMINAL",
        "message": "Flow is cancelled: phase 'data_import' can no longer change",
        "details": {"phase": "data_import", "flow_status": "cancelled"},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "rollback-with-error": {
        "status": "failed",
        "error_code": "MALFORMED_REQUEST",
        "message": "An error may only be reported with a transition to FAILED or RETRY_NEEDED",
        "details": {"field": "error", "phase": "data_import", "to_state": "rolled_back"},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "rollback-without-cascade": {
        "status": "failed",
        "error_code": "DEPENDENT_PHASES_ACTIVE",
        "message": (
            "Cannot roll back phase 'data_import' without cascade: downstream "
            "phase(s) 'field_mapping' have started"
        ),
        "details": {
            "phase": "data_import",
            "dependent_phases": ["field_mapping"],
            "recovery": ["rollback", "cancel"],
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "rollback-terminal": {
        "status": "failed",
        "error_code": "FLOW_TERMINAL",
        "message": "Flow is cancelled: phase 'data_import' can no longer change",
        "details": {"phase": "data_import", "flow_status": "cancelled"},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "retry-not-failed": {
        "status": "failed",
        "error_code": "INVALID_PHASE_TRANSITION",
        "message": (
            "Only a failed or retry_needed phase can be retried; phase "
            "'data_import' is 'in_progress'"
        ),
        "details": {
            "phase": "data_import",
            "from_state": "in_progress",
            "valid_transitions": [
                "waiting_validation",
                "waiting_approval",
                "completed",
                "failed",
                "retry_needed",
            ],
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "retry-terminal": {
        "status": "failed",
        "error_code": "FLOW_TERMINAL",
        "message": "Flow is cancelled: phase 'data_import' can no longer change",
        "details": {"phase": "data_import", "flow_status": "cancelled"},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "retry-exhausted": {
        "status": "failed",
        "error_code": "MAX_RETRIES_EXCEEDED",
        "message": "Phase 'data_import' has used all 3 retries",
        "details": {
            "phase": "data_import",
            "retry_count": 3,
            "max_retries": 3,
            "attempts_remaining": 0,
            "recovery": ["abandon", "cancel"],
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "retry-fatal": {
        "status": "failed",
        "error_code": "RETRY_NOT_ALLOWED",
        "message": (
            "Phase 'data_import' failed with non-retryable DATA_VALIDATION_FAILED; "
            "retrying it needs admin force"
        ),
        "details": {
            "phase": "data_import",
            "error_code": "DATA_VALIDATION_FAILED",
            "attempts_remaining": 3,
            "recovery": ["force_retry", "abandon", "cancel"],
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "retry-fatal-force-non-admin": {
        "status": "failed",
        "error_code": "RETRY_NOT_ALLOWED",
        "message": (
            "Phase 'data_import' failed with non-retryable DATA_VALIDATION_FAILED; "
            "retrying it needs an admin (force was asked by a non-admin)"
        ),
        "details": {
            "phase": "data_import",
            "error_code": "DATA_VALIDATION_FAILED",
            "attempts_remaining": 3,
            "recovery": ["force_retry", "rollback", "cancel"],
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "pause-terminal": {
        "status": "failed",
        "error_code": "INVALID_FLOW_TRANSITION",
        "message": "Cannot transition flow from 'cancelled' to 'paused' (it is terminal)",
        "details": {"from_status": "cancelled", "to_status": "paused", "valid_transitions": []},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
    "pause-paused": {
        "status": "failed",
        "error_code": "INVALID_FLOW_TRANSITION",
        "message": "Cannot transition flow from 'paused' to 'paused'",
        "details": {
            "from_status": "paused",
            "to_status": "paused",
            "valid_transitions": ALL_BUT_PAUSED,
        },
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    },
}


def _refusal(code: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "failed",
        "error_code": code,
        "message": message,
        "details": details,
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    }


ALL_STATES = [s.value for s in PhaseState]  # the enum is the list; its order is the API's
EXPECTED.update(
    {
        "start-while-paused": _refusal(
            "FLOW_PAUSED",
            "Flow is paused: phase 'data_import' cannot start until it is resumed",
            {
                "phase": "data_import",
                "from_state": "not_started",
                "to_state": "in_progress",
                "recovery": ["resume"],
            },
        ),
        "start-before-dependency": _refusal(
            "PHASE_ORDER_VIOLATION",
            "Phase 'field_mapping' cannot start before 'data_import' completed",
            {
                "phase": "field_mapping",
                "from_state": "not_started",
                "to_state": "in_progress",
                "blocking_phases": ["data_import"],
            },
        ),
        "error-on-completion": _refusal(
            "MALFORMED_REQUEST",
            "An error may only be reported with a transition to FAILED or RETRY_NEEDED, "
            "not to 'completed'",
            {"field": "error", "phase": "data_import", "to_state": "completed"},
        ),
        "failure-without-error": _refusal(
            "MALFORMED_REQUEST",
            "A transition of phase 'data_import' to 'failed' must report the error",
            {"field": "error", "phase": "data_import", "to_state": "failed"},
        ),
        "unknown-target-state": _refusal(
            "MALFORMED_REQUEST",
            "Unknown phase state 'sleeping'",
            {"field": "target_state", "valid_states": ALL_STATES},
        ),
        "transition-terminal": _refusal(
            "FLOW_TERMINAL",
            "Flow is cancelled: phase 'data_import' can no longer change",
            {"phase": "data_import", "flow_status": "cancelled"},
        ),
        "transition-not-in-table": _refusal(
            "INVALID_PHASE_TRANSITION",
            "Cannot transition phase 'data_import' from 'not_started' to 'completed'",
            {
                "phase": "data_import",
                "from_state": "not_started",
                "to_state": "completed",
                "valid_transitions": ["in_progress"],
            },
        ),
        "retry-step-by-transition-exhausted": _refusal(
            "MAX_RETRIES_EXCEEDED",
            "Phase 'data_import' has used all 3 retries",
            {
                "phase": "data_import",
                "retry_count": 3,
                "max_retries": 3,
                "attempts_remaining": 0,
                "recovery": ["rollback", "cancel"],
            },
        ),
    }
)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_refusal_in_full(case: str) -> None:
    flow, command = _cases()[case]
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, DISCOVERY, command, ctx(99))
    assert refused.value.to_dict(T0) == EXPECTED[case]


def test_an_empty_flow_id_is_refused_in_full() -> None:
    with pytest.raises(FlowStateError) as refused:
        create_flow("", TENANT, DISCOVERY, ctx())
    assert refused.value.to_dict(T0) == {
        "status": "failed",
        "error_code": "MALFORMED_REQUEST",
        "message": "flow_id must not be empty",
        "details": {"field": "flow_id"},
        "retry_allowed": False,
        "timestamp": "2025-01-19T10:30:00Z",
    }


def test_the_created_entry_in_full() -> None:
    decision = create_flow("flow-9", TENANT, DISCOVERY, ctx(0, user="alice"))
    assert decision.flow.status is F.INITIALIZED
    assert decision.flow.progress == 0.0
    assert decision.entries == (
        HistoryEntry(
            flow_version=1,
            kind=HistoryKind.CREATED,
            status_before=F.INITIALIZED,
            status_after=F.INITIALIZED,
            occurred_at=T0,
            user_id="alice",
            request_id="req-0",
            metadata={"definition": "discovery", "definition_version": 1},
            phase_states_after={name: S.NOT_STARTED for name in DISCOVERY.phase_names},
            error_codes_after=frozenset(),
        ),
    )
    assert decision.flow.display_name == ""


def test_reasons_and_metadata_are_recorded_on_progress_retry_and_resume() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    _, (progress,) = run(flow, UpdatePhaseProgress("data_import", 0.5, "half", {"rows": 10}))
    assert (progress.reason, progress.metadata) == ("half", {"rows": 10})
    failed = flow_with({"data_import": S.FAILED}, errors={"data_import": RETRYABLE})
    _, (retried,) = run(failed, Retry("data_import", reason="again"))
    assert (retried.reason, retried.metadata) == ("again", {})
    fatal = flow_with({"data_import": S.FAILED}, errors={"data_import": FATAL})
    _, (forced,) = run(fatal, Retry("data_import", force=True, reason="ops"), admin=True)
    assert (forced.reason, forced.metadata) == ("ops", {"forced": True})
    paused = flow_with(
        {"data_import": S.IN_PROGRESS}, status=F.PAUSED, status_before_pause=F.DATA_GATHERING
    )
    _, (resumed,) = run(paused, ResumeFlow("back"))
    assert (resumed.reason, resumed.occurred_at) == ("back", at(10))
