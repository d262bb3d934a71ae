"""Interactive TransitionPhase latency while a bulk retry of 10,000 flows runs, against idle.

    .venv/bin/python -m bench.bulk_interference                 # 10k flows, 8 clients, 20 s each
    .venv/bin/python -m bench.bulk_interference --flows 2000 --seconds 10 --clients 4

One `flowstate serve` (default settings: bulk worker at ``FLOWSTATE_BULK_RATE`` = 100 flows/s)
on a fresh database (the bench's embedded PostgreSQL, or ``FLOWSTATE_BENCH_DATABASE_URL``):
`--flows` FAILED flows (retryable error) written as rows, and one flow per interactive client
with ``data_import`` IN_PROGRESS. Each client toggles its own flow's ``data_import`` between
IN_PROGRESS and WAITING_APPROVAL with TransitionPhase (closed loop, one call at a time, gRPC
from this process) for `--seconds` with nothing else running ("idle"), then for `--seconds`
right after a bulk retry of every FAILED flow started ("bulk"). It prints p50/p99 of both
phases, their ratio, and how many flows the bulk action took meanwhile, as one JSON line and a
Markdown row for bench/RESULTS.md. The issue's bound: p99 during the bulk action within 2x idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc.aio

from bench._db import database
from bench._latency import summary
from flowstate.core.model import (
    FlowStatus,
    PhaseState,
    Tenant,
)
from flowstate.storage import migrate
from flowstate.testing import discovery_flow, insert_flow_rows, serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc, states_pb2

TENANT = Tenant("bench-account", "bench-engagement")
_TURNS: dict[str, int] = {}


async def _prepare(dsn: str, url: str, flows: int, clients: int) -> list[str]:
    await migrate.upgrade(url)
    now = datetime.now(UTC)
    interactive = [
        discovery_flow(
            TENANT,
            at=now,
            data_import=PhaseState.IN_PROGRESS,
            status=FlowStatus.DATA_GATHERING,
            progress=6.0,
        )
        for _ in range(clients)
    ]
    rows = [discovery_flow(TENANT, at=now) for _ in range(flows)] + interactive
    await insert_flow_rows(url, rows)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("ANALYZE flows")
    finally:
        await connection.close()
    return [f.flow_id for f in interactive]


async def _client(
    stub: Any, metadata: Any, flow_id: str, until: float, samples: list[float]
) -> None:
    targets = (states_pb2.PHASE_STATE_WAITING_APPROVAL, states_pb2.PHASE_STATE_IN_PROGRESS)
    while time.monotonic() < until:
        turn = _TURNS.get(flow_id, 0)  # where the flow stands, across phases
        request = pb.TransitionPhaseRequest(
            flow_id=flow_id,
            phase="data_import",
            target_state=targets[turn % 2],
            request_id=uuid.uuid4().hex,
        )
        started = time.perf_counter()
        await stub.TransitionPhase(request, metadata=metadata)
        samples.append((time.perf_counter() - started) * 1000)
        _TURNS[flow_id] = turn + 1


async def _phase(stub: Any, metadata: Any, flows: list[str], seconds: float) -> list[float]:
    samples: list[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(stub, metadata, f, until, samples) for f in flows))
    return samples


async def _measure(address: str, metadata: Any, flows: list[str], seconds: float) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        await _phase(stub, metadata, flows, 2.0)  # warm-up
        idle = summary(await _phase(stub, metadata, flows, seconds))
        started = await stub.StartBulkAction(
            pb.StartBulkActionRequest(
                request_id=uuid.uuid4().hex,
                action=pb.BULK_ACTION_TYPE_RETRY,
                filter="status = FAILED",
                reason="bench",
            ),
            metadata=metadata,
        )
        action_id = started.bulk_action.bulk_action_id
        during = summary(await _phase(stub, metadata, flows, seconds))
        got = await stub.GetBulkAction(
            pb.GetBulkActionRequest(bulk_action_id=action_id), metadata=metadata
        )
        await stub.CancelBulkAction(
            pb.CancelBulkActionRequest(bulk_action_id=action_id), metadata=metadata
        )
    taken = got.bulk_action.applied_count + got.bulk_action.refused_count
    return {
        "idle": idle,
        "bulk": during,
        "p99_ratio": round(during["p99_ms"] / idle["p99_ms"], 2),
        "p50_ratio": round(during["p50_ms"] / idle["p50_ms"], 2),
        "bulk_total": started.bulk_action.total_count,
        "bulk_taken_during": taken,
        "bulk_rate_per_s": round(taken / seconds, 1),
    }


def main() -> None:
    """Run the scenario once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with database() as db:
        flows = asyncio.run(_prepare(db.dsn, db.sqlalchemy_url, args.flows, args.clients))
        env = {"FLOWSTATE_TIMER_INTERVAL": "0"}
        with serve_subprocess(database_url=db.sqlalchemy_url, env=env) as server:
            metadata = server.mint.metadata(
                TENANT, user="bench", scopes=("flows:admin", "flows:write")
            )
            figures = asyncio.run(_measure(server.address, metadata, flows, args.seconds))
    figures.update(flows=args.flows, clients=args.clients, seconds=args.seconds)
    print(json.dumps(figures))
    idle, bulk = figures["idle"], figures["bulk"]
    print(
        f"| bulk-retry/{args.flows // 1000}k/c{args.clients} | {idle['p50_ms']} | {idle['p99_ms']}"
        f" | {bulk['p50_ms']} | {bulk['p99_ms']} | {figures['p99_ratio']}x"
        f" | {figures['bulk_rate_per_s']}/s |"
    )


if __name__ == "__main__":
    main()
