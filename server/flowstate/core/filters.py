"""The flow filter language: a documented subset of AIP-160, parsed into a value.

`parse_filter` turns the text of ``ListFlows.filter`` / ``WatchFlows.filter`` /
``CountFlows.filter`` / a bulk action's filter into a `Filter` (an immutable tree); storage
compiles that tree to SQL with bound parameters (`flowstate.storage.filters`), and `matches`
evaluates it on one flow's facts (the WatchFlows stream). Grammar (keywords upper case,
case-sensitive as in AIP-160; field names and enum values case-insensitive)::

    filter     := expr?                      (empty: every flow)
    expr       := unary (AND unary)*  |  unary (OR unary)*
                                             (AND and OR never mix without parentheses)
    unary      := NOT unary | "(" expr ")" | "stuck" | comparison
    comparison := field op value | field IN "(" value ("," value)* ")"
    op         := "=" | "!=" | "<" | "<=" | ">" | ">="
    field      := status | definition | error | created | updated
                | phase.<name> | labels.<key>      (<key> may be a quoted string)
    value      := "double" | 'single' quoted string | bare word (letters, digits, _ - . : +)

Fields: ``status`` (a FlowStatus, ``failed`` or ``FAILED``), ``definition`` (a definition
name), ``phase.<name>`` (that phase's PhaseState), ``labels.<key>`` (a label's value; ``!=``
also matches flows without the label), ``error`` (the code of an open phase error, e.g.
``EXTERNAL_SERVICE_ERROR``: matches when any phase carries it), ``created`` / ``updated`` (an
RFC 3339 timestamp, or a duration before now: ``-1h``, ``-30m``, ``-2d``, ``-45s``), and
``stuck``: the server's stuck rule (not terminal and unchanged for ``FLOWSTATE_STUCK_AFTER``;
the caller of `parse_filter` passes the instant, so the rule lives where the server keeps it).
Ordering operators apply to ``created``/``updated`` only; ``IN`` and ``=``/``!=`` to the rest.

Why AND/OR never mix without parentheses: AIP-160 gives OR the higher precedence
(``a AND b OR c`` is ``a AND (b OR c)``), SQL and most readers the opposite; refusing the
ambiguous form costs a pair of parentheses and no one reads the filter wrong.

Why a hand-written recursive-descent parser rather than a grammar library (lark, pyparsing):
the language is a dozen productions, the core takes only the standard library, and the error
positions come out exactly where this code knows what it expected. Every refusal is a
`FilterError` (MALFORMED_REQUEST, ``field`` = the request field, ``position`` = the 0-based
character offset in the filter text, ``expected`` where one thing was).

Relative times and ``stuck`` are resolved against the `now` / `stuck_before` given to
`parse_filter`: a long WatchFlows stream keeps the instants of its request. A webhook's filter
is stored and evaluated on every change for as long as the webhook lives, so it refuses both
(``timeless=True``): an instant of its creation would mean less every day.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeAlias

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, PhaseState
from flowstate.core.rules import TERMINAL_STATUSES

__all__ = [
    "And",
    "Comparison",
    "Filter",
    "FilterError",
    "FlowFacts",
    "Not",
    "Or",
    "Stuck",
    "matches",
    "parse_filter",
    "stuck_rule",
]

ORDERING_OPERATORS = frozenset({"<", "<=", ">", ">="})
EQUALITY_OPERATORS = frozenset({"=", "!=", "IN"})
_TIME_FIELDS = frozenset({"created", "updated"})
_PLAIN_FIELDS = frozenset({"status", "definition", "error", "created", "updated"})
_KEYED_FIELDS = frozenset({"phase", "labels"})
_DURATION = re.compile(r"-(\d{1,9})([smhd])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_BARE = re.compile(r"[A-Za-z0-9_.:+\-]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN"})
_TOKEN_OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "(", ")", ",")


class FilterError(FlowStateError):
    """A filter that does not parse or names something unknown; carries the position."""

    def __init__(self, field: str, position: int, message: str, **details: Any) -> None:
        """MALFORMED_REQUEST for `field` at `position` (0-based offset in the filter text)."""
        super().__init__(
            ErrorCode.MALFORMED_REQUEST,
            f"{field}: {message} (at position {position})",
            field=field,
            position=position,
            **details,
        )
        self.position = position


@dataclass(frozen=True, slots=True)
class Comparison:
    """`field` (with `key` for ``phase.<key>`` / ``labels.<key>``) `op` one of `values`.

    `op` is one of ``= != < <= > >= IN``; `values` are typed: FlowStatus for ``status``,
    PhaseState for ``phase``, ErrorCode for ``error``, aware datetimes for the times, str
    otherwise. ``IN`` has one or more values, every other operator exactly one.
    """

    field: str
    key: str | None
    op: str
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class And:
    """Every part holds."""

    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one part holds."""

    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The part does not hold."""

    part: Filter


@dataclass(frozen=True, slots=True)
class Stuck:
    """The server's stuck rule: a flow in one of the statuses of `before` whose last change is
    strictly before that status's instant (statuses absent, the terminal ones among them, are
    never stuck). One instant per status: the per-status thresholds of the alerts."""

    before: tuple[tuple[FlowStatus, datetime], ...]


Filter: TypeAlias = Comparison | And | Or | Not | Stuck


@dataclass(frozen=True, slots=True)
class FlowFacts:
    """What `matches` reads of a flow (a snapshot, or a flow as a change left it)."""

    status: FlowStatus
    definition_name: str
    phase_states: Mapping[str, PhaseState]
    labels: Mapping[str, str]
    error_codes: frozenset[str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word", "string", "op", "end"
    text: str
    position: int


def _tokens(text: str, field: str) -> Iterator[_Token]:
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char in "\"'":
            end = i + 1
            chars: list[str] = []
            while end < len(text) and text[end] != char:
                if text[end] == "\\" and end + 1 < len(text):
                    end += 1
                chars.append(text[end])
                end += 1
            if end >= len(text):
                raise FilterError(field, i, "unterminated string")
            yield _Token("string", "".join(chars), i)
            i = end + 1
            continue
        operator = next((op for op in _TOKEN_OPERATORS if text.startswith(op, i)), None)
        if operator is not None:
            yield _Token("op", operator, i)
            i += len(operator)
            continue
        bare = _BARE.match(text, i)
        if bare is None:
            raise FilterError(field, i, f"unexpected character {char!r}")
        yield _Token("word", bare.group(), i)
        i = bare.end()
    yield _Token("end", "", len(text))


class _Parser:
    def __init__(
        self,
        text: str,
        field: str,
        now: datetime,
        stuck_before: datetime | Mapping[FlowStatus, datetime],
        max_depth: int,
        max_terms: int,
        timeless: bool,
    ) -> None:
        self.tokens = list(_tokens(text, field))
        self.timeless = timeless
        self.index = 0
        self.field = field
        self.now = now
        self.stuck = stuck_rule(stuck_before)
        self.max_depth = max_depth
        self.max_terms = max_terms
        self.terms = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def fail(self, message: str, token: _Token | None = None, **details: Any) -> FilterError:
        at = token or self.token
        return FilterError(self.field, at.position, message, **details)

    def expect_op(self, op: str) -> _Token:
        token = self.token
        if token.kind != "op" or token.text != op:
            raise self.fail(f"expected {op!r}, found {_describe(token)}", expected=op)
        self.index += 1
        return token

    def is_keyword(self, word: str) -> bool:
        return self.token.kind == "word" and self.token.text == word

    def parse(self) -> Filter | None:
        if self.token.kind == "end":
            return None
        result = self.expr(0)
        if self.token.kind != "end":
            raise self.fail(f"expected AND, OR or the end, found {_describe(self.token)}")
        return result

    def expr(self, depth: int) -> Filter:
        first = self.unary(depth)
        parts = [first]
        joiner: str | None = None
        while self.is_keyword("AND") or self.is_keyword("OR"):
            word = self.token
            if joiner is not None and word.text != joiner:
                raise self.fail(
                    f"{word.text} after {joiner}: put parentheses around one side "
                    "(AND and OR never mix without them)",
                    word,
                )
            joiner = word.text
            self.index += 1
            parts.append(self.unary(depth))
        if joiner is None:
            return first
        return And(tuple(parts)) if joiner == "AND" else Or(tuple(parts))

    def unary(self, depth: int) -> Filter:
        # Checked here, not in expr: a NOT nests as deep as a parenthesis does (a filter of
        # nothing but NOTs would otherwise recurse until Python's own limit).
        if depth > self.max_depth:
            raise self.fail(f"nested deeper than {self.max_depth} levels", limit=self.max_depth)
        token = self.token
        if self.is_keyword("NOT"):
            self.index += 1
            return Not(self.unary(depth + 1))
        if token.kind == "op" and token.text == "(":
            self.index += 1
            inner = self.expr(depth + 1)
            self.expect_op(")")
            return inner
        if token.kind == "word" and token.text.lower() == "stuck":
            if self.timeless:
                raise self.fail(
                    "stuck is not available here: it depends on the time of evaluation", token
                )
            self.index += 1
            self.count_term(token)
            return self.stuck
        return self.comparison()

    def count_term(self, token: _Token) -> None:
        self.terms += 1
        if self.terms > self.max_terms:
            raise self.fail(f"more than {self.max_terms} comparisons", token, limit=self.max_terms)

    def comparison(self) -> Comparison:
        start = self.token
        name, key = self.field_name()
        self.count_term(start)
        op_token = self.token
        if self.is_keyword("IN"):
            self.index += 1
            self.expect_op("(")
            values = [self.value(name, key)]
            while self.token.kind == "op" and self.token.text == ",":
                self.index += 1
                values.append(self.value(name, key))
            self.expect_op(")")
            return Comparison(name, key, "IN", tuple(values))
        if op_token.kind != "op" or op_token.text in {"(", ")", ","}:
            raise self.fail(
                f"expected an operator (= != < <= > >= IN) after {start.text!r}, "
                f"found {_describe(op_token)}"
            )
        op = op_token.text
        if op in ORDERING_OPERATORS and name not in _TIME_FIELDS:
            raise self.fail(
                f"{op} applies to created and updated only; use = != or IN for {name}", op_token
            )
        self.index += 1
        return Comparison(name, key, op, (self.value(name, key),))

    def field_name(self) -> tuple[str, str | None]:
        token = self.token
        if token.kind != "word" or token.text in _KEYWORDS:
            raise self.fail(f"expected a field name, found {_describe(token)}")
        text = token.text
        head, dot, rest = text.partition(".")
        name = head.lower()
        self.index += 1
        if name in _KEYED_FIELDS:
            if not dot:
                raise self.fail(f"{name} needs a key: {name}.<name>", token)
            if rest:
                key = rest
            else:  # labels."app.kubernetes.io/name": the key as a quoted string
                quoted = self.token
                if quoted.kind != "string" or not quoted.text:
                    raise self.fail(f"expected a key after '{name}.'", quoted)
                self.index += 1
                key = quoted.text
            if name == "phase" and not _IDENT.fullmatch(key):
                raise self.fail(f"{key!r} is not a phase name", token)
            return name, key
        if name not in _PLAIN_FIELDS or dot:
            known = "status, definition, error, created, updated, phase.<name>, labels.<key>"
            raise self.fail(f"unknown field {text!r} (fields: {known}, stuck)", token)
        return name, None

    def value(self, name: str, key: str | None) -> Any:
        token = self.token
        if token.kind not in {"word", "string"}:
            raise self.fail(f"expected a value, found {_describe(token)}")
        self.index += 1
        text = token.text
        if name == "status":
            return self.enum_value(FlowStatus, text, token, "FLOW_STATUS_")
        if name == "phase":
            return self.enum_value(PhaseState, text, token, "PHASE_STATE_")
        if name == "error":
            return self.enum_value(ErrorCode, text, token, "ERROR_CODE_")
        if name in _TIME_FIELDS:
            return self.time_value(text, token)
        return text

    def enum_value(self, enum: type[StrEnum], text: str, token: _Token, prefix: str) -> Any:
        wanted = text.upper().removeprefix(prefix)
        for member in enum:
            if member.name == wanted:
                return member
        names = ", ".join(m.name for m in enum)
        raise self.fail(f"{text!r} is not one of {names}", token)

    def time_value(self, text: str, token: _Token) -> datetime:
        duration = _DURATION.fullmatch(text)
        if duration is not None and self.timeless:
            raise self.fail(
                f"{text!r}: a time before now is not available here (it depends on the time of "
                "evaluation); give an RFC 3339 timestamp",
                token,
            )
        if duration is not None:
            amount, unit = int(duration.group(1)), _DURATION_UNITS[duration.group(2)]
            return self.now - timedelta(**{unit: amount})
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is None or moment.utcoffset() is None:
            raise self.fail(
                f"{text!r} is not an RFC 3339 timestamp with an offset "
                "(2026-12-01T10:00:00Z) or a duration before now (-1h, -30m, -2d)",
                token,
            )
        return moment


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the filter"
    return repr(token.text)


def stuck_rule(before: datetime | Mapping[FlowStatus, datetime]) -> Stuck:
    """The stuck rule of one instant for every live status, or of one instant per status."""
    if isinstance(before, datetime):
        return Stuck(tuple((s, before) for s in FlowStatus if s not in TERMINAL_STATUSES))
    return Stuck(
        tuple((s, before[s]) for s in FlowStatus if s in before and s not in TERMINAL_STATUSES)
    )


def parse_filter(
    text: str,
    *,
    now: datetime,
    stuck_before: datetime | Mapping[FlowStatus, datetime],
    field: str = "filter",
    max_depth: int = 16,
    max_terms: int = 64,
    timeless: bool = False,
) -> Filter | None:
    """The filter `text` as a tree (None when it is empty or blank); FilterError otherwise.

    `now` resolves relative times (``updated > -1h``); `stuck_before` is the instant before
    which a live flow's last change makes it stuck, or that instant per status (a status
    absent is never stuck). `field` names the request field in errors. `timeless` refuses
    ``stuck`` and relative times (a filter kept and evaluated long after it was written).
    """
    return _Parser(text, field, now, stuck_before, max_depth, max_terms, timeless).parse()


def matches(condition: Filter | None, facts: FlowFacts) -> bool:
    """Whether a flow with `facts` passes `condition` (None passes everything).

    The same meaning as the SQL of `flowstate.storage.filters`, which the storage tests check
    on the same flows.
    """
    if condition is None:
        return True
    if isinstance(condition, And):
        return all(matches(part, facts) for part in condition.parts)
    if isinstance(condition, Or):
        return any(matches(part, facts) for part in condition.parts)
    if isinstance(condition, Not):
        return not matches(condition.part, facts)
    if isinstance(condition, Stuck):
        bound = dict(condition.before).get(facts.status)
        return bound is not None and facts.updated_at < bound
    return _compare(condition, facts)


def _compare(comparison: Comparison, facts: FlowFacts) -> bool:
    field, key, op, values = comparison.field, comparison.key, comparison.op, comparison.values
    if field in _TIME_FIELDS:
        actual = facts.created_at if field == "created" else facts.updated_at
        bound = values[0]
        result: bool = {
            "=": actual == bound,
            "!=": actual != bound,
            "<": actual < bound,
            "<=": actual <= bound,
            ">": actual > bound,
            ">=": actual >= bound,
        }[op]
        return result
    if field == "error":
        hit = any(value.value in facts.error_codes for value in values)
    else:
        current: object
        if field == "status":
            current = facts.status
        elif field == "definition":
            current = facts.definition_name
        elif field == "phase":
            assert key is not None
            current = facts.phase_states.get(key)
        else:
            assert key is not None
            current = facts.labels.get(key)
        hit = current in values
    return not hit if op == "!=" else hit
