"""``flowstate webhooks``: create, list, test, replay and delete against a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest_asyncio

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer, serve_in_process

from .conftest import CliResult
from .test_definitions_cli import run_cli


@pytest_asyncio.fixture(scope="module")
async def hook_server(database_url: str) -> AsyncIterator[RunningServer]:
    """A server that may reach 127.0.0.1 (its delivery loop off: only TestWebhook sends)."""
    async with serve_in_process(
        database_url, webhook_allow_networks=("127.0.0.0/8",), webhooks=False
    ) as running:
        yield running


@pytest_asyncio.fixture
async def receiver_url() -> AsyncIterator[str]:
    """A receiver on 127.0.0.1 that answers every request 204."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0
        await reader.readline()
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    server.close()
    await server.wait_closed()


async def test_webhooks_commands(
    hook_server: RunningServer, cli_tenant: Tenant, receiver_url: str
) -> None:
    token = hook_server.mint(cli_tenant, scopes=["webhooks:admin"])

    async def webhooks(*argv: str) -> CliResult:
        connection = ["--address", hook_server.address, "--token", token]
        return await asyncio.to_thread(run_cli, "webhooks", *argv, *connection)

    created = await webhooks(
        "create", receiver_url, "--status", "completed", "--filter", "labels.team = core", "--json"
    )
    assert created.code == 0, created.err
    document = json.loads(created.out)
    webhook_id = document["webhook"]["webhookId"]
    assert document["secret"].startswith("whsec_")
    assert document["webhook"]["statuses"] == ["FLOW_STATUS_COMPLETED"]
    assert document["webhook"]["filter"] == "labels.team = core"

    listed = await webhooks("list")
    assert f"webhook {webhook_id}: active" in listed.out
    assert "status completed" in listed.out
    assert "labels.team = core" in listed.out

    bad_filter = await webhooks("create", receiver_url, "--filter", "status = NOPE")
    assert bad_filter.code == 1
    assert "MALFORMED_REQUEST" in bad_filter.err
    assert "at position 9" in bad_filter.err

    tested = await webhooks("test", webhook_id)
    assert tested.code == 0, tested.err
    assert "delivered test_" in tested.out
    assert "HTTP 204" in tested.out

    replayed = await webhooks("replay", webhook_id, "--since", "2026-01-01T00:00:00Z")
    assert replayed.code == 0, replayed.err
    assert f"webhook {webhook_id}: active" in replayed.out

    refused = await webhooks("create", "https://10.0.0.1/hook")
    assert refused.code == 1
    assert "MALFORMED_REQUEST" in refused.err
    assert "url refused" in refused.err

    deleted = await webhooks("delete", webhook_id)
    assert deleted.out.strip() == f"deleted webhook {webhook_id}"
    assert (await webhooks("list")).out.strip() == "no webhooks"
    gone = await webhooks("delete", webhook_id)
    assert gone.code == 1
    assert "WEBHOOK_NOT_FOUND" in gone.err
