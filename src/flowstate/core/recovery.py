"""Recovery options: what can be done about the current state of a flow, ranked.

(Work in progress: signatures first.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flowstate.core.commands import Command
from flowstate.core.definitions import FlowDefinition
from flowstate.core.model import ErrorCode, Flow, FlowStatus, PhaseState

__all__ = ["RecoveryAction", "RecoveryOption", "get_recovery_options"]


class RecoveryAction(enum.StrEnum):
    """A kind of recovery step."""

    RESUME = "resume"
    RETRY = "retry"
    FORCE_RETRY = "force_retry"
    RESTART = "restart"
    ROLLBACK = "rollback"
    ABANDON = "abandon"
    CANCEL = "cancel"


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
