"""Rules the database itself enforces: append-only history, app role grants."""

from __future__ import annotations

import asyncpg
import pytest

from flowstate.core.model import Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore

from .support import ContextFactory, asyncpg_dsn


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE flow_history SET reason = 'rewritten' WHERE flow_id = $1",
        "DELETE FROM flow_history WHERE flow_id = $1",
    ],
    ids=["update", "delete"],
)
async def test_history_is_append_only_even_for_the_owner(
    store: FlowStore,
    tenant: Tenant,
    make_context: ContextFactory,
    database_url: str,
    statement: str,
) -> None:
    created = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context()
    )
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await connection.execute(statement, created.flow.flow_id)
        async with connection.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await connection.execute("TRUNCATE flow_history CASCADE")
    finally:
        await connection.close()
    assert len((await store.list_history(tenant, created.flow.flow_id)).entries) == 1


async def test_the_app_role_cannot_delete_history_or_flows(database_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        privileges = await connection.fetch(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = 'flowstate_app'"
        )
    finally:
        await connection.close()
    granted = {(p["table_name"], p["privilege_type"]) for p in privileges}
    assert ("flow_history", "INSERT") in granted
    assert ("flow_history", "DELETE") not in granted
    assert ("flow_history", "UPDATE") not in granted
    assert ("flows", "DELETE") not in granted
