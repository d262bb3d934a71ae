"""A parsed flow filter (`flowstate.core.filters`) as a SQL condition on ``flows``.

Every value of the filter goes in as a bound parameter (SQLAlchemy ``literal``, compiled to
asyncpg's ``$n``); no value is ever spliced into the SQL text. What each field compiles to, and
the index that serves it:

- ``status``: ``status = ANY($n)`` (``ix_flows_tenant_status``);
- ``definition``: ``definition_name = ANY($n)``;
- ``phase.<p>``: ``phase_states @> {"p": "state"}`` per state (GIN ``ix_flows_phase_states``);
- ``labels.<k>``: ``labels @> {"k": "v"}`` per value (GIN ``ix_flows_labels``, migration 0009;
  docs/storage.md, "Label filters", has the measurement behind GIN rather than a label table);
- ``error``: a JSON path existence test on ``error_context`` with the code as a path variable;
- ``created`` / ``updated``: plain comparisons (``ix_flows_tenant_updated_at``);
- ``stuck``: per live status, ``status = $s AND updated_at < $n`` with that status's threshold
  (``FLOWSTATE_STUCK_AFTER`` and ``FLOWSTATE_STUCK_AFTER_BY_STATUS``, as the STUCK alerts), ORed
  (``ix_flows_tenant_status``).

``!=`` is the negation of ``=`` (a flow without the label or phase matches ``!=``), as in
`flowstate.core.filters.matches`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    any_,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from flowstate.core.filters import And, Comparison, Filter, Not, Or, Stuck
from flowstate.storage.schema import flows

__all__ = ["filter_condition"]

_ERROR_PATH: ColumnElement[Any] = literal_column("'$.* ? (@.error_code == $code)'::jsonpath")
"""A constant JSON path (no caller's text in it): the code is the ``$code`` variable, bound."""


def filter_condition(condition: Filter) -> ColumnElement[bool]:
    """`condition` as a SQL boolean on the ``flows`` table (values bound, never inlined)."""
    if isinstance(condition, And):
        return and_(*(filter_condition(part) for part in condition.parts))
    if isinstance(condition, Or):
        return or_(*(filter_condition(part) for part in condition.parts))
    if isinstance(condition, Not):
        return not_(filter_condition(condition.part))
    if isinstance(condition, Stuck):
        if not condition.before:
            return false()
        return or_(
            *(
                and_(
                    flows.c.status == literal(status.value, Text),
                    flows.c.updated_at < literal(before, flows.c.updated_at.type),
                )
                for status, before in condition.before
            )
        )
    return _comparison(condition)


def _comparison(comparison: Comparison) -> ColumnElement[bool]:
    field, key, op, values = comparison.field, comparison.key, comparison.op, comparison.values
    if field in ("created", "updated"):
        column = flows.c.created_at if field == "created" else flows.c.updated_at
        bound = literal(values[0], column.type)
        return {
            "=": column == bound,
            "!=": column != bound,
            "<": column < bound,
            "<=": column <= bound,
            ">": column > bound,
            ">=": column >= bound,
        }[op]
    hit: ColumnElement[bool]
    label = key or ""
    if field in ("status", "definition"):
        column = flows.c.status if field == "status" else flows.c.definition_name
        texts = sorted({str(getattr(v, "value", v)) for v in values})
        hit = column == any_(literal(texts, ARRAY(Text)))
    elif field == "phase":
        hit = or_(*(flows.c.phase_states.contains(_json({label: v.value})) for v in values))
    elif field == "labels":
        hit = or_(*(flows.c.labels.contains(_json({label: v})) for v in values))
    else:  # error
        hit = or_(
            *(
                func.jsonb_path_exists(flows.c.error_context, _ERROR_PATH, _json({"code": v.value}))
                for v in values
            )
        )
    return not_(hit) if op == "!=" else hit


def _json(value: dict[str, Any]) -> Any:
    return literal(value, JSONB)
