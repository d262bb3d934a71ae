"""The pure command layer: decide what a command does to a flow, or refuse it.

(Work in progress: signatures first so storage and server can code against them.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from flowstate.core.definitions import FlowDefinition
from flowstate.core.derivation import calculate_progress, determine_flow_status
from flowstate.core.errors import FlowStateError
from flowstate.core.model import Flow, FlowStatus, HistoryEntry, PhaseError, PhaseState, Tenant

__all__ = [
    "CancelFlow",
    "Command",
    "Context",
    "Decision",
    "PauseFlow",
    "ResumeFlow",
    "Retry",
    "Rollback",
    "TransitionPhase",
    "UpdatePhaseProgress",
    "apply_command",
    "calculate_progress",
    "create_flow",
    "determine_flow_status",
    "validate_command",
    "validate_flow_status_transition",
]


@dataclass(frozen=True, slots=True)
class Context:
    """Who asks, and when: the only source of time and identity for the core."""

    now: datetime
    user_id: str = ""
    request_id: str = ""
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class TransitionPhase:
    """Move one phase to `target_state`; FAILED and RETRY_NEEDED carry the phase `error`."""

    phase: str
    target_state: PhaseState
    reason: str = ""
    error: PhaseError | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdatePhaseProgress:
    """Report in-phase progress f ∈ [0, 1] of a running (IN_PROGRESS) phase."""

    phase: str
    progress: float
    reason: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rollback:
    """Roll a COMPLETED or FAILED phase back, cascading to active downstream phases."""

    phase: str
    cascade: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry a phase: FAILED → RETRY_NEEDED, RETRY_NEEDED → IN_PROGRESS (one attempt)."""

    phase: str
    force: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PauseFlow:
    """Pause the flow: no phase may start until it is resumed."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class ResumeFlow:
    """Resume a paused flow to its derived status."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancelFlow:
    """Cancel the flow for good."""

    reason: str = ""


_EMPTY: Mapping[str, Any] = MappingProxyType({})

Command = (
    TransitionPhase | UpdatePhaseProgress | Rollback | Retry | PauseFlow | ResumeFlow | CancelFlow
)
"""Every command `apply_command` accepts."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a command: the new flow and the history entries it appends, in order."""

    flow: Flow
    entries: tuple[HistoryEntry, ...]


def create_flow(
    flow_id: str,
    tenant: Tenant,
    definition: FlowDefinition,
    ctx: Context,
    *,
    display_name: str = "",
    labels: Mapping[str, str] = _EMPTY,
) -> Decision:
    """A new flow (version 1, INITIALIZED, every phase NOT_STARTED) and its CREATED entry."""
    raise NotImplementedError


def apply_command(
    flow: Flow, definition: FlowDefinition, command: Command, ctx: Context
) -> Decision:
    """Decide `command` on `flow`; raise FlowStateError when it is refused."""
    raise NotImplementedError


def validate_command(
    flow: Flow, definition: FlowDefinition, command: Command, ctx: Context
) -> FlowStateError | None:
    """Dry run of `apply_command`: the refusal it would raise, or None when it would apply."""
    raise NotImplementedError


def validate_flow_status_transition(
    current: FlowStatus, target: FlowStatus
) -> FlowStateError | None:
    """INVALID_FLOW_TRANSITION when the flow table does not allow `current` → `target`."""
    raise NotImplementedError
