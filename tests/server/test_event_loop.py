"""`flowstate serve` runs on uvloop (where installed) through `run_event_loop`."""

from __future__ import annotations

import asyncio

import pytest

from flowstate.server.app import run_event_loop


def test_run_event_loop_runs_the_coroutine_on_uvloop() -> None:
    pytest.importorskip("uvloop")

    async def main() -> tuple[str, int]:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__, 42

    module, value = run_event_loop(main())
    assert module.startswith("uvloop")
    assert value == 42
