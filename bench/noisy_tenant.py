"""A quiet tenant's GetFlow latency while another tenant floods the server, against idle.

    .venv/bin/python -m bench.noisy_tenant                  # ~2.5 minutes: both modes, 6 rounds
    .venv/bin/python -m bench.noisy_tenant --modes limited --rounds 4 --seconds 4

One `flowstate serve` (one worker process) per mode, on the bench's PostgreSQL (embedded, or
``FLOWSTATE_BENCH_DATABASE_URL``), with ``FLOWSTATE_RATE_LIMITS=read=LIMIT:2*LIMIT``
(``limited``: calls over the rate wait for their tokens, the server's default; ``policed``: the
same limit with ``FLOWSTATE_RATE_LIMIT_MAX_WAIT=0``, every call over the rate refused at once,
the behaviour before shaping) or ``off`` (``unlimited``, the baseline). Both clients are the Go
load generator
(`bench/loadgen`, ``unary -rpc getflow``), each its own process:

- the **victim**: the quiet tenant, `--victims` (2) clients calling GetFlow on its flow at
  `--victim-rate` (100) calls per second in all, evenly paced, for `--seconds` (after 0.5 s
  unmeasured); its p50/p99 is what is compared. Paced, not a closed loop: a well-behaved tenant
  under its own limit (a closed loop would make the victim a flooder too, refused by the very
  limit under test, and would measure capacity instead of latency);
- the **flooder**: the noisy tenant, `--flooders` (16) clients calling GetFlow in a closed loop
  on one connection each, ignoring RESOURCE_EXHAUSTED and RetryInfo (a hostile client: no
  backoff, a new call the moment the refusal arrives). It runs for exactly the victim's window
  plus a margin and then exits by itself (the bench kills it too if it would not).

Each mode runs `--rounds` rounds; a round is one ``idle`` phase (the victim alone) and one
``flood`` phase (the victim while the flooder runs), in alternating order (idle first in even
rounds, flood first in odd ones) so that a drift of the machine's load hits both alike. The
figure is the **median over rounds of p99(flood) / p99(idle)** of the same round (the issue's
bound: within 2x with limits); pooled p50/p99 per phase are given too.

CPU is reported per phase, in cores (CPU seconds / wall seconds): the server process, its
PostgreSQL (embedded only), each load generator (its own rusage), and the whole machine
(psutil), whose remainder is other processes: on a shared machine, a round where that
remainder is high is noise, not Flowstate. The load average is read at the start and the end.

**What the ratio means.** The server is one Python process with one event loop. The limit
shapes before it refuses (`flowstate.server.ratelimit`, ``FLOWSTATE_RATE_LIMIT_MAX_WAIT``,
default 0.5 s): a flooder's call that finds the bucket empty waits for a reserved token instead
of being refused, so the 16 closed-loop clients are slowed to the tenant's rate (each waits
about 16 / LIMIT s per call) and the server serves the noisy tenant's admitted calls, its
budget, rather than those plus a refusal per round trip (a refusal costs the loop about what a
cheap read does, and a closed-loop flooder sends a new call the moment its refusal arrives:
~1,700 refusals/s before shaping). ``noisy_refused_per_s`` is therefore ~0 unless the flooders
outnumber ``LIMIT * max wait``. What the ratio still measures: the noisy tenant's admitted
load (LIMIT/s, plus its burst of 2 * LIMIT at the start of each flood) next to the victim's
100/s, on a server that shares its cores with the load generators and, on a shared machine,
with other processes: the flooder's CPU and everyone else's are reported so that this share is
visible; a round where "others" is high is noise, not Flowstate. A client that honours
RetryInfo (every Flowstate SDK) never floods in the first place.

Prints one JSON object (``--out`` also writes it) and a Markdown row per mode for
bench/RESULTS.md.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil

from bench._cpu import postgres_cpu, process_cpu
from bench._db import database
from bench._procs import BenchError, Processes, tail
from flowstate.core.model import Tenant
from flowstate.storage import migrate
from flowstate.testing import ServerProcess, serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc

QUIET = Tenant("bench-account", "quiet")
NOISY = Tenant("bench-account", "noisy")
OUT = Path(__file__).resolve().parent / "out"
_VICTIM_WARMUP = 0.5  # seconds the victim runs unmeasured (the flood ramps up meanwhile)
_FLOOD_MARGIN = 1.0  # seconds the flood outlasts the victim's window


@dataclass(frozen=True)
class Setup:
    """What every phase of one mode needs."""

    loadgen: Path
    address: str
    quiet_token: str
    quiet_flow: str
    noisy_token: str
    noisy_flow: str
    server_pid: int
    postgres_pid: int | None
    victims: int
    victim_rate: float
    flooders: int
    seconds: float


async def _create_flow(address: str, token: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        created = await stub.CreateFlow(
            pb.CreateFlowRequest(request_id=uuid.uuid4().hex),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        return str(created.flow.flow_id)


def _loadgen_args(
    setup: Setup,
    token: str,
    flow: str,
    clients: int,
    warmup: float,
    seconds: float,
    rate: float = 0.0,
) -> list[str]:
    return [
        str(setup.loadgen),
        "unary",
        "-rpc",
        "getflow",
        "-addr",
        setup.address,
        "-token",
        token,
        "-flows",
        flow,
        "-concurrency",
        str(clients),
        "-warmup",
        f"{warmup}s",
        "-duration",
        f"{seconds}s",
        "-rate",
        str(rate),
    ]


def _busy_cores() -> float:
    """CPU seconds the whole machine has spent busy (all cores), so far."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _phase(procs: Processes, setup: Setup, flood: bool) -> dict[str, Any]:
    """One phase: the victim for `seconds` (plus its warm-up), with the flooder or without."""
    started = time.monotonic()
    server0, pg0, machine0 = (
        process_cpu(setup.server_pid),
        postgres_cpu(setup.postgres_pid),
        _busy_cores(),
    )
    flooder = None
    if flood:
        flooder = procs.start(
            "flooder",
            _loadgen_args(
                setup,
                setup.noisy_token,
                setup.noisy_flow,
                setup.flooders,
                0.0,
                _VICTIM_WARMUP + setup.seconds + _FLOOD_MARGIN,
            ),
        )
    try:
        victim = procs.run_json(
            "victim",
            _loadgen_args(
                setup,
                setup.quiet_token,
                setup.quiet_flow,
                setup.victims,
                _VICTIM_WARMUP,
                setup.seconds,
                setup.victim_rate,
            ),
            timeout=setup.seconds + 60,
        )
        noisy: dict[str, Any] = {}
        if flooder is not None:
            try:
                out, _ = flooder.communicate(timeout=setup.seconds + 60)
            except Exception as exc:
                raise BenchError(f"the flooder did not stop by itself: {exc}") from exc
            if flooder.returncode != 0:
                raise BenchError(f"the flooder failed: {tail(procs.log_path('flooder'))}")
            noisy = json.loads(out.strip().splitlines()[-1])
    finally:
        if flooder is not None:
            procs.stop(flooder)
    wall = time.monotonic() - started
    server = (process_cpu(setup.server_pid) - server0) / wall
    postgres = (postgres_cpu(setup.postgres_pid) - pg0) / wall
    machine = (_busy_cores() - machine0) / wall
    clients = (victim["cpu_s"] + noisy.get("cpu_s", 0.0)) / wall
    result: dict[str, Any] = {
        "p50_ms": round(victim["p50_ms"], 2),
        "p99_ms": round(victim["p99_ms"], 2),
        "calls": victim["requests"],
        "victim_errors": victim["errors"],
        "cores": {
            "server": round(server, 2),
            "postgres": round(postgres, 2) if setup.postgres_pid else None,
            "victim": round(victim["cpu_s"] / wall, 2),
            "flooder": round(noisy.get("cpu_s", 0.0) / wall, 2),
            "machine": round(machine, 2),
            "others": round(max(0.0, machine - server - postgres - clients), 2),
        },
    }
    if victim["errors"]:
        result["victim_error_samples"] = victim["error_samples"]
    if noisy:
        window = noisy["elapsed_s"]
        by_code = noisy.get("errors_by_code") or {}
        result["noisy_ok_per_s"] = round(noisy["requests"] / window, 1)
        result["noisy_refused_per_s"] = round(by_code.get("ResourceExhausted", 0) / window, 1)
        other = {code: n for code, n in by_code.items() if code != "ResourceExhausted"}
        if other:
            result["noisy_other_errors"] = other
    return result


