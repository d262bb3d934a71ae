"""The one table of input limits, and the checks every layer below the API edge makes with it.

PostgreSQL refuses NUL characters in text and JSONB, and unbounded values would let one caller
bloat rows, history and idempotency responses. The API's edge (`flowstate.server.validation`)
reports every violation of a request at once with these constants (`field_violations`, the one
way to build a field violation); the use cases and the store check the same values with the
same constants before any SQL runs, one violation at a time, so a direct caller gets the same
answer. A violation is FlowStateError MALFORMED_REQUEST whose ``field`` detail names the field
(dotted for nested values, e.g. ``command.error.message``), with ``limit`` when a size was
exceeded. Nothing is written for a refused request.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from flowstate.core.commands import Context
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, PhaseError, Tenant
from flowstate.storage.codec import EncodedJson, dumps

__all__ = [
    "DEFAULT_DEFINITION_PAGE_SIZE",
    "DEFAULT_FLOW_PAGE_SIZE",
    "DEFAULT_HISTORY_PAGE_SIZE",
    "MAX_BULK_FLOWS",
    "MAX_CHILDREN_PER_FLOW",
    "MAX_CHILD_FLOW_DEPTH",
    "MAX_DEFINITION_PAGE_SIZE",
    "MAX_DISPLAY_NAME_LENGTH",
    "MAX_ERROR_MESSAGE_LENGTH",
    "MAX_EXTERNAL_DEPENDENCIES",
    "MAX_FILTERS",
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_LENGTH",
    "MAX_FILTER_TERMS",
    "MAX_FLOW_IDS_PER_QUERY",
    "MAX_FLOW_PAGE_SIZE",
    "MAX_HISTORY_PAGE_SIZE",
    "MAX_IDENTIFIER_LENGTH",
    "MAX_JSON_BYTES",
    "MAX_LABELS",
    "MAX_LABEL_KEY_LENGTH",
    "MAX_LABEL_VALUE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_PAGE_TOKEN_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_TREE_FLOWS",
    "MAX_WEBHOOKS_PER_TENANT",
    "MAX_WEBHOOK_URL_LENGTH",
    "MIN_EXPECTED_VERSION",
    "check_command",
    "check_context",
    "check_flow_id",
    "check_identifier",
    "check_json_object",
    "check_labels",
    "check_name",
    "check_tenant",
    "check_text",
    "check_version",
    "field_violations",
    "malformed",
]

MAX_IDENTIFIER_LENGTH = 256
"""Tenant ids and user ids (characters): they come from tokens, not from requests."""
MAX_NAME_LENGTH = 128
"""Definition and phase names (characters)."""
MAX_REQUEST_ID_LENGTH = 128
"""A request id (characters; printable at the API's edge)."""
MAX_REASON_LENGTH = 1024
"""A command's `reason` (characters)."""
MAX_DISPLAY_NAME_LENGTH = 256
"""A flow's display name (characters)."""
MAX_ERROR_MESSAGE_LENGTH = 4096
"""A phase error's message (characters)."""
MAX_JSON_BYTES = 16 * 1024
"""Metadata, and a phase error's details, as UTF-8 JSON (bytes)."""
MAX_LABELS = 64
"""Labels per flow."""
MAX_LABEL_KEY_LENGTH = 63
"""A label key (characters)."""
MAX_LABEL_VALUE_LENGTH = 256
"""A label value (characters)."""
MAX_PAGE_TOKEN_LENGTH = 1024
"""A page token or stream cursor sent back by a client (characters)."""
MAX_FILTERS = 32
"""Phase-state filters of one listing."""
MAX_BULK_FLOWS = 100_000
"""Flows one bulk action may take (a larger selection is refused: narrow the filter)."""
MAX_FILTER_LENGTH = 4096
"""A filter string (`flowstate.core.filters`), characters."""
MAX_FILTER_TERMS = 64
"""Comparisons in one filter."""
MAX_FILTER_DEPTH = 16
"""Nesting of parentheses and NOT in one filter."""
DEFAULT_FLOW_PAGE_SIZE = 50
"""Flows per page when the caller asks for 0."""
MAX_FLOW_PAGE_SIZE = 500
"""Flows per page at most (larger sizes are lowered to it, AIP-158)."""
DEFAULT_HISTORY_PAGE_SIZE = 100
"""History entries per page when the caller asks for 0."""
MAX_HISTORY_PAGE_SIZE = 1000
"""History entries per page (or change-feed read) at most."""
DEFAULT_DEFINITION_PAGE_SIZE = 100
"""Definitions per page when the caller asks for 0."""
MAX_DEFINITION_PAGE_SIZE = 1000
"""Definitions per page at most (larger sizes are lowered to it)."""
MAX_FLOW_IDS_PER_QUERY = 1000
"""Flow ids one listing may filter on."""
MAX_WEBHOOKS_PER_TENANT = 50
"""Webhook subscriptions one tenant may hold (CreateWebhook past it: MALFORMED_REQUEST)."""
MAX_WEBHOOK_URL_LENGTH = 2048
"""A webhook's URL (characters)."""
MAX_CHILD_FLOW_DEPTH = 5
"""Levels of child flows below a root flow (a root's child is at depth 1): a child_flow phase
whose child would be deeper is refused with CHILD_FLOW_LIMIT_EXCEEDED. Bounds every walk up a
tree (propagation, cycle checks) and the locks one transaction takes."""
MAX_CHILDREN_PER_FLOW = 100
"""Child flows one flow may ever have (created or linked; a retry's new child counts too):
bounds the locks of a cancel cascade and the rows GetFlow's tree reads per flow."""
MAX_EXTERNAL_DEPENDENCIES = 32
"""Cross-flow dependencies one flow may declare (each is read when its phase starts)."""
MAX_TREE_FLOWS = 500
"""Flows a GetFlow with children returns at most (the rest is cut, and said so)."""
MIN_EXPECTED_VERSION = 1
"""The API refuses a smaller `expected_version` (MALFORMED_REQUEST: versions start at 1, and
proto3 ``optional`` tells "unset" from 0). Below the edge any version >= 0 is a well-formed
question; one the flow is not at (0 included) is VERSION_CONFLICT, as the tests pin."""


def field_violations(violations: Sequence[tuple[str, str]]) -> FlowStateError:
    """The MALFORMED_REQUEST error for `violations` ((field, description) pairs, at least one).

    The message names the first; ``field_violations`` lists them all (sent as
    ``google.rpc.BadRequest``).
    """
    field, description = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return FlowStateError(
        ErrorCode.MALFORMED_REQUEST,
        f"{field}: {description}{more}",
        field=field,
        field_violations=[{"field": f, "description": d} for f, d in violations],
    )


def malformed(field: str, message: str, **details: Any) -> FlowStateError:
    """The MALFORMED_REQUEST refusal for `field`."""
    return FlowStateError(ErrorCode.MALFORMED_REQUEST, message, field=field, **details)


def check_text(field: str, value: object, max_length: int) -> str:
    """`value` if it is a str without NUL, encodable as UTF-8 and at most `max_length` long."""
    if not isinstance(value, str):
        raise malformed(field, f"{field} must be a string")
    if "\x00" in value:
        raise malformed(field, f"{field} must not contain NUL characters")
    if len(value) > max_length:
        raise malformed(field, f"{field} is longer than {max_length} characters", limit=max_length)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise malformed(field, f"{field} is not valid Unicode text") from None
    return value


def check_identifier(
    field: str, value: object, *, required: bool = True, max_length: int = MAX_IDENTIFIER_LENGTH
) -> str:
    """An id or name: `check_text` with `max_length`, non-empty when `required`."""
    text = check_text(field, value, max_length)
    if required and not text:
        raise malformed(field, f"{field} must not be empty")
    return text


def check_name(field: str, value: object, *, required: bool = True) -> str:
    """A definition or phase name: `check_identifier` with `MAX_NAME_LENGTH`."""
    return check_identifier(field, value, required=required, max_length=MAX_NAME_LENGTH)


def check_tenant(tenant: Tenant) -> None:
    """Both tenant ids are non-empty identifiers."""
    check_identifier("tenant.client_account_id", tenant.client_account_id)
    check_identifier("tenant.engagement_id", tenant.engagement_id)


def _check_json_value(field: str, value: object, depth: int = 0) -> None:
    if depth > 32:
        raise malformed(field, f"{field} is nested too deeply")
    if isinstance(value, str):
        check_text(field, value, MAX_JSON_BYTES)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise malformed(field, f"{field} keys must be strings")
            check_text(field, key, MAX_JSON_BYTES)
            _check_json_value(field, item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json_value(field, item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise malformed(field, f"{field} must not contain NaN or infinite numbers")
    elif value is not None and not isinstance(value, bool | int):
        raise malformed(field, f"{field} must contain only JSON values")


def check_json_object(field: str, value: object) -> None:
    """A JSON object (str keys; JSON values; no NUL) of at most `MAX_JSON_BYTES` as UTF-8."""
    if not isinstance(value, Mapping):
        raise malformed(field, f"{field} must be an object")
    if not value:
        return  # {}: two bytes
    _check_json_value(field, value)
    text = value.text if isinstance(value, EncodedJson) else dumps(dict(value))
    size = len(text.encode("utf-8"))
    if size > MAX_JSON_BYTES:
        raise malformed(
            field, f"{field} is larger than {MAX_JSON_BYTES} bytes", limit=MAX_JSON_BYTES
        )


def check_labels(labels: object) -> None:
    """At most `MAX_LABELS` string labels within the key and value limits."""
    if not isinstance(labels, Mapping):
        raise malformed("labels", "labels must be a mapping of strings")
    if len(labels) > MAX_LABELS:
        raise malformed("labels", f"a flow has at most {MAX_LABELS} labels", limit=MAX_LABELS)
    for key, value in labels.items():
        check_identifier("labels", key)
        check_text("labels", key, MAX_LABEL_KEY_LENGTH)
        check_text("labels", value, MAX_LABEL_VALUE_LENGTH)


def _check_phase_error(field: str, error: PhaseError) -> None:
    check_text(f"{field}.message", error.message, MAX_ERROR_MESSAGE_LENGTH)
    check_json_object(f"{field}.details", error.details)


def check_command(command: object) -> None:
    """Check every caller-controlled field of a core command (any dataclass command).

    Known field names get their limits (``phase``, ``reason``, ``metadata``, ``error``);
    other strings get the identifier limits; numbers, flags and enums are the core's to judge.
    """
    if not dataclasses.is_dataclass(command) or isinstance(command, type):
        raise malformed("command", "command must be a command value")
    for spec in dataclasses.fields(command):
        field = f"command.{spec.name}"
        value = getattr(command, spec.name)
        if spec.name in ("reason", "comment"):
            check_text(field, value, MAX_REASON_LENGTH)
        elif spec.name == "metadata":
            check_json_object(field, value)
        elif isinstance(value, PhaseError):
            _check_phase_error(field, value)
        elif isinstance(value, str) and not hasattr(value, "value"):  # enums are the core's
            check_name(field, value, required=False)


def check_flow_id(value: object, field: str = "flow_id") -> str:
    """A flow id: a UUID, returned in canonical (lower-case, hyphenated) form."""
    if not isinstance(value, str):
        raise malformed(field, f"{field} must be a string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise malformed(field, f"{field} must be a UUID") from None


def check_version(field: str, value: object, minimum: int = 0) -> int:
    """A flow or definition version: an int of at least `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise malformed(field, f"{field} must be an integer >= {minimum}")
    return value


def check_page_size(value: object, default: int, maximum: int) -> int:
    """A requested page size: 0 means `default`, more than `maximum` is cut to it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise malformed("page_size", "page_size must be a non-negative integer")
    return default if value == 0 else min(value, maximum)


def check_context(ctx: Context) -> None:
    """A core context: a timezone-aware `now` (ValueError: a bug), identifiers in limits."""
    if ctx.now.utcoffset() is None:
        raise ValueError("ctx.now must be timezone-aware")
    check_identifier("user_id", ctx.user_id, required=False)
    check_identifier("request_id", ctx.request_id, required=False, max_length=MAX_REQUEST_ID_LENGTH)
