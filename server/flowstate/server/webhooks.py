"""Webhook subscriptions as protos, and the delivery metrics' observer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from flowstate.core.model import FlowStatus
from flowstate.server.convert import FLOW_STATUS_TO_PROTO, set_timestamp
from flowstate.storage.changes import TenantCursor
from flowstate.storage.webhooks_repo import ACTIVE, DISABLED, StoredWebhook
from flowstate.v1 import webhook_pb2

__all__ = ["webhook_to_proto"]

_STATE: Final[Mapping[str, webhook_pb2.WebhookState.ValueType]] = {
    ACTIVE: webhook_pb2.WEBHOOK_STATE_ACTIVE,
    DISABLED: webhook_pb2.WEBHOOK_STATE_DISABLED,
}


def webhook_to_proto(stored: StoredWebhook) -> webhook_pb2.Webhook:
    """The `flowstate.v1.Webhook` of a stored subscription (never its secret)."""
    message = webhook_pb2.Webhook(
        webhook_id=stored.id,
        url=stored.url,
        statuses=[FLOW_STATUS_TO_PROTO[FlowStatus(s)] for s in stored.statuses],
        definition_name=stored.definition_name,
        filter=stored.filter,
        state=_STATE.get(stored.state, webhook_pb2.WEBHOOK_STATE_UNSPECIFIED),
        disabled_reason=stored.disabled_reason,
        consecutive_failures=stored.consecutive_failures,
        last_error=stored.last_error,
        delivered_count=stored.delivered_count,
        cursor=TenantCursor(stored.cursor).encode(),
    )
    set_timestamp(message.create_time, stored.created_at)
    if stored.last_attempt_at is not None:
        set_timestamp(message.last_attempt_time, stored.last_attempt_at)
    if stored.last_success_at is not None:
        set_timestamp(message.last_success_time, stored.last_success_at)
    return message
