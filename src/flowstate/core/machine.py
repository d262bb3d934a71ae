"""The seed guide's `FlowStateMachine` API, as a thin wrapper over the pure core.

(Work in progress: signatures first.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from flowstate.core.definitions import DISCOVERY, FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, PhaseState

__all__ = ["FlowStateMachine"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FlowStateMachine:
    """The seed guide's state machine over one flow definition (default: discovery)."""

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
        self.transition_history: list[dict[str, Any]] = []

    def validate_phase_transition(
        self, phase: str, current_state: PhaseState | str, target_state: PhaseState | str
    ) -> tuple[bool, FlowStateError | None]:
        """Whether the phase table allows the move, and the error when it does not."""
        raise NotImplementedError

    def validate_flow_transition(
        self, current_status: FlowStatus | str, target_status: FlowStatus | str
    ) -> tuple[bool, FlowStateError | None]:
        """Whether the flow table allows the move, and the error when it does not."""
        raise NotImplementedError

    def validate_phase_order(
        self,
        phase_states: Mapping[str, PhaseState | str],
        phase: str,
        target_state: PhaseState | str,
    ) -> tuple[bool, str | None]:
        """Whether the dependencies allow `phase` to enter `target_state`, else why not."""
        raise NotImplementedError

    def transition_phase(
        self,
        phase: str,
        current_state: PhaseState | str,
        target_state: PhaseState | str,
        reason: str,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
    ) -> tuple[bool, FlowStateError | None]:
        """Validate the move and, when legal, append an audit record to `transition_history`."""
        raise NotImplementedError

    def calculate_progress(self, phase_states: Mapping[str, PhaseState | str]) -> float:
        """Overall progress in percent for these phase states."""
        raise NotImplementedError

    def determine_flow_status(
        self, phase_states: Mapping[str, PhaseState | str], current_status: FlowStatus | str
    ) -> FlowStatus:
        """The derived flow status for these phase states."""
        raise NotImplementedError

    def get_recovery_options(
        self, phase_states: Mapping[str, PhaseState | str]
    ) -> list[dict[str, Any]]:
        """Recovery options as plain dicts (phase, action, target_state, ...)."""
        raise NotImplementedError

    def get_phase_dependencies(self) -> dict[str, list[str]]:
        """Phase name → names of its direct dependencies."""
        raise NotImplementedError

    def create_error_response(
        self, error_code: ErrorCode | str, message: str, **details: Any
    ) -> dict[str, Any]:
        """The seed's structured error response, stamped with the clock."""
        raise NotImplementedError
