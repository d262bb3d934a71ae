"""How the reference servers are served: the same way as ``flowstate serve``.

The ratios in the report only mean something if the reference (echo, bare broadcast) pays the
same grpc.aio costs as the real server: the same server options (message sizes, keepalive, taken
from `flowstate.server.app.grpc_options` with default settings), the same process model (one
process, one asyncio event loop) and the same event loop implementation (the default one).
"""

from __future__ import annotations

import asyncio
from typing import Any


def server_options() -> list[tuple[str, Any]]:
    """The grpc.aio server options of ``flowstate serve`` with its default settings."""
    from flowstate.server.app import grpc_options
    from flowstate.server.config import ServerSettings

    return grpc_options(ServerSettings())


def install_event_loop_policy() -> None:
    """Use the event loop ``flowstate serve`` uses: asyncio's default."""
    asyncio.set_event_loop_policy(None)
