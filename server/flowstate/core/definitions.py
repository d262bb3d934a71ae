"""Flow definitions: the phases of a flow, their dependencies, weights, retry limits, groups.

A definition is data. The core never names a phase in code; everything phase-specific comes from
a `FlowDefinition`, so tenant-specific and versioned definitions (with parallel branches) drop in
by building another value, e.g. with `definition_from_dict` from JSON kept in the database.

Every `FlowDefinition` is checked by `validate_definition` when it is constructed, so an invalid
definition cannot exist. The rules (each failure raises `DefinitionError` naming the culprit):

- a name, a version ≥ 1 and at least one phase;
- phase names non-empty and unique;
- every dependency names a known phase, a phase does not depend on itself or twice on the same
  phase, and the dependencies are acyclic;
- every dependency is listed *before* its dependent: definition order is a topological order,
  which is what "the furthest phase" (status rule 8) and "downstream in definition order" mean;
- weights and max_retries are non-negative integers and the weights sum to 100; `optional` is a
  bool;
- a status group, when given, is one of `GROUP_STATUSES` (ACTIVE, DATA_GATHERING, ...);
- every phase can reach every phase state: the phase table reaches every state from NOT_STARTED
  (checked in `flowstate.core.rules`) and every phase can be started, which the acyclic,
  known dependencies guarantee.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from flowstate.core.errors import DefinitionError, FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, PhaseState
from flowstate.core.rules import GROUP_STATUSES, reachable_states

__all__ = [
    "BUILTIN_DEFINITIONS",
    "DISCOVERY",
    "ApprovalPolicy",
    "ApprovalTimeoutAction",
    "ChildFlowSpec",
    "DefinitionError",
    "FlowDefinition",
    "ParentCancelPolicy",
    "PhaseDefinition",
    "PhasePolicy",
    "RetryPolicy",
    "definition_from_dict",
    "definition_to_dict",
    "validate_definition",
]

TOTAL_WEIGHT = 100


class ApprovalTimeoutAction(enum.StrEnum):
    """What the server does when a phase waited for approval longer than its timeout."""

    REJECT = "reject"
    """Reject the phase as ``system:timer`` (FAILED, APPROVAL_REJECTED)."""
    ESCALATE = "escalate"
    """Raise an APPROVAL_TIMEOUT alert; the phase keeps waiting."""


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """A phase's approval policy (``policy.approval`` in a definition document).

    `required`: a worker's COMPLETED lands in WAITING_APPROVAL and only `DecidePhase` moves the
    phase on. `scope` / `claim` + `claim_value`: what the decider's token must carry besides
    ``flows:approve``. `timeout_seconds` + `on_timeout`: what happens when nobody decides.
    """

    required: bool = False
    scope: str = ""
    claim: str = ""
    claim_value: str = ""
    timeout_seconds: float | None = None
    on_timeout: ApprovalTimeoutAction | None = None

    def to_dict(self) -> dict[str, Any]:
        """The document form (only the fields that are set)."""
        data: dict[str, Any] = {}
        if self.required:
            data["required"] = True
        if self.scope:
            data["scope"] = self.scope
        if self.claim:
            data["claim"] = self.claim
            data["claim_value"] = self.claim_value
        if self.timeout_seconds is not None:
            data["approval_timeout"] = self.timeout_seconds
        if self.on_timeout is not None:
            data["on_timeout"] = self.on_timeout.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApprovalPolicy:
        """The inverse of `to_dict` (values already checked: `definition_document`)."""
        timeout = data.get("approval_timeout")
        on_timeout = data.get("on_timeout")
        return cls(
            required=bool(data.get("required", False)),
            scope=data.get("scope") or "",
            claim=data.get("claim") or "",
            claim_value=data.get("claim_value") or "",
            timeout_seconds=None if timeout is None else float(timeout),
            on_timeout=None if not on_timeout else ApprovalTimeoutAction(on_timeout),
        )


class ParentCancelPolicy(enum.StrEnum):
    """What cancelling the parent does to a child flow that is still active."""

    CASCADE = "cascade"
    """Cancel the child in the parent's transaction (the default)."""
    ABANDON = "abandon"
    """Leave the child running on its own; the terminal parent no longer follows it."""


