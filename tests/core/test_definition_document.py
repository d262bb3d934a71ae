"""Validation of submitted definition documents: every problem at once, each with its path."""

from __future__ import annotations

from typing import Any

import pytest

from flowstate.core import ErrorCode, FlowStateError, FlowStatus
from flowstate.core.definition_document import (
    MAX_DEPENDENCIES,
    MAX_NAME_LENGTH,
    MAX_PHASES,
    check_document,
    definition_body,
    definition_from_document,
)


def phase(name: str, *depends_on: str, weight: int = 25, **extra: Any) -> dict[str, Any]:
    return {"name": name, "depends_on": list(depends_on), "weight": weight, **extra}


def diamond(**extra: Any) -> dict[str, Any]:
    return {
        "name": "diamond",
        "phases": [
            phase("a"),
            phase("b", "a", status_group="DISCOVERY"),
            phase("c", "a", optional=True, status_group="planning"),
            phase("d", "b", "c"),
        ],
        **extra,
    }


def fields(data: object) -> dict[str, str]:
    return {v.field: v.description for v in check_document(data)}


def test_a_valid_diamond_builds() -> None:
    definition = definition_from_document(diamond(), version=3)
    assert definition.version == 3
    assert definition.phase("c").optional
    assert definition.phase("b").status_group is FlowStatus.DISCOVERY
    assert definition.phase("c").status_group is FlowStatus.PLANNING
    assert definition_body(definition)["phases"][2]["optional"] is True
    assert "version" not in definition_body(definition)


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    data = {
        "name": "Bad Name",
        "version": 2,
        "phases": [
            phase("a", weight=30),
            phase("a", weight=30),
            phase("c", "ghost", "c", weight=30, policy={"timeout": "1 hour"}),
            phase("d", "a", "a", weight=-1, optional="yes", status_group="FAILED"),
        ],
    }
    found = fields(data)
    assert set(found) == {
        "name",
        "version",
        "phases[1].name",
        "phases[2].depends_on[0]",
        "phases[2].depends_on[1]",
        "phases[2].policy.timeout",
        "phases[3].depends_on[1]",
        "phases[3].weight",
        "phases[3].optional",
        "phases[3].status_group",
    }
    assert "duplicate phase 'a'" in found["phases[1].name"]
    assert "unknown phase 'ghost'" in found["phases[2].depends_on[0]"]
    assert "depends on itself" in found["phases[2].depends_on[1]"]
    assert "listed twice" in found["phases[3].depends_on[1]"]
    assert "assigned by the registry" in found["version"]


def test_cycles_are_named() -> None:
    data = {
        "name": "loop",
        "phases": [phase("a", "c"), phase("b", "a"), phase("c", "b"), phase("d", weight=25)],
    }
    found = fields(data)
    assert len(found) == 1
    ((field, description),) = found.items()
    assert field.startswith("phases[")
    assert ".depends_on[0]" in field
    assert "dependency cycle" in description
    cycle = description.split(": ")[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}


def test_two_separate_cycles_are_both_named() -> None:
    data = {
        "name": "loops",
        "phases": [phase("a", "b"), phase("b", "a"), phase("c", "d"), phase("d", "c")],
    }
    assert sum("cycle" in d for d in fields(data).values()) == 2


def test_order_weights_and_limits() -> None:
    data = {"name": "order", "phases": [phase("a", "b", weight=50), phase("b", weight=40)]}
    found = fields(data)
    assert "listed after 'a'" in found["phases[0].depends_on[0]"]
    assert "sum to 90" in found["phases"]
    many_phases = [phase(f"p{i}", weight=0) for i in range(MAX_PHASES + 1)]
    many_phases[0]["weight"] = 100
    many = {"name": "many", "phases": many_phases}
    assert f"at most {MAX_PHASES}" in fields(many)["phases"]
    fan = [phase(f"p{i}", weight=0) for i in range(MAX_DEPENDENCIES + 1)]
    fan.append(phase("join", *[p["name"] for p in fan], weight=100))
    assert (
        f"at most {MAX_DEPENDENCIES}"
        in fields({"name": "fan", "phases": fan})[f"phases[{len(fan) - 1}].depends_on"]
    )
    long_name = "x" * (MAX_NAME_LENGTH + 1)
    assert "longer than" in fields({"name": long_name, "phases": [phase("a", weight=100)]})["name"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "phases"),
        ({"name": "empty", "phases": []}, "phases"),
        ([], ""),
        ({"name": "x", "phases": ["a"]}, "phases[0]"),
        ({"name": "x", "phases": [phase("a", weight=100)], "extra": 1}, "extra"),
    ],
    ids=["no-phases", "empty-phases", "not-a-mapping", "phase-not-a-mapping", "unknown-key"],
)
def test_shapes(data: object, field: str) -> None:
    assert field in fields(data)


def test_refusal_is_one_malformed_request_with_every_violation() -> None:
    with pytest.raises(FlowStateError) as refused:
        definition_from_document({"name": "x", "phases": [phase("a", "b", weight=10)]})
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    paths = [v["field"] for v in refused.value.details["field_violations"]]
    assert paths == ["phases", "phases[0].depends_on[0]"]
    assert "(and 1 more)" in refused.value.message
