"""The seed guide's `FlowStateMachine` API, as a thin façade over the pure core.

Code written against the guide (``app.services.flow_state_machine``) runs unchanged but for the
import path::

    from flowstate.flow_state_machine import FlowStateMachine, PhaseState

    state_machine = FlowStateMachine()
    is_valid, error = state_machine.validate_phase_transition(
        "data_import", PhaseState.NOT_STARTED, PhaseState.IN_PROGRESS
    )

The machine works on the guide's shape, a mapping phase name → `PhaseState` (state values as
strings are accepted too), for the definition it was built with (`DISCOVERY` by default).
Validation methods return ``(ok, error)`` tuples instead of raising; an error is a
`FlowTransitionError` (the core's `FlowStateError`) whose ``error_code`` compares equal to the
code string (``error.error_code == "INVALID_PHASE"``). `transition_history` holds
`PhaseTransition` records. Without per-phase retry counts or errors, `get_recovery_options`
assumes no retry was used yet and errors are retryable.

It lives outside `flowstate.core` because it reads a clock (the core never does):
`transition_phase` stamps its records and `create_error_response` its responses with `clock()`,
which defaults to ``datetime.now(UTC)`` and can be injected for tests. Services use
`flowstate.core.commands`, where time comes in through `Context`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from flowstate.core.commands import (
    check_phase_order,
    validate_flow_status_transition,
    validate_phase_transition,
)
from flowstate.core.definitions import DISCOVERY, FlowDefinition
from flowstate.core.derivation import calculate_progress, determine_flow_status
from flowstate.core.errors import FlowStateError, jsonable
from flowstate.core.model import (
    RETRYABLE_ERROR_CODES,
    ErrorCode,
    Flow,
    FlowStatus,
    Phase,
    PhaseState,
    Tenant,
)
from flowstate.core.recovery import get_recovery_options
from flowstate.core.rules import FLOW_TRANSITIONS, PHASE_PROGRESS_FACTORS, PHASE_TRANSITIONS

__all__ = [
    "ErrorCode",
    "FlowStateMachine",
    "FlowStatus",
    "FlowTransitionError",
    "PhaseState",
    "PhaseTransition",
]

FlowTransitionError = FlowStateError
"""The guide's name for a refused transition: the core's `FlowStateError` (``error_code``,
``message``, ``details``, ``retry_allowed``, ``to_dict``)."""

StateLike = PhaseState | str
StatusLike = FlowStatus | str


@dataclass(frozen=True, slots=True)
class PhaseTransition:
    """One applied transition in `FlowStateMachine.transition_history` (the guide's record)."""

    phase: str
    from_state: PhaseState
    to_state: PhaseState
    reason: str
    user_id: str | None
    timestamp: datetime
    metadata: dict[str, Any] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _state(value: StateLike) -> PhaseState:
    try:
        return PhaseState(value)
    except ValueError:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"Unknown phase state {value!r}",
            field="state",
            valid_states=list(PhaseState),
        ) from None


def _status(value: StatusLike) -> FlowStatus:
    try:
        return FlowStatus(value)
    except ValueError:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"Unknown flow status {value!r}",
            field="status",
            valid_statuses=list(FlowStatus),
        ) from None


