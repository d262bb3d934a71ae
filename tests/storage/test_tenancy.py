"""Tenancy: another tenant's flow does not exist, by the queries and by row-level security."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from flowstate.core.commands import PauseFlow
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowQuery, FlowStore

from .support import ContextFactory, asyncpg_dsn, history_versions


@pytest.fixture
def other(tenant: Tenant) -> Tenant:
    """A second tenant sharing the account (only the engagement differs)."""
    return Tenant(tenant.client_account_id, tenant.engagement_id + "-b")


@pytest_asyncio.fixture
async def flow_id(store: FlowStore, tenant: Tenant, make_context: ContextFactory) -> str:
    """A flow of `tenant`."""
    created = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context()
    )
    return created.flow.flow_id


async def test_another_tenant_cannot_read_or_change_the_flow(
    store: FlowStore,
    tenant: Tenant,
    other: Tenant,
    flow_id: str,
    make_context: ContextFactory,
    database_url: str,
) -> None:
    attempts = {
        "get": store.get_flow(other, flow_id),
        "mutate": FlowService(store).mutate(other, flow_id, PauseFlow(), make_context()),
        "history": store.list_history(other, flow_id),
        "changes": store.read_changes(other, flow_id, 0, 10),
    }
    for name, attempt in attempts.items():
        with pytest.raises(FlowStateError) as refused:
            await attempt
        assert refused.value.code is ErrorCode.FLOW_NOT_FOUND, name
        assert refused.value.details == {"flow_id": flow_id}

    assert (await store.list_flows(other, FlowQuery())).flows == ()
    assert (await store.list_flows(other, FlowQuery(flow_ids=(flow_id,)))).flows == ()
    assert await history_versions(database_url, flow_id) == [1]
    assert (await store.get_flow(tenant, flow_id)).version == 1


async def test_a_missing_flow_is_not_found(store: FlowStore, tenant: Tenant) -> None:
    with pytest.raises(FlowStateError) as refused:
        await store.get_flow(tenant, "00000000-0000-4000-8000-000000000000")
    assert refused.value.code is ErrorCode.FLOW_NOT_FOUND


@pytest_asyncio.fixture
async def app_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection (as the superuser) inside a transaction, for RLS probes."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


async def _enter(connection: asyncpg.Connection, tenant: Tenant | None) -> None:
    await connection.execute("SET LOCAL ROLE flowstate_app")
    if tenant is not None:
        await connection.execute(
            "SELECT set_config('flowstate.client_account_id', $1, true),"
            " set_config('flowstate.engagement_id', $2, true)",
            tenant.client_account_id,
            tenant.engagement_id,
        )


@pytest.mark.parametrize("table", ["flows", "flow_history", "idempotency_keys"])
async def test_row_level_security_hides_other_tenants_even_without_a_where_clause(
    store: FlowStore,
    tenant: Tenant,
    other: Tenant,
    make_context: ContextFactory,
    app_connection: asyncpg.Connection,
    table: str,
) -> None:
    await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context("rls-1")
    )
    await _enter(app_connection, other)
    assert await app_connection.fetchval(f"SELECT count(*) FROM {table}") == 0
    await _enter(app_connection, tenant)
    assert await app_connection.fetchval(f"SELECT count(*) FROM {table}") == 1


async def test_row_level_security_without_settings_sees_nothing(
    store: FlowStore, tenant: Tenant, flow_id: str, app_connection: asyncpg.Connection
) -> None:
    await _enter(app_connection, None)
    assert await app_connection.fetchval("SELECT count(*) FROM flows") == 0


async def test_row_level_security_refuses_writing_into_another_tenant(
    store: FlowStore,
    tenant: Tenant,
    other: Tenant,
    flow_id: str,
    app_connection: asyncpg.Connection,
) -> None:
    await _enter(app_connection, other)
    updated = await app_connection.execute(
        "UPDATE flows SET display_name = 'hijacked' WHERE id = $1", flow_id
    )
    assert updated == "UPDATE 0"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_connection.execute(
            "INSERT INTO idempotency_keys (client_account_id, engagement_id, request_id,"
            " operation, fingerprint, flow_id, response, created_at, expires_at)"
            " VALUES ($1, $2, 'x', 'mutate', 'f', $3, '{}', now(), now())",
            tenant.client_account_id,
            tenant.engagement_id,
            flow_id,
        )


async def test_the_read_functions_enter_the_tenant_as_the_app_role(
    tenant: Tenant, flow_id: str, app_connection: asyncpg.Connection
) -> None:
    """flowstate_get_flow / flowstate_flow_history switch role and settings themselves."""
    rows = await app_connection.fetch(
        "SELECT * FROM flowstate_get_flow($1, $2, $3)",
        tenant.client_account_id,
        tenant.engagement_id,
        flow_id,
    )
    assert [str(r["id"]) for r in rows] == [flow_id]
    assert await app_connection.fetchval("SELECT current_user") == "flowstate_app"
    assert (
        await app_connection.fetchval("SELECT current_setting('flowstate.engagement_id')")
        == tenant.engagement_id
    )
    with pytest.raises(asyncpg.NoDataFoundError):
        await app_connection.fetch(
            "SELECT * FROM flowstate_flow_history($1, $2, $3, 0, 10)",
            tenant.client_account_id,
            tenant.engagement_id + "-b",
            flow_id,
        )
