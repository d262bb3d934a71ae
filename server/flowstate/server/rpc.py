"""The one wrapper every FlowStateService RPC goes through.

`unary(scope)` and `stream(scope)` decorate servicer methods written as
``async def Method(self, request, call: Call) -> Response`` (or an async generator of
responses). The wrapper, per call:

1. takes the correlation id from ``x-correlation-id`` request metadata (if sane) or makes one,
   and returns it in the trailing metadata;
2. refuses the call with UNAVAILABLE / SERVER_SHUTTING_DOWN (+ RetryInfo) once the server has
   begun to drain (`CallGate`), and otherwise counts it in flight until it ends, so that
   shutdown can wait for exactly the calls it accepted;
3. authenticates the bearer token (`Authenticator`, cached; more than one ``authorization``
   header is refused, not resolved by order) and checks the method's scope; takes a token of
   the tenant's bucket for the method's family (`flowstate.server.ratelimit`); when it is
   empty, waits for a reserved token (`_shape`; a drain releases the wait with
   SERVER_SHUTTING_DOWN) or, past the max wait or the call's deadline, refuses with
   RATE_LIMITED and RetryInfo; only then decodes the request body (`Encoded`, see
   `add_service`: a refused call never pays for parsing), MALFORMED_REQUEST if it does not;
4. runs the method; a `FlowStateError` becomes the rich status of `flowstate.server.errors`
   (logged at INFO; RATE_LIMITED at DEBUG, counted in the metrics instead);
   a unary call refused by its rate limit takes a cheaper path (`_rate_limited`): no
   exception, its status serialized once per tenant, family and wait (`PrebuiltStatus`), since
   a flooding tenant's refusals must not cost the other tenants much more than nothing;
   `NotImplementedError` becomes UNIMPLEMENTED (a feature the server was started without, e.g.
   streams without a watch hub); any other exception becomes INTERNAL
   carrying only the correlation id, its stack logged at ERROR with the same id;
5. counts the RPC and its latency by method and status code, and phase-change refusals;
6. counts the calling SDK and its version (``x-flowstate-client``), logging each new one once.

Nothing else in the servicer catches exceptions. Successes are logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeGuard, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf import descriptor, message_factory

from flowstate.core.commands import Context
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.server.auth import Authenticator, Principal, Scope
from flowstate.server.errors import (
    CORRELATION_ID_HEADER,
    GRPC_STATUS_BY_CODE,
    PrebuiltStatus,
    internal_error,
    to_grpc_status,
)
from flowstate.server.metrics import CLIENT_HEADER, Metrics, client_label
from flowstate.server.ratelimit import RateLimiter, family_of

__all__ = [
    "Call",
    "CallGate",
    "Encoded",
    "RpcSupport",
    "add_service",
    "new_correlation_id",
    "stream",
    "unary",
]

_log = logging.getLogger("flowstate.server.rpc")
_AUTHORIZATION: Final = "authorization"
_MAX_CORRELATION_ID: Final = 128
_MAX_PREBUILT_REFUSALS: Final = 4096


@dataclass(frozen=True, slots=True)
class Call:
    """What a servicer method knows about its call: who calls, and the correlation id."""

    principal: Principal
    correlation_id: str

    @property
    def tenant(self) -> Tenant:
        """The caller's tenant (from the token, never from the request)."""
        return self.principal.tenant

    def context(self, request_id: str = "") -> Context:
        """The core's context for a decision made now on behalf of the caller."""
        return Context(
            now=datetime.now(UTC),
            user_id=self.principal.user_id,
            request_id=request_id,
            is_admin=self.principal.is_admin,
            grants=self.principal.grants,
            claims=self.principal.claims,
        )


