"""The raw limits: Flowstate's database work issued directly with asyncpg, no server in between.

Run as a separate process by `bench.run` (``python -m bench.raw MODE ...``); it prints one JSON
object with the same keys as the Go load generator's ``unary`` mode. Modes:

``transition``
    The raw limit of TransitionPhase: the same work on the same tables and indexes (the
    Flowstate schema, migrated by Alembic), issued the fastest direct way: ``BEGIN``;
    ``SELECT * FROM flows WHERE id = $1 FOR UPDATE``; decide in Python (toggle ``data_import``
    IN_PROGRESS <-> WAITING_APPROVAL, as the load generator does through the API);
    ``WITH u AS (UPDATE flows SET phase_states, phase_details, status, progress, version,
    updated_at ...) INSERT INTO flow_history ...``; ``COMMIT``. Client i uses flow i (distinct
    flows), or every client uses the first flow (hot flow).
``transition-full``
    The shape of what `flowstate.storage.store.FlowStore.mutate` sends for the same change
    (as of the store's docstring when this was written), 4 round trips: ``BEGIN`` and the
    ``set_config`` of role and tenant (row-level security) as one simple-protocol batch; the
    tenant-filtered ``SELECT flows.* ... LEFT JOIN idempotency_keys ... FOR UPDATE OF flows``;
    one statement that updates the flow, inserts history and the idempotency key (response
    ``{flow, entry_count}``) and calls ``pg_notify``; ``COMMIT``. Its gap to ``transition`` is
    database work the design chose; the gap between it and the server is Python (gRPC, auth,
    conversion, the store's code, the core). ``--omit rls,key,notify`` leaves parts out.
``transition-fn``
    An experiment for the store's owner: the same change as ``transition-full`` in 2 round trips
    and no explicit transaction. A plpgsql function reads the flow and the key in the tenant
    (no lock); Python decides; a second function, in its own autocommit statement, enters the
    tenant, updates the flow only if its version is still the one read (optimistic concurrency),
    inserts the history entry and the key and notifies. Distinct flows never conflict; a
    conflict would be retried by re-reading. Functions: `FN_DDL` (created by this mode).
``select``
    The read behind GetFlow: ``SELECT * FROM flows WHERE id = $1`` (primary key), autocommit.

Each client is one connection (asyncpg's JSON codecs installed as SQLAlchemy's asyncpg dialect
installs them), in one process and one event loop (the server's: `bench._serverconf.run`), like
the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bench import _serverconf
from bench._cpu import CpuReading

PHASE = "data_import"
APP_ROLE = "flowstate_app"
_IDEMPOTENCY_TTL = timedelta(days=1)
NOTIFY_CHANNEL = "flowstate_bench_raw"
"""The raw full transaction notifies a channel nobody listens on: the cost is the same."""

_TOGGLE = {"in_progress": "waiting_approval", "waiting_approval": "in_progress"}
_STATUS = {"in_progress": "data_gathering", "waiting_approval": "waiting_approval"}
_PROGRESS = {"in_progress": 6.0, "waiting_approval": 16.0}

_SELECT_FOR_UPDATE = "SELECT * FROM flows WHERE id = $1 FOR UPDATE"
SELECT_FLOW = "SELECT * FROM flows WHERE id = $1"
"""The raw read behind GetFlow (also served by the grpc+raw reference)."""
_UPDATE = """
UPDATE flows
SET phase_states = $2, phase_details = $3, status = $4, progress = $5, version = $6,
    updated_at = $7
WHERE id = $1
"""
_HISTORY_VALUES = """
INSERT INTO flow_history (
    flow_id, client_account_id, engagement_id, version, kind, phase, from_state, to_state,
    status_before, status_after, reason, user_id, request_id, metadata, error,
    time_in_state_seconds, progress_after, cause, occurred_at
) VALUES ($1, $8, $9, $6, 'transition', $10, $11, $12, $13, $4, 'bench', 'bench', $14, $15,
          NULL, $16, $5, '', $7)
"""
_WRITE = f"WITH u AS ({_UPDATE}) {_HISTORY_VALUES}"
"""The raw limit's one write statement: flow row and history entry."""

