"""Bad values are MALFORMED_REQUEST naming the field, refused before any SQL: nothing written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from flowstate.core.commands import Context, TransitionPhase, UpdatePhaseProgress
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, PhaseError, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowQuery, FlowStore
from flowstate.storage.limits import (
    MAX_DISPLAY_NAME_LENGTH,
    MAX_IDENTIFIER_LENGTH,
    MAX_JSON_BYTES,
    MAX_LABELS,
    MAX_REASON_LENGTH,
)

from .support import ContextFactory, fetch, history_versions
from .test_concurrency import started_flow

BIG = "x" * (MAX_JSON_BYTES + 1)


def _failed(message: str, details: dict[str, Any] | None = None) -> PhaseError:
    return PhaseError(ErrorCode.PHASE_EXECUTION_FAILED, message, details or {})


MUTATIONS: dict[str, tuple[Any, str]] = {
    "reason-nul": (UpdatePhaseProgress("data_import", 0.5, reason="a\x00b"), "command.reason"),
    "reason-long": (
        UpdatePhaseProgress("data_import", 0.5, reason="r" * (MAX_REASON_LENGTH + 1)),
        "command.reason",
    ),
    "reason-surrogate": (
        UpdatePhaseProgress("data_import", 0.5, reason="\ud800"),
        "command.reason",
    ),
    "metadata-nul-value": (
        UpdatePhaseProgress("data_import", 0.5, metadata={"k": "\x00"}),
        "command.metadata",
    ),
    "metadata-nul-key": (
        UpdatePhaseProgress("data_import", 0.5, metadata={"k\x00": 1}),
        "command.metadata",
    ),
    "metadata-big": (
        UpdatePhaseProgress("data_import", 0.5, metadata={"k": BIG}),
        "command.metadata",
    ),
    "metadata-nan": (
        UpdatePhaseProgress("data_import", 0.5, metadata={"k": float("nan")}),
        "command.metadata",
    ),
    "metadata-not-json": (
        UpdatePhaseProgress("data_import", 0.5, metadata={"k": object()}),
        "command.metadata",
    ),
    "phase-nul": (UpdatePhaseProgress("data\x00import", 0.5), "command.phase"),
    "error-message-nul": (
        TransitionPhase("data_import", PhaseState.FAILED, error=_failed("bad\x00")),
        "command.error.message",
    ),
    "error-details-big": (
        TransitionPhase("data_import", PhaseState.FAILED, error=_failed("bad", {"k": BIG})),
        "command.error.details",
    ),
}


@pytest.mark.parametrize(("command", "field"), MUTATIONS.values(), ids=MUTATIONS.keys())
async def test_a_bad_command_is_refused_and_writes_nothing(
    store: FlowStore,
    tenant: Tenant,
    make_context: ContextFactory,
    database_url: str,
    command: Any,
    field: str,
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    with pytest.raises(FlowStateError) as refused:
        await FlowService(store).mutate(tenant, flow_id, command, make_context("r-bad"))
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == field
    assert await history_versions(database_url, flow_id) == [1, 2]
    keys = await fetch(
        database_url,
        "SELECT 1 FROM idempotency_keys WHERE client_account_id = $1 AND request_id = 'r-bad'",
        tenant.client_account_id,
    )
    assert keys == []


def _create(**overrides: Any) -> Callable[[FlowStore, Tenant, Context], Awaitable[Any]]:
    async def call(store: FlowStore, tenant: Tenant, ctx: Context) -> Any:
        arguments: dict[str, Any] = {"definition_name": "discovery", "ctx": ctx, **overrides}
        return await FlowService(store).create_flow(tenant, **arguments)

    return call


CREATES: dict[str, tuple[Callable[[FlowStore, Tenant, Context], Awaitable[Any]], str]] = {
    "display-name-nul": (_create(display_name="a\x00"), "display_name"),
    "display-name-long": (
        _create(display_name="d" * (MAX_DISPLAY_NAME_LENGTH + 1)),
        "display_name",
    ),
    "labels-too-many": (
        _create(labels={f"k{i}": "v" for i in range(MAX_LABELS + 1)}),
        "labels",
    ),
    "label-value-nul": (_create(labels={"k": "v\x00"}), "labels"),
    "label-key-empty": (_create(labels={"": "v"}), "labels"),
    "definition-nul": (_create(definition_name="disc\x00"), "definition_name"),
    "flow-id-not-uuid": (_create(flow_id="not-a-uuid"), "flow_id"),
}


@pytest.mark.parametrize(("create", "field"), CREATES.values(), ids=CREATES.keys())
async def test_a_bad_create_is_refused_and_writes_nothing(
    store: FlowStore,
    tenant: Tenant,
    make_context: ContextFactory,
    create: Callable[[FlowStore, Tenant, Context], Awaitable[Any]],
    field: str,
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await create(store, tenant, make_context())
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == field
    assert (await store.list_flows(tenant, FlowQuery())).flows == ()


CONTEXTS = {
    "request-id-nul": ({"request_id": "r\x00"}, "request_id"),
    "request-id-long": ({"request_id": "r" * (MAX_IDENTIFIER_LENGTH + 1)}, "request_id"),
    "user-id-nul": ({"user_id": "u\x00"}, "user_id"),
}


@pytest.mark.parametrize(("context", "field"), CONTEXTS.values(), ids=CONTEXTS.keys())
async def test_bad_identity_values_are_refused(
    store: FlowStore,
    tenant: Tenant,
    make_context: ContextFactory,
    context: dict[str, str],
    field: str,
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await FlowService(store).create_flow(
            tenant, definition_name="discovery", ctx=make_context(**context)
        )
    assert refused.value.details["field"] == field


@pytest.mark.parametrize(
    ("tenant_value", "field"),
    [
        pytest.param(Tenant("", "e"), "tenant.client_account_id", id="empty-account"),
        pytest.param(Tenant("a", "e\x00"), "tenant.engagement_id", id="nul-engagement"),
    ],
)
async def test_a_bad_tenant_is_refused(
    store: FlowStore, make_context: ContextFactory, tenant_value: Tenant, field: str
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await store.get_flow(tenant_value, "00000000-0000-4000-8000-000000000000")
    assert refused.value.details["field"] == field


async def test_bad_ids_and_versions_are_refused(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    cases: list[tuple[Awaitable[Any], str]] = [
        (store.get_flow(tenant, "nope"), "flow_id"),
        (store.list_history(tenant, flow_id, after_version=-1), "after_version"),
        (store.list_history(tenant, flow_id, page_size=-1), "page_size"),
        (
            FlowService(store).mutate(
                tenant,
                flow_id,
                UpdatePhaseProgress("data_import", 0.5),
                make_context(),
                expected_version=-1,
            ),
            "expected_version",
        ),
        (store.definitions.get("discovery", 0), "definition_version"),
    ]
    for call, field in cases:
        with pytest.raises(FlowStateError) as refused:
            await call
        assert refused.value.code is ErrorCode.MALFORMED_REQUEST
        assert refused.value.details["field"] == field
