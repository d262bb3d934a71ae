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
        "read_changes",
        "purge_expired_idempotency_keys",
        "count_stuck_flows",
        "due_alert_flows",
        "children_of",
    }


def test_store_capabilities() -> None:
    """The capabilities beside the flows, on the store's runner (docs/architecture.md)."""
    from flowstate.storage.definitions_repo import DefinitionStore
    from flowstate.storage.retention import RetentionPolicies
    from flowstate.storage.timers import TimerStore
    from flowstate.storage.webhooks_repo import WebhookStore

    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(DefinitionStore) == {
        "CACHE_SIZE",
        "get",
        "get_stored",
        "list_page",
        "register",
        "resolve",
        "seed",
    }
    assert public(WebhookStore) == {
        "create",
        "list_all",
        "get",
        "delete",
        "rewind",
        "claim",
        "advance",
        "record_failure",
        "release",
    }
    assert public(TimerStore) == {"claim", "touch_heartbeat"}
    assert public(RetentionPolicies) == {"get", "set"}
