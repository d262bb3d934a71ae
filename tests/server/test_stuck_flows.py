"""The ``flowstate_stuck_flows`` gauge, scraped from a real server's metrics endpoint."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from flowstate.core.commands import Context, TransitionPhase
from flowstate.core.model import PhaseState, Tenant
from flowstate.server.metrics import Metrics
from flowstate.server.stuck import StuckFlowsMonitor
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.testing import serve_in_process

LONG_AGO = datetime(1985, 6, 1, 9, 0, tzinfo=UTC)
"""Before any flow other tests create (the storage test uses 1990), so the gauge sees only ours."""


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def _gauge(text: str, status: str) -> float | None:
    match = re.search(rf'^flowstate_stuck_flows{{status="{status}"}} (\S+)$', text, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def test_the_gauge_counts_live_flows_unchanged_for_stuck_after(
    database_url: str, store: FlowStore, make_context: Callable[..., Context]
) -> None:
    suffix = uuid.uuid4().hex[:12]
    tenant = Tenant(client_account_id=f"stuck-{suffix}", engagement_id=f"engagement-{suffix}")
    ctx = make_context(now=LONG_AGO)
    for _ in range(2):
        await FlowService(store).create_flow(tenant, definition_name="discovery", ctx=ctx)
    started = await FlowService(store).create_flow(tenant, definition_name="discovery", ctx=ctx)
    await FlowService(store).mutate(
        tenant, started.flow.flow_id, TransitionPhase("data_import", PhaseState.IN_PROGRESS), ctx
    )
    cutoff = LONG_AGO + timedelta(hours=1)
    stuck_after = (datetime.now(UTC) - cutoff).total_seconds()

    async with serve_in_process(
        database_url,
        store=store,
        metrics_port=0,
        stuck_after=stuck_after,
        stuck_check_interval=0.05,
    ) as running:
        port = running.server.metrics_port
        assert port is not None
        text = ""
        for _ in range(200):  # bounded: 10 s
            text = await asyncio.to_thread(_scrape, port)
            if _gauge(text, "initialized") == 2.0:
                break
            await asyncio.sleep(0.05)

    assert _gauge(text, "initialized") == 2.0, text
    assert _gauge(text, "data_gathering") == 1.0
    assert _gauge(text, "failed") == 0.0  # every live status is exported, 0 where none
    assert _gauge(text, "completed") is None  # terminal flows are never stuck
    assert _gauge(text, "cancelled") is None
    checked = re.search(r"^flowstate_stuck_flows_checked_timestamp_seconds (\S+)$", text, re.M)
    assert checked is not None
    assert abs(float(checked.group(1)) - datetime.now(UTC).timestamp()) < 60


async def test_a_failed_count_is_logged_and_the_timer_goes_on(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await FlowStore.open(database_url)
    await closed.close()
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="flowstate.server.stuck"):
        monitor = StuckFlowsMonitor.start(closed, metrics, stuck_after=60, interval=0.02)
        try:
            for _ in range(1000):  # bounded: 20 s
                if sum("counting stuck flows failed" in r.message for r in caplog.records) >= 2:
                    break
                await asyncio.sleep(0.02)
        finally:
            await monitor.close()
    assert sum("counting stuck flows failed" in r.message for r in caplog.records) >= 2
    assert metrics.registry.get_sample_value("flowstate_stuck_flows_checked_timestamp_seconds") == 0
