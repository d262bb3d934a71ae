"""The error fixtures of the SDK fakes, recorded from a real server (docs/testing.md, "Error
fixtures: recorded from the real server").

The TypeScript and Go SDK tests run against in-process fake servers that answer with errors
instead of a real server's: to keep those errors from drifting away from the real ones, the
fakes do not build them; they replay the files of `FIXTURES_DIR`, which `record` obtains from
a real server over the wire:

- the refusals from real requests (an invalid transition, a stale expected version, a
  missing flow, a bad token, ...), on an in-process server over the session's database;
- ``rate_limited`` from a server whose write limit is 1/s (burst 1), two writes in a row;
- ``server_shutting_down`` from a WatchFlow stream open while its server drains;
- ``temporary_resource_unavailable`` from a server whose database connection is cut (a proxy
  in front of the embedded PostgreSQL, `support.proxied_server`);
- ``subscriber_too_slow`` from the server's own encoder (`flowstate.server.errors.
  to_grpc_status`): the code is in the error table, but the watch hub never sends it
  (docs/streams.md), so there is no request that provokes it;
- ``unknown_reason``, derived from ``invalid_phase_transition`` by giving its ErrorInfo and
  FlowError a code no SDK knows: what a newer server's new refusal looks like to an old SDK.

Each file holds the exact ``grpc-status``, ``grpc-message`` and ``grpc-status-details-bin``
(base64) of one error, the ``x-correlation-id`` trailer, and the details decoded (for readers
and for the drift check). Volatile values are normalised, the same way when recording and
when checking: the correlation id is the one the recorder sends (``x-correlation-id``, which
the server adopts), flow ids become `PLACEHOLDER_FLOW_ID` numbered in creation order,
`FlowError.timestamp` becomes `FIXED_TIME`, and a rate limit's wait becomes 1 s (what a limit
of 1/s says to the very next call). ``tests/server/test_error_fixtures.py`` records again and
fails when a file differs; ``make record-error-fixtures`` rewrites them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import grpc
import grpc.aio
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.server.errors import to_grpc_status
from flowstate.server.ratelimit import parse_limits
from flowstate.testing import RunningServer, serve_in_process
from flowstate.v1 import errors_pb2, flow_service_pb2_grpc, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, proxied_server

__all__ = [
    "CORRELATION_ID",
    "FIXED_TIME",
    "FIXTURES_DIR",
    "Recorded",
    "fixture_document",
    "load_fixtures",
    "record",
    "write_fixtures",
]

FIXTURES_DIR: Final = Path(__file__).resolve().parents[1] / "fixtures" / "errors"
"""Where the fixtures live: one ``NAME.json`` per error."""
CORRELATION_ID: Final = "fixture-correlation-id"
"""The ``x-correlation-id`` every recorded call sends (the server adopts it)."""
FIXED_TIME: Final = "2026-01-01T00:00:00Z"
"""`FlowError.timestamp` of every fixture."""
PLACEHOLDER_FLOW_ID: Final = "00000000-0000-4000-8000-{:012d}"
"""The n-th flow the recording created (n from 1) in every text of a fixture."""
MISSING_FLOW_ID: Final = "0f3c9a5e-7b2d-4c1e-9a8f-6d5b4c3a2e10"
"""A flow id no recording creates (FLOW_NOT_FOUND)."""
TENANT: Final = Tenant("fixtures", "errors")
"""The tenant of every recorded call (its name appears in no refusal)."""
UNKNOWN_REASON: Final = "SOME_FUTURE_REFUSAL"
"""The code of ``unknown_reason``: no SDK knows it."""
UNKNOWN_ERROR_CODE_NUMBER: Final = 9999
"""The FlowError.error_code number of ``unknown_reason``: no enum value of today."""
RATE_LIMIT_WAIT: Final = 1.0
"""A rate limit's wait in the fixtures (volatile when recorded: 1 s minus the time between
the two calls)."""

Source = Literal["wire", "encoder", "derived"]
_S = states_pb2


@dataclass(frozen=True)
class Recorded:
    """One error as the client received it, before normalisation."""

    name: str
    how: str
    rpc: str
    source: Source
    code: grpc.StatusCode
    message: str
    details_bin: bytes
    trailers: dict[str, str]


def _with_correlation_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("x-correlation-id", CORRELATION_ID)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryCorrelationId(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds ``x-correlation-id: CORRELATION_ID`` to every unary call."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """Send the correlation id."""
        return await continuation(_with_correlation_id(client_call_details), request)


class _StreamCorrelationId(grpc.aio.UnaryStreamClientInterceptor):
    """The same for server-streaming calls (a channel files an interceptor under one kind
    only, so each kind needs an object of its own)."""

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """Send the correlation id."""
        return await continuation(_with_correlation_id(client_call_details), request)


def _interceptors() -> list[Any]:
    return [_UnaryCorrelationId(), _StreamCorrelationId()]


class _Recorder:
    """Makes calls that must fail and keeps what came back, with the flows it created."""

    def __init__(self) -> None:
        self.recorded: dict[str, Recorded] = {}
        self.flow_ids: list[str] = []

    async def expect(
        self, name: str, how: str, rpc: str, call: Callable[[], Awaitable[Any]]
    ) -> None:
        """Await `call`, which must fail over the wire; record its status and trailers."""
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            self.keep(name, how, rpc, error)
            return
        raise AssertionError(f"{name}: {rpc} succeeded, but the recording needs it to fail")

    def keep(self, name: str, how: str, rpc: str, error: grpc.aio.AioRpcError) -> None:
        """Record a failed call."""
        trailing = dict(error.trailing_metadata() or ())
        details_bin = trailing.pop("grpc-status-details-bin", b"")
        assert isinstance(details_bin, bytes), f"{name}: no grpc-status-details-bin"
        texts = {k: v for k, v in trailing.items() if isinstance(v, str)}
        self.recorded[name] = Recorded(
            name, how, rpc, "wire", error.code(), error.details() or "", details_bin, texts
        )

    async def create(self, api: Api) -> str:
        """A new discovery flow; its id (remembered for the normalisation)."""
        flow_id = (await api.create()).flow_id
        self.flow_ids.append(flow_id)
        return flow_id


@contextlib.asynccontextmanager
async def _api(server: RunningServer) -> AsyncIterator[Api]:
    """The fixtures tenant's API on `server`, every call sending `CORRELATION_ID`."""
    async with grpc.aio.insecure_channel(server.address, interceptors=_interceptors()) as ch:
        yield Api(flow_service_pb2_grpc.FlowStateServiceStub(ch), server.mint, TENANT)


