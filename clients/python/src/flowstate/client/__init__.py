"""The Python SDK of Flowstate: async and sync clients, typed results and typed errors.

Quick start (against ``flowstate serve``; mint a token with ``flowstate token``)::

    from flowstate.client import AsyncFlowstateClient, PhaseState

    async with AsyncFlowstateClient(address="127.0.0.1:50051", token=token) as client:
        flow = (await client.create_flow("discovery")).flow
        await client.transition_phase(flow.flow_id, "data_import", PhaseState.IN_PROGRESS)
        async for event in client.watch(flow.flow_id):
            print(event.flow_version, event.status.name, event.progress)

`FlowstateClient` is the same API without ``await``, for scripts. Results are frozen dataclasses
(`Flow`, `MutationResult`, ...) keeping the proto as ``.raw``; errors are `FlowstateError`
subclasses chosen by the server's error code (the tree is in ``flowstate.client._errors``). The
generated messages and stubs live in ``flowstate.v1``.
"""

from flowstate.client._async_client import AsyncFlowstateClient
from flowstate.client._config import DEFAULT_ADDRESS, TokenSource
from flowstate.client._enums import (
    AlertKind,
    ApprovalDecision,
    BulkActionState,
    BulkActionType,
    BulkFlowOutcome,
    ErrorCode,
    FlowEventKind,
    FlowStatus,
    HistoryEventKind,
    PhaseState,
    RecoveryAction,
    WatchRelation,
)
from flowstate.client._errors import (
    Aborted,
    ApprovalRequired,
    BulkActionNotFound,
    ChildFlowLimitExceeded,
    ChildFlowNotLinkable,
    DeadlineExceeded,
    DefinitionNotFound,
    DefinitionShadowsBuiltin,
    DependentPhasesActive,
    FailedPrecondition,
    FlowNotFound,
    FlowPaused,
    FlowstateError,
    FlowTerminal,
    InternalError,
    InvalidArgument,
    InvalidFlowTransition,
    InvalidPhase,
    InvalidPhaseTransition,
    MalformedRequest,
    MaxRetriesExceeded,
    NotFound,
    PermissionDenied,
    PhaseFollowsChildFlow,
    PhaseOrderViolation,
    RateLimited,
    RequestIdReused,
    ResourceExhausted,
    RetryNotAllowed,
    ServerShuttingDown,
    SubscriberTooSlow,
    Unauthenticated,
    Unavailable,
    VersionConflict,
    WebhookNotFound,
)
from flowstate.client._models import (
    BulkAction,
    BulkFlowResult,
    DefinitionPage,
    DefinitionRegistration,
    ExternalDependency,
    Flow,
    FlowAlert,
    FlowCount,
    FlowDefinition,
    FlowEvent,
    FlowPage,
    FlowTree,
    HeartbeatResult,
    HistoryEntry,
    HistoryPage,
    MutationResult,
    Phase,
    PhaseApproval,
    PhaseDefinition,
    PhaseFailure,
    RecoveryOption,
    RecoveryOptions,
    RetentionPolicy,
    ValidationResult,
    WaitingPhase,
)
from flowstate.client._retry import RetryPolicy
from flowstate.client._sync_client import FlowstateClient
from flowstate.client._version import __version__
from flowstate.client._watch import ReconnectListener

__all__ = [
    "DEFAULT_ADDRESS",
    "Aborted",
    "AlertKind",
    "ApprovalDecision",
    "ApprovalRequired",
    "AsyncFlowstateClient",
    "BulkAction",
    "BulkActionNotFound",
    "BulkActionState",
    "BulkActionType",
    "BulkFlowOutcome",
    "BulkFlowResult",
    "ChildFlowLimitExceeded",
    "ChildFlowNotLinkable",
    "DeadlineExceeded",
    "DefinitionNotFound",
    "DefinitionPage",
    "DefinitionRegistration",
    "DefinitionShadowsBuiltin",
    "DependentPhasesActive",
    "ErrorCode",
    "ExternalDependency",
    "FailedPrecondition",
    "Flow",
    "FlowAlert",
    "FlowCount",
    "FlowDefinition",
    "FlowEvent",
    "FlowEventKind",
    "FlowNotFound",
    "FlowPage",
    "FlowPaused",
    "FlowStatus",
    "FlowTerminal",
    "FlowTree",
    "FlowstateClient",
    "FlowstateError",
    "HeartbeatResult",
    "HistoryEntry",
    "HistoryEventKind",
    "HistoryPage",
    "InternalError",
    "InvalidArgument",
    "InvalidFlowTransition",
    "InvalidPhase",
    "InvalidPhaseTransition",
    "MalformedRequest",
    "MaxRetriesExceeded",
    "MutationResult",
    "NotFound",
    "PermissionDenied",
    "Phase",
    "PhaseApproval",
    "PhaseDefinition",
    "PhaseFailure",
    "PhaseFollowsChildFlow",
    "PhaseOrderViolation",
    "PhaseState",
    "RateLimited",
    "ReconnectListener",
    "RecoveryAction",
    "RecoveryOption",
    "RecoveryOptions",
    "RequestIdReused",
    "ResourceExhausted",
    "RetentionPolicy",
    "RetryNotAllowed",
    "RetryPolicy",
    "ServerShuttingDown",
    "SubscriberTooSlow",
    "TokenSource",
    "Unauthenticated",
    "Unavailable",
    "ValidationResult",
    "VersionConflict",
    "WaitingPhase",
    "WatchRelation",
    "WebhookNotFound",
    "__version__",
]

# Public classes report the public module (as httpx does), so reprs and tracebacks show
# `flowstate.client.InvalidPhase` rather than a private path.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("flowstate.client._"):
        _obj.__module__ = __name__
del _name, _obj