def _mode(procs: Processes, setup: Setup, rounds: int) -> dict[str, Any]:
    """Warm up, then `rounds` rounds of idle + flood in alternating order; the figures."""
    procs.run_json(
        "warmup",
        _loadgen_args(
            setup, setup.quiet_token, setup.quiet_flow, setup.victims, 0.0, 1.0, setup.victim_rate
        ),
        timeout=60,
    )
    phases: list[dict[str, Any]] = []
    ratios: list[float] = []
    for number in range(rounds):
        order = (False, True) if number % 2 == 0 else (True, False)
        measured = {flood: _phase(procs, setup, flood) for flood in order}
        idle, flood = measured[False], measured[True]
        ratio = flood["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] else float("inf")
        ratios.append(round(ratio, 2))
        phases.append({"round": number, "idle": idle, "flood": flood, "p99_ratio": ratios[-1]})
        print(
            f"  round {number}: idle p99 {idle['p99_ms']} ms, flood p99 {flood['p99_ms']} ms "
            f"({ratios[-1]}x); refused {flood.get('noisy_refused_per_s')}/s, admitted "
            f"{flood.get('noisy_ok_per_s')}/s; cores server {flood['cores']['server']}, "
            f"flooder {flood['cores']['flooder']}, others {flood['cores']['others']}",
            file=sys.stderr,
            flush=True,
        )

    def med(phase: str, *path: str) -> float:
        values: list[float] = []
        for entry in phases:
            value: Any = entry[phase]
            for key in path:
                value = value[key]
            values.append(float(value))
        return round(statistics.median(values), 2)

    return {
        "p99_ratio_median": round(statistics.median(ratios), 2),
        "p99_ratios": ratios,
        "idle_p50_ms": med("idle", "p50_ms"),
        "idle_p99_ms": med("idle", "p99_ms"),
        "flood_p50_ms": med("flood", "p50_ms"),
        "flood_p99_ms": med("flood", "p99_ms"),
        "noisy_ok_per_s": med("flood", "noisy_ok_per_s"),
        "noisy_refused_per_s": med("flood", "noisy_refused_per_s"),
        "server_cores_idle": med("idle", "cores", "server"),
        "server_cores_flood": med("flood", "cores", "server"),
        "flooder_cores": med("flood", "cores", "flooder"),
        "others_cores_idle": med("idle", "cores", "others"),
        "others_cores_flood": med("flood", "cores", "others"),
        "rounds": phases,
    }


def _run_mode(
    procs: Processes, loadgen: Path, db: Any, limits: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    env = {
        **limits,
        "FLOWSTATE_WORKERS": "1",
        "FLOWSTATE_TIMER_INTERVAL": "0",
        "FLOWSTATE_WEBHOOKS": "off",
    }
    server: ServerProcess
    with serve_subprocess(database_url=db.sqlalchemy_url, env=env) as server:
        quiet_token = server.mint(QUIET, user="bench", scopes=("flows:write",))
        noisy_token = server.mint(NOISY, user="bench", scopes=("flows:write",))
        setup = Setup(
            loadgen=loadgen,
            address=server.address,
            quiet_token=quiet_token,
            quiet_flow=asyncio.run(_create_flow(server.address, quiet_token)),
            noisy_token=noisy_token,
            noisy_flow=asyncio.run(_create_flow(server.address, noisy_token)),
            server_pid=server.process.pid,
            postgres_pid=db.postgres_pid,
            victims=args.victims,
            victim_rate=args.victim_rate,
            flooders=args.flooders,
            seconds=args.seconds,
        )
        return _mode(procs, setup, args.rounds)


def main() -> None:
    """Run the modes and print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="idle + flood rounds per mode")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per phase")
    parser.add_argument("--flooders", type=int, default=16, help="the noisy tenant's clients")
    parser.add_argument("--victims", type=int, default=2, help="the quiet tenant's clients")
    parser.add_argument(
        "--victim-rate", type=float, default=100.0, help="the quiet tenant's calls per second"
    )
    parser.add_argument("--limit", type=int, default=200, help="the read limit per second")
    parser.add_argument(
        "--modes",
        default="limited,unlimited",
        help="comma-separated: limited, policed, unlimited",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    limit = f"read={args.limit}:{2 * args.limit}"
    limits = {
        "limited": {"FLOWSTATE_RATE_LIMITS": limit},
        "policed": {"FLOWSTATE_RATE_LIMITS": limit, "FLOWSTATE_RATE_LIMIT_MAX_WAIT": "0"},
        "unlimited": {"FLOWSTATE_RATE_LIMITS": "off"},
    }
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in limits]
    if unknown or not modes:
        parser.error(f"--modes: one or more of {sorted(limits)}")
    if args.victim_rate >= args.limit:
        parser.error("--victim-rate must stay under --limit (the quiet tenant is well-behaved)")
    from bench.run import build_loadgen

    figures: dict[str, Any] = {
        "flooders": args.flooders,
        "victims": args.victims,
        "victim_rate": args.victim_rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "limit": limit,
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    loadgen = build_loadgen()
    with database() as db, Processes(OUT / "logs" / "noisy_tenant") as procs:
        asyncio.run(migrate.upgrade(db.sqlalchemy_url))
        for mode in modes:
            settings = " ".join(f"{key}={value}" for key, value in limits[mode].items())
            print(f"{mode} ({settings}):", file=sys.stderr, flush=True)
            figures[mode] = _run_mode(procs, loadgen, db, limits[mode], args)
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(figures)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(
        "| mode | idle p50 / p99 ms | flood p50 / p99 ms | p99 flood/idle, median (rounds) | "
        "noisy tenant | server cores idle / flood | flooder cores | other processes' cores |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        m = figures[mode]
        print(
            f"| noisy-tenant/{mode}/f{args.flooders} | {m['idle_p50_ms']} / {m['idle_p99_ms']} | "
            f"{m['flood_p50_ms']} / {m['flood_p99_ms']} | **{m['p99_ratio_median']}x** "
            f"({', '.join(str(r) for r in m['p99_ratios'])}) | {m['noisy_ok_per_s']}/s ok, "
            f"{m['noisy_refused_per_s']}/s refused | {m['server_cores_idle']} / "
            f"{m['server_cores_flood']} | {m['flooder_cores']} | {m['others_cores_idle']} / "
            f"{m['others_cores_flood']} |"
        )


if __name__ == "__main__":
    main()
