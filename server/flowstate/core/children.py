"""Child flows, pure: what a parent phase learns from its child, and the checks of a link.

A phase of kind ``child_flow`` (`flowstate.core.definitions.ChildFlowSpec`) follows one child
flow at a time. The use case (`flowstate.service.flows`) calls `follow_command` after every
change of a flow that has a parent and applies the result to the parent in the same
transaction; `flowstate.core.commands` decides what the phase does (`FollowChild`).

The mapping (docs/child_flows.md):

- child COMPLETED → phase COMPLETED;
- child FAILED → phase FAILED, carrying `child_failure` (the child's first failed phase's error
  code, so retryability is the child's, its message and details prefixed with the child);
- child CANCELLED → phase FAILED with CHILD_FLOW_CANCELLED (retryable: a retry makes a new
  child);
- any other child status → phase IN_PROGRESS, its in-phase progress the child's progress / 100.

The parent's status is derived from its own phases only (DESIGN.md section 2), never from a
child's status: a child only ever moves one phase of its parent.
"""

from __future__ import annotations

from flowstate.core.commands import FollowChild
from flowstate.core.model import Flow, FlowStatus, PhaseError, PhaseState

__all__ = ["child_failure", "follow_command"]


def child_failure(child: Flow) -> PhaseError | None:
    """The error a FAILED child hands its parent phase (None while it has no failed phase)."""
    for phase in child.phases:
        if phase.state is PhaseState.FAILED and phase.error is not None:
            error = phase.error
            return PhaseError(
                error_code=error.error_code,
                message=f"Child flow {child.flow_id} failed in phase '{phase.name}': "
                f"{error.message}",
                details={
                    "child_flow_id": child.flow_id,
                    "child_phase": phase.name,
                    "child_details": dict(error.details),
                },
            )
    return None


def follow_command(child: Flow) -> FollowChild | None:
    """The command that makes the parent phase follow `child` (None for a root flow)."""
    if child.parent_flow_id is None or child.parent_phase is None:
        return None
    return FollowChild(
        phase=child.parent_phase,
        child_flow_id=child.flow_id,
        child_status=child.status,
        child_progress=child.progress,
        child_error=child_failure(child) if child.status is FlowStatus.FAILED else None,
    )
