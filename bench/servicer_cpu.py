"""Process CPU per TransitionPhase in-process: the servicer without gRPC (docs/performance.md).

``python -m bench.servicer_cpu`` calls `FlowStateServicer.TransitionPhase` directly (the `rpc`
wrapper included: token, metrics, correlation id; a fake gRPC context, the request as the bytes
gRPC would hand over) from `--clients` concurrent tasks, each toggling its own flow as the load
generator does, on the bench's embedded PostgreSQL (or ``FLOWSTATE_BENCH_DATABASE_URL``), on
uvloop. It prints, per repetition, this process's CPU time per call (`time.process_time`: our
Python plus asyncpg, no grpc.aio), PostgreSQL's, and the group-commit batch sizes; then the
minimum of the repetitions, the steadiest figure on a shared machine. `--group-commit off`
runs one transaction per call. Compare two versions of the code by running it from each
checkout, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import statistics
import time
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

from bench._cpu import postgres_cpu
from bench._db import database
from bench._flowstate import TENANT, _create_flows


class _Context:
    """What the `rpc` wrapper uses of a grpc.aio servicer context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort_with_status(self, status: Any) -> None:
        raise RuntimeError(f"refused: {status.details}")

    async def abort(self, code: Any, details: str, metadata: Any = ()) -> None:
        raise RuntimeError(f"refused: {code} {details}")


async def _measure(
    url: str, postmaster: int | None, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from flowstate.core.model import Tenant
    from flowstate.server.auth import Authenticator, JwtKey, Scope, mint_token
    from flowstate.server.metrics import Metrics
    from flowstate.server.rpc import Encoded, RpcSupport
    from flowstate.server.servicer import FlowStateServicer
    from flowstate.storage.store import FlowStore
    from flowstate.v1 import flow_service_pb2 as pb
    from flowstate.v1 import states_pb2

    flows = await _create_flows(url, args.clients)
    store = await FlowStore.open(
        url,
        group_commit=args.group_commit == "on",
        **(
            {} if args.max_in_flight is None else {"group_commit_max_in_flight": args.max_in_flight}
        ),
    )
    sizes: collections.Counter[int] = collections.Counter()
    group = store._group_commit
    if group is not None:
        run_batch = group._run_batch

        async def counted(lane: Hashable, batch: list[Any]) -> None:
            sizes[len(batch)] += 1
            await run_batch(lane, batch)

        group._run_batch = counted
    key = JwtKey.hs256(secrets.token_bytes(32))
    token = mint_token(
        key, tenant=Tenant(*TENANT), user_id="bench", scopes=(Scope.READ, Scope.WRITE)
    )
    servicer = FlowStateServicer(store, RpcSupport(Authenticator(key), Metrics()))
    context = _Context((("authorization", f"Bearer {token}"),))
    states = [states_pb2.PHASE_STATE_IN_PROGRESS, states_pb2.PHASE_STATE_WAITING_APPROVAL]
    run = secrets.token_hex(4)

    async def client(i: int, calls: int, rep: int) -> None:
        for seq in range(calls):
            request = pb.TransitionPhaseRequest(
                flow_id=flows[i],
                phase="data_import",
                target_state=states[(seq + 1) % 2],
                reason="bench",
                request_id=f"{run}-{rep}-{i}-{seq}",
            )
            encoded = Encoded(pb.TransitionPhaseRequest, request.SerializeToString())
            await servicer.TransitionPhase(encoded, context)  # type: ignore[arg-type]

    reports = []
    try:
        await asyncio.gather(*(client(i, 20, -1) for i in range(args.clients)))  # warm up
        for rep in range(args.reps):
            sizes.clear()
            per_client = args.calls // args.clients
            calls = per_client * args.clients
            pg_before = postgres_cpu(postmaster)
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            await asyncio.gather(*(client(i, per_client, rep) for i in range(args.clients)))
            cpu = time.process_time() - cpu_before
            wall = time.perf_counter() - wall_before
            pg = postgres_cpu(postmaster) - pg_before
            batches = sum(sizes.values())
            report = {
                "cpu_us": round(cpu / calls * 1e6, 1),
                "pg_us": round(pg / calls * 1e6, 1),
                "per_s": round(calls / wall),
                "batches": batches,
                "mean_batch": round(calls / batches, 2) if batches else None,
                "ones": round(sizes[1] / calls * 100, 1) if batches else None,
                "sizes": dict(sorted(sizes.items())),
            }
            print(json.dumps(report), flush=True)
            reports.append(report)
    finally:
        await store.close()
    return reports


def main() -> None:
    """Run the measurement (module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=4000, help="calls per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--group-commit", choices=("on", "off"), default="on")
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="group-commit batches (store's default)"
    )
    args = parser.parse_args()
    import uvloop

    with database() as db:
        from flowstate.storage import migrate

        asyncio.run(migrate.upgrade(db.sqlalchemy_url))
        reports = uvloop.run(_measure(db.sqlalchemy_url, db.postgres_pid, args))
    best = min(reports, key=lambda r: r["cpu_us"])
    print(
        f"{datetime.now(UTC):%H:%M:%S} min cpu {best['cpu_us']} us/call "
        f"(median {statistics.median(r['cpu_us'] for r in reports)}), "
        f"pg {best['pg_us']} us, ones {best['ones']}%, mean batch {best['mean_batch']}"
    )


if __name__ == "__main__":
    main()
