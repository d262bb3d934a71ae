"""Recovery options: what can be done about the current state of a flow, ranked.

(Work in progress: signatures first.)
"""

from __future__ import annotations

from dataclasses import dataclass

from flowstate.core.commands import Command
from flowstate.core.definitions import FlowDefinition
from flowstate.core.model import ErrorCode, Flow, FlowStatus, PhaseState
from flowstate.core.rules import RecoveryAction

__all__ = ["RecoveryAction", "RecoveryOption", "get_recovery_options"]


@dataclass(frozen=True, slots=True)
class RecoveryOption:
    """One recovery step, ready to send as `command`; `allowed` says whether it would apply now."""

    action: RecoveryAction
    phase: str | None
    target_state: PhaseState | None
    target_status: FlowStatus | None
    reason: str
    allowed: bool
    blocked_by: ErrorCode | None
    blocking_detail: str
    attempts_remaining: int | None
    command: Command


def get_recovery_options(flow: Flow, definition: FlowDefinition) -> list[RecoveryOption]:
    """Every recovery option for `flow`, most useful first."""
    raise NotImplementedError
