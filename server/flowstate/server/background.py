"""`BackgroundTask`: one asyncio task a server runs beside its RPCs until it is closed.

The shape of the server's periodic jobs (the stuck-flows count, the timer loop, the alert
scan): a subclass starts its loop with `_begin`, and `close` cancels it and waits for the
cancellation (a transaction in progress rolls back).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundTask"]


class BackgroundTask:
    """Owns at most one running task; `close` stops it (idempotent)."""

    _task: asyncio.Task[None] | None = None

    def _begin(self, loop: Coroutine[Any, Any, None], name: str) -> None:
        """Run `loop` as this object's task, named `name` (for task dumps)."""
        self._task = asyncio.create_task(loop, name=name)

    async def close(self) -> None:
        """Stop the task (waits for it to be cancelled); nothing when none runs."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
