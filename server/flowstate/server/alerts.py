"""Runs the alert scan (`flowstate.service.alerts`) on a timer, on every replica.

Every ``FLOWSTATE_ALERT_CHECK_INTERVAL`` seconds the monitor runs one round; a round that found
a whole batch (``FLOWSTATE_ALERT_BATCH_SIZE``) is followed by another at once, so a backlog is
worked off in bounded steps. Replicas need no coordination: each breach is raised once (the
alert in force, written in the same transaction as its entry, is the marker). The alerts raised
are counted in ``flowstate_alerts_total{kind}``; a failed round (database restarting) is logged
and retried next interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from flowstate.core.model import FlowStatus
from flowstate.server.background import BackgroundTask
from flowstate.server.metrics import Metrics
from flowstate.service.alerts import AlertScan, ScanResult
from flowstate.storage import FlowStore

__all__ = ["AlertMonitor"]

_log = logging.getLogger("flowstate.server.alerts")
_MAX_ROUNDS_IN_A_ROW = 10


class AlertMonitor(BackgroundTask):
    """Runs alert scans every `interval` seconds until closed (`close`, from BackgroundTask)."""

    def __init__(
        self,
        store: FlowStore,
        metrics: Metrics,
        *,
        stuck_after: Mapping[FlowStatus, float],
        interval: float,
        batch_size: int,
    ) -> None:
        """Use `start`."""
        self._scan = AlertScan(store, stuck_after=stuck_after, batch_size=batch_size)
        self._metrics = metrics
        self._interval = interval

    @classmethod
    def start(
        cls,
        store: FlowStore,
        metrics: Metrics,
        *,
        stuck_after: Mapping[FlowStatus, float],
        interval: float,
        batch_size: int,
    ) -> AlertMonitor:
        """A monitor whose first scan runs now, then every `interval` seconds."""
        monitor = cls(
            store, metrics, stuck_after=stuck_after, interval=interval, batch_size=batch_size
        )
        monitor._begin(monitor._run(), "flowstate-alerts")
        return monitor

    async def scan(self) -> ScanResult:
        """One round; its entries are counted in the metrics."""
        result = await self._scan.run_once()
        self._metrics.record_entries(result.entries)
        return result

    async def _run(self) -> None:
        while True:
            try:
                for _ in range(_MAX_ROUNDS_IN_A_ROW):
                    if not (await self.scan()).full:
                        break
            except Exception:
                _log.warning("alert scan failed; retrying in %s s", self._interval, exc_info=True)
            await asyncio.sleep(self._interval)
