"""Schema migrations: Alembic configured in code, so `flowstate migrate` works from any cwd.

The migration scripts live in ``flowstate/storage/migrations``; there is no ``alembic.ini``.
Every function takes a database URL (any form `normalize_database_url` accepts), opens one
connection without a pool, runs Alembic inside one transaction and closes it again. Failures
are domain errors: StoreUnavailable when the database cannot be reached, MALFORMED_REQUEST
(``field="revision"``) for a revision Alembic does not know, `MigrationPrivilegesError` when the
migrating role may not do what the migration needs (with the SQL a DBA must run), and
`DatabaseSetupError` for any other privilege the database refused.

Roles (docs/operations.md, "Database roles"): the first migration creates the NOLOGIN role
``flowstate_app`` that every store transaction switches to, and makes the migrating role a
member of it. A database owner that is not a superuser can do that only with CREATEROLE (or
when a DBA already created the role and granted it); `upgrade` checks this before it changes
anything, so such an owner gets one message with the exact SQL instead of a half-run
migration.

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
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode
from flowstate.storage.errors import (
    DatabaseSetupError,
    MigrationPrivilegesError,
    postgres_message,
    sqlstate,
    to_store_error,
)
from flowstate.storage.limits import malformed
from flowstate.storage.schema import APP_ROLE
from flowstate.storage.urls import normalize_database_url

T = TypeVar("T")

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "check_role_privileges",
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
        if sqlstate(exc) == _INSUFFICIENT_PRIVILEGE:
            raise _refused(exc) from exc
        raise to_store_error(exc) from exc


_INSUFFICIENT_PRIVILEGE = "42501"
_POSTGRES_16 = 160000  # server_version_num from which CREATEROLE alone may not grant a role

# What the migrating role may do about the app role (one round trip, before any change).
_ROLE_PRIVILEGES = text(
    """
    SELECT quote_ident(current_user) AS me,
           r.rolsuper AS superuser,
           r.rolcreaterole AS createrole,
           a.oid IS NOT NULL AS app_role_exists,
           COALESCE(pg_has_role(current_user, a.oid, 'MEMBER'), false) AS member,
           COALESCE(pg_has_role(current_user, a.oid, 'MEMBER WITH ADMIN OPTION'), false) AS admin,
           current_setting('server_version_num')::int AS server_version
    FROM pg_roles r LEFT JOIN pg_roles a ON a.rolname = :app_role
    WHERE r.rolname = current_user
    """
)


def check_role_privileges(connection: Connection) -> None:
    """Raise MigrationPrivilegesError unless the first migration can set up the app role.

    It must create ``flowstate_app`` when it does not exist (superuser or CREATEROLE) and make
    the migrating role a member (already one, superuser, ADMIN OPTION on the role, or
    CREATEROLE before PostgreSQL 16, which gives its creator ADMIN OPTION instead).
    """
    row = connection.execute(_ROLE_PRIVILEGES, {"app_role": APP_ROLE}).mappings().one()
    me: str = row["me"]
    if not row["app_role_exists"]:
        if not (row["superuser"] or row["createrole"]):
            raise MigrationPrivilegesError(
                f"the role {me} may not create the role {APP_ROLE} (it is neither a superuser "
                "nor has it CREATEROLE)",
                sql=f"CREATE ROLE {APP_ROLE} NOLOGIN; GRANT {APP_ROLE} TO {me};",
                user=me,
            )
        return
    may_grant = (
        row["superuser"]
        or row["admin"]
        or (row["createrole"] and row["server_version"] < _POSTGRES_16)
    )
    if not (row["member"] or may_grant):
        raise MigrationPrivilegesError(
            f"the role {me} is not a member of the role {APP_ROLE} and may not grant it to itself",
            sql=f"GRANT {APP_ROLE} TO {me};",
            user=me,
        )


def _refused(exc: BaseException) -> DatabaseSetupError:
    """A privilege the database refused during a migration, named by PostgreSQL's message."""
    reason = postgres_message(exc) or "permission denied"
    return DatabaseSetupError(
        ErrorCode.INTERNAL,
        f"the database refused the migration: {reason}. Run `flowstate migrate upgrade` as the "
        'owner of the database (docs/operations.md, "Database roles")',
        retry_allowed=False,
        sqlstate=_INSUFFICIENT_PRIVILEGE,
    )


async def _run(
    database_url: str, action: Callable[[Config], None], *, check_roles: bool = False
) -> None:
    engine = create_async_engine(normalize_database_url(database_url), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:

            def run(sync_connection: Connection) -> None:
                if (
                    check_roles
                    and MigrationContext.configure(sync_connection).get_current_revision() is None
                ):
                    check_role_privileges(sync_connection)
                config = alembic_config()
                config.attributes["connection"] = sync_connection
                action(config)

            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database to `revision` (default: head) in one transaction."""
    await _guarded(
        _run(database_url, lambda config: command.upgrade(config, revision), check_roles=True)
    )


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
