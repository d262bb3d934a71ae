"""Helpers of the stream tests: flows to watch, changes to make, bounded waits for events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from flowstate.core.commands import Context, TransitionPhase, UpdatePhaseProgress
from flowstate.core.model import Flow, PhaseState, Tenant
from flowstate.server.watch import FlowEventValue
from flowstate.storage import FlowStore

EVENT_TIMEOUT = 10.0
"""Seconds any single expected event may take before a test fails."""


def ctx() -> Context:
    """A core context stamped now."""
    return Context(now=datetime.now(UTC), user_id="stream-tester")


async def create_flow(store: FlowStore, tenant: Tenant) -> Flow:
    """A new discovery flow (version 1) with data_import IN_PROGRESS (version 2)."""
    created = await store.create_flow(tenant, definition_name="discovery", ctx=ctx())
    started = await store.mutate(
        tenant,
        created.flow.flow_id,
        TransitionPhase("data_import", PhaseState.IN_PROGRESS),
        ctx(),
    )
    return started.flow


async def report_progress(store: FlowStore, tenant: Tenant, flow_id: str, times: int) -> int:
    """Append `times` progress reports to data_import; returns the flow's last version."""
    version = 0
    for index in range(times):
        result = await store.mutate(
            tenant,
            flow_id,
            UpdatePhaseProgress("data_import", ((index % 99) + 1) / 100),
            ctx(),
        )
        version = result.flow.version
    return version


async def next_event(stream: AsyncIterator[FlowEventValue]) -> FlowEventValue:
    """The stream's next event, failing the test after EVENT_TIMEOUT seconds."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        return await anext(stream)


async def next_change(stream: AsyncIterator[FlowEventValue]) -> FlowEventValue:
    """The next non-heartbeat event."""
    while True:
        event = await next_event(stream)
        if event.heartbeat_at is None:
            return event
