"""The definitions registry against a real Postgres: versions, idempotency, tenancy, migration.

Through the use cases (`flowstate.service`), which validate documents and drive the store.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from flowstate.core import PhaseState, SkipPhase, TransitionPhase
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service import FlowService
from flowstate.service import definitions as definition_service
from flowstate.storage import FlowStore, migrate

from .support import ContextFactory, asyncpg_dsn, fetch


def diamond(weight_d: int = 25, name: str = "diamond") -> dict[str, Any]:
    return {
        "name": name,
        "display_name": "Diamond",
        "phases": [
            {"name": "a", "weight": 25},
            {"name": "b", "depends_on": ["a"], "weight": 50 - weight_d},
            {"name": "c", "depends_on": ["a"], "weight": 25, "optional": True},
            {"name": "d", "depends_on": ["b", "c"], "weight": weight_d},
        ],
    }


def other_of(tenant: Tenant) -> Tenant:
    return Tenant(tenant.client_account_id, tenant.engagement_id + "-other")


async def test_versions_idempotency_and_pinning(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    first, created = await definition_service.register_definition(
        store, tenant, diamond(), make_context()
    )
    assert (first.definition.version, created, first.builtin) == (1, True, False)
    again, created = await definition_service.register_definition(
        store, tenant, diamond(), make_context()
    )
    assert (again.definition.version, created) == (1, False)
    second, created = await definition_service.register_definition(
        store, tenant, diamond(30), make_context()
    )
    assert (second.definition.version, created) == (2, True)
    assert second.definition.phase("d").weight == 30

    old = await FlowService(store).create_flow(
        tenant, definition_name="diamond", definition_version=1, ctx=make_context()
    )
    new = await FlowService(store).create_flow(
        tenant, definition_name="diamond", ctx=make_context()
    )
    assert (old.flow.definition_version, new.flow.definition_version) == (1, 2)
    # A flow of the old version keeps working after a new version was registered.
    for command in (
        TransitionPhase("a", PhaseState.IN_PROGRESS),
        TransitionPhase("a", PhaseState.COMPLETED),
        SkipPhase("c"),
    ):
        result = await FlowService(store).mutate(tenant, old.flow.flow_id, command, make_context())
    assert result.flow.phase("c").state is PhaseState.SKIPPED
    assert result.flow.progress == 50.0


async def test_request_id_replays_the_version_it_got(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    first, _ = await definition_service.register_definition(
        store, tenant, diamond(), make_context("reg-1")
    )
    await definition_service.register_definition(store, tenant, diamond(30), make_context())
    replay, created = await definition_service.register_definition(
        store, tenant, diamond(), make_context("reg-1")
    )
    assert (replay.definition.version, created) == (first.definition.version, False)
    with pytest.raises(FlowStateError) as reused:
        await definition_service.register_definition(
            store, tenant, diamond(40), make_context("reg-1")
        )
    assert reused.value.code is ErrorCode.REQUEST_ID_REUSED


async def test_validate_only_stores_nothing(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    would, created = await definition_service.register_definition(
        store, tenant, diamond(), make_context(), validate_only=True
    )
    assert (would.definition.version, created) == (1, False)
    rows = await fetch(
        database_url,
        "SELECT count(*) AS n FROM flow_definitions WHERE client_account_id = $1",
        tenant.client_account_id,
    )
    assert rows[0]["n"] == 0


async def test_an_invalid_document_stores_nothing(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    bad = diamond()
    bad["phases"][3]["depends_on"] = ["b", "ghost"]
    bad["phases"][0]["weight"] = 5
    with pytest.raises(FlowStateError) as refused:
        await definition_service.register_definition(store, tenant, bad, make_context("bad-1"))
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert {v["field"] for v in refused.value.details["field_violations"]} == {
        "phases",
        "phases[3].depends_on[1]",
    }
    rows = await fetch(
        database_url,
        "SELECT count(*) AS n FROM flow_definitions WHERE client_account_id = $1",
        tenant.client_account_id,
    )
    assert rows[0]["n"] == 0


async def test_tenants_never_see_each_others_definitions(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    other = other_of(tenant)
    await definition_service.register_definition(store, tenant, diamond(), make_context())
    with pytest.raises(FlowStateError) as hidden:
        await store.definitions.get("diamond", tenant=other)
    assert hidden.value.code is ErrorCode.DEFINITION_NOT_FOUND
    with pytest.raises(FlowStateError) as refused:
        await FlowService(store).create_flow(other, definition_name="diamond", ctx=make_context())
    assert refused.value.code is ErrorCode.DEFINITION_NOT_FOUND
    listed = await store.definitions.list_page(other)
    assert [d.definition.name for d in listed.definitions] == ["discovery"]
    # The other tenant may register the same name: its own version 1.
    theirs, created = await definition_service.register_definition(
        store, other, diamond(40), make_context()
    )
    assert (theirs.definition.version, created) == (1, True)
    mine = await store.definitions.get("diamond", tenant=tenant)
    assert mine.phase("d").weight == 25


async def test_shadowing_a_builtin_must_be_explicit(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    builtin_flow = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context()
    )
    with pytest.raises(FlowStateError) as refused:
        await definition_service.register_definition(
            store, tenant, diamond(name="discovery"), make_context()
        )
    assert refused.value.code is ErrorCode.DEFINITION_SHADOWS_BUILTIN
    shadow, created = await definition_service.register_definition(
        store, tenant, diamond(name="discovery"), make_context(), allow_shadow_builtin=True
    )
    assert (shadow.definition.version, created, shadow.builtin) == (2, True, False)
    new = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context()
    )
    assert new.flow.definition_version == 2
    assert [p.name for p in new.flow.phases] == ["a", "b", "c", "d"]
    # The flow of the built-in keeps its definition; other tenants still get the built-in.
    moved = await FlowService(store).mutate(
        tenant,
        builtin_flow.flow.flow_id,
        TransitionPhase("data_import", PhaseState.IN_PROGRESS),
        make_context(),
    )
    assert moved.flow.phase("data_import").state is PhaseState.IN_PROGRESS
    theirs = await store.definitions.get_stored("discovery", tenant=other_of(tenant))
    assert (theirs.definition.version, theirs.builtin) == (1, True)


async def test_listing_pages_by_name_and_by_version(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    for name in ("alpha", "beta", "gamma"):
        await definition_service.register_definition(
            store, tenant, diamond(name=name), make_context()
        )
    await definition_service.register_definition(
        store, tenant, diamond(30, name="beta"), make_context()
    )
    names: list[tuple[str, int]] = []
    token = ""
    while True:
        page = await store.definitions.list_page(tenant, page_size=2, page_token=token)
        names += [(d.definition.name, d.definition.version) for d in page.definitions]
        token = page.next_page_token
        if not token:
            break
    assert names == [("alpha", 1), ("beta", 2), ("discovery", 1), ("gamma", 1)]
    versions = await store.definitions.list_page(tenant, name="beta", page_size=1)
    assert [d.definition.version for d in versions.definitions] == [2]
    rest = await store.definitions.list_page(
        tenant, name="beta", page_size=1, page_token=versions.next_page_token
    )
    assert [d.definition.version for d in rest.definitions] == [1]
    with pytest.raises(FlowStateError) as bad:
        await store.definitions.list_page(tenant, page_token=versions.next_page_token)
    assert bad.value.code is ErrorCode.MALFORMED_REQUEST


async def test_row_level_security_on_definitions(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    await definition_service.register_definition(store, tenant, diamond(), make_context())
    other = other_of(tenant)
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL ROLE flowstate_app")
            await connection.execute(
                "SELECT set_config('flowstate.client_account_id', $1, true),"
                " set_config('flowstate.engagement_id', $2, true)",
                other.client_account_id,
                other.engagement_id,
            )
            visible = await connection.fetch("SELECT name FROM flow_definitions")
            assert {r["name"] for r in visible} == {"discovery"}
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(
                    "INSERT INTO flow_definitions (client_account_id, engagement_id, name,"
                    " version, body) VALUES ($1, $2, 'x', 1, '{}')",
                    tenant.client_account_id,
                    tenant.engagement_id,
                )
    finally:
        await connection.close()


async def test_migration_keeps_flows_and_refuses_to_drop_tenant_definitions(
    fresh_database_url: str, tenant: Tenant, make_context: ContextFactory
) -> None:
    await migrate.upgrade(fresh_database_url)
    store = await FlowStore.open(fresh_database_url)
    try:
        flow = (
            await FlowService(store).create_flow(
                tenant, definition_name="discovery", ctx=make_context()
            )
        ).flow
    finally:
        await store.close()
    await migrate.downgrade(fresh_database_url, "0004_stuck_flows_index")
    rows = await fetch(fresh_database_url, "SELECT definition_name FROM flows")
    assert [r["definition_name"] for r in rows] == ["discovery"]
    await migrate.upgrade(fresh_database_url)
    store = await FlowStore.open(fresh_database_url)
    try:
        moved = await FlowService(store).mutate(
            tenant,
            flow.flow_id,
            TransitionPhase("data_import", PhaseState.IN_PROGRESS),
            make_context(),
        )
        assert moved.flow.version == 2
        await definition_service.register_definition(store, tenant, diamond(), make_context())
    finally:
        await store.close()
    with pytest.raises(FlowStateError, match="tenant definition") as refused:
        await migrate.downgrade(fresh_database_url, "0004_stuck_flows_index")
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert await migrate.current_revision(fresh_database_url) == migrate.head_revision()
