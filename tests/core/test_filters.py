"""The filter language: what parses to what, what is refused and where, and `matches`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flowstate.core.filters import (
    And,
    Comparison,
    FilterError,
    FlowFacts,
    Not,
    Or,
    matches,
    parse_filter,
    stuck_rule,
)
from flowstate.core.model import ErrorCode, FlowStatus, PhaseState

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
STUCK_BEFORE = NOW - timedelta(hours=1)
STUCK = stuck_rule(STUCK_BEFORE)


def parse(text: str) -> object:
    return parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE)


def cmp(field: str, key: str | None, op: str, *values: object) -> Comparison:
    return Comparison(field, key, op, tuple(values))


VALID = [
    ("", None),
    ("   ", None),
    ("status = FAILED", cmp("status", None, "=", FlowStatus.FAILED)),
    ("status=failed", cmp("status", None, "=", FlowStatus.FAILED)),
    ("STATUS = FLOW_STATUS_FAILED", cmp("status", None, "=", FlowStatus.FAILED)),
    ("status != completed", cmp("status", None, "!=", FlowStatus.COMPLETED)),
    (
        "status IN (FAILED, retry_pending)",
        cmp("status", None, "IN", FlowStatus.FAILED, FlowStatus.RETRY_PENDING),
    ),
    ('definition = "order_fulfilment"', cmp("definition", None, "=", "order_fulfilment")),
    ("definition = discovery", cmp("definition", None, "=", "discovery")),
    ("phase.data_import = FAILED", cmp("phase", "data_import", "=", PhaseState.FAILED)),
    (
        "phase.pick IN (in_progress, PHASE_STATE_COMPLETED)",
        cmp("phase", "pick", "IN", PhaseState.IN_PROGRESS, PhaseState.COMPLETED),
    ),
    ('labels.team = "core"', cmp("labels", "team", "=", "core")),
    ("labels.team = 'core team'", cmp("labels", "team", "=", "core team")),
    ('labels."app.io/name" = web', cmp("labels", "app.io/name", "=", "web")),
    ('labels.team IN ("a", "b")', cmp("labels", "team", "IN", "a", "b")),
    ('labels.team != ""', cmp("labels", "team", "!=", "")),
    (
        "error = EXTERNAL_SERVICE_ERROR",
        cmp("error", None, "=", ErrorCode.EXTERNAL_SERVICE_ERROR),
    ),
    ("updated > -1h", cmp("updated", None, ">", NOW - timedelta(hours=1))),
    ("created <= -2d", cmp("created", None, "<=", NOW - timedelta(days=2))),
    ("updated >= -30m", cmp("updated", None, ">=", NOW - timedelta(minutes=30))),
    (
        'created < "2026-12-01T10:00:00Z"',
        cmp("created", None, "<", datetime(2026, 12, 1, 10, tzinfo=UTC)),
    ),
    (
        "created = 2026-12-01T10:00:00+01:00",
        cmp("created", None, "=", datetime(2026, 12, 1, 9, tzinfo=UTC)),
    ),
    ("stuck", STUCK),
    ("NOT stuck", Not(STUCK)),
    (
        "status = FAILED AND labels.team = x AND stuck",
        And(
            (
                cmp("status", None, "=", FlowStatus.FAILED),
                cmp("labels", "team", "=", "x"),
                STUCK,
            )
        ),
    ),
    (
        "status = FAILED OR status = PAUSED",
        Or(
            (
                cmp("status", None, "=", FlowStatus.FAILED),
                cmp("status", None, "=", FlowStatus.PAUSED),
            )
        ),
    ),
    (
        "(status = FAILED OR stuck) AND NOT (labels.env = prod)",
        And(
            (
                Or((cmp("status", None, "=", FlowStatus.FAILED), STUCK)),
                Not(cmp("labels", "env", "=", "prod")),
            )
        ),
    ),
    ("((stuck))", STUCK),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t or "<empty>" for t, _ in VALID])
def test_valid_filters_parse_to_their_tree(text: str, expected: object) -> None:
    assert parse(text) == expected


INVALID = [
    # (text, position, words of the message)
    ("status", 6, "expected an operator"),
    ("status =", 8, "expected a value"),
    ("status = NOPE", 9, "'NOPE' is not one of"),
    ("status < FAILED", 7, "applies to created and updated only"),
    ("colour = red", 0, "unknown field 'colour'"),
    ("status.x = FAILED", 0, "unknown field"),
    ("labels = x", 0, "labels needs a key"),
    ("phase. = FAILED", 7, "expected a key"),
    ("phase.data_import = DONE", 20, "is not one of"),
    ('labels.team = "core', 14, "unterminated string"),
    ("status = FAILED AND", 19, "expected a field name"),
    ("status = FAILED AND OR stuck", 20, "expected a field name"),
    ("status = FAILED AND stuck OR stuck", 26, "OR after AND"),
    ("stuck OR stuck AND stuck", 15, "AND after OR"),
    ("(stuck", 6, "expected ')'"),
    ("stuck)", 5, "expected AND, OR or the end"),
    ("stuck stuck", 6, "expected AND, OR or the end"),
    ("status IN FAILED", 10, "expected '('"),
    ("status IN (FAILED,)", 18, "expected a value"),
    ("status IN (FAILED PAUSED)", 18, "expected ')'"),
    ("updated > yesterday", 10, "is not an RFC 3339 timestamp"),
    ("updated > 2026-12-01T10:00:00", 10, "with an offset"),
    ("updated > -1w", 10, "is not an RFC 3339 timestamp"),
    ("status = FAILED; DROP TABLE flows", 15, "unexpected character ';'"),
    ("error = OOPS", 8, "is not one of"),
    ("= FAILED", 0, "expected a field name"),
]


@pytest.mark.parametrize(("text", "position", "words"), INVALID, ids=[t for t, _, _ in INVALID])
def test_invalid_filters_are_refused_with_the_position(
    text: str, position: int, words: str
) -> None:
    with pytest.raises(FilterError) as caught:
        parse(text)
    error = caught.value
    assert error.code is ErrorCode.MALFORMED_REQUEST
    assert error.details["field"] == "filter"
    assert error.details["position"] == position
    assert words in error.message
    assert f"at position {position}" in error.message


def test_limits_on_depth_and_terms() -> None:
    with pytest.raises(FilterError, match="nested deeper than 2"):
        parse_filter("(((stuck)))", now=NOW, stuck_before=STUCK_BEFORE, max_depth=2)
    with pytest.raises(FilterError, match="more than 2 comparisons") as caught:
        parse_filter("stuck AND stuck AND stuck", now=NOW, stuck_before=STUCK_BEFORE, max_terms=2)
    assert caught.value.details["position"] == 20


def test_field_name_in_errors_is_the_callers() -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter("nope", now=NOW, stuck_before=STUCK_BEFORE, field="bulk.filter")
    assert caught.value.details["field"] == "bulk.filter"


FACTS = FlowFacts(
    status=FlowStatus.FAILED,
    definition_name="discovery",
    phase_states={"data_import": PhaseState.FAILED, "field_mapping": PhaseState.NOT_STARTED},
    labels={"team": "core"},
    error_codes=frozenset({"EXTERNAL_SERVICE_ERROR"}),
    created_at=NOW - timedelta(days=3),
    updated_at=NOW - timedelta(hours=2),
)

MATCHING = [
    ("", True),
    ("status = FAILED", True),
    ("status != FAILED", False),
    ("status IN (PAUSED, FAILED)", True),
    ("definition = discovery", True),
    ("definition != discovery", False),
    ("phase.data_import = FAILED", True),
    ("phase.field_mapping IN (COMPLETED, IN_PROGRESS)", False),
    ("phase.pick = FAILED", False),
    ("phase.pick != FAILED", True),
    ("labels.team = core", True),
    ("labels.team = other", False),
    ("labels.env != prod", True),
    ("error = EXTERNAL_SERVICE_ERROR", True),
    ("error = AGENT_TIMEOUT", False),
    ("error != AGENT_TIMEOUT", True),
    ("updated > -1h", False),
    ("updated < -1h", True),
    ("created < -2d AND created > -4d", True),
    ("stuck", True),
    ("NOT stuck", False),
    ("status = PAUSED OR labels.team = core", True),
    ("status = PAUSED AND labels.team = core", False),
]


@pytest.mark.parametrize(("text", "expected"), MATCHING, ids=[t or "<empty>" for t, _ in MATCHING])
def test_matches(text: str, expected: bool) -> None:
    assert matches(parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE), FACTS) is expected


def test_a_terminal_flow_is_never_stuck() -> None:
    done = FlowFacts(
        **{**{f: getattr(FACTS, f) for f in FACTS.__slots__}, "status": FlowStatus.COMPLETED}
    )
    assert not matches(STUCK, done)


def test_stuck_follows_per_status_thresholds() -> None:
    """With a threshold per status (the STUCK alerts' rule), a status without one is never
    stuck and each status has its own instant."""
    rule = parse_filter(
        "stuck",
        now=NOW,
        stuck_before={
            FlowStatus.FAILED: NOW - timedelta(hours=3),
            FlowStatus.PAUSED: NOW - timedelta(minutes=1),
        },
    )
    assert not matches(rule, FACTS)  # FAILED, unchanged for 2 h < 3 h
    paused = FlowFacts(
        **{**{f: getattr(FACTS, f) for f in FACTS.__slots__}, "status": FlowStatus.PAUSED}
    )
    assert matches(rule, paused)
    active = FlowFacts(
        **{**{f: getattr(FACTS, f) for f in FACTS.__slots__}, "status": FlowStatus.ACTIVE}
    )
    assert not matches(rule, active)  # no threshold: never stuck


@pytest.mark.parametrize(
    ("text", "position"),
    [("stuck", 0), ("NOT stuck", 4), ("updated > -1h", 10), ("created <= -2d", 11)],
)
def test_a_timeless_filter_refuses_what_depends_on_the_time_of_evaluation(
    text: str, position: int
) -> None:
    parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE)  # fine where it is resolved once
    with pytest.raises(FilterError) as refused:
        parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE, timeless=True)
    assert refused.value.position == position
    assert "time of evaluation" in refused.value.message


def test_a_timeless_filter_takes_absolute_times() -> None:
    parsed = parse_filter(
        "updated > 2026-12-01T00:00:00Z", now=NOW, stuck_before=STUCK_BEFORE, timeless=True
    )
    assert parsed == Comparison("updated", None, ">", (datetime(2026, 12, 1, tzinfo=UTC),))
