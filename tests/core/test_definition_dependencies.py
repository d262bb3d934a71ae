"""A definition document's phase list and dependencies: every violation whole, in order.

Found missing by `make mutate` (docs/testing.md): the document tests named the fields refused
and a word of each message, not the message, the cycle's path or the order of the violations.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowstate.core.definition_document import (
    MAX_CYCLES_REPORTED,
    MAX_DEPENDENCIES,
    MAX_PHASES,
    check_document,
)

GROUPS = "active, assessment_ready, data_gathering, discovery, planning"
LISTED_AFTER = "list every phase after the phases it depends on"


def phase(name: str, *depends_on: str, weight: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "depends_on": list(depends_on), "weight": weight, **extra}


def found(name: str, *phases: object) -> list[tuple[str, str]]:
    document = {"name": name, "phases": list(phases)}
    return [(v.field, v.description) for v in check_document(document)]


def test_the_phase_checks_then_the_dependency_checks_each_whole() -> None:
    document = {
        "name": "Bad Name",
        "version": 2,
        "phases": [
            phase("a", weight=30),
            phase("a", weight=30),
            phase("c", "ghost", "c", weight=30, policy={"timeout": "1 hour"}),
            phase("d", "a", "a", weight=-1, optional="yes", status_group="FAILED"),
        ],
    }
    assert [(v.field, v.description) for v in check_document(document)] == [
        (
            "version",
            "unknown field of the definition: 'version' (versions are assigned by the registry)",
        ),
        (
            "name",
            "the definition name 'Bad Name' must be lowercase letters, digits and '_', "
            "starting with a letter",
        ),
        ("phases[1].name", "duplicate phase 'a' (also phases[0])"),
        (
            "phases[2].policy.timeout",
            "must be a duration: seconds, or a string like '30s', '5m', '2h'",
        ),
        ("phases[3].weight", "must be an integer in [0, 100]"),
        ("phases[3].status_group", f"'FAILED' is not one of: {GROUPS}"),
        ("phases[3].optional", "must be true or false"),
        ("phases[2].depends_on[0]", "unknown phase 'ghost'"),
        ("phases[2].depends_on[1]", "phase 'c' depends on itself"),
        ("phases[3].depends_on[1]", "'a' is listed twice"),
    ]


def test_status_groups_take_the_enum_spelling_and_nothing_else() -> None:
    spelled = [
        phase("a", weight=100, status_group="FLOW_STATUS_ACTIVE"),
        phase("b", status_group=" Discovery "),
        phase("c", status_group=""),
        phase("d", status_group=None),
    ]
    assert found("groups", *spelled) == []
    assert found("groups", phase("a", weight=100, status_group=3)) == [
        ("phases[0].status_group", f"3 is not one of: {GROUPS}")
    ]
    assert found("groups", phase("a", weight=100, status_group="completed")) == [
        ("phases[0].status_group", f"'completed' is not one of: {GROUPS}")
    ]


def test_dependency_shapes() -> None:
    assert found(
        "shapes",
        {"name": "a", "weight": 100, "depends_on": "b"},
        {"name": "b", "weight": 0, "depends_on": [5, None]},
        {"name": "c", "weight": 0},
    ) == [
        ("phases[0].depends_on", "must be a list of phase names"),
        ("phases[1].depends_on[0]", "unknown phase 5"),
        ("phases[1].depends_on[1]", "unknown phase None"),
    ]


def test_a_self_dependency_is_named_before_the_cycle() -> None:
    assert found("self", phase("a", "b", weight=100), phase("b", "a", "b")) == [
        ("phases[1].depends_on[1]", "phase 'b' depends on itself"),
        ("phases[1].depends_on[0]", "dependency cycle: a -> b -> a"),
    ]


def test_a_cycle_is_named_by_its_path_at_the_edge_that_closes_it() -> None:
    # a needs c, c needs b, b needs a: found from a, closed by b's dependency on a.
    loop = [phase("a", "c", weight=25), phase("b", "a", weight=25), phase("c", "b", weight=25)]
    assert found("loop", *loop, phase("d", weight=25)) == [
        ("phases[1].depends_on[0]", "dependency cycle: a -> c -> b -> a")
    ]


def test_separate_and_shared_cycles_are_each_named_once() -> None:
    assert found(
        "loops",
        phase("a", "b", weight=25),
        phase("b", "a", weight=25),
        phase("c", "d", weight=25),
        phase("d", "c", weight=25),
    ) == [
        ("phases[1].depends_on[0]", "dependency cycle: a -> b -> a"),
        ("phases[3].depends_on[0]", "dependency cycle: c -> d -> c"),
    ]
    # Two cycles through a: once its edge to b is set aside, the one through c is found.
    assert found("eight", phase("a", "b", "c", weight=100), phase("b", "a"), phase("c", "a")) == [
        ("phases[1].depends_on[0]", "dependency cycle: a -> b -> a"),
        ("phases[2].depends_on[0]", "dependency cycle: a -> c -> a"),
    ]
    assert found("chain", phase("a", "b", weight=100), phase("b", "a", "c"), phase("c", "b")) == [
        ("phases[1].depends_on[0]", "dependency cycle: a -> b -> a"),
        ("phases[2].depends_on[0]", "dependency cycle: b -> c -> b"),
    ]


def test_at_most_ten_cycles_are_named() -> None:
    pairs: list[dict[str, Any]] = []
    for i in range(MAX_CYCLES_REPORTED + 1):
        pairs += [phase(f"x{i}", f"y{i}"), phase(f"y{i}", f"x{i}")]
    pairs[0]["weight"] = 100
    assert found("many_loops", *pairs) == [
        (f"phases[{2 * i + 1}].depends_on[0]", f"dependency cycle: x{i} -> y{i} -> x{i}")
        for i in range(MAX_CYCLES_REPORTED)
    ]


def test_every_dependency_listed_later_is_named_when_there_is_no_cycle() -> None:
    assert found("late", phase("a", "b", "c", weight=100), phase("b", "c"), phase("c")) == [
        ("phases[0].depends_on[0]", f"'b' is listed after 'a'; {LISTED_AFTER}"),
        ("phases[0].depends_on[1]", f"'c' is listed after 'a'; {LISTED_AFTER}"),
        ("phases[1].depends_on[0]", f"'c' is listed after 'b'; {LISTED_AFTER}"),
    ]


def test_a_duplicate_phase_adds_no_dependency_edges() -> None:
    """Only the first phase of a name is the phase: the duplicate's depends_on (on c, listed
    after it) is checked for names but does not become an order violation of a."""
    assert found(
        "dup", phase("a", weight=50), phase("b", "a", weight=50), phase("a", "c"), phase("c")
    ) == [("phases[2].name", "duplicate phase 'a' (also phases[0])")]


@pytest.mark.parametrize("extra", [0, 1])
def test_the_limits_on_phases_and_dependencies(extra: int) -> None:
    phases = [phase(f"p{i}") for i in range(MAX_PHASES + extra)]
    phases[0]["weight"] = 100
    too_many = [("phases", f"{MAX_PHASES + 1} phases; at most {MAX_PHASES} are allowed")]
    assert found("many", *phases) == (too_many if extra else [])
    fan = [phase(f"p{i}") for i in range(MAX_DEPENDENCIES + extra)]
    fan.append(phase("join", *[p["name"] for p in fan], weight=100))
    too_wide = [
        (
            f"phases[{len(fan) - 1}].depends_on",
            f"{MAX_DEPENDENCIES + 1} dependencies; at most {MAX_DEPENDENCIES}",
        )
    ]
    assert found("fan", *fan) == (too_wide if extra else [])
