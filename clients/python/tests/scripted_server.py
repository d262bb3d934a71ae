"""A real ``grpc.aio`` server for the SDK's unit-level tests, answering from a script.

Each RPC pops the next scripted outcome for its method: a response message, a `Recorded` error
(the server aborts the call with an error recorded from a real Flowstate server, replayed byte
for byte: recorded_errors.py), an `Encoded` refusal (the server's own encoder, for the codes no
recording covers), a `Bare` status without details, or, for the streams, a `Stream`
(events, then an optional failure). Every request and its metadata
are recorded, so tests can check what the SDK sent (request ids reused across retries, the bearer
token, ``after_version`` on reconnect). Nothing here is a mock: the SDK talks HTTP/2 to a real
gRPC server bound to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf.message import Message
from recorded_errors import Recorded

from flowstate.v1 import flow_service_pb2, flow_service_pb2_grpc, states_pb2


@dataclass(frozen=True)
class Bare:
    """Abort the call with `grpc_code` and `message` only, no details: what gRPC itself, a proxy
    or a server's unexpected failure sends (the Flowstate server's own refusals are replayed
    from recordings: `recorded_errors.Recorded`)."""

    grpc_code: grpc.StatusCode
    message: str = "plain"


@dataclass(frozen=True)
class Encoded:
    """Abort the call with `grpc_status`, a status the server's own encoder built
    (``flowstate.server.errors.to_grpc_status``): only for the refusals no recording covers,
    whose gRPC code and details are then still checked over the wire (test_sdk_errors.py)."""

    grpc_status: grpc.Status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        """The status code the encoder chose."""
        code: grpc.StatusCode = self.grpc_status.code
        return code

    def status(self) -> grpc.Status:
        """The status to abort with, as the encoder built it."""
        return self.grpc_status


Failure = Bare | Recorded | Encoded
"""A scripted failure."""


@dataclass(frozen=True)
class Stream:
    """A scripted server stream: these responses, then `then` (None: end with OK)."""

    responses: Sequence[Message]
    then: Failure | None = None
    #: Keep the stream open (idle) after the responses instead of ending it.
    hang: bool = False


@dataclass(frozen=True)
class Call:
    """One call the server received."""

    method: str
    request: Any
    metadata: dict[str, str]


class ScriptedServicer:
    """Answers every RPC from `script[method]`, recording `calls`."""

    def __init__(self) -> None:
        self.script: dict[str, deque[Any]] = defaultdict(deque)
        self.calls: list[Call] = []

    def add(self, method: str, *outcomes: Any) -> None:
        """Queue outcomes (responses, `Recorded`, `Bare`, `Stream`) for `method`."""
        self.script[method].extend(outcomes)

    def requests(self, method: str) -> list[Any]:
        """The requests received for `method`, in order."""
        return [call.request for call in self.calls if call.method == method]

    async def _answer(self, method: str, request: Any, context: Any) -> Any:
        self.calls.append(Call(method, request, {k: v for k, v in context.invocation_metadata()}))
        if not self.script[method]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"nothing scripted for {method}")
        outcome = self.script[method].popleft()
        if isinstance(outcome, Bare | Recorded | Encoded):
            await _fail(context, outcome)
        return outcome

    async def _stream(self, method: str, request: Any, context: Any) -> AsyncIterator[Any]:
        outcome = await self._answer(method, request, context)
        assert isinstance(outcome, Stream)
        for response in outcome.responses:
            yield response
        if outcome.then is not None:
            await _fail(context, outcome.then)
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


async def _fail(context: Any, failure: Failure) -> None:
    if isinstance(failure, Bare):
        await context.abort(failure.grpc_code, failure.message)
    else:
        await context.abort_with_status(failure.status())


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
