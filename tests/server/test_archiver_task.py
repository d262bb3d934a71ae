"""The server's archiver task: runs on its timer, deletes expired flows, publishes metrics."""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flowstate.core.commands import CancelFlow, Context
from flowstate.core.model import Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowQuery, FlowStore
from flowstate.testing import serve_in_process


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match.group(1))


async def test_the_server_archives_expired_flows_on_its_timer(
    database_url: str,
    store: FlowStore,
    make_context: Callable[..., Context],
    tmp_path: Path,
) -> None:
    tenant = Tenant(f"archiver-{uuid.uuid4().hex[:12]}", "task")
    ten_days_ago = make_context(now=datetime.now(UTC) - timedelta(days=10))
    service = FlowService(store)
    flow_ids = []
    for _ in range(3):
        created = await service.create_flow(tenant, definition_name="discovery", ctx=ten_days_ago)
        await service.mutate(tenant, created.flow.flow_id, CancelFlow("old"), ten_days_ago)
        flow_ids.append(created.flow.flow_id)
    await store.retention_policies.set(tenant, 1, "test")

    async with serve_in_process(
        database_url, store=store, metrics_port=0, archive_dir=tmp_path, archive_interval=0.1
    ) as running:
        archiver = running.server.archiver
        port = running.server.metrics_port
        assert archiver is not None
        assert port is not None
        listed: list[str] = []
        for _ in range(200):  # bounded: 20 s
            page = await store.list_flows(tenant, FlowQuery())
            listed = [flow.flow_id for flow in page.flows]
            if not listed and archiver.runs >= 1:
                break
            await asyncio.sleep(0.1)
        text = await asyncio.to_thread(_scrape, port)

    assert listed == []
    assert _value(text, "flowstate_archived_flows_total") >= 3
    assert _value(text, "flowstate_archive_purged_flows_total") >= 3
    assert 'flowstate_archive_runs_total{result="ok"}' in text
    assert any(name.endswith(".jsonl") for name in os.listdir(tmp_path))
