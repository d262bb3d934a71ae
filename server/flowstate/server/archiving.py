"""The archiver as a background task of the server (``FLOWSTATE_ARCHIVE_DIR`` or ``_URL``).

Without an archive target the task still keeps the monthly history partitions created ahead
(every `PARTITIONS_INTERVAL`), so entries never pile up in the default partition of a server
that does not archive.

Every ``FLOWSTATE_ARCHIVE_INTERVAL`` seconds (the first run right after start) it runs one
bounded `flowstate.service.retention.Archiver` pass into the directory or S3 URL, with
``FLOWSTATE_RETENTION_DEFAULT_DAYS`` for tenants without a policy, on a small pool of its own,
and publishes the archive metrics. Every replica may run it: batches are locked with SKIP
LOCKED and partition changes are serialised in the database, so replicas split the work. A
failed run (database restarting, directory not writable) is logged and counted; the next one
tries again. Stopping cancels a run in progress: its open batch rolls back, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from flowstate.server.metrics import Metrics
from flowstate.service.retention import Archiver, ArchiveRunResult
from flowstate.storage.archives import archive_sink
from flowstate.storage.retention import RetentionStore

__all__ = ["PARTITIONS_INTERVAL", "ArchiverTask"]

PARTITIONS_INTERVAL = 6 * 3600.0
"""Seconds between partition checks of a server that does not archive."""

_log = logging.getLogger("flowstate.server.archiving")


class ArchiverTask:
    """Runs the archiver every `interval` seconds until closed."""

    def __init__(self, store: RetentionStore, archiver: Archiver | None, metrics: Metrics) -> None:
        """Use `start`."""
        self._store = store
        self._archiver = archiver
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        """Runs finished (successful or not): tests wait on it."""

    @classmethod
    async def start(
        cls,
        database_url: str,
        target: str | None,
        metrics: Metrics,
        *,
        interval: float,
        default_days: int | None,
    ) -> ArchiverTask:
        """Open the archiver's pool and start the timer (first run now); without a `target`
        only the partitions are kept ahead, every `PARTITIONS_INTERVAL` seconds."""
        store = await RetentionStore.open(database_url)
        archiver = (
            None
            if target is None
            else Archiver(store, archive_sink(target), default_days=default_days)
        )
        task = cls(store, archiver, metrics)
        every = interval if archiver is not None else PARTITIONS_INTERVAL
        task._task = asyncio.create_task(task._run(every), name="flowstate-archiver")
        return task

    async def run_once(self) -> ArchiveRunResult | None:
        """One run, its metrics published (without a target: the partitions only)."""
        if self._archiver is None:
            created = await self._store.ensure_partitions()
            if created:
                _log.info("created history partitions %s", created)
            return None
        result = await self._archiver.run_once()
        pending, lag = await self._archiver.lag()
        self._metrics.record_archive_run(
            archived=result.archived_flows,
            purged=result.purged_flows,
            dropped=len(result.dropped_partitions),
            pending=pending,
            lag=lag,
        )
        if result.archived_flows or result.purged_flows or result.dropped_partitions:
            _log.info(
                "archived %d flow(s), deleted %d, dropped partitions %s",
                result.archived_flows,
                result.purged_flows,
                result.dropped_partitions or "none",
            )
        return result

    async def _run(self, interval: float) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                self._metrics.record_archive_failure()
                _log.warning("archiver run failed; next in %s s", interval, exc_info=True)
            self.runs += 1
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop (a run in progress is cancelled) and close the pool."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._store.close()
