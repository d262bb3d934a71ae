"""FlowStateError: structured, JSON-able, classified."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from flowstate.core import RETRYABLE_ERROR_CODES, ErrorCode, FlowStateError, FlowStatus, PhaseState


def test_details_are_normalised_to_json_values() -> None:
    error = FlowStateError(
        ErrorCode.INVALID_PHASE_TRANSITION,
        "nope",
        phase="data_import",
        from_state=PhaseState.COMPLETED,
        valid_transitions=(PhaseState.ROLLED_BACK, PhaseState.RETRY_NEEDED),
        statuses=frozenset({FlowStatus.PAUSED, FlowStatus.ACTIVE}),
        nested={"at": datetime(2025, 1, 1, tzinfo=UTC)},
    )
    assert error.details == {
        "phase": "data_import",
        "from_state": "completed",
        "valid_transitions": ["rolled_back", "retry_needed"],
        "statuses": ["active", "paused"],
        "nested": {"at": "2025-01-01T00:00:00Z"},
    }
    json.dumps(error.to_dict(datetime(2025, 1, 1, tzinfo=UTC)))
    assert (error.code, error.message, str(error)) == (
        ErrorCode.INVALID_PHASE_TRANSITION,
        "nope",
        "nope",
    )
    assert "INVALID_PHASE_TRANSITION" in repr(error)


# DESIGN.md section 2, "Failure reports", written out here rather than read from the code.
DESIGN_RETRYABLE = {
    ErrorCode.PHASE_EXECUTION_FAILED,
    ErrorCode.AGENT_TIMEOUT,
    ErrorCode.EXTERNAL_SERVICE_ERROR,
    ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE,
    # docs/child_flows.md: a phase whose child flow was cancelled may be retried (a new child).
    ErrorCode.CHILD_FLOW_CANCELLED,
}


def test_retryable_codes_are_designs() -> None:
    assert RETRYABLE_ERROR_CODES == DESIGN_RETRYABLE


def test_retry_allowed_follows_the_classification_unless_given() -> None:
    for code in ErrorCode:
        assert FlowStateError(code, "x").retry_allowed is (code in DESIGN_RETRYABLE)
    assert FlowStateError(ErrorCode.VERSION_CONFLICT, "x", retry_allowed=True).retry_allowed


def test_timestamps_keep_their_offset_unless_utc() -> None:
    error = FlowStateError(ErrorCode.FLOW_PAUSED, "x")
    moment = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert error.to_dict(moment)["timestamp"] == "2025-01-01T12:00:00+02:00"
