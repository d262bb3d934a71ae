"""kill -9: of the server under write load, of the server and its embedded PostgreSQL together,
and of the server alone before a clean stop (the embedded PostgreSQL must still stop).

Guarantees checked after each restart: every acknowledged write is present exactly once
(retrying the unanswered ones with their request ids applies each at most once), flow versions
are contiguous, and a clean shutdown stops the embedded PostgreSQL whatever crashed before.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import grpc
import grpc.aio
import pytest

from flowstate.core.model import Tenant
from flowstate.testing import ServerProcess, serve_subprocess

from .support import (
    Ledger,
    Metadata,
    assert_history_whole,
    postmaster_pid,
    reaping_postmaster,
    running_flows,
    stub_for,
    wait_until,
)

WRITERS = 8
LOAD_SECONDS = 0.5


async def _write_until_killed(
    process: ServerProcess, metadata: Metadata, ledger: Ledger, flow_ids: list[str]
) -> None:
    """One loop of progress reports per flow until the process is SIGKILLed, `LOAD_SECONDS`
    after they start and once each has had a write acknowledged; each loop stops at its first
    failure."""
    async with grpc.aio.insecure_channel(process.address) as channel:
        stub = stub_for(channel)

        async def writer(flow_id: str) -> None:
            for _ in range(10_000):  # bounded; the kill ends it long before
                report = ledger.new(flow_id)
                await report.send(stub, metadata, deadline=10)
                if report.code != grpc.StatusCode.OK:
                    return

        writers = [asyncio.create_task(writer(flow_id)) for flow_id in flow_ids]
        await asyncio.sleep(LOAD_SECONDS)
        for _ in range(400):  # bounded: until each writer has had a write acknowledged
            if {r.flow_id for r in ledger.acknowledged()} >= set(flow_ids):
                break
            await asyncio.sleep(0.05)
        process.process.send_signal(signal.SIGKILL)
        await asyncio.gather(*writers)
    await asyncio.to_thread(process.process.wait, 30)


async def _retry_unanswered(process: ServerProcess, metadata: Metadata, ledger: Ledger) -> None:
    """Send every report that got no OK again, same request id: applied at most once."""
    async with grpc.aio.insecure_channel(process.address) as channel:
        stub = stub_for(channel)
        for report in ledger.reports:
            if report.code != grpc.StatusCode.OK:
                await report.send(stub, metadata)
                assert report.error is None, report.error


async def _check(
    process: ServerProcess, metadata: Metadata, flows: list[str], ledger: Ledger
) -> None:
    async with grpc.aio.insecure_channel(process.address) as channel:
        seen = await assert_history_whole(stub_for(channel), metadata, flows, ledger.acknowledged())
    assert len(seen) == 2 * len(flows) + len(ledger.reports)  # created + started + each report


async def test_kill_9_under_write_load_loses_no_acknowledged_write(
    database_url: str, tenant: Tenant
) -> None:
    ledger = Ledger()
    with serve_subprocess(database_url=database_url) as process:
        metadata = process.mint.metadata(tenant)
        async with grpc.aio.insecure_channel(process.address) as channel:
            flow_ids = await running_flows(stub_for(channel), metadata, WRITERS)
        await _write_until_killed(process, metadata, ledger, flow_ids)
    assert len(ledger.acknowledged()) >= WRITERS  # the load really ran
    with serve_subprocess(database_url=database_url) as process:
        metadata = process.mint.metadata(tenant)
        await _retry_unanswered(process, metadata, ledger)
        await _check(process, metadata, flow_ids, ledger)
        assert process.stop() == 0


def _handle_pids(pgdata: Path) -> list[int]:
    path = pgdata / ".handle_pids.json"
    text = path.read_text().strip() if path.exists() else ""
    return list(json.loads(text)) if text else []


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory for an embedded PostgreSQL; o+rx so that its `pgserver` user (when the
    tests run as root) can reach it."""
    directory = tmp_path / "data"
    directory.mkdir()
    for path in (tmp_path, directory):
        path.chmod(0o755)
    return directory


async def test_embedded_postgres_after_kill_9_of_the_server_and_of_both(
    data_dir: Path, tenant: Tenant
) -> None:
    """One data directory (one initdb) through both crashes, checked after each."""
    pgdata = data_dir / "pg"
    ledger = Ledger()
    with reaping_postmaster(pgdata):
        # kill -9 of the server alone: PostgreSQL outlives it, its pid stays in the handle list.
        with serve_subprocess(data_dir=data_dir) as crashed:
            metadata = crashed.mint.metadata(tenant)
            async with grpc.aio.insecure_channel(crashed.address) as channel:
                flow_ids = await running_flows(stub_for(channel), metadata, 4)
            crashed.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(crashed.process.wait, 30)
        assert postmaster_pid(pgdata) is not None
        assert _handle_pids(pgdata) == [crashed.process.pid]
        # The next server forgets the dead pid, and its clean stop stops PostgreSQL.
        with serve_subprocess(data_dir=data_dir) as process:
            assert _handle_pids(pgdata) == [process.process.pid]
            assert process.stop() == 0
        assert postmaster_pid(pgdata) is None
        assert _handle_pids(pgdata) == []

        # kill -9 of the server under write load and of PostgreSQL together.
        with serve_subprocess(data_dir=data_dir) as process:
            metadata = process.mint.metadata(tenant)
            postmaster = postmaster_pid(pgdata)
            assert postmaster is not None
            await _write_until_killed(process, metadata, ledger, flow_ids)
            os.kill(postmaster, signal.SIGKILL)
            await wait_until(lambda: postmaster_pid(pgdata) != postmaster)
        # A stale postmaster.pid and a dead handle pid: neither blocks the start.
        with serve_subprocess(data_dir=data_dir) as process:
            metadata = process.mint.metadata(tenant)
            await _retry_unanswered(process, metadata, ledger)
            await _check(process, metadata, flow_ids, ledger)
            assert process.stop() == 0
        assert postmaster_pid(pgdata) is None
        assert _handle_pids(pgdata) == []
