"""``flowstate migrate upgrade`` as a database owner that is not a superuser (Debian's PG 15).

The roles a DBA would create (docs/operations.md, "Database roles"): an owner with LOGIN and a
password, no SUPERUSER, owning its database. Without CREATEROLE the owner gets one message with
the exact SQL to run; after a DBA ran it, the same command migrates, and the owner serves flows.
With CREATEROLE the owner creates the app role itself. Each test has its own owner and database
in this module's own cluster (roles are cluster-wide) and leaves no role behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowstate.cli.main import main
from flowstate.core.model import Tenant
from flowstate.storage.migrate import head_revision
from flowstate.testing import serve_in_process
from flowstate.testing_postgres import ExternalPostgres, external_postgres

from .conftest import run_flows

APP_ROLE = "flowstate_app"


@dataclass(frozen=True)
class Owner:
    """A login role owning one database."""

    name: str
    password: str
    database: str
    url: str


@dataclass(frozen=True)
class Run:
    """What one in-process `flowstate` command printed."""

    code: int
    out: str
    err: str


def flowstate(*argv: str) -> Run:
    """Run the `flowstate` command line in this process, capturing what it prints."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def cluster(pg_binaries: Path) -> Iterator[ExternalPostgres]:
    """This module's own PostgreSQL 15, so that no other test's app role is already there."""
    with external_postgres(bindir=pg_binaries) as started:
        yield started


@pytest.fixture
def make_owner(cluster: ExternalPostgres) -> Iterator[Callable[..., Owner]]:
    """``make_owner(createrole=False)``: a fresh owner and database; dropped with the app role."""
    made: list[Owner] = []

    def make(*, createrole: bool = False) -> Owner:
        name = f"owner_{uuid.uuid4().hex[:8]}"
        password = uuid.uuid4().hex
        cluster.psql(
            f"CREATE ROLE {name} LOGIN PASSWORD '{password}'"
            + (" CREATEROLE" if createrole else "")
            + f"; CREATE DATABASE {name} OWNER {name}"
        )
        owner = Owner(
            name, password, name, cluster.url(user=name, password=password, database=name)
        )
        made.append(owner)
        return owner

    yield make
    for owner in made:
        cluster.psql(f"DROP DATABASE IF EXISTS {owner.database} WITH (FORCE)")
    cluster.psql(f"DROP ROLE IF EXISTS {APP_ROLE}")
    for owner in made:
        cluster.psql(f"DROP ROLE IF EXISTS {owner.name}")


def dba_sql(stderr: str) -> str:
    """The SQL the error tells a DBA to run (the indented line after the message)."""
    match = re.search(r"^    (\S.*;)$", stderr, re.MULTILINE)
    assert match is not None, stderr
    return match.group(1)


def tables(cluster: ExternalPostgres, database: str) -> str:
    return cluster.psql(
        "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'",
        database=database,
    )


async def test_an_owner_without_createrole_gets_the_sql_to_run_then_migrates_and_serves(
    cluster: ExternalPostgres, make_owner: Callable[..., Owner]
) -> None:
    owner = make_owner()

    refused = await asyncio.to_thread(flowstate, "migrate", "upgrade", "--database-url", owner.url)

    assert refused.code == 1
    assert refused.out == ""
    assert refused.err == (
        f"flowstate: error: FAILED_PRECONDITION: the role {owner.name} may not create the role "
        f"{APP_ROLE} (it is neither a superuser nor has it CREATEROLE). Ask a DBA to run, then "
        "run `flowstate migrate upgrade` again:\n\n"
        f"    CREATE ROLE {APP_ROLE} NOLOGIN; GRANT {APP_ROLE} TO {owner.name};\n\n"
    )
    assert tables(cluster, owner.database) == ""  # nothing was changed

    cluster.psql(dba_sql(refused.err))
    migrated = await asyncio.to_thread(flowstate, "migrate", "upgrade", "--database-url", owner.url)

    assert migrated.code == 0, migrated.err
    assert migrated.out == f"database revision: {head_revision()} (head: {head_revision()})\n"
    assert migrated.err == ""
    assert "flows" in tables(cluster, owner.database).split(",")

    # The owner serves: a flow is created and read back through the real server.
    async with serve_in_process(owner.url) as server:
        token = server.mint(Tenant("acme", "migration-1"), scopes=["flows:read", "flows:write"])
        connection = ("--address", server.address, "--token", token)
        created = await asyncio.to_thread(run_flows, "create", *connection)
        listed = await asyncio.to_thread(run_flows, "list", *connection)
    assert created.code == 0, created.err
    assert "status      INITIALIZED" in created.out
    flow_id = created.out.split()[1]
    assert flow_id in listed.out

    # And may undo it all: the app role, which it may not drop, stays.
    downgraded = await asyncio.to_thread(
        flowstate, "migrate", "downgrade", "base", "--database-url", owner.url
    )
    assert downgraded.code == 0, downgraded.err
    assert downgraded.out == f"database revision: none (head: {head_revision()})\n"
    assert cluster.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{APP_ROLE}'") == "1"


