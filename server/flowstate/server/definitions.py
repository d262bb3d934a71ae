"""The registry RPCs' conversions: request checks, FlowDefinition message <-> document, views.

A submitted `FlowDefinition` message becomes the plain document the core checks
(`flowstate.core.definition_document`), so the API, the CLI's files and the SDKs share one
validation, and its field paths (``phases[2].depends_on[0]``) are relative to the message's
`definition` field. Output-only fields (version, builtin, create_time, the transition table and
progress factors) are ignored on the way in.

`DefinitionViews` keeps one precomputed `DefinitionView` per distinct definition value (two
tenants with the same body share it) and, per (tenant, name, version), which definition a
tenant's flows follow; both bounded, both safe to keep because definition versions never change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from flowstate.core.commands import SkipPhase, TransitionPhase
from flowstate.core.definitions import BUILTIN_DEFINITIONS, FlowDefinition
from flowstate.core.model import PhaseState, Tenant
from flowstate.server import validation
from flowstate.server.convert import (
    FLOW_STATUS_FROM_PROTO,
    PHASE_STATE_TO_PROTO,
    DefinitionView,
    policy_document,
    timestamp,
)
from flowstate.server.validation import malformed
from flowstate.storage.definitions_repo import StoredDefinition
from flowstate.storage.limits import (
    DEFAULT_DEFINITION_PAGE_SIZE,
    MAX_DEFINITION_PAGE_SIZE,
    MAX_REQUEST_ID_LENGTH,
)
from flowstate.v1 import definition_pb2, flow_service_pb2

__all__ = [
    "DefinitionViews",
    "ListDefinitionsArgs",
    "RegisterArgs",
    "create_flow_definition",
    "document_of",
    "list_flow_definitions",
    "skip_phase",
    "stored_to_proto",
]

MAX_REQUEST_ID: Final = MAX_REQUEST_ID_LENGTH
MAX_PAGE_SIZE: Final = MAX_DEFINITION_PAGE_SIZE
DEFAULT_PAGE_SIZE: Final = DEFAULT_DEFINITION_PAGE_SIZE
MAX_VIEWS: Final = 1024
"""Definition views and (tenant, name, version) resolutions kept in process (FIFO beyond)."""


def document_of(message: definition_pb2.FlowDefinition) -> dict[str, Any]:
    """The document a FlowDefinition message describes (input fields only)."""
    phases = []
    for phase in message.phases:
        entry: dict[str, Any] = {
            "name": phase.name,
            "depends_on": list(phase.depends_on),
            "weight": phase.weight,
            "max_retries": phase.max_retries,
            "display_name": phase.display_name,
            "description": phase.description,
            "optional": phase.optional,
        }
        if phase.status_group:
            status = FLOW_STATUS_FROM_PROTO.get(phase.status_group)
            # An unknown number stays visible to the checker as a string it will refuse.
            entry["status_group"] = status.value if status else f"#{phase.status_group}"
        if phase.kind == definition_pb2.PHASE_KIND_CHILD_FLOW or phase.HasField("child_flow"):
            entry.update(_child_flow_document(phase))
        elif phase.kind not in (
            definition_pb2.PHASE_KIND_UNSPECIFIED,
            definition_pb2.PHASE_KIND_TASK,
        ):
            entry["kind"] = f"#{phase.kind}"
        if phase.HasField("policy"):
            policy = policy_document(phase.policy)
            if policy:
                entry["policy"] = policy
        phases.append(entry)
    document: dict[str, Any] = {
        "name": message.name,
        "display_name": message.display_name,
        "description": message.description,
        "phases": phases,
    }
    if message.HasField("deadline"):
        document["deadline"] = message.deadline.ToTimedelta().total_seconds()
    return document


_PARENT_CANCEL_POLICIES: Final = {
    definition_pb2.PARENT_CANCEL_POLICY_UNSPECIFIED: "cascade",
    definition_pb2.PARENT_CANCEL_POLICY_CASCADE: "cascade",
    definition_pb2.PARENT_CANCEL_POLICY_ABANDON: "abandon",
}


def _child_flow_document(phase: definition_pb2.PhaseDefinition) -> dict[str, Any]:
    """The ``kind`` / ``child_flow`` keys of a phase message (checked by the document)."""
    kind = "child_flow" if phase.kind == definition_pb2.PHASE_KIND_CHILD_FLOW else "task"
    if kind == "task" and phase.kind != definition_pb2.PHASE_KIND_TASK:
        kind = "child_flow"  # child_flow given without a kind: what it means
    if not phase.HasField("child_flow"):
        return {"kind": kind}
    child = phase.child_flow
    policy = _PARENT_CANCEL_POLICIES.get(child.on_parent_cancel, f"#{child.on_parent_cancel}")
    spec: dict[str, Any] = {"definition": child.definition_name, "on_parent_cancel": policy}
    if child.definition_version:
        spec["version"] = child.definition_version
    return {"kind": kind, "child_flow": spec}


@dataclass(frozen=True, slots=True)
class RegisterArgs:
    """A checked CreateFlowDefinition request (the document is checked by the store)."""

    request_id: str
    document: dict[str, Any]
    allow_shadow_builtin: bool
    validate_only: bool


def _request_id(value: str, violations: list[tuple[str, str]], *, required: bool) -> str:
    if not value:
        if required:
            violations.append(("request_id", "is required (an idempotency key)"))
    elif len(value) > MAX_REQUEST_ID or not value.isprintable():
        violations.append(("request_id", f"must be 1-{MAX_REQUEST_ID} printable characters"))
    return value


def create_flow_definition(
    request: flow_service_pb2.CreateFlowDefinitionRequest,
) -> RegisterArgs:
    """Check a CreateFlowDefinition request; the request id is optional with validate_only."""
    violations: list[tuple[str, str]] = []
    request_id = _request_id(request.request_id, violations, required=not request.validate_only)
    if not request.HasField("definition"):
        violations.append(("definition", "is required"))
    if violations:
        raise malformed(violations)
    return RegisterArgs(
        request_id=request_id,
        document=document_of(request.definition),
        allow_shadow_builtin=request.allow_shadow_builtin,
        validate_only=request.validate_only,
    )


@dataclass(frozen=True, slots=True)
class ListDefinitionsArgs:
    """A checked ListFlowDefinitions request."""

    name: str
    page_size: int
    page_token: str


def list_flow_definitions(
    request: flow_service_pb2.ListFlowDefinitionsRequest,
) -> ListDefinitionsArgs:
    """Check a ListFlowDefinitions request."""
    violations: list[tuple[str, str]] = []
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        violations.append(
            ("page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})")
        )
    if len(request.page_token) > 1024:
        violations.append(("page_token", "is not a valid token"))
    if len(request.name) > 256 or "\x00" in request.name:
        violations.append(("name", "must be at most 256 characters without NUL bytes"))
    if violations:
        raise malformed(violations)
    return ListDefinitionsArgs(
        name=request.name,
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        page_token=request.page_token,
    )


def skip_phase(request: flow_service_pb2.SkipPhaseRequest) -> validation.Mutation:
    """Check a SkipPhase request with the checks of a TransitionPhase to SKIPPED."""
    mirrored = flow_service_pb2.TransitionPhaseRequest(
        flow_id=request.flow_id,
        phase=request.phase,
        target_state=PHASE_STATE_TO_PROTO[PhaseState.SKIPPED],
        reason=request.reason,
        request_id=request.request_id,
    )
    mirrored.metadata.CopyFrom(request.metadata)
    if request.HasField("expected_version"):
        mirrored.expected_version = request.expected_version
    checked = validation.transition_phase(mirrored)
    assert isinstance(checked.command, TransitionPhase)
    command = SkipPhase(request.phase, reason=request.reason, metadata=checked.command.metadata)
    return replace(checked, command=command)


class DefinitionViews:
    """Precomputed definition views, and which definition a tenant's (name, version) is."""

    def __init__(self) -> None:
        """Start with the built-ins."""
        self._views: dict[FlowDefinition, DefinitionView] = {}
        # The same definition objects come back on every call (the store caches them): found
        # by identity, a view costs a dict lookup instead of hashing the whole definition. The
        # entry holds the object, so its id cannot be reused while the entry exists.
        self._by_identity: dict[int, tuple[FlowDefinition, DefinitionView]] = {}
        self._resolved: dict[tuple[Tenant, str, int], FlowDefinition] = {}
        for definition in BUILTIN_DEFINITIONS.values():
            self.view(definition)

    def view(self, definition: FlowDefinition) -> DefinitionView:
        """The view of `definition` (built once per distinct definition)."""
        known = self._by_identity.get(id(definition))
        if known is not None and known[0] is definition:
            return known[1]
        view = self._views.get(definition)
        if view is None:
            if len(self._views) >= MAX_VIEWS:
                self._views.pop(next(iter(self._views)))
            view = self._views[definition] = DefinitionView(definition)
        if len(self._by_identity) >= MAX_VIEWS:
            self._by_identity.clear()
        self._by_identity[id(definition)] = (definition, view)
        return view

    def resolved(self, tenant: Tenant, name: str, version: int) -> FlowDefinition | None:
        """The definition `tenant`'s flows of (name, version) follow, when known."""
        return self._resolved.get((tenant, name, version))

    def remember(self, tenant: Tenant, definition: FlowDefinition) -> None:
        """Record that `tenant`'s (name, version) is `definition`."""
        if len(self._resolved) >= MAX_VIEWS:
            self._resolved.pop(next(iter(self._resolved)))
        self._resolved[(tenant, definition.name, definition.version)] = definition


def stored_to_proto(
    stored: StoredDefinition, view: Callable[[FlowDefinition], DefinitionView]
) -> definition_pb2.FlowDefinition:
    """The FlowDefinition message of a registry entry (with builtin and create_time)."""
    message = definition_pb2.FlowDefinition()
    message.CopyFrom(view(stored.definition).message)
    message.builtin = stored.builtin
    if stored.created_at is not None:
        message.create_time.CopyFrom(timestamp(stored.created_at))
    return message
