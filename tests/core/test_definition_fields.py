"""Submitted definition documents, field by field: every violation's path and text, in order.

Written out from docs/definitions.md's rules and compared whole, with the definition a good
document builds. Found missing by `make mutate` (docs/testing.md): the document tests checked
which fields were refused, not what the caller is told, and not kinds and child flows.
"""

from __future__ import annotations

from typing import Any

from flowstate.core import ErrorCode, FlowStatus
from flowstate.core.definition_document import (
    Violation,
    check_document,
    definition_body,
    definition_from_document,
    invalid_definition,
)
from flowstate.core.definitions import (
    ChildFlowSpec,
    FlowDefinition,
    ParentCancelPolicy,
    PhaseDefinition,
    PhasePolicy,
)

DURATION = "must be a duration: seconds, or a string like '30s', '5m', '2h'"
CHILD_TIMEOUTS = "a child_flow phase follows its child flow, whose phases carry the timeouts"
NEEDS_CHILD = "a phase of kind child_flow needs child_flow: {definition: NAME}"
CHILD_VERSION = "must be an integer >= 1 (or 0 / absent: the latest)"
GROUPS = "active, assessment_ready, data_gathering, discovery, planning"


def phase(name: str, *depends_on: str, weight: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "depends_on": list(depends_on), "weight": weight, **extra}


def found(data: object) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in check_document(data)]


def test_fields_kinds_and_child_flows() -> None:
    data = {
        "name": "kinds",
        "display_name": 5,
        "description": "x" * 2049,
        "deadline": "1 day",
        "extra": 1,
        "phases": [
            phase("a", weight=50, kind="job"),
            phase("b", weight=50, child_flow={"definition": "x"}),
            phase("c", kind="child_flow", policy={"timeout": "1s", "heartbeat_timeout": "1s"}),
            phase("d", kind="child_flow", child_flow="other"),
            phase(
                "e",
                kind="child_flow",
                child_flow={
                    "definition": "kinds",
                    "version": -1,
                    "on_parent_cancel": "ignore",
                    "extra": 1,
                },
            ),
            phase("f", kind="child_flow", child_flow={"definition": "Bad", "version": True}),
            phase(
                "g",
                max_retries=11,
                display_name="nul\x00",
                description=7,
                status_group="nope",
                optional=1,
            ),
            phase("h", max_retries=-1, weight=101),
            phase("i", max_retries=2.0, weight=True, display_name="y" * 257),
            "not a phase",
        ],
    }
    assert found(data) == [
        ("extra", "unknown field of the definition: 'extra'"),
        ("display_name", "must be a string"),
        ("description", "is longer than 2048 characters"),
        ("deadline", DURATION),
        ("phases[0].kind", "'job' is not one of: task, child_flow"),
        ("phases[1].child_flow", "only a phase of kind child_flow names a child flow"),
        ("phases[2].policy.timeout", CHILD_TIMEOUTS),
        ("phases[2].policy.heartbeat_timeout", CHILD_TIMEOUTS),
        ("phases[2].child_flow", NEEDS_CHILD),
        ("phases[3].child_flow", NEEDS_CHILD),
        ("phases[4].child_flow.extra", "unknown field of a child flow: 'extra'"),
        ("phases[4].child_flow.definition", "a definition cannot have itself as a child flow"),
        ("phases[4].child_flow.version", CHILD_VERSION),
        ("phases[4].child_flow.on_parent_cancel", "must be one of: cascade, abandon"),
        (
            "phases[5].child_flow.definition",
            "the child definition name 'Bad' must be lowercase letters, digits and '_', "
            "starting with a letter",
        ),
        ("phases[5].child_flow.version", CHILD_VERSION),
        ("phases[6].status_group", f"'nope' is not one of: {GROUPS}"),
        ("phases[6].optional", "must be true or false"),
        ("phases[6].display_name", "must not contain NUL characters"),
        ("phases[6].description", "must be a string"),
        ("phases[7].weight", "must be an integer in [0, 100]"),
        ("phases[7].max_retries", "must be an integer in [0, 100]"),
        ("phases[8].weight", "must be an integer in [0, 100]"),
        ("phases[8].max_retries", "must be an integer in [0, 100]"),
        ("phases[8].display_name", "is longer than 256 characters"),
        ("phases[9]", "a phase must be a mapping with a name"),
    ]


def test_names_shapes_and_the_weight_sum() -> None:
    assert found([]) == [("", "a flow definition must be a mapping with a name and phases")]
    assert found({"name": "a" * 64, "phases": []}) == [
        ("name", "the definition name 'aaaaaaaaaaaaaaaaaaaa'... is longer than 63 characters"),
        ("phases", "a definition needs at least one phase (a non-empty list)"),
    ]
    assert found({"name": "", "phases": [{"name": 5, "weight": 100}]}) == [
        ("name", "the definition name is required (a non-empty string)"),
        ("phases[0].name", "the phase name is required (a non-empty string)"),
    ]
    assert found({"name": "ok", "phases": [phase("a", weight=60), phase("b", "a", weight=30)]}) == [
        ("phases", "phase weights sum to 90, not 100")
    ]
    # The bounds themselves are accepted.
    at_bounds = {
        "name": "a" * 63,
        "display_name": "d" * 256,
        "description": "x" * 2048,
        "deadline": 366 * 86400,
        "phases": [phase("p", weight=100, max_retries=100, display_name="y" * 256)],
    }
    assert found(at_bounds) == []


