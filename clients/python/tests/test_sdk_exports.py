"""The public surface of ``flowstate.client`` is exactly what is listed here.

Adding a name is a deliberate API change: update this list with it. Removing one breaks users.
"""

from __future__ import annotations

import ast
from pathlib import Path

import flowstate.client

EXPECTED = [
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


def test_exported_names_are_pinned() -> None:
    assert flowstate.client.__all__ == EXPECTED


def test_every_export_exists_and_public_classes_name_the_public_module() -> None:
    for name in flowstate.client.__all__:
        obj = getattr(flowstate.client, name)
        if isinstance(obj, type):
            assert obj.__module__ == "flowstate.client", name


def test_no_other_public_names_leak() -> None:
    public = {
        name
        for name in vars(flowstate.client)
        if not name.startswith("_") and name not in {"annotations"}
    }
    assert public == set(EXPECTED) - {"__version__"}


def test_the_sdk_imports_only_its_own_distribution() -> None:
    """flowstate-client installs alone: no module of the SDK imports the server distribution."""
    package = Path(flowstate.client.__file__).parent
    allowed_prefixes = ("flowstate.client", "flowstate.v1")
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("flowstate"):
                    assert name.startswith(allowed_prefixes), f"{source.name} imports {name}"
