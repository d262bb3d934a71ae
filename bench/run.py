"""Run the Flowstate benchmark: each scenario next to its reference, on this machine, now.

    .venv/bin/python -m bench.run              # the full bench (about 8 minutes on 2 cores)
    .venv/bin/python -m bench.run --smoke      # every scenario once, ~1 s each, tiny load
    .venv/bin/python -m bench.run --only transition --runs 1 --profile bench/out/profiles

It starts its own embedded Postgres (or uses ``FLOWSTATE_BENCH_DATABASE_URL``), migrates a
fresh database, starts ``flowstate serve`` and the bare reference server (`bench.ref_server`)
as subprocesses on ephemeral 127.0.0.1 ports, builds the Go load generator (`bench/loadgen`),
then runs every scenario ``--runs`` times (interleaved with its reference, so both see the same
machine), and reports medians. Every process it starts is stopped on the way out, also on
failure, Ctrl-C or SIGTERM. It prints a table and writes ``bench/out/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import _db, _flowstate, _report
from bench._cpu import CpuReading
from bench._procs import BenchError, Processes, read_json_line, read_line

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"

Metrics = dict[str, Any]
Measure = Callable[[], Metrics]


@dataclass(frozen=True)
class Config:
    """What to run and for how long."""

    runs: int = 3
    duration: float = 4.0
    warmup: float = 1.0
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    read_concurrency: int = 32
    watchers: tuple[int, ...] = (1, 100, 1000)
    idle_streams: int = 1000
    only: tuple[str, ...] = ()
    profile_dir: Path | None = None
    profile: tuple[str, ...] = ("transition/distinct/c32", "validate/c32")
    profile_native: bool = False
    """py-spy ``--native``: Cython and C frames too (grpc's and asyncpg's own work)."""
    profile_references: bool = False
    """Also profile the reference side where it is a server (echo, broadcast)."""
    smoke: bool = False
    server_env: tuple[tuple[str, str], ...] = ()
    """Extra FLOWSTATE_* settings for the server (experiments, e.g. FLOWSTATE_DB_POOL_SIZE)."""

    @staticmethod
    def smoke_config(**overrides: Any) -> Config:
        """Every scenario once, ~1 s each, at tiny concurrency (the smoke test's run)."""
        base: dict[str, Any] = {
            "runs": 1,
            "duration": 0.8,
            "warmup": 0.2,
            "concurrencies": (1, 2),
            "read_concurrency": 2,
            "watchers": (1, 10),
            "idle_streams": 100,
            "smoke": True,
        }
        base.update(overrides)
        return Config(**base)


@dataclass(frozen=True)
class Target:
    """A target of issue 8: a bound on a ratio (or on an absolute figure) of one scenario."""

    text: str
    check: Callable[[Metrics, Metrics, dict[str, float]], bool]


@dataclass
class Scenario:
    """One measured thing and its reference, run side by side."""

    id: str
    group: str
    kind: str  # "unary" | "fanout" | "memory"
    param: int
    subject_label: str
    reference_label: str
    subject: Measure | None
    reference: Measure | None
    skip_reason: str = ""
    target: Target | None = None
    notes: str = ""
    subject_runs: list[Metrics] = field(default_factory=list)
    reference_runs: list[Metrics] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Measurements that failed (the medians are over the others)."""
    subject_server: Server | None = None
    """The server process doing the subject's work (what ``--profile`` samples)."""
    reference_server: Server | None = None
    """The reference's server process, when it has one (``--profile-references``)."""


# --- targets ----------------------------------------------------------------------------------


def _transition_target() -> Target:
    return Target(
        "throughput >= 50% of raw, p99 <= 3x raw",
        lambda s, r, ratio: ratio.get("throughput", 0) >= 0.5 and ratio.get("p99", math.inf) <= 3,
    )


def _throughput_target(share: float, of: str) -> Target:
    return Target(
        f"throughput >= {share:.0%} of {of}",
        lambda s, r, ratio: ratio.get("throughput", 0) >= share,
    )


def _fanout_target() -> Target:
    return Target(
        "p99 (all watchers) <= 1.5x bare", lambda s, r, ratio: ratio.get("p99", math.inf) <= 1.5
    )


def _memory_target() -> Target:
    return Target(
        "<= 50 KiB per idle stream",
        lambda s, r, ratio: s.get("kib_per_stream", math.inf) <= 50,
    )


# --- the parts ----------------------------------------------------------------------------------


def build_loadgen() -> Path:
    """Build the Go load generator into bench/out/loadgen (incremental, pinned by go.sum)."""
    go = shutil.which("go")
    if go is None:
        raise BenchError("the Go toolchain (go) is needed to build bench/loadgen")
    binary = OUT / "loadgen"
    result = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=BENCH / "loadgen",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"go build failed:\n{result.stderr}")
    return binary


