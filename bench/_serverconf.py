"""How the reference servers are served: the same way as ``flowstate serve``.

The ratios in the report only mean something if the reference (echo, bare broadcast) pays the
same grpc.aio costs as the real server: the same server options (message sizes, keepalive, taken
from `flowstate.server.app.grpc_options` with default settings), the same process model (one
process, one asyncio event loop) and the same event loop implementation (uvloop, through
`flowstate.server.app.run_event_loop`). The raw asyncpg references run on that loop too, so the
raw limit is the fastest way this machine's Python issues those statements.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def server_options() -> list[tuple[str, Any]]:
    """The grpc.aio server options of ``flowstate serve`` with its default settings."""
    from flowstate.server.app import grpc_options
    from flowstate.server.config import ServerSettings

    return grpc_options(ServerSettings())


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` on the event loop ``flowstate serve`` runs on."""
    from flowstate.server.app import run_event_loop

    return run_event_loop(main)
