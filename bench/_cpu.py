"""CPU time of the processes under test, to say where each request's time goes.

Throughput ratios say *that* Flowstate is slower than its reference; CPU time per request says
*where*: in the server process (Python: gRPC, our code, the driver) or in PostgreSQL (the SQL the
design chose). On a 2-core machine with the load generator on the same cores, CPU per request is
also the steadier figure of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


def _tree_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process and all its descendants (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return float(total)


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (``flowstate serve --workers N``: the
    supervisor and its workers)."""
    return _tree_cpu(pid)


def postgres_cpu(postmaster_pid: int | None) -> float:
    """CPU seconds of a PostgreSQL cluster: the postmaster and its children (the backends).

    Backends that exit between two readings take their CPU with them: read while the
    connections that matter are open.
    """
    return _tree_cpu(postmaster_pid)


@dataclass(frozen=True)
class CpuReading:
    """CPU seconds of the server (or client) process and of PostgreSQL at one moment."""

    process: float
    postgres: float

    @staticmethod
    def take(pid: int, postmaster_pid: int | None) -> CpuReading:
        """Read both now."""
        return CpuReading(process_cpu(pid), postgres_cpu(postmaster_pid))

    def per_request_us(self, later: CpuReading, requests: float) -> dict[str, float | None]:
        """Microseconds of CPU per request between this reading and `later`."""
        if requests <= 0:
            return {"process_cpu_us": None, "postgres_cpu_us": None}
        return {
            "process_cpu_us": (later.process - self.process) / requests * 1e6,
            "postgres_cpu_us": (later.postgres - self.postgres) / requests * 1e6
            if self.postgres or later.postgres
            else None,
        }