@dataclass(frozen=True, slots=True)
class ChildFlowSpec:
    """A phase of kind ``child_flow``: starting it creates a flow of `definition_name`."""

    definition_name: str
    definition_version: int = 0
    """0: the latest version when the child is created."""
    on_parent_cancel: ParentCancelPolicy = ParentCancelPolicy.CASCADE


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Automatic retry of a FAILED phase (DESIGN.md section 10): when, and after which codes.

    After the phase's n-th attempt failed (n = its `retry_count`) with a code in `retry_on`, the
    server moves it to RETRY_NEEDED after ``min(initial_backoff * multiplier ** n,
    max_backoff)`` seconds (`flowstate.core.timers.retry_backoff`). Durations in seconds.
    """

    initial_backoff: float
    multiplier: float
    max_backoff: float
    retry_on: frozenset[ErrorCode]

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (codes sorted, durations in seconds)."""
        return {
            "initial_backoff": self.initial_backoff,
            "multiplier": self.multiplier,
            "max_backoff": self.max_backoff,
            "retry_on": sorted(code.value for code in self.retry_on),
        }


@dataclass(frozen=True, slots=True)
class PhasePolicy:
    """The per-phase policies the server applies with its timers (DESIGN.md section 10).

    Each is optional (None: no such policy). Durations in seconds. `timeout` bounds the time
    IN_PROGRESS; `heartbeat_timeout` the time IN_PROGRESS without a heartbeat (a `Heartbeat`
    or an `UpdatePhaseProgress`); `retry_policy` retries a FAILED phase automatically. Checked
    (with paths and limits) by `flowstate.core.definition_document`.
    """

    timeout: float | None = None
    heartbeat_timeout: float | None = None
    retry_policy: RetryPolicy | None = None

    @property
    def is_empty(self) -> bool:
        """Whether no policy is set (the phase never gets a timer)."""
        return self.timeout is None and self.heartbeat_timeout is None and self.retry_policy is None

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form: only the policies that are set."""
        data: dict[str, Any] = {}
        if self.timeout is not None:
            data["timeout"] = self.timeout
        if self.heartbeat_timeout is not None:
            data["heartbeat_timeout"] = self.heartbeat_timeout
        if self.retry_policy is not None:
            data["retry_policy"] = self.retry_policy.to_dict()
        return data


def policy_from_dict(data: Mapping[str, Any] | None) -> PhasePolicy:
    """The inverse of `PhasePolicy.to_dict` (None or {}: no policy); for checked data only."""
    if not data:
        return PhasePolicy()
    retry = data.get("retry_policy")
    return PhasePolicy(
        timeout=_seconds(data.get("timeout")),
        heartbeat_timeout=_seconds(data.get("heartbeat_timeout")),
        retry_policy=None
        if retry is None
        else RetryPolicy(
            initial_backoff=float(retry["initial_backoff"]),
            multiplier=float(retry["multiplier"]),
            max_backoff=float(retry["max_backoff"]),
            retry_on=frozenset(ErrorCode(code) for code in retry["retry_on"]),
        ),
    )


def _seconds(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PhaseDefinition:
    """One phase of a definition: what it waits for, what it is worth, how often it may retry."""

    name: str
    depends_on: tuple[str, ...]
    weight: int
    max_retries: int
    status_group: FlowStatus | None
    display_name: str = ""
    description: str = ""
    optional: bool = False
    """Whether the phase may be skipped (`SkipPhase`): SKIPPED then satisfies its dependents."""
    policy: PhasePolicy = field(default_factory=PhasePolicy)
    """Timeouts and automatic retry (DESIGN.md section 10); empty by default."""
    approval: ApprovalPolicy | None = None
    """The phase's approval policy (``policy.approval``); None: anyone with flows:approve."""
    child_flow: ChildFlowSpec | None = None
    """Set for a phase of kind ``child_flow``: the phase follows a child flow of this
    definition (docs/child_flows.md)."""


