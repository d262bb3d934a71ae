"""``flowstate serve --workers 2``: one port, two processes, supervised.

Real subprocesses on 127.0.0.1 (a supervisor and its workers), real clients. Which worker a new
connection reaches is the kernel's choice (SO_REUSEPORT); the correlation id a server answers
with starts with a per-process prefix, which tells the workers apart.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from pathlib import Path

import grpc

from flowstate.core.model import Tenant
from flowstate.testing import ServerProcess, serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc
from flowstate.v1 import states_pb2 as S  # noqa: N812 - as in the other server tests

from .support import new_flow, request_id, sync_stub

WORKER_LINE = re.compile(r"^flowstate: worker (\d+) pid (\d+)$")
CHANGES = 16


def _workers(process: ServerProcess) -> dict[int, int]:
    """Worker index -> its latest pid, from the supervisor's lines."""
    found: dict[int, int] = {}
    for line in list(process.output):
        match = WORKER_LINE.match(line)
        if match:
            found[int(match.group(1))] = int(match.group(2))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped yet, holds nothing and counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_with(marker: str) -> list[int]:
    """Pids of the live processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _wait_for(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _toggle(address: str, metadata: tuple[tuple[str, str], ...], flow_id: str, n: int) -> str:
    """One TransitionPhase on a connection of its own; the answering process's id prefix."""
    target = S.PHASE_STATE_IN_PROGRESS if n % 2 == 0 else S.PHASE_STATE_WAITING_APPROVAL
    # A local subchannel pool: a connection of its own (channels share them by default).
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        _, call = stub.TransitionPhase.with_call(
            pb.TransitionPhaseRequest(
                flow_id=flow_id,
                phase="data_import",
                target_state=target,
                request_id=request_id(),
            ),
            metadata=metadata,
        )
    trailers = dict(call.trailing_metadata() or ())
    return str(trailers["x-correlation-id"])[:16]


def test_two_workers_share_the_port_and_every_stream_sees_every_change(
    database_url: str, tenant: Tenant
) -> None:
    env = {"FLOWSTATE_HEARTBEAT_INTERVAL": "0.3"}
    with serve_subprocess(database_url=database_url, args=["--workers", "2"], env=env) as process:
        assert sorted(_workers(process)) == [0, 1]
        metadata = process.mint.metadata(tenant)
        with sync_stub(process.address) as stub:
            flow = new_flow(stub, metadata)
            stream = stub.WatchFlow(
                pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=metadata, timeout=60
            )
            assert next(stream).event.HasField("snapshot")
            prefixes = {_toggle(process.address, metadata, flow.flow_id, n) for n in range(CHANGES)}
            # Changes made through either worker reach the stream, in order, none missing,
            # and the stream's worker still sends heartbeats (time-based) between them.
            versions: list[int] = []
            heartbeats = 0
            for response in stream:
                event = response.event
                if event.HasField("change"):
                    versions.append(event.flow_version)
                elif event.HasField("heartbeat"):
                    heartbeats += 1
                if len(versions) == CHANGES and heartbeats:
                    break
            stream.cancel()
        assert versions == list(range(flow.version + 1, flow.version + 1 + CHANGES))
        assert len(prefixes) == 2  # both workers answered (2 ** -15 odds of a false failure)
        assert process.stop() == 0


def test_a_killed_worker_is_restarted_and_sigterm_stops_them_all(
    tmp_path: Path, tenant: Tenant
) -> None:
    # The embedded PostgreSQL: started once, by the supervisor, for both workers.
    with serve_subprocess(data_dir=tmp_path / "data", args=["--workers", "2"]) as process:
        first = _workers(process)
        assert sorted(first) == [0, 1]
        os.kill(first[0], signal.SIGKILL)
        _wait_for(lambda: _workers(process).get(0) not in (None, first[0]), "a new worker 0")
        restarted = _workers(process)[0]
        assert _alive(restarted)
        assert _alive(first[1])
        metadata = process.mint.metadata(tenant)
        with sync_stub(process.address) as stub:
            flow = new_flow(stub, metadata)
        prefixes: set[str] = set()
        toggles = itertools.count()

        def both_answer() -> bool:
            prefixes.add(_toggle(process.address, metadata, flow.flow_id, next(toggles)))
            return len(prefixes) == 2

        _wait_for(both_answer, "both workers to answer")  # the restarted one serves too
        assert process.stop() == 0
        assert "exited (-9); restarting" in process.log()
    for pid in (first[1], restarted):
        _wait_for(lambda pid=pid: not _alive(pid), f"worker {pid} to exit", timeout=30)


def test_a_killed_supervisor_takes_its_workers_with_it(database_url: str, tenant: Tenant) -> None:
    """SIGKILL of the supervisor (no drain, no cleanup of its own): the kernel kills every
    worker as the supervisor exits (PR_SET_PDEATHSIG), so none keeps serving on the shared
    port (SO_REUSEPORT would let it take connections meant for the next server). A new server
    on the same port then answers alone, with every change committed before the kill."""
    with serve_subprocess(database_url=database_url, args=["--workers", "2"]) as process:
        workers = _workers(process)
        assert sorted(workers) == [0, 1]
        # Each worker's --ready-file lies in the supervisor's own run directory: a marker that
        # finds any process the supervisor started, restarted workers included.
        cmdline = Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")
        ready_file = Path(cmdline[cmdline.index(b"--ready-file") + 1].decode())
        run_dir = str(ready_file.parent)
        assert sorted(_processes_with(run_dir)) == sorted(workers.values())
        metadata = process.mint.metadata(tenant)
        with grpc.insecure_channel(process.address) as channel:
            stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
            flow = stub.CreateFlow(
                pb.CreateFlowRequest(request_id=request_id()), metadata=metadata
            ).flow
        process.process.kill()
        process.process.wait(30)
        try:
            # Bounded: the kernel signals the workers while the supervisor exits.
            _wait_for(lambda: not _processes_with(run_dir), "the workers to die", timeout=10)
        finally:
            for pid in _processes_with(run_dir):  # survivors of a failure: not left running
                os.kill(pid, signal.SIGKILL)
        port = process.address.rsplit(":", 1)[1]
        secret = {"FLOWSTATE_JWT_SECRET": process.mint.secret}
        with serve_subprocess(
            database_url=database_url, args=["--workers", "2", "--port", port], env=secret
        ) as restarted:
            assert restarted.address == process.address
            with grpc.insecure_channel(restarted.address) as channel:
                stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
                read = stub.GetFlow(pb.GetFlowRequest(flow_id=flow.flow_id), metadata=metadata)
            assert read.flow.version == flow.version
            assert not set(_workers(restarted).values()) & set(workers.values())
            assert restarted.stop() == 0
