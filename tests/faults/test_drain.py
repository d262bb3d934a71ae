"""Draining on shutdown.

SIGTERM under a burst of writes: every call ends OK or UNAVAILABLE, never CANCELLED; every OK
one is persisted and no refused one is; open streams end with a resumable UNAVAILABLE. Against a
real `flowstate serve` process (external database: the session's) with a 5 s grace period, 150
concurrent UpdatePhaseProgress calls and SIGTERM 50 ms after they are sent (or, on a slow
machine, once the first has been answered).

A write still running when the grace period ends (stuck on a row lock held elsewhere) is cut
short and leaves nothing; retried with its request id it is applied exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import asyncpg
import grpc
import grpc.aio

from flowstate.core.model import Tenant
from flowstate.storage import FlowStore
from flowstate.storage.urls import normalize_database_url
from flowstate.testing import serve_in_process, serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb

from .support import Ledger, assert_history_whole, refusal, running_flows, stub_for

BURST = 150
FLOWS = 10


async def test_sigterm_drains_a_burst_of_writes(
    database_url: str, store: FlowStore, tenant: Tenant
) -> None:
    ledger = Ledger()
    with serve_subprocess(database_url=database_url, args=["--grace-period", "5"]) as process:
        metadata = process.mint.metadata(tenant)
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = stub_for(channel)
            flow_ids = await running_flows(stub, metadata, FLOWS)
            watch = stub.WatchFlows(pb.WatchFlowsRequest(), metadata=metadata)
            reports = [ledger.new(flow_ids[i % FLOWS]) for i in range(BURST)]
            sent = [asyncio.create_task(r.send(stub, metadata)) for r in reports]
            await asyncio.sleep(0.05)
            for _ in range(200):  # bounded: a slow machine may not have answered one yet
                if any(r.code is not None for r in reports):
                    break
                await asyncio.sleep(0.05)
            process.process.send_signal(signal.SIGTERM)
            await asyncio.gather(*sent)
            try:
                async for _ in watch:
                    pass
                stream_end = None
            except grpc.aio.AioRpcError as error:
                stream_end = refusal(error)
        exit_code = await asyncio.to_thread(process.process.wait, 30)
    assert exit_code == 0

    codes = Counter(r.code for r in ledger.reports)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes[grpc.StatusCode.OK] >= 1, codes
    for report in ledger.reports:
        if report.error is not None:
            found = refusal(report.error)
            if found.reason:  # refused by the draining server (not a closed connection)
                assert found.reason == "SERVER_SHUTTING_DOWN"
                assert found.retry_info is not None
    assert stream_end is not None
    assert stream_end.code == grpc.StatusCode.UNAVAILABLE

    async with serve_in_process(database_url, store=store) as verifier, verifier.channel() as ch:
        seen = await assert_history_whole(
            stub_for(ch), verifier.mint.metadata(tenant), flow_ids, ledger.acknowledged()
        )
    refused_applied = [
        r.request_id
        for r in ledger.reports
        if r.code != grpc.StatusCode.OK and r.request_id in seen
    ]
    assert not refused_applied, "a call refused with UNAVAILABLE was applied"


async def test_a_write_still_running_when_the_grace_period_ends_is_rolled_back(
    database_url: str, tenant: Tenant
) -> None:
    """A mutation stuck on a row lock past the grace period is cut short: it changed nothing,
    and retried later with its request id it is applied exactly once."""
    ledger = Ledger()
    own_store = await FlowStore.open(database_url)
    admin = await asyncpg.connect(
        normalize_database_url(database_url).replace("postgresql+asyncpg://", "postgresql://", 1)
    )
    try:
        async with serve_in_process(database_url, store=own_store, grace_period=0.5) as server:
            metadata = server.mint.metadata(tenant)
            async with server.channel() as channel:
                stub = stub_for(channel)
                (flow_id,) = await running_flows(stub, metadata, 1)
                async with admin.transaction():
                    await admin.execute("SELECT 1 FROM flows WHERE id = $1 FOR UPDATE", flow_id)
                    stuck = ledger.new(flow_id)
                    sending = asyncio.create_task(stuck.send(stub, metadata))
                    for _ in range(400):  # bounded: until the write waits on the lock
                        waiting = await admin.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE '%FOR UPDATE%' AND pid <> pg_backend_pid()"
                        )
                        if waiting:
                            break
                        await asyncio.sleep(0.02)
                    await server.server.stop()  # the grace period (0.5 s) ends with the lock held
                    await sending
        assert stuck.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), stuck.code
        async with serve_in_process(database_url, store=own_store) as server:
            metadata = server.mint.metadata(tenant)
            async with server.channel() as channel:
                stub = stub_for(channel)
                flow = (
                    await stub.GetFlow(pb.GetFlowRequest(flow_id=flow_id), metadata=metadata)
                ).flow
                assert flow.version == 2  # created and started: the cut write left nothing
                await stuck.send(stub, metadata)
                assert stuck.error is None, stuck.error
                await assert_history_whole(stub, metadata, [flow_id], [stuck])
    finally:
        await admin.close()
        await own_store.close()
