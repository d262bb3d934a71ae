"""The pure side of timers: which timers a flow needs, what a due one does, backoffs, stamping."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flowstate.core.commands import (
    Context,
    Retry,
    Rollback,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    create_flow,
)
from flowstate.core.definition_document import parse_duration
from flowstate.core.definitions import (
    DISCOVERY,
    FlowDefinition,
    PhaseDefinition,
    PhasePolicy,
    RetryPolicy,
    definition_from_dict,
    definition_to_dict,
)
from flowstate.core.model import ErrorCode, Flow, Phase, PhaseError, PhaseState
from flowstate.core.retries import next_attempt_at, retry_backoff
from flowstate.core.timers import PlannedTimer, TimerKind, plan_timers, timer_command

from .support import T0, TENANT

S = PhaseState
RETRY = RetryPolicy(
    initial_backoff=2.0,
    multiplier=3.0,
    max_backoff=10.0,
    retry_on=frozenset({ErrorCode.EXTERNAL_SERVICE_ERROR, ErrorCode.AGENT_TIMEOUT}),
)
TIMED = FlowDefinition(
    name="timed",
    version=1,
    phases=(
        PhaseDefinition(
            "work",
            (),
            50,
            2,
            None,
            policy=PhasePolicy(timeout=60.0, heartbeat_timeout=10.0, retry_policy=RETRY),
        ),
        PhaseDefinition("after", ("work",), 50, 0, None),
    ),
)
DOWN = PhaseError(ErrorCode.EXTERNAL_SERVICE_ERROR, "down")


def at(seconds: float, user: str = "worker") -> Context:
    return Context(now=T0 + timedelta(seconds=seconds), user_id=user)


def run(flow: Flow, *steps: tuple[float, object]) -> tuple[Flow, tuple[object, ...]]:
    entries: tuple[object, ...] = ()
    for when, command in steps:
        decision = apply_command(flow, TIMED, command, at(when))  # type: ignore[arg-type]
        flow, entries = decision.flow, decision.entries
    return flow, entries


def new_flow() -> Flow:
    return create_flow("f", TENANT, TIMED, at(0)).flow


def test_a_definition_without_policies_plans_nothing() -> None:
    flow = create_flow("f", TENANT, DISCOVERY, at(0)).flow
    started = apply_command(flow, DISCOVERY, TransitionPhase("data_import", S.IN_PROGRESS), at(1))
    assert not DISCOVERY.has_timers
    assert plan_timers(started.flow, DISCOVERY, started.entries) == ()


def test_a_running_phase_has_its_timeout_and_heartbeat() -> None:
    flow, entries = run(new_flow(), (5, TransitionPhase("work", S.IN_PROGRESS)))
    assert plan_timers(flow, TIMED, entries) == (  # type: ignore[arg-type]
        PlannedTimer(TimerKind.PHASE_TIMEOUT, "work", T0 + timedelta(seconds=65)),
        PlannedTimer(TimerKind.HEARTBEAT_TIMEOUT, "work", T0 + timedelta(seconds=15)),
    )


def test_a_progress_report_resets_the_heartbeat_only() -> None:
    flow, entries = run(
        new_flow(),
        (5, TransitionPhase("work", S.IN_PROGRESS)),
        (8, UpdatePhaseProgress("work", 0.5)),
    )
    planned = {t.kind: t for t in plan_timers(flow, TIMED, entries)}  # type: ignore[arg-type]
    beat = planned[TimerKind.HEARTBEAT_TIMEOUT]
    assert (beat.due_at, beat.reset) == (T0 + timedelta(seconds=18), True)
    timeout = planned[TimerKind.PHASE_TIMEOUT]
    assert (timeout.due_at, timeout.reset) == (T0 + timedelta(seconds=65), False)


def test_a_failure_with_a_listed_code_schedules_the_retry_with_backoff() -> None:
    flow, entries = run(
        new_flow(),
        (5, TransitionPhase("work", S.IN_PROGRESS)),
        (7, TransitionPhase("work", S.FAILED, error=DOWN)),
    )
    due = T0 + timedelta(seconds=9)  # initial backoff 2 s after the failure
    assert flow.phase("work").next_attempt_at == due
    assert entries[-1].next_attempt_at == due  # type: ignore[attr-defined]
    assert plan_timers(flow, TIMED, entries) == (  # type: ignore[arg-type]
        PlannedTimer(TimerKind.RETRY_BACKOFF, "work", due),
    )
    fired = timer_command(flow, TIMED, TimerKind.RETRY_BACKOFF, "work")
    assert isinstance(fired, Retry)
    retried = apply_command(flow, TIMED, fired, at(9, "system:timer")).flow
    assert retried.phase("work").state is S.RETRY_NEEDED
    assert retried.phase("work").next_attempt_at == due  # kept in RETRY_NEEDED
    restarted = apply_command(retried, TIMED, TransitionPhase("work", S.IN_PROGRESS), at(10))
    assert restarted.flow.phase("work").next_attempt_at is None
    # Leaving FAILED other than by the retry step drops the scheduled attempt.
    rolled_back = apply_command(flow, TIMED, TransitionPhase("work", S.ROLLED_BACK), at(8))
    assert rolled_back.flow.phase("work").next_attempt_at is None


@pytest.mark.parametrize(
    "error",
    [
        PhaseError(ErrorCode.PHASE_EXECUTION_FAILED, "not listed"),
        PhaseError(ErrorCode.DATA_VALIDATION_FAILED, "not retryable"),
    ],
    ids=["code-not-listed", "non-retryable"],
)
def test_other_failures_schedule_nothing(error: PhaseError) -> None:
    flow, entries = run(
        new_flow(),
        (5, TransitionPhase("work", S.IN_PROGRESS)),
        (7, TransitionPhase("work", S.FAILED, error=error)),
    )
    assert flow.phase("work").next_attempt_at is None
    assert plan_timers(flow, TIMED, entries) == ()  # type: ignore[arg-type]


def test_no_retry_is_scheduled_past_max_retries() -> None:
    steps: list[tuple[float, object]] = [(1, TransitionPhase("work", S.IN_PROGRESS))]
    for attempt in range(2):  # max_retries = 2
        steps += [
            (10 * attempt + 2, TransitionPhase("work", S.FAILED, error=DOWN)),
            (10 * attempt + 3, Retry("work")),
            (10 * attempt + 4, Retry("work")),
        ]
    steps.append((50, TransitionPhase("work", S.FAILED, error=DOWN)))
    flow, _ = run(new_flow(), *steps)
    assert flow.phase("work").retry_count == 2
    assert flow.phase("work").next_attempt_at is None


def test_the_backoff_grows_by_the_multiplier_up_to_the_maximum() -> None:
    assert [retry_backoff(RETRY, n) for n in range(5)] == [2.0, 6.0, 10.0, 10.0, 10.0]
    double = RetryPolicy(0.5, 2.0, 3.0, frozenset({ErrorCode.AGENT_TIMEOUT}))
    assert [retry_backoff(double, n) for n in range(4)] == [0.5, 1.0, 2.0, 3.0]
    flat = RetryPolicy(1.0, 1.0, 5.0, frozenset({ErrorCode.AGENT_TIMEOUT}))
    assert retry_backoff(flat, 1000) == 1.0
    steep = RetryPolicy(1.0, 10.0, 2_592_000.0, frozenset({ErrorCode.AGENT_TIMEOUT}))
    assert retry_backoff(steep, 10**6) == 2_592_000.0  # no overflow


def test_only_a_failed_phase_gets_a_next_attempt() -> None:
    work = TIMED.phase("work")
    running = Phase("work", S.IN_PROGRESS, error=DOWN)
    assert next_attempt_at(work, running, T0) is None
    failed = Phase("work", S.FAILED, error=DOWN, retry_count=1)
    assert next_attempt_at(work, failed, T0) == T0 + timedelta(seconds=6)
    assert next_attempt_at(work, Phase("work", S.FAILED), T0) is None  # no error: nothing


def test_a_timer_the_flow_no_longer_needs_is_void() -> None:
    flow, _ = run(
        new_flow(),
        (5, TransitionPhase("work", S.IN_PROGRESS)),
        (6, TransitionPhase("work", S.COMPLETED)),
    )
    for kind in TimerKind:
        assert timer_command(flow, TIMED, kind, "work") is None
    rolled, _ = run(
        new_flow(),
        (5, TransitionPhase("work", S.IN_PROGRESS)),
        (7, TransitionPhase("work", S.FAILED, error=DOWN)),
        (8, Rollback("work")),
    )
    assert timer_command(rolled, TIMED, TimerKind.RETRY_BACKOFF, "work") is None


@pytest.mark.parametrize("kind", [TimerKind.PHASE_TIMEOUT, TimerKind.HEARTBEAT_TIMEOUT])
def test_a_timeout_fails_the_phase_with_agent_timeout(kind: TimerKind) -> None:
    flow, _ = run(new_flow(), (5, TransitionPhase("work", S.IN_PROGRESS)))
    command = timer_command(flow, TIMED, kind, "work")
    assert isinstance(command, TransitionPhase)
    failed = apply_command(flow, TIMED, command, at(100, "system:timer"))
    work = failed.flow.phase("work")
    assert work.state is S.FAILED
    assert work.error is not None
    assert work.error.error_code is ErrorCode.AGENT_TIMEOUT
    assert work.error.retryable
    assert failed.entries[-1].user_id == "system:timer"
    # AGENT_TIMEOUT is in retry_on: the timeout itself schedules the automatic retry.
    assert work.next_attempt_at == T0 + timedelta(seconds=102)


def test_terminal_flows_have_no_timers() -> None:
    from flowstate.core.commands import CancelFlow

    flow, entries = run(new_flow(), (5, TransitionPhase("work", S.IN_PROGRESS)), (6, CancelFlow()))
    assert plan_timers(flow, TIMED, entries) == ()  # type: ignore[arg-type]


def test_policies_round_trip_and_are_absent_from_bodies_without_them() -> None:
    assert definition_from_dict(definition_to_dict(TIMED)) == TIMED
    assert "policy" not in definition_to_dict(TIMED)["phases"][1]
    assert all("policy" not in p for p in definition_to_dict(DISCOVERY)["phases"])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), (7, 7.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "s", True, None, float("nan"), [1]])
def test_not_durations(bad: object) -> None:
    assert parse_duration(bad) is None


def test_the_commands_of_due_timers_are_pinned() -> None:
    flow, _ = run(new_flow(), (5, TransitionPhase("work", S.IN_PROGRESS)))
    assert timer_command(flow, TIMED, TimerKind.PHASE_TIMEOUT, "work") == TransitionPhase(
        "work",
        S.FAILED,
        reason="timeout passed",
        error=PhaseError(
            ErrorCode.AGENT_TIMEOUT,
            "Phase 'work' was in progress for more than 60 s (timeout)",
            {"policy": "timeout", "seconds": 60.0},
        ),
    )
    assert timer_command(flow, TIMED, TimerKind.HEARTBEAT_TIMEOUT, "work") == TransitionPhase(
        "work",
        S.FAILED,
        reason="heartbeat_timeout passed",
        error=PhaseError(
            ErrorCode.AGENT_TIMEOUT,
            "Phase 'work' was without a heartbeat for more than 10 s (heartbeat_timeout)",
            {"policy": "heartbeat_timeout", "seconds": 10.0},
        ),
    )
    # A running phase has no retry timer, and `after` (not running) no timeout: both void.
    assert timer_command(flow, TIMED, TimerKind.RETRY_BACKOFF, "work") is None
    assert timer_command(flow, LATE, TimerKind.PHASE_TIMEOUT, "work") is None
    failed, _ = run(flow, (7, TransitionPhase("work", S.FAILED, error=DOWN)))
    assert timer_command(failed, TIMED, TimerKind.RETRY_BACKOFF, "work") == Retry(
        "work", reason="automatic retry (retry_policy): backoff passed"
    )


LATE = FlowDefinition(
    name="timed",
    version=1,
    phases=(
        PhaseDefinition("work", (), 50, 2, None),
        PhaseDefinition("after", ("work",), 50, 0, None, policy=PhasePolicy(timeout=30.0)),
    ),
)
"""Same phases as TIMED, but only the second one has a policy."""


def test_phases_without_a_policy_do_not_hide_the_later_ones() -> None:
    flow = create_flow("f", TENANT, LATE, at(0)).flow
    for when, command in (
        (1, TransitionPhase("work", S.IN_PROGRESS)),
        (2, TransitionPhase("work", S.COMPLETED)),
        (3, TransitionPhase("after", S.IN_PROGRESS)),
    ):
        flow = apply_command(flow, LATE, command, at(when)).flow
    assert plan_timers(flow, LATE) == (
        PlannedTimer(TimerKind.PHASE_TIMEOUT, "after", T0 + timedelta(seconds=33)),
    )
