"""Group commit: concurrent mutations of one tenant's flows share a transaction.

`FlowStore.update_flow` hands each request to a `GroupCommit` queue (one per tenant, since a
transaction enters one tenant for row-level security). When fewer than `max_in_flight` batches
of that tenant are running, a new batch starts at once with whatever is queued (up to
`max_batch` requests): a request on an idle server runs at once as a batch of one, in its own
task (so cancelling it cancels its transaction, as without group commit), and under load the
requests that arrived while the previous batches ran go together, in a task of the batch's own.
Nothing ever waits for a batch to fill.

A request id is in at most one running batch (a duplicate stays queued until the batch holding
its id has committed, so the batch it joins sees the first one's key and replays it; with two
batches in flight, a batch started meanwhile would read the keys before that commit). The same
flow may appear several times: its requests are decided in arrival order, each on the flow as the
previous one left it.

What a batch does with its requests (one transaction, the isolation and fallback rules) is
`flowstate.storage.group_commit_batch` (`GroupCommitRunner._run_batch`, which `FlowStore`
inherits); this module only queues and groups. docs/performance.md has the
correctness argument.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit", "Queued"]

_log = logging.getLogger("flowstate.storage")

R = TypeVar("R")


@dataclass(eq=False, slots=True)
class Queued(Generic[R]):
    """One request waiting for its batch: what to run and where its answer goes."""

    request: Any
    """What the batch runner needs to run the request (the store's `_Mutation`)."""
    request_id: str
    """Its idempotency key ("" for none): a batch holds each non-empty id at most once."""
    future: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, result: R | BaseException) -> None:
        """Answer the waiting caller (nothing when it has gone away meanwhile)."""
        if self.future.done():
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


@dataclass(eq=False, slots=True)
class _Lane(Generic[R]):
    queued: deque[Queued[R]] = field(default_factory=deque)
    in_flight: int = 0
    running_ids: set[str] = field(default_factory=set)
    """The request ids of the running batches (`_take` keeps their duplicates queued)."""


class GroupCommit(Generic[R]):
    """Queues requests per lane (a tenant) and runs them in batches through `run_batch`.

    `run_batch(lane, batch)` must settle every request's future (a result or an exception);
    one it leaves unsettled is failed here with the batch's own error.
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Queued[R]]], Awaitable[None]],
        *,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        """Group with at most `max_batch` requests per batch, `max_in_flight` batches per lane."""
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._lanes: dict[Hashable, _Lane[R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, lane: Hashable, request: Any, request_id: str) -> R:
        """Queue `request` in `lane` and wait for its result (or its exception)."""
        queued: Queued[R] = Queued(request, request_id)
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _Lane()
        if (
            state.in_flight < self._max_in_flight
            and not state.queued
            and request_id not in state.running_ids
        ):
            # Nothing to group with: run it in the caller's task, so that cancelling the call
            # cancels its transaction (as without group commit); later calls queue behind it.
            state.in_flight += 1
            if request_id:
                state.running_ids.add(request_id)
            try:
                await self._run_batch(lane, [queued])
            finally:
                state.running_ids.discard(request_id)
                self._finished(lane, state)
            return queued.future.result()
        state.queued.append(queued)
        if state.in_flight < self._max_in_flight:
            self._start(lane, state)
        return await queued.future

    def _take(self, state: _Lane[R]) -> list[Queued[R]]:
        """The next batch: queued requests in order, one per request id and none whose id a running
        batch holds, at most max_batch."""
        batch: list[Queued[R]] = []
        ids: set[str] = set()
        kept: deque[Queued[R]] = deque()
        while state.queued and len(batch) < self._max_batch:
            queued = state.queued.popleft()
            if queued.future.done():  # its caller went away before it ran: drop it
                continue
            if queued.request_id and (
                queued.request_id in ids or queued.request_id in state.running_ids
            ):
                kept.append(queued)  # a duplicate: a batch after the first one's commit replays it
                continue
            ids.add(queued.request_id)
            batch.append(queued)
        kept.extend(state.queued)
        state.queued = kept
        ids.discard("")
        state.running_ids |= ids
        return batch

    def _start(self, lane: Hashable, state: _Lane[R]) -> bool:
        """Start the next batch of `lane`; False when nothing could start."""
        batch = self._take(state)
        if not batch:
            if state.in_flight == 0 and not state.queued:
                self._lanes.pop(lane, None)
            return False
        state.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(lane, state, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, lane: Hashable, state: _Lane[R], batch: list[Queued[R]]) -> None:
        try:
            await self._run_batch(lane, batch)
        except Exception as exc:  # settle everyone; never lose a waiting caller
            _log.debug("group commit batch failed", exc_info=True)
            for queued in batch:
                queued.settle(exc)
        except BaseException:
            for queued in batch:
                queued.future.cancel()
            raise
        finally:
            for queued in batch:  # run_batch's contract broken: do not hang
                queued.settle(RuntimeError("batch left a request unanswered"))
                state.running_ids.discard(queued.request_id)
            self._finished(lane, state)

    def _finished(self, lane: Hashable, state: _Lane[R]) -> None:
        """A batch of `lane` ended: start the next ones from its queue."""
        state.in_flight -= 1
        while state.queued and state.in_flight < self._max_in_flight:
            if not self._start(lane, state):
                break  # what is queued waits for a running batch's ids
        if not state.queued and state.in_flight == 0:
            self._lanes.pop(lane, None)

    async def wait_idle(self) -> None:
        """Wait until no batch is running (for shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