def test_refusal_names_the_first_violation_and_counts_the_rest() -> None:
    two = invalid_definition([Violation("phases", "x"), Violation("", "y")])
    assert two.code is ErrorCode.MALFORMED_REQUEST
    assert two.message == "Invalid flow definition: x at phases (and 1 more)"
    assert two.details == {
        "field_violations": [
            {"field": "phases", "description": "x"},
            {"field": "", "description": "y"},
        ]
    }
    one = invalid_definition([Violation("", "y")])
    assert one.message == "Invalid flow definition: y"


def test_a_good_document_builds_every_field() -> None:
    definition = definition_from_document(
        {
            "name": "parent",
            "display_name": "Parent",
            "description": "Runs a child.",
            "deadline": "2h",
            "phases": [
                phase(
                    "prepare",
                    weight=40,
                    max_retries=3,
                    status_group="FLOW_STATUS_DATA_GATHERING",
                    display_name="Prepare",
                    description="Get ready.",
                ),
                phase(
                    "child",
                    "prepare",
                    weight=60,
                    kind="child_flow",
                    optional=True,
                    status_group=" planning ",
                    child_flow={"definition": "kid", "version": 2, "on_parent_cancel": "abandon"},
                ),
                phase("tail", "child", kind="task", display_name=None, description=None),
            ],
        },
        version=7,
    )
    assert definition == FlowDefinition(
        name="parent",
        version=7,
        display_name="Parent",
        description="Runs a child.",
        deadline_seconds=7200.0,
        phases=(
            PhaseDefinition(
                "prepare",
                (),
                40,
                3,
                FlowStatus.DATA_GATHERING,
                display_name="Prepare",
                description="Get ready.",
            ),
            PhaseDefinition(
                "child",
                ("prepare",),
                60,
                0,
                FlowStatus.PLANNING,
                optional=True,
                child_flow=ChildFlowSpec("kid", 2, ParentCancelPolicy.ABANDON),
            ),
            PhaseDefinition("tail", ("child",), 0, 0, None, policy=PhasePolicy()),
        ),
    )


def test_a_phase_whose_name_is_refused_is_not_a_phase_others_may_depend_on() -> None:
    long = "p" * 64
    assert found(
        {
            "name": "names",
            "phases": [
                phase("Bad", weight=50),
                phase(long, weight=50),
                phase("ok", "Bad", long),
            ],
        }
    ) == [
        (
            "phases[0].name",
            "the phase name 'Bad' must be lowercase letters, digits and '_', "
            "starting with a letter",
        ),
        ("phases[1].name", "the phase name 'pppppppppppppppppppp'... is longer than 63 characters"),
        ("phases[2].depends_on[0]", "unknown phase 'Bad'"),
        ("phases[2].depends_on[1]", f"unknown phase {long!r}"),
    ]


def test_a_phase_that_is_not_a_mapping_does_not_stop_the_checks_of_the_next() -> None:
    assert found(
        {
            "name": "mixed",
            "phases": ["first", phase("a", "ghost", weight=100, colour="red")],
        }
    ) == [
        ("phases[0]", "a phase must be a mapping with a name"),
        ("phases[1].colour", "unknown field of a phase: 'colour'"),
        ("phases[1].depends_on[0]", "unknown phase 'ghost'"),
    ]


def test_the_approval_policys_texts_are_each_checked() -> None:
    policy = {"approval": {"claim": "", "claim_value": ""}}
    assert found({"name": "texts", "phases": [phase("a", weight=100, policy=policy)]}) == [
        ("phases[0].policy.approval.claim", "must be a non-empty string of at most 256 characters"),
        (
            "phases[0].policy.approval.claim_value",
            "must be a non-empty string of at most 256 characters",
        ),
    ]


def test_a_child_flows_version_may_be_absent_or_0_for_the_latest() -> None:
    for child in ({"definition": "kid"}, {"definition": "kid", "version": 0}):
        document = {
            "name": "parent",
            "phases": [phase("c", weight=100, kind="child_flow", child_flow=child)],
        }
        assert found(document) == []
        assert definition_from_document(document).phase("c").child_flow == ChildFlowSpec("kid")


def test_a_minimal_document_builds_version_1_with_empty_texts() -> None:
    assert definition_from_document({"name": "tiny", "phases": [phase("a", weight=100)]}) == (
        FlowDefinition(
            name="tiny",
            version=1,
            phases=(PhaseDefinition("a", (), 100, 0, None, policy=PhasePolicy()),),
            display_name="",
            description="",
        )
    )


def test_the_stored_body_of_child_flow_phases_reads_back_as_the_same_definition() -> None:
    """The body the registry stores and compares re-registrations with: `kind` and `child_flow`
    on child_flow phases only, `version` only when pinned, no `deadline` when none is set."""
    document = {
        "name": "parent",
        "phases": [
            phase("latest", weight=50, kind="child_flow", child_flow={"definition": "kid"}),
            phase(
                "pinned",
                "latest",
                weight=50,
                kind="child_flow",
                child_flow={"definition": "kid", "version": 2, "on_parent_cancel": "abandon"},
            ),
            phase("task", "pinned"),
        ],
    }
    definition = definition_from_document(document)
    body = definition_body(definition)
    common = {"max_retries": 0, "status_group": None, "display_name": "", "description": ""}
    assert body == {
        "name": "parent",
        "display_name": "",
        "description": "",
        "phases": [
            {
                "name": "latest",
                "depends_on": [],
                "weight": 50,
                **common,
                "kind": "child_flow",
                "child_flow": {"definition": "kid", "on_parent_cancel": "cascade"},
            },
            {
                "name": "pinned",
                "depends_on": ["latest"],
                "weight": 50,
                **common,
                "kind": "child_flow",
                "child_flow": {"definition": "kid", "version": 2, "on_parent_cancel": "abandon"},
            },
            {"name": "task", "depends_on": ["pinned"], "weight": 0, **common},
        ],
    }
    assert definition_from_document(body) == definition