async def _refusals(recorder: _Recorder, api: Api) -> None:
    """The refusals every SDK decodes, each from the request that provokes it."""
    fid = await recorder.create(api)
    await recorder.expect(
        "invalid_phase_transition",
        "TransitionPhase data_import NOT_STARTED -> COMPLETED on a new discovery flow",
        "TransitionPhase",
        lambda: api.move(fid, "data_import", _S.PHASE_STATE_COMPLETED),
    )
    await recorder.expect(
        "phase_order_violation",
        "TransitionPhase field_mapping -> IN_PROGRESS before data_import completed",
        "TransitionPhase",
        lambda: api.move(fid, "field_mapping", _S.PHASE_STATE_IN_PROGRESS),
    )
    await recorder.expect(
        "invalid_phase",
        "TransitionPhase of a phase the definition does not have",
        "TransitionPhase",
        lambda: api.move(fid, "no_such_phase", _S.PHASE_STATE_IN_PROGRESS),
    )
    stale = (await api.get(fid)).version
    await api.move(fid, "data_import", _S.PHASE_STATE_IN_PROGRESS)
    await recorder.expect(
        "version_conflict",
        "TransitionPhase with the expected_version the flow had before the last change",
        "TransitionPhase",
        lambda: api.move(fid, "data_import", _S.PHASE_STATE_COMPLETED, expected_version=stale),
    )
    for _ in range(3):
        await api.move(fid, "data_import", _S.PHASE_STATE_RETRY_NEEDED)
        await api.retry(fid, "data_import")
    await api.move(fid, "data_import", _S.PHASE_STATE_RETRY_NEEDED)
    await recorder.expect(
        "max_retries_exceeded",
        "Retry of data_import after its three retries",
        "Retry",
        lambda: api.retry(fid, "data_import"),
    )
    await recorder.expect(
        "flow_not_found",
        "GetFlow of a flow id that does not exist",
        "GetFlow",
        lambda: api.get(MISSING_FLOW_ID),
    )
    await recorder.expect(
        "malformed_request",
        "GetFlow with flow_id 'not-a-uuid'",
        "GetFlow",
        lambda: api.get("not-a-uuid"),
    )
    await recorder.expect(
        "unauthenticated",
        "GetFlow without a token",
        "GetFlow",
        lambda: api.stub.GetFlow(pb.GetFlowRequest(flow_id=MISSING_FLOW_ID)),
    )
    await recorder.expect(
        "permission_denied",
        "CreateFlow with a flows:read token",
        "CreateFlow",
        lambda: api.as_(scopes=["flows:read"]).create(),
    )


