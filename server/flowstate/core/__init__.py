"""Flowstate core: the pure state machine of multi-phase flows (standard library only).

Modules:

- `model`: the domain values (states, statuses, error codes, flows, history entries);
- `definitions`: flow definitions as data, their validation, the built-in `DISCOVERY`;
- `rules`: the phase and flow transition tables and progress factors, as data;
- `derivation`: `determine_flow_status` and `calculate_progress`;
- `errors`: `FlowStateError` (refusals) and `DefinitionError`;
- `commands`: commands, `create_flow`, `apply_command`, `validate_command` (the server's API);
- `recovery`: ranked recovery options, each with its ready-to-send command;
- `preview`: dry runs of transitions (ValidateTransition's answers).

The seed guide's `FlowStateMachine` façade is `flowstate.flow_state_machine` (outside the core:
it reads a clock).
"""

from flowstate.core.commands import (
    CancelFlow,
    Command,
    Context,
    Decision,
    PauseFlow,
    ResumeFlow,
    Retry,
    Rollback,
    SkipPhase,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    create_flow,
    validate_command,
    validate_flow_status_transition,
)
from flowstate.core.definitions import (
    BUILTIN_DEFINITIONS,
    DISCOVERY,
    FlowDefinition,
    PhaseDefinition,
    definition_from_dict,
    definition_to_dict,
    validate_definition,
)
from flowstate.core.derivation import calculate_progress, determine_flow_status
from flowstate.core.errors import DefinitionError, FlowStateError
from flowstate.core.model import (
    RETRYABLE_ERROR_CODES,
    ErrorCode,
    Flow,
    FlowStatus,
    HistoryEntry,
    HistoryKind,
    Phase,
    PhaseError,
    PhaseState,
    Tenant,
)
from flowstate.core.recovery import RecoveryAction, RecoveryOption, get_recovery_options
from flowstate.core.rules import (
    FLOW_TRANSITIONS,
    PHASE_PROGRESS_FACTORS,
    PHASE_TRANSITIONS,
)

__all__ = [
    "BUILTIN_DEFINITIONS",
    "DISCOVERY",
    "FLOW_TRANSITIONS",
    "PHASE_PROGRESS_FACTORS",
    "PHASE_TRANSITIONS",
    "RETRYABLE_ERROR_CODES",
    "CancelFlow",
    "Command",
    "Context",
    "Decision",
    "DefinitionError",
    "ErrorCode",
    "Flow",
    "FlowDefinition",
    "FlowStateError",
    "FlowStatus",
    "HistoryEntry",
    "HistoryKind",
    "PauseFlow",
    "Phase",
    "PhaseDefinition",
    "PhaseError",
    "PhaseState",
    "RecoveryAction",
    "RecoveryOption",
    "ResumeFlow",
    "Retry",
    "Rollback",
    "SkipPhase",
    "Tenant",
    "TransitionPhase",
    "UpdatePhaseProgress",
    "apply_command",
    "calculate_progress",
    "create_flow",
    "definition_from_dict",
    "definition_to_dict",
    "determine_flow_status",
    "get_recovery_options",
    "validate_command",
    "validate_definition",
    "validate_flow_status_transition",
]
