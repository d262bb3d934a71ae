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
    Stuck,
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
    ("STUCK", STUCK),
    ('labels.team = "a\\"b"', cmp("labels", "team", "=", 'a"b')),
    ("labels.team = 'it\\'s'", cmp("labels", "team", "=", "it's")),
    ('labels.team = "a\\\\"', cmp("labels", "team", "=", "a\\")),
    ("Labels.Team=x", cmp("labels", "Team", "=", "x")),
    ("PHASE.pick=PHASE_STATE_FAILED", cmp("phase", "pick", "=", PhaseState.FAILED)),
    ("Definition!=a.b:c+d-e", cmp("definition", None, "!=", "a.b:c+d-e")),
    ("error IN (error_code_agent_timeout)", cmp("error", None, "IN", ErrorCode.AGENT_TIMEOUT)),
    ("updated=-45s", cmp("updated", None, "=", NOW - timedelta(seconds=45))),
    ("created != -2h", cmp("created", None, "!=", NOW - timedelta(hours=2))),
    ("updated>=-0d", cmp("updated", None, ">=", NOW)),
    (
        "NOT status = FAILED AND stuck",
        And((Not(cmp("status", None, "=", FlowStatus.FAILED)), STUCK)),
    ),
    (
        "stuck OR (stuck AND stuck) OR NOT NOT stuck",
        Or((STUCK, And((STUCK, STUCK)), Not(Not(STUCK)))),
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t or "<empty>" for t, _ in VALID])
def test_valid_filters_parse_to_their_tree(text: str, expected: object) -> None:
    assert parse(text) == expected


def one_of(enum: type[FlowStatus] | type[PhaseState] | type[ErrorCode]) -> str:
    return "is not one of " + ", ".join(member.name for member in enum)


FIELDS = "fields: status, definition, error, created, updated, phase.<name>, labels.<key>, stuck"
TIMESTAMP = (
    "is not an RFC 3339 timestamp with an offset (2026-12-01T10:00:00Z)"
    " or a duration before now (-1h, -30m, -2d)"
)
MIXED = "put parentheses around one side (AND and OR never mix without them)"

INVALID = [
    # (text, position, the message without "filter: " and " (at position N)", `expected`)
    (
        "status",
        6,
        "expected an operator (= != < <= > >= IN) after 'status', found the end of the filter",
        None,
    ),
    ("status =", 8, "expected a value, found the end of the filter", None),
    ("status = NOPE", 9, f"'NOPE' {one_of(FlowStatus)}", None),
    (
        "status < FAILED",
        7,
        "< applies to created and updated only; use = != or IN for status",
        None,
    ),
    (
        "labels.team >= x",
        12,
        ">= applies to created and updated only; use = != or IN for labels",
        None,
    ),
    ("status (", 7, "expected an operator (= != < <= > >= IN) after 'status', found '('", None),
    ("status ) x", 7, "expected an operator (= != < <= > >= IN) after 'status', found ')'", None),
    ("status , x", 7, "expected an operator (= != < <= > >= IN) after 'status', found ','", None),
    (
        "status FAILED",
        7,
        "expected an operator (= != < <= > >= IN) after 'status', found 'FAILED'",
        None,
    ),
    ("colour = red", 0, f"unknown field 'colour' ({FIELDS})", None),
    ("status.x = FAILED", 0, f"unknown field 'status.x' ({FIELDS})", None),
    ("labels = x", 0, "labels needs a key: labels.<name>", None),
    ("phase = x", 0, "phase needs a key: phase.<name>", None),
    ("phase. = FAILED", 7, "expected a key after 'phase.'", None),
    ('labels."" = x', 7, "expected a key after 'labels.'", None),
    ('phase."9lives" = FAILED', 0, "'9lives' is not a phase name", None),
    ("phase.data_import = DONE", 20, f"'DONE' {one_of(PhaseState)}", None),
    ('labels.team = "core', 14, "unterminated string", None),
    ("labels.team = 'core\\'", 14, "unterminated string", None),
    ("status = FAILED AND", 19, "expected a field name, found the end of the filter", None),
    ("status = FAILED AND OR stuck", 20, "expected a field name, found 'OR'", None),
    ("IN = x", 0, "expected a field name, found 'IN'", None),
    ("status = FAILED AND stuck OR stuck", 26, f"OR after AND: {MIXED}", None),
    ("stuck OR stuck AND stuck", 15, f"AND after OR: {MIXED}", None),
    ("(stuck", 6, "expected ')', found the end of the filter", ")"),
    ("stuck)", 5, "expected AND, OR or the end, found ')'", None),
    ("stuck stuck", 6, "expected AND, OR or the end, found 'stuck'", None),
    ("status IN FAILED", 10, "expected '(', found 'FAILED'", "("),
    ("status IN (FAILED,)", 18, "expected a value, found ')'", None),
    ("status IN (FAILED PAUSED)", 18, "expected ')', found 'PAUSED'", ")"),
    # An operator where another is expected: refused, not taken for the expected one.
    ("status IN = (FAILED)", 10, "expected '(', found '='", "("),
    ("status IN (FAILED = PAUSED)", 18, "expected ')', found '='", ")"),
    ("(stuck,", 6, "expected ')', found ','", ")"),
    ("updated > yesterday", 10, f"'yesterday' {TIMESTAMP}", None),
    ("updated > 2026-12-01T10:00:00", 10, f"'2026-12-01T10:00:00' {TIMESTAMP}", None),
    ("updated > -1w", 10, f"'-1w' {TIMESTAMP}", None),
    ("updated > -1234567890s", 10, f"'-1234567890s' {TIMESTAMP}", None),
    ("updated > 1h", 10, f"'1h' {TIMESTAMP}", None),
    ("status = FAILED; DROP TABLE flows", 15, "unexpected character ';'", None),
    ("error = OOPS", 8, f"'OOPS' {one_of(ErrorCode)}", None),
    ("= FAILED", 0, "expected a field name, found '='", None),
]


