"""A failing shutdown step is logged and the later steps still run (app.py's `release`).

A real in-process server with its own store and a metrics endpoint; the store's close is made
to fail after it has really closed (the one injected fault), so the test can see that the
steps after it (the metrics endpoint) and before it (the gRPC port) were still released.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from flowstate.testing import serve_in_process


async def _refuses(port: int) -> bool:
    """Whether 127.0.0.1:`port` refuses a TCP connection (nothing listens there any more)."""
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_failing_store_close_is_logged_and_later_steps_still_run(
    database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR, logger="flowstate.server")
    closed: list[str] = []
    async with serve_in_process(database_url, metrics_port=0) as running:
        server = running.server
        grpc_port = int(server.address.rsplit(":", 1)[1])
        metrics_port = server.metrics_port
        assert metrics_port is not None
        assert not await _refuses(grpc_port)
        assert not await _refuses(metrics_port)
        store = server.store
        real_close = store.close

        async def failing_close() -> None:
            await real_close()
            closed.append("store")
            raise OSError("disk detached while closing (injected)")

        monkeypatch.setattr(store, "close", failing_close)
    # serve_in_process's exit ran `stop`, which returned normally despite the failing step.
    assert closed == ["store"]
    failures = [r for r in caplog.records if r.getMessage() == "stopping the store failed"]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "disk detached" in str(failures[0].exc_info[1])
    assert await _refuses(grpc_port)  # the step before it
    assert await _refuses(metrics_port)  # the step after it
