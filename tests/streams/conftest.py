"""Fixtures of the stream tests: running `WatchHub`s over the shared store.

The hub tests talk to the hub directly (domain events, no gRPC) over the real PostgreSQL and
the real store of `tests/conftest.py`. Every wait is bounded (see `support.next_event`) and
every hub is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest_asyncio

from flowstate.core.model import Tenant
from flowstate.server.watch import WatchHub
from flowstate.storage import FlowStore

from .support import Trees


@pytest_asyncio.fixture
async def hub(store: FlowStore, database_url: str) -> AsyncIterator[WatchHub]:
    """A running hub (heartbeats every 5 s), closed after the test."""
    running = await WatchHub.start(store, database_url, heartbeat_interval=5.0)
    try:
        yield running
    finally:
        await running.close()


@pytest_asyncio.fixture
async def make_hub(
    store: FlowStore, database_url: str
) -> AsyncIterator[Callable[..., asyncio.Future[WatchHub]]]:
    """Factory of extra hubs with custom settings; all are closed after the test."""
    hubs: list[WatchHub] = []

    def make(**options: float) -> asyncio.Future[WatchHub]:
        async def start() -> WatchHub:
            started = await WatchHub.start(store, database_url, **options)  # type: ignore[arg-type]
            hubs.append(started)
            return started

        return asyncio.ensure_future(start())

    try:
        yield make
    finally:
        for started in hubs:
            await started.close()


@pytest_asyncio.fixture
async def trees(store: FlowStore, tenant: Tenant) -> Trees:
    """The test's tenant with the tree definitions registered (`support.Trees`)."""
    return await Trees.register(store, tenant)
