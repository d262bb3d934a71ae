"""Hub fan-out latency against a bare in-memory broadcast (``python -m bench.hub_fanout``).

Both phases measure the same path end to end: `FlowService.mutate` is called (t0), the change
commits and notifies, and the time is taken when the *last* of 1000 consumers holds the event.
The reference broadcasts the notification payload straight from its own LISTEN callback into
1000 `asyncio.Queue`s (no history read at all); the hub reads the change from history once and
wakes its subscribers. The target is p99(hub) <= 1.5 x p99(reference): the run prints the
figures and exits 1 when the ratio is above it. Timing on a shared 2-core machine is noisy, so
this is a benchmark, run on a quiet machine, not a test; tests/streams/test_fanout_benchmark.py
checks what is deterministic (every watcher gets every change, in order).

It uses the bench's own database (`bench._db`: embedded, or FLOWSTATE_BENCH_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg

from bench._db import database
from flowstate.core.commands import Context, TransitionPhase, UpdatePhaseProgress
from flowstate.core.model import PhaseState, Tenant
from flowstate.server.watch import FlowEventValue, WatchHub
from flowstate.service import FlowService
from flowstate.storage import FlowStore
from flowstate.storage.migrate import upgrade
from flowstate.storage.urls import normalize_database_url

WATCHERS = 1000
CHANGES = 25
MAX_RATIO = 1.5
TENANT = Tenant(client_account_id="bench", engagement_id="hub-fanout")


def ctx() -> Context:
    """A core context stamped now."""
    return Context(now=datetime.now(UTC), user_id="bench")


async def next_event(stream: AsyncIterator[FlowEventValue]) -> FlowEventValue:
    """The stream's next event (30 s at most)."""
    async with asyncio.timeout(30):
        return await anext(stream)


class _Arrivals:
    """Counts consumers that received each version; wakes the producer when all have."""

    def __init__(self, consumers: int) -> None:
        self.consumers = consumers
        self.counts: dict[int, int] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.finished_at: dict[int, float] = {}

    def expect(self, version: int) -> asyncio.Event:
        return self.done.setdefault(version, asyncio.Event())

    def arrived(self, version: int) -> None:
        count = self.counts.get(version, 0) + 1
        self.counts[version] = count
        if count == self.consumers:
            self.finished_at[version] = time.perf_counter()
            self.expect(version).set()


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


async def _commit_and_wait(
    store: FlowStore, tenant: Tenant, flow_id: str, arrivals: _Arrivals, step: int
) -> float:
    started = time.perf_counter()
    result = await FlowService(store).mutate(
        tenant, flow_id, UpdatePhaseProgress("data_import", (step % 97 + 1) / 100), ctx()
    )
    version = result.flow.version
    async with asyncio.timeout(30):
        await arrivals.expect(version).wait()
    return arrivals.finished_at[version] - started


async def _reference_latencies(
    store: FlowStore, tenant: Tenant, flow_id: str, database_url: str
) -> list[float]:
    """A bare in-memory broadcast of the notification to WATCHERS queues."""
    arrivals = _Arrivals(WATCHERS)
    queues: list[asyncio.Queue[int]] = [asyncio.Queue(maxsize=256) for _ in range(WATCHERS)]

    def broadcast(*args: object) -> None:
        version = int(str(args[3]).split('"version":')[1].split(",")[0])
        for queue in queues:
            queue.put_nowait(version)

    async def consume(queue: asyncio.Queue[int]) -> None:
        while True:
            arrivals.arrived(await queue.get())

    listener = await asyncpg.connect(
        normalize_database_url(database_url).replace("postgresql+asyncpg", "postgresql")
    )
    consumers = [asyncio.ensure_future(consume(queue)) for queue in queues]
    try:
        await listener.add_listener("flowstate_changes", broadcast)
        return [
            await _commit_and_wait(store, tenant, flow_id, arrivals, step)
            for step in range(CHANGES)
        ]
    finally:
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await listener.close()


async def _hub_latencies(
    hub: WatchHub, store: FlowStore, tenant: Tenant, flow_id: str
) -> list[float]:
    arrivals = _Arrivals(WATCHERS)
    streams = [
        hub.watch_flow(tenant, flow_id, after_version=None, keep_open=True) for _ in range(WATCHERS)
    ]
    await asyncio.gather(*(next_event(s) for s in streams))  # snapshots: all are live

    async def consume(stream: AsyncIterator[FlowEventValue]) -> None:
        async for event in stream:
            if event.change is not None:
                arrivals.arrived(event.flow_version)

    consumers = [asyncio.ensure_future(consume(stream)) for stream in streams]
    try:
        return [
            await _commit_and_wait(store, tenant, flow_id, arrivals, 50 + step)
            for step in range(CHANGES)
        ]
    finally:
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await asyncio.gather(*(s.aclose() for s in streams))


async def measure(database_url: str) -> dict[str, float]:
    """p50/p99 of the reference and of the hub, in milliseconds, and the p99 ratio."""
    await upgrade(database_url)
    store = await FlowStore.open(database_url)
    try:
        hub = await WatchHub.start(store, database_url, heartbeat_interval=60)
        try:
            created = await FlowService(store).create_flow(
                TENANT, definition_name="discovery", ctx=ctx()
            )
            flow_id = created.flow.flow_id
            await FlowService(store).mutate(
                TENANT, flow_id, TransitionPhase("data_import", PhaseState.IN_PROGRESS), ctx()
            )
            reference = await _reference_latencies(store, TENANT, flow_id, database_url)
            measured = await _hub_latencies(hub, store, TENANT, flow_id)
        finally:
            await hub.close()
    finally:
        await store.close()
    figures = {
        "reference_p50_ms": statistics.median(reference) * 1000,
        "reference_p99_ms": _p99(reference) * 1000,
        "hub_p50_ms": statistics.median(measured) * 1000,
        "hub_p99_ms": _p99(measured) * 1000,
    }
    figures["p99_ratio"] = figures["hub_p99_ms"] / figures["reference_p99_ms"]
    return figures


def main() -> int:
    """Measure once; exit 1 when the hub's p99 is above MAX_RATIO x the reference's."""
    with database() as db:
        figures = asyncio.run(measure(db.sqlalchemy_url))
    print(f"hub fan-out to {WATCHERS} watchers, {CHANGES} changes:")
    for name, value in figures.items():
        print(f"  {name}: {value:.2f}")
    if figures["p99_ratio"] > MAX_RATIO:
        print(f"FAIL: p99 ratio {figures['p99_ratio']:.2f} > {MAX_RATIO}")
        return 1
    print(f"ok: p99 ratio {figures['p99_ratio']:.2f} <= {MAX_RATIO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
