"""The watch hub's recovery paths: a failed channel read, a malformed notification, a failed start.

Real PostgreSQL, real store, real LISTEN connection; the failing read comes from a wrapper of
the real store that raises once when armed (no mock of the database). The listener's
reconnection after its connection is killed is pinned in test_watch_flow.py
(`test_listener_killed_while_changes_happen_loses_nothing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from flowstate.core.model import HistoryEntry, Tenant
from flowstate.server.watch import NOTIFY_CHANNEL, WatchHub
from flowstate.storage import FlowStore
from flowstate.storage.urls import normalize_database_url

from .support import EVENT_TIMEOUT, create_flow, next_change, next_event, report_progress


class FailingOnceStore:
    """The real store; once armed, its next per-flow history read raises (a lost connection)."""

    def __init__(self, store: FlowStore) -> None:
        self.store = store
        self.armed = False
        self.failures = 0

    async def get_flow(self, tenant: Tenant, flow_id: str) -> Any:
        return await self.store.get_flow(tenant, flow_id)

    async def read_changes(
        self, tenant: Tenant, flow_id: str, after_version: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        if self.armed:
            self.armed = False
            self.failures += 1
            raise ConnectionResetError("connection reset by peer (injected once)")
        return await self.store.read_changes(tenant, flow_id, after_version, limit)


class HeldReadStore:
    """The real store; once armed, its next per-flow history read is held after it has read
    (its snapshot taken) until released: a change can commit and be notified in between."""

    def __init__(self, store: FlowStore) -> None:
        self.store = store
        self.armed = False
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()

    async def get_flow(self, tenant: Tenant, flow_id: str) -> Any:
        return await self.store.get_flow(tenant, flow_id)

    async def read_changes(
        self, tenant: Tenant, flow_id: str, after_version: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        entries = await self.store.read_changes(tenant, flow_id, after_version, limit)
        if self.armed:
            self.armed = False
            self.read_done.set()
            await self.release.wait()
        return entries


@contextlib.contextmanager
def socket_reserved() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but not listening: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def _wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Bounded polling until a log record containing `text` was emitted."""
    for _ in range(int(EVENT_TIMEOUT / 0.01)):
        if any(text in record.getMessage() for record in caplog.records):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no log record containing {text!r}")


async def test_failed_channel_read_loses_and_duplicates_nothing(
    store: FlowStore, database_url: str, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowstate.watch")
    failing = FailingOnceStore(store)
    # Heartbeats far away: the change must come from the hub's own retry, not from a tick.
    hub = await WatchHub.start(failing, database_url, heartbeat_interval=60.0)
    try:
        flow = await create_flow(store, tenant)
        stream = hub.watch_flow(tenant, flow.flow_id, after_version=None, keep_open=True)
        assert (await next_event(stream)).snapshot == flow
        failing.armed = True
        # One change only: no later notification comes to trigger another read.
        first = await report_progress(store, tenant, flow.flow_id, 1)
        event = await next_change(stream)
        assert failing.failures == 1
        assert any("read failed" in r.getMessage() for r in caplog.records)
        assert event.flow_version == first
        # Reads work again: the following changes arrive once each, in order.
        last = await report_progress(store, tenant, flow.flow_id, 3)
        versions = [(await next_change(stream)).flow_version for _ in range(3)]
        assert versions == list(range(first + 1, last + 1))
        await stream.aclose()
    finally:
        await hub.close()


async def test_a_change_notified_during_a_resumed_streams_first_read_is_delivered(
    store: FlowStore, database_url: str, tenant: Tenant
) -> None:
    """A resumed stream's first read of a new channel runs while a change commits and its
    notification arrives: the change is read after it (the notification found no window to
    read after, and no later notification comes). This lost the change of a WatchFlows stream
    resumed on a freshly restarted server until the channel re-read after such a poke."""
    held = HeldReadStore(store)
    # Heartbeats far away: the change must come from the notification, not from a tick.
    hub = await WatchHub.start(held, database_url, heartbeat_interval=60.0)
    try:
        flow = await create_flow(store, tenant)
        held.armed = True
        stream = hub.watch_flow(
            tenant, flow.flow_id, after_version=flow.version - 1, keep_open=True
        )
        replayed = asyncio.ensure_future(next_change(stream))
        async with asyncio.timeout(EVENT_TIMEOUT):
            await held.read_done.wait()
        channel = hub._flow_channels[(tenant, flow.flow_id)]
        pokes = channel.pokes
        version = await report_progress(store, tenant, flow.flow_id, 1)
        for _ in range(int(EVENT_TIMEOUT / 0.01)):  # until the hub has the notification
            if channel.pokes > pokes:
                break
            await asyncio.sleep(0.01)
        assert channel.pokes > pokes, "the change's notification never reached the hub"
        held.release.set()
        assert (await replayed).flow_version == flow.version
        assert (await next_change(stream)).flow_version == version
        await stream.aclose()
    finally:
        held.release.set()
        await hub.close()


@pytest.mark.parametrize("payload", ["garbage", "{}", "[1, 2]", '{"flow_id": "x"}'])
async def test_malformed_notification_is_logged_and_ignored(
    hub: WatchHub,
    store: FlowStore,
    database_url: str,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
    payload: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowstate.watch")
    flow = await create_flow(store, tenant)
    stream = hub.watch_flow(tenant, flow.flow_id, after_version=None, keep_open=True)
    assert (await next_event(stream)).snapshot == flow
    connections = hub.listener_connections
    admin = await asyncpg.connect(normalize_database_url(database_url).replace("+asyncpg", ""))
    try:
        await admin.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, payload)
    finally:
        await admin.close()
    await _wait_for_log(caplog, "ignoring malformed notification")
    # Still the same listener, still delivering.
    last = await report_progress(store, tenant, flow.flow_id, 2)
    versions = [(await next_change(stream)).flow_version for _ in range(2)]
    assert versions == [last - 1, last]
    assert hub.listener_connections == connections
    await stream.aclose()


async def test_start_against_an_unreachable_database_fails_clearly_and_leaves_nothing_running(
    store: FlowStore,
) -> None:
    with socket_reserved() as port:
        before = asyncio.all_tasks()
        url = f"postgresql://flowstate@127.0.0.1:{port}/flowstate"
        # The cause, naming the address (not a bare timeout after 30 s of retries).
        with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1', {port}"):
            async with asyncio.timeout(EVENT_TIMEOUT):
                await WatchHub.start(store, url)
        assert asyncio.all_tasks() - before == set()
