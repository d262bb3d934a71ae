"""Flow definitions: the built-in discovery data, helpers, validation, dict round trip."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from flowstate.core import (
    BUILTIN_DEFINITIONS,
    DISCOVERY,
    DefinitionError,
    ErrorCode,
    FlowDefinition,
    FlowStateError,
    FlowStatus,
    PhaseDefinition,
    definition_from_dict,
    definition_to_dict,
)
from flowstate.core.definitions import (
    ApprovalPolicy,
    ApprovalTimeoutAction,
    ChildFlowSpec,
    ParentCancelPolicy,
    PhasePolicy,
    RetryPolicy,
)

from .support import BRANCHY


def _phase(
    name: str, depends_on: tuple[str, ...] = (), weight: int = 50, max_retries: int = 1
) -> PhaseDefinition:
    return PhaseDefinition(name, depends_on, weight, max_retries, None)


def test_discovery_is_the_design_table() -> None:
    rows = [
        (p.name, p.depends_on, p.weight, p.max_retries, p.status_group) for p in DISCOVERY.phases
    ]
    assert rows == [
        ("data_import", (), 20, 3, FlowStatus.DATA_GATHERING),
        ("field_mapping", ("data_import",), 20, 3, FlowStatus.DISCOVERY),
        ("data_cleansing", ("field_mapping",), 20, 2, FlowStatus.DISCOVERY),
        ("asset_inventory", ("data_cleansing",), 20, 3, FlowStatus.ASSESSMENT_READY),
        ("dependency_analysis", ("asset_inventory",), 20, 2, FlowStatus.PLANNING),
    ]
    assert (DISCOVERY.name, DISCOVERY.version) == ("discovery", 1)
    assert BUILTIN_DEFINITIONS == {"discovery": DISCOVERY}


def test_helpers() -> None:
    assert DISCOVERY.phase_names[0] == "data_import"
    assert DISCOVERY.phase("data_cleansing").max_retries == 2
    assert DISCOVERY.dependencies("field_mapping") == ("data_import",)
    assert DISCOVERY.dependents("data_cleansing") == ("asset_inventory", "dependency_analysis")
    assert DISCOVERY.dependents("dependency_analysis") == ()
    assert DISCOVERY.index("asset_inventory") == 3
    assert dict(DISCOVERY.weights) == dict.fromkeys(DISCOVERY.phase_names, 20)


def test_dependents_follow_parallel_branches_in_definition_order() -> None:
    assert BRANCHY.dependents("extract") == ("left", "right", "merge")
    assert BRANCHY.dependents("right") == ("merge",)


def test_unknown_phase_is_invalid_phase() -> None:
    with pytest.raises(FlowStateError) as raised:
        DISCOVERY.phase("data_export")
    assert raised.value.code is ErrorCode.INVALID_PHASE
    assert raised.value.details["phase"] == "data_export"
    assert "data_import" in raised.value.details["valid_phases"]
    with pytest.raises(FlowStateError):
        DISCOVERY.dependents("data_export")


@pytest.mark.parametrize(
    ("phases", "message"),
    [
        ((_phase("a"), _phase("a")), "duplicate phase name 'a'"),
        ((_phase("a"), _phase("b", ("ghost",))), "depends on unknown phase(s) ['ghost']"),
        ((_phase("a", ("b",)), _phase("b", ("a",))), "dependency cycle a -> b -> a"),
        ((_phase("a", ("a",)), _phase("b")), "depends on itself"),
        ((_phase("a"), _phase("b", ("a", "a"))), "lists a dependency twice"),
        ((_phase("b", ("a",)), _phase("a")), "listed before its dependency 'a'"),
        ((_phase("a", weight=50), _phase("b", weight=40)), "weights sum to 90, not 100"),
        ((_phase("a", weight=150), _phase("b", weight=-50)), "weight must be a non-negative"),
        ((_phase("a", max_retries=-1), _phase("b")), "max_retries must be a non-negative"),
        ((), "has no phases"),
        ((_phase(""), _phase("b")), "phase name must be a non-empty string"),
    ],
    ids=[
        "duplicate-name",
        "unknown-dependency",
        "cycle",
        "self-dependency",
        "repeated-dependency",
        "dependency-listed-later",
        "weights-not-100",
        "negative-weight",
        "negative-max-retries",
        "no-phases",
        "empty-name",
    ],
)
def test_invalid_definitions_are_refused(phases: tuple[PhaseDefinition, ...], message: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        FlowDefinition("custom", 1, phases)
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_longer_cycle_is_named_in_full() -> None:
    phases = (_phase("a", ("c",), 40), _phase("b", ("a",), 30), _phase("c", ("b",), 30))
    with pytest.raises(DefinitionError, match="dependency cycle a -> c -> b -> a"):
        FlowDefinition("custom", 1, phases)


def test_status_group_must_be_a_group_status() -> None:
    phases = (PhaseDefinition("a", (), 100, 1, FlowStatus.COMPLETED),)
    with pytest.raises(DefinitionError, match="status group"):
        FlowDefinition("custom", 1, phases)


@pytest.mark.parametrize(("name", "version"), [("", 1), ("custom", 0)])
def test_name_and_version_are_required(name: str, version: int) -> None:
    with pytest.raises(DefinitionError):
        FlowDefinition(name, version, (_phase("a", weight=100),))


@pytest.mark.parametrize("definition", [DISCOVERY, BRANCHY], ids=["discovery", "branchy"])
def test_dict_round_trip_through_json(definition: FlowDefinition) -> None:
    data = json.loads(json.dumps(definition_to_dict(definition)))
    assert definition_from_dict(data) == definition


def test_dict_shape() -> None:
    data = definition_to_dict(DISCOVERY)
    assert data["phases"][1] == {
        "name": "field_mapping",
        "depends_on": ["data_import"],
        "weight": 20,
        "max_retries": 3,
        "status_group": "discovery",
        "display_name": "Field mapping",
        "description": "Map imported fields onto the asset model.",
    }


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("phases"),
        lambda d: d["phases"][0].pop("weight"),
        lambda d: d["phases"][0].update(status_group="nowhere"),
        lambda d: d["phases"][1].update(depends_on="data_import"),
        lambda d: d["phases"][0].update(weight="20"),
        lambda d: d["phases"][0].update(weight=True),
    ],
    ids=[
        "no-phases",
        "no-weight",
        "unknown-group",
        "depends-on-string",
        "weight-string",
        "weight-bool",
    ],
)
def test_malformed_dicts_are_definition_errors(mutate: Any) -> None:
    data = definition_to_dict(DISCOVERY)
    mutate(data)
    with pytest.raises(DefinitionError):
        definition_from_dict(data)


# Definitions are built inside the tests (not at import time), so a mutant of the validation is
# active when they are built; every refusal is checked by its whole message.
P = PhaseDefinition
_ONE = (P("a", (), 100, 0, None),)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FlowDefinition("", 1, _ONE), "flow definition name must be a non-empty string"),
        (
            lambda: FlowDefinition("x", 0, _ONE),
            "flow definition 'x' v0: version must be an integer >= 1",
        ),
        (
            lambda: FlowDefinition("x", True, _ONE),
            "flow definition 'x' vTrue: version must be an integer >= 1",
        ),
        (
            lambda: FlowDefinition(
                "x",
                1,
                (P("a", (), 50.5, 0, None), P("b", (), 49.5, 0, None)),  # type: ignore[arg-type]
            ),
            "flow definition 'x' v1: phase 'a' weight must be a non-negative integer, got 50.5",
        ),
        (
            lambda: FlowDefinition("x", 1, (P("a", (), -1, 0, None), P("b", (), 101, 0, None))),
            "flow definition 'x' v1: phase 'a' weight must be a non-negative integer, got -1",
        ),
        (
            lambda: FlowDefinition("x", 1, (P("a", (), 100, True, None),)),
            "flow definition 'x' v1: phase 'a' max_retries must be a non-negative integer, "
            "got True",
        ),
        (
            lambda: FlowDefinition("x", 1, (P("a", ["b"], 100, 0, None),)),  # type: ignore[arg-type]
            "flow definition 'x' v1: phase 'a' depends_on must be a tuple",
        ),
        (
            lambda: FlowDefinition("x", 1, (P("a", (), 100, 0, FlowStatus.PAUSED),)),
            "flow definition 'x' v1: phase 'a' status group <FlowStatus.PAUSED: 'paused'> is not "
            "one of ['active', 'assessment_ready', 'data_gathering', 'discovery', 'planning']",
        ),
        (
            lambda: definition_from_dict(
                {
                    "name": "x",
                    "version": 1,
                    "phases": [
                        {"name": "a", "weight": 100, "max_retries": 0, "status_group": "no"}
                    ],
                }
            ),
            "phase 'a': unknown status group 'no'",
        ),
        (
            lambda: definition_from_dict(
                {
                    "name": "x",
                    "version": 1,
                    "phases": [{"name": "a", "weight": 100, "max_retries": 0, "depends_on": "b"}],
                }
            ),
            "phase 'a': depends_on must be a list",
        ),
        (
            lambda: definition_from_dict(
                {"name": "x", "version": 1, "phases": [{"name": "a", "max_retries": 0}]}
            ),
            "malformed flow definition: KeyError('weight')",
        ),
    ],
    ids=[
        "empty-name",
        "version-0",
        "bool-version",
        "float-weight",
        "negative-weight",
        "bool-max-retries",
        "list-depends-on",
        "non-group-status",
        "unknown-group-in-dict",
        "string-depends-on-in-dict",
        "missing-weight-in-dict",
    ],
)
def test_each_invalid_definition_is_refused_with_its_own_message(build: Any, message: str) -> None:
    with pytest.raises(DefinitionError) as refused:
        build()
    assert str(refused.value) == message


def _with_deadline(deadline: object) -> FlowDefinition:
    return FlowDefinition("x", 1, _ONE, deadline_seconds=deadline)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "deadline", [0, -1, -0.5, "30"], ids=["zero", "negative", "-0.5", "string"]
)
def test_a_deadline_that_is_not_a_positive_number_is_refused(deadline: object) -> None:
    with pytest.raises(DefinitionError) as refused:
        _with_deadline(deadline)
    assert (
        str(refused.value)
        == "flow definition 'x' v1: deadline must be a positive number of seconds"
    )


@pytest.mark.parametrize("deadline", [None, 0.001, 1, 86400.0])
def test_no_deadline_or_any_positive_one_is_accepted(deadline: float | None) -> None:
    assert _with_deadline(deadline).deadline_seconds == deadline


def test_optional_must_be_a_bool() -> None:
    with pytest.raises(DefinitionError) as refused:
        FlowDefinition("x", 1, (P("a", (), 100, 0, None, optional="yes"),))  # type: ignore[arg-type]
    assert str(refused.value) == "flow definition 'x' v1: phase 'a' optional must be a bool"


@pytest.mark.parametrize(
    "child",
    [
        ChildFlowSpec(""),
        ChildFlowSpec(5),  # type: ignore[arg-type]
        ChildFlowSpec("leaf", -1),
        ChildFlowSpec("leaf", True),
        ChildFlowSpec("leaf", 2, "cascade"),  # type: ignore[arg-type]
        SimpleNamespace(
            definition_name="leaf",
            definition_version=2,
            on_parent_cancel=ParentCancelPolicy.CASCADE,
        ),
    ],
    ids=[
        "empty-name",
        "name-not-a-string",
        "negative-version",
        "bool-version",
        "policy-not-the-enum",
        "not-a-child-flow-spec",
    ],
)
def test_a_malformed_child_flow_is_refused(child: object) -> None:
    with pytest.raises(DefinitionError) as refused:
        FlowDefinition("x", 1, (P("a", (), 100, 0, None, child_flow=child),))  # type: ignore[arg-type]
    assert str(refused.value) == "flow definition 'x' v1: phase 'a' has a malformed child_flow"


@pytest.mark.parametrize(
    "child",
    [ChildFlowSpec("leaf"), ChildFlowSpec("leaf", 3, ParentCancelPolicy.ABANDON)],
    ids=["latest-version", "pinned-version"],
)
def test_a_well_formed_child_flow_is_accepted(child: ChildFlowSpec) -> None:
    definition = FlowDefinition("x", 1, (P("a", (), 100, 0, None, child_flow=child),))
    assert definition.phase("a").child_flow == child


def test_weights_of_zero_are_valid_when_built_at_run_time() -> None:
    gate_first = FlowDefinition(
        "gated", 1, (P("gate", (), 0, 0, None), P("work", ("gate",), 100, 1, None))
    )
    assert gate_first.weights == {"gate": 0, "work": 100}


def test_a_dict_without_optional_keys_gets_their_defaults() -> None:
    definition = definition_from_dict(
        {"name": "x", "version": 1, "phases": [{"name": "a", "weight": 100, "max_retries": 0}]}
    )
    assert definition == FlowDefinition(
        name="x",
        version=1,
        phases=(P("a", (), 100, 0, None, display_name="", description=""),),
        display_name="",
        description="",
    )


def test_every_field_of_a_stored_definition_reads_back() -> None:
    """The stored form of a definition with each optional field set, and the definition read
    back from it (the registry stores this dict; a field lost here is lost on the next read)."""
    definition = FlowDefinition(
        "full",
        4,
        (
            PhaseDefinition(
                "review",
                (),
                60,
                2,
                FlowStatus.PLANNING,
                display_name="Review",
                description="A person signs off.",
                optional=True,
                policy=PhasePolicy(
                    timeout=60.0,
                    retry_policy=RetryPolicy(
                        2.0, 3.0, 30.0, frozenset({ErrorCode.EXTERNAL_SERVICE_ERROR})
                    ),
                ),
                approval=ApprovalPolicy(
                    required=True,
                    scope="approve:finance",
                    claim="groups",
                    claim_value="finance",
                    timeout_seconds=3600.0,
                    on_timeout=ApprovalTimeoutAction.ESCALATE,
                ),
            ),
            PhaseDefinition(
                "child",
                ("review",),
                40,
                0,
                None,
                child_flow=ChildFlowSpec("leaf", 3, ParentCancelPolicy.ABANDON),
            ),
        ),
        display_name="Full",
        description="Every field.",
        deadline_seconds=86400.0,
    )
    data = json.loads(json.dumps(definition_to_dict(definition)))
    review, child = data["phases"]
    assert (review["optional"], review["policy"]["approval"]) == (
        True,
        {
            "required": True,
            "scope": "approve:finance",
            "claim": "groups",
            "claim_value": "finance",
            "approval_timeout": 3600.0,
            "on_timeout": "escalate",
        },
    )
    assert "optional" not in child
    assert definition_from_dict(data) == definition


@pytest.mark.parametrize(
    "policy",
    [ApprovalPolicy(), ApprovalPolicy(scope="approve:finance"), ApprovalPolicy(required=True)],
    ids=["empty", "scope-only", "required-only"],
)
def test_an_approval_policy_with_fields_left_out_reads_back_with_their_defaults(
    policy: ApprovalPolicy,
) -> None:
    assert ApprovalPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
