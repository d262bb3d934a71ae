"""Stand-in for ``flowstate serve`` until the CLI lands: the same `FlowstateServer`, settings
from the ``FLOWSTATE_*`` environment, stopped by SIGTERM/SIGINT. Used by `bench._flowstate`
only when ``flowstate.cli.main`` is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from flowstate.server.app import FlowstateServer
from flowstate.server.config import ServerSettings


async def _serve() -> None:
    settings = ServerSettings.from_env(os.environ)
    server = await FlowstateServer.start(settings)
    if settings.ready_file is not None:
        settings.ready_file.write_text(server.address + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    """Serve until signalled."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