class CallGate:
    """Admits calls until closed and counts those in flight, so that a drain can wait for them.

    grpc.aio's own `server.stop(grace)` cancels every call that gRPC has received but not yet
    handed to the application (a burst queued behind a busy event loop), and the client sees
    CANCELLED, which no SDK retries. So the server drains here first: `close` makes every
    later call end at once with UNAVAILABLE / SERVER_SHUTTING_DOWN (retryable, RetryInfo),
    `drained` waits until the admitted calls have ended and no call has arrived for a short
    quiet spell (gRPC's queue is empty), and only then is the gRPC server stopped. Calls waiting
    for a reserved rate-limit token (`hold`) are released by `close` at once, so that a drain
    never waits out their waits.
    """

    __slots__ = ("_active", "_held", "_idle", "_last_arrival", "_open")

    def __init__(self) -> None:
        """An open gate with nothing in flight."""
        self._open = True
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_arrival = 0.0
        self._held: set[asyncio.Future[None]] = set()

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet ended."""
        return self._active

    def enter(self) -> bool:
        """Admit a call (then `leave` when it ends); False once the gate is closed."""
        self._last_arrival = time.monotonic()
        if not self._open:
            return False
        self._active += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        """A call admitted by `enter` has ended."""
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def hold(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the gate closes meanwhile; whether it is still open."""
        if not self._open:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _release, waiter)
        self._held.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._held.discard(waiter)
        return self._open

    def close(self) -> None:
        """Refuse every later call, and release the calls in `hold`."""
        self._open = False
        for waiter in self._held:
            _release(waiter)

    async def drained(self, within: float, *, quiet: float = 0.2) -> bool:
        """Wait (at most `within` s) until nothing is in flight and nothing arrived for `quiet`
        seconds; whether that happened in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self._active == 0
            try:
                async with asyncio.timeout(remaining):
                    await self._idle.wait()
            except TimeoutError:
                return False
            since = time.monotonic() - self._last_arrival
            if since >= quiet:
                return True
            await asyncio.sleep(min(quiet - since, max(deadline - loop.time(), 0)))


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class RateLimitRefusals:
    """The RATE_LIMITED statuses of refused unary calls, each serialized once per (tenant,
    family, wait) (`PrebuiltStatus`; waits are whole milliseconds, `RateLimiter.take`), at
    most `_MAX_PREBUILT_REFUSALS` of them (then they are built afresh)."""

    __slots__ = ("_limiter", "_prebuilt")

    def __init__(self, limiter: RateLimiter) -> None:
        """Refusals of `limiter`'s limits."""
        self._limiter = limiter
        self._prebuilt: dict[tuple[Tenant, str, float], PrebuiltStatus] = {}

    def status(
        self, tenant: Tenant, family: str, wait: float, *, correlation_id: str, now: datetime
    ) -> grpc.Status:
        """The status of a call of `tenant` in `family` refused `wait` s before its next token."""
        key = (tenant, family, wait)
        prebuilt = self._prebuilt.get(key)
        if prebuilt is None:
            if len(self._prebuilt) >= _MAX_PREBUILT_REFUSALS:
                self._prebuilt.clear()
            prebuilt = self._prebuilt[key] = PrebuiltStatus(self._limiter.refusal(family, wait))
        return prebuilt.status(correlation_id=correlation_id, now=now)


class RpcSupport:
    """What the wrapper needs from the server: the authenticator, the metrics, tracing, the gate,
    the per-tenant rate limiter."""

    __slots__ = ("authenticator", "gate", "limiter", "metrics", "refusals", "traced")

    def __init__(
        self,
        authenticator: Authenticator,
        metrics: Metrics,
        *,
        traced: bool = False,
        limiter: RateLimiter | None = None,
    ) -> None:
        """Hold what the wrapper uses on every call; `traced`: annotate the RPC's span;
        `limiter`: per-tenant rate limits (none: unlimited)."""
        self.authenticator = authenticator
        self.metrics = metrics
        self.traced = traced
        self.limiter = limiter
        self.refusals = None if limiter is None else RateLimitRefusals(limiter)
        self.gate = CallGate()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A request body as received, decoded by the wrapper (`_decoded`) once the call is
    admitted: a call refused for its token, scope or rate limit never pays for parsing, and a
    body that is not a valid message of its type (truncated, garbage, invalid UTF-8, nested too
    deep) is MALFORMED_REQUEST after authentication. Parsed in gRPC's deserializer instead, the
    parser's exception would reach the caller as UNKNOWN naming the parser's class."""

    message_class: Any
    data: bytes


def _lazy(message_class: Any) -> Callable[[bytes], Encoded]:
    """gRPC's request deserializer for `message_class`: keeps the bytes (`Encoded`)."""

    def deserialize(data: bytes) -> Encoded:
        return Encoded(message_class, data)

    return deserialize


