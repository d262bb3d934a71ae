"""Fixtures of the SDK tests: a real scripted ``grpc.aio`` server and clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from scripted_server import ScriptedServer, ScriptedServicer

from flowstate.client import AsyncFlowstateClient, RetryPolicy

#: Fast retries for tests: no jitter, tiny waits.
FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05, jitter=0.0)


@pytest.fixture
def servicer() -> ScriptedServicer:
    """The script and the record of the server."""
    return ScriptedServicer()


@pytest.fixture
async def scripted(servicer: ScriptedServicer) -> AsyncIterator[ScriptedServer]:
    """A started scripted server on 127.0.0.1:<free port>."""
    server = await ScriptedServer(servicer).start()
    yield server
    await server.stop(None)


@pytest.fixture
async def client(scripted: ScriptedServer) -> AsyncIterator[AsyncFlowstateClient]:
    """An async client of the scripted server with fast retries and a static token."""
    async with AsyncFlowstateClient(
        address=scripted.address,
        token="test-token",
        retry=FAST_RETRY,
        watch_retry=RetryPolicy(
            max_attempts=None, initial_backoff=0.01, max_backoff=0.05, jitter=0.0, deadline=10.0
        ),
        timeout=5.0,
    ) as client:
        yield client
