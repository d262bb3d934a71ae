"""Details of the history the core writes that mutation testing found unchecked (docs/testing.md).

Each test pins one detail a one-line change to the core got past the suite with: a rollback's
entries (time, reason, metadata, cause, the cascaded phase's error), the retry gate on an
admin's TransitionPhase, `last_retry_at` of a retry counted through TransitionPhase, and the
small defaults and texts around them.
"""

from __future__ import annotations

import pytest

from flowstate.core import (
    DISCOVERY,
    ErrorCode,
    FlowDefinition,
    FlowStateError,
    HistoryKind,
    PhaseDefinition,
    PhaseState,
    Retry,
    Rollback,
    TransitionPhase,
    apply_command,
)
from flowstate.core.commands import RaiseAlert
from flowstate.core.definitions import (
    ApprovalPolicy,
    ApprovalTimeoutAction,
    PhasePolicy,
    RetryPolicy,
)
from flowstate.core.derivation import phase_factor
from flowstate.core.model import AlertKind, FlowAlert, PhaseError

from .support import BRANCHY, FATAL, RETRYABLE, at, ctx, flow_with, run

S = PhaseState


def test_a_rollback_entry_carries_its_time_reason_and_metadata() -> None:
    flow = flow_with({"data_import": S.COMPLETED, "field_mapping": S.FAILED})
    command = TransitionPhase(
        "data_import", S.ROLLED_BACK, reason="bad source file", metadata={"ticket": "OPS-7"}
    )

    decision = apply_command(flow, DISCOVERY, command, ctx(42, user="ops"))

    own, _ = decision.entries
    assert (own.kind, own.phase, own.from_state, own.to_state) == (
        HistoryKind.ROLLBACK,
        "data_import",
        S.COMPLETED,
        S.ROLLED_BACK,
    )
    assert (own.occurred_at, own.reason, own.user_id) == (at(42), "bad source file", "ops")
    assert own.metadata == {"ticket": "OPS-7"}
    assert own.time_in_state_seconds == 42.0  # entered COMPLETED at T0
    assert own.cause == ""
    assert decision.flow.phase("data_import").state_entered_at == at(42)


def test_a_cascaded_rollback_keeps_the_phases_error_and_names_its_cause() -> None:
    flow = flow_with(
        {"data_import": S.COMPLETED, "field_mapping": S.FAILED},
        errors={"field_mapping": FATAL},
    )

    decision = apply_command(
        flow, DISCOVERY, TransitionPhase("data_import", S.ROLLED_BACK, reason="redo"), ctx(42)
    )

    cascaded = decision.entries[1]
    assert (cascaded.kind, cascaded.phase, cascaded.from_state, cascaded.to_state) == (
        HistoryKind.CASCADE_ROLLBACK,
        "field_mapping",
        S.FAILED,
        S.ROLLED_BACK,
    )
    assert (cascaded.cause, cascaded.reason, cascaded.occurred_at) == (
        "data_import",
        "redo",
        at(42),
    )
    assert cascaded.metadata == {}
    assert cascaded.error == FATAL
    phase = decision.flow.phase("field_mapping")
    assert (phase.state, phase.error, phase.state_entered_at) == (S.ROLLED_BACK, FATAL, at(42))


def test_an_admins_transition_cannot_retry_a_non_retryable_failure() -> None:
    """Only Retry(force=True) lifts a non-retryable error; TransitionPhase never does."""
    flow = flow_with({"data_import": S.FAILED}, errors={"data_import": FATAL})

    with pytest.raises(FlowStateError) as refused:
        apply_command(
            flow, DISCOVERY, TransitionPhase("data_import", S.RETRY_NEEDED), ctx(5, admin=True)
        )

    assert refused.value.code is ErrorCode.RETRY_NOT_ALLOWED
    forced = apply_command(flow, DISCOVERY, Retry("data_import", force=True), ctx(5, admin=True))
    assert forced.flow.phase("data_import").state is S.RETRY_NEEDED
    assert forced.entries[0].metadata == {"forced": True}


