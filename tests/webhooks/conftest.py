"""Fixtures of the webhook tests: a database of their own (no other test server's delivery loop
claims these subscriptions), and servers tuned for short intervals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from flowstate.storage.migrate import upgrade

FAST: dict[str, Any] = {
    "webhook_allow_networks": ("127.0.0.0/8",),
    "webhook_poll_interval": 0.05,
    "webhook_lease_seconds": 1.0,
    "webhook_initial_backoff": 0.02,
    "webhook_max_backoff": 0.1,
    "webhook_timeout": 2.0,
}
"""Settings of an in-process server whose deliveries reach 127.0.0.1 and retry quickly."""

FAST_ENV: dict[str, str] = {
    "FLOWSTATE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    "FLOWSTATE_WEBHOOK_POLL_INTERVAL": "0.05",
    "FLOWSTATE_WEBHOOK_LEASE_SECONDS": "1",
    "FLOWSTATE_WEBHOOK_INITIAL_BACKOFF": "0.02",
    "FLOWSTATE_WEBHOOK_MAX_BACKOFF": "0.1",
}
"""The same for a `flowstate serve` subprocess."""


@pytest_asyncio.fixture(scope="module")
async def webhook_database_url(database_server: Any) -> AsyncIterator[str]:
    """A migrated database for this module only."""
    url = await database_server.create_database("flowstate_webhooks")
    await upgrade(url)
    yield url
    await database_server.drop_database(url)