def add_service(
    servicer: object, server: grpc.aio.Server, service: descriptor.ServiceDescriptor
) -> None:
    """Register `servicer`'s methods for `service` (as the generated ``add_..._to_server`` does),
    with request deserializers that keep the bytes for the wrapper to decode (see `Encoded`)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:  # pragma: no cover - the API has no client streams
            raise ValueError(f"{method.full_name}: client streaming is not supported")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lazy(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _annotate_span(attributes: dict[str, str]) -> None:
    """Add `attributes` to the current span (the RPC's, with tracing on; see `server.tracing`)."""
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


class HasRpcSupport(Protocol):
    """A servicer whose methods are wrapped: it exposes its `RpcSupport`."""

    @property
    def rpc_support(self) -> RpcSupport:
        """The authenticator and metrics."""
        ...


_Svc = TypeVar("_Svc", bound=HasRpcSupport)
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Context = grpc.aio.ServicerContext[Any, Any]


class _CorrelationIds:
    """Correlation ids for calls that sent none: a random per-process prefix and a counter.

    32 hex digits like the `uuid.uuid4().hex` they replace: 16 random ones per process (drawn
    again in a forked child) then a 16-digit counter, so unique across processes and within
    one, greppable in logs (one process shares the prefix), and ~10x cheaper than a uuid4.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = ""
        self._counter: itertools.count[int] = itertools.count(1)
        self.reseed()

    def reseed(self) -> None:
        """A new prefix and counter (at start, and in a forked child)."""
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        """A new id."""
        return f"{self._prefix}{next(self._counter):016x}"


_correlation_ids = _CorrelationIds()
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_correlation_ids.reseed)


def new_correlation_id() -> str:
    """A fresh correlation id (for a call whose client sent none)."""
    return _correlation_ids.next()


def _sane_correlation_id(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_CORRELATION_ID
        and value.isascii()
        and value.isprintable()
    )


def _begin(support: RpcSupport, context: _Context) -> tuple[str, list[str]]:
    """(correlation id, every authorization header value) from the request metadata; counts
    the client SDK (``x-flowstate-client``)."""
    correlation_id: str | None = None
    authorizations: list[str] = []
    client: str | None = None
    for key, value in context.invocation_metadata() or ():
        if key == _AUTHORIZATION:
            authorizations.append(value if isinstance(value, str) else "")
        elif key == CORRELATION_ID_HEADER and _sane_correlation_id(value):
            correlation_id = value
        elif key == CLIENT_HEADER and isinstance(value, str):
            client = value
    sdk, version = client_label(client)
    if support.metrics.observe_client(sdk, version):
        _log.info(
            "first call from client %s/%s", sdk, version, extra={"sdk": sdk, "sdk_version": version}
        )
    return correlation_id or _correlation_ids.next(), authorizations


async def _admit(support: RpcSupport, context: _Context, principal: Principal, family: str) -> None:
    """Take (or wait for) a token of the caller's tenant for `family`, else raise RATE_LIMITED
    (the streams' path: a unary call takes `_take`, `_shape` and `_rate_limited`)."""
    wait = _take(support, principal.tenant, family)
    if wait:
        wait = await _shape(support, context, principal.tenant, family)
    if wait:
        assert support.limiter is not None  # a wait comes from the limiter
        raise support.limiter.refusal(family, wait)


def _authorize(support: RpcSupport, authorizations: list[str], scope: Scope) -> Principal:
    if len(authorizations) > 1:
        # Which one counts would depend on proxies and libraries along the way: refuse.
        raise FlowStateError(
            ErrorCode.UNAUTHENTICATED,
            "send exactly one authorization header",
            retry_allowed=False,
        )
    principal = support.authenticator.authenticate(authorizations[0] if authorizations else None)
    principal.require(scope)
    return principal


def _take(support: RpcSupport, tenant: Tenant, family: str) -> float:
    """Take a token of `tenant` for `family`: 0.0, or (none there) the wait until the next one
    (then `_shape` decides)."""
    limiter = support.limiter
    if limiter is None:
        return 0.0
    wait = limiter.take(tenant, family)
    if not wait:
        support.metrics.observe_tenant(tenant, family, "admitted")
    return wait


async def _shape(support: RpcSupport, context: _Context, tenant: Tenant, family: str) -> float:
    """A call that found its bucket empty: wait for a reserved token (0.0 once it is due), or
    the RetryInfo delay of its refusal (no reservation within the max wait and its deadline).
    SERVER_SHUTTING_DOWN if the server begins to drain meanwhile."""
    limiter = support.limiter
    assert limiter is not None  # `_take` found no token
    deadline = context.time_remaining() if limiter.max_wait else None
    reserved, seconds = limiter.reserve(tenant, family, deadline)
    if not reserved:
        support.metrics.observe_tenant(tenant, family, "limited")
        return seconds
    if not seconds:  # a token came back since `_take`
        support.metrics.observe_tenant(tenant, family, "admitted")
        return 0.0
    support.metrics.observe_shaped(tenant, family, seconds)
    if not await support.gate.hold(seconds):
        raise _shutting_down()
    return 0.0


def _decoded(request: Any) -> Any:
    """The request message (`Encoded` bytes parsed; a message from the Connect path as it is)."""
    if not isinstance(request, Encoded):
        return request
    try:
        return request.message_class.FromString(request.data)
    except Exception:  # DecodeError, and whatever else the parser may raise on bad bytes
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"the request body is not a valid {request.message_class.DESCRIPTOR.full_name} message",
            field="request",
        ) from None


def _shutting_down() -> FlowStateError:
    return FlowStateError(
        ErrorCode.SERVER_SHUTTING_DOWN,
        "the server is shutting down; retry (another replica, or this one once restarted)",
        retry_allowed=True,
    )


async def _refuse(
    support: RpcSupport,
    context: _Context,
    method: str,
    error: FlowStateError,
    correlation_id: str,
    started: float,
) -> None:
    """Abort the call with the rich status of `error` (raises)."""
    if error.code is ErrorCode.INTERNAL:
        # Raised below us (e.g. the store, which logged the cause): the caller learns only the
        # correlation id, and the log ties it to what happened.
        _log.error(
            "%s failed: %s (correlation id %s)",
            method,
            error.message,
            correlation_id,
            extra={
                "correlation_id": correlation_id,
                "rpc_method": method,
                "details": error.details,
            },
        )
        error = internal_error(correlation_id)
    code = GRPC_STATUS_BY_CODE[error.code]
    if support.traced:
        _annotate_span({"flowstate.error_code": error.code.value})
    support.metrics.observe_rpc(method, code.name, time.perf_counter() - started)
    support.metrics.record_refusal(error)
    # A flood of rate-limited calls must not become a flood of log lines (the refusals are
    # counted in flowstate_tenant_requests_total): those log at DEBUG, every other at INFO.
    level = logging.DEBUG if error.code is ErrorCode.RATE_LIMITED else logging.INFO
    if _log.isEnabledFor(level):
        _log.log(
            level,
            "%s refused: %s %s",
            method,
            error.code.value,
            error.message,
            extra={
                "correlation_id": correlation_id,
                "rpc_method": method,
                "grpc_code": code.name,
                "error_code": error.code.value,
            },
        )
    status = to_grpc_status(error, correlation_id=correlation_id, now=datetime.now(UTC))
    await context.abort_with_status(status)


async def _rate_limited(
    support: RpcSupport,
    context: _Context,
    method: str,
    tenant: Tenant,
    family: str,
    wait: float,
    correlation_id: str,
    started: float,
) -> None:
    """Abort a unary call refused by its tenant's rate limit (raises): `_refuse`'s outcome for
    RATE_LIMITED (the same status, metrics and DEBUG log), at a fraction of its cost."""
    assert support.refusals is not None  # a wait comes from the limiter
    if support.traced:
        _annotate_span({"flowstate.error_code": ErrorCode.RATE_LIMITED.value})
    support.metrics.observe_rpc(method, "RESOURCE_EXHAUSTED", time.perf_counter() - started)
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "%s refused: RATE_LIMITED (%s, retry in %.3fs)",
            method,
            family,
            wait,
            extra={
                "correlation_id": correlation_id,
                "rpc_method": method,
                "grpc_code": "RESOURCE_EXHAUSTED",
                "error_code": ErrorCode.RATE_LIMITED.value,
            },
        )
    status = support.refusals.status(
        tenant, family, wait, correlation_id=correlation_id, now=datetime.now(UTC)
    )
    await context.abort_with_status(status)


