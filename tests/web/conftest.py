"""Fixtures of the HTTP port's tests: one real server with its HTTP port, real Postgres.

``web_server`` (session)
    A `flowstate.testing.RunningServer` on 127.0.0.1:0 with the HTTP port on an ephemeral port
    (Connect, gRPC-Web, console) and one configured CORS origin, over the shared database.
``base_url`` (session)
    ``http://127.0.0.1:PORT`` of its HTTP port.
``http`` (session)
    An `httpx.AsyncClient` on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from flowstate.storage import FlowStore
from flowstate.testing import RunningServer, serve_in_process

ALLOWED_ORIGIN = "http://console.example.test:3000"


@pytest_asyncio.fixture(scope="session")
async def web_server(database_url: str, store: FlowStore) -> AsyncIterator[RunningServer]:
    """The session's in-process server with its HTTP port (alert scans every 200 ms, so the
    console's alert badges are tested promptly)."""
    async with serve_in_process(
        database_url,
        store=store,
        http_port=0,
        http_cors_origins=(ALLOWED_ORIGIN,),
        alert_check_interval=0.2,
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="session")
async def base_url(web_server: RunningServer) -> str:
    """The HTTP port's base URL."""
    assert web_server.server.http_port is not None
    return f"http://127.0.0.1:{web_server.server.http_port}"


@pytest_asyncio.fixture(scope="session")
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """One HTTP client for the session."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client
