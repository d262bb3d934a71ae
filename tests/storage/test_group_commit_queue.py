"""`GroupCommit`'s queueing alone: which requests run together and when (no database)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from flowstate.storage.group_commit import GroupCommit, Queued


class _Batches:
    """A batch runner that records each batch and holds it until released."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.release: dict[str, asyncio.Event] = {}
        self.changed = asyncio.Event()

    async def run(self, lane: Hashable, batch: list[Queued[str]]) -> None:
        names = [queued.request for queued in batch]
        self.started.append(names)
        self.changed.set()
        for name in names:
            await self.release.setdefault(name, asyncio.Event()).wait()
        for queued in batch:
            queued.settle(queued.request)

    async def until(self, count: int) -> None:
        for _ in range(1000):  # bounded: each round waits for the next batch to start
            if len(self.started) >= count:
                return
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), timeout=5)
        raise AssertionError(f"only {self.started} started")

    def finish(self, name: str) -> None:
        self.release.setdefault(name, asyncio.Event()).set()


async def test_a_request_id_in_a_running_batch_waits_for_its_commit() -> None:
    batches = _Batches()
    group: GroupCommit[str] = GroupCommit(batches.run, max_batch=8, max_in_flight=2)
    first = asyncio.ensure_future(group.submit("tenant", "first", "key-1"))
    await batches.until(1)
    duplicate = asyncio.ensure_future(group.submit("tenant", "duplicate", "key-1"))
    other = asyncio.ensure_future(group.submit("tenant", "other", "key-2"))
    # A second batch starts at once, without the duplicate: it would read the keys before the
    # first one's commit and miss its key.
    await batches.until(2)
    assert batches.started == [["first"], ["other"]]
    batches.finish("other")
    assert await other == "other"
    assert not duplicate.done()
    batches.finish("first")
    assert await first == "first"
    await batches.until(3)
    assert batches.started[2] == ["duplicate"]
    batches.finish("duplicate")
    assert await duplicate == "duplicate"
    await group.wait_idle()
