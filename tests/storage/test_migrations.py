"""Migrations: reversible on a real database, and in step with the table metadata."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from flowstate.storage import migrate
from flowstate.storage.schema import include_in_autogenerate, metadata

EXPECTED_TABLES = {"flows", "flow_history", "idempotency_keys", "flow_definitions"}


async def _scalar_set(url: str, sql: str) -> set[Any]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return set((await conn.execute(text(sql))).scalars())
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    return await _scalar_set(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )


async def test_upgrade_downgrade_upgrade(fresh_database_url: str) -> None:
    assert await migrate.current_revision(fresh_database_url) is None

    await migrate.upgrade(fresh_database_url)
    assert await migrate.current_revision(fresh_database_url) == migrate.head_revision()
    assert EXPECTED_TABLES | {"legacy_discovery_flows"} <= await _tables(fresh_database_url)

    await migrate.downgrade(fresh_database_url, "base")
    assert await migrate.current_revision(fresh_database_url) is None
    assert await _tables(fresh_database_url) == {"alembic_version"}
    functions = await _scalar_set(
        fresh_database_url,
        "SELECT proname FROM pg_proc WHERE proname LIKE 'flowstate%'",
    )
    assert functions == set()

    await migrate.upgrade(fresh_database_url)
    assert await migrate.current_revision(fresh_database_url) == migrate.head_revision()
    assert await _tables(fresh_database_url) >= EXPECTED_TABLES


async def test_upgrade_twice_is_a_no_op(fresh_database_url: str) -> None:
    await migrate.upgrade(fresh_database_url)
    await migrate.upgrade(fresh_database_url)
    assert await migrate.current_revision(fresh_database_url) == migrate.head_revision()


async def test_metadata_matches_migrations(database_url: str) -> None:
    """No pending autogenerate diff: schema.py and the migrations describe the same tables."""
    engine = create_async_engine(database_url, poolclass=pool.NullPool)

    def diff(sync_connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            sync_connection,
            opts={"compare_type": True, "include_name": include_in_autogenerate},
        )
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []


async def test_history_partitioning_up_and_down_keeps_every_row(
    fresh_database_url: str,
) -> None:
    """Migration 0008 (history partitions) on a database with data: down to one table and up
    to partitions again, every history row (seq and txid too) is kept, and new entries continue
    the identity."""
    from flowstate.core.commands import CancelFlow, Context
    from flowstate.core.model import Tenant
    from flowstate.service import FlowService
    from flowstate.storage import FlowStore

    from .support import fetch

    await migrate.upgrade(fresh_database_url)
    tenant = Tenant("acct-migration", "partitions")
    store = await FlowStore.open(fresh_database_url, pool_size=2)
    try:
        service = FlowService(store)
        for moment in (datetime(2024, 1, 5, tzinfo=UTC), datetime.now(UTC)):
            ctx = Context(now=moment, user_id="tester", request_id="", is_admin=False)
            for _ in range(3):
                created = await service.create_flow(tenant, definition_name="discovery", ctx=ctx)
                await service.mutate(tenant, created.flow.flow_id, CancelFlow("x"), ctx)
    finally:
        await store.close()
    # Without the columns later migrations add (0012: approval, alert; 0017: the facts after
    # each entry), which a downgrade below 0008 removes with their migrations.
    dump = (
        "SELECT (to_jsonb(h) - 'approval' - 'alert' - 'phase_states_after'"
        " - 'error_codes_after')::text AS r FROM flow_history h ORDER BY seq"
    )
    before = [r["r"] for r in await fetch(fresh_database_url, dump)]
    assert len(before) == 12

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    partitions = scripts.get_revision("0008_history_partitions")
    assert partitions is not None
    assert isinstance(partitions.down_revision, str)
    await migrate.downgrade(fresh_database_url, partitions.down_revision)
    assert [r["r"] for r in await fetch(fresh_database_url, dump)] == before
    kind = "SELECT relkind::text AS k FROM pg_class WHERE relname = 'flow_history'"
    assert (await fetch(fresh_database_url, kind))[0]["k"] == "r"

    await migrate.upgrade(fresh_database_url)
    assert [r["r"] for r in await fetch(fresh_database_url, dump)] == before
    assert (await fetch(fresh_database_url, kind))[0]["k"] == "p"
    homes = await fetch(
        fresh_database_url,
        "SELECT tableoid::regclass::text AS p, count(*) AS n FROM flow_history GROUP BY 1",
    )
    this_month = f"flow_history_{datetime.now(UTC):%Y_%m}"
    assert {r["p"]: r["n"] for r in homes} == {"flow_history_2024_01": 6, this_month: 6}
    store = await FlowStore.open(fresh_database_url, pool_size=2)
    try:
        ctx = Context(now=datetime.now(UTC), user_id="tester", request_id="", is_admin=False)
        created = await FlowService(store).create_flow(tenant, definition_name="discovery", ctx=ctx)
    finally:
        await store.close()
    newest = await fetch(
        fresh_database_url, "SELECT seq FROM flow_history WHERE flow_id = $1", created.flow.flow_id
    )
    assert newest[0]["seq"] > max(json.loads(r)["seq"] for r in before)


async def test_hot_history_reads_use_indexes_on_every_partition(database_url: str) -> None:
    """The reads of one flow's history and of the tenant change log can be served by each
    partition's index (no sequential scan of any partition when the planner must choose)."""
    from flowstate.storage.changes import _READ
    from flowstate.storage.statements import SELECT_HISTORY

    from .support import asyncpg_dsn

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL enable_seqscan = off")
            plans = []
            for statement, params in (
                (
                    SELECT_HISTORY,
                    {
                        "account": "a",
                        "engagement": "e",
                        "after_version": 0,
                        "flow_id": str(uuid.uuid4()),
                        "limit": 100,
                    },
                ),
                (
                    _READ,
                    {
                        "account": "a",
                        "engagement": "e",
                        "after_txid": 0,
                        "after_seq": 0,
                        "horizon": 2**40,
                        "limit": 100,
                    },
                ),
            ):
                rows = await connection.fetch("EXPLAIN " + statement.sql, *statement.args(params))
                plans.append("\n".join(r[0] for r in rows))
    finally:
        await connection.close()
    for plan in plans:
        assert "flow_history" in plan
        assert "Seq Scan on flow_history" not in plan, plan


