"""Price each part of the store's mutation SQL: the raw transaction with and without them.

    .venv/bin/python -m bench.decompose                 # 32 clients, 3 runs x 4 s per variant
    .venv/bin/python -m bench.decompose --concurrency 8 --runs 1

Runs `bench.raw` (asyncpg, no server) on distinct flows: the minimal transaction, the store's
full statement sequence, and the full sequence without row-level security (``rls``: the
``set_config`` of role and tenant), without the idempotency key (``key``: lookup and insert)
and without ``pg_notify`` (``notify``), and the ``transition-fn`` experiment (the same writes
in 2 autocommit round trips with optimistic concurrency), interleaved, and prints the medians:
throughput, p99, and CPU per transaction in the asyncpg client and in PostgreSQL. No Flowstate
server is involved; the database is the bench's own (embedded, or FLOWSTATE_BENCH_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

from bench import _db, _flowstate
from bench._procs import Processes
from bench.run import OUT, child_env

VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("minimal (raw limit)", "transition", ""),
    ("store's full sequence", "transition-full", ""),
    ("full without RLS set_config", "transition-full", "rls"),
    ("full without idempotency key", "transition-full", "key"),
    ("full without pg_notify", "transition-full", "notify"),
    ("full without all three", "transition-full", "rls,key,notify"),
    ("experiment: 2 round trips, optimistic", "transition-fn", ""),
)


def main(argv: list[str] | None = None) -> int:
    """Run the variants; print a table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--only", nargs="+", default=[], help="variant name prefixes, e.g. minimal store experiment"
    )
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or any(v[0].startswith(o) for o in args.only)]

    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    with Processes(OUT / "logs-decompose") as procs, _db.database() as db:
        from flowstate.storage import migrate

        asyncio.run(migrate.upgrade(db.sqlalchemy_url))
        flows = asyncio.run(_flowstate._create_flows(db.sqlalchemy_url, args.concurrency))
        for run in range(args.runs):
            for name, mode, omit in variants:
                command = [
                    sys.executable,
                    "-m",
                    "bench.raw",
                    mode,
                    "--dsn",
                    db.dsn,
                    "--flows",
                    ",".join(flows),
                    "--account",
                    _flowstate.TENANT[0],
                    "--engagement",
                    _flowstate.TENANT[1],
                    "--concurrency",
                    str(args.concurrency),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    str(args.warmup),
                    "--omit",
                    omit,
                ]
                if db.postgres_pid:
                    command += ["--postmaster-pid", str(db.postgres_pid)]
                result = procs.run_json(
                    f"run{run}-{mode}-{omit or 'none'}",
                    command,
                    timeout=args.warmup + args.duration + 60,
                    env=child_env(),
                )
                results[name].append(result)
                print(f"  run {run + 1} {name}: {result['throughput']:.0f}/s", flush=True)
    print()
    print(table(results, args.concurrency))
    return 0


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else float("nan")


def table(results: dict[str, list[dict[str, Any]]], concurrency: int) -> str:
    """Markdown table of the medians."""
    lines = [
        f"| variant ({concurrency} clients) | throughput | p99 ms | client CPU us/tx | "
        "PostgreSQL CPU us/tx |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        lines.append(
            f"| {name} | {_median(runs, 'throughput'):.0f}/s | {_median(runs, 'p99_ms'):.1f} | "
            f"{_median(runs, 'process_cpu_us'):.0f} | {_median(runs, 'postgres_cpu_us'):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
