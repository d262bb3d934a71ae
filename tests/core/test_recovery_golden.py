"""Recovery options in full (every field, in order) for flows that use every kind of option.

The other recovery tests check properties (allowed options apply, blocked ones name their
refusal); these pin the exact lists, ranks, reasons and commands, so a change to any of them is
a visible decision (mutation testing found each field unchecked).
"""

from __future__ import annotations

from flowstate.core import (
    DISCOVERY,
    CancelFlow,
    Command,
    ErrorCode,
    Flow,
    FlowDefinition,
    FlowStatus,
    PhaseState,
    RecoveryAction,
    RecoveryOption,
    ResumeFlow,
    Retry,
    Rollback,
    TransitionPhase,
    get_recovery_options,
)

from .support import BRANCHY, FATAL, F, S, flow_with

A = RecoveryAction
E = ErrorCode

CANCEL = RecoveryOption(
    action=A.CANCEL,
    phase=None,
    target_state=None,
    target_status=F.CANCELLED,
    reason="Cancel the flow for good",
    allowed=True,
    blocked_by=None,
    blocking_detail="",
    attempts_remaining=None,
    command=CancelFlow(reason="recovery: cancel"),
)


def option(
    action: RecoveryAction,
    phase: str | None,
    target_state: PhaseState | None,
    target_status: FlowStatus | None,
    reason: str,
    command: Command,
    *,
    attempts: int | None = None,
    blocked_by: ErrorCode | None = None,
    detail: str = "",
) -> RecoveryOption:
    return RecoveryOption(
        action=action,
        phase=phase,
        target_state=target_state,
        target_status=target_status,
        reason=reason,
        allowed=blocked_by is None,
        blocked_by=blocked_by,
        blocking_detail=detail,
        attempts_remaining=attempts,
        command=command,
    )


def test_paused_flow_with_a_fatal_failure_and_an_exhausted_retry() -> None:
    flow = flow_with(
        {"extract": S.COMPLETED, "left": S.FAILED, "right": S.RETRY_NEEDED},
        definition=BRANCHY,
        status=F.PAUSED,
        status_before_pause=F.RETRY_PENDING,
        errors={"left": FATAL},
        retry_counts={"left": 1},
    )
    assert get_recovery_options(flow, BRANCHY) == [
        option(
            A.RESUME,
            None,
            None,
            F.RETRY_PENDING,
            "The flow is paused; resume it so phases can start again",
            ResumeFlow(reason="recovery: resume"),
        ),
        option(
            A.FORCE_RETRY,
            "left",
            S.RETRY_NEEDED,
            F.PAUSED,
            "Admin only: mark failed phase 'left' for retry despite non-retryable "
            "DATA_VALIDATION_FAILED; 1 attempt(s) left",
            Retry(phase="left", force=True, reason="recovery: forced retry"),
            attempts=1,
        ),
        option(
            A.ROLLBACK,
            "left",
            S.ROLLED_BACK,
            F.PAUSED,
            "Roll back failed phase 'left' so it can be restarted",
            Rollback(phase="left", reason="recovery: rollback"),
        ),
        option(
            A.ABANDON,
            "right",
            S.FAILED,
            F.PAUSED,
            "Stop retrying phase 'right': mark it failed so it can be rolled back",
            TransitionPhase("right", S.FAILED, reason="recovery: abandon"),
        ),
        option(
            A.ROLLBACK,
            "extract",
            S.ROLLED_BACK,
            F.PAUSED,
            "Roll back completed phase 'extract' (and downstream left, right) to revise it",
            Rollback(phase="extract", reason="recovery: rollback"),
        ),
        CANCEL,
        option(
            A.RETRY,
            "left",
            S.RETRY_NEEDED,
            None,
            "Retry: mark failed phase 'left' for retry after DATA_VALIDATION_FAILED: bad rows; "
            "1 attempt(s) left",
            Retry(phase="left", reason="recovery: retry"),
            attempts=1,
            blocked_by=E.RETRY_NOT_ALLOWED,
            detail="Phase 'left' failed with non-retryable DATA_VALIDATION_FAILED; retrying it "
            "needs admin force",
        ),
        option(
            A.RETRY,
            "right",
            S.IN_PROGRESS,
            None,
            "Retry: restart phase 'right' (counts one attempt) after AGENT_TIMEOUT: agent timed "
            "out; 0 attempt(s) left",
            Retry(phase="right", reason="recovery: retry"),
            attempts=0,
            blocked_by=E.MAX_RETRIES_EXCEEDED,
            detail="Phase 'right' has used all 0 retries",
        ),
    ]


