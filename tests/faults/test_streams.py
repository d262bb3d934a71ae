"""Streams across database faults, end to end over gRPC against a real `flowstate serve`:

- the server's LISTEN connection terminated (`pg_terminate_backend`) again and again while
  streams are open and a flow changes: no event lost, none twice (the hub re-reads history);
- PostgreSQL (an external PG 15 cluster) stopped and started under write load: writes get
  UNAVAILABLE with RetryInfo during the outage, succeed again within seconds of the restart
  (retried with their request ids: each applied once), and a watcher that resumes from its
  last version sees every version exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import grpc.aio

from flowstate.core.model import Tenant
from flowstate.storage.urls import normalize_database_url
from flowstate.testing import serve_subprocess
from flowstate.testing_postgres import ExternalPostgres, external_postgres
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc

from .support import (
    Ledger,
    Metadata,
    Progress,
    assert_history_whole,
    refusal,
    running_flows,
    stub_for,
)

EVENT_TIMEOUT = 20.0  # seconds one stream read may take before the test fails
_LISTENER = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> ALL($1::int[])"
    " LIMIT 1"
)


def _asyncpg_dsn(url: str) -> str:
    return normalize_database_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


async def _versions_of(events: AsyncIterator[pb.FlowEvent], flow_id: str, until: int) -> list[int]:
    """The versions of `flow_id`'s change events up to `until` (bounded per read)."""
    seen: list[int] = []
    while not seen or seen[-1] < until:
        event = await asyncio.wait_for(anext(events), EVENT_TIMEOUT)
        if event.flow_id == flow_id and event.WhichOneof("kind") == "change":
            seen.append(event.flow_version)
    return seen


async def _flow_events(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata, flow_id: str
) -> AsyncGenerator[pb.FlowEvent]:
    call = stub.WatchFlow(pb.WatchFlowRequest(flow_id=flow_id), metadata=metadata)
    try:
        async for response in call:
            yield response.event
    finally:
        call.cancel()


async def _tenant_events(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata
) -> AsyncGenerator[pb.FlowEvent]:
    call = stub.WatchFlows(pb.WatchFlowsRequest(), metadata=metadata)
    try:
        async for response in call:
            yield response.event
    finally:
        call.cancel()


async def test_listen_connection_terminated_while_streams_are_open(
    fresh_database_url: str, tenant: Tenant
) -> None:
    ledger = Ledger()
    monitor = await asyncpg.connect(_asyncpg_dsn(fresh_database_url))
    try:
        with serve_subprocess(database_url=fresh_database_url, args=["--migrate"]) as process:
            metadata = process.mint.metadata(tenant)
            async with grpc.aio.insecure_channel(process.address) as channel:
                stub = stub_for(channel)
                (flow_id,) = await running_flows(stub, metadata, 1)
                one, every = _flow_events(stub, metadata, flow_id), _tenant_events(stub, metadata)
                assert (await anext(one)).WhichOneof("kind") == "snapshot"
                assert (await anext(every)).WhichOneof("kind") == "snapshot"
                cut: list[int] = []
                for _ in range(3):
                    # Wait (bounded) for the hub's LISTEN connection, cut it, and change the
                    # flow while it is down and after it is back.
                    listener = None
                    for _ in range(400):
                        listener = await monitor.fetchval(_LISTENER, cut)
                        if listener is not None:
                            break
                        await asyncio.sleep(0.05)
                    assert listener is not None, "the hub did not listen again"
                    assert await monitor.fetchval("SELECT pg_terminate_backend($1)", listener)
                    cut.append(listener)
                    for _ in range(5):
                        await ledger.new(flow_id).send(stub, metadata)
                assert all(r.error is None for r in ledger.reports)
                last = 2 + len(ledger.reports)  # created, started, the reports
                expected = list(range(3, last + 1))
                assert await _versions_of(one, flow_id, last) == expected
                assert await _versions_of(every, flow_id, last) == expected
                await assert_history_whole(stub, metadata, [flow_id], ledger.reports)
                await one.aclose()
                await every.aclose()
    finally:
        await monitor.close()