@pytest.mark.parametrize(
    ("text", "position", "message", "expected"), INVALID, ids=[t for t, *_ in INVALID]
)
def test_invalid_filters_are_refused_with_the_position(
    text: str, position: int, message: str, expected: str | None
) -> None:
    with pytest.raises(FilterError) as caught:
        parse(text)
    error = caught.value
    assert error.code is ErrorCode.MALFORMED_REQUEST
    assert error.message == f"filter: {message} (at position {position})"
    details = {"field": "filter", "position": position}
    assert error.details == (details if expected is None else {**details, "expected": expected})
    assert error.position == position


LIMITS = [
    # (text, max_depth, max_terms, position, message, limit)
    ("(((stuck)))", 2, 64, 3, "nested deeper than 2 levels", 2),
    ("NOT NOT NOT stuck", 2, 64, 12, "nested deeper than 2 levels", 2),
    ("stuck AND stuck AND stuck", 16, 2, 20, "more than 2 comparisons", 2),
    ("status = FAILED OR stuck OR labels.a = b", 16, 2, 28, "more than 2 comparisons", 2),
]


@pytest.mark.parametrize(
    ("text", "max_depth", "max_terms", "position", "message", "limit"),
    LIMITS,
    ids=[t for t, *_ in LIMITS],
)
def test_limits_on_depth_and_terms(
    text: str, max_depth: int, max_terms: int, position: int, message: str, limit: int
) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(
            text, now=NOW, stuck_before=STUCK_BEFORE, max_depth=max_depth, max_terms=max_terms
        )
    assert caught.value.message == f"filter: {message} (at position {position})"
    assert caught.value.details == {"field": "filter", "position": position, "limit": limit}


def test_a_filter_of_nots_is_refused_at_the_depth_limit_not_by_recursion() -> None:
    """Each NOT is a level, as a parenthesis is: 1000 of them fit in the 4096 characters a
    request may send and once recursed past Python's limit (an INTERNAL error)."""
    with pytest.raises(FilterError) as caught:
        parse("NOT " * 1000 + "stuck")
    assert caught.value.message == "filter: nested deeper than 16 levels (at position 68)"


