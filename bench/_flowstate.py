"""The Flowstate side of the bench: start ``flowstate serve``, mint a token, create the flows.

The server runs as a subprocess in its own process group, on an ephemeral 127.0.0.1 port,
against the bench's database (``FLOWSTATE_DATABASE_URL``), migrating it at start, with an HS256
secret the bench generates (``FLOWSTATE_JWT_SECRET``) so that it can mint the token the load
generator sends. Everything else is the server's default configuration (pool size, logging,
keepalive, heartbeats): the bench measures what an operator gets.

The flows are created through `FlowStore` (the server's own repository) from the bench
process before any measurement, each with ``data_import`` IN_PROGRESS, in one tenant.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._procs import BenchError, Processes, tail

if TYPE_CHECKING:
    from bench._db import Database
    from bench.run import Config, Server

TENANT = ("bench-account", "bench-engagement")
REPO = Path(__file__).resolve().parent.parent


class Unavailable(Exception):  # noqa: N818 - reads as "Flowstate unavailable: reason"
    """The Flowstate server (or a part of it the bench needs) is not there yet."""


@dataclass
class Flowstate:
    """A running Flowstate server and the flows the scenarios use."""

    server: Server
    flows: list[str] = field(default_factory=list)
    """One per client of the distinct-flows scenarios (client i uses flows[i])."""
    hot_flow: str = ""
    """The one flow every client of the hot-flow scenario writes."""
    watch_flow: str = ""
    """The flow the fan-out and idle-stream scenarios watch."""
    raw_flows: list[str] = field(default_factory=list)
    """The raw-limit transactions' own flows (the last one is their hot flow)."""


def _serve_command() -> list[str]:
    """``flowstate serve`` of this environment (the module, so no installed script is needed)."""
    return [sys.executable, "-m", "flowstate.cli.main", "serve"]


def start(
    procs: Processes, db: Database, config: Config, env: dict[str, str], work_dir: Path
) -> Flowstate:
    """Start the server, mint the token, create the flows; Unavailable if it cannot be."""
    try:
        from flowstate.storage.store import FlowStore  # noqa: F401 - needed by _create_flows
    except ImportError as exc:
        raise Unavailable(f"the Flowstate server is not importable ({exc})") from exc
    server = start_server(procs, db, env, work_dir)
    n = max(config.concurrencies)
    created = asyncio.run(_create_flows(db.sqlalchemy_url, n + 2 + n + 1))
    return Flowstate(
        server=server,
        flows=created[:n],
        hot_flow=created[n],
        watch_flow=created[n + 1],
        raw_flows=created[n + 2 :],
    )


def start_server(
    procs: Processes, db: Database, env: dict[str, str], work_dir: Path, name: str = "flowstate"
) -> Server:
    """Start one ``flowstate serve`` and mint a token for the bench tenant."""
    from bench.run import Server

    try:
        from flowstate.core.model import Tenant
        from flowstate.server.auth import JwtKey, Scope, mint_token
    except ImportError as exc:
        raise Unavailable(f"the Flowstate server is not importable ({exc})") from exc

    secret = secrets.token_urlsafe(48)
    ready = work_dir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    data_dir = work_dir / "flowstate-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    server_env = {
        # One server process unless the run asks for more (--server-env FLOWSTATE_WORKERS=2):
        # the bench compares one process with one reference process.
        "FLOWSTATE_WORKERS": "1",
        # The bench measures throughput, not the per-tenant limits (one tenant sends it all).
        "FLOWSTATE_RATE_LIMITS": "off",
        **env,
        "FLOWSTATE_HOST": "127.0.0.1",
        "FLOWSTATE_PORT": "0",
        "FLOWSTATE_HTTP_PORT": "off",
        "FLOWSTATE_DATABASE_URL": db.sqlalchemy_url,
        "FLOWSTATE_MIGRATE_ON_START": "1",
        "FLOWSTATE_JWT_SECRET": secret,
        "FLOWSTATE_READY_FILE": str(ready),
        "FLOWSTATE_DATA_DIR": str(data_dir),
    }
    for variable in (
        "FLOWSTATE_JWT_SECRET_FILE",
        "FLOWSTATE_JWT_PUBLIC_KEY_FILE",
        "FLOWSTATE_TLS_CERT_FILE",
    ):
        server_env.pop(variable, None)
    proc = procs.start(name, _serve_command(), env=server_env, cwd=REPO)
    log = procs.log_path(name)
    deadline = time.monotonic() + 90
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None:
            raise BenchError(f"flowstate serve exited with {proc.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            procs.stop(proc)
            raise BenchError(f"flowstate serve not ready in 90 s: {tail(log)}")
        time.sleep(0.1)
    address = ready.read_text().strip().splitlines()[0]
    if not address.startswith("127.0.0.1:"):
        procs.stop(proc)
        raise BenchError(f"flowstate serve listens on {address!r}, not on 127.0.0.1")
    token = mint_token(
        JwtKey.hs256(secret.encode()),
        tenant=Tenant(*TENANT),
        user_id="bench",
        scopes=(Scope.READ, Scope.WRITE),
    )
    return Server("flowstate", address, proc, token)


async def _create_flows(url: str, count: int) -> list[str]:
    """`count` discovery flows of the bench tenant, each with data_import IN_PROGRESS."""
    from flowstate.core.commands import Context, TransitionPhase
    from flowstate.core.model import PhaseState, Tenant
    from flowstate.service import FlowService
    from flowstate.storage.store import FlowStore

    tenant = Tenant(*TENANT)
    store = await FlowStore.open(url, pool_size=4)
    flows = FlowService(store)
    try:

        async def one() -> str:
            ctx = Context(now=datetime.now(UTC), user_id="bench-setup")
            created: Any = await flows.create_flow(tenant, definition_name="discovery", ctx=ctx)
            flow_id: str = created.flow.flow_id
            await flows.mutate(
                tenant,
                flow_id,
                TransitionPhase("data_import", PhaseState.IN_PROGRESS, reason="bench setup"),
                Context(now=datetime.now(UTC), user_id="bench-setup"),
            )
            return flow_id

        ids: list[str] = []
        for start in range(0, count, 8):
            ids += await asyncio.gather(*(one() for _ in range(min(8, count - start))))
        return ids
    finally:
        await store.close()