async def test_child_flow_columns_up_and_down(fresh_database_url: str) -> None:
    """Migration 0013: the parent link, external dependencies and children index come and go."""
    columns = (
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'flows'"
        " AND column_name IN ('parent_flow_id', 'parent_phase', 'external_dependencies')"
    )
    child_flows = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(
        "0013_child_flows"
    )
    assert child_flows is not None
    assert isinstance(child_flows.down_revision, str)
    await migrate.upgrade(fresh_database_url, "0013_child_flows")
    assert await _scalar_set(fresh_database_url, columns) == {
        "parent_flow_id",
        "parent_phase",
        "external_dependencies",
    }
    await migrate.downgrade(fresh_database_url, child_flows.down_revision)
    assert await _scalar_set(fresh_database_url, columns) == set()
    await migrate.upgrade(fresh_database_url)
    assert len(await _scalar_set(fresh_database_url, columns)) == 3


async def test_webhook_filter_column_up_and_down(fresh_database_url: str) -> None:
    """Migration 0014: webhook_subscriptions.filter ('' for existing rows) comes and goes."""
    column = (
        "SELECT column_default FROM information_schema.columns"
        " WHERE table_name = 'webhook_subscriptions' AND column_name = 'filter'"
    )
    await migrate.upgrade(fresh_database_url, "0014_webhook_filter")
    assert await _scalar_set(fresh_database_url, column) == {"''::text"}
    await migrate.downgrade(fresh_database_url, "0013_child_flows")
    assert await _scalar_set(fresh_database_url, column) == set()
    await migrate.upgrade(fresh_database_url)
    assert await _scalar_set(fresh_database_url, column) == {"''::text"}


