"""The phase and flow transition matrices of DESIGN.md section 2, pair by pair."""

from __future__ import annotations

import itertools
import re

import pytest

from flowstate.core import (
    DISCOVERY,
    FLOW_TRANSITIONS,
    PHASE_TRANSITIONS,
    ErrorCode,
    FlowStateError,
    FlowStatus,
    PhaseState,
    TransitionPhase,
    apply_command,
    rules,
    validate_flow_status_transition,
)
from flowstate.core.commands import validate_phase_transition
from flowstate.core.rules import check_tables, reachable_states

from .support import RETRYABLE, F, S, ctx, flow_with

# The phase table exactly as DESIGN.md writes it.
DESIGN_PHASE_TABLE: dict[PhaseState, set[PhaseState]] = {
    S.NOT_STARTED: {S.IN_PROGRESS},
    S.IN_PROGRESS: {
        S.WAITING_VALIDATION,
        S.WAITING_APPROVAL,
        S.COMPLETED,
        S.FAILED,
        S.RETRY_NEEDED,
    },
    S.WAITING_VALIDATION: {S.COMPLETED, S.WAITING_APPROVAL, S.FAILED, S.RETRY_NEEDED},
    S.WAITING_APPROVAL: {S.COMPLETED, S.IN_PROGRESS, S.FAILED},
    S.COMPLETED: {S.ROLLED_BACK, S.RETRY_NEEDED},
    S.FAILED: {S.RETRY_NEEDED, S.ROLLED_BACK},
    S.RETRY_NEEDED: {S.IN_PROGRESS, S.FAILED},
    S.ROLLED_BACK: {S.IN_PROGRESS},
}
# DESIGN.md section 9: optional phases may be skipped (SKIPPED), and a rollback undoes a skip.
SKIP_SOURCES = {S.NOT_STARTED, S.ROLLED_BACK, S.FAILED, S.RETRY_NEEDED}
for _source in SKIP_SOURCES:
    DESIGN_PHASE_TABLE[_source].add(S.SKIPPED)
DESIGN_PHASE_TABLE[S.SKIPPED] = {S.ROLLED_BACK}

_GROUPS = {F.ACTIVE, F.DATA_GATHERING, F.DISCOVERY, F.ASSESSMENT_READY, F.PLANNING}
_TERMINAL = {F.COMPLETED, F.CANCELLED}
_ALL = set(FlowStatus)

# The flow table exactly as DESIGN.md writes it ...
DESIGN_FLOW_TABLE: dict[FlowStatus, set[FlowStatus]] = {
    F.INITIALIZED: _GROUPS | {F.PAUSED, F.CANCELLED},
    **{
        status: _ALL - {status, F.INITIALIZED}
        for status in _GROUPS | {F.WAITING_APPROVAL, F.RETRY_PENDING, F.ERROR_RECOVERY}
    },
    F.FAILED: _GROUPS | {F.RETRY_PENDING, F.ERROR_RECOVERY, F.CANCELLED},
    F.PAUSED: (_ALL - _TERMINAL - {F.INITIALIZED, F.PAUSED}) | {F.CANCELLED},
    F.COMPLETED: set(),
    F.CANCELLED: set(),
}
# ... plus the extensions documented in flowstate.core.rules (each tested in test_commands).
FLOW_TABLE_EXTENSIONS = {
    (F.FAILED, F.PAUSED),
    (F.FAILED, F.WAITING_APPROVAL),
    (F.PAUSED, F.INITIALIZED),
    (F.PAUSED, F.COMPLETED),
    (F.INITIALIZED, F.COMPLETED),
    (F.FAILED, F.COMPLETED),
}


