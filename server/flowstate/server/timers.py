"""The timer loop: every server fires due timers (docs/timers.md) on its own schedule.

Each round claims at most ``FLOWSTATE_TIMER_BATCH`` due timers of every tenant
(`TimerService.fire_due`); a full batch starts the next round at once (a backlog drains at
database speed), otherwise the loop sleeps ``FLOWSTATE_TIMER_INTERVAL`` seconds. So a timer
fires within about one interval of its due time while its database is reachable, and late
rather than never after an outage or a restart: rows stay until fired. A failed round (the
database restarting) is logged and retried after the interval. Each fired timer counts in
``flowstate_timers_fired_total{kind}`` and ``flowstate_timer_lag_seconds``, and its history
entries in the transition metrics like any mutation's.
"""

from __future__ import annotations

import asyncio
import logging

from flowstate.server.background import BackgroundTask
from flowstate.server.metrics import Metrics
from flowstate.service.timers import TimerService

__all__ = ["TimerLoop"]

_log = logging.getLogger("flowstate.server.timers")


class TimerLoop(BackgroundTask):
    """Runs `TimerService.fire_due` every `interval` seconds until closed."""

    def __init__(self, service: TimerService, metrics: Metrics, *, interval: float) -> None:
        """Use `start`."""
        self._service = service
        self._metrics = metrics
        self._interval = interval

    @classmethod
    def start(cls, service: TimerService, metrics: Metrics, *, interval: float) -> TimerLoop:
        """A loop whose first round runs now."""
        loop = cls(service, metrics, interval=interval)
        loop._begin(loop._run(), "flowstate-timers")
        return loop

    async def run_once(self) -> int:
        """One round: claim, fire, record; how many timers were claimed."""
        round_ = await self._service.fire_due()
        for fired in round_.fired:
            self._metrics.record_timer(fired.kind, fired.lag_seconds)
            self._metrics.record_entries(fired.result.entries)
        return round_.claimed

    async def _run(self) -> None:
        while True:
            try:
                claimed = await self.run_once()
            except Exception:
                _log.warning(
                    "firing timers failed; retrying in %s s", self._interval, exc_info=True
                )
                claimed = 0
            if claimed < self._service.batch:
                await asyncio.sleep(self._interval)