_LOCK_IN_TENANT = (
    "SELECT * FROM flows WHERE id = $1 AND client_account_id = $2 AND engagement_id = $3 FOR UPDATE"
)
_LOCK_WITH_KEY = """
SELECT flows.*, k.operation AS key_operation, k.fingerprint AS key_fingerprint,
       k.response AS key_response, k.expires_at AS key_expires_at
FROM flows LEFT OUTER JOIN idempotency_keys AS k
  ON k.client_account_id = $2 AND k.engagement_id = $3 AND k.request_id = $4
WHERE flows.id = $1 AND flows.client_account_id = $2 AND flows.engagement_id = $3
FOR UPDATE OF flows
"""
_KEY_CTE = """
k AS (
    INSERT INTO idempotency_keys (
        client_account_id, engagement_id, request_id, operation, fingerprint, flow_id,
        response, created_at, expires_at
    ) VALUES ($8, $9, $14, 'mutate', ${fingerprint}, $1,
              jsonb_build_object('flow', ${flow}::jsonb, 'entry_count', 1), $7, ${expires})
)"""
OMITTABLE = ("rls", "key", "notify")
"""Parts of the store's transaction that ``transition-full --omit`` can leave out."""


def full_write_statement(omit: frozenset[str]) -> str:
    """The store's one write statement: flow row, history entry, idempotency key, notification.

    Without "key" there is no key CTE, without "notify" the statement ends in ``SELECT 1``;
    parameters $17.. follow in that order (fingerprint, flow JSON, expires_at, payload).
    """
    ctes = [f"u AS ({_UPDATE})", f"h AS ({_HISTORY_VALUES})"]
    n = 16
    if "key" not in omit:
        ctes.append(_KEY_CTE.format(fingerprint=n + 1, flow=n + 2, expires=n + 3))
        n += 3
    final = "SELECT 1" if "notify" in omit else f"SELECT pg_notify('{NOTIFY_CHANNEL}', ${n + 1})"
    return "WITH " + ",\n".join(ctes) + "\n" + final