def _pair_id(pair: tuple[PhaseState, PhaseState] | tuple[FlowStatus, FlowStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


PHASE_PAIRS: list[tuple[PhaseState, PhaseState]] = list(itertools.product(PhaseState, PhaseState))
FLOW_PAIRS: list[tuple[FlowStatus, FlowStatus]] = list(itertools.product(FlowStatus, FlowStatus))


@pytest.mark.parametrize("pair", PHASE_PAIRS, ids=[_pair_id(p) for p in PHASE_PAIRS])
def test_phase_matrix(pair: tuple[PhaseState, PhaseState]) -> None:
    current, target = pair
    refusal = validate_phase_transition("data_import", current, target)
    if target in DESIGN_PHASE_TABLE[current]:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.code is ErrorCode.INVALID_PHASE_TRANSITION
        assert refusal.details["from_state"] == current.value
        assert refusal.details["to_state"] == target.value
        assert set(refusal.details["valid_transitions"]) == {
            s.value for s in DESIGN_PHASE_TABLE[current]
        }


@pytest.mark.parametrize("pair", PHASE_PAIRS, ids=[_pair_id(p) for p in PHASE_PAIRS])
def test_phase_matrix_through_apply_command(pair: tuple[PhaseState, PhaseState]) -> None:
    """The same matrix end to end: data_import has no dependency, so only the table decides.

    data_import is not optional, so SKIPPED is refused from every state.
    """
    current, target = pair
    flow = flow_with({"data_import": current})
    error = RETRYABLE if target in {S.FAILED, S.RETRY_NEEDED} else None
    command = TransitionPhase("data_import", target, error=error)
    if target in DESIGN_PHASE_TABLE[current] and target is not S.SKIPPED:
        decision = apply_command(flow, DISCOVERY, command, ctx(5))
        assert decision.flow.phase("data_import").state is target
    else:
        with pytest.raises(FlowStateError) as raised:
            apply_command(flow, DISCOVERY, command, ctx(5))
        assert raised.value.code is ErrorCode.INVALID_PHASE_TRANSITION


@pytest.mark.parametrize("current", list(PhaseState), ids=[s.value for s in PhaseState])
def test_a_phase_that_is_not_optional_never_lists_skipped(current: PhaseState) -> None:
    refusal = validate_phase_transition("data_import", current, S.SKIPPED, optional=False)
    assert refusal is not None
    assert refusal.code is ErrorCode.INVALID_PHASE_TRANSITION
    assert S.SKIPPED.value not in refusal.details["valid_transitions"]
    assert set(refusal.details["valid_transitions"]) == {
        s.value for s in DESIGN_PHASE_TABLE[current] - {S.SKIPPED}
    }


@pytest.mark.parametrize("pair", FLOW_PAIRS, ids=[_pair_id(p) for p in FLOW_PAIRS])
def test_flow_matrix(pair: tuple[FlowStatus, FlowStatus]) -> None:
    current, target = pair
    allowed = target in DESIGN_FLOW_TABLE[current] or pair in FLOW_TABLE_EXTENSIONS
    refusal = validate_flow_status_transition(current, target)
    if allowed:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.code is ErrorCode.INVALID_FLOW_TRANSITION
        assert refusal.details["from_status"] == current.value
        assert refusal.details["to_status"] == target.value


def test_tables_are_the_design_tables() -> None:
    assert {k: set(v) for k, v in PHASE_TRANSITIONS.items()} == DESIGN_PHASE_TABLE
    extended = {k: set(v) for k, v in DESIGN_FLOW_TABLE.items()}
    for source, target in FLOW_TABLE_EXTENSIONS:
        extended[source].add(target)
    assert {k: set(v) for k, v in FLOW_TRANSITIONS.items()} == extended


def test_extensions_are_not_already_in_the_design_table() -> None:
    for source, target in FLOW_TABLE_EXTENSIONS:
        assert target not in DESIGN_FLOW_TABLE[source]


def test_every_phase_state_is_reachable_and_terminal_statuses_are_absorbing() -> None:
    check_tables()
    assert reachable_states() == frozenset(PhaseState)
    assert not FLOW_TRANSITIONS[F.COMPLETED]
    assert not FLOW_TRANSITIONS[F.CANCELLED]


@pytest.mark.parametrize(
    ("table", "broken", "message"),
    [
        (
            "PHASE_TRANSITIONS",
            {s: t for s, t in rules.PHASE_TRANSITIONS.items() if s is not S.ROLLED_BACK},
            "phase table has no row for ['rolled_back']",
        ),
        (
            "PHASE_TRANSITIONS",
            {
                **rules.PHASE_TRANSITIONS,
                S.COMPLETED: frozenset(),
                S.FAILED: frozenset({S.RETRY_NEEDED}),
                S.SKIPPED: frozenset(),  # a rollback of a skip reaches rolled_back too
            },
            "phase states unreachable: ['rolled_back']",
        ),
        (
            "PHASE_TRANSITIONS",
            # COMPLETED -> SKIPPED added to the table but not to SKIP_SOURCES
            {
                **rules.PHASE_TRANSITIONS,
                S.COMPLETED: rules.PHASE_TRANSITIONS[S.COMPLETED] | {S.SKIPPED},
            },
            "SKIP_SOURCES does not match the phase table",
        ),
        (
            "FLOW_TRANSITIONS",
            {**rules.FLOW_TRANSITIONS, F.CANCELLED: frozenset({F.ACTIVE})},
            "terminal flow status cancelled has outgoing transitions",
        ),
        (
            "FLOW_TRANSITIONS",
            {s: t for s, t in rules.FLOW_TRANSITIONS.items() if s is not F.PAUSED},
            "flow table does not cover every status",
        ),
    ],
    ids=[
        "missing-phase-row",
        "unreachable-state",
        "skip-source-not-listed",
        "terminal-with-exit",
        "missing-flow-row",
    ],
)
def test_check_tables_refuses_broken_tables(
    monkeypatch: pytest.MonkeyPatch, table: str, broken: object, message: str
) -> None:
    """check_tables runs at import; here it is run on broken copies of the tables."""
    monkeypatch.setattr(rules, table, broken)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_tables()
