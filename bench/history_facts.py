"""What recording the flow's facts with each history entry costs the write path (migration 0017).

    .venv/bin/python -m bench.history_facts               # ~1 minute
    .venv/bin/python -m bench.history_facts --rounds 3

Each entry records every phase's state and the open error codes at its version
(`HistoryEntry.phase_states_after` / `error_codes_after`; docs/filters.md "On WatchFlows").
Figures in CPU time (this process's, and the PostgreSQL backend's: steadier than wall time on
a shared 2-core machine), each with the record and without it, interleaved, medians:

- core: the decision's `_facts_after` per entry (a `TransitionPhase` of the discovery flow);
- codec: `entry_to_json` plus `dumps` of one entry (what the write statement's parameter
  carries);
- SQL: the history insert of the write statement (``jsonb_populate_recordset`` into
  `flow_history`, 20 entries per statement, as a group-commit batch; one transaction per
  block, so no fsync in the figure), CPU of the backend per entry; and the bytes the two
  columns add to a row (`pg_column_size`).

The database is the bench's own (embedded, or FLOWSTATE_BENCH_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psutil

from bench import _db
from flowstate.core import commands
from flowstate.core.commands import Context, TransitionPhase, apply_command, create_flow
from flowstate.core.definitions import DISCOVERY
from flowstate.core.model import ErrorCode, HistoryEntry, PhaseError, PhaseState, Tenant
from flowstate.storage import codec
from flowstate.storage.statements import ENTRY_COLUMNS

_TENANT = Tenant("bench-account", "bench-engagement")
_FACTS = ("phase_states_after", "error_codes_after")
_BATCH = 20


def _sample() -> tuple[Any, HistoryEntry]:
    """A discovery flow with one completed and one failed phase, and its last entry."""
    ctx = Context(now=datetime.now(UTC), user_id="bench")
    flow = create_flow("00000000-0000-4000-8000-000000000001", _TENANT, DISCOVERY, ctx).flow
    for command in (
        TransitionPhase("data_import", PhaseState.IN_PROGRESS),
        TransitionPhase("data_import", PhaseState.COMPLETED),
        TransitionPhase("field_mapping", PhaseState.IN_PROGRESS),
        TransitionPhase(
            "field_mapping", PhaseState.FAILED, error=PhaseError(ErrorCode.AGENT_TIMEOUT, "x")
        ),
    ):
        decision = apply_command(flow, DISCOVERY, command, ctx)
        flow = decision.flow
    return flow, decision.entries[-1]


def _python(rounds: int) -> dict[str, float]:
    """Microseconds per entry: the core's record, and the codec's encoding with / without."""
    flow, entry = _sample()
    bare = HistoryEntry(**{f: getattr(entry, f) for f in entry.__slots__ if f not in _FACTS})
    number = 20000

    def per_call(statement: Any) -> float:
        best = min(timeit.repeat(statement, number=number, repeat=rounds, timer=time.process_time))
        return best / number * 1e6

    return {
        "core _facts_after": per_call(lambda: commands._facts_after(flow)),
        "codec with": per_call(lambda: codec.dumps([codec.entry_to_json(flow, entry)])),
        "codec without": per_call(lambda: codec.dumps([codec.entry_to_json(flow, bare)])),
    }


async def _sql(dsn: str, url: str, rounds: int) -> dict[str, float]:
    """Microseconds per entry of the history insert with / without; bytes the columns add."""
    from flowstate.storage.migrate import upgrade

    await upgrade(url)
    flow, entry = _sample()
    row = codec.flow_to_json(flow)
    with_facts = codec.entry_to_json(flow, entry)
    without = {k: v for k, v in with_facts.items() if k not in _FACTS}
    insert = (
        f"INSERT INTO flow_history ({', '.join(ENTRY_COLUMNS)})"
        f" SELECT {', '.join(ENTRY_COLUMNS)}"
        " FROM jsonb_populate_recordset(NULL::flow_history, $1::jsonb)"
    )
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO flows SELECT * FROM jsonb_populate_record(NULL::flows, $1::jsonb)",
            codec.dumps(row),
        )
        backend = psutil.Process(connection.get_server_pid())
        version = 1000
        statements = 500
        timings: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(rounds):
            for name, sample in (("with", with_facts), ("without", without)):
                before = sum(backend.cpu_times()[:2])
                async with connection.transaction():
                    for _ in range(statements):
                        batch = []
                        for _ in range(_BATCH):
                            version += 1
                            batch.append({**sample, "version": version})
                        await connection.execute(insert, codec.dumps(batch))
                spent = sum(backend.cpu_times()[:2]) - before
                timings[name].append(spent / (statements * _BATCH) * 1e6)
        size = await connection.fetchval(
            "SELECT avg(coalesce(pg_column_size(phase_states_after), 0)"
            " + coalesce(pg_column_size(error_codes_after), 0)) FROM flow_history"
            " WHERE phase_states_after IS NOT NULL"
        )
        row_size = await connection.fetchval(
            "SELECT avg(pg_column_size(h.*)) FROM flow_history h WHERE phase_states_after IS NULL"
        )
    finally:
        await connection.close()
    return {
        "sql with": statistics.median(timings["with"]),
        "sql without": statistics.median(timings["without"]),
        "bytes added": float(size),
        "row bytes without": float(row_size),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    figures = _python(args.rounds)
    with _db.database() as database:
        figures.update(asyncio.run(_sql(database.dsn, database.sqlalchemy_url, args.rounds)))
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        unit = "bytes" if "bytes" in name else "us CPU/entry"
        print(f"{name:<{width}}  {value:8.2f} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
