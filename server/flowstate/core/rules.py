"""The transition tables of DESIGN.md section 2, as data, and the checks that read them.

- `PHASE_TRANSITIONS`: phase state → legal target states (the phase matrix).
- `FLOW_TRANSITIONS`: flow status → legal target statuses (the flow matrix), with the
  extensions listed below.
- `PHASE_PROGRESS_FACTORS`: the weight factor of each phase state for overall progress.
- `GROUP_STATUSES`: the statuses a phase definition may name as its status group.
- `DONE_STATES`: COMPLETED and SKIPPED, the states that satisfy a dependency.

SKIPPED (DESIGN.md section 9) extends the phase table: an *optional* phase may be skipped from
NOT_STARTED, ROLLED_BACK (never ran, or its run was undone), FAILED and RETRY_NEEDED (give up on
it and let the flow go on); the table allows these moves for every phase and the commands refuse
them for a phase its definition does not mark optional. A skip is recorded as its own state, so
the Flow, history and streams show it. SKIPPED counts as done (progress factor 1.0, satisfies
dependents, counts for COMPLETED) and leaves only by a rollback (of itself or upstream), after
which the phase may run or be skipped again.

Extensions of the flow table beyond DESIGN.md (each legitimate; tests/core/test_properties.py
fails if any is removed, and tests/core/test_commands.py shows how each arises):

- FAILED → PAUSED: DESIGN.md's direct-transition rule says "any non-terminal status → PAUSED",
  and FAILED is not terminal; pausing a failed flow keeps orchestrators from retrying it while
  an operator investigates.
- FAILED → WAITING_APPROVAL: found by the property test. With a failed phase and another phase
  WAITING_APPROVAL (parallel branches, or an upstream phase sent back for rework), rolling back
  the failed phase makes rule 7 of the derivation apply.
- PAUSED → INITIALIZED and PAUSED → COMPLETED: found by the property test's "a paused flow can
  always be resumed" invariant. Resume goes to the *derived* status, which is INITIALIZED for a
  flow paused before any phase started, and COMPLETED when the phases that were running when it
  was paused all completed while it was paused.
- INITIALIZED → COMPLETED and FAILED → COMPLETED: found by the property test over random DAGs
  (tests/core/test_dag_properties.py) once optional phases exist. Skipping the only phase of a
  definition whose phases are all optional completes a flow that had not started; skipping a
  failed optional phase when every other phase is done completes a FAILED flow.

Both tables are checked when this module is imported (`check_tables`): every phase state is
reachable from NOT_STARTED, and nothing leaves a terminal flow status.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from flowstate.core.model import FlowStatus, PhaseState

__all__ = [
    "DONE_STATES",
    "ERROR_STATES",
    "FLOW_TRANSITIONS",
    "GROUP_STATUSES",
    "IN_PHASE_PROGRESS_SPAN",
    "PHASE_PROGRESS_FACTORS",
    "PHASE_TRANSITIONS",
    "SKIP_SOURCES",
    "TERMINAL_STATUSES",
    "RecoveryAction",
    "check_tables",
    "flow_transition_allowed",
    "phase_transition_allowed",
    "reachable_states",
    "valid_flow_targets",
    "valid_phase_targets",
]

_S = PhaseState
_F = FlowStatus

PHASE_TRANSITIONS: Mapping[PhaseState, frozenset[PhaseState]] = {
    # SKIPPED: only for phases their definition marks optional (checked by the commands).
    _S.NOT_STARTED: frozenset({_S.IN_PROGRESS, _S.SKIPPED}),
    _S.IN_PROGRESS: frozenset(
        {_S.WAITING_VALIDATION, _S.WAITING_APPROVAL, _S.COMPLETED, _S.FAILED, _S.RETRY_NEEDED}
    ),
    _S.WAITING_VALIDATION: frozenset(
        {_S.COMPLETED, _S.WAITING_APPROVAL, _S.FAILED, _S.RETRY_NEEDED}
    ),
    # IN_PROGRESS: changes requested; FAILED: rejected.
    _S.WAITING_APPROVAL: frozenset({_S.COMPLETED, _S.IN_PROGRESS, _S.FAILED}),
    _S.COMPLETED: frozenset({_S.ROLLED_BACK, _S.RETRY_NEEDED}),
    _S.FAILED: frozenset({_S.RETRY_NEEDED, _S.ROLLED_BACK, _S.SKIPPED}),
    # FAILED: retries exhausted or abandoned.
    _S.RETRY_NEEDED: frozenset({_S.IN_PROGRESS, _S.FAILED, _S.SKIPPED}),
    _S.ROLLED_BACK: frozenset({_S.IN_PROGRESS, _S.SKIPPED}),
    # ROLLED_BACK: the skip is undone (a rollback of it, or of a phase upstream).
    _S.SKIPPED: frozenset({_S.ROLLED_BACK}),
}
"""Legal phase transitions: source state → target states."""

TERMINAL_STATUSES: frozenset[FlowStatus] = frozenset({_F.COMPLETED, _F.CANCELLED})
"""Statuses nothing changes, not even a phase of the flow."""

GROUP_STATUSES: frozenset[FlowStatus] = frozenset(
    {_F.ACTIVE, _F.DATA_GATHERING, _F.DISCOVERY, _F.ASSESSMENT_READY, _F.PLANNING}
)
"""Statuses that describe *where* a healthy flow is; a phase's status group is one of them."""

DONE_STATES: frozenset[PhaseState] = frozenset({_S.COMPLETED, _S.SKIPPED})
"""Phase states that satisfy a dependency and count as done for COMPLETED."""