@dataclass
class Server:
    """A gRPC server process the bench started."""

    name: str
    addr: str
    proc: subprocess.Popen[str]
    token: str = ""

    @property
    def pid(self) -> int:
        """The server's process id (what py-spy and psutil look at)."""
        return self.proc.pid

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)


def start_reference(procs: Processes, name: str = "ref_server", dsn: str | None = None) -> Server:
    """Start the bare reference server (echo + in-memory broadcast), or with `dsn` grpc+raw."""
    proc = procs.start(
        name,
        [sys.executable, "-m", "bench.ref_server", "--port", "0", *(["--dsn", dsn] if dsn else [])],
        cwd=REPO,
        env=child_env(),
    )
    port = read_line(proc, "PORT ", timeout=30, log=procs.log_path(name))
    return Server("reference", f"127.0.0.1:{port}", proc)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of child processes: ours, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


class Bench:
    """Runs the scenarios against the servers and the database it was given."""

    def __init__(
        self,
        config: Config,
        procs: Processes,
        loadgen: Path,
        db: _db.Database,
        reference: Server,
        grpc_raw: Server | None,
        flowstate: _flowstate.Flowstate | None,
        unavailable: str,
        work_dir: Path,
    ) -> None:
        self.config = config
        self.procs = procs
        self.loadgen = loadgen
        self.db = db
        self.reference = reference
        self.grpc_raw = grpc_raw
        self.flowstate = flowstate
        self.unavailable = unavailable
        self.work_dir = work_dir
        self._seq = 0

    # --- measurements --------------------------------------------------------------------------

    def _name(self, what: str) -> str:
        self._seq += 1
        return f"{self._seq:03d}-{what}"

    def _timeout(self, extra: float = 30.0) -> float:
        return self.config.warmup + self.config.duration + extra

    def loadgen_unary(
        self, server: Server, rpc: str, concurrency: int, flows: Sequence[str]
    ) -> Measure:
        """A Go closed-loop load of `rpc` against `server`."""

        def measure() -> Metrics:
            args = [
                str(self.loadgen),
                "unary",
                "-addr",
                server.addr,
                "-rpc",
                rpc,
                "-concurrency",
                str(concurrency),
                "-duration",
                f"{self.config.duration}s",
                "-warmup",
                f"{self.config.warmup}s",
            ]
            if flows:
                args += ["-flows", ",".join(flows)]
            before = CpuReading.take(server.pid, self.db.postgres_pid)
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = self.procs.run_json(
                self._name(f"loadgen-{rpc}-c{concurrency}"),
                args,
                timeout=self._timeout(),
                env=child_env(FLOWSTATE_BENCH_TOKEN=server.token),
            )
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = CpuReading.take(server.pid, self.db.postgres_pid)
            # The readings span warm-up and measurement: assume the warm-up's rate.
            requests = result["throughput"] * (self.config.warmup + self.config.duration)
            result.update(before.per_request_us(after, requests))
            # The load generator is the only child waited for in between: its own CPU.
            loadgen_cpu = (children_after.ru_utime + children_after.ru_stime) - (
                children_before.ru_utime + children_before.ru_stime
            )
            result["loadgen_cpu_us"] = loadgen_cpu / requests * 1e6 if requests > 0 else None
            return result

        return measure

    def raw(self, mode: str, concurrency: int, flows: Sequence[str]) -> Measure:
        """The raw asyncpg load (`bench.raw`)."""

        def measure() -> Metrics:
            account, engagement = _flowstate.TENANT
            return self.procs.run_json(
                self._name(f"raw-{mode}-c{concurrency}"),
                [
                    sys.executable,
                    "-m",
                    "bench.raw",
                    mode,
                    "--dsn",
                    self.db.dsn,
                    "--flows",
                    ",".join(flows),
                    "--account",
                    account,
                    "--engagement",
                    engagement,
                    "--concurrency",
                    str(concurrency),
                    "--duration",
                    str(self.config.duration),
                    "--warmup",
                    str(self.config.warmup),
                    *(
                        ["--postmaster-pid", str(self.db.postgres_pid)]
                        if self.db.postgres_pid
                        else []
                    ),
                ],
                timeout=self._timeout(60),
                env=child_env(),
            )

        return measure

    def fanout(self, server: Server, flow: str, watchers: int) -> Measure:
        """Go watchers on one flow; one writer; delivery times."""

        def measure() -> Metrics:
            return self.procs.run_json(
                self._name(f"fanout-{server.name}-w{watchers}"),
                [
                    str(self.loadgen),
                    "fanout",
                    "-addr",
                    server.addr,
                    "-flow",
                    flow,
                    "-watchers",
                    str(watchers),
                    "-duration",
                    f"{self.config.duration}s",
                    "-max-events",
                    "200",
                ],
                timeout=self._timeout(120),
                env=child_env(FLOWSTATE_BENCH_TOKEN=server.token),
            )

        return measure

    def idle_memory(self, fresh: Callable[[str], Server], flow: str, streams: int) -> Measure:
        """Server RSS growth per idle WatchFlow stream (psutil), streams held by the Go client.

        Each measurement uses a fresh server process (`fresh`): one that already served many
        streams reuses the memory it freed, and would show almost no growth.
        """

        def hold(server: Server, n: int) -> tuple[int, Metrics]:
            name = self._name(f"idle-{server.name}-{n}")
            proc = self.procs.start(
                name,
                [
                    str(self.loadgen),
                    "idle",
                    "-addr",
                    server.addr,
                    "-flow",
                    flow,
                    "-streams",
                    str(n),
                    "-hold",
                    "120s",
                ],
                stdin=subprocess.PIPE,
                env=child_env(FLOWSTATE_BENCH_TOKEN=server.token),
            )
            try:
                ready = read_json_line(proc, timeout=120, log=self.procs.log_path(name))
                time.sleep(1.0)  # let the server settle (buffers, keepalive timers)
                return server.rss(), ready
            finally:
                self.procs.stop(proc)

        def measure() -> Metrics:
            server = fresh(self._name("idle-server"))
            try:
                hold(server, min(streams, 20))  # warm the code paths once
                time.sleep(0.5)
                before = server.rss()
                during, ready = hold(server, streams)
            finally:
                self.procs.stop(server.proc)
            delta = during - before
            return {
                "streams": streams,
                "rss_before_mib": before / 2**20,
                "rss_during_mib": during / 2**20,
                "kib_per_stream": delta / 1024 / streams,
                "setup_s": ready.get("setup_s", 0.0),
            }

        return measure

    # --- the scenario list -----------------------------------------------------------------------

    def scenarios(self) -> list[Scenario]:
        """Every scenario of issue 8, with its reference."""
        c = self.config
        fs = self.flowstate
        ref = self.reference
        raw_flows = fs.raw_flows if fs else []
        fs_server = fs.server if fs else None
        scenarios: list[Scenario] = []

        for n in c.concurrencies:
            scenarios.append(
                Scenario(
                    id=f"transition/distinct/c{n}",
                    group="TransitionPhase, distinct flows",
                    kind="unary",
                    param=n,
                    subject_label="TransitionPhase",
                    reference_label="raw asyncpg transaction",
                    subject=self._fs_unary("transition", n, "distinct"),
                    reference=self.raw("transition", n, raw_flows[:n]) if fs else None,
                    target=_transition_target() if n == 32 else None,
                    subject_server=fs_server,
                )
            )
        scenarios.append(
            Scenario(
                id="transition/distinct-full-sql/c32"
                if 32 in c.concurrencies
                else f"transition/distinct-full-sql/c{c.concurrencies[-1]}",
                group="TransitionPhase, distinct flows (vs the store's exact SQL)",
                kind="unary",
                param=32 if 32 in c.concurrencies else c.concurrencies[-1],
                subject_label="TransitionPhase",
                reference_label="raw asyncpg, the store's statements",
                subject=self._fs_unary("transition", self._full_n(), "distinct"),
                reference=self.raw("transition-full", self._full_n(), raw_flows[: self._full_n()])
                if fs
                else None,
                notes="reference adds RLS set_config, idempotency key, pg_notify",
                subject_server=fs_server,
            )
        )
        n = self._full_n()
        scenarios.append(
            Scenario(
                id=f"transition/grpc-raw/c{n}",
                group="the raw transaction behind a minimal grpc.aio handler (issue 8's scale)",
                kind="unary",
                param=n,
                subject_label="grpc+raw",
                reference_label="raw asyncpg transaction",
                subject=self.loadgen_unary(self.grpc_raw, "transition", n, raw_flows[:n])
                if self.grpc_raw
                else None,
                reference=self.raw("transition", n, raw_flows[:n]) if fs else None,
                notes="no Flowstate code: the floor of gRPC plus the bare transaction",
                subject_server=self.grpc_raw,
            )
        )
        for n in c.concurrencies:
            scenarios.append(
                Scenario(
                    id=f"transition/hot/c{n}",
                    group="one hot flow (UpdatePhaseProgress)",
                    kind="unary",
                    param=n,
                    subject_label="UpdatePhaseProgress",
                    reference_label="raw asyncpg transaction",
                    subject=self._fs_unary("progress", n, "hot"),
                    reference=self.raw("transition", n, raw_flows[-1:]) if fs else None,
                    subject_server=fs_server,
                )
            )
        rc = c.read_concurrency
        scenarios.append(
            Scenario(
                id=f"validate/c{rc}",
                group="ValidateTransition (no flow)",
                kind="unary",
                param=rc,
                subject_label="ValidateTransition",
                reference_label="grpc.aio echo",
                subject=self._fs_unary("validate", rc, "none"),
                reference=self.loadgen_unary(ref, "validate", rc, []),
                target=_throughput_target(0.7, "echo") if rc == 32 else None,
                subject_server=fs_server,
                reference_server=ref,
            )
        )
        scenarios.append(
            Scenario(
                id=f"getflow/c{rc}",
                group="GetFlow",
                kind="unary",
                param=rc,
                subject_label="GetFlow",
                reference_label="raw asyncpg PK SELECT",
                subject=self._fs_unary("getflow", rc, "distinct"),
                reference=self.raw("select", rc, raw_flows[:rc]) if fs else None,
                target=_throughput_target(0.5, "raw SELECT") if rc == 32 else None,
                subject_server=fs_server,
            )
        )
        scenarios.append(
            Scenario(
                id=f"getflow/grpc-raw/c{rc}",
                group="the raw SELECT behind a minimal grpc.aio handler",
                kind="unary",
                param=rc,
                subject_label="grpc+raw",
                reference_label="raw asyncpg PK SELECT",
                subject=self.loadgen_unary(self.grpc_raw, "getflow", rc, raw_flows[:rc])
                if self.grpc_raw
                else None,
                reference=self.raw("select", rc, raw_flows[:rc]) if fs else None,
                notes="no Flowstate code: the floor of gRPC plus the bare SELECT",
                subject_server=self.grpc_raw,
            )
        )
        for w in c.watchers:
            scenarios.append(
                Scenario(
                    id=f"fanout/w{w}",
                    group="Watch fan-out",
                    kind="fanout",
                    param=w,
                    subject_label="WatchFlow",
                    reference_label="bare grpc.aio broadcast",
                    subject=self._fs_fanout(w),
                    reference=self.fanout(ref, "bare", w),
                    target=_fanout_target() if w == 1000 else None,
                    subject_server=fs_server,
                    reference_server=ref,
                )
            )
        scenarios.append(
            Scenario(
                id=f"idle-memory/s{c.idle_streams}",
                group="Memory per idle stream",
                kind="memory",
                param=c.idle_streams,
                subject_label="WatchFlow",
                reference_label="bare grpc.aio stream",
                subject=self._fs_idle(c.idle_streams),
                reference=self.idle_memory(
                    lambda name: start_reference(self.procs, name), "bare", c.idle_streams
                ),
                target=_memory_target(),
            )
        )
        for s in scenarios:
            if s.subject is None:
                s.skip_reason = self.unavailable
        if c.only:
            scenarios = [s for s in scenarios if any(s.id.startswith(o) for o in c.only)]
        return scenarios

    def _fs_unary(self, rpc: str, n: int, flows: str) -> Measure | None:
        """A load generator run against Flowstate (None when it is unavailable)."""
        fs = self.flowstate
        if fs is None:
            return None
        chosen = {"distinct": fs.flows[:n], "hot": [fs.hot_flow], "none": []}[flows]
        return self.loadgen_unary(fs.server, rpc, n, chosen)

    def _fs_fanout(self, watchers: int) -> Measure | None:
        fs = self.flowstate
        return None if fs is None else self.fanout(fs.server, fs.watch_flow, watchers)

    def _fs_idle(self, streams: int) -> Measure | None:
        fs = self.flowstate
        if fs is None:
            return None

        def fresh(name: str) -> Server:
            env = child_env(**dict(self.config.server_env))
            return _flowstate.start_server(self.procs, self.db, env, self.work_dir, name)

        return self.idle_memory(fresh, fs.watch_flow, streams)

    def _full_n(self) -> int:
        return 32 if 32 in self.config.concurrencies else self.config.concurrencies[-1]

    # --- running --------------------------------------------------------------------------------

    def run(self, scenarios: list[Scenario]) -> None:
        """Each run goes through every scenario; subject and reference back to back."""
        for run in range(self.config.runs):
            for s in scenarios:
                # Alternate the order between runs so neither side always goes first.
                sides: list[tuple[Measure | None, list[Metrics], bool]] = [
                    (s.subject, s.subject_runs, True),
                    (s.reference, s.reference_runs, False),
                ]
                if run % 2:
                    sides.reverse()
                for measure, results, is_subject in sides:
                    if measure is None:
                        continue
                    profiling = self._maybe_profile(s, run, is_subject)
                    try:
                        results.append(measure())
                    except BenchError as exc:
                        # One failed measurement (a glitch of a shared machine, a crashed
                        # stream) is reported, and the other scenarios still run.
                        side = "flowstate" if is_subject else "reference"
                        s.failures.append(f"run {run + 1} {side}: {exc}")
                        print(f"  run {run + 1} {s.id} {side} FAILED: {exc}", flush=True)
                    finally:
                        if profiling is not None:
                            self._finish_profile(profiling)
                print(
                    f"  run {run + 1}/{self.config.runs} {s.id}: {_report.one_line(s)}", flush=True
                )

    def _maybe_profile(
        self, s: Scenario, run: int, is_subject: bool
    ) -> subprocess.Popen[str] | None:
        c = self.config
        if c.profile_dir is None or run != 0 or s.id not in c.profile:
            return None
        server = s.subject_server if is_subject else s.reference_server
        if server is None or not (is_subject or c.profile_references):
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        c.profile_dir.mkdir(parents=True, exist_ok=True)
        stem = s.id.replace("/", "_") + ("" if is_subject else "_reference")
        return self.procs.start(
            f"py-spy-{stem}",
            [
                py_spy,
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                str(int(c.warmup + c.duration)),
                "--rate",
                "200",
                # Native stacks need the process paused per sample (slower, still proportional).
                *(["--native"] if c.profile_native else ["--nonblocking"]),
                "--format",
                "raw",
                "--output",
                str(c.profile_dir / f"{stem}.txt"),
            ],
            stdout=subprocess.DEVNULL,
        )

    def _finish_profile(self, proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        self.procs.stop(proc)


# --- main ---------------------------------------------------------------------------------------


def machine_info(db: _db.Database) -> dict[str, Any]:
    """What this machine and these versions are (for the report)."""
    import grpc

    go = shutil.which("go")
    go_version = ""
    if go:
        go_version = subprocess.run(
            [go, "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "postgres": _db.postgres_version(db.dsn),
        "postgres_embedded": db.embedded,
        "go": go_version,
        "git_commit": commit,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def execute(config: Config, out: Path) -> dict[str, Any]:
    """Run the whole bench; return the report (also written to `out`)."""
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = out.parent / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    with Processes(logs) as procs, _db.database() as db:
        print(f"database: {'embedded' if db.embedded else 'external'} ({db.dsn})", flush=True)
        loadgen = build_loadgen()
        info = machine_info(db)
        flowstate: _flowstate.Flowstate | None = None
        unavailable = ""
        try:
            flowstate = _flowstate.start(
                procs, db, config, child_env(**dict(config.server_env)), out.parent
            )
        except _flowstate.Unavailable as exc:
            unavailable = str(exc)
            print(f"Flowstate scenarios skipped: {unavailable}", flush=True)
        reference = start_reference(procs)
        grpc_raw = start_reference(procs, "grpc_raw", db.dsn) if flowstate else None
        bench = Bench(
            config, procs, loadgen, db, reference, grpc_raw, flowstate, unavailable, out.parent
        )
        scenarios = bench.scenarios()
        bench.run(scenarios)
        report = _report.build(config_dict(config), info, scenarios, time.monotonic() - started)
    out.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return report


def config_dict(config: Config) -> dict[str, Any]:
    """The config as JSON."""
    return {
        "runs": config.runs,
        "duration_s": config.duration,
        "warmup_s": config.warmup,
        "concurrencies": list(config.concurrencies),
        "read_concurrency": config.read_concurrency,
        "watchers": list(config.watchers),
        "idle_streams": config.idle_streams,
        "only": list(config.only),
        "smoke": config.smoke,
        "server_env": dict(config.server_env),
    }


def parse_args(argv: Sequence[str] | None) -> tuple[Config, Path, Path | None]:
    """Command line -> config, JSON output path, optional Markdown output path."""
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--smoke", action="store_true", help="every scenario once, ~1 s, tiny load")
    p.add_argument("--runs", type=int, help="runs per scenario (median reported; default 3)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 4)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each (default 1)")
    p.add_argument("--concurrency", type=int, nargs="+", help="clients (default 1 8 32 64)")
    p.add_argument("--watchers", type=int, nargs="+", help="watchers (default 1 100 1000)")
    p.add_argument("--idle-streams", type=int, help="idle streams for memory (default 1000)")
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        help="scenario id prefixes, e.g. transition/distinct validate",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the server during the profiled scenarios (run 1)",
    )
    p.add_argument(
        "--profile-scenarios",
        nargs="+",
        help="scenario ids to profile (default transition/distinct/c32 validate/c32)",
    )
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: Cython and C frames too (grpc's and asyncpg's own work)",
    )
    p.add_argument(
        "--profile-references",
        action="store_true",
        help="also profile the reference server (echo, broadcast) of the profiled scenarios",
    )
    p.add_argument(
        "--server-env",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="extra settings for flowstate serve, e.g. FLOWSTATE_DB_POOL_SIZE=32",
    )
    p.add_argument("--out", type=Path, default=OUT / "results.json", help="JSON report path")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    a = p.parse_args(argv)
    overrides: dict[str, Any] = {}
    if a.runs is not None:
        overrides["runs"] = a.runs
    if a.duration is not None:
        overrides["duration"] = a.duration
    if a.warmup is not None:
        overrides["warmup"] = a.warmup
    if a.concurrency:
        overrides["concurrencies"] = tuple(a.concurrency)
        overrides["read_concurrency"] = 32 if 32 in a.concurrency else max(a.concurrency)
    if a.watchers:
        overrides["watchers"] = tuple(a.watchers)
    if a.idle_streams is not None:
        overrides["idle_streams"] = a.idle_streams
    if a.only:
        overrides["only"] = tuple(a.only)
    if a.profile is not None:
        overrides["profile_dir"] = a.profile
    if a.profile_scenarios:
        overrides["profile"] = tuple(a.profile_scenarios)
    overrides["profile_native"] = a.profile_native
    overrides["profile_references"] = a.profile_references
    if a.server_env:
        pairs = [item.split("=", 1) for item in a.server_env]
        if any(len(pair) != 2 or not pair[0].startswith("FLOWSTATE_") for pair in pairs):
            p.error("--server-env takes FLOWSTATE_NAME=VALUE pairs")
        overrides["server_env"] = tuple((k, v) for k, v in pairs)
    config = Config.smoke_config(**overrides) if a.smoke else Config(**overrides)
    return config, a.out, a.markdown


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the bench like Ctrl-C: through the finally blocks that stop every process."""
    # A second SIGTERM must not interrupt that clean-up half way.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, print the table, write the JSON (and Markdown)."""
    config, out, markdown = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        report = execute(config, out)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130
    print()
    print(_report.table(report))
    print(f"\nJSON report: {out}")
    if markdown is not None:
        markdown.write_text(_report.markdown(report))
        print(f"Markdown table: {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