async def _connect(dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await install_json_codecs(conn)
    return conn


async def install_json_codecs(conn: asyncpg.Connection) -> None:
    """JSON codecs as SQLAlchemy's asyncpg dialect installs them."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


def _toggled(row: asyncpg.Record, now: datetime) -> dict[str, Any]:
    """The decision, made in Python like the server makes it (not by SQL)."""
    states: dict[str, str] = dict(row["phase_states"])
    before = states[PHASE]
    after = _TOGGLE.get(before, "in_progress")
    states[PHASE] = after
    details: list[dict[str, Any]] = [dict(d) for d in row["phase_details"]]
    entered = None
    for detail in details:
        if detail["name"] == PHASE:
            entered = detail.get("state_entered_at")
            detail["state_entered_at"] = now.isoformat()
    in_state = (now - datetime.fromisoformat(entered)).total_seconds() if entered else None
    return {
        "states": states,
        "details": details,
        "before": before,
        "after": after,
        "status_before": row["status"],
        "status": _STATUS[after],
        "progress": _PROGRESS[after],
        "version": row["version"] + 1,
        "time_in_state": in_state,
    }


async def minimal_transition(
    conn: asyncpg.Connection | PoolConnectionProxy, flow_id: str, request_id: str
) -> dict[str, Any]:
    """The raw limit's transaction on `conn`: lock, decide in Python, one write, commit.

    Returns the decision (new state, status, progress, version). Shared with the grpc+raw
    reference server (`bench.ref_server --dsn`), which serves it behind a minimal handler.
    """
    async with conn.transaction():
        row = await conn.fetchrow(_SELECT_FOR_UPDATE, flow_id)
        if row is None:
            raise LookupError(flow_id)
        now = datetime.now(UTC)
        decision = _toggled(row, now)
        await conn.execute(_WRITE, *_write_args(flow_id, row, decision, now, request_id))
    return decision


def _write_args(
    flow_id: str, row: asyncpg.Record, d: dict[str, Any], now: datetime, request_id: str
) -> list[Any]:
    """The parameters of `_WRITE` for decision `d` on `row`."""
    return [
        flow_id,
        d["states"],
        d["details"],
        d["status"],
        d["progress"],
        d["version"],
        now,
        row["client_account_id"],
        row["engagement_id"],
        PHASE,
        d["before"],
        d["after"],
        d["status_before"],
        request_id,
        {},
        d["time_in_state"],
    ]


class Transition:
    """One client's transaction loop on one flow."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        flow_id: str,
        tenant: tuple[str, str],
        *,
        full: bool,
        client: int,
        omit: frozenset[str] = frozenset(),
    ) -> None:
        self.conn = conn
        self.flow_id = flow_id
        self.tenant = tenant
        self.full = full
        self.omit = omit
        self.write_full = full_write_statement(omit)
        self.prefix = f"raw-{uuid.uuid4().hex[:8]}-{client}"
        self.decision: dict[str, Any] = {}
        # BEGIN and the RLS settings in one simple-protocol batch, as the store sends them.
        self.begin = "BEGIN"
        if "rls" not in omit:
            account, engagement = (_literal(t) for t in tenant)
            self.begin = (
                f"BEGIN; SELECT set_config('role', {_literal(APP_ROLE)}, true),"
                f" set_config('flowstate.client_account_id', {account}, true),"
                f" set_config('flowstate.engagement_id', {engagement}, true)"
            )

    async def __call__(self, seq: int) -> None:
        request_id = f"{self.prefix}-{seq}"
        if not self.full:
            self.decision = await minimal_transition(self.conn, self.flow_id, request_id)
            return
        await self.conn.execute(self.begin)
        try:
            await self._full(seq, request_id)
            await self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.is_in_transaction():
                await self.conn.execute("ROLLBACK")
            raise

    def _args(self, row: asyncpg.Record, now: datetime, request_id: str) -> list[Any]:
        self.decision = _toggled(row, now)
        return _write_args(self.flow_id, row, self.decision, now, request_id)

    async def _full(self, seq: int, request_id: str) -> None:
        conn = self.conn
        if "key" in self.omit:
            row = await conn.fetchrow(_LOCK_IN_TENANT, self.flow_id, *self.tenant)
        else:
            row = await conn.fetchrow(_LOCK_WITH_KEY, self.flow_id, *self.tenant, request_id)
        if row is None:
            raise LookupError(self.flow_id)
        now = datetime.now(UTC)
        args = self._args(row, now, request_id)
        d = self.decision
        extra: list[Any] = []
        if "key" not in self.omit:
            extra += [
                f"{self.flow_id}:{PHASE}:{d['after']}:{seq}",
                _key_flow(row, d, now),
                now + _IDEMPOTENCY_TTL,
            ]
        if "notify" not in self.omit:
            extra.append(_notify_payload(self.flow_id, self.tenant, d))
        await conn.fetchrow(self.write_full, *args, *extra)


