"""ValidateTransition's dry runs in the core (`flowstate.core.preview`), answer by answer.

Each verdict is compared whole with one written out here from DESIGN.md's tables and the
definition, not with what the command functions return, so a dry run that drifts from the
rules (a wrong field, a dropped refusal, a verdict of the wrong flow) fails here.
"""

from __future__ import annotations

import pytest

from flowstate.core import DISCOVERY, ErrorCode, FlowDefinition, PhaseDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.preview import (
    TransitionVerdict,
    preview_flow_transition,
    preview_phase_transition,
    table_flow_transition,
    table_phase_transition,
)

from .support import FATAL, F, S, ctx, flow_with

OPTIONAL_TAIL = FlowDefinition(
    name="optional-tail",
    version=1,
    phases=(
        PhaseDefinition("load", (), 50, 2, None),
        PhaseDefinition("report", ("load",), 50, 0, None, optional=True),
    ),
)


def _refusal(verdict: TransitionVerdict) -> tuple[ErrorCode, str, dict[str, object]]:
    assert verdict.refusal is not None
    return verdict.refusal.code, verdict.refusal.message, verdict.refusal.details


def test_table_flow_transition_allowed_names_the_current_status() -> None:
    verdict = table_flow_transition(F.INITIALIZED, F.DATA_GATHERING)
    assert verdict == TransitionVerdict(None, targets_of_status=F.INITIALIZED)
    assert verdict.allowed


def test_table_flow_transition_refused_out_of_a_terminal_status() -> None:
    verdict = table_flow_transition(F.COMPLETED, F.DISCOVERY)
    assert not verdict.allowed
    assert verdict.targets_of_status is F.COMPLETED
    assert _refusal(verdict) == (
        ErrorCode.INVALID_FLOW_TRANSITION,
        "Cannot transition flow from 'completed' to 'discovery' (it is terminal)",
        {"from_status": "completed", "to_status": "discovery", "valid_transitions": []},
    )


def test_table_phase_transition_of_an_optional_phase_offers_skipped() -> None:
    verdict = table_phase_transition(OPTIONAL_TAIL, "report", S.NOT_STARTED, S.SKIPPED)
    assert verdict == TransitionVerdict(None, targets_of_state=S.NOT_STARTED, optional=True)


def test_table_phase_transition_refuses_skipping_a_required_phase() -> None:
    verdict = table_phase_transition(OPTIONAL_TAIL, "load", S.NOT_STARTED, S.SKIPPED)
    assert verdict.targets_of_state is S.NOT_STARTED
    assert verdict.optional is False
    code, message, details = _refusal(verdict)
    assert code is ErrorCode.INVALID_PHASE_TRANSITION
    assert message == (
        "Cannot transition phase 'load' from 'not_started' to 'skipped' (it is not optional)"
    )
    assert details["valid_transitions"] == ["in_progress"]


def test_table_phase_transition_of_an_unknown_phase_is_invalid_phase() -> None:
    verdict = table_phase_transition(OPTIONAL_TAIL, "nope", S.NOT_STARTED, S.IN_PROGRESS)
    code, _message, details = _refusal(verdict)
    assert code is ErrorCode.INVALID_PHASE
    assert details["valid_phases"] == ["load", "report"]
    assert verdict.optional is False
    assert verdict.targets_of_state is S.NOT_STARTED


def test_preview_phase_of_an_unknown_phase_names_the_flow_version_only() -> None:
    flow = flow_with({})
    verdict = preview_phase_transition(flow, DISCOVERY, "nope", S.IN_PROGRESS, ctx())
    code, _message, _details = _refusal(verdict)
    assert code is ErrorCode.INVALID_PHASE
    assert verdict == TransitionVerdict(verdict.refusal, flow_version=10)


def test_preview_phase_start_allowed_gives_status_progress_and_attempts() -> None:
    flow = flow_with({"data_import": S.COMPLETED}, retry_counts={"field_mapping": 1})
    verdict = preview_phase_transition(flow, DISCOVERY, "field_mapping", S.IN_PROGRESS, ctx())
    assert verdict == TransitionVerdict(
        None,
        targets_of_state=S.NOT_STARTED,
        attempts_remaining=2,
        flow_version=10,
        resulting_status=F.DISCOVERY,
        resulting_progress=26.0,  # 20 done + 30 % of field_mapping's 20
    )
    assert flow.phase("field_mapping").state is S.NOT_STARTED  # nothing was applied


def test_preview_phase_start_out_of_order_names_the_blocking_phases() -> None:
    flow = flow_with({})
    verdict = preview_phase_transition(flow, DISCOVERY, "data_cleansing", S.IN_PROGRESS, ctx())
    code, message, _details = _refusal(verdict)
    assert code is ErrorCode.PHASE_ORDER_VIOLATION
    assert "'field_mapping'" in message
    assert verdict.blocking_phases == ("field_mapping",)
    assert verdict.attempts_remaining == 2
    assert verdict.resulting_status is None


