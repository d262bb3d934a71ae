"""Alembic environment of the Flowstate schema.

Run through `flowstate.storage.migrate` (or `flowstate migrate`), which builds the Alembic
configuration in code and hands over an open connection in ``config.attributes["connection"]``.
Without one (e.g. ``alembic`` pointed at this directory by hand), an async engine is made from
the ``sqlalchemy.url`` option. Concurrent upgrades (several replicas started with migrations
enabled) are serialised by a transaction-scoped advisory lock taken before the current
revision is read.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import async_engine_from_config

from flowstate.storage.schema import include_in_autogenerate, metadata

MIGRATION_LOCK_KEY = 0x466C6F7753746174  # "FlowStat": any constant shared by all replicas

config = context.config


def _run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        include_name=include_in_autogenerate,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _run_with_own_engine() -> None:
    engine = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    shared_connection = config.attributes.get("connection")
    if shared_connection is None:
        asyncio.run(_run_with_own_engine())
    else:
        _run_migrations(shared_connection)
