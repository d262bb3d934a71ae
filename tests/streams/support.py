"""Helpers of the stream tests: flows to watch, changes to make, bounded waits for events."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from flowstate.core.commands import Context, TransitionPhase, UpdatePhaseProgress
from flowstate.core.model import Flow, PhaseState, Tenant
from flowstate.server.watch import FlowEventValue
from flowstate.service import FlowService
from flowstate.storage import FlowStore

EVENT_TIMEOUT = 20.0
"""Seconds any single expected event may take before a test fails."""


def ctx() -> Context:
    """A core context stamped now."""
    return Context(now=datetime.now(UTC), user_id="stream-tester")


async def create_flow(store: FlowStore, tenant: Tenant) -> Flow:
    """A new discovery flow (version 1) with data_import IN_PROGRESS (version 2)."""
    created = await FlowService(store).create_flow(tenant, definition_name="discovery", ctx=ctx())
    started = await FlowService(store).mutate(
        tenant,
        created.flow.flow_id,
        TransitionPhase("data_import", PhaseState.IN_PROGRESS),
        ctx(),
    )
    return started.flow


_progress_steps = itertools.count()


async def report_progress(store: FlowStore, tenant: Tenant, flow_id: str, times: int) -> int:
    """Append `times` progress reports to data_import; returns the flow's last version.

    Consecutive reports always differ (an unchanged progress writes no history entry).
    """
    version = 0
    for _ in range(times):
        result = await FlowService(store).mutate(
            tenant,
            flow_id,
            UpdatePhaseProgress("data_import", (next(_progress_steps) % 97 + 1) / 100),
            ctx(),
        )
        assert result.entries, "a progress report that changed nothing"
        version = result.flow.version
    return version


async def next_event(stream: AsyncIterator[FlowEventValue]) -> FlowEventValue:
    """The stream's next event, failing the test after EVENT_TIMEOUT seconds."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        return await anext(stream)


async def next_change(stream: AsyncIterator[FlowEventValue]) -> FlowEventValue:
    """The next event that is not a heartbeat, failing the test after EVENT_TIMEOUT seconds."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while True:
            event = await anext(stream)
            if event.heartbeat_at is None:
                return event


async def assert_quiet(stream: AsyncIterator[FlowEventValue], seconds: float) -> None:
    """Only heartbeats arrive for `seconds` (the hub must beat more often than that).

    Reads whole events instead of cancelling a pending one: cancelling `anext` would end the
    async generator.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        event = await next_event(stream)
        assert event.heartbeat_at is not None, f"unexpected event {event!r}"