def _in_fresh_interpreter(cluster: ExternalPostgres, action: str) -> None:
    """``cluster.<action>()`` in a new interpreter: pg_ctl runs as the cluster's owner, and a
    fork with a user switch from this process (gRPC's threads and fork handlers) can crash."""
    code = "import pickle, sys; getattr(pickle.loads(sys.stdin.buffer.read()), sys.argv[1])()"
    subprocess.run(
        [sys.executable, "-c", code, action],
        input=pickle.dumps(cluster),
        check=True,
        timeout=120,
        capture_output=True,
    )


async def _resuming_watcher(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
    metadata: Metadata,
    flow_id: str,
    seen: list[int],
    stop: asyncio.Event,
) -> int:
    """Watch `flow_id`, resuming from the last version after every UNAVAILABLE, until `stop`
    (bounded); the number of resumptions."""
    resumed = 0
    while not stop.is_set() and resumed < 50:
        after = seen[-1] if seen else 2  # created and started before the load
        call = stub.WatchFlow(
            pb.WatchFlowRequest(flow_id=flow_id, after_version=after), metadata=metadata
        )
        try:
            async for response in call:
                if response.event.WhichOneof("kind") == "change":
                    seen.append(response.event.flow_version)
                if stop.is_set():
                    break
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            resumed += 1
            await asyncio.sleep(0.2)
        finally:
            call.cancel()
    return resumed


async def _write_retrying(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
    metadata: Metadata,
    report: Progress,
    outage_refusals: list[Progress],
) -> None:
    """Send until OK (same request id), as an SDK does: only UNAVAILABLE is retried."""
    for _ in range(150):  # bounded: 150 x 0.1 s
        await report.send(stub, metadata, deadline=10)
        if report.error is None:
            return
        assert report.code == grpc.StatusCode.UNAVAILABLE, report.error
        outage_refusals.append(
            Progress(report.flow_id, report.request_id, report.progress, report.code, report.error)
        )
        await asyncio.sleep(0.1)
    raise AssertionError(f"no recovery within 15 s: {report.error}")


async def test_postgres_stop_and_start_under_load(pg_binaries: Path, tenant: Tenant) -> None:
    ledger = Ledger()
    refusals: list[Progress] = []
    with external_postgres(bindir=pg_binaries) as cluster:
        cluster.psql("CREATE DATABASE flowstate")
        url = cluster.url(database="flowstate")
        with serve_subprocess(database_url=url, args=["--migrate"]) as process:
            metadata = process.mint.metadata(tenant)
            async with grpc.aio.insecure_channel(process.address) as channel:
                stub = stub_for(channel)
                flow_ids = await running_flows(stub, metadata, 2)
                seen: list[int] = []
                stop = asyncio.Event()
                watcher = asyncio.create_task(
                    _resuming_watcher(stub, metadata, flow_ids[0], seen, stop)
                )

                restarted = asyncio.Event()

                async def writer(flow_id: str) -> None:
                    """Writes before, during and after the outage: 10 after the restart."""
                    after_restart = 0
                    for _ in range(1000):  # bounded; the outage takes a few seconds
                        await _write_retrying(stub, metadata, ledger.new(flow_id), refusals)
                        after_restart += restarted.is_set()
                        if after_restart >= 10:
                            return
                        await asyncio.sleep(0.02)

                writers = [asyncio.create_task(writer(f)) for f in flow_ids]
                await asyncio.sleep(0.3)
                await asyncio.to_thread(_in_fresh_interpreter, cluster, "stop")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(_in_fresh_interpreter, cluster, "start")
                restarted.set()
                await asyncio.gather(*writers)
                last = 2 + sum(r.flow_id == flow_ids[0] for r in ledger.reports)
                for _ in range(200):  # bounded: the watcher catches up
                    if seen and seen[-1] >= last:
                        break
                    await asyncio.sleep(0.05)
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    watcher.cancel()
                    await watcher

                assert refusals, "the outage was not seen by any write"
                for refused in refusals:
                    assert refused.error is not None
                    found = refusal(refused.error)
                    if found.reason:  # refused by the server (not a broken connection)
                        assert found.reason == "TEMPORARY_RESOURCE_UNAVAILABLE"
                        assert found.retry_info
                assert seen == list(range(3, last + 1))
                await assert_history_whole(stub, metadata, flow_ids, ledger.reports)
            assert process.stop() == 0
