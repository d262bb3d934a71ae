"""Test harness: an external PostgreSQL cluster (Debian's PostgreSQL 15 binaries) on 127.0.0.1.

The embedded server (`flowstate.storage.embedded`) is what `flowstate serve` uses without a
URL; deployments use a PostgreSQL someone else runs, with password authentication over TCP and
roles a DBA created. `ExternalPostgres` is that cluster for tests: ``initdb`` in a fresh
temporary directory, ``pg_ctl start`` on a free port of 127.0.0.1, SCRAM passwords for TCP
connections, and the ways a cluster really ends (``stop`` fast or immediate, ``kill`` with
SIGKILL) for fault tests::

    with external_postgres() as cluster:
        cluster.psql("CREATE ROLE owner LOGIN PASSWORD 'pw'; CREATE DATABASE app OWNER owner")
        url = cluster.url(user="owner", password="pw", database="app")
        cluster.kill(); cluster.start()      # same port, same data

PostgreSQL refuses to run as root. Run as root (CI), the server processes run as the system
user ``flowstate-pg`` (created with ``useradd`` on first use), which owns the cluster's
directory; any other user runs them as itself. The binaries come from ``$FLOWSTATE_PG_BINDIR``
(default ``/usr/lib/postgresql/15/bin``; ``make setup`` installs Debian's ``postgresql-15``
when it is missing and it runs as root). Speed over durability against OS crashes (fsync
off); a killed server keeps every commit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "DEFAULT_PG_BINDIR",
    "PG_BINDIR_ENV",
    "RUN_AS_USER",
    "ExternalPostgres",
    "PostgresBinariesMissing",
    "external_postgres",
    "pg_bindir",
]

PG_BINDIR_ENV = "FLOWSTATE_PG_BINDIR"
DEFAULT_PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
RUN_AS_USER = "flowstate-pg"
"""The unprivileged user the cluster runs as when the tests run as root."""

# Only an OS crash could lose data with these: a commit still reaches the kernel before it
# returns (synchronous_commit stays on), so killed clusters keep every committed transaction.
_FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


class PostgresBinariesMissing(RuntimeError):  # noqa: N818 - reads as a condition, like the others
    """``initdb`` / ``pg_ctl`` / ``psql`` are not where `pg_bindir` looks."""


def pg_bindir(env: Mapping[str, str] | None = None) -> Path:
    """The PostgreSQL binaries directory; PostgresBinariesMissing when it lacks a tool."""
    environ = os.environ if env is None else env
    bindir = Path(environ.get(PG_BINDIR_ENV) or DEFAULT_PG_BINDIR)
    missing = [tool for tool in ("initdb", "pg_ctl", "psql") if not (bindir / tool).is_file()]
    if missing:
        raise PostgresBinariesMissing(
            f"PostgreSQL binaries not found in {bindir} (missing {', '.join(missing)}): install "
            f"Debian's postgresql-15 (`make setup` does as root) or set {PG_BINDIR_ENV}"
        )
    return bindir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(RUN_AS_USER)
    created = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:  # exit 9: another process created it meanwhile
        return pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        raise RuntimeError(f"cannot create user {RUN_AS_USER}: {created.stderr.strip()}") from None


@dataclass
class ExternalPostgres:
    """One PostgreSQL cluster in a directory of its own, listening on 127.0.0.1:`port`.

    Build it with `create` (initdb; not started) or `external_postgres` (started, removed on
    exit). The superuser is ``postgres`` with a random `password`; `url` and `psql` default
    to it.
    """

    bindir: Path
    directory: Path
    """Holds ``data/`` (PGDATA), ``postgres.log`` and the unix socket."""
    port: int
    password: str
    user: pwd.struct_passwd | None
    superuser: str = "postgres"

    @classmethod
    def create(
        cls,
        *,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> ExternalPostgres:
        """Initialise a new cluster in a fresh temporary directory (about a second).

        `settings` are appended to postgresql.conf (after the fast, non-durable defaults).
        """
        bindir = bindir or pg_bindir()
        user = _run_as_user()
        directory = Path(tempfile.mkdtemp(prefix="flowstate-pg15-"))
        cluster = cls(bindir, directory, _free_port(), secrets.token_hex(16), user)
        try:
            password_file = directory / "superuser-password"
            password_file.write_text(cluster.password + "\n")
            if user is not None:
                os.chown(directory, user.pw_uid, user.pw_gid)
                os.chown(password_file, user.pw_uid, user.pw_gid)
            cluster._as_owner(
                [
                    str(bindir / "initdb"),
                    "--pgdata",
                    str(cluster.data_dir),
                    "--username",
                    cluster.superuser,
                    f"--pwfile={password_file}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
            password_file.unlink()
            lines = {
                "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{directory}'",
                **{name: f"'{value}'" for name, value in _FAST_SETTINGS.items()},
                **{name: f"'{value}'" for name, value in (settings or {}).items()},
            }
            with (cluster.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# flowstate.testing_postgres\n")
                conf.writelines(f"{name} = {value}\n" for name, value in lines.items())
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cluster

    @property
    def data_dir(self) -> Path:
        """PGDATA."""
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        """The server's log (pg_ctl -l)."""
        return self.directory / "postgres.log"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def _as_owner(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the cluster's owner; RuntimeError with its output on failure."""
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {
                "user": self.user.pw_uid,
                "group": self.user.pw_gid,
                "extra_groups": [],
                "cwd": str(self.directory),
            }
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}
        result = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
            **extra,
            **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n--- postgres.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """``pg_ctl start`` and wait until the server accepts connections."""
        self._as_owner(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--wait",
                f"--timeout={int(timeout)}",
                "-o",
                f"-p {self.port}",
            ]
        )

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """``pg_ctl stop -m MODE`` (smart, fast or immediate); nothing when not running."""
        if not self.running:
            return
        self._as_owner(
            [
                str(self.bindir / "pg_ctl"),
                "stop",
                "--pgdata",
                str(self.data_dir),
                "--mode",
                mode,
                "--wait",
                f"--timeout={int(timeout)}",
            ]
        )

    def restart(self, mode: str = "fast") -> None:
        """Stop (`mode`) and start again on the same port with the same data."""
        self.stop(mode)
        self.start()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive."""
        return self.pid is not None

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster (a crash), then wait for its children to go.

        The next `start` runs crash recovery.
        """
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        # Backends notice the postmaster's death and exit; the port is free once they have.
        while time.monotonic() < deadline:
            if self.pid is None and self._port_free():
                return
            time.sleep(0.05)
        raise TimeoutError(f"PostgreSQL (pid {pid}) still holds port {self.port} after SIGKILL")

    def _port_free(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) != 0

    def remove(self) -> None:
        """Stop the cluster (immediate) and delete its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- talking to it -------------------------------------------------------------------------

    def url(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str = "postgres",
    ) -> str:
        """A ``postgresql+asyncpg://`` URL over TCP (default: the superuser)."""
        name = user or self.superuser
        secret = self.password if user is None and password is None else password
        auth = quote(name, safe="") + (f":{quote(secret, safe='')}" if secret else "")
        return f"postgresql+asyncpg://{auth}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def admin_url(self) -> str:
        """The superuser's URL of the ``postgres`` database."""
        return self.url()

    def psql(
        self,
        sql: str,
        *,
        database: str = "postgres",
        user: str | None = None,
        password: str | None = None,
    ) -> str:
        """Run `sql` with psql over TCP (default: as the superuser); its unaligned output.

        Each statement commits on its own (CREATE DATABASE may follow CREATE ROLE); the first
        error stops it (RuntimeError with psql's message).
        """
        env = dict(os.environ)
        env["PGPASSWORD"] = (password or "") if user is not None else self.password
        command = [
            str(self.bindir / "psql"),
            "--no-psqlrc",
            "--no-align",
            "--tuples-only",
            "--set=ON_ERROR_STOP=1",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--username={user or self.superuser}",
            f"--dbname={database}",
            "--file=-",  # each statement on its own (autocommit), unlike --command
        ]
        result = subprocess.run(
            command, input=sql, capture_output=True, text=True, check=False, env=env
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()


@contextlib.contextmanager
def external_postgres(
    *,
    bindir: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> Iterator[ExternalPostgres]:
    """A started `ExternalPostgres`; stopped and deleted on exit (see the module docstring)."""
    cluster = ExternalPostgres.create(bindir=bindir, settings=settings)
    try:
        for attempt in range(3):
            try:
                cluster.start()
                break
            except RuntimeError as exc:
                # The free port was taken between the probe and the bind: take another.
                if "already in use" not in str(exc) or attempt == 2:
                    raise
                cluster.port = _free_port()
        yield cluster
    finally:
        cluster.remove()
