"""The FlowStateService over the Connect protocol and gRPC-Web: an adapter, not a second server.

connectrpc's generated ASGI application (`flowstate.v1.flow_service_connect`) calls a service
object with snake_case methods taking ``(request, RequestContext)``. `ConnectService` is that
object for *every* RPC of the gRPC servicer, built from the service descriptor: each method calls
the gRPC servicer's own method with `GrpcContextShim`, which gives the `flowstate.server.rpc`
wrapper what it reads from a ``grpc.aio.ServicerContext``:

- ``invocation_metadata()``: the HTTP request headers (``authorization``, ``x-correlation-id``);
- ``time_remaining()``: the call's timeout (a rate-limited call waits for its token within it);
- ``set_trailing_metadata()``: the response trailers (``trailer-x-correlation-id`` on a Connect
  unary response, the end-of-stream message of a stream, the gRPC-Web trailer frame);
- ``abort_with_status()`` / ``abort()``: raise the `connectrpc.errors.ConnectError` of the rich
  status, with the same code and the same details (``ErrorInfo``, ``FlowError``, ``RetryInfo``,
  ``BadRequest``) packed as Connect error details.

So authentication, scopes, validation, the error table, logging and metrics are the gRPC path's
own code, and a new RPC appears on the HTTP port the moment the servicer implements it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, NoReturn, cast

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.request import RequestContext
from google.rpc import status_pb2
from protobuf.wkt import Any as ConnectAny

from flowstate.server.errors import CORRELATION_ID_HEADER
from flowstate.v1 import flow_service_connect, flow_service_pb2

__all__ = ["ConnectService", "GrpcContextShim", "connect_application", "connect_code"]

_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
_SERVICE: Final = flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"]


def connect_code(code: grpc.StatusCode) -> Code:
    """The Connect code of a gRPC status code (same names; gRPC spells CANCELLED with two Ls)."""
    if code is grpc.StatusCode.CANCELLED:
        return Code.CANCELED
    return Code[code.name]


def _details(trailing_metadata: Iterable[tuple[str, Any]]) -> list[ErrorDetail]:
    """The rich status's details (``grpc-status-details-bin``) as Connect error details."""
    for key, value in trailing_metadata:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return [
                ErrorDetail(ConnectAny(type_url=detail.type_url, value=detail.value))
                for detail in status.details
            ]
    return []


class GrpcContextShim:
    """The part of ``grpc.aio.ServicerContext`` that `flowstate.server.rpc` uses, over Connect."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: RequestContext[Any, Any]) -> None:
        """Wrap the Connect request context of one call."""
        self._ctx = ctx

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The request headers, lower-case names (as gRPC metadata)."""
        return tuple(self._ctx.request_headers.allitems())

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline (``connect-timeout-ms``), None without one."""
        remaining = self._ctx.timeout_ms
        return None if remaining is None else remaining / 1000

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        """Set response trailers (the correlation id)."""
        trailers = self._ctx.response_trailers
        for key, value in metadata:
            trailers[key] = value

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """End the call with `status` and its details (raises `ConnectError`)."""
        for key, value in status.trailing_metadata:
            if key == CORRELATION_ID_HEADER and isinstance(value, str):
                self._ctx.response_trailers[key] = value
        raise ConnectError(
            connect_code(status.code), status.details, _details(status.trailing_metadata)
        )

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Iterable[tuple[str, Any]] = (),
    ) -> NoReturn:
        """End the call with `code` and `details` (raises `ConnectError`)."""
        self.set_trailing_metadata(
            (key, value) for key, value in trailing_metadata if isinstance(value, str)
        )
        raise ConnectError(connect_code(code), details)

    # The generated gRPC base class reports an unimplemented method with these, then raises
    # NotImplementedError (which `ConnectService` turns into UNIMPLEMENTED).
    def set_code(self, code: grpc.StatusCode) -> None:
        """Ignored (see above)."""

    def set_details(self, details: str) -> None:
        """Ignored (see above)."""


def _snake_case(name: str) -> str:
    """``GetRecoveryOptions`` -> ``get_recovery_options`` (the generated service's names)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_GrpcMethod = Callable[[Any, Any], Any]


def _unary(method: _GrpcMethod) -> Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]:
    async def call(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        try:
            return await method(request, GrpcContextShim(ctx))
        except NotImplementedError as exc:
            raise ConnectError(Code.UNIMPLEMENTED, str(exc) or "not implemented") from None

    return call


def _server_stream(
    method: _GrpcMethod,
) -> Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]]:
    async def call(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        stream = method(request, GrpcContextShim(ctx))
        try:
            async for response in stream:
                yield response
        finally:
            await stream.aclose()

    return call


class ConnectService:
    """Every FlowStateService RPC of a gRPC servicer, as connectrpc's service object."""

    def __init__(self, servicer: object) -> None:
        """Bind each RPC of the service descriptor to `servicer`'s method of the same name."""
        for method in _SERVICE.methods:
            grpc_method = getattr(servicer, method.name)
            if method.client_streaming:  # pragma: no cover - the API has none
                raise TypeError(f"{method.name}: client streaming is not served over Connect")
            adapter = _server_stream if method.server_streaming else _unary
            setattr(self, _snake_case(method.name), adapter(grpc_method))


def connect_application(
    servicer: object, *, read_max_bytes: int
) -> flow_service_connect.FlowStateServiceASGIApplication:
    """connectrpc's ASGI application (Connect JSON and binary, gRPC-Web) over `servicer`."""
    return flow_service_connect.FlowStateServiceASGIApplication(
        cast(flow_service_connect.FlowStateService, ConnectService(servicer)),
        read_max_bytes=read_max_bytes,
    )
