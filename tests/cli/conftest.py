"""Fixtures of the CLI tests: a real in-process server and a runner for ``flowstate flows``.

``cli_server`` (module)
    A `flowstate.testing.RunningServer` on 127.0.0.1:0 over the shared migrated database.
``flows`` (function)
    ``await flows("get", flow_id, "--json")`` runs ``flowstate flows ...`` in a worker thread
    (the server shares the test's event loop) against ``cli_server`` as this test's tenant, and
    returns a `CliResult` (exit code, stdout, stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

pytest.importorskip("flowstate.testing", reason="needs the in-process test server")

from flowstate.cli import flows as flows_cli
from flowstate.core.model import Tenant
from flowstate.testing import RunningServer, serve_in_process


@dataclass(frozen=True)
class CliResult:
    """What one command did."""

    code: int
    out: str
    err: str


Runner = Callable[..., Awaitable[CliResult]]


def run_flows(*argv: str) -> CliResult:
    """Run ``flowstate flows ARGV`` in this thread, capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = flows_cli.main(["flows", *argv])
        except SystemExit as exit_:  # argparse usage errors
            code = int(exit_.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest_asyncio.fixture(scope="module")
async def cli_server(database_url: str) -> AsyncIterator[RunningServer]:
    """One in-process server for the module's CLI tests."""
    async with serve_in_process(database_url) as running:
        yield running


@pytest.fixture
def cli_tenant() -> Tenant:
    """A tenant of this test alone."""
    suffix = uuid.uuid4().hex[:12]
    return Tenant(client_account_id=f"cli-{suffix}", engagement_id=f"e-{suffix}")


@pytest.fixture
def cli_token(cli_server: RunningServer, cli_tenant: Tenant) -> str:
    """A token of the test's tenant with every scope."""
    return cli_server.mint(cli_tenant, scopes=["flows:read", "flows:write", "flows:admin"])


@pytest.fixture
def flows(cli_server: RunningServer, cli_token: str) -> Runner:
    """Runs ``flowstate flows`` against the test server as the test's tenant."""

    async def run(*argv: str, connect: bool = True) -> CliResult:
        connection = ["--address", cli_server.address, "--token", cli_token] if connect else []
        # argparse wants the connection flags after the sub-command: append them.
        return await asyncio.to_thread(run_flows, *argv, *connection)

    return run