@dataclass(frozen=True, slots=True)
class FlowDefinition:
    """A named, versioned list of phases in a topological (definition) order; validated on init."""

    name: str
    version: int
    phases: tuple[PhaseDefinition, ...]
    display_name: str = ""
    description: str = ""
    deadline_seconds: float | None = None
    """How long after creation a flow should be finished (`Flow.deadline`); None: no deadline."""

    def __post_init__(self) -> None:
        """Refuse to exist when invalid."""
        validate_definition(self)

    @property
    def phase_names(self) -> tuple[str, ...]:
        """Phase names in definition order."""
        return tuple(p.name for p in self.phases)

    def phase(self, name: str) -> PhaseDefinition:
        """The phase called `name`; FlowStateError INVALID_PHASE when there is none."""
        for candidate in self.phases:
            if candidate.name == name:
                return candidate
        raise FlowStateError(
            ErrorCode.INVALID_PHASE,
            f"Unknown phase {name!r} in flow definition {self.name!r}",
            phase=name,
            valid_phases=list(self.phase_names),
        )

    def has_phase(self, name: str) -> bool:
        """Whether the definition has a phase called `name`."""
        return name in self.phase_names

    def index(self, name: str) -> int:
        """Position of phase `name` in definition order (INVALID_PHASE when unknown)."""
        self.phase(name)
        return self.phase_names.index(name)

    def dependencies(self, name: str) -> tuple[str, ...]:
        """Direct dependencies of phase `name`."""
        return self.phase(name).depends_on

    def dependents(self, name: str) -> tuple[str, ...]:
        """Every phase downstream of `name` (transitively), in definition order."""
        self.phase(name)
        downstream = {name}
        # Definition order is topological, so one forward pass collects the whole closure.
        for candidate in self.phases:
            if downstream.intersection(candidate.depends_on):
                downstream.add(candidate.name)
        return tuple(n for n in self.phase_names if n in downstream and n != name)

    @property
    def has_timers(self) -> bool:
        """Whether any phase has a policy the server keeps a timer for (else: never a timer):
        a timeout or retry policy, or an approval timeout."""
        return any(
            not p.policy.is_empty or (p.approval is not None and p.approval.on_timeout is not None)
            for p in self.phases
        )

    @property
    def weights(self) -> Mapping[str, int]:
        """Phase name → weight."""
        return MappingProxyType({p.name: p.weight for p in self.phases})


