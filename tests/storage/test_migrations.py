"""Migrations: reversible on a real database, and in step with the table metadata."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from flowstate.storage import migrate
from flowstate.storage.schema import metadata

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
        context = MigrationContext.configure(sync_connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []
