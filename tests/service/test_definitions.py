"""The definitions registry's use cases (`flowstate.service.definitions`) on a real database.

Each argument must reach the store: the request id (a replay returns the first answer), the
clock, shadowing and validate-only, the version asked for, the name filter and the page size.
Found missing by ``make mutate`` (docs/testing.md): these functions were only reached through
the gRPC servicer, whose tests the mutation run does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from flowstate.core.commands import Context
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service.definitions import get_definition, list_definitions, register_definition
from flowstate.storage import FlowStore

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def document(name: str, weights: tuple[int, ...] = (100,)) -> dict[str, Any]:
    phases = [{"name": f"p{i}", "weight": w} for i, w in enumerate(weights)]
    return {"name": name, "phases": phases}


async def test_register_get_and_list(
    store: FlowStore, tenant: Tenant, make_context: Callable[..., Context]
) -> None:
    first, created = await register_definition(
        store, tenant, document("orders"), make_context("req-1", now=T0)
    )
    assert created
    assert (first.definition.name, first.definition.version) == ("orders", 1)
    assert not first.builtin
    # The request id reaches the store: reused for another body, it is refused.
    with pytest.raises(FlowStateError) as reused:
        await register_definition(
            store, tenant, document("orders", (50, 50)), make_context("req-1", now=T0)
        )
    assert reused.value.message == "Request id 'req-1' was already used for a different request"
    second, created = await register_definition(
        store, tenant, document("orders", (50, 50)), make_context("req-2", now=T0)
    )
    assert (second.definition.version, created) == (2, True)

    assert (await get_definition(store, tenant, "orders")).definition.version == 2
    assert (await get_definition(store, tenant, "orders", 1)).definition == first.definition
    listed = await list_definitions(store, tenant, name="orders", page_size=1)
    assert [d.definition.version for d in listed.definitions] == [2]
    assert listed.next_page_token
    rest = await list_definitions(
        store, tenant, name="orders", page_size=1, page_token=listed.next_page_token
    )
    assert [d.definition.version for d in rest.definitions] == [1]
    assert rest.next_page_token == ""
    everything = await list_definitions(store, tenant)
    assert {d.definition.name for d in everything.definitions} == {"discovery", "orders"}


async def test_validate_only_stores_nothing(
    store: FlowStore, tenant: Tenant, make_context: Callable[..., Context]
) -> None:
    checked, created = await register_definition(
        store, tenant, document("dry"), make_context("req-dry", now=T0), validate_only=True
    )
    assert checked.definition.name == "dry"
    assert not created  # nothing was created
    with pytest.raises(FlowStateError) as missing:
        await get_definition(store, tenant, "dry")
    assert missing.value.code is ErrorCode.DEFINITION_NOT_FOUND


async def test_a_builtin_name_needs_the_shadow_flag(
    store: FlowStore, tenant: Tenant, make_context: Callable[..., Context]
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await register_definition(store, tenant, document("discovery"), make_context("req-a"))
    assert refused.value.code is ErrorCode.DEFINITION_SHADOWS_BUILTIN
    shadow, created = await register_definition(
        store, tenant, document("discovery"), make_context("req-b"), allow_shadow_builtin=True
    )
    assert created
    assert not shadow.builtin


async def test_a_bad_document_or_context_is_refused_before_the_store(
    store: FlowStore, tenant: Tenant, make_context: Callable[..., Context]
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await register_definition(store, tenant, {"name": "x"}, make_context("req-c"))
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    with pytest.raises(ValueError, match=r"^ctx\.now must be timezone-aware$"):
        await register_definition(
            store,
            tenant,
            document("naive"),
            Context(now=datetime(2026, 1, 1), user_id="u", request_id="r", is_admin=False),
        )