def test_preview_phase_blocking_phases_only_for_a_start_or_a_skip() -> None:
    flow = flow_with({"report": S.IN_PROGRESS}, definition=OPTIONAL_TAIL)
    completing = preview_phase_transition(flow, OPTIONAL_TAIL, "report", S.COMPLETED, ctx())
    assert completing.blocking_phases == ()
    skipping = preview_phase_transition(
        flow_with({}, definition=OPTIONAL_TAIL), OPTIONAL_TAIL, "report", S.SKIPPED, ctx()
    )
    assert skipping.blocking_phases == ("load",)
    assert skipping.optional is True
    assert _refusal(skipping)[0] is ErrorCode.PHASE_ORDER_VIOLATION


def test_preview_phase_failure_needs_no_report_from_the_caller() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    verdict = preview_phase_transition(flow, DISCOVERY, "data_import", S.FAILED, ctx())
    assert verdict.allowed
    assert verdict.resulting_status is F.FAILED
    assert verdict.resulting_progress == 0.0


def test_preview_phase_retry_of_a_fatal_error_keeps_the_phase_error() -> None:
    flow = flow_with({"data_import": S.FAILED}, errors={"data_import": FATAL})
    verdict = preview_phase_transition(flow, DISCOVERY, "data_import", S.RETRY_NEEDED, ctx())
    code, _message, _details = _refusal(verdict)
    assert code is ErrorCode.RETRY_NOT_ALLOWED
    assert verdict.targets_of_state is S.FAILED
    assert verdict.attempts_remaining == 3


def test_preview_flow_pause_and_cancel_are_commands() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    paused = preview_flow_transition(flow, DISCOVERY, F.PAUSED, ctx())
    assert paused == TransitionVerdict(
        None,
        targets_of_status=F.DATA_GATHERING,
        flow_version=10,
        resulting_status=F.PAUSED,
        resulting_progress=0.0,
    )
    cancelled = preview_flow_transition(flow, DISCOVERY, F.CANCELLED, ctx())
    assert cancelled.resulting_status is F.CANCELLED


def test_preview_flow_resume_to_the_status_before_the_pause() -> None:
    flow = flow_with(
        {"data_import": S.COMPLETED, "field_mapping": S.IN_PROGRESS},
        status=F.PAUSED,
        status_before_pause=F.DISCOVERY,
    )
    verdict = preview_flow_transition(flow, DISCOVERY, F.DISCOVERY, ctx())
    assert verdict == TransitionVerdict(
        None,
        targets_of_status=F.PAUSED,
        flow_version=10,
        resulting_status=F.DISCOVERY,
        resulting_progress=flow.progress,  # a resume moves no phase
    )


def test_preview_flow_resume_to_another_status_is_refused_with_where_it_leads() -> None:
    flow = flow_with(
        {"data_import": S.COMPLETED, "field_mapping": S.IN_PROGRESS},
        status=F.PAUSED,
        status_before_pause=F.DISCOVERY,
    )
    verdict = preview_flow_transition(flow, DISCOVERY, F.PLANNING, ctx())
    assert _refusal(verdict) == (
        ErrorCode.INVALID_FLOW_TRANSITION,
        "Resuming the flow leads to 'discovery', not 'planning'",
        {
            "from_status": "paused",
            "to_status": "planning",
            "valid_transitions": ["discovery", "cancelled"],
        },
    )
    assert verdict.resulting_status is None
    assert verdict.targets_of_status is F.PAUSED


def test_preview_flow_refused_command_keeps_the_command_refusal() -> None:
    flow = flow_with({}, status=F.CANCELLED)
    verdict = preview_flow_transition(flow, DISCOVERY, F.PAUSED, ctx())
    assert isinstance(verdict.refusal, FlowStateError)
    assert verdict.resulting_status is None
    assert verdict.flow_version == 10


def test_preview_flow_derived_status_is_answered_by_the_table() -> None:
    flow = flow_with({"data_import": S.IN_PROGRESS})
    allowed = preview_flow_transition(flow, DISCOVERY, F.DISCOVERY, ctx())
    assert allowed == TransitionVerdict(
        None,
        targets_of_status=F.DATA_GATHERING,
        flow_version=10,
        resulting_status=F.DISCOVERY,
        resulting_progress=0.0,
    )
    refused = preview_flow_transition(flow, DISCOVERY, F.INITIALIZED, ctx())
    code, message, _details = _refusal(refused)
    assert code is ErrorCode.INVALID_FLOW_TRANSITION
    assert message == "Cannot transition flow from 'data_gathering' to 'initialized'"
    assert refused.resulting_status is None


@pytest.mark.parametrize("target", [S.IN_PROGRESS, S.SKIPPED])
def test_preview_phase_of_a_paused_flow_is_refused(target: S) -> None:
    flow = flow_with(
        {}, definition=OPTIONAL_TAIL, status=F.PAUSED, status_before_pause=F.INITIALIZED
    )
    verdict = preview_phase_transition(flow, OPTIONAL_TAIL, "load", target, ctx())
    assert not verdict.allowed
