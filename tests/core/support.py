"""Shared builders for the core tests: fixed times, a tenant, flows in chosen states."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from flowstate.core import (
    DISCOVERY,
    Command,
    Context,
    ErrorCode,
    Flow,
    FlowDefinition,
    FlowStatus,
    HistoryEntry,
    Phase,
    PhaseDefinition,
    PhaseError,
    PhaseState,
    Tenant,
    apply_command,
    create_flow,
    determine_flow_status,
)

T0 = datetime(2025, 1, 19, 10, 30, tzinfo=UTC)
TENANT = Tenant(client_account_id="client-1", engagement_id="engagement-1")
RETRYABLE = PhaseError(ErrorCode.AGENT_TIMEOUT, "agent timed out", {"after_seconds": 30})
FATAL = PhaseError(ErrorCode.DATA_VALIDATION_FAILED, "bad rows", {"rows": [3, 7]})
ERROR_STATES = frozenset({PhaseState.FAILED, PhaseState.RETRY_NEEDED})

S = PhaseState
F = FlowStatus

BRANCHY = FlowDefinition(
    name="branchy",
    version=2,
    phases=(
        PhaseDefinition("extract", (), 25, 1, None),
        PhaseDefinition("left", ("extract",), 25, 2, FlowStatus.DISCOVERY),
        PhaseDefinition("right", ("extract",), 25, 0, None),
        PhaseDefinition("merge", ("left", "right"), 25, 1, FlowStatus.PLANNING),
    ),
)
"""A custom definition with parallel branches (a diamond), to show definitions drop in."""


def at(seconds: float) -> datetime:
    """T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def ctx(seconds: float = 0, *, admin: bool = False, user: str = "user-1") -> Context:
    """A context at T0 + `seconds`."""
    return Context(now=at(seconds), user_id=user, request_id=f"req-{seconds}", is_admin=admin)


def new_flow(definition: FlowDefinition = DISCOVERY) -> Flow:
    """A freshly created flow (version 1)."""
    return create_flow("flow-1", TENANT, definition, ctx()).flow


def flow_with(
    states: Mapping[str, PhaseState],
    *,
    definition: FlowDefinition = DISCOVERY,
    status: FlowStatus | None = None,
    retry_counts: Mapping[str, int] | None = None,
    errors: Mapping[str, PhaseError | None] | None = None,
    status_before_pause: FlowStatus | None = None,
) -> Flow:
    """A flow whose phases are in `states` (others NOT_STARTED), at version 10.

    Phases in FAILED or RETRY_NEEDED carry RETRYABLE unless `errors` says otherwise; the
    status is derived from INITIALIZED unless given.
    """
    retry_counts = retry_counts or {}
    errors = errors or {}
    phases = []
    for name in definition.phase_names:
        state = states.get(name, PhaseState.NOT_STARTED)
        default_error = RETRYABLE if state in ERROR_STATES else None
        phases.append(
            Phase(
                name=name,
                state=state,
                retry_count=retry_counts.get(name, 0),
                error=errors.get(name, default_error),
                state_entered_at=None if state is PhaseState.NOT_STARTED else T0,
            )
        )
    derived = determine_flow_status(definition, phases, FlowStatus.INITIALIZED)
    return Flow(
        flow_id="flow-1",
        tenant=TENANT,
        definition_name=definition.name,
        definition_version=definition.version,
        phases=tuple(phases),
        status=status or derived,
        status_before_pause=status_before_pause,
        version=10,
        created_at=T0,
        updated_at=T0,
    )


def run(
    flow: Flow,
    *commands: Command,
    definition: FlowDefinition = DISCOVERY,
    admin: bool = False,
) -> tuple[Flow, list[HistoryEntry]]:
    """Apply `commands` in order, ten seconds apart; the final flow and every entry."""
    entries: list[HistoryEntry] = []
    for step, command in enumerate(commands, start=1):
        decision = apply_command(flow, definition, command, ctx(10 * step, admin=admin))
        flow = decision.flow
        entries.extend(decision.entries)
    return flow, entries


def states_of(flow: Flow) -> dict[str, PhaseState]:
    """Phase name → state."""
    return flow.phase_states
