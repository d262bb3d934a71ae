"""A hot flow whose row lock is held elsewhere, and a pool exhausted by calls that wait on it.

Guarantees: calls that cannot get the lock (lock_timeout) or a connection (pool wait) end
quickly with UNAVAILABLE / TEMPORARY_RESOURCE_UNAVAILABLE and RetryInfo, never hang, never
pile up more waiting transactions than the pool holds, and change nothing; once the lock is
released, retrying them with the same request ids applies each exactly once, versions
contiguous. Against an in-process server on a database of its own (so its connections can be
counted), with a small pool and short timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import grpc.aio
import pytest_asyncio

from flowstate.core.model import Tenant
from flowstate.storage import FlowStore
from flowstate.storage.urls import normalize_database_url
from flowstate.testing import RunningServer, serve_in_process
from flowstate.v1 import flow_service_pb2 as pb

from .support import Ledger, assert_history_whole, refusal, running_flows, stub_for

POOL = 3
STORM = 30


def _asyncpg_dsn(url: str) -> str:
    return normalize_database_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class Rig:
    """A server on a database of its own, a superuser connection to hold locks with, and one
    to watch with (statistics are read outside the lock holder's transaction, which would
    keep showing its first snapshot)."""

    server: RunningServer
    admin: asyncpg.Connection
    monitor: asyncpg.Connection
    database: str

    async def waiting_on_locks(self) -> int:
        """Backends of this database waiting for a lock now."""
        count = await self.monitor.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            self.database,
        )
        return int(count)


async def _rig(
    fresh_database_url: str,
    *,
    lock_timeout: float,
    pool_timeout: float,
    group_commit: bool = True,
) -> AsyncIterator[Rig]:
    store = await FlowStore.open(
        fresh_database_url,
        migrate=True,
        pool_size=POOL,
        pool_timeout=pool_timeout,
        lock_timeout=lock_timeout,
        group_commit=group_commit,
    )
    admin = await asyncpg.connect(_asyncpg_dsn(fresh_database_url))
    monitor = await asyncpg.connect(_asyncpg_dsn(fresh_database_url))
    try:
        async with serve_in_process(fresh_database_url, store=store) as server:
            database = str(await admin.fetchval("SELECT current_database()"))
            yield Rig(server, admin, monitor, database)
    finally:
        await monitor.close()
        await admin.close()
        await store.close()


@pytest_asyncio.fixture
async def storm_rig(fresh_database_url: str) -> AsyncIterator[Rig]:
    """Locks are waited for 0.3 s, connections for 0.5 s."""
    async for rig in _rig(fresh_database_url, lock_timeout=0.3, pool_timeout=0.5):
        yield rig


@pytest_asyncio.fixture
async def slow_rig(fresh_database_url: str) -> AsyncIterator[Rig]:
    """Locks are waited for 20 s (the calls are slow), connections for 1 s (which includes
    opening one: the pool starts with one connection and grows on demand). One transaction
    per call: with group commit one tenant's mutations hold at most two connections, and the
    slow calls could not exhaust the pool."""
    async for rig in _rig(
        fresh_database_url, lock_timeout=20, pool_timeout=1.0, group_commit=False
    ):
        yield rig


async def test_lock_timeout_storm_on_a_hot_flow(storm_rig: Rig, tenant: Tenant) -> None:
    ledger = Ledger()
    async with storm_rig.server.channel() as channel:
        stub = stub_for(channel)
        metadata = storm_rig.server.mint.metadata(tenant)
        (hot,) = await running_flows(stub, metadata, 1)
        admin = storm_rig.admin
        holder = admin.transaction()
        await holder.start()
        await admin.execute("SELECT 1 FROM flows WHERE id = $1 FOR UPDATE", hot)
        reports = [ledger.new(hot) for _ in range(STORM)]
        storm = asyncio.gather(*(r.send(stub, metadata, deadline=20) for r in reports))
        most_waiting = 0
        while not storm.done():
            most_waiting = max(most_waiting, await storm_rig.waiting_on_locks())
            await asyncio.sleep(0.02)
        await storm
        await holder.rollback()
        assert most_waiting <= POOL

        for report in reports:
            assert report.error is not None
            found = refusal(report.error)
            assert found.code == grpc.StatusCode.UNAVAILABLE
            assert found.reason == "TEMPORARY_RESOURCE_UNAVAILABLE"
            assert found.retry_info
        assert (
            await stub.GetFlow(pb.GetFlowRequest(flow_id=hot), metadata=metadata)
        ).flow.version == 2

        for report in reports:  # the lock is free: each retry is applied, once
            await report.send(stub, metadata)
            assert report.error is None, report.error
        await assert_history_whole(stub, metadata, [hot], ledger.acknowledged())


async def test_a_pool_exhausted_by_slow_calls_fails_new_calls_fast(
    slow_rig: Rig, tenant: Tenant
) -> None:
    ledger = Ledger()
    async with slow_rig.server.channel() as channel:
        stub = stub_for(channel)
        metadata = slow_rig.server.mint.metadata(tenant)
        hot, other = await running_flows(stub, metadata, 2)
        admin = slow_rig.admin
        holder = admin.transaction()
        await holder.start()
        await admin.execute("SELECT 1 FROM flows WHERE id = $1 FOR UPDATE", hot)
        slow = [ledger.new(hot) for _ in range(POOL)]
        blocked = asyncio.gather(*(r.send(stub, metadata, deadline=30) for r in slow))
        for _ in range(500):  # bounded: until the slow calls hold every connection
            if await slow_rig.waiting_on_locks() == POOL or blocked.done():
                break
            await asyncio.sleep(0.02)
        assert not blocked.done(), [r.error for r in slow]
        assert await slow_rig.waiting_on_locks() == POOL

        # Every connection is held: a call on another flow fails within the pool wait (not
        # its 30 s deadline), retryably.
        try:
            await stub.GetFlow(pb.GetFlowRequest(flow_id=other), metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as error:
            found = refusal(error)
        else:
            raise AssertionError("GetFlow got a connection from an exhausted pool")
        assert found.code == grpc.StatusCode.UNAVAILABLE
        assert found.reason == "TEMPORARY_RESOURCE_UNAVAILABLE"
        assert found.retry_info

        await holder.rollback()  # the slow calls go through
        await blocked
        assert all(r.error is None for r in slow), [r.error for r in slow]
        assert (await stub.GetFlow(pb.GetFlowRequest(flow_id=other), metadata=metadata)).flow
        await assert_history_whole(stub, metadata, [hot, other], ledger.acknowledged())
