"""Definitions: the built-ins are seeded at open and served by name and version."""

from __future__ import annotations

import pytest

from flowstate.core.definitions import DISCOVERY, definition_to_dict
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore

from .support import ContextFactory, fetch


async def test_the_builtins_are_seeded(store: FlowStore, database_url: str) -> None:
    rows = await fetch(database_url, "SELECT name, version, body FROM flow_definitions")
    stored = {(r["name"], r["version"]) for r in rows}
    assert ("discovery", 1) in stored
    assert await store.definitions.get("discovery") == DISCOVERY
    assert await store.definitions.get("discovery", 1) == DISCOVERY


async def test_a_stored_body_is_the_core_dict(database_url: str) -> None:
    import json

    rows = await fetch(
        database_url, "SELECT body FROM flow_definitions WHERE name = 'discovery' AND version = 1"
    )
    assert json.loads(rows[0]["body"]) == definition_to_dict(DISCOVERY)


@pytest.mark.parametrize(("name", "version"), [("nope", None), ("discovery", 99)])
async def test_an_unknown_definition_is_not_found(
    store: FlowStore, name: str, version: int | None
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await store.definitions.get(name, version)
    assert refused.value.code is ErrorCode.DEFINITION_NOT_FOUND
    assert refused.value.details == {
        "definition_name": name,
        "definition_version": version,
    }


async def test_creating_a_flow_of_an_unknown_definition_is_not_found(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await FlowService(store).create_flow(tenant, definition_name="nope", ctx=make_context())
    assert refused.value.code is ErrorCode.DEFINITION_NOT_FOUND


async def test_reopening_keeps_one_copy(database_url: str) -> None:
    again = await FlowStore.open(database_url)
    await again.close()
    rows = await fetch(
        database_url,
        "SELECT count(*) AS n FROM flow_definitions WHERE name = 'discovery'"
        " AND client_account_id = ''",
    )
    assert rows[0]["n"] == 1
