"""Schema migrations: Alembic configured in code, so `flowstate migrate` works from any cwd.

The migration scripts live in ``flowstate/storage/migrations``; there is no ``alembic.ini``.
Every function takes a database URL (any form `normalize_database_url` accepts), opens one
connection without a pool, runs Alembic inside one transaction and closes it again. Failures
are domain errors: StoreUnavailable when the database cannot be reached, MALFORMED_REQUEST
(``field="revision"``) for a revision Alembic does not know.

To write a new revision during development::

    python -c "from alembic import command; from flowstate.storage.migrate import \\
        alembic_config; command.revision(alembic_config(URL), 'what changed', autogenerate=True)"

(``autogenerate`` needs a database at head; review what it writes: it sees tables, not
policies, triggers or views.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from flowstate.core.errors import FlowStateError
from flowstate.storage.errors import to_store_error
from flowstate.storage.limits import malformed
from flowstate.storage.urls import normalize_database_url

T = TypeVar("T")

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""Alembic's script location (env.py, versions/)."""


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic `Config` for the Flowstate migrations, optionally pointing at a database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if database_url is not None:
        # ConfigParser interpolation: a literal % must be doubled.
        config.set_main_option(
            "sqlalchemy.url", normalize_database_url(database_url).replace("%", "%%")
        )
    return config


def head_revision() -> str:
    """The revision this build of Flowstate needs (the single head of the scripts)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise RuntimeError("no migration scripts found")
    return head


async def _guarded(operation: Awaitable[T]) -> T:
    try:
        return await operation
    except FlowStateError:
        raise
    except CommandError as exc:
        raise malformed("revision", str(exc)) from None
    except Exception as exc:
        raise to_store_error(exc) from exc


async def _run(database_url: str, action: Callable[[Config], None]) -> None:
    engine = create_async_engine(normalize_database_url(database_url), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:

            def run(sync_connection: Connection) -> None:
                config = alembic_config()
                config.attributes["connection"] = sync_connection
                action(config)

            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database to `revision` (default: head) in one transaction."""
    await _guarded(_run(database_url, lambda config: command.upgrade(config, revision)))


async def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the database to `revision` ("base" removes everything) in one transaction."""
    await _guarded(_run(database_url, lambda config: command.downgrade(config, revision)))


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None when it has never been migrated."""
    return await _guarded(_current_revision(database_url))


async def _current_revision(database_url: str) -> str | None:
    engine = create_async_engine(normalize_database_url(database_url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:

            def read(sync_connection: Connection) -> str | None:
                return MigrationContext.configure(sync_connection).get_current_revision()

            return await connection.run_sync(read)
    finally:
        await engine.dispose()