def test_an_owner_who_is_not_a_member_of_the_existing_app_role_gets_the_grant_to_run(
    cluster: ExternalPostgres, make_owner: Callable[..., Owner]
) -> None:
    cluster.psql(f"CREATE ROLE {APP_ROLE} NOLOGIN")  # a DBA created it, but granted nothing
    owner = make_owner()

    refused = flowstate("migrate", "upgrade", "--database-url", owner.url)

    assert refused.code == 1
    assert refused.err.startswith(
        f"flowstate: error: FAILED_PRECONDITION: the role {owner.name} is not a member of the "
        f"role {APP_ROLE} and may not grant it to itself. Ask a DBA to run"
    )
    assert dba_sql(refused.err) == f"GRANT {APP_ROLE} TO {owner.name};"
    assert "Traceback" not in refused.err

    cluster.psql(dba_sql(refused.err))
    migrated = flowstate("migrate", "upgrade", "--database-url", owner.url)
    assert migrated.code == 0, migrated.err
    assert migrated.out.startswith(f"database revision: {head_revision()} ")


def test_an_owner_with_createrole_creates_the_app_role_itself(
    cluster: ExternalPostgres, make_owner: Callable[..., Owner]
) -> None:
    owner = make_owner(createrole=True)

    migrated = flowstate("migrate", "upgrade", "--database-url", owner.url)

    assert migrated.code == 0, migrated.err
    assert migrated.err == ""
    assert cluster.psql(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{APP_ROLE}'") == "f"
    assert cluster.psql(f"SELECT pg_has_role('{owner.name}', '{APP_ROLE}', 'MEMBER')") == "t"


def test_a_role_that_does_not_own_the_database_gets_postgres_refusal_without_a_traceback(
    cluster: ExternalPostgres, make_owner: Callable[..., Owner]
) -> None:
    owner = make_owner()
    cluster.psql(f"CREATE ROLE {APP_ROLE} NOLOGIN; GRANT {APP_ROLE} TO {owner.name}")
    intruder = make_owner()
    cluster.psql(f"GRANT {APP_ROLE} TO {intruder.name}")
    url = cluster.url(user=intruder.name, password=intruder.password, database=owner.database)

    refused = flowstate("migrate", "upgrade", "--database-url", url)

    assert refused.code == 1
    assert refused.err == (
        "flowstate: error: FAILED_PRECONDITION: the database refused the migration: permission "
        "denied for schema public. Run `flowstate migrate upgrade` as the owner of the database "
        '(docs/operations.md, "Database roles")\n'
    )
    assert tables(cluster, owner.database) == ""


async def test_a_server_role_that_may_not_switch_to_the_app_role_is_refused_at_start(
    cluster: ExternalPostgres, make_owner: Callable[..., Owner], tmp_path: Path
) -> None:
    owner = make_owner(createrole=True)
    migrated = await asyncio.to_thread(flowstate, "migrate", "upgrade", "--database-url", owner.url)
    cluster.psql(f"REVOKE {APP_ROLE} FROM {owner.name}")
    rows = tmp_path / "rows.csv"
    rows.write_text("flow_id,data_import_completed\n")

    refused = await asyncio.to_thread(
        flowstate, "import-legacy", "--file", str(rows), "--tenant", "a/b",
        "--database-url", owner.url,
    )  # fmt: skip

    assert migrated.code == 0, migrated.err
    assert (refused.code, refused.out) == (1, "")
    assert refused.err == (
        f"flowstate: error: FAILED_PRECONDITION: the role {owner.name} is not a member of the "
        f"role {APP_ROLE}, which every transaction switches to. Ask a DBA to run, then start "
        f"again:\n\n    GRANT {APP_ROLE} TO {owner.name};\n\n"
    )
