"""Helpers of the fault tests: a bounded write load whose every outcome is recorded, and the
checks that history is whole (acknowledged writes present exactly once, versions contiguous).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc, history_pb2, states_pb2

Metadata = tuple[tuple[str, str], ...]


def request_id() -> str:
    """A fresh idempotency key."""
    return f"fault-{uuid.uuid4().hex}"


def stub_for(channel: grpc.aio.Channel) -> flow_service_pb2_grpc.FlowStateServiceAsyncStub:
    """The FlowStateService stub on `channel`."""
    return flow_service_pb2_grpc.FlowStateServiceStub(channel)


async def running_flows(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata, count: int
) -> list[str]:
    """`count` new flows whose first phase is IN_PROGRESS (ready for progress reports)."""
    flows = []
    for _ in range(count):
        flow = (
            await stub.CreateFlow(pb.CreateFlowRequest(request_id=request_id()), metadata=metadata)
        ).flow
        await stub.TransitionPhase(
            pb.TransitionPhaseRequest(
                request_id=request_id(),
                flow_id=flow.flow_id,
                phase="data_import",
                target_state=states_pb2.PHASE_STATE_IN_PROGRESS,
            ),
            metadata=metadata,
        )
        flows.append(flow.flow_id)
    return flows


@dataclass
class Progress:
    """One progress report: its request and what the client saw."""

    flow_id: str
    request_id: str
    progress: float
    code: grpc.StatusCode | None = None
    error: grpc.aio.AioRpcError | None = None

    def request(self) -> pb.UpdatePhaseProgressRequest:
        """The request (the same one on every retry: same request id, same payload)."""
        return pb.UpdatePhaseProgressRequest(
            request_id=self.request_id,
            flow_id=self.flow_id,
            phase="data_import",
            progress=self.progress,
        )

    async def send(
        self,
        stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
        metadata: Metadata,
        deadline: float = 20.0,
    ) -> None:
        """Send it once (gRPC deadline `deadline` s) and record the status code."""
        try:
            await stub.UpdatePhaseProgress(self.request(), metadata=metadata, timeout=deadline)
            self.code, self.error = grpc.StatusCode.OK, None
        except grpc.aio.AioRpcError as error:
            self.code, self.error = error.code(), error


@dataclass
class Ledger:
    """Every progress report sent, with distinct values so that each is a new version."""

    reports: list[Progress] = field(default_factory=list)
    _next: int = 0

    def new(self, flow_id: str) -> Progress:
        """A new report for `flow_id` (a progress value no other report uses)."""
        self._next += 1
        report = Progress(flow_id, request_id(), self._next / 1_000_000)
        self.reports.append(report)
        return report

    def acknowledged(self) -> list[Progress]:
        """The reports the server answered OK."""
        return [r for r in self.reports if r.code == grpc.StatusCode.OK]


@dataclass(frozen=True)
class Refusal:
    """What a refused call's rich status says (the parts the fault tests check)."""

    code: grpc.StatusCode
    reason: str
    retry_info: bool


def refusal(error: grpc.aio.AioRpcError) -> Refusal:
    """The ErrorInfo reason ("" when none) and whether RetryInfo came with it."""
    reason, retry_info = "", False
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # AioRpcError works too
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason = info.reason
        retry_info = retry_info or packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    return Refusal(error.code(), reason, retry_info)


async def history(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, metadata: Metadata, flow_id: str
) -> list[history_pb2.HistoryEntry]:
    """Every history entry of a flow, in version order (all pages)."""
    entries: list[history_pb2.HistoryEntry] = []
    token = ""
    while True:
        page = await stub.ListFlowHistory(
            pb.ListFlowHistoryRequest(flow_id=flow_id, page_size=1000, page_token=token),
            metadata=metadata,
        )
        entries.extend(page.history_entries)
        token = page.next_page_token
        if not token:
            return entries


async def assert_history_whole(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub,
    metadata: Metadata,
    flow_ids: Sequence[str],
    acknowledged: Sequence[Progress],
) -> dict[str, int]:
    """Versions 1..n without a gap, no request id twice, every acknowledged report once.

    Returns each request id's count (1 for every one found)."""
    seen: dict[str, int] = {}
    for flow_id in flow_ids:
        entries = await history(stub, metadata, flow_id)
        assert [e.flow_version for e in entries] == list(range(1, len(entries) + 1)), flow_id
        for entry in entries:
            seen[entry.request_id] = seen.get(entry.request_id, 0) + 1
    assert all(count == 1 for count in seen.values()), "a request was applied twice"
    missing = [r.request_id for r in acknowledged if r.request_id not in seen]
    assert not missing, f"acknowledged but lost: {missing}"
    return seen


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that process is alive, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


@contextlib.contextmanager
def reaping_postmaster(pgdata: Path) -> Iterator[None]:
    """On exit, kill the embedded postmaster a failed test left running (by its pid)."""
    try:
        yield
    finally:
        pid = postmaster_pid(pgdata)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def wait_until(predicate: object, *, within: float = 30.0, step: float = 0.05) -> None:
    """Poll `predicate()` (bounded) until it is true."""
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within}s: {predicate}")
        await asyncio.sleep(step)