async def _rate_limited(recorder: _Recorder, database_url: str) -> None:
    limits = parse_limits("write=1:1")
    # No waiting for a token (max wait 0): the second write is refused, however slowly it comes.
    async with (
        serve_in_process(database_url, rate_limits=limits, rate_limit_max_wait=0) as server,
        _api(server) as api,
    ):
        fid = await recorder.create(api)  # takes the one token
        await recorder.expect(
            "rate_limited",
            "TransitionPhase right after CreateFlow, write limit 1/s burst 1",
            "TransitionPhase",
            lambda: api.move(fid, "data_import", _S.PHASE_STATE_IN_PROGRESS),
        )


async def _server_shutting_down(recorder: _Recorder, database_url: str) -> None:
    async with serve_in_process(database_url) as server, _api(server) as api:
        fid = await recorder.create(api)
        stream = api.stub.WatchFlow(pb.WatchFlowRequest(flow_id=fid), metadata=api.metadata)
        await stream.read()  # the snapshot: the stream is open
        stopping = asyncio.create_task(server.server.stop())
        try:
            await recorder.expect(
                "server_shutting_down",
                "WatchFlow open while its server drains (stop)",
                "WatchFlow",
                stream.read,
            )
        finally:
            await stopping


async def _temporary_resource_unavailable(recorder: _Recorder, database_url: str) -> None:
    async with proxied_server(database_url, TENANT, interceptors=_interceptors()) as (
        api,
        cut,
    ):
        fid = await recorder.create(api)
        cut()
        await recorder.expect(
            "temporary_resource_unavailable",
            "GetFlow once the server's database connections are cut",
            "GetFlow",
            lambda: api.get(fid),
        )


def _encoded(name: str, how: str, rpc: str, error: FlowStateError) -> Recorded:
    """An error as the server's encoder builds it (for codes no request provokes)."""
    status = to_grpc_status(error, correlation_id=CORRELATION_ID, now=datetime.now(UTC))
    trailing = dict(status.trailing_metadata)
    details_bin = trailing.pop("grpc-status-details-bin")
    assert isinstance(details_bin, bytes)
    texts = {k: v for k, v in trailing.items() if isinstance(v, str)}
    return Recorded(name, how, rpc, "encoder", status.code, status.details, details_bin, texts)


def _with_unknown_reason(base: Recorded) -> Recorded:
    """`base` with a reason and error code no SDK knows (everything else as recorded)."""
    status = status_pb2.Status.FromString(base.details_bin)
    for packed in status.details:
        if packed.TypeName() == "google.rpc.ErrorInfo":
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            info.reason = UNKNOWN_REASON
            packed.Pack(info)
        elif packed.TypeName() == "flowstate.v1.FlowError":
            flow_error = errors_pb2.FlowError()
            packed.Unpack(flow_error)
            flow_error.error_code = UNKNOWN_ERROR_CODE_NUMBER  # type: ignore[assignment]
            packed.Pack(flow_error)
    return Recorded(
        "unknown_reason",
        f"invalid_phase_transition with ErrorInfo.reason {UNKNOWN_REASON} and FlowError"
        f".error_code {UNKNOWN_ERROR_CODE_NUMBER}: a refusal added after the SDK was built",
        base.rpc,
        "derived",
        base.code,
        base.message,
        status.SerializeToString(deterministic=True),
        base.trailers,
    )


async def record(database_url: str, server: RunningServer) -> dict[str, dict[str, Any]]:
    """Record every error (module docstring) and return the normalised fixture documents.

    `server` is a running server over `database_url` for the refusals; the rate limit, the
    drain and the cut database get servers of their own. ``temporary_resource_unavailable``
    needs the embedded PostgreSQL (a proxy in front of its socket) and is left out otherwise.
    """
    recorder = _Recorder()
    async with _api(server) as api:
        await _refusals(recorder, api)
    await _rate_limited(recorder, database_url)
    await _server_shutting_down(recorder, database_url)
    # An external PostgreSQL has no socket to cut: left out (the caller says what is missing).
    with contextlib.suppress(pytest.skip.Exception):
        await _temporary_resource_unavailable(recorder, database_url)
    recorder.recorded["subscriber_too_slow"] = _encoded(
        "subscriber_too_slow",
        "the server's encoder (the watch hub never sends it; docs/streams.md)",
        "WatchFlow",
        FlowStateError(ErrorCode.SUBSCRIBER_TOO_SLOW, "subscriber too slow"),
    )
    recorder.recorded["unknown_reason"] = _with_unknown_reason(
        recorder.recorded["invalid_phase_transition"]
    )
    return {
        name: fixture_document(recorded, recorder.flow_ids)
        for name, recorded in sorted(recorder.recorded.items())
    }


