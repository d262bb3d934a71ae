"""Submitted flow definitions: exhaustive validation with field paths, and the registry's limits.

A tenant submits a definition as a *document*: a plain mapping (from JSON, YAML or the
`CreateFlowDefinition` message) with the shape of `definition_to_dict` minus `version`, which
the registry assigns. `check_document` reports every structural problem at once, each as a
`Violation` whose `field` is a path into the document (``phases[2].depends_on[0]``), so a
client can point at all of them in one round; `definition_from_document` raises them as one
MALFORMED_REQUEST with ``field_violations`` (the server turns them into a
`google.rpc.BadRequest`). Nothing is built when anything is wrong.

What is checked (the limits are the constants below, documented in docs/definitions.md):

- the document is a mapping with known keys only (a typo is an error, not silently ignored);
- `name` and every phase name match `NAME_PATTERN` (lowercase letters, digits, `_`, starting
  with a letter, at most `MAX_NAME_LENGTH` characters);
- `display_name` / `description` are strings within `MAX_DISPLAY_NAME_LENGTH` /
  `MAX_DESCRIPTION_LENGTH`;
- `phases` is a non-empty list of at most `MAX_PHASES` phases, names unique;
- `depends_on` lists at most `MAX_DEPENDENCIES` known phases (the fan-in of a join), none
  twice, not the phase itself; the dependencies are acyclic (each cycle is named:
  ``a -> b -> a``) and every dependency is listed before its dependent (definition order is a
  topological order, see `flowstate.core.definitions`);
- `weight` is an integer in [0, 100] and the weights sum to 100; `max_retries` an integer in
  [0, `MAX_RETRIES`]; `status_group` one of `GROUP_STATUSES` (its value or name, any case);
  `optional` a bool;
- `kind` is ``task`` (default) or ``child_flow``; a child_flow phase has `child_flow` with
  `definition` (a name, not the definition's own), optional `version` (>= 1; absent: the
  latest when the child starts) and `on_parent_cancel` (``cascade``, the default, or
  ``abandon``); see docs/child_flows.md;
- `policy` (DESIGN.md section 10, docs/timers.md) is a mapping with known keys only:
  `timeout` and `heartbeat_timeout` are durations in [`MIN_POLICY_DURATION`,
  `MAX_POLICY_DURATION`]; `retry_policy` has `initial_backoff` (a duration in [0,
  `MAX_POLICY_DURATION`]), `multiplier` (a number in [1, `MAX_BACKOFF_MULTIPLIER`]),
  `max_backoff` (a duration, at least `initial_backoff`) and `retry_on` (a non-empty list of
  retryable phase failure codes, none twice; a non-retryable code could never be retried, so
  naming one is an error). A duration is a number of seconds or a string such as ``"500ms"``,
  ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``; the registry stores seconds.
  `policy.approval` (docs/approvals.md): `required` a bool; `scope` a scope name; `claim` and
  `claim_value` non-empty strings given together; `approval_timeout` a duration (as the
  timeouts) and `on_timeout` (``reject`` or ``escalate``) given together;
- `deadline` (how long after creation a flow should be finished) is a duration of at most
  `MAX_DEADLINE` seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from flowstate.core.definitions import (
    TOTAL_WEIGHT,
    ApprovalPolicy,
    ApprovalTimeoutAction,
    FlowDefinition,
    ParentCancelPolicy,
    PhaseDefinition,
    PhasePolicy,
    RetryPolicy,
    child_from_dict,
    definition_to_dict,
)
from flowstate.core.errors import FlowStateError
from flowstate.core.model import RETRYABLE_ERROR_CODES, ErrorCode, FlowStatus
from flowstate.core.rules import GROUP_STATUSES

__all__ = [
    "MAX_BACKOFF_MULTIPLIER",
    "MAX_DEADLINE",
    "MAX_DEPENDENCIES",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_DISPLAY_NAME_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_PHASES",
    "MAX_POLICY_DURATION",
    "MAX_RETRIES",
    "MIN_POLICY_DURATION",
    "NAME_PATTERN",
    "Violation",
    "check_document",
    "definition_body",
    "definition_from_document",
    "parse_duration",
]

MAX_PHASES: Final = 64
"""Phases per definition: enough for any real pipeline, small enough to render and to store."""
MAX_DEPENDENCIES: Final = 16
"""Dependencies per phase (the fan-in of a join)."""
MAX_NAME_LENGTH: Final = 63
"""Characters of a definition or phase name (a Postgres identifier's length)."""
NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*")
"""Definition and phase names: lowercase snake case, starting with a letter."""
MAX_DISPLAY_NAME_LENGTH: Final = 256
"""Characters of a display name."""
MAX_DESCRIPTION_LENGTH: Final = 2048
"""Characters of a description."""
MAX_RETRIES: Final = 100
"""Largest `max_retries` of a phase."""
MAX_CYCLES_REPORTED: Final = 10
"""Cycles named in one refusal; more are the same mistake many times."""
MIN_POLICY_DURATION: Final = 0.1
"""Shortest `timeout` / `heartbeat_timeout`, seconds: below the timer interval it means nothing."""
MAX_POLICY_DURATION: Final = 30 * 24 * 3600.0
"""Longest policy duration (timeouts, backoffs), seconds: 30 days."""
MAX_BACKOFF_MULTIPLIER: Final = 10.0
"""Largest `retry_policy.multiplier`."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_POLICY_KEYS: Final = frozenset({"timeout", "heartbeat_timeout", "retry_policy", "approval"})
_RETRY_POLICY_KEYS: Final = frozenset({"initial_backoff", "multiplier", "max_backoff", "retry_on"})

MAX_DEADLINE: Final = 366 * 24 * 3600.0
"""Longest definition `deadline`, seconds: a year."""
MAX_POLICY_TEXT_LENGTH: Final = 256
"""Characters of an approval policy's scope, claim name or claim value."""

_DEFINITION_KEYS: Final = frozenset({"name", "display_name", "description", "phases", "deadline"})
_APPROVAL_KEYS: Final = frozenset(
    {"required", "scope", "claim", "claim_value", "approval_timeout", "on_timeout"}
)
_PHASE_KEYS: Final = frozenset(
    {
        "name",
        "depends_on",
        "weight",
        "max_retries",
        "status_group",
        "display_name",
        "description",
        "optional",
        "policy",
        "kind",
        "child_flow",
    }
)
PHASE_KINDS: Final = ("task", "child_flow")
"""`kind` of a phase: a task reported by a worker (the default) or a child flow."""
_CHILD_FLOW_KEYS: Final = frozenset({"definition", "version", "on_parent_cancel"})


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem of a document: where (`field`, a path) and what is wrong."""

    field: str
    description: str

    def to_dict(self) -> dict[str, str]:
        """The shape of a `google.rpc.BadRequest.FieldViolation`."""
        return {"field": self.field, "description": self.description}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(Violation(field, description))

    def name(self, field: str, value: object, what: str) -> bool:
        if not isinstance(value, str) or not value:
            self.add(field, f"{what} is required (a non-empty string)")
            return False
        if len(value) > MAX_NAME_LENGTH:
            self.add(field, f"{what} {value[:20]!r}... is longer than {MAX_NAME_LENGTH} characters")
            return False
        if not NAME_PATTERN.fullmatch(value):
            self.add(
                field,
                f"{what} {value!r} must be lowercase letters, digits and '_', "
                "starting with a letter",
            )
            return False
        return True

    def text(self, field: str, value: object, limit: int) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            self.add(field, "must be a string")
        elif len(value) > limit:
            self.add(field, f"is longer than {limit} characters")
        elif "\x00" in value:
            self.add(field, "must not contain NUL characters")

    def unknown_keys(
        self, prefix: str, data: Mapping[Any, Any], known: frozenset[str], where: str = ""
    ) -> None:
        for key in data:
            if key not in known:
                field = f"{prefix}{key}" if isinstance(key, str) else prefix.rstrip(".")
                where = where or ("the definition" if not prefix else "a phase")
                hint = " (versions are assigned by the registry)" if key == "version" else ""
                self.add(field, f"unknown field of {where}: {key!r}{hint}")


def _status_group(value: object) -> FlowStatus | None:
    if not isinstance(value, str):
        return None
    key = value.strip().lower().removeprefix("flow_status_")
    try:
        status = FlowStatus(key)
    except ValueError:
        return None
    return status if status in GROUP_STATUSES else None


def check_document(data: object) -> list[Violation]:
    """Every structural problem of a submitted definition document (empty when it is valid)."""
    check = _Checker()
    if not isinstance(data, Mapping):
        check.add("", "a flow definition must be a mapping with a name and phases")
        return check.violations
    check.unknown_keys("", data, _DEFINITION_KEYS)
    check.name("name", data.get("name"), "the definition name")
    check.text("display_name", data.get("display_name"), MAX_DISPLAY_NAME_LENGTH)
    check.text("description", data.get("description"), MAX_DESCRIPTION_LENGTH)
    if data.get("deadline") is not None:
        _duration(check, "deadline", data["deadline"], MIN_POLICY_DURATION, MAX_DEADLINE)
    phases = data.get("phases")
    if not isinstance(phases, list) or not phases:
        check.add("phases", "a definition needs at least one phase (a non-empty list)")
        return check.violations
    if len(phases) > MAX_PHASES:
        check.add("phases", f"{len(phases)} phases; at most {MAX_PHASES} are allowed")
    names: dict[str, int] = {}
    weights: list[int] = []
    for index, phase in enumerate(phases):
        prefix = f"phases[{index}]"
        if not isinstance(phase, Mapping):
            check.add(prefix, "a phase must be a mapping with a name")
            continue
        check.unknown_keys(prefix + ".", phase, _PHASE_KEYS)
        name = phase.get("name")
        if check.name(f"{prefix}.name", name, "the phase name"):
            assert isinstance(name, str)
            if name in names:
                check.add(
                    f"{prefix}.name", f"duplicate phase {name!r} (also phases[{names[name]}])"
                )
            else:
                names[name] = index
        weight: Any = phase.get("weight")
        if not _is_int(weight) or not 0 <= weight <= TOTAL_WEIGHT:
            check.add(f"{prefix}.weight", f"must be an integer in [0, {TOTAL_WEIGHT}]")
        else:
            weights.append(weight)
        retries: Any = phase.get("max_retries", 0)
        if not _is_int(retries) or not 0 <= retries <= MAX_RETRIES:
            check.add(f"{prefix}.max_retries", f"must be an integer in [0, {MAX_RETRIES}]")
        group = phase.get("status_group")
        if group not in (None, "") and _status_group(group) is None:
            allowed = ", ".join(sorted(s.value for s in GROUP_STATUSES))
            check.add(f"{prefix}.status_group", f"{group!r} is not one of: {allowed}")
        if not isinstance(phase.get("optional", False), bool):
            check.add(f"{prefix}.optional", "must be true or false")
        _check_kind(check, prefix, phase, data.get("name"))
        _check_policy(check, f"{prefix}.policy", phase.get("policy"))
        check.text(f"{prefix}.display_name", phase.get("display_name"), MAX_DISPLAY_NAME_LENGTH)
        check.text(f"{prefix}.description", phase.get("description"), MAX_DESCRIPTION_LENGTH)
    if len(weights) == len(phases) and sum(weights) != TOTAL_WEIGHT:
        check.add("phases", f"phase weights sum to {sum(weights)}, not {TOTAL_WEIGHT}")
    _check_dependencies(check, phases, names)
    return check.violations


def parse_duration(value: object) -> float | None:
    """Seconds of a duration (a number of seconds, or ``"500ms"``, ``"30s"``, ``"5m"``,
    ``"2h"``, ``"1d"``); None when `value` is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return None


def _duration(
    check: _Checker, field: str, value: object, minimum: float, maximum: float
) -> float | None:
    seconds = parse_duration(value)
    if seconds is None:
        check.add(field, "must be a duration: seconds, or a string like '30s', '5m', '2h'")
        return None
    if not minimum <= seconds <= maximum:
        check.add(field, f"must be between {minimum:g} and {maximum:g} seconds")
        return None
    return seconds


def _check_policy(check: _Checker, prefix: str, policy: object) -> None:
    if policy is None:
        return
    if not isinstance(policy, Mapping):
        check.add(prefix, "must be a mapping of policies (timeout, heartbeat_timeout, ...)")
        return
    _check_approval(check, f"{prefix}.approval", policy.get("approval"))
    check.unknown_keys(prefix + ".", policy, _POLICY_KEYS, "a phase policy")
    for key in ("timeout", "heartbeat_timeout"):
        if policy.get(key) is not None:
            _duration(
                check, f"{prefix}.{key}", policy[key], MIN_POLICY_DURATION, MAX_POLICY_DURATION
            )
    retry = policy.get("retry_policy")
    if retry is None:
        return
    where = f"{prefix}.retry_policy"
    if not isinstance(retry, Mapping):
        check.add(where, "must be a mapping (initial_backoff, multiplier, max_backoff, retry_on)")
        return
    check.unknown_keys(where + ".", retry, _RETRY_POLICY_KEYS, "a retry policy")
    initial = _duration(
        check, f"{where}.initial_backoff", retry.get("initial_backoff"), 0.0, MAX_POLICY_DURATION
    )
    maximum = _duration(
        check, f"{where}.max_backoff", retry.get("max_backoff"), 0.0, MAX_POLICY_DURATION
    )
    if initial is not None and maximum is not None and maximum < initial:
        check.add(f"{where}.max_backoff", "must be at least initial_backoff")
    multiplier = retry.get("multiplier", 1.0)
    valid_number = isinstance(multiplier, int | float) and not isinstance(multiplier, bool)
    if not valid_number or not 1.0 <= multiplier <= MAX_BACKOFF_MULTIPLIER:
        check.add(f"{where}.multiplier", f"must be a number in [1, {MAX_BACKOFF_MULTIPLIER:g}]")
    codes = retry.get("retry_on")
    if not isinstance(codes, list) or not codes:
        check.add(f"{where}.retry_on", "must be a non-empty list of retryable error codes")
        return
    allowed = sorted(code.value for code in RETRYABLE_ERROR_CODES)
    seen: set[ErrorCode] = set()
    for position, code in enumerate(codes):
        field = f"{where}.retry_on[{position}]"
        parsed = _error_code(code)
        if parsed is None or parsed not in RETRYABLE_ERROR_CODES:
            check.add(field, f"{code!r} is not a retryable error code: one of {', '.join(allowed)}")
        elif parsed in seen:
            check.add(field, f"{parsed.value} is listed twice")
        else:
            seen.add(parsed)


def _error_code(value: object) -> ErrorCode | None:
    if not isinstance(value, str):
        return None
    try:
        return ErrorCode(value.strip().upper().removeprefix("ERROR_CODE_"))
    except ValueError:
        return None


def _check_approval(check: _Checker, field: str, approval: object) -> None:
    if approval is None:
        return
    if not isinstance(approval, Mapping):
        check.add(field, "must be a mapping (required, scope, claim, claim_value, ...)")
        return
    for key in approval:
        if key not in _APPROVAL_KEYS:
            where = f"{field}.{key}" if isinstance(key, str) else field
            check.add(where, f"unknown field of an approval policy: {key!r}")
    if not isinstance(approval.get("required", False), bool):
        check.add(f"{field}.required", "must be true or false")
    for key in ("scope", "claim", "claim_value"):
        value = approval.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value or len(value) > MAX_POLICY_TEXT_LENGTH:
            check.add(
                f"{field}.{key}",
                f"must be a non-empty string of at most {MAX_POLICY_TEXT_LENGTH} characters",
            )
        elif key != "claim_value" and any(c.isspace() for c in value):
            check.add(f"{field}.{key}", "must not contain spaces")
    if (approval.get("claim") is None) != (approval.get("claim_value") is None):
        missing = "claim_value" if approval.get("claim_value") is None else "claim"
        check.add(f"{field}.{missing}", "claim and claim_value are given together")
    timeout = approval.get("approval_timeout")
    if timeout is not None:
        _duration(
            check, f"{field}.approval_timeout", timeout, MIN_POLICY_DURATION, MAX_POLICY_DURATION
        )
    on_timeout = approval.get("on_timeout")
    if on_timeout is not None and _timeout_action(on_timeout) is None:
        actions = ", ".join(a.value for a in ApprovalTimeoutAction)
        check.add(f"{field}.on_timeout", f"{on_timeout!r} is not one of: {actions}")
    if (timeout is None) != (on_timeout is None):
        missing = "on_timeout" if on_timeout is None else "approval_timeout"
        check.add(f"{field}.{missing}", "approval_timeout and on_timeout are given together")


def _timeout_action(value: object) -> ApprovalTimeoutAction | None:
    if not isinstance(value, str):
        return None
    key = value.strip().lower().removeprefix("approval_timeout_action_")
    try:
        return ApprovalTimeoutAction(key)
    except ValueError:
        return None


def _approval_policy(policy: object) -> ApprovalPolicy | None:
    """The checked ``policy.approval`` of a phase as a value (None when absent or empty)."""
    if not isinstance(policy, Mapping) or not policy.get("approval"):
        return None
    data = policy["approval"]
    result = ApprovalPolicy(
        required=data.get("required", False),
        scope=data.get("scope") or "",
        claim=data.get("claim") or "",
        claim_value=data.get("claim_value") or "",
        timeout_seconds=parse_duration(data.get("approval_timeout")),
        on_timeout=_timeout_action(data.get("on_timeout")),
    )
    return result if result != ApprovalPolicy() else None


def _policy(data: object) -> PhasePolicy:
    """The policy of a checked document's phase (None or {}: no policy)."""
    if not isinstance(data, Mapping) or not data:
        return PhasePolicy()
    retry = data.get("retry_policy")
    retry_policy = None
    if retry is not None:
        retry_policy = RetryPolicy(
            initial_backoff=parse_duration(retry["initial_backoff"]) or 0.0,
            multiplier=float(retry.get("multiplier", 1.0)),
            max_backoff=parse_duration(retry["max_backoff"]) or 0.0,
            retry_on=frozenset(
                code for code in map(_error_code, retry["retry_on"]) if code is not None
            ),
        )
    return PhasePolicy(
        timeout=parse_duration(data.get("timeout")),
        heartbeat_timeout=parse_duration(data.get("heartbeat_timeout")),
        retry_policy=retry_policy,
    )


def _check_kind(check: _Checker, prefix: str, phase: Mapping[str, Any], own: object) -> None:
    kind = phase.get("kind", "task")
    child = phase.get("child_flow")
    if kind not in PHASE_KINDS:
        check.add(f"{prefix}.kind", f"{kind!r} is not one of: {', '.join(PHASE_KINDS)}")
        return
    if kind == "task":
        if child is not None:
            check.add(f"{prefix}.child_flow", "only a phase of kind child_flow names a child flow")
        return
    policy = phase.get("policy")
    for key in ("timeout", "heartbeat_timeout"):
        if isinstance(policy, Mapping) and policy.get(key) is not None:
            check.add(
                f"{prefix}.policy.{key}",
                "a child_flow phase follows its child flow, whose phases carry the timeouts",
            )
    field = f"{prefix}.child_flow"
    if not isinstance(child, Mapping):
        check.add(field, "a phase of kind child_flow needs child_flow: {definition: NAME}")
        return
    check.unknown_keys(field + ".", child, _CHILD_FLOW_KEYS, "a child flow")
    name = child.get("definition")
    if check.name(f"{field}.definition", name, "the child definition name") and name == own:
        check.add(f"{field}.definition", "a definition cannot have itself as a child flow")
    version: Any = child.get("version", 0)
    if not _is_int(version) or version < 0:
        check.add(f"{field}.version", "must be an integer >= 1 (or 0 / absent: the latest)")
    policy = child.get("on_parent_cancel", "cascade")
    if policy not in [p.value for p in ParentCancelPolicy]:
        check.add(f"{field}.on_parent_cancel", "must be one of: cascade, abandon")


def _check_dependencies(check: _Checker, phases: list[Any], names: Mapping[str, int]) -> None:
    edges: dict[str, list[tuple[str, str]]] = {name: [] for name in names}
    for index, phase in enumerate(phases):
        if not isinstance(phase, Mapping):
            continue
        prefix = f"phases[{index}].depends_on"
        depends_on = phase.get("depends_on", [])
        if not isinstance(depends_on, list):
            check.add(prefix, "must be a list of phase names")
            continue
        if len(depends_on) > MAX_DEPENDENCIES:
            check.add(prefix, f"{len(depends_on)} dependencies; at most {MAX_DEPENDENCIES}")
        own = phase.get("name")
        seen: set[str] = set()
        for position, dependency in enumerate(depends_on):
            field = f"{prefix}[{position}]"
            if not isinstance(dependency, str) or dependency not in names:
                check.add(field, f"unknown phase {dependency!r}")
            elif dependency == own:
                check.add(field, f"phase {own!r} depends on itself")
            elif dependency in seen:
                check.add(field, f"{dependency!r} is listed twice")
            else:
                seen.add(dependency)
                if isinstance(own, str) and names.get(own) == index:
                    edges[own].append((dependency, field))
    cycles = _cycles(edges)
    for cycle, field in cycles:
        check.add(field, f"dependency cycle: {' -> '.join(cycle)}")
    if cycles:
        return  # every order is wrong inside a cycle; the cycle is the error worth reading
    for name, dependencies in edges.items():
        for dependency, field in dependencies:
            if names[dependency] > names[name]:
                check.add(
                    field,
                    f"{dependency!r} is listed after {name!r}; list every phase after the "
                    "phases it depends on",
                )


def _cycles(edges: Mapping[str, list[tuple[str, str]]]) -> list[tuple[list[str], str]]:
    """Cycles of the dependency graph, each with the path of an edge that closes it."""
    found: list[tuple[list[str], str]] = []
    removed: set[tuple[str, str]] = set()
    while len(found) < MAX_CYCLES_REPORTED:
        cycle = _one_cycle(edges, removed)
        if cycle is None:
            break
        path, closing = cycle
        found.append((path, closing[1]))
        removed.add((closing[0], closing[1]))
    return found


def _one_cycle(
    edges: Mapping[str, list[tuple[str, str]]], removed: set[tuple[str, str]]
) -> tuple[list[str], tuple[str, str]] | None:
    """A cycle as ([a, b, ..., a], (phase, field of the closing edge)), or None."""
    done: set[str] = set()
    for start in edges:
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        on_path = {start}
        while stack:
            node, next_edge = stack[-1]
            outgoing = [e for e in edges[node] if (node, e[1]) not in removed]
            if next_edge >= len(outgoing) or node in done:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            stack[-1] = (node, next_edge + 1)
            dependency, field = outgoing[next_edge]
            if dependency in on_path:
                cycle = [*path[path.index(dependency) :], dependency]
                return cycle, (node, field)
            if dependency not in done:
                stack.append((dependency, 0))
                path.append(dependency)
                on_path.add(dependency)
    return None


def definition_from_document(data: object, *, version: int = 1) -> FlowDefinition:
    """The definition `data` describes, at `version`; MALFORMED_REQUEST listing every problem."""
    violations = check_document(data)
    if violations:
        raise invalid_definition(violations)
    assert isinstance(data, Mapping)
    phases = tuple(
        PhaseDefinition(
            name=p["name"],
            depends_on=tuple(p.get("depends_on", [])),
            weight=p["weight"],
            max_retries=p.get("max_retries", 0),
            status_group=_status_group(p.get("status_group")),
            display_name=p.get("display_name") or "",
            description=p.get("description") or "",
            optional=p.get("optional", False),
            policy=_policy(p.get("policy")),
            approval=_approval_policy(p.get("policy")),
            child_flow=(
                child_from_dict(p["child_flow"]) if p.get("kind") == "child_flow" else None
            ),
        )
        for p in data["phases"]
    )
    return FlowDefinition(
        name=data["name"],
        version=version,
        phases=phases,
        display_name=data.get("display_name") or "",
        description=data.get("description") or "",
        deadline_seconds=parse_duration(data.get("deadline")),
    )


def invalid_definition(violations: list[Violation]) -> FlowStateError:
    """The refusal of a document with `violations` (MALFORMED_REQUEST, field violations)."""
    count = len(violations)
    first = violations[0]
    where = f" at {first.field}" if first.field else ""
    more = f" (and {count - 1} more)" if count > 1 else ""
    return FlowStateError(
        ErrorCode.MALFORMED_REQUEST,
        f"Invalid flow definition: {first.description}{where}{more}",
        field_violations=[v.to_dict() for v in violations],
    )


def definition_body(definition: FlowDefinition) -> dict[str, Any]:
    """The version-free body of `definition`: what makes two registrations the same."""
    body = definition_to_dict(definition)
    del body["version"]
    return body
