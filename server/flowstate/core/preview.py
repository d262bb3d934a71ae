"""Dry runs of transitions: whether one may happen now, why not, and what it would lead to.

The answer behind ValidateTransition, computed by the same rules that apply the commands: a
dry run on a flow runs the matching command through `apply_command` and stores nothing, so the
two can never disagree. Without a flow only the tables (and the definition's phase names) are
consulted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flowstate.core.commands import (
    CancelFlow,
    Command,
    Context,
    PauseFlow,
    ResumeFlow,
    TransitionPhase,
    apply_command,
    attempts_remaining,
    blocking_phases,
    validate_command,
    validate_flow_status_transition,
    validate_phase_transition,
)
from flowstate.core.definitions import FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow, FlowStatus, PhaseError, PhaseState
from flowstate.core.rules import ERROR_STATES

__all__ = [
    "TransitionVerdict",
    "preview_flow_transition",
    "preview_phase_transition",
    "table_flow_transition",
    "table_phase_transition",
]

# A dry run of a transition into FAILED/RETRY_NEEDED needs a failure report; its content
# does not change the answer (the retry gate reads the error the phase already carries).
_DRY_RUN_FAILURE = PhaseError(ErrorCode.PHASE_EXECUTION_FAILED, "ValidateTransition dry run")


@dataclass(frozen=True, slots=True)
class TransitionVerdict:
    """Whether a transition is allowed (`refusal` is None) and what the answer knows.

    `targets_of_state` / `targets_of_status`: the phase state / flow status whose legal
    targets (by the tables) belong in the answer, SKIPPED among them only when the phase is
    `optional`; `flow_version` 0 when no flow was named;
    `resulting_status` and `resulting_progress` are set when the transition is allowed on a
    flow.
    """

    refusal: FlowStateError | None
    targets_of_state: PhaseState | None = None
    targets_of_status: FlowStatus | None = None
    blocking_phases: tuple[str, ...] = ()
    attempts_remaining: int | None = None
    flow_version: int = 0
    resulting_status: FlowStatus | None = None
    resulting_progress: float | None = None
    optional: bool = False

    @property
    def allowed(self) -> bool:
        """Whether the transition would be applied."""
        return self.refusal is None


def _phase_refusal(definition: FlowDefinition, phase: str) -> FlowStateError | None:
    """INVALID_PHASE (with the valid phases) when `definition` has no phase `phase`."""
    try:
        definition.phase(phase)
    except FlowStateError as refusal:
        return refusal
    return None


def table_flow_transition(current: FlowStatus, target: FlowStatus) -> TransitionVerdict:
    """The flow table's answer for `current` → `target`, without a flow."""
    return TransitionVerdict(
        validate_flow_status_transition(current, target), targets_of_status=current
    )


def table_phase_transition(
    definition: FlowDefinition, phase: str, current: PhaseState, target: PhaseState
) -> TransitionVerdict:
    """The phase table's answer for `phase` of `definition` going `current` → `target`."""
    optional = definition.has_phase(phase) and definition.phase(phase).optional
    refusal = _phase_refusal(definition, phase) or validate_phase_transition(
        phase, current, target, optional=optional
    )
    return TransitionVerdict(refusal, targets_of_state=current, optional=optional)


def preview_phase_transition(
    flow: Flow, definition: FlowDefinition, phase: str, target: PhaseState, ctx: Context
) -> TransitionVerdict:
    """Dry run of TransitionPhase(`phase`, `target`) on `flow`."""
    refusal = _phase_refusal(definition, phase)
    if refusal is not None:
        return TransitionVerdict(refusal, flow_version=flow.version)
    current = flow.phase(phase)
    needs_failure = target in ERROR_STATES and current.state not in ERROR_STATES
    command = TransitionPhase(phase, target, error=_DRY_RUN_FAILURE if needs_failure else None)
    blocking: tuple[str, ...] = ()
    if target in (PhaseState.IN_PROGRESS, PhaseState.SKIPPED):
        blocking = tuple(blocking_phases(definition, flow.phase_states, phase))
    verdict = TransitionVerdict(
        None,
        targets_of_state=current.state,
        optional=definition.phase(phase).optional,
        blocking_phases=blocking,
        attempts_remaining=attempts_remaining(definition.phase(phase), current),
        flow_version=flow.version,
    )
    return _dry_run(flow, definition, command, ctx, verdict)


def preview_flow_transition(
    flow: Flow, definition: FlowDefinition, target: FlowStatus, ctx: Context
) -> TransitionVerdict:
    """Dry run of moving `flow` to status `target`.

    PAUSED and CANCELLED are commands (PauseFlow, CancelFlow), as is leaving PAUSED
    (ResumeFlow, allowed only when the status it leads to is `target`); any other target is a
    status the derivation produces, not one a caller asks for: the flow table answers.
    """
    verdict = TransitionVerdict(None, targets_of_status=flow.status, flow_version=flow.version)
    command: Command | None = None
    if target is FlowStatus.PAUSED:
        command = PauseFlow()
    elif target is FlowStatus.CANCELLED:
        command = CancelFlow()
    elif flow.status is FlowStatus.PAUSED:
        command = ResumeFlow()
    if command is None:
        refusal = validate_flow_status_transition(flow.status, target)
        if refusal is not None:
            return replace(verdict, refusal=refusal)
        return replace(verdict, resulting_status=target, resulting_progress=flow.progress)
    return _dry_run(flow, definition, command, ctx, verdict, wanted_status=target)


def _dry_run(
    flow: Flow,
    definition: FlowDefinition,
    command: Command,
    ctx: Context,
    verdict: TransitionVerdict,
    *,
    wanted_status: FlowStatus | None = None,
) -> TransitionVerdict:
    """Run `command` through the core without storing anything; describe the outcome."""
    refusal = validate_command(flow, definition, command, ctx)
    if refusal is not None:
        return replace(verdict, refusal=refusal)
    after = apply_command(flow, definition, command, ctx).flow
    if wanted_status is not None and after.status is not wanted_status:
        return replace(
            verdict,
            refusal=FlowStateError(
                ErrorCode.INVALID_FLOW_TRANSITION,
                f"Resuming the flow leads to '{after.status.value}', not '{wanted_status.value}'",
                from_status=flow.status,
                to_status=wanted_status,
                valid_transitions=[after.status, FlowStatus.CANCELLED],
            ),
        )
    return replace(verdict, resulting_status=after.status, resulting_progress=after.progress)
