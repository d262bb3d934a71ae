"""Bulk actions in the domain's words: what one does to each flow, and how it stands.

A bulk action (docs/bulk-actions.md) applies one command to a fixed set of flows, one flow per
transaction. This module holds the pure part: the kinds, states and outcomes, and the command a
kind means for one flow (`bulk_command`). The use case (`flowstate.service.bulk`) runs it; the
store keeps it (`flowstate.storage.bulk`).
"""

from __future__ import annotations

import enum

from flowstate.core.commands import (
    CancelFlow,
    Command,
    PauseFlow,
    ResumeFlow,
    Retry,
    Rollback,
    SkipPhase,
)

__all__ = [
    "PHASE_KINDS",
    "BulkActionKind",
    "BulkActionState",
    "BulkOutcome",
    "bulk_command",
    "bulk_request_id",
]


class BulkActionKind(enum.StrEnum):
    """What a bulk action does to each flow."""

    RETRY = "retry"
    """Retry the flow's first FAILED phase as of the start (FAILED → RETRY_NEEDED)."""
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    ROLLBACK = "rollback"
    """Roll back the action's phase (cascading)."""
    SKIP = "skip"
    """Skip the action's (optional) phase."""


PHASE_KINDS = frozenset({BulkActionKind.ROLLBACK, BulkActionKind.SKIP})
"""Kinds that name their phase in the request; RETRY finds its phase per flow."""


class BulkActionState(enum.StrEnum):
    """Where a bulk action stands."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"


class BulkOutcome(enum.StrEnum):
    """What happened to one flow of a bulk action."""

    APPLIED = "applied"
    REFUSED = "refused"
    SKIPPED = "skipped"


def bulk_command(kind: BulkActionKind, phase: str | None, reason: str) -> Command | None:
    """The command `kind` means for one flow (`phase`: the action's, or the flow's first FAILED
    phase for RETRY); None when there is nothing to do (a RETRY of a flow without one)."""
    if kind is BulkActionKind.RETRY:
        return None if phase is None else Retry(phase, reason=reason)
    if kind is BulkActionKind.CANCEL:
        return CancelFlow(reason=reason)
    if kind is BulkActionKind.PAUSE:
        return PauseFlow(reason=reason)
    if kind is BulkActionKind.RESUME:
        return ResumeFlow(reason=reason)
    if phase is None:
        raise ValueError(f"a {kind.value} bulk action needs a phase")
    if kind is BulkActionKind.ROLLBACK:
        return Rollback(phase, cascade=True, reason=reason)
    return SkipPhase(phase, reason=reason)


def bulk_request_id(action_id: str, flow_id: str) -> str:
    """The request id of an action's command on one flow: the same on every attempt, so the
    flow's idempotency key replays a command that committed before a crash instead of applying
    it twice (76 characters, within the 128 of a request id)."""
    return f"bulk-{action_id}-{flow_id}"
