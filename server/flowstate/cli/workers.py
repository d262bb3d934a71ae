"""``flowstate serve --workers N``: N server processes on one port, under a supervisor.

The supervisor (this module, the process ``flowstate serve`` started) serves nothing itself:

1. it checks the settings and the token verification (a bad setting fails here, once);
2. it resolves the database: ``FLOWSTATE_DATABASE_URL``, or it starts the embedded PostgreSQL
   (one for all the workers) and hands its URL and the data directory's dev secret on;
   it migrates once when asked (workers never migrate);
3. it reserves the gRPC port and the HTTP port (binding, never listening, with
   ``SO_REUSEPORT``): with ``--port 0`` the workers all get the port the supervisor drew;
4. it starts N workers, each a plain ``flowstate serve --workers 1`` with its own pool, its
   own LISTEN connection (watch hub) and ``FLOWSTATE_REUSE_PORT=1``: each binds the same
   ports with ``SO_REUSEPORT`` and the kernel spreads new connections over them. With
   ``--metrics-port P`` worker i serves metrics on P + i (0: an ephemeral port each);
5. once every worker is ready it prints ``flowstate: worker I pid PID`` per worker, then
   ``flowstate: serving on HOST:PORT`` and writes ``--ready-file`` (as a single server does);
6. a worker that exits while the supervisor is not stopping is started again (after 0.5 s,
   doubling up to 10 s while they keep dying within a minute of their start), and its new pid
   printed;
7. SIGTERM or SIGINT: every worker gets SIGTERM and drains as a single server does (refuses
   new calls, ends streams, lets calls in flight finish within the grace period); workers still
   running after the grace period plus 10 s are killed; then the embedded PostgreSQL stops.

Streams and every time-based feature work across workers as across replicas: each worker's hub
LISTENs on the shared database and reads the committed history (docs/streams.md).
Workers write their stdout to the supervisor's stderr, so the supervisor's stdout carries only
its own lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from flowstate.cli.console import console_signin_url
from flowstate.server.app import format_address
from flowstate.server.config import ConfigError, ServerSettings, resolve_auth
from flowstate.storage import migrate
from flowstate.storage.embedded import EmbeddedPostgres

__all__ = ["supervise"]

_log = logging.getLogger("flowstate.server")

_READY_TIMEOUT = 120.0
_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 10.0
_STABLE_AFTER = 60.0
_KILL_MARGIN = 10.0
_PR_SET_PDEATHSIG = 1


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (without listening) `host`:`port` with SO_REUSEPORT: the port is ours to share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {format_address(host, port)} ({exc.strerror or exc})"
        ) from None
    return sock


@dataclasses.dataclass
class _Worker:
    index: int
    argv: list[str]
    ready_file: Path
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    delay: float = _RESTART_DELAY

    async def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            "--ready-file",
            str(self.ready_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
            env={**os.environ, "FLOWSTATE_REUSE_PORT": "1"},
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        self.started_at = time.monotonic()


def _die_with_parent(supervisor: int) -> None:
    """In the worker, before exec: be killed when the supervisor dies (Linux), so that a
    supervisor that is killed outright leaves no worker serving behind it (the kernel sends
    SIGKILL as the supervisor exits: tests/server/test_workers.py). A supervisor that died
    between the fork and the prctl sent nothing: the worker then exits at once."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(1)


def _worker_argv(
    settings: ServerSettings, index: int, port: int, http_port: int | None, database_url: str
) -> list[str]:
    """The worker's command line: the supervisor's own, with the per-worker flags last."""
    argv = [sys.executable, "-m", "flowstate.cli.main", *sys.argv[1:]]
    argv += ["--workers", "1", "--port", str(port), "--no-migrate"]
    argv += ["--http-port", "off" if http_port is None else str(http_port)]
    argv += ["--database-url", database_url]
    if settings.embedded_database:
        argv += ["--data-dir", str(settings.resolved_data_dir), "--dev-auth"]
    if settings.metrics_port is not None:
        metrics_port = settings.metrics_port + index if settings.metrics_port else 0
        argv += ["--metrics-port", str(metrics_port)]
    return argv