async def test_archive_trees_up_and_down_releases_what_the_old_archiver_left_unpurgeable(
    fresh_database_url: str,
) -> None:
    """Migration 0015: the tree-aware purge and the dependents index come and go; the archive
    records the old archiver (0008) left pending for a parent whose child lives are dropped from
    the catalog (the flow is archived again with its tree), those of a whole tree are kept."""
    from flowstate.core.commands import CancelFlow, Context, TransitionPhase
    from flowstate.core.definition_document import definition_from_document
    from flowstate.core.model import PhaseState, Tenant
    from flowstate.service import FlowService
    from flowstate.storage import FlowStore

    from .support import fetch

    await migrate.upgrade(fresh_database_url)
    store = await FlowStore.open(fresh_database_url, pool_size=2)
    tenant = Tenant("acct-0015", "trees")
    now = datetime.now(UTC)
    ctx = Context(now=now, user_id="test", request_id="")
    try:
        service = FlowService(store)
        for document in (
            {"name": "leaf", "phases": [{"name": "a", "weight": 100}]},
            {
                "name": "root",
                "phases": [
                    {
                        "name": "sub",
                        "weight": 100,
                        "kind": "child_flow",
                        "child_flow": {"definition": "leaf", "on_parent_cancel": "abandon"},
                    }
                ],
            },
        ):
            await store.definitions.register(
                tenant, definition_from_document(document), request_id=uuid.uuid4().hex, now=now
            )
        parent = (await service.create_flow(tenant, definition_name="root", ctx=ctx)).flow
        started = await service.mutate(
            tenant, parent.flow_id, TransitionPhase("sub", PhaseState.IN_PROGRESS), ctx
        )
        [child] = [p.child_flow_id for p in started.flow.phases]
        await service.mutate(tenant, parent.flow_id, CancelFlow("done"), ctx)  # child lives
        alone = (await service.create_flow(tenant, definition_name="leaf", ctx=ctx)).flow
        await service.mutate(tenant, alone.flow_id, CancelFlow("done"), ctx)
    finally:
        await store.close()
    await migrate.downgrade(fresh_database_url, "0014_webhook_filter")
    await fetch(
        fresh_database_url,
        "INSERT INTO flow_archives (flow_id, client_account_id, engagement_id, flow_version,"
        " entry_count, location, sha256) SELECT id, client_account_id, engagement_id, version,"
        " 0, 'by 0013', '' FROM flows WHERE id = ANY($1::uuid[])",
        [parent.flow_id, alone.flow_id],
    )

    await migrate.upgrade(fresh_database_url, "0015_archive_trees")

    pending = await _scalar_set(
        fresh_database_url, "SELECT flow_id::text FROM flow_archives WHERE purged_at IS NULL"
    )
    assert pending == {alone.flow_id}
    indexes = "SELECT indexname FROM pg_indexes WHERE indexname = 'ix_flows_external_dependencies'"
    assert await _scalar_set(fresh_database_url, indexes) == {"ix_flows_external_dependencies"}
    purged = await fetch(
        fresh_database_url,
        "SELECT * FROM flowstate_purge_archived_flows($1::uuid[])",
        [parent.flow_id, child, alone.flow_id],
    )
    assert (purged[0]["flows"], purged[0]["entries"]) == (1, 2)  # the lone flow only

    await migrate.downgrade(fresh_database_url, "0014_webhook_filter")
    assert await _scalar_set(fresh_database_url, indexes) == set()
    functions = "SELECT proname FROM pg_proc WHERE proname = 'flowstate_purgeable_flows'"
    assert await _scalar_set(fresh_database_url, functions) == set()
    await migrate.upgrade(fresh_database_url)


async def test_purge_counts_up_and_down(fresh_database_url: str) -> None:
    """Migration 0016: the sanctioned delete answers the flows its own DELETE removed
    (``ROW_COUNT``); downgrade restores 0015's count of the flows it chose."""
    body = (
        "SELECT prosrc LIKE '%GET DIAGNOSTICS v_flows = ROW_COUNT%' FROM pg_proc"
        " WHERE proname = 'flowstate_purge_archived_flows'"
    )
    await migrate.upgrade(fresh_database_url, "0016_purge_counts")
    assert await _scalar_set(fresh_database_url, body) == {True}
    await migrate.downgrade(fresh_database_url, "0015_archive_trees")
    assert await _scalar_set(fresh_database_url, body) == {False}
    await migrate.upgrade(fresh_database_url)
    assert await _scalar_set(fresh_database_url, body) == {True}


async def test_history_facts_columns_up_and_down(fresh_database_url: str) -> None:
    """Migration 0017: flow_history.phase_states_after / error_codes_after (nullable, on every
    partition) come and go."""
    columns = (
        "SELECT DISTINCT column_name FROM information_schema.columns"
        " WHERE table_name LIKE 'flow_history%' AND is_nullable = 'YES'"
        " AND column_name IN ('phase_states_after', 'error_codes_after')"
    )
    await migrate.upgrade(fresh_database_url, "0017_history_facts")
    assert await _scalar_set(fresh_database_url, columns) == {
        "phase_states_after",
        "error_codes_after",
    }
    await migrate.downgrade(fresh_database_url, "0016_purge_counts")
    assert await _scalar_set(fresh_database_url, columns) == set()
    await migrate.upgrade(fresh_database_url)
    assert len(await _scalar_set(fresh_database_url, columns)) == 2