def _key_flow(row: asyncpg.Record, d: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The flow after decision `d`, as the idempotency key's response stores it."""
    return {k: _jsonable(v) for k, v in row.items() if not k.startswith("key_")} | {
        "phase_states": d["states"],
        "phase_details": d["details"],
        "status": d["status"],
        "progress": d["progress"],
        "version": d["version"],
        "updated_at": now.isoformat(),
    }


def _notify_payload(flow_id: str, tenant: tuple[str, str], d: dict[str, Any]) -> str:
    """The NOTIFY payload the store sends for the change."""
    return json.dumps(
        {
            "flow_id": flow_id,
            "version": d["version"],
            "client_account_id": tenant[0],
            "engagement_id": tenant[1],
        }
    )


FN_DDL = (
    # A row type for the read: the flow's columns, then the key's (asyncpg cannot decode a
    # composite column holding JSON, so the function returns flat rows of this table's type).
    "CREATE TABLE IF NOT EXISTS bench_flow_with_key (LIKE flows)",
    "ALTER TABLE bench_flow_with_key ADD COLUMN IF NOT EXISTS key_fingerprint text",
    f"""
CREATE OR REPLACE FUNCTION bench_read_for_write(
    p_account text, p_engagement text, p_id uuid, p_request text
) RETURNS SETOF bench_flow_with_key
LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
    PERFORM set_config('role', '{APP_ROLE}', true),
            set_config('flowstate.client_account_id', p_account, true),
            set_config('flowstate.engagement_id', p_engagement, true);
    RETURN QUERY SELECT flows.*, k.fingerprint FROM flows
        LEFT OUTER JOIN idempotency_keys AS k
          ON k.client_account_id = p_account AND k.engagement_id = p_engagement
         AND k.request_id = p_request
        WHERE flows.id = p_id
          AND flows.client_account_id = p_account AND flows.engagement_id = p_engagement;
END
$$;
""",
    f"""
CREATE OR REPLACE FUNCTION bench_write(
    -- $1-$16 as `_WRITE` takes them (`_write_args`), then the optimistic check, key, notify
    p_id uuid, p_states jsonb, p_details jsonb, p_status text, p_progress double precision,
    p_version integer, p_now timestamptz, p_account text, p_engagement text, p_phase text,
    p_from text, p_to text, p_status_before text, p_request text, p_metadata jsonb,
    p_time_in_state double precision,
    p_expected integer, p_fingerprint text, p_flow jsonb, p_expires timestamptz, p_payload text
) RETURNS boolean LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
    PERFORM set_config('role', '{APP_ROLE}', true),
            set_config('flowstate.client_account_id', p_account, true),
            set_config('flowstate.engagement_id', p_engagement, true);
    UPDATE flows SET phase_states = p_states, phase_details = p_details, status = p_status,
                     progress = p_progress, version = p_version, updated_at = p_now
        WHERE id = p_id AND version = p_expected
          AND client_account_id = p_account AND engagement_id = p_engagement;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO flow_history (
        flow_id, client_account_id, engagement_id, version, kind, phase, from_state, to_state,
        status_before, status_after, reason, user_id, request_id, metadata, error,
        time_in_state_seconds, progress_after, cause, occurred_at
    ) VALUES (p_id, p_account, p_engagement, p_version, 'transition', p_phase, p_from, p_to,
              p_status_before, p_status, 'bench', 'bench', p_request, p_metadata, NULL,
              p_time_in_state, p_progress, '', p_now);
    INSERT INTO idempotency_keys (
        client_account_id, engagement_id, request_id, operation, fingerprint, flow_id,
        response, created_at, expires_at
    ) VALUES (p_account, p_engagement, p_request, 'mutate', p_fingerprint, p_id,
              jsonb_build_object('flow', p_flow, 'entry_count', 1), p_now, p_expires);
    PERFORM pg_notify('{NOTIFY_CHANNEL}', p_payload);
    RETURN true;
END
$$;
""",
)
"""The two functions of ``transition-fn`` (one autocommit statement each)."""

_READ_FOR_WRITE = "SELECT * FROM bench_read_for_write($1, $2, $3, $4)"
_FN_WRITE = "SELECT bench_write(" + ", ".join(f"${i}" for i in range(1, 22)) + ")"


class FunctionTransition:
    """``transition-fn``: read, decide, write-if-unchanged; 2 round trips, no BEGIN/COMMIT."""

    def __init__(
        self, conn: asyncpg.Connection, flow_id: str, tenant: tuple[str, str], client: int
    ) -> None:
        self.conn = conn
        self.flow_id = flow_id
        self.tenant = tenant
        self.prefix = f"raw-fn-{uuid.uuid4().hex[:8]}-{client}"
        self.conflicts = 0

    async def __call__(self, seq: int) -> None:
        request_id = f"{self.prefix}-{seq}"
        while True:
            read = await self.conn.fetchrow(_READ_FOR_WRITE, *self.tenant, self.flow_id, request_id)
            if read is None:
                raise LookupError(self.flow_id)
            row = read
            now = datetime.now(UTC)
            d = _toggled(row, now)
            written = await self.conn.fetchval(
                _FN_WRITE,
                *_write_args(self.flow_id, row, d, now, request_id),
                row["version"],
                f"{self.flow_id}:{PHASE}:{d['after']}:{seq}",
                _key_flow(row, d, now),
                now + _IDEMPOTENCY_TTL,
                _notify_payload(self.flow_id, self.tenant, d),
            )
            if written:
                return
            self.conflicts += 1  # changed since the read: decide again on the new state


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value) if isinstance(value, uuid.UUID) else value


class Select:
    """One client's primary-key read loop."""

    def __init__(self, conn: asyncpg.Connection, flow_id: str) -> None:
        self.conn = conn
        self.flow_id = flow_id

    async def __call__(self, seq: int) -> None:
        row = await self.conn.fetchrow(SELECT_FLOW, self.flow_id)
        if row is None:
            raise LookupError(self.flow_id)


Call = Callable[[int], Awaitable[None]]


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (as the Go load generator computes it)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(p / 100 * len(sorted_values) + 0.999999) - 1))
    return sorted_values[rank]


