"""The bulk worker: every server works through bulk actions (docs/bulk-actions.md).

Each round leases the oldest running action nobody holds and takes its flows until it is done,
cancelled or taken over (`BulkService.work_once`); when there is none, the loop sleeps
``FLOWSTATE_BULK_INTERVAL`` seconds. A failed round (the database restarting) is logged and
retried after the interval; the action's lease then expires and any server continues it. On
shutdown the loop stops and gives its lease up, so another replica continues at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from flowstate.server.background import BackgroundTask
from flowstate.server.metrics import Metrics
from flowstate.service.bulk import BulkService

__all__ = ["BulkLoop"]

_log = logging.getLogger("flowstate.server.bulk")


class BulkLoop(BackgroundTask):
    """Runs `BulkService.work_once` until closed."""

    def __init__(self, service: BulkService, metrics: Metrics, *, interval: float) -> None:
        """Use `start`."""
        self._service = service
        self._metrics = metrics
        self._interval = interval

    @classmethod
    def start(cls, service: BulkService, metrics: Metrics, *, interval: float) -> BulkLoop:
        """A loop whose first round runs now."""
        loop = cls(service, metrics, interval=interval)
        loop._begin(loop._run(), "flowstate-bulk")
        return loop

    async def _run(self) -> None:
        while True:
            try:
                round_ = await self._service.work_once()
            except Exception:
                _log.warning(
                    "bulk action round failed; retrying in %s s", self._interval, exc_info=True
                )
                round_ = None
            if round_ is not None and round_.taken:
                self._metrics.record_bulk_flows(round_.taken)
            if round_ is None or round_.action_id is None:
                await asyncio.sleep(self._interval)

    async def close(self) -> None:
        """Stop (the flow in progress is cancelled, its transaction rolls back) and give the
        lease up."""
        await super().close()
        with contextlib.suppress(Exception):
            await self._service.release()