class FlowStateMachine:
    """The seed guide's state machine over one flow definition (default: discovery)."""

    VALID_PHASE_TRANSITIONS: ClassVar[Mapping[PhaseState, frozenset[PhaseState]]] = (
        PHASE_TRANSITIONS
    )
    VALID_FLOW_TRANSITIONS: ClassVar[Mapping[FlowStatus, frozenset[FlowStatus]]] = FLOW_TRANSITIONS
    PHASE_PROGRESS_WEIGHTS: ClassVar[Mapping[PhaseState, float]] = PHASE_PROGRESS_FACTORS
    RETRYABLE_ERRORS: ClassVar[frozenset[ErrorCode]] = RETRYABLE_ERROR_CODES

    def __init__(
        self,
        definition: FlowDefinition = DISCOVERY,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Bind the machine to `definition`; `clock` stamps audit records and error responses."""
        self.definition = definition
        self._clock = clock
        self.PHASES: list[str] = list(definition.phase_names)
        self.PHASE_WEIGHTS: dict[str, int] = dict(definition.weights)
        self.transition_history: list[PhaseTransition] = []

    def _states(self, phase_states: Mapping[str, StateLike]) -> dict[str, PhaseState]:
        return {name: _state(state) for name, state in phase_states.items()}

    def validate_phase_transition(
        self, phase: str, current_state: StateLike, target_state: StateLike
    ) -> tuple[bool, FlowStateError | None]:
        """Whether the phase table allows the move, and the error when it does not."""
        try:
            optional = self.definition.phase(phase).optional
            current, target = _state(current_state), _state(target_state)
        except FlowStateError as malformed:
            return False, malformed
        refusal = validate_phase_transition(phase, current, target, optional=optional)
        return refusal is None, refusal

    def validate_flow_transition(
        self, current_status: StatusLike, target_status: StatusLike
    ) -> tuple[bool, FlowStateError | None]:
        """Whether the flow table allows the move, and the error when it does not."""
        try:
            current, target = _status(current_status), _status(target_status)
        except FlowStateError as malformed:
            return False, malformed
        refusal = validate_flow_status_transition(current, target)
        return refusal is None, refusal

    def validate_phase_order(
        self,
        phase_states: Mapping[str, StateLike],
        phase: str,
        target_state: StateLike,
    ) -> tuple[bool, str | None]:
        """Whether the dependencies allow `phase` to enter `target_state`, else why not."""
        try:
            self.definition.phase(phase)
            error = check_phase_order(
                self.definition, self._states(phase_states), phase, _state(target_state)
            )
        except FlowStateError as refusal:
            error = refusal
        return (True, None) if error is None else (False, error.message)

    def transition_phase(
        self,
        phase: str,
        current_state: StateLike,
        target_state: StateLike,
        reason: str,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
    ) -> tuple[bool, FlowStateError | None]:
        """Validate the move and, when legal, append a `PhaseTransition` to `transition_history`.

        The record holds phase, from_state, to_state, reason, user_id, metadata and the time
        from the clock.
        """
        valid, error = self.validate_phase_transition(phase, current_state, target_state)
        if not valid:
            return False, error
        self.transition_history.append(
            PhaseTransition(
                phase=phase,
                from_state=_state(current_state),
                to_state=_state(target_state),
                reason=reason,
                user_id=user_id,
                timestamp=self._clock(),
                metadata=dict(metadata or {}),
            )
        )
        return True, None

    def calculate_progress(self, phase_states: Mapping[str, StateLike]) -> float:
        """Overall progress in percent for these phase states (missing phases: NOT_STARTED)."""
        return calculate_progress(self.definition, self._states(phase_states))

    def determine_flow_status(
        self, phase_states: Mapping[str, StateLike], current_status: StatusLike
    ) -> FlowStatus:
        """The derived flow status for these phase states."""
        return determine_flow_status(
            self.definition, self._states(phase_states), _status(current_status)
        )

    def get_recovery_options(self, phase_states: Mapping[str, StateLike]) -> list[dict[str, Any]]:
        """Recovery options as plain dicts, ranked as in `flowstate.core.recovery`.

        Each dict has action, phase, target_state and target_status (string values or None),
        reason, allowed, blocked_by, blocking_detail and attempts_remaining.
        """
        states = self._states(phase_states)
        phases = tuple(
            Phase(name=name, state=states.get(name, PhaseState.NOT_STARTED))
            for name in self.definition.phase_names
        )
        flow = Flow(
            flow_id="",
            tenant=Tenant(client_account_id="", engagement_id=""),
            definition_name=self.definition.name,
            definition_version=self.definition.version,
            phases=phases,
            status=determine_flow_status(self.definition, phases, FlowStatus.INITIALIZED),
        )
        return [
            {
                "action": option.action.value,
                "phase": option.phase,
                "target_state": jsonable(option.target_state),
                "target_status": jsonable(option.target_status),
                "reason": option.reason,
                "allowed": option.allowed,
                "blocked_by": jsonable(option.blocked_by),
                "blocking_detail": option.blocking_detail,
                "attempts_remaining": option.attempts_remaining,
            }
            for option in get_recovery_options(flow, self.definition)
        ]

    def get_phase_dependencies(self) -> dict[str, list[str]]:
        """Phase name → names of its direct dependencies, in definition order."""
        return {p.name: list(p.depends_on) for p in self.definition.phases}

    def create_error_response(
        self, error_code: ErrorCode | str, message: str, **details: Any
    ) -> dict[str, Any]:
        """The seed's structured error response, stamped with the clock.

        `retry_allowed` follows the classification (`RETRYABLE_ERROR_CODES`).
        """
        return FlowStateError(ErrorCode(error_code), message, **details).to_dict(self._clock())
