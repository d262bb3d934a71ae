"""A worker's heartbeat is refused as a progress report is (`check_heartbeat`): an unknown
phase, an ended flow, a phase that is not running. Found missing by ``make mutate``
(docs/testing.md): no core test called it, so none of its refusals was pinned.
"""

from __future__ import annotations

import pytest

from flowstate.core.commands import check_heartbeat
from flowstate.core.definitions import FlowDefinition, PhaseDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode

from .support import F, S, flow_with

CRAWL = FlowDefinition(
    name="crawl",
    version=1,
    phases=(
        PhaseDefinition("fetch", (), 80, 0, None),
        PhaseDefinition("enrich", ("fetch",), 20, 0, None, optional=True),
    ),
)


def _refusal(states: dict[str, S], phase: str, status: F | None = None) -> FlowStateError:
    """The refusal of a heartbeat of `phase` in a crawl flow with `states` (and `status`)."""
    flow = flow_with(states, definition=CRAWL, status=status)
    with pytest.raises(FlowStateError) as refused:
        check_heartbeat(flow, CRAWL, phase)
    return refused.value


def test_a_heartbeat_of_a_running_phase_passes() -> None:
    check_heartbeat(flow_with({"fetch": S.IN_PROGRESS}, definition=CRAWL), CRAWL, "fetch")
    both = flow_with({"fetch": S.COMPLETED, "enrich": S.IN_PROGRESS}, definition=CRAWL)
    check_heartbeat(both, CRAWL, "enrich")


def test_a_heartbeat_of_an_unknown_phase_names_the_known_ones() -> None:
    refusal = _refusal({}, "load")
    assert refusal.code is ErrorCode.INVALID_PHASE
    assert refusal.message == "Unknown phase 'load' in flow definition 'crawl'"
    assert refusal.details == {"phase": "load", "valid_phases": ["fetch", "enrich"]}


def test_a_heartbeat_on_an_ended_flow_names_the_phase() -> None:
    refusal = _refusal({"fetch": S.IN_PROGRESS}, "fetch", status=F.CANCELLED)
    assert refusal.code is ErrorCode.FLOW_TERMINAL
    assert refusal.message == "Flow is cancelled: phase 'fetch' can no longer change"
    assert refusal.details == {"phase": "fetch", "flow_status": "cancelled"}


def test_a_heartbeat_of_a_phase_that_does_not_run_is_an_invalid_transition() -> None:
    refusal = _refusal({"fetch": S.FAILED}, "fetch")
    assert refusal.code is ErrorCode.INVALID_PHASE_TRANSITION
    assert refusal.message == (
        "Heartbeats can only be reported while phase 'fetch' is in_progress; it is 'failed'"
    )
    assert refusal.details == {
        "phase": "fetch",
        "from_state": "failed",
        "to_state": "failed",
        "valid_transitions": ["retry_needed", "rolled_back"],
    }


def test_the_refusal_for_an_optional_phase_offers_the_skip() -> None:
    refusal = _refusal({"fetch": S.COMPLETED}, "enrich")
    assert refusal.message == (
        "Heartbeats can only be reported while phase 'enrich' is in_progress; it is 'not_started'"
    )
    assert refusal.details == {
        "phase": "enrich",
        "from_state": "not_started",
        "to_state": "not_started",
        "valid_transitions": ["in_progress", "skipped"],
    }
