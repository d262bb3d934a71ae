"""The public names of flowstate.storage, pinned: the server codes against them."""

from __future__ import annotations

import flowstate.storage

EXPORTED = {
    "DEFAULT_IDEMPOTENCY_TTL",
    "NOTIFY_CHANNEL",
    "EmbeddedPostgres",
    "FlowCount",
    "FlowPage",
    "FlowQuery",
    "FlowStore",
    "FlowTransaction",
    "HistoryPage",
    "IdempotencyKey",
    "MutationResult",
    "ResolvedDatabase",
    "SchemaNotReadyError",
    "StoreUnavailable",
    "StoredKey",
    "Write",
    "resolve_database_url",
}


def test_exported_names() -> None:
    assert set(flowstate.storage.__all__) == EXPORTED
    for name in EXPORTED:
        assert getattr(flowstate.storage, name).__doc__, name


def test_store_methods() -> None:
    public = {n for n in dir(flowstate.storage.FlowStore) if not n.startswith("_")}
    assert public == {
        "open",
        "close",
        "ping",
        "insert_flow",
        "update_flow",
        "count_flows",
        "get_flow",
        "list_flows",
        "list_history",
        "get_definition",
        "get_stored_definition",
        "register_definition",
        "list_definitions",
        "read_changes",
        "purge_expired_idempotency_keys",
        "count_stuck_flows",
        "get_retention_policy",
        "set_retention_policy",
        "claim_timers",
        "touch_heartbeat",
        "create_webhook",
        "list_webhooks",
        "get_webhook",
        "delete_webhook",
        "rewind_webhook",
        "claim_webhooks",
        "advance_webhook",
        "record_webhook_failure",
        "release_webhooks",
        "due_alert_flows",
        "children_of",
    }