SKIP_SOURCES: frozenset[PhaseState] = frozenset(
    {_S.NOT_STARTED, _S.FAILED, _S.RETRY_NEEDED, _S.ROLLED_BACK}
)
"""States an optional phase may be skipped from (the phase table's sources of SKIPPED)."""

ERROR_STATES: frozenset[PhaseState] = frozenset({_S.FAILED, _S.RETRY_NEEDED})
"""Phase states that carry a phase error; a transition into them must report one."""

_ACTIVE_STATUSES = GROUP_STATUSES | {_F.WAITING_APPROVAL, _F.RETRY_PENDING, _F.ERROR_RECOVERY}


def _all_but(*excluded: FlowStatus) -> frozenset[FlowStatus]:
    return frozenset(FlowStatus) - set(excluded)


FLOW_TRANSITIONS: Mapping[FlowStatus, frozenset[FlowStatus]] = {
    # COMPLETED: extension, every phase optional and skipped (see above).
    _F.INITIALIZED: GROUP_STATUSES | {_F.PAUSED, _F.CANCELLED, _F.COMPLETED},
    **{status: _all_but(status, _F.INITIALIZED) for status in _ACTIVE_STATUSES},
    _F.FAILED: GROUP_STATUSES
    | {
        _F.RETRY_PENDING,
        _F.ERROR_RECOVERY,
        _F.CANCELLED,
        _F.PAUSED,  # extension: any non-terminal status may be paused
        _F.WAITING_APPROVAL,  # extension: rollback of the failed phase, another awaits approval
        _F.COMPLETED,  # extension: skip of the failed optional phase, every other one done
    },
    # Resume goes to the derived status; INITIALIZED and COMPLETED are extensions (see above).
    _F.PAUSED: _all_but(_F.PAUSED),
    _F.COMPLETED: frozenset(),
    _F.CANCELLED: frozenset(),
}
"""Legal flow status transitions: source status → target statuses."""

PHASE_PROGRESS_FACTORS: Mapping[PhaseState, float] = {
    _S.NOT_STARTED: 0.0,
    _S.IN_PROGRESS: 0.3,
    _S.WAITING_VALIDATION: 0.7,
    _S.WAITING_APPROVAL: 0.8,
    _S.COMPLETED: 1.0,
    _S.FAILED: 0.0,
    _S.RETRY_NEEDED: 0.1,
    _S.ROLLED_BACK: 0.0,
    _S.SKIPPED: 1.0,
}
"""Share of a phase's weight counted towards overall progress in each state."""

IN_PHASE_PROGRESS_SPAN = 0.4
"""While IN_PROGRESS the factor is 0.3 + 0.4·f for reported in-phase progress f ∈ [0, 1]."""


class RecoveryAction(enum.StrEnum):
    """A kind of recovery step (`flowstate.core.recovery` builds them; refusals name them)."""

    RESUME = "resume"
    """Resume a paused flow."""
    RETRY = "retry"
    """FAILED → RETRY_NEEDED, or RETRY_NEEDED → IN_PROGRESS (counts one attempt)."""
    FORCE_RETRY = "force_retry"
    """An admin retry of a phase whose error is non-retryable."""
    RESTART = "restart"
    """Re-run a ROLLED_BACK phase: → IN_PROGRESS (not a retry attempt)."""
    ROLLBACK = "rollback"
    """COMPLETED or FAILED → ROLLED_BACK, cascading to active downstream phases."""
    SKIP = "skip"
    """Skip an optional phase that failed: → SKIPPED, which satisfies its dependents."""
    ABANDON = "abandon"
    """Give up retrying: RETRY_NEEDED → FAILED (which may then be rolled back)."""
    CANCEL = "cancel"
    """Cancel the whole flow."""


def valid_phase_targets(state: PhaseState) -> frozenset[PhaseState]:
    """States a phase in `state` may move to."""
    return PHASE_TRANSITIONS[state]


def valid_flow_targets(status: FlowStatus) -> frozenset[FlowStatus]:
    """Statuses a flow in `status` may move to."""
    return FLOW_TRANSITIONS[status]


def phase_transition_allowed(current: PhaseState, target: PhaseState) -> bool:
    """Whether the phase table allows `current` → `target`."""
    return target in PHASE_TRANSITIONS[current]


def flow_transition_allowed(current: FlowStatus, target: FlowStatus) -> bool:
    """Whether the flow table allows `current` → `target`."""
    return target in FLOW_TRANSITIONS[current]


def reachable_states(start: PhaseState = PhaseState.NOT_STARTED) -> frozenset[PhaseState]:
    """Every phase state reachable from `start` through the phase table (including itself)."""
    seen = {start}
    frontier = [start]
    while frontier:
        for target in PHASE_TRANSITIONS[frontier.pop()]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    return frozenset(seen)


def check_tables() -> None:
    """Raise ValueError when the tables break a structural rule (run at import time)."""
    missing = set(PhaseState) - set(PHASE_TRANSITIONS)
    if missing:
        raise ValueError(f"phase table has no row for {sorted(s.value for s in missing)}")
    unreachable = set(PhaseState) - reachable_states()
    if unreachable:
        raise ValueError(f"phase states unreachable: {sorted(s.value for s in unreachable)}")
    for status in TERMINAL_STATUSES:
        if FLOW_TRANSITIONS[status]:
            raise ValueError(f"terminal flow status {status.value} has outgoing transitions")
    skip_sources = {s for s, targets in PHASE_TRANSITIONS.items() if PhaseState.SKIPPED in targets}
    if skip_sources != SKIP_SOURCES:
        raise ValueError("SKIP_SOURCES does not match the phase table")
    if set(FlowStatus) - set(FLOW_TRANSITIONS):
        raise ValueError("flow table does not cover every status")


check_tables()