def test_rolled_back_phase_and_completed_phases_latest_first() -> None:
    flow = flow_with(
        {"extract": S.COMPLETED, "left": S.COMPLETED, "right": S.ROLLED_BACK}, definition=BRANCHY
    )
    assert get_recovery_options(flow, BRANCHY) == [
        option(
            A.RESTART,
            "right",
            S.IN_PROGRESS,
            F.ACTIVE,
            "Phase 'right' was rolled back; run it again",
            TransitionPhase("right", S.IN_PROGRESS, reason="recovery: restart"),
        ),
        option(
            A.ROLLBACK,
            "left",
            S.ROLLED_BACK,
            F.ACTIVE,
            "Roll back completed phase 'left' to revise it",
            Rollback(phase="left", reason="recovery: rollback"),
        ),
        option(
            A.ROLLBACK,
            "extract",
            S.ROLLED_BACK,
            F.ACTIVE,
            "Roll back completed phase 'extract' (and downstream left) to revise it",
            Rollback(phase="extract", reason="recovery: rollback"),
        ),
        CANCEL,
    ]


def test_two_failed_phases_in_definition_order_and_a_failure_without_error() -> None:
    flow = flow_with(
        {"extract": S.COMPLETED, "left": S.FAILED, "right": S.FAILED},
        definition=BRANCHY,
        errors={"left": None},
        retry_counts={"left": 1},
    )
    assert get_recovery_options(flow, BRANCHY) == [
        option(
            A.RETRY,
            "left",
            S.RETRY_NEEDED,
            F.RETRY_PENDING,
            "Retry: mark failed phase 'left' for retry; 1 attempt(s) left",
            Retry(phase="left", reason="recovery: retry"),
            attempts=1,
        ),
        option(
            A.ROLLBACK,
            "left",
            S.ROLLED_BACK,
            F.FAILED,
            "Roll back failed phase 'left' so it can be restarted",
            Rollback(phase="left", reason="recovery: rollback"),
        ),
        option(
            A.ROLLBACK,
            "right",
            S.ROLLED_BACK,
            F.FAILED,
            "Roll back failed phase 'right' so it can be restarted",
            Rollback(phase="right", reason="recovery: rollback"),
        ),
        option(
            A.ROLLBACK,
            "extract",
            S.ROLLED_BACK,
            F.ACTIVE,
            "Roll back completed phase 'extract' (and downstream left, right) to revise it",
            Rollback(phase="extract", reason="recovery: rollback"),
        ),
        CANCEL,
        option(
            A.RETRY,
            "right",
            S.RETRY_NEEDED,
            None,
            "Retry: mark failed phase 'right' for retry after AGENT_TIMEOUT: agent timed out; "
            "0 attempt(s) left",
            Retry(phase="right", reason="recovery: retry"),
            attempts=0,
            blocked_by=E.MAX_RETRIES_EXCEEDED,
            detail="Phase 'right' has used all 0 retries",
        ),
    ]


def _order(flow: Flow, definition: FlowDefinition = DISCOVERY) -> list[tuple[str, str | None]]:
    return [(o.action.value, o.phase) for o in get_recovery_options(flow, definition)]


def test_the_action_rank_decides_before_the_phase_order() -> None:
    """Each pair below puts the better-ranked action on the later phase, so swapping two
    ranks (or ordering by phase first) changes the list."""
    # rollback of a FAILED phase (later) before abandon (earlier)
    assert _order(flow_with({"data_import": S.RETRY_NEEDED, "field_mapping": S.FAILED})) == [
        ("retry", "data_import"),
        ("retry", "field_mapping"),
        ("rollback", "field_mapping"),
        ("abandon", "data_import"),
        ("cancel", None),
    ]
    # restart (later) before the rollback of a FAILED phase (earlier)
    branchy = flow_with(
        {"extract": S.COMPLETED, "left": S.FAILED, "right": S.ROLLED_BACK}, definition=BRANCHY
    )
    assert _order(branchy, BRANCHY) == [
        ("retry", "left"),
        ("restart", "right"),
        ("rollback", "left"),
        ("rollback", "extract"),
        ("cancel", None),
    ]
    # retry (later) before force_retry (earlier)
    fatal_first = flow_with(
        {"data_import": S.FAILED, "field_mapping": S.FAILED}, errors={"data_import": FATAL}
    )
    assert _order(fatal_first) == [
        ("retry", "field_mapping"),
        ("force_retry", "data_import"),
        ("rollback", "data_import"),
        ("rollback", "field_mapping"),
        ("cancel", None),
        ("retry", "data_import"),
    ]
