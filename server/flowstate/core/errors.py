"""Errors raised by the Flowstate core.

Exception hierarchy::

    Exception
    ├── FlowStateError      a refused request; carries an ErrorCode and structured details
    └── ValueError
        └── DefinitionError a flow definition that breaks a structural rule (load time)

`FlowStateError` is what every refusal of the core raises (and what `validate_command` returns);
the server maps its `code` to a gRPC status and its details to `flowstate.v1.FlowError`
(`flowstate.server.errors`); `to_dict()` is the seed guide's error response
(`flowstate.flow_state_machine`).
`DefinitionError` is a programming or configuration error, never a caller's mistake.

Constructor convention: ``FlowStateError(code, message, **details)``; the keyword arguments are
the details. Details are normalised to JSON-able values when the error is built: enums become
their string values and tuples, sets and frozensets become lists (sets sorted), so the servicer
and `to_dict()` never have to convert. Keys used across the core:

- ``phase``, ``from_state``, ``to_state``: the phase and the refused phase transition;
- ``from_status``, ``to_status``: the refused flow transition;
- ``valid_transitions``: legal targets from the current state or status (string values);
- ``blocking_phases``: dependencies that are not COMPLETED yet;
- ``dependent_phases``: downstream phases that have left NOT_STARTED;
- ``attempts_remaining``, ``retry_count``, ``max_retries``: retry accounting;
- ``recovery``: recovery actions that remain (`RecoveryAction` values);
- ``field``: the malformed request field; ``current_version``: for version conflicts.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flowstate.core.model import RETRYABLE_ERROR_CODES, ErrorCode

__all__ = ["DefinitionError", "FlowStateError", "format_timestamp", "jsonable"]


class DefinitionError(ValueError):
    """A flow definition breaks a structural rule (duplicate phase, cycle, weights ≠ 100...)."""


class FlowStateError(Exception):
    """A refusal: an error code, a human message and JSON-able details.

    `retry_allowed` says whether the *same request* may succeed later unchanged; it defaults to
    whether `code` is in `RETRYABLE_ERROR_CODES`.
    """

    code: ErrorCode
    message: str
    details: dict[str, Any]
    retry_allowed: bool

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_allowed: bool | None = None,
        **details: Any,
    ) -> None:
        """Build the error; every keyword argument other than `retry_allowed` is a detail."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = {key: jsonable(value) for key, value in details.items()}
        self.retry_allowed = (
            code in RETRYABLE_ERROR_CODES if retry_allowed is None else retry_allowed
        )

    def __repr__(self) -> str:
        """Show the code and message, which is what a reader of a log needs first."""
        return f"FlowStateError({self.code.value}, {self.message!r}, details={self.details!r})"

    @property
    def error_code(self) -> ErrorCode:
        """The seed guide's name of `code` (a str enum: equal to ``"INVALID_PHASE"`` etc.)."""
        return self.code

    def to_dict(self, timestamp: datetime) -> dict[str, Any]:
        """The seed guide's structured error response, stamped with `timestamp`."""
        return {
            "status": "failed",
            "error_code": self.code.value,
            "message": self.message,
            "details": dict(self.details),
            "retry_allowed": self.retry_allowed,
            "timestamp": format_timestamp(timestamp),
        }


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 text of `moment`, with UTC written as ``Z`` as in the seed guide."""
    text = moment.isoformat()
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


def jsonable(value: Any) -> Any:
    """`value` with enums turned into their values and collections into lists or dicts."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(jsonable(item) for item in value)
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return format_timestamp(value)
    return value
