"""Recovery options: what each state offers, what blocks it, the ranking, and that it applies."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flowstate.core import (
    DISCOVERY,
    ErrorCode,
    Flow,
    FlowDefinition,
    FlowStateError,
    PauseFlow,
    RecoveryAction,
    RecoveryOption,
    Retry,
    apply_command,
    get_recovery_options,
)

from .support import BRANCHY, FATAL, F, S, ctx, flow_with, run

A = RecoveryAction


def summary(options: list[RecoveryOption]) -> list[tuple[str, str | None, bool]]:
    """(action, phase, allowed) of each option, in ranked order."""
    return [(o.action.value, o.phase, o.allowed) for o in options]


def test_failed_phase_offers_retry_then_rollback() -> None:
    flow = flow_with({"data_import": S.COMPLETED, "field_mapping": S.FAILED})
    options = get_recovery_options(flow, DISCOVERY)
    assert summary(options) == [
        ("retry", "field_mapping", True),
        ("rollback", "field_mapping", True),
        ("rollback", "data_import", True),
        ("cancel", None, True),
    ]
    retry = options[0]
    assert (retry.target_state, retry.target_status) == (S.RETRY_NEEDED, F.RETRY_PENDING)
    assert retry.attempts_remaining == 3
    assert retry.command == Retry("field_mapping", reason="recovery: retry")
    assert (retry.blocked_by, retry.blocking_detail) == (None, "")
    cancel = options[-1]
    assert (cancel.target_state, cancel.target_status) == (None, F.CANCELLED)


def test_retry_needed_phase_offers_retry_then_abandon() -> None:
    flow = flow_with({"data_import": S.RETRY_NEEDED})
    options = get_recovery_options(flow, DISCOVERY)
    assert summary(options) == [
        ("retry", "data_import", True),
        ("abandon", "data_import", True),
        ("cancel", None, True),
    ]
    assert (options[0].target_state, options[0].target_status) == (S.IN_PROGRESS, F.ERROR_RECOVERY)
    assert options[1].target_state is S.FAILED


def test_completed_phases_offer_rollback_latest_first() -> None:
    flow = flow_with(
        {"data_import": S.COMPLETED, "field_mapping": S.COMPLETED, "data_cleansing": S.IN_PROGRESS}
    )
    options = get_recovery_options(flow, DISCOVERY)
    assert summary(options) == [
        ("rollback", "field_mapping", True),
        ("rollback", "data_import", True),
        ("cancel", None, True),
    ]
    assert "downstream data_cleansing" in options[0].reason
    assert options[0].target_state is S.ROLLED_BACK


def test_rolled_back_phase_offers_restart_once_its_dependencies_completed() -> None:
    flow = flow_with({"data_import": S.ROLLED_BACK, "field_mapping": S.ROLLED_BACK})
    options = get_recovery_options(flow, DISCOVERY)
    assert summary(options) == [
        ("restart", "data_import", True),
        ("cancel", None, True),
        ("restart", "field_mapping", False),
    ]
    blocked = options[-1]
    assert blocked.blocked_by is ErrorCode.PHASE_ORDER_VIOLATION
    assert "'data_import'" in blocked.blocking_detail
    assert blocked.target_status is None


def test_exhausted_retries_are_listed_as_blocked() -> None:
    flow = flow_with({"data_cleansing": S.FAILED}, retry_counts={"data_cleansing": 2})
    options = get_recovery_options(flow, DISCOVERY)
    assert summary(options) == [
        ("rollback", "data_cleansing", True),
        ("cancel", None, True),
        ("retry", "data_cleansing", False),
    ]
    assert options[-1].blocked_by is ErrorCode.MAX_RETRIES_EXCEEDED
    assert options[-1].attempts_remaining == 0


def test_non_retryable_error_offers_admin_force() -> None:
    flow = flow_with({"data_import": S.FAILED}, errors={"data_import": FATAL})
    options = get_recovery_options(flow, DISCOVERY)
    assert summary(options) == [
        ("force_retry", "data_import", True),
        ("rollback", "data_import", True),
        ("cancel", None, True),
        ("retry", "data_import", False),
    ]
    assert options[0].command == Retry("data_import", force=True, reason="recovery: forced retry")
    assert "Admin only" in options[0].reason
    assert options[-1].blocked_by is ErrorCode.RETRY_NOT_ALLOWED


def test_paused_flow_offers_resume_first_and_blocks_starts() -> None:
    flow, _ = run(flow_with({"data_import": S.RETRY_NEEDED}), PauseFlow())
    options = get_recovery_options(flow, DISCOVERY)
    assert summary(options) == [
        ("resume", None, True),
        ("abandon", "data_import", True),
        ("cancel", None, True),
        ("retry", "data_import", False),
    ]
    assert options[0].target_status is F.RETRY_PENDING
    assert options[-1].blocked_by is ErrorCode.FLOW_PAUSED


@pytest.mark.parametrize("terminal", [F.COMPLETED, F.CANCELLED])
def test_terminal_flows_have_no_options(terminal: F) -> None:
    flow = replace(flow_with({"data_import": S.FAILED}), status=terminal)
    assert get_recovery_options(flow, DISCOVERY) == []


def test_a_healthy_new_flow_can_only_be_cancelled() -> None:
    assert summary(get_recovery_options(flow_with({}), DISCOVERY)) == [("cancel", None, True)]


RECOVERY_SCENARIOS: list[tuple[str, Flow, FlowDefinition]] = [
    ("failed", flow_with({"data_import": S.COMPLETED, "field_mapping": S.FAILED}), DISCOVERY),
    ("fatal", flow_with({"data_import": S.RETRY_NEEDED}, errors={"data_import": FATAL}), DISCOVERY),
    ("rolled-back", flow_with({"data_import": S.ROLLED_BACK}), DISCOVERY),
    (
        "exhausted",
        flow_with({"data_cleansing": S.RETRY_NEEDED}, retry_counts={"data_cleansing": 2}),
        DISCOVERY,
    ),
    (
        "branches",
        flow_with(
            {"extract": S.COMPLETED, "left": S.FAILED, "right": S.WAITING_APPROVAL},
            definition=BRANCHY,
        ),
        BRANCHY,
    ),
    (
        "paused",
        replace(
            flow_with({"data_import": S.FAILED}), status=F.PAUSED, status_before_pause=F.FAILED
        ),
        DISCOVERY,
    ),
]


@pytest.mark.parametrize(
    ("flow", "definition"),
    [(flow, definition) for _, flow, definition in RECOVERY_SCENARIOS],
    ids=[name for name, _, _ in RECOVERY_SCENARIOS],
)
def test_every_allowed_option_applies_and_every_blocked_one_is_refused(
    flow: Flow, definition: FlowDefinition
) -> None:
    for option in get_recovery_options(flow, definition):
        admin = option.action is A.FORCE_RETRY
        if option.allowed:
            decision = apply_command(flow, definition, option.command, ctx(5, admin=admin))
            assert decision.flow.status is option.target_status
            if option.phase and option.target_state:
                assert decision.flow.phase(option.phase).state is option.target_state
        else:
            with pytest.raises(FlowStateError) as raised:
                apply_command(flow, definition, option.command, ctx(5, admin=admin))
            assert raised.value.code is option.blocked_by