def test_a_retry_counted_through_transition_phase_stamps_last_retry_at() -> None:
    flow = flow_with({"data_import": S.FAILED})

    final, _ = run(
        flow,
        TransitionPhase("data_import", S.RETRY_NEEDED, error=RETRYABLE),
        TransitionPhase("data_import", S.IN_PROGRESS),
    )

    phase = final.phase("data_import")
    assert phase.retry_count == 1
    assert phase.last_retry_at == at(20)


def test_phase_factor_of_a_running_phase_without_progress_is_the_base_share() -> None:
    assert phase_factor(S.IN_PROGRESS) == phase_factor(S.IN_PROGRESS, 0.0)
    assert phase_factor(S.IN_PROGRESS) < phase_factor(S.IN_PROGRESS, 0.5)


def test_a_missing_phase_of_a_flow_is_a_key_error_naming_it() -> None:
    flow = flow_with({})

    with pytest.raises(KeyError) as missing:
        flow.phase("no_such_phase")

    assert missing.value.args == ("no_such_phase",)


def test_an_error_reported_with_a_rollback_is_refused_and_names_the_field() -> None:
    flow = flow_with({"data_import": S.COMPLETED})
    error = PhaseError(ErrorCode.AGENT_TIMEOUT, "late")

    with pytest.raises(FlowStateError) as refused:
        apply_command(
            flow, DISCOVERY, TransitionPhase("data_import", S.ROLLED_BACK, error=error), ctx(1)
        )

    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details.get("field") == "error"


def test_refusals_name_every_phase_of_a_list_in_their_message() -> None:
    chain = flow_with(
        {"data_import": S.COMPLETED, "field_mapping": S.COMPLETED, "data_cleansing": S.IN_PROGRESS}
    )
    with pytest.raises(FlowStateError) as dependents:
        apply_command(chain, DISCOVERY, Rollback("data_import", cascade=False), ctx(1))
    diamond = flow_with({"extract": S.COMPLETED}, definition=BRANCHY)
    with pytest.raises(FlowStateError) as blocked:
        apply_command(diamond, BRANCHY, TransitionPhase("merge", S.IN_PROGRESS), ctx(1))

    assert "phase(s) 'field_mapping', 'data_cleansing' have started" in str(dependents.value)
    assert "cannot start before 'left', 'right' completed" in str(blocked.value)


def test_an_order_violation_on_a_restart_names_the_state_it_restarts_from() -> None:
    flow = flow_with({"data_import": S.ROLLED_BACK, "field_mapping": S.ROLLED_BACK})

    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, DISCOVERY, TransitionPhase("field_mapping", S.IN_PROGRESS), ctx(1))

    assert refused.value.code is ErrorCode.PHASE_ORDER_VIOLATION
    assert refused.value.details["from_state"] == "rolled_back"
    assert refused.value.details["blocking_phases"] == ["data_import"]


OPTIONAL_LAST = FlowDefinition(
    name="optional_last",
    version=1,
    phases=(
        PhaseDefinition("a", (), 50, 1, None),
        PhaseDefinition("b", ("a",), 50, 1, None, optional=True),
    ),
)


def test_a_skip_through_transition_phase_records_its_reason_and_metadata() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=OPTIONAL_LAST)
    command = TransitionPhase("b", S.SKIPPED, reason="not needed", metadata={"ticket": 7})

    (entry,) = apply_command(flow, OPTIONAL_LAST, command, ctx(1)).entries

    assert (entry.kind, entry.to_state, entry.reason) == (HistoryKind.SKIP, S.SKIPPED, "not needed")
    assert entry.metadata == {"ticket": 7}


