"""A quiet tenant's GetFlow latency while another tenant floods the server, against idle.

    .venv/bin/python -m bench.noisy_tenant                       # 10 s per phase, 16 flooders
    .venv/bin/python -m bench.noisy_tenant --seconds 5 --flooders 8 --limit 200

One `flowstate serve` per mode (one worker process, on the bench's PostgreSQL: embedded, or
``FLOWSTATE_BENCH_DATABASE_URL``), each measured in three phases of `--seconds`:

1. ``idle``: the quiet tenant alone, 2 clients, GetFlow in a closed loop (gRPC from this
   process);
2. ``flood``: the same, while `--flooders` clients of the noisy tenant call GetFlow in a
   closed loop from a separate process, ignoring refusals and RetryInfo (a hostile client);

in two modes: ``limited`` (``FLOWSTATE_RATE_LIMITS=read=LIMIT:2*LIMIT``) and ``unlimited``
(``off``). It prints one JSON line with p50/p99 of the quiet tenant per phase and mode, the
noisy tenant's admitted and refused calls, and a Markdown row per mode for bench/RESULTS.md.
The issue's bound: with limits, the quiet tenant's p99 under the flood within 2x idle. Timing on
a shared 2-core machine is noisy: compare the ratios of one run, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import grpc
import grpc.aio

from bench._db import database
from bench._latency import summary
from flowstate.core.model import Tenant
from flowstate.storage import migrate
from flowstate.testing import serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc

QUIET = Tenant("bench-account", "quiet")
NOISY = Tenant("bench-account", "noisy")
QUIET_CLIENTS = 2


async def _create_flow(address: str, metadata: Any) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        created = await stub.CreateFlow(
            pb.CreateFlowRequest(request_id=uuid.uuid4().hex), metadata=metadata
        )
        return created.flow.flow_id


async def _loop(
    stub: Any, metadata: Any, flow_id: str, until: float, samples: list[float] | None
) -> tuple[int, int]:
    ok = refused = 0
    request = pb.GetFlowRequest(flow_id=flow_id)
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            await stub.GetFlow(request, metadata=metadata)
            ok += 1
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            refused += 1
            continue
        if samples is not None:
            samples.append((time.perf_counter() - started) * 1000)
    return ok, refused


async def _clients(
    address: str, metadata: Any, flow_id: str, clients: int, seconds: float, measure: bool
) -> tuple[list[float], int, int]:
    samples: list[float] = []
    until = time.monotonic() + seconds
    channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
    try:
        results = await asyncio.gather(
            *(
                _loop(
                    flow_service_pb2_grpc.FlowStateServiceStub(channel),
                    metadata,
                    flow_id,
                    until,
                    samples if measure else None,
                )
                for channel in channels
            )
        )
    finally:
        for channel in channels:
            await channel.close()
    return samples, sum(r[0] for r in results), sum(r[1] for r in results)


def _flood_main(address: str, token: str, flow_id: str, clients: int, seconds: float) -> None:
    """The flooding process: prints ``{"ok": n, "refused": m}``."""
    metadata = (("authorization", f"Bearer {token}"),)
    _, ok, refused = asyncio.run(_clients(address, metadata, flow_id, clients, seconds, False))
    print(json.dumps({"ok": ok, "refused": refused}))


async def _measure_mode(server: Any, flooders: int, seconds: float) -> dict[str, Any]:
    quiet_md = server.mint.metadata(QUIET, user="bench", scopes=("flows:write",))
    noisy_token = server.mint(NOISY, user="bench", scopes=("flows:write",))
    quiet_flow = await _create_flow(server.address, quiet_md)
    noisy_flow = await _create_flow(server.address, (("authorization", f"Bearer {noisy_token}"),))
    await _clients(server.address, quiet_md, quiet_flow, QUIET_CLIENTS, 2.0, False)  # warm-up
    idle, _, _ = await _clients(server.address, quiet_md, quiet_flow, QUIET_CLIENTS, seconds, True)
    flood = subprocess.Popen(  # noqa: ASYNC220 - started, then awaited off the loop below
        [
            sys.executable,
            "-m",
            "bench.noisy_tenant",
            "--flood",
            server.address,
            noisy_token,
            noisy_flow,
            str(flooders),
            str(seconds + 1.0),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        await asyncio.sleep(0.5)  # the flood is running
        during, _, _ = await _clients(
            server.address, quiet_md, quiet_flow, QUIET_CLIENTS, seconds, True
        )
        out, _ = await asyncio.to_thread(flood.communicate, None, seconds + 60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    noisy = json.loads(out.strip().splitlines()[-1])
    idle_s, during_s = summary(idle), summary(during)
    return {
        "idle": idle_s,
        "flood": during_s,
        "p99_ratio": round(during_s["p99_ms"] / idle_s["p99_ms"], 2),
        "p50_ratio": round(during_s["p50_ms"] / idle_s["p50_ms"], 2),
        "noisy_ok_per_s": round(noisy["ok"] / (seconds + 1.0), 1),
        "noisy_refused_per_s": round(noisy["refused"] / (seconds + 1.0), 1),
    }


def main() -> None:
    """Run both modes once and print the figures."""
    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        address, token, flow_id, clients, seconds = sys.argv[2:7]
        _flood_main(address, token, flow_id, int(clients), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flooders", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=200, help="the read limit per second")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "flooders": args.flooders,
        "seconds": args.seconds,
        "limit": f"read={args.limit}:{2 * args.limit}",
    }
    modes = {"limited": f"read={args.limit}:{2 * args.limit}", "unlimited": "off"}
    with database() as db:
        asyncio.run(migrate.upgrade(db.sqlalchemy_url))
        for mode, limits in modes.items():
            env = {
                "FLOWSTATE_RATE_LIMITS": limits,
                "FLOWSTATE_WORKERS": "1",
                "FLOWSTATE_TIMER_INTERVAL": "0",
                "FLOWSTATE_WEBHOOKS": "off",
            }
            with serve_subprocess(database_url=db.sqlalchemy_url, env=env) as server:
                figures[mode] = asyncio.run(_measure_mode(server, args.flooders, args.seconds))
    print(json.dumps(figures))
    for mode in modes:
        m = figures[mode]
        print(
            f"| noisy-tenant/{mode}/f{args.flooders} | {m['idle']['p50_ms']} | "
            f"{m['idle']['p99_ms']} | {m['flood']['p50_ms']} | {m['flood']['p99_ms']} | "
            f"{m['p99_ratio']}x | {m['noisy_ok_per_s']}/s ok, {m['noisy_refused_per_s']}/s "
            "refused |"
        )


if __name__ == "__main__":
    main()
