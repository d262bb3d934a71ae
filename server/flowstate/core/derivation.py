"""Values derived from the phases of a flow: its status and its overall progress.

Both functions accept the phases either as `Phase` values (in-phase progress counts) or as a
mapping phase name → `PhaseState` (the seed guide's shape; in-phase progress counts as 0).
Phases the definition has but the input lacks count as NOT_STARTED; names the definition does
not know are ignored by the derivation (the commands refuse them with INVALID_PHASE).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flowstate.core.definitions import FlowDefinition
from flowstate.core.model import FlowStatus, Phase, PhaseState
from flowstate.core.rules import DONE_STATES, IN_PHASE_PROGRESS_SPAN, PHASE_PROGRESS_FACTORS

__all__ = ["PhasesInput", "calculate_progress", "determine_flow_status", "phase_factor"]

PhasesInput = Iterable[Phase] | Mapping[str, PhaseState]
"""Phases as `Phase` values, or as phase name → state."""

_STICKY_STATUSES = frozenset({FlowStatus.CANCELLED, FlowStatus.COMPLETED, FlowStatus.PAUSED})
_RECOVERING_STATUSES = frozenset(
    {FlowStatus.RETRY_PENDING, FlowStatus.ERROR_RECOVERY, FlowStatus.FAILED}
)
_MAX_PROGRESS = 100.0


def _normalise(
    definition: FlowDefinition, phases: PhasesInput
) -> dict[str, tuple[PhaseState, float]]:
    """Phase name → (state, in-phase progress), in definition order, defaults filled in."""
    given: dict[str, tuple[PhaseState, float]] = {}
    if isinstance(phases, Mapping):
        given = {name: (PhaseState(state), 0.0) for name, state in phases.items()}
    else:
        given = {p.name: (p.state, p.progress) for p in phases}
    return {name: given.get(name, (PhaseState.NOT_STARTED, 0.0)) for name in definition.phase_names}


def determine_flow_status(
    definition: FlowDefinition, phases: PhasesInput, current_status: FlowStatus
) -> FlowStatus:
    """The flow status after a change, by the first DESIGN.md rule that applies.

    1. CANCELLED and COMPLETED are terminal; PAUSED stays until resumed.
    2. No phase has left NOT_STARTED → `current_status`.
    3. Every phase COMPLETED or SKIPPED → COMPLETED.
    4. Some phase FAILED and none RETRY_NEEDED or IN_PROGRESS → FAILED.
    5. Some phase RETRY_NEEDED → RETRY_PENDING.
    6. Some phase IN_PROGRESS while the flow is RETRY_PENDING, ERROR_RECOVERY or FAILED
       → ERROR_RECOVERY.
    7. Some phase WAITING_APPROVAL → WAITING_APPROVAL.
    8. The status group of the furthest (in definition order) phase that has left NOT_STARTED
       and was not skipped (a skipped one only when every phase that left NOT_STARTED was
       skipped), or ACTIVE when that phase has no status group.

    Parallel branches (docs/definitions.md): when several phases are active at once, the most
    urgent condition wins (rules 4-7 look at every phase, in that order: FAILED, RETRY_PENDING,
    ERROR_RECOVERY, WAITING_APPROVAL); when none applies, two branches in different status
    groups give the group of the branch listed later in the definition. Definition order is a
    topological order, so "later" is never upstream, and the author decides which group wins
    by the order of independent phases. The status is a function of the phase states and the
    current status only: it does not depend on which branch moved first.
    """
    if current_status in _STICKY_STATUSES:
        return current_status
    states = {name: state for name, (state, _) in _normalise(definition, phases).items()}
    present = set(states.values())
    if present == {PhaseState.NOT_STARTED}:
        return current_status
    if present <= DONE_STATES:
        return FlowStatus.COMPLETED
    if PhaseState.FAILED in present and not present & {
        PhaseState.RETRY_NEEDED,
        PhaseState.IN_PROGRESS,
    }:
        return FlowStatus.FAILED
    if PhaseState.RETRY_NEEDED in present:
        return FlowStatus.RETRY_PENDING
    if PhaseState.IN_PROGRESS in present and current_status in _RECOVERING_STATUSES:
        return FlowStatus.ERROR_RECOVERY
    if PhaseState.WAITING_APPROVAL in present:
        return FlowStatus.WAITING_APPROVAL
    left = [name for name, state in states.items() if state is not PhaseState.NOT_STARTED]
    ran = [name for name in left if states[name] is not PhaseState.SKIPPED]
    furthest = (ran or left)[-1]
    return definition.phase(furthest).status_group or FlowStatus.ACTIVE


def phase_factor(state: PhaseState, in_phase_progress: float = 0.0) -> float:
    """Share of its weight a phase in `state` contributes (0.3 + 0.4·f while IN_PROGRESS)."""
    factor = PHASE_PROGRESS_FACTORS[state]
    if state is PhaseState.IN_PROGRESS:
        # Clamp: a stored value outside [0, 1] must never push progress out of range.
        fraction = min(max(in_phase_progress, 0.0), 1.0)
        factor += IN_PHASE_PROGRESS_SPAN * fraction
    return factor


def calculate_progress(definition: FlowDefinition, phases: PhasesInput) -> float:
    """Overall progress in percent: Σ weight * factor(state), rounded to 0.1, capped at 100."""
    total = sum(
        definition.phase(name).weight * phase_factor(state, fraction)
        for name, (state, fraction) in _normalise(definition, phases).items()
    )
    return round(min(max(total, 0.0), _MAX_PROGRESS), 1)