async def _unimplemented(
    support: RpcSupport,
    context: _Context,
    method: str,
    exc: NotImplementedError,
    correlation_id: str,
    started: float,
) -> None:
    """Abort with UNIMPLEMENTED (a feature this server was started without); raises."""
    support.metrics.observe_rpc(method, "UNIMPLEMENTED", time.perf_counter() - started)
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        str(exc) or f"{method} is not implemented",
        ((CORRELATION_ID_HEADER, correlation_id),),
    )


async def _crash(
    support: RpcSupport, context: _Context, method: str, correlation_id: str, started: float
) -> None:
    """Log the exception being handled with the correlation id; abort with INTERNAL (raises)."""
    support.metrics.observe_rpc(
        method, grpc.StatusCode.INTERNAL.name, time.perf_counter() - started
    )
    _log.exception(
        "%s failed (correlation id %s)",
        method,
        correlation_id,
        extra={"correlation_id": correlation_id, "rpc_method": method, "grpc_code": "INTERNAL"},
    )
    error = internal_error(correlation_id)
    status = to_grpc_status(error, correlation_id=correlation_id, now=datetime.now(UTC))
    await context.abort_with_status(status)


def _finish(support: RpcSupport, method: str, correlation_id: str, started: float) -> None:
    elapsed = time.perf_counter() - started
    support.metrics.observe_rpc(method, "OK", elapsed)
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "%s ok",
            method,
            extra={
                "correlation_id": correlation_id,
                "rpc_method": method,
                "grpc_code": "OK",
                "duration_ms": round(elapsed * 1000, 3),
            },
        )