@dataclass
class Window:
    """What one measurement window saw."""

    latencies: list[float] = field(default_factory=list)
    """Milliseconds, of the requests that started and ended inside the window."""
    error_count: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float | None] = field(default_factory=dict)


async def measure(
    calls: Sequence[Call], *, duration: float, warmup: float, postmaster_pid: int | None
) -> Window:
    """Closed loop: each call site one request at a time; latencies (ms) in the window."""
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + duration
    window = Window()
    latencies = window.latencies
    errors = window.errors
    error_count = 0
    readings: list[CpuReading] = []

    async def read_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        readings.append(CpuReading.take(os.getpid(), postmaster_pid))
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        readings.append(CpuReading.take(os.getpid(), postmaster_pid))

    async def client(call: Call) -> None:
        nonlocal error_count
        seq = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            failure: str | None = None
            try:
                await call(seq)
            except (asyncpg.PostgresError, LookupError, OSError) as exc:
                failure = f"{type(exc).__name__}: {exc}"[:200]
            t1 = time.perf_counter()
            seq += 1
            if t0 < measure_from or t1 > end:
                continue
            if failure is not None:
                error_count += 1
                if failure in errors or len(errors) < 5:
                    errors[failure] = errors.get(failure, 0) + 1
                continue
            latencies.append((t1 - t0) * 1000)

    await asyncio.gather(read_cpu(), *(client(c) for c in calls))
    window.error_count = error_count
    window.cpu = readings[0].per_request_us(readings[1], len(latencies))
    return window


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Open the connections, run the loop, summarise like the Go load generator."""
    flows: list[str] = [f for f in args.flows.split(",") if f]
    if not flows:
        raise SystemExit("--flows is required")
    omit = frozenset(o for o in args.omit.split(",") if o)
    if not omit <= set(OMITTABLE):
        raise SystemExit(f"--omit takes {', '.join(OMITTABLE)}")
    conns = await asyncio.gather(*(_connect(args.dsn) for _ in range(args.concurrency)))
    try:
        if args.mode == "transition-fn":
            for ddl in FN_DDL:
                await conns[0].execute(ddl)
        calls: list[Call] = []
        for i, conn in enumerate(conns):
            flow_id = flows[i % len(flows)]
            if args.mode == "select":
                calls.append(Select(conn, flow_id))
            elif args.mode == "transition-fn":
                calls.append(FunctionTransition(conn, flow_id, (args.account, args.engagement), i))
            else:
                calls.append(
                    Transition(
                        conn,
                        flow_id,
                        (args.account, args.engagement),
                        full=args.mode == "transition-full",
                        client=i,
                        omit=omit,
                    )
                )
        window = await measure(
            calls,
            duration=args.duration,
            warmup=args.warmup,
            postmaster_pid=args.postmaster_pid,
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    latencies = sorted(window.latencies)
    error_count, errors = window.error_count, window.errors
    return {
        "mode": "raw",
        "rpc": args.mode,
        "concurrency": args.concurrency,
        "connections": len(conns),
        "requests": len(latencies),
        "errors": error_count,
        "error_samples": errors or None,
        "elapsed_s": args.duration,
        "throughput": len(latencies) / args.duration,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "mean_ms": statistics.fmean(latencies) if latencies else 0.0,
        "max_ms": latencies[-1] if latencies else 0.0,
        **window.cpu,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: prints one JSON object."""
    parser = argparse.ArgumentParser(description="Flowstate raw-limit load (asyncpg)")
    parser.add_argument(
        "mode", choices=["transition", "transition-full", "transition-fn", "select"]
    )
    parser.add_argument("--dsn", required=True, help="postgresql:// DSN of the migrated database")
    parser.add_argument("--flows", required=True, help="comma-separated flow ids")
    parser.add_argument("--account", default="bench", help="the flows' client_account_id")
    parser.add_argument("--engagement", default="bench", help="the flows' engagement_id")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--omit",
        default="",
        help="transition-full without some of: rls,key,notify (to see what each costs)",
    )
    parser.add_argument(
        "--postmaster-pid", type=int, help="PostgreSQL's pid, to report its CPU per request"
    )
    args = parser.parse_args(argv)
    print(json.dumps(_serverconf.run(run(args))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