def test_an_error_reported_with_a_skip_is_refused() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=OPTIONAL_LAST)

    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, OPTIONAL_LAST, TransitionPhase("b", S.SKIPPED, error=RETRYABLE), ctx(1))

    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == "error"
    assert str(refused.value) == (
        "An error may only be reported with a transition to FAILED or RETRY_NEEDED"
    )


def test_a_refused_rollback_of_an_optional_phase_offers_the_skip() -> None:
    flow = flow_with({"a": S.COMPLETED}, definition=OPTIONAL_LAST)

    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, OPTIONAL_LAST, Rollback("b"), ctx(1))

    assert refused.value.details["valid_transitions"] == ["in_progress", "skipped"]


def test_a_rollback_command_records_no_metadata() -> None:
    flow = flow_with({"data_import": S.COMPLETED})

    command = Rollback("data_import", reason="redo")

    (entry,) = apply_command(flow, DISCOVERY, command, ctx(1)).entries

    assert (entry.kind, entry.reason, entry.metadata) == (HistoryKind.ROLLBACK, "redo", {})


AUTO_RETRY = FlowDefinition(
    name="auto_retry",
    version=1,
    phases=(
        PhaseDefinition(
            "work",
            (),
            100,
            2,
            None,
            policy=PhasePolicy(
                retry_policy=RetryPolicy(
                    initial_backoff=2.0,
                    multiplier=3.0,
                    max_backoff=10.0,
                    retry_on=frozenset({ErrorCode.AGENT_TIMEOUT}),
                )
            ),
        ),
    ),
)


def test_only_the_failure_entry_names_the_automatic_retrys_time() -> None:
    flow, entries = run(
        flow_with({"work": S.IN_PROGRESS}, definition=AUTO_RETRY),
        TransitionPhase("work", S.FAILED, error=RETRYABLE),
        Retry("work"),
        definition=AUTO_RETRY,
    )

    due = at(12)  # failed at 10 s, initial backoff 2 s
    assert [(e.to_state, e.next_attempt_at) for e in entries] == [
        (S.FAILED, due),
        (S.RETRY_NEEDED, None),
    ]
    assert flow.phase("work").next_attempt_at == due  # the phase keeps it in RETRY_NEEDED


GATED = FlowDefinition(
    name="gated",
    version=1,
    phases=(
        PhaseDefinition(
            "review",
            (),
            50,
            0,
            None,
            approval=ApprovalPolicy(
                required=True, timeout_seconds=60.0, on_timeout=ApprovalTimeoutAction.ESCALATE
            ),
        ),
        PhaseDefinition("docs", (), 50, 0, None),
    ),
)


def test_an_alert_is_a_new_version_and_an_approval_timeout_stays_while_the_phase_waits() -> None:
    flow = flow_with({"review": S.WAITING_APPROVAL}, definition=GATED)
    timeout = FlowAlert(
        kind=AlertKind.APPROVAL_TIMEOUT,
        due_at=at(60),
        raised_at=at(61),
        status=flow.status,
        phase="review",
        message="approval of 'review' is overdue",
    )

    raised = apply_command(flow, GATED, RaiseAlert(timeout), ctx(61))
    (alert_entry,) = raised.entries
    assert (raised.flow.version, alert_entry.flow_version) == (11, 11)
    assert raised.flow.alerts == (timeout,)

    changed = apply_command(raised.flow, GATED, TransitionPhase("docs", S.IN_PROGRESS), ctx(70))
    assert (changed.flow.version, changed.flow.alerts) == (12, (timeout,))


def test_a_transition_out_of_an_approval_wait_is_refused_with_whole_details() -> None:
    flow = flow_with({"review": S.WAITING_APPROVAL}, definition=GATED)

    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, GATED, TransitionPhase("review", S.COMPLETED), ctx(1))

    assert refused.value.code is ErrorCode.APPROVAL_REQUIRED
    assert refused.value.details == {
        "phase": "review",
        "from_state": "waiting_approval",
        "to_state": "completed",
    }
