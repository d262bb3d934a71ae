"""Child processes of the bench: each in its own process group, all stopped on the way out.

Every server and load generator the bench starts goes through `Processes`, a context manager
that terminates (then kills) each process group it started, in reverse order, even when a
scenario fails or the run is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any


class BenchError(RuntimeError):
    """A bench step failed (a process died, timed out or printed something unexpected)."""


class Processes:
    """Starts child processes in new sessions and stops their process groups on exit."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: list[subprocess.Popen[str]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def log_path(self, name: str) -> Path:
        """Where the stderr of the process called `name` goes."""
        return self._log_dir / f"{name}.log"

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.PIPE,
        cwd: Path | None = None,
    ) -> subprocess.Popen[str]:
        """Start `args` in its own session; stderr goes to the log file of `name`."""
        with self.log_path(name).open("a") as log:
            proc = subprocess.Popen(
                list(args),
                stdin=stdin,
                stdout=stdout,
                stderr=log,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                text=True,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
        """SIGTERM the process group of `proc`, then SIGKILL it if it lingers."""
        if proc in self._procs:
            self._procs.remove(proc)
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout)
        # The group may outlive its leader (e.g. a server's own children).
        _signal_group(proc, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        """Stop every process still running, most recent first."""
        while self._procs:
            self.stop(self._procs[-1])

    def run_json(
        self,
        name: str,
        args: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run `args` to completion (at most `timeout` s) and parse the JSON it prints last."""
        proc = self.start(name, args, env=env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{name} did not finish within {timeout:.0f} s") from exc
        finally:
            self.stop(proc)
        if proc.returncode != 0:
            raise BenchError(f"{name} exited with {proc.returncode}: {tail(self.log_path(name))}")
        lines = [line for line in out.splitlines() if line.strip()]
        if not lines:
            raise BenchError(f"{name} printed nothing: {tail(self.log_path(name))}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def read_line(proc: subprocess.Popen[str], prefix: str, *, timeout: float, log: Path) -> str:
    """Read `proc`'s stdout until a line starting with `prefix`; return the rest of that line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no {prefix!r} line within {timeout:.0f} s: {tail(log)}")
            if not sel.select(left):
                continue
            line = proc.stdout.readline()
            if not line:
                raise BenchError(f"exited ({proc.wait()}) before printing {prefix!r}: {tail(log)}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


def read_json_line(proc: subprocess.Popen[str], *, timeout: float, log: Path) -> dict[str, Any]:
    """Read one JSON object line from `proc`'s stdout."""
    line = read_line(proc, "{", timeout=timeout, log=log)
    result: dict[str, Any] = json.loads("{" + line)
    return result


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
