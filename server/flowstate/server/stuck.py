"""Counts stuck flows for the ``flowstate_stuck_flows`` gauge, on a timer.

A flow is stuck when it is not terminal and has not changed for ``FLOWSTATE_STUCK_AFTER``
seconds. Operators alert on the gauge; they find the flows themselves per tenant with
``ListFlows(updated_before=..., statuses=...)`` (``flowstate flows list --stuck``). The count
runs only on servers that serve metrics; a failed count (database restarting) is logged and
the gauge keeps its last value, which the checked timestamp shows to be old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from flowstate.server.background import BackgroundTask
from flowstate.server.metrics import Metrics
from flowstate.storage import FlowStore

__all__ = ["StuckFlowsMonitor"]

_log = logging.getLogger("flowstate.server.stuck")


class StuckFlowsMonitor(BackgroundTask):
    """Refreshes the stuck-flows gauge every `interval` seconds until closed."""

    def __init__(
        self, store: FlowStore, metrics: Metrics, *, stuck_after: float, interval: float
    ) -> None:
        """Use `start`."""
        self._store = store
        self._metrics = metrics
        self._stuck_after = timedelta(seconds=stuck_after)
        self._interval = interval

    @classmethod
    def start(
        cls, store: FlowStore, metrics: Metrics, *, stuck_after: float, interval: float
    ) -> StuckFlowsMonitor:
        """A monitor whose first count runs now, then every `interval` seconds."""
        monitor = cls(store, metrics, stuck_after=stuck_after, interval=interval)
        monitor._begin(monitor._run(), "flowstate-stuck-flows")
        return monitor

    async def refresh(self) -> None:
        """Count once and publish the figures."""
        checked_at = time.time()
        unchanged_since = datetime.fromtimestamp(checked_at, UTC) - self._stuck_after
        counts = await self._store.count_stuck_flows(unchanged_since=unchanged_since)
        self._metrics.set_stuck_flows(counts, checked_at=checked_at)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                _log.warning(
                    "counting stuck flows failed; retrying in %s s", self._interval, exc_info=True
                )
            await asyncio.sleep(self._interval)