def test_the_limits_are_inclusive_and_default_to_16_levels_and_64_comparisons() -> None:
    at_limits = [("(" * 2 + "stuck" + ")" * 2, 2, 64), ("stuck AND stuck", 16, 2)]
    for text, max_depth, max_terms in at_limits:
        parse_filter(
            text, now=NOW, stuck_before=STUCK_BEFORE, max_depth=max_depth, max_terms=max_terms
        )
    assert parse("(" * 16 + "stuck" + ")" * 16) == STUCK
    with pytest.raises(FilterError, match="nested deeper than 16 levels"):
        parse("(" * 17 + "stuck" + ")" * 17)
    assert parse("NOT " * 16 + "stuck") is not None
    assert parse(" AND ".join(["stuck"] * 64)) == And((STUCK,) * 64)
    with pytest.raises(FilterError, match="more than 64 comparisons"):
        parse(" AND ".join(["stuck"] * 65))


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
    ("status = FAILED AND labels.team = core AND definition = discovery", True),
    ("status = PAUSED OR labels.team = other", False),
    ("NOT status = PAUSED", True),
    ("labels.team IN (a, core)", True),
    ("labels.team IN (a, b)", False),
    ("labels.team != core", False),
    ("phase.data_import != FAILED", False),
    ("error IN (AGENT_TIMEOUT, EXTERNAL_SERVICE_ERROR)", True),
    ("error IN (AGENT_TIMEOUT, INTERNAL)", False),
    ("error != EXTERNAL_SERVICE_ERROR", False),
    ('created = "2026-11-29T12:00:00Z"', True),
    ('created != "2026-11-29T12:00:00Z"', False),
    ('created <= "2026-11-29T12:00:00Z"', True),
    ('created >= "2026-11-29T12:00:00Z"', True),
    ('created < "2026-11-29T12:00:00Z"', False),
    ('created > "2026-11-29T12:00:00Z"', False),
    ('updated = "2026-12-02T10:00:00Z"', True),
    ('updated > "2026-12-02T09:59:59Z"', True),
    ('updated < "2026-12-02T10:00:01Z"', True),
    ('updated >= "2026-12-02T10:00:01Z"', False),
    ('updated <= "2026-12-02T09:59:59Z"', False),
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


STUCK_TIMELESS = "stuck is not available here: it depends on the time of evaluation"


def relative_timeless(text: str) -> str:
    return (
        f"{text!r}: a time before now is not available here (it depends on the time of "
        "evaluation); give an RFC 3339 timestamp"
    )


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("stuck", 0, STUCK_TIMELESS),
        ("NOT stuck", 4, STUCK_TIMELESS),
        ("updated > -1h", 10, relative_timeless("-1h")),
        ("created <= -2d", 11, relative_timeless("-2d")),
    ],
)
def test_a_timeless_filter_refuses_what_depends_on_the_time_of_evaluation(
    text: str, position: int, message: str
) -> None:
    parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE)  # fine where it is resolved once
    with pytest.raises(FilterError) as refused:
        parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE, timeless=True, field="webhook")
    assert refused.value.message == f"webhook: {message} (at position {position})"
    assert refused.value.details == {"field": "webhook", "position": position}


def test_a_timeless_filter_takes_absolute_times() -> None:
    parsed = parse_filter(
        "updated > 2026-12-01T00:00:00Z", now=NOW, stuck_before=STUCK_BEFORE, timeless=True
    )
    assert parsed == Comparison("updated", None, ">", (datetime(2026, 12, 1, tzinfo=UTC),))


def test_the_stuck_rule_has_an_instant_per_live_status_in_the_enums_order() -> None:
    live = [s for s in FlowStatus if s not in (FlowStatus.COMPLETED, FlowStatus.CANCELLED)]
    assert stuck_rule(STUCK_BEFORE) == Stuck(tuple((s, STUCK_BEFORE) for s in live))
    earlier = NOW - timedelta(days=1)
    rule = stuck_rule(
        {FlowStatus.PAUSED: earlier, FlowStatus.COMPLETED: NOW, FlowStatus.ACTIVE: STUCK_BEFORE}
    )
    assert rule == Stuck(((FlowStatus.ACTIVE, STUCK_BEFORE), (FlowStatus.PAUSED, earlier)))


def test_stuck_is_strictly_before_the_instant() -> None:
    at_the_instant = FlowFacts(
        **{**{f: getattr(FACTS, f) for f in FACTS.__slots__}, "updated_at": STUCK_BEFORE}
    )
    assert not matches(STUCK, at_the_instant)
    just_before = FlowFacts(
        **{
            **{f: getattr(FACTS, f) for f in FACTS.__slots__},
            "updated_at": STUCK_BEFORE - timedelta(microseconds=1),
        }
    )
    assert matches(STUCK, just_before)
