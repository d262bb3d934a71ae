"""Stable plans: statements that look a flow up by id use its primary key, whatever the stats.

Checked with ``EXPLAIN (FORMAT JSON)`` as the store runs them (the app role inside a tenant, so
row-level security adds its conditions), with the generic plan a prepared statement settles on
and a custom one, on an empty table, on a large table that was never analyzed (the case that
read every flow of the tenant per transition before migration 0006) and after ANALYZE.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import pytest

from flowstate.core.model import Tenant
from flowstate.storage import migrate
from flowstate.storage.sql import Compiled
from flowstate.storage.statements import (
    FLOW_EXISTS,
    LOCK_FLOW,
    LOCK_FLOWS,
    WRITE_BATCH,
    enter_tenant,
)

from .support import asyncpg_dsn

TENANT = Tenant("plans-account", "plans-engagement")
LARGE = 30_000

ParamsFactory = Callable[[], Mapping[str, Any]]


def _by_id() -> Mapping[str, Any]:
    return {
        "account": TENANT.client_account_id,
        "engagement": TENANT.engagement_id,
        "flow_id": str(uuid.uuid4()),
        "request_id": "plans-request",
    }


def _batch() -> Mapping[str, Any]:
    return {
        "account": TENANT.client_account_id,
        "engagement": TENANT.engagement_id,
        "flow_ids": [str(uuid.uuid4()) for _ in range(8)],
        "request_ids": ["a", "b"],
        "states": [],
        "final": [1, 2],
        "entries": [],
        "keys": [],
        "notify": [],
    }


STATEMENTS: dict[str, tuple[Compiled, ParamsFactory]] = {
    "lock": (LOCK_FLOW, _by_id),
    "exists": (FLOW_EXISTS, _by_id),
    "lock a batch": (LOCK_FLOWS, _batch),
    "write a batch": (WRITE_BATCH, _batch),
}


def _index_names(node: Mapping[str, Any]) -> list[str]:
    names = [node["Index Name"]] if "Index Name" in node else []
    for child in node.get("Plans", []):
        names.extend(_index_names(child))
    return names


def _flow_scans(node: Mapping[str, Any]) -> list[str]:
    """How each scan of `flows` in a plan reads it: the index(es), or the node type (Seq Scan)."""
    found = []
    if node.get("Relation Name") == "flows" and node["Node Type"] != "ModifyTable":
        if "Index Name" in node:
            found.append(node["Index Name"])
        elif node["Node Type"] == "Bitmap Heap Scan":  # the bitmap's index scans below it
            found.extend(_index_names(node) or [node["Node Type"]])
        else:
            found.append(node["Node Type"])
        return found
    for child in node.get("Plans", []):
        found.extend(_flow_scans(child))
    return found


async def _scans(
    connection: asyncpg.Connection[Any], statement: Compiled, params: Mapping[str, Any], mode: str
) -> list[str]:
    async with connection.transaction():
        await connection.execute(enter_tenant(TENANT))
        await connection.execute(f"SET LOCAL plan_cache_mode = {mode}")
        prepared = await connection.prepare("EXPLAIN (FORMAT JSON) " + statement.sql)
        plan = json.loads(await prepared.fetchval(*statement.args(params)))
    return _flow_scans(plan[0]["Plan"])


async def _assert_primary_key(connection: asyncpg.Connection[Any], table_state: str) -> None:
    for name, (statement, params) in STATEMENTS.items():
        for mode in ("force_generic_plan", "force_custom_plan"):
            scans = await _scans(connection, statement, params(), mode)
            assert scans, f"{name}: no scan of flows in the plan"
            assert set(scans) == {"pk_flows"}, (name, mode, table_state, scans)


async def test_lookups_by_id_use_the_primary_key_whatever_the_statistics(
    fresh_database_url: str,
) -> None:
    await migrate.upgrade(fresh_database_url)
    connection = await asyncpg.connect(asyncpg_dsn(fresh_database_url))
    try:
        # Autovacuum must not analyze behind the test's back: the point is a table without stats.
        await connection.execute("ALTER TABLE flows SET (autovacuum_enabled = false)")
        await _assert_primary_key(connection, "empty")

        await connection.execute(
            """
            INSERT INTO flows (id, client_account_id, engagement_id, definition_name,
                               definition_version, status, version, phase_states,
                               phase_details, progress, created_at, updated_at)
            SELECT gen_random_uuid(), CASE WHEN n % 10 = 0 THEN 'other' ELSE $1 END, $2,
                   'discovery', 1, 'RUNNING', 1, '{}', '[]', 0, now(), now()
              FROM generate_series(1, $3) AS n
            """,
            TENANT.client_account_id,
            TENANT.engagement_id,
            LARGE,
        )
        analyzed = await connection.fetchval(
            "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL"
            " FROM pg_stat_user_tables WHERE relname = 'flows'"
        )
        assert not analyzed
        await _assert_primary_key(connection, "large, never analyzed")

        await connection.execute("ANALYZE flows")
        await _assert_primary_key(connection, "large, analyzed")
    finally:
        await connection.close()


@pytest.mark.parametrize("tenant_sees", [True, False])
async def test_the_policy_still_isolates_tenants(
    fresh_database_url: str, tenant_sees: bool
) -> None:
    """The rewritten policy passes exactly the tenant's rows (and none with no tenant set)."""
    await migrate.upgrade(fresh_database_url)
    connection = await asyncpg.connect(asyncpg_dsn(fresh_database_url))
    try:
        await connection.execute(
            """
            INSERT INTO flows (id, client_account_id, engagement_id, definition_name,
                               definition_version, status, version, phase_states,
                               phase_details, progress, created_at, updated_at)
            VALUES (gen_random_uuid(), $1, $2, 'discovery', 1, 'RUNNING', 1, '{}', '[]', 0,
                    now(), now()),
                   (gen_random_uuid(), $1, 'another', 'discovery', 1, 'RUNNING', 1, '{}', '[]', 0,
                    now(), now())
            """,
            TENANT.client_account_id,
            TENANT.engagement_id,
        )
        async with connection.transaction():
            if tenant_sees:
                await connection.execute(enter_tenant(TENANT))
            else:
                await connection.execute("SET LOCAL ROLE flowstate_app")
            rows = await connection.fetch("SELECT engagement_id FROM flows")
        assert [r["engagement_id"] for r in rows] == ([TENANT.engagement_id] if tenant_sees else [])
    finally:
        await connection.close()
