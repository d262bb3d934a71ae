"""Mapping between core values and rows (and the JSON kept in idempotency responses).

One encoding serves both places: `flow_to_row` gives the column values of `flows`,
`entry_to_row` those of `flow_history`; the JSON form of a value (what an idempotency key
stores as its response) is the same dict with timestamps as ISO-8601 text. Decoding never
needs the flow definition: `phase_details` keeps the phases in definition order.

Column shapes (see `flowstate.storage.schema`):

- ``phase_states``: ``{phase: state}``, the value the GIN index and the legacy view read;
- ``phase_details``: ``[{name, progress, retry_count, last_retry_at, state_entered_at,
  started_at, completed_at, next_attempt_at}, ...]`` in definition order (`next_attempt_at`
  only while an automatic retry is scheduled);
- ``error_context``: ``{phase: {error_code, message, details}}`` for phases carrying an error;
- ``retry_count`` / ``last_retry_at``: the sum / latest over the phases (indexed for queries).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol

from flowstate.core.model import (
    AlertKind,
    ApprovalDecision,
    ErrorCode,
    ExternalDependency,
    Flow,
    FlowAlert,
    FlowStatus,
    HistoryEntry,
    HistoryKind,
    Phase,
    PhaseApproval,
    PhaseError,
    PhaseState,
    Tenant,
)

__all__ = [
    "EncodedJson",
    "Row",
    "dumps",
    "entry_from_json",
    "entry_from_row",
    "entry_to_json",
    "entry_to_row",
    "flow_from_json",
    "flow_from_row",
    "flow_to_json",
    "flow_to_row",
]

_FLOW_TIMESTAMPS = ("created_at", "updated_at", "last_retry_at", "deadline", "alert_due_at")
_ENTRY_TIMESTAMPS = ("occurred_at", "next_attempt_at")


class Row(Protocol):
    """A result row: a mapping or an asyncpg Record, read by column name."""

    def __getitem__(self, key: str, /) -> Any:
        """The value of column `key`."""


class EncodedJson(Mapping[str, Any]):
    """A JSON object together with its text, encoded once where it enters (a request's metadata).

    The size check, the request fingerprint and the write all reuse `text` (`dumps` and
    `dumps_canonical` splice it in) instead of encoding the object again. The text is canonical
    (sorted keys, compact, UTF-8 as is), so it is also what the fingerprint hashes.
    """

    __slots__ = ("_data", "text")

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Encode `data` (ValueError for NaN or an infinity, which PostgreSQL refuses)."""
        self._data = dict(data)
        self.text = dumps_canonical(self._data)

    def __getitem__(self, key: str) -> Any:
        """The value of `key`."""
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        """The keys."""
        return iter(self._data)

    def __len__(self) -> int:
        """The number of keys."""
        return len(self._data)

    def __repr__(self) -> str:
        """As the dict it holds."""
        return repr(self._data)


def dumps(value: Any) -> str:
    """Compact JSON text (stdlib); NaN and infinities are refused (PostgreSQL refuses them).

    An `EncodedJson` anywhere in `value` is written as its text, not encoded again.
    """
    return _dumps_splicing(value, sort_keys=False, allow_nan=False, default=None)


def dumps_canonical(value: Any, *, default: Any = None, allow_nan: bool = False) -> str:
    """Canonical JSON text: `dumps` with sorted keys (`default` as in `json.dumps`)."""
    return _dumps_splicing(value, sort_keys=True, allow_nan=allow_nan, default=default)


class _Splice(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the fast path's hook when it meets an `EncodedJson`: splice instead."""


def _fast_hook(default: Any) -> Any:
    def hook(item: Any) -> Any:
        if isinstance(item, EncodedJson):
            raise _Splice
        if default is None:
            raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")
        return default(item)

    return hook


_MAX_ENCODERS = 16
_encoders: dict[tuple[bool, bool, Any], json.JSONEncoder] = {}


def _encoder(sort_keys: bool, allow_nan: bool, default: Any) -> json.JSONEncoder:
    """The fast path's encoder for these settings, built once (a few `default` hooks exist)."""
    key = (sort_keys, allow_nan, default)
    encoder = _encoders.get(key)
    if encoder is None:
        encoder = json.JSONEncoder(
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=allow_nan,
            sort_keys=sort_keys,
            default=_fast_hook(default),
        )
        if len(_encoders) < _MAX_ENCODERS:
            _encoders[key] = encoder
    return encoder


def _dumps_splicing(value: Any, *, sort_keys: bool, allow_nan: bool, default: Any) -> str:
    # Fast path: most values hold no EncodedJson (a request without metadata); one encoder per
    # settings, made once, encodes them. Its hook raises `_Splice` at the first EncodedJson,
    # and the value is encoded again below, splicing.
    try:
        return _encoder(sort_keys, allow_nan, default).encode(value)
    except _Splice:
        pass
    # The encoder hands each EncodedJson (a Mapping, not a dict) to the hook, which leaves a
    # placeholder string no caller can guess (a fresh UUID per call); the placeholders are then
    # replaced by the texts. Sorted or not, an object's text differs only in key order, which
    # JSON (and jsonb) does not give meaning to; canonical callers get canonical texts.
    texts: dict[str, str] = {}
    token = uuid.uuid4().hex

    def hook(item: Any) -> Any:
        if isinstance(item, EncodedJson):
            placeholder = f"{token}:{len(texts)}"
            texts[f'"{placeholder}"'] = item.text
            return placeholder
        if default is None:
            raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")
        return default(item)

    text = json.dumps(
        value,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=allow_nan,
        sort_keys=sort_keys,
        default=hook,
    )
    for placeholder, encoded in texts.items():
        text = text.replace(placeholder, encoded, 1)
    return text


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def error_to_json(error: PhaseError | None) -> dict[str, Any] | None:
    """A phase error as JSON (None stays None)."""
    if error is None:
        return None
    return {
        "error_code": error.error_code.value,
        "message": error.message,
        "details": dict(error.details),
    }


def error_from_json(data: Mapping[str, Any] | None) -> PhaseError | None:
    """The inverse of `error_to_json`."""
    if data is None:
        return None
    return PhaseError(
        error_code=ErrorCode(data["error_code"]),
        message=data["message"],
        details=dict(data.get("details") or {}),
    )


def approval_to_json(approval: PhaseApproval | None) -> dict[str, Any] | None:
    """An approval decision as JSON (None stays None)."""
    if approval is None:
        return None
    return {
        "decision": approval.decision.value,
        "approver": approval.approver,
        "comment": approval.comment,
        "decided_at": approval.decided_at.isoformat(),
    }


def approval_from_json(data: Mapping[str, Any] | None) -> PhaseApproval | None:
    """The inverse of `approval_to_json`."""
    if data is None:
        return None
    return PhaseApproval(
        decision=ApprovalDecision(data["decision"]),
        approver=data["approver"],
        comment=data["comment"],
        decided_at=datetime.fromisoformat(data["decided_at"]),
    )


def alert_to_json(alert: FlowAlert | None) -> dict[str, Any] | None:
    """An alert as JSON (None stays None)."""
    if alert is None:
        return None
    return {
        "kind": alert.kind.value,
        "phase": alert.phase,
        "status": alert.status.value,
        "due_at": alert.due_at.isoformat(),
        "raised_at": alert.raised_at.isoformat(),
        "message": alert.message,
    }


def alert_from_json(data: Mapping[str, Any] | None) -> FlowAlert | None:
    """The inverse of `alert_to_json`."""
    if data is None:
        return None
    return FlowAlert(
        kind=AlertKind(data["kind"]),
        due_at=datetime.fromisoformat(data["due_at"]),
        raised_at=datetime.fromisoformat(data["raised_at"]),
        status=FlowStatus(data["status"]),
        phase=data.get("phase", ""),
        message=data.get("message", ""),
    )


def _phase_details(phase: Phase) -> dict[str, Any]:
    last_retry, entered = phase.last_retry_at, phase.state_entered_at
    started, completed = phase.started_at, phase.completed_at
    detail: dict[str, Any] = {
        "name": phase.name,
        "progress": phase.progress,
        "retry_count": phase.retry_count,
        "last_retry_at": None if last_retry is None else last_retry.isoformat(),
        "state_entered_at": None if entered is None else entered.isoformat(),
        "started_at": None if started is None else started.isoformat(),
        "completed_at": None if completed is None else completed.isoformat(),
    }
    if phase.next_attempt_at:
        detail["next_attempt_at"] = phase.next_attempt_at.isoformat()
    if phase.child_flow_id:
        detail["child_flow_id"] = phase.child_flow_id
    if phase.approval is not None:
        detail["approval"] = approval_to_json(phase.approval)
    return detail


def _flow_columns(flow: Flow, iso: bool) -> dict[str, Any]:
    """`flow_to_row`, or with `iso` `flow_to_json` (timestamps as ISO text), in one pass."""
    phases = flow.phases
    retry_times = [p.last_retry_at for p in phases if p.last_retry_at is not None]
    last_retry_at = max(retry_times) if retry_times else None
    times: tuple[Any, ...] = (
        flow.created_at,
        flow.updated_at,
        flow.deadline,
        flow.alert_due_at,
        last_retry_at,
    )
    if iso:
        times = tuple(None if t is None else t.isoformat() for t in times)
    created, updated, deadline, due, last_retry = times
    before_pause = flow.status_before_pause
    tenant = flow.tenant
    return {
        "id": flow.flow_id,
        "client_account_id": tenant.client_account_id,
        "engagement_id": tenant.engagement_id,
        "definition_name": flow.definition_name,
        "definition_version": flow.definition_version,
        "status": flow.status.value,
        "status_before_pause": None if before_pause is None else before_pause.value,
        "version": flow.version,
        "phase_states": {p.name: p.state.value for p in phases},
        "phase_details": [_phase_details(p) for p in phases],
        "progress": flow.progress,
        "error_context": {p.name: error_to_json(p.error) for p in phases if p.error},
        "retry_count": sum(p.retry_count for p in phases),
        "last_retry_at": last_retry,
        "display_name": flow.display_name,
        "labels": dict(flow.labels),
        "created_at": created,
        "updated_at": updated,
        "deadline": deadline,
        "alerts": [alert_to_json(a) for a in flow.alerts],
        "alert_due_at": due,
        "parent_flow_id": flow.parent_flow_id,
        "parent_phase": flow.parent_phase,
        "external_dependencies": [
            {"phase": d.phase, "flow_id": d.flow_id, "flow_phase": d.flow_phase}
            for d in flow.external_dependencies
        ],
    }


def flow_to_row(flow: Flow) -> dict[str, Any]:
    """Column values of `flow` for the `flows` table (JSONB columns as plain JSON values)."""
    return _flow_columns(flow, iso=False)


# Enum members by value: a dict lookup instead of an `Enum(value)` call per phase (rows hold
# only valid values; an unknown one still raises, through the call).
_PHASE_STATES: Mapping[str, PhaseState] = {m.value: m for m in PhaseState}
_FLOW_STATUSES: Mapping[str, FlowStatus] = {m.value: m for m in FlowStatus}
_fromiso = datetime.fromisoformat


def _phase_state(value: str) -> PhaseState:
    state = _PHASE_STATES.get(value)
    return PhaseState(value) if state is None else state


def _flow_status(value: str) -> FlowStatus:
    status = _FLOW_STATUSES.get(value)
    return FlowStatus(value) if status is None else status


def _phase_from_json(detail: Mapping[str, Any], state: str, error: Any) -> Phase:
    last_retry, entered = detail["last_retry_at"], detail["state_entered_at"]
    started, completed = detail["started_at"], detail["completed_at"]
    next_attempt = detail.get("next_attempt_at")
    approval = detail.get("approval")
    return Phase(
        name=detail["name"],
        state=_phase_state(state),
        progress=detail["progress"],
        retry_count=detail["retry_count"],
        last_retry_at=None if last_retry is None else _fromiso(last_retry),
        error=None if error is None else error_from_json(error),
        state_entered_at=None if entered is None else _fromiso(entered),
        started_at=None if started is None else _fromiso(started),
        completed_at=None if completed is None else _fromiso(completed),
        next_attempt_at=None if next_attempt is None else _fromiso(next_attempt),
        approval=None if approval is None else approval_from_json(approval),
        child_flow_id=detail.get("child_flow_id"),
    )


def flow_from_row(row: Row) -> Flow:
    """The `Flow` stored in a `flows` row (as returned by a select of every column)."""
    states: Mapping[str, str] = row["phase_states"]
    errors: Mapping[str, Any] = row["error_context"]
    phases = tuple(
        _phase_from_json(detail, states[detail["name"]], errors.get(detail["name"]))
        for detail in row["phase_details"]
    )
    before_pause = row["status_before_pause"]
    parent = _optional(row, "parent_flow_id")
    dependencies = _optional(row, "external_dependencies")
    return Flow(
        flow_id=str(row["id"]),
        tenant=Tenant(row["client_account_id"], row["engagement_id"]),
        definition_name=row["definition_name"],
        definition_version=row["definition_version"],
        phases=phases,
        status=_flow_status(row["status"]),
        status_before_pause=None if before_pause is None else _flow_status(before_pause),
        progress=row["progress"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        display_name=row["display_name"],
        labels=dict(row["labels"]),
        deadline=_optional(row, "deadline"),
        alerts=_alerts(_optional(row, "alerts")),
        alert_due_at=_optional(row, "alert_due_at"),
        parent_flow_id=None if parent is None else str(parent),
        parent_phase=_optional(row, "parent_phase"),
        external_dependencies=(
            tuple(
                ExternalDependency(d["phase"], d["flow_id"], d["flow_phase"]) for d in dependencies
            )
            if dependencies
            else ()
        ),
    )


def entry_to_row(flow: Flow, entry: HistoryEntry) -> dict[str, Any]:
    """Column values of `entry` (of `flow`) for the `flow_history` table, without seq/txid."""
    return {
        "flow_id": flow.flow_id,
        "client_account_id": flow.tenant.client_account_id,
        "engagement_id": flow.tenant.engagement_id,
        "version": entry.flow_version,
        "kind": entry.kind.value,
        "phase": entry.phase,
        "from_state": None if entry.from_state is None else entry.from_state.value,
        "to_state": None if entry.to_state is None else entry.to_state.value,
        "status_before": entry.status_before.value,
        "status_after": entry.status_after.value,
        "reason": entry.reason,
        "user_id": entry.user_id,
        "request_id": entry.request_id,
        "metadata": _json_object(entry.metadata),
        "error": error_to_json(entry.error),
        "time_in_state_seconds": entry.time_in_state_seconds,
        "progress_after": entry.progress_after,
        "cause": entry.cause,
        "occurred_at": entry.occurred_at,
        "phase_progress": entry.phase_progress,
        "next_attempt_at": entry.next_attempt_at,
        "approval": approval_to_json(entry.approval),
        "alert": alert_to_json(entry.alert),
        **_facts_to_row(entry),
    }


def _facts_to_row(entry: HistoryEntry) -> dict[str, Any]:
    """The flow as `entry` left it: ``{phase: state}`` (the shape of `flows.phase_states`) and
    the open error codes, sorted; None for an entry without that record."""
    states, codes = entry.phase_states_after, entry.error_codes_after
    return {
        "phase_states_after": (
            None if states is None else {name: state.value for name, state in states.items()}
        ),
        "error_codes_after": None if codes is None else sorted(code.value for code in codes),
    }


def _json_object(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # An EncodedJson stays as it is: `dumps` writes its text.
    return value if isinstance(value, EncodedJson) else dict(value)


def entry_from_row(row: Row) -> HistoryEntry:
    """The `HistoryEntry` stored in a `flow_history` row."""
    from_state, to_state = row["from_state"], row["to_state"]
    return HistoryEntry(
        flow_version=row["version"],
        kind=HistoryKind(row["kind"]),
        status_before=FlowStatus(row["status_before"]),
        status_after=FlowStatus(row["status_after"]),
        occurred_at=row["occurred_at"],
        phase=row["phase"],
        from_state=None if from_state is None else PhaseState(from_state),
        to_state=None if to_state is None else PhaseState(to_state),
        reason=row["reason"],
        user_id=row["user_id"],
        request_id=row["request_id"],
        metadata=dict(row["metadata"]),
        error=error_from_json(row["error"]),
        time_in_state_seconds=row["time_in_state_seconds"],
        progress_after=row["progress_after"],
        cause=row["cause"],
        phase_progress=_optional(row, "phase_progress"),
        next_attempt_at=_optional(row, "next_attempt_at"),
        approval=approval_from_json(_optional(row, "approval")),
        alert=alert_from_json(_optional(row, "alert")),
        phase_states_after=_states_after(_optional(row, "phase_states_after")),
        error_codes_after=_codes_after(_optional(row, "error_codes_after")),
    )


def _states_after(data: Mapping[str, str] | None) -> dict[str, PhaseState] | None:
    return None if data is None else {name: PhaseState(state) for name, state in data.items()}


def _codes_after(data: list[str] | None) -> frozenset[ErrorCode] | None:
    return None if data is None else frozenset(ErrorCode(code) for code in data)


def _alerts(data: list[Mapping[str, Any]] | None) -> tuple[FlowAlert, ...]:
    alerts = (alert_from_json(item) for item in data or ())
    return tuple(alert for alert in alerts if alert is not None)


def _optional(row: Row, key: str) -> Any:
    """A column that readers written before it existed may not select: None when absent."""
    try:
        return row[key]
    except KeyError:
        return None


def _with_iso(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: _iso(v) if k in keys else v for k, v in row.items()}


def _with_datetimes(data: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: _from_iso(v) if k in keys else v for k, v in data.items()}


def flow_to_json(flow: Flow) -> dict[str, Any]:
    """`flow` as a JSON-able dict (the row form with ISO timestamps)."""
    return _flow_columns(flow, iso=True)


def flow_from_json(data: Mapping[str, Any]) -> Flow:
    """The inverse of `flow_to_json`."""
    return flow_from_row(_with_datetimes(data, _FLOW_TIMESTAMPS))


def entry_to_json(flow: Flow, entry: HistoryEntry) -> dict[str, Any]:
    """`entry` as a JSON-able dict (the row form with ISO timestamps)."""
    return _with_iso(entry_to_row(flow, entry), _ENTRY_TIMESTAMPS)


def entry_from_json(data: Mapping[str, Any]) -> HistoryEntry:
    """The inverse of `entry_to_json`."""
    return entry_from_row(_with_datetimes(data, _ENTRY_TIMESTAMPS))
