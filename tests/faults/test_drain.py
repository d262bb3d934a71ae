"""SIGTERM under a burst of writes: every call ends OK or UNAVAILABLE, never CANCELLED; every OK
one is persisted and no refused one is; open streams end with a resumable UNAVAILABLE.

Against a real `flowstate serve` process (external database: the session's) with a 5 s grace
period, 150 concurrent UpdatePhaseProgress calls and SIGTERM 50 ms after they are sent.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import grpc
import grpc.aio

from flowstate.core.model import Tenant
from flowstate.storage import FlowStore
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
