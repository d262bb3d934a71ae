"""Helpers of the stream tests: flows to watch, changes to make, bounded waits for events."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flowstate.core.commands import CancelFlow, Context, TransitionPhase, UpdatePhaseProgress
from flowstate.core.model import Flow, PhaseState, Tenant
from flowstate.server.watch import FlowEventValue, WatchHub
from flowstate.service import FlowService
from flowstate.service.definitions import register_definition
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


# --- trees (WatchFlow with children_depth / include_dependencies) ------------------------------

TREE_LEAF = {
    "name": "tree_leaf",
    "phases": [{"name": "a", "weight": 50}, {"name": "b", "depends_on": ["a"], "weight": 50}],
}
TREE_MID = {
    "name": "tree_mid",
    "phases": [
        {
            "name": "x",
            "weight": 50,
            "kind": "child_flow",
            "child_flow": {"definition": "tree_leaf"},
        },
        {"name": "y", "depends_on": ["x"], "weight": 50},
    ],
}
TREE_TOP = {
    "name": "tree_top",
    "phases": [
        {"name": "prep", "weight": 20},
        {
            "name": "m",
            "depends_on": ["prep"],
            "weight": 40,
            "kind": "child_flow",
            "child_flow": {"definition": "tree_mid"},
        },
        {
            "name": "n",
            "depends_on": ["prep"],
            "weight": 40,
            "kind": "child_flow",
            "child_flow": {"definition": "tree_leaf", "on_parent_cancel": "cascade"},
        },
    ],
}
"""tree_top: prep, then m (a tree_mid: x, a tree_leaf child, then y) and n (a tree_leaf that a
cancel of the top cascades to); tree_leaf: a, then b."""


@dataclass(frozen=True)
class Trees:
    """A tenant with the tree definitions registered: makes its flows' trees and watches them."""

    store: FlowStore
    tenant: Tenant
    service: FlowService

    @classmethod
    async def register(cls, store: FlowStore, tenant: Tenant) -> Trees:
        """Register tree_leaf, tree_mid and tree_top in `tenant`."""
        for document in (TREE_LEAF, TREE_MID, TREE_TOP):
            await register_definition(store, tenant, document, ctx())
        return cls(store, tenant, FlowService(store))

    async def create(self, name: str, **options: Any) -> str:
        """A new flow of definition `name` (version 1); returns its id."""
        result = await self.service.create_flow(
            self.tenant, definition_name=name, ctx=ctx(), **options
        )
        return result.flow.flow_id

    async def top(self, prep: PhaseState | None = None) -> str:
        """A new tree_top, its prep phase moved to `prep` (COMPLETED: through IN_PROGRESS, so
        that m and n may start)."""
        top = await self.create("tree_top")
        if prep is not None:
            await self.move(top, "prep", PhaseState.IN_PROGRESS)
        if prep is PhaseState.COMPLETED:
            await self.move(top, "prep", PhaseState.COMPLETED)
        return top

    async def move(self, flow_id: str, phase: str, to: PhaseState) -> str:
        """Move `phase`; returns the child it started following ("" when none)."""
        result = await self.service.mutate(self.tenant, flow_id, TransitionPhase(phase, to), ctx())
        return next((p.child_flow_id or "" for p in result.flow.phases if p.name == phase), "")

    async def cancel(self, flow_id: str) -> None:
        """Cancel the flow (and the children that cascade)."""
        await self.service.mutate(self.tenant, flow_id, CancelFlow("stop"), ctx())

    async def link(self, parent_id: str, phase: str, child_id: str) -> None:
        """Make `child_id` the child flow of the parent's `phase`."""
        await self.service.link_child_flow(self.tenant, parent_id, phase, child_id, ctx())

    async def version(self, flow_id: str) -> int:
        """The flow's current version."""
        return (await self.store.get_flow(self.tenant, flow_id)).version

    async def history(self, *flow_ids: str) -> set[tuple[str, int]]:
        """Every (flow, version) of the flows' history."""
        return {
            (flow_id, entry.flow_version)
            for flow_id in flow_ids
            for entry in await self.store.read_changes(self.tenant, flow_id, 0, 10_000)
        }

    def watch(
        self,
        hub: WatchHub,
        flow_id: str,
        *,
        depth: int = 5,
        dependencies: bool = False,
        cursor: str = "",
        keep_open: bool = True,
    ) -> AsyncGenerator[FlowEventValue, None]:
        """A tree stream of the flow read from `hub` (a snapshot per flow, or after `cursor`)."""
        return hub.watch_flow(
            self.tenant,
            flow_id,
            after_version=None,
            keep_open=keep_open,
            children_depth=depth,
            include_dependencies=dependencies,
            cursor=cursor,
        )