async def _wait_ready(workers: list[_Worker]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    for worker in workers:
        assert worker.process is not None
        while not worker.ready_file.exists():
            if worker.process.returncode is not None:
                raise _WorkerFailedError(worker.index, worker.process.returncode)
            if time.monotonic() > deadline:
                raise _WorkerFailedError(worker.index, None)
            await asyncio.sleep(0.05)


class _WorkerFailedError(Exception):
    def __init__(self, index: int, code: int | None) -> None:
        super().__init__(index, code)
        self.index = index
        self.code = code


async def supervise(settings: ServerSettings) -> int:
    """Run `settings.workers` workers until SIGTERM/SIGINT (see the module docstring)."""
    auth = resolve_auth(settings)  # fail fast on a bad key; creates the dev secret once
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    embedded: EmbeddedPostgres | None = None
    reserved: list[socket.socket] = []
    workers: list[_Worker] = []
    run_dir = Path(tempfile.mkdtemp(prefix="flowstate-workers-"))
    try:
        if settings.database_url is not None:
            url = settings.database_url
        else:
            embedded = await asyncio.to_thread(EmbeddedPostgres.start, settings.resolved_data_dir)
            url = embedded.url
        if settings.migrate_on_start:
            await migrate.upgrade(url)
        grpc_socket = _reserve(settings.host, settings.port)
        reserved.append(grpc_socket)
        port = grpc_socket.getsockname()[1]
        http_port = None
        if settings.http_port is not None:
            http_socket = _reserve(settings.http_host, settings.http_port)
            reserved.append(http_socket)
            http_port = http_socket.getsockname()[1]
        for index in range(settings.workers):
            argv = _worker_argv(settings, index, port, http_port, url)
            workers.append(_Worker(index, argv, run_dir / f"worker-{index}.ready"))
        for worker in workers:
            await worker.start()
        try:
            await _wait_ready(workers)
        except _WorkerFailedError as failed:
            if failed.code is None:  # a worker that exited has said why on stderr already
                print(f"flowstate: worker {failed.index} did not start in time", file=sys.stderr)
            return failed.code or 1
        for worker in workers:
            assert worker.process is not None
            print(f"flowstate: worker {worker.index} pid {worker.process.pid}", flush=True)
        if settings.http_port is not None and http_port is not None:
            scheme = "https" if settings.tls_cert_file is not None else "http"
            console = f"{scheme}://{format_address(settings.http_host, http_port)}/"
            print(f"flowstate: console on {console}", flush=True)
            if auth.source == "dev":
                link = console_signin_url(console, auth)
                print(f"flowstate: sign in as dev/local (one-time link): {link}", flush=True)
        address = format_address(settings.host, port)
        if settings.ready_file is not None:
            temporary = settings.ready_file.with_name(f".{settings.ready_file.name}.tmp")
            temporary.write_text(address + "\n")
            temporary.replace(settings.ready_file)
        print(f"flowstate: serving on {address}", flush=True)
        await _watch(workers, stop)
        return 0
    finally:
        await _stop_workers(workers, settings.grace_period + _KILL_MARGIN)
        for sock in reserved:
            sock.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        await asyncio.to_thread(shutil.rmtree, run_dir, True)


async def _watch(workers: list[_Worker], stop: asyncio.Event) -> None:
    """Restart workers that exit, until `stop` is set."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            waits = {}
            for worker in workers:
                assert worker.process is not None
                waits[asyncio.ensure_future(worker.process.wait())] = worker
            done, pending = await asyncio.wait(
                [stopping, *waits], return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                if task is not stopping:
                    task.cancel()
            if stop.is_set():
                return
            for task in done:
                exited = waits.get(task)
                if exited is not None:
                    await _restart(exited, stop)
    finally:
        stopping.cancel()


async def _restart(worker: _Worker, stop: asyncio.Event) -> None:
    assert worker.process is not None
    code = worker.process.returncode
    lived = time.monotonic() - worker.started_at
    worker.delay = (
        _RESTART_DELAY if lived > _STABLE_AFTER else min(worker.delay * 2, _MAX_RESTART_DELAY)
    )
    delay = _RESTART_DELAY if lived > _STABLE_AFTER else worker.delay
    _log.warning(
        "worker %d (pid %d) exited (%s); restarting in %.1f s",
        worker.index,
        worker.process.pid,
        code,
        delay,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    if stop.is_set():
        return
    await worker.start()
    assert worker.process is not None
    print(f"flowstate: worker {worker.index} pid {worker.process.pid}", flush=True)


async def _stop_workers(workers: list[_Worker], patience: float) -> None:
    """SIGTERM every live worker; SIGKILL those still running after `patience` seconds."""
    live = [w.process for w in workers if w.process is not None and w.process.returncode is None]
    for process in live:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    if not live:
        return
    _, pending = await asyncio.wait(
        [asyncio.ensure_future(p.wait()) for p in live], timeout=patience
    )
    for process in live:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    for task in pending:
        task.cancel()