def unary(
    scope: Scope,
) -> Callable[
    [Callable[[_Svc, _Req, Call], Awaitable[_Resp]]],
    Callable[[_Svc, _Req, _Context], Coroutine[Any, Any, _Resp]],
]:
    """Wrap a unary servicer method that needs `scope`."""

    def decorate(
        func: Callable[[_Svc, _Req, Call], Awaitable[_Resp]],
    ) -> Callable[[_Svc, _Req, _Context], Coroutine[Any, Any, _Resp]]:
        method = func.__name__
        family = family_of(scope, streaming=False)

        @functools.wraps(func)
        async def handler(self: _Svc, request: _Req, context: _Context) -> _Resp:
            started = time.perf_counter()
            support = self.rpc_support
            correlation_id, authorizations = _begin(support, context)
            context.set_trailing_metadata(((CORRELATION_ID_HEADER, correlation_id),))
            if support.traced:
                _annotate_span({"flowstate.correlation_id": correlation_id})
            if not support.gate.enter():
                await _refuse(support, context, method, _shutting_down(), correlation_id, started)
            try:
                principal = _authorize(support, authorizations, scope)
                wait = _take(support, principal.tenant, family)
                if wait:
                    wait = await _shape(support, context, principal.tenant, family)
                if wait:
                    response = None
                else:
                    response = await func(self, _decoded(request), Call(principal, correlation_id))
            except FlowStateError as error:
                await _refuse(support, context, method, error, correlation_id, started)
                raise  # not reached: abort raises
            except NotImplementedError as exc:
                await _unimplemented(support, context, method, exc, correlation_id, started)
                raise  # not reached: abort raises
            except Exception:
                await _crash(support, context, method, correlation_id, started)
                raise  # not reached: abort raises
            finally:
                support.gate.leave()
            if wait:  # outside the try: the abort's exception is not the method's
                await _rate_limited(
                    support,
                    context,
                    method,
                    principal.tenant,
                    family,
                    wait,
                    correlation_id,
                    started,
                )
            _finish(support, method, correlation_id, started)
            return cast(_Resp, response)

        return handler

    return decorate


def stream(
    scope: Scope,
) -> Callable[
    [Callable[[_Svc, _Req, Call], AsyncIterator[_Resp]]],
    Callable[[_Svc, _Req, _Context], AsyncIterator[_Resp]],
]:
    """Wrap a server-streaming servicer method (an async generator) that needs `scope`.

    The method's stream is counted in the ``flowstate_open_streams`` gauge while it is open.
    """

    def decorate(
        func: Callable[[_Svc, _Req, Call], AsyncIterator[_Resp]],
    ) -> Callable[[_Svc, _Req, _Context], AsyncIterator[_Resp]]:
        method = func.__name__
        family = family_of(scope, streaming=True)

        @functools.wraps(func)
        async def handler(self: _Svc, request: _Req, context: _Context) -> AsyncIterator[_Resp]:
            started = time.perf_counter()
            support = self.rpc_support
            correlation_id, authorizations = _begin(support, context)
            context.set_trailing_metadata(((CORRELATION_ID_HEADER, correlation_id),))
            if support.traced:
                _annotate_span({"flowstate.correlation_id": correlation_id})
            if not support.gate.enter():
                await _refuse(support, context, method, _shutting_down(), correlation_id, started)
            gauge = support.metrics.open_stream_gauge(method)
            gauge.inc()
            try:
                principal = _authorize(support, authorizations, scope)
                await _admit(support, context, principal, family)
                async for response in func(
                    self, _decoded(request), Call(principal, correlation_id)
                ):
                    yield response
            except FlowStateError as error:
                await _refuse(support, context, method, error, correlation_id, started)
            except NotImplementedError as exc:
                await _unimplemented(support, context, method, exc, correlation_id, started)
            except Exception:
                await _crash(support, context, method, correlation_id, started)
            finally:
                gauge.dec()
                support.gate.leave()
            _finish(support, method, correlation_id, started)

        return handler

    return decorate