# --- normalisation --------------------------------------------------------------------------

_DETAIL_TYPES: Final[dict[str, Any]] = {
    "google.rpc.ErrorInfo": error_details_pb2.ErrorInfo,
    "google.rpc.RetryInfo": error_details_pb2.RetryInfo,
    "google.rpc.BadRequest": error_details_pb2.BadRequest,
    "flowstate.v1.FlowError": errors_pb2.FlowError,
}
_RETRY_IN: Final = re.compile(r"retry in \d+\.\d{3}s")


def _scrub(value: Any, flow_ids: list[str]) -> Any:
    """`value` (decoded JSON) with flow ids replaced and rate-limit waits fixed."""
    if isinstance(value, str):
        for n, flow_id in enumerate(flow_ids, start=1):
            value = value.replace(flow_id, PLACEHOLDER_FLOW_ID.format(n))
        return _RETRY_IN.sub(f"retry in {RATE_LIMIT_WAIT:.3f}s", value)
    if isinstance(value, list):
        return [_scrub(item, flow_ids) for item in value]
    if isinstance(value, dict):
        scrubbed = {key: _scrub(item, flow_ids) for key, item in value.items()}
        if "retry_after_seconds" in scrubbed:  # ErrorInfo.metadata (text), FlowError.details
            wait = scrubbed["retry_after_seconds"]
            scrubbed["retry_after_seconds"] = (
                json.dumps(RATE_LIMIT_WAIT) if isinstance(wait, str) else RATE_LIMIT_WAIT
            )
        return scrubbed
    return value


def _normalised_status(recorded: Recorded, flow_ids: list[str]) -> status_pb2.Status:
    status = status_pb2.Status.FromString(recorded.details_bin)
    decoded = json_format.MessageToDict(status, preserving_proto_field_name=True)
    rate_limited = any(
        d.get("@type") == "type.googleapis.com/google.rpc.ErrorInfo"
        and d.get("reason") == "RATE_LIMITED"
        for d in decoded.get("details", [])
    )
    for detail in decoded.get("details", []):
        if detail.get("@type") == "type.googleapis.com/flowstate.v1.FlowError":
            detail["timestamp"] = FIXED_TIME
        if rate_limited and detail.get("@type") == "type.googleapis.com/google.rpc.RetryInfo":
            detail["retry_delay"] = f"{RATE_LIMIT_WAIT:g}s"
    normalised = status_pb2.Status()
    json_format.ParseDict(_scrub(decoded, flow_ids), normalised)
    for packed in normalised.details:  # ParseDict packs maps in no fixed order
        message = _DETAIL_TYPES[packed.TypeName()]()
        packed.Unpack(message)
        packed.Pack(message, deterministic=True)
    return normalised


def fixture_document(recorded: Recorded, flow_ids: list[str]) -> dict[str, Any]:
    """The normalised JSON document of one recorded error (what the fixture file holds)."""
    status = _normalised_status(recorded, flow_ids)
    message = _scrub(recorded.message, flow_ids)
    assert status.code == recorded.code.value[0], recorded.name
    assert status.message == message, f"{recorded.name}: grpc-message differs from Status"
    return {
        "name": recorded.name,
        "how": recorded.how,
        "rpc": recorded.rpc,
        "source": recorded.source,
        "grpc-status": recorded.code.value[0],
        "grpc-status-name": recorded.code.name,
        "grpc-message": message,
        "grpc-status-details-bin": base64.b64encode(
            status.SerializeToString(deterministic=True)
        ).decode(),
        "trailers": dict(sorted(_scrub(recorded.trailers, flow_ids).items())),
        "decoded": json.loads(
            json.dumps(
                json_format.MessageToDict(status, preserving_proto_field_name=True),
                sort_keys=True,
            )
        ),
    }


def _serialised(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def load_fixtures(directory: Path = FIXTURES_DIR) -> dict[str, dict[str, Any]]:
    """The checked-in fixture documents by name."""
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.json"))
    }


def write_fixtures(documents: dict[str, dict[str, Any]], directory: Path = FIXTURES_DIR) -> None:
    """Replace the fixture files with `documents` (stale files removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.json"):
        if path.stem not in documents:
            path.unlink()
    for name, document in documents.items():
        (directory / f"{name}.json").write_text(_serialised(document), encoding="utf-8")