def validate_definition(definition: FlowDefinition) -> None:
    """Raise DefinitionError when `definition` breaks a structural rule (see module docstring)."""
    label = f"flow definition {definition.name!r} v{definition.version}"
    if not isinstance(definition.name, str) or not definition.name:
        raise DefinitionError("flow definition name must be a non-empty string")
    if not _is_int(definition.version) or definition.version < 1:
        raise DefinitionError(f"{label}: version must be an integer >= 1")
    if not definition.phases:
        raise DefinitionError(f"{label}: has no phases")
    _check_phase_fields(label, definition.phases)
    deadline = definition.deadline_seconds
    if deadline is not None and (not isinstance(deadline, int | float) or not deadline > 0):
        raise DefinitionError(f"{label}: deadline must be a positive number of seconds")
    _check_dependencies(label, definition.phases)
    total = sum(p.weight for p in definition.phases)
    if total != TOTAL_WEIGHT:
        raise DefinitionError(f"{label}: phase weights sum to {total}, not {TOTAL_WEIGHT}")
    # A structural guard: the phase table itself must let every phase reach every state.
    unreachable = set(PhaseState) - reachable_states()
    if unreachable:
        raise DefinitionError(f"{label}: phase states unreachable: {sorted(unreachable)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_phase_fields(label: str, phases: tuple[PhaseDefinition, ...]) -> None:
    seen: set[str] = set()
    for phase in phases:
        if not isinstance(phase.name, str) or not phase.name:
            raise DefinitionError(f"{label}: a phase name must be a non-empty string")
        if phase.name in seen:
            raise DefinitionError(f"{label}: duplicate phase name {phase.name!r}")
        seen.add(phase.name)
        if not _is_int(phase.weight) or phase.weight < 0:
            raise DefinitionError(
                f"{label}: phase {phase.name!r} weight must be a non-negative integer, "
                f"got {phase.weight!r}"
            )
        if not isinstance(phase.optional, bool):
            raise DefinitionError(f"{label}: phase {phase.name!r} optional must be a bool")
        if not _is_int(phase.max_retries) or phase.max_retries < 0:
            raise DefinitionError(
                f"{label}: phase {phase.name!r} max_retries must be a non-negative integer, "
                f"got {phase.max_retries!r}"
            )
        child = phase.child_flow
        if child is not None and (
            not isinstance(child, ChildFlowSpec)
            or not isinstance(child.definition_name, str)
            or not child.definition_name
            or not _is_int(child.definition_version)
            or child.definition_version < 0
            or not isinstance(child.on_parent_cancel, ParentCancelPolicy)
        ):
            raise DefinitionError(f"{label}: phase {phase.name!r} has a malformed child_flow")
        if phase.status_group is not None and phase.status_group not in GROUP_STATUSES:
            allowed = sorted(s.value for s in GROUP_STATUSES)
            raise DefinitionError(
                f"{label}: phase {phase.name!r} status group {phase.status_group!r} "
                f"is not one of {allowed}"
            )


def _check_dependencies(label: str, phases: tuple[PhaseDefinition, ...]) -> None:
    names = {p.name for p in phases}
    for phase in phases:
        if not isinstance(phase.depends_on, tuple):
            raise DefinitionError(f"{label}: phase {phase.name!r} depends_on must be a tuple")
        unknown = [d for d in phase.depends_on if d not in names]
        if unknown:
            raise DefinitionError(
                f"{label}: phase {phase.name!r} depends on unknown phase(s) {unknown}"
            )
        if phase.name in phase.depends_on:
            raise DefinitionError(f"{label}: phase {phase.name!r} depends on itself")
        if len(set(phase.depends_on)) != len(phase.depends_on):
            raise DefinitionError(f"{label}: phase {phase.name!r} lists a dependency twice")
    cycle = _find_cycle({p.name: p.depends_on for p in phases})
    if cycle:
        raise DefinitionError(f"{label}: dependency cycle {' -> '.join(cycle)}")
    position = {p.name: i for i, p in enumerate(phases)}
    for phase in phases:
        for dependency in phase.depends_on:
            if position[dependency] > position[phase.name]:
                raise DefinitionError(
                    f"{label}: phase {phase.name!r} is listed before its dependency "
                    f"{dependency!r}; list phases in dependency order"
                )


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A dependency cycle as a path that starts and ends on the same phase; [] when acyclic."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> Iterator[list[str]]:
        if node in path:
            yield [*path[path.index(node) :], node]
            return
        if node in done:
            return
        for dependency in graph[node]:
            yield from visit(dependency, [*path, node])
        done.add(node)

    for start in graph:
        for cycle in visit(start, []):
            return cycle
    return []


def definition_to_dict(definition: FlowDefinition) -> dict[str, Any]:
    """A plain JSON-able dict of `definition` (the inverse of `definition_from_dict`).

    `optional` appears only on optional phases and `policy` only on phases with a policy, so
    bodies stored before either existed (the built-in's) compare equal to today's dict of the
    same definition.
    """
    return {
        "name": definition.name,
        "version": definition.version,
        "display_name": definition.display_name,
        "description": definition.description,
        **(
            {"deadline": definition.deadline_seconds}
            if definition.deadline_seconds is not None
            else {}
        ),
        "phases": [
            {
                "name": p.name,
                "depends_on": list(p.depends_on),
                "weight": p.weight,
                "max_retries": p.max_retries,
                "status_group": p.status_group.value if p.status_group else None,
                "display_name": p.display_name,
                "description": p.description,
                **({"optional": True} if p.optional else {}),
                **(
                    {"policy": {**p.policy.to_dict(), "approval": p.approval.to_dict()}}
                    if p.approval
                    else {"policy": p.policy.to_dict()}
                    if not p.policy.is_empty
                    else {}
                ),
                **(_child_to_dict(p.child_flow) if p.child_flow else {}),
            }
            for p in definition.phases
        ],
    }


def _child_to_dict(child: ChildFlowSpec) -> dict[str, Any]:
    """The ``kind`` and ``child_flow`` keys of a child_flow phase (absent on other phases, so
    older bodies compare equal)."""
    return {
        "kind": "child_flow",
        "child_flow": {
            "definition": child.definition_name,
            **({"version": child.definition_version} if child.definition_version else {}),
            "on_parent_cancel": child.on_parent_cancel.value,
        },
    }


def child_from_dict(data: Mapping[str, Any]) -> ChildFlowSpec:
    """The inverse of `_child_to_dict`'s ``child_flow`` value."""
    return ChildFlowSpec(
        definition_name=data["definition"],
        definition_version=data.get("version", 0),
        on_parent_cancel=ParentCancelPolicy(data.get("on_parent_cancel", "cascade")),
    )


def definition_from_dict(data: Mapping[str, Any]) -> FlowDefinition:
    """Build and validate a definition from `definition_to_dict`'s shape; DefinitionError if bad."""
    try:
        phases = tuple(_phase_from_dict(p) for p in data["phases"])
        return FlowDefinition(
            name=data["name"],
            version=data["version"],
            phases=phases,
            display_name=data.get("display_name", ""),
            description=data.get("description", ""),
            deadline_seconds=data.get("deadline"),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, DefinitionError):
            raise
        raise DefinitionError(f"malformed flow definition: {exc!r}") from exc


def _phase_from_dict(data: Mapping[str, Any]) -> PhaseDefinition:
    group = data.get("status_group")
    try:
        status_group = FlowStatus(group) if group is not None else None
    except ValueError as exc:
        raise DefinitionError(
            f"phase {data.get('name')!r}: unknown status group {group!r}"
        ) from exc
    depends_on = data.get("depends_on", [])
    if isinstance(depends_on, str):
        raise DefinitionError(f"phase {data.get('name')!r}: depends_on must be a list")
    return PhaseDefinition(
        name=data["name"],
        depends_on=tuple(depends_on),
        weight=data["weight"],
        max_retries=data["max_retries"],
        status_group=status_group,
        display_name=data.get("display_name", ""),
        description=data.get("description", ""),
        optional=data.get("optional", False),
        policy=policy_from_dict(data.get("policy")),
        approval=_approval_from_dict(data.get("policy")),
        child_flow=child_from_dict(data["child_flow"]) if data.get("child_flow") else None,
    )


def _approval_from_dict(policy: object) -> ApprovalPolicy | None:
    if not isinstance(policy, Mapping) or not isinstance(policy.get("approval"), Mapping):
        return None
    return ApprovalPolicy.from_dict(policy["approval"])


DISCOVERY = FlowDefinition(
    name="discovery",
    version=1,
    display_name="Discovery",
    description="Discovery flow of a migration assessment: import, map, cleanse, inventory, "
    "analyse dependencies.",
    phases=(
        PhaseDefinition(
            name="data_import",
            depends_on=(),
            weight=20,
            max_retries=3,
            status_group=FlowStatus.DATA_GATHERING,
            display_name="Data import",
            description="Import the raw inventory data.",
        ),
        PhaseDefinition(
            name="field_mapping",
            depends_on=("data_import",),
            weight=20,
            max_retries=3,
            status_group=FlowStatus.DISCOVERY,
            display_name="Field mapping",
            description="Map imported fields onto the asset model.",
        ),
        PhaseDefinition(
            name="data_cleansing",
            depends_on=("field_mapping",),
            weight=20,
            max_retries=2,
            status_group=FlowStatus.DISCOVERY,
            display_name="Data cleansing",
            description="Normalise and deduplicate the mapped data.",
        ),
        PhaseDefinition(
            name="asset_inventory",
            depends_on=("data_cleansing",),
            weight=20,
            max_retries=3,
            status_group=FlowStatus.ASSESSMENT_READY,
            display_name="Asset inventory",
            description="Build the inventory of assets.",
        ),
        PhaseDefinition(
            name="dependency_analysis",
            depends_on=("asset_inventory",),
            weight=20,
            max_retries=2,
            status_group=FlowStatus.PLANNING,
            display_name="Dependency analysis",
            description="Analyse dependencies between assets.",
        ),
    ),
)
"""The built-in discovery flow (DESIGN.md section 2)."""

BUILTIN_DEFINITIONS: Mapping[str, FlowDefinition] = MappingProxyType({DISCOVERY.name: DISCOVERY})
"""Built-in definitions by name."""
