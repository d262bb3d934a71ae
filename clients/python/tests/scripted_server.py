"""A real ``grpc.aio`` server for the SDK's unit-level tests, answering from a script.

Each RPC pops the next scripted outcome for its method: a response message, a `Fail` (the server
aborts the call with a rich ``google.rpc.Status`` built exactly as the Flowstate server does), or,
for the streams, a `Stream` (events, then an optional failure). Every request and its metadata
are recorded, so tests can check what the SDK sent (request ids reused across retries, the bearer
token, ``after_version`` on reconnect). Nothing here is a mock: the SDK talks HTTP/2 to a real
gRPC server bound to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from flowstate.v1 import errors_pb2, flow_service_pb2, flow_service_pb2_grpc, states_pb2


@dataclass(frozen=True)
class Fail:
    """Abort the call with `grpc_code`, and unless `bare`, the Flowstate rich details."""

    grpc_code: grpc.StatusCode
    reason: str = ""
    message: str = "refused"
    details: dict[str, Any] = field(default_factory=dict)
    flow_error: errors_pb2.FlowError | None = None
    retry_delay: float | None = None
    bare: bool = False
    domain: str = "flowstate.v1"

    def status(self) -> grpc.Status:
        """The ``grpc.Status`` carrying ErrorInfo, FlowError and RetryInfo."""
        code_number = self.grpc_code.value[0]
        rich = status_pb2.Status(code=code_number, message=self.message)
        if self.reason:
            info = error_details_pb2.ErrorInfo(reason=self.reason, domain=self.domain)
            rich.details.add().Pack(info)
            flow_error = self.flow_error
            if flow_error is None:
                details = struct_pb2.Struct()
                details.update(self.details)
                flow_error = errors_pb2.FlowError(
                    error_code=errors_pb2.ErrorCode.Value(f"ERROR_CODE_{self.reason}"),
                    message=self.message,
                    details=details,
                    retry_allowed=self.retry_delay is not None,
                )
            rich.details.add().Pack(flow_error)
        if self.retry_delay is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(timedelta(seconds=self.retry_delay))
            rich.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return rpc_status.to_status(rich)


@dataclass(frozen=True)
class Stream:
    """A scripted server stream: these responses, then `then` (None: end with OK)."""

    responses: Sequence[Message]
    then: Fail | None = None
    #: Keep the stream open (idle) after the responses instead of ending it.
    hang: bool = False


@dataclass(frozen=True)
class Recorded:
    """One call the server received."""

    method: str
    request: Any
    metadata: dict[str, str]


class ScriptedServicer:
    """Answers every RPC from `script[method]`, recording `calls`."""

    def __init__(self) -> None:
        self.script: dict[str, deque[Any]] = defaultdict(deque)
        self.calls: list[Recorded] = []

    def add(self, method: str, *outcomes: Any) -> None:
        """Queue outcomes (responses, `Fail`, `Stream`) for `method`."""
        self.script[method].extend(outcomes)

    def requests(self, method: str) -> list[Any]:
        """The requests received for `method`, in order."""
        return [call.request for call in self.calls if call.method == method]

    async def _answer(self, method: str, request: Any, context: Any) -> Any:
        self.calls.append(
            Recorded(method, request, {k: v for k, v in context.invocation_metadata()})
        )
        if not self.script[method]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"nothing scripted for {method}")
        outcome = self.script[method].popleft()
        if isinstance(outcome, Fail):
            if outcome.bare:
                await context.abort(outcome.grpc_code, outcome.message)
            await context.abort_with_status(outcome.status())
        return outcome

    async def _stream(self, method: str, request: Any, context: Any) -> AsyncIterator[Any]:
        outcome = await self._answer(method, request, context)
        assert isinstance(outcome, Stream)
        for response in outcome.responses:
            yield response
        if outcome.then is not None and outcome.then.bare:
            await context.abort(outcome.then.grpc_code, outcome.then.message)
        if outcome.then is not None:
            await context.abort_with_status(outcome.then.status())
        if outcome.hang:
            await asyncio.Event().wait()

    def __getattribute__(self, name: str) -> Any:
        # Every unary RPC of the service is answered by `_answer`, every stream by `_stream`.
        if name in _UNARY:

            async def unary(request: Any, context: Any) -> Any:
                return await self._answer(name, request, context)

            return unary
        if name in _STREAMS:

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                async for response in self._stream(name, request, context):
                    yield response

            return stream
        return super().__getattribute__(name)


_STREAMS = {"WatchFlow", "WatchFlows"}
_UNARY = {
    method.name
    for method in flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"].methods
} - _STREAMS


class ScriptedServer:
    """A started ``grpc.aio`` server on 127.0.0.1 running a `ScriptedServicer`."""

    def __init__(self, servicer: ScriptedServicer, port: int = 0) -> None:
        self.servicer = servicer
        self.server = grpc.aio.server()
        # Duck-typed: the generated registration only looks the handlers up by name.
        flow_service_pb2_grpc.add_FlowStateServiceServicer_to_server(
            cast(Any, servicer), self.server
        )
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"

    async def start(self) -> ScriptedServer:
        await self.server.start()
        return self

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pack_any(message: Message) -> any_pb2.Any:
    """``message`` packed into an Any (for tests that build statuses by hand)."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def flow_event(
    version: int, kind: str = "change", *, flow_id: str = "f-1", status: int = 2
) -> flow_service_pb2.FlowEvent:
    """A FlowEvent of `kind` ("snapshot", "change", "heartbeat") at `version`."""
    status_value = states_pb2.FlowStatus.ValueType(status)
    event = flow_service_pb2.FlowEvent(
        flow_id=flow_id, flow_version=version, status=status_value, progress=float(version)
    )
    if kind == "snapshot":
        event.snapshot.flow_id = flow_id
        event.snapshot.version = version
        event.snapshot.status = status_value
    elif kind == "change":
        event.change.flow_id = flow_id
        event.change.flow_version = version
        event.change.status_after = status_value
    else:
        event.heartbeat.server_time.GetCurrentTime()
    return event
