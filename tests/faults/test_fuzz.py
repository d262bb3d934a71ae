"""A protobuf fuzzer against the real server: arbitrary request messages (built from the API's
descriptors by Hypothesis) and arbitrary bytes, for every RPC.

Guarantee: every call ends with a deliberate status (OK or a refusal: INVALID_ARGUMENT,
NOT_FOUND, FAILED_PRECONDITION, ABORTED, PERMISSION_DENIED), never UNKNOWN or INTERNAL, and
the server keeps serving. Bounded and seeded: a fixed number of examples per RPC, drawn
derandomized (the same ones every run), sent to an in-process server over a real channel.
Streams get their first response (or refusal) and are then cancelled.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor, message_factory, struct_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from flowstate.core.model import Tenant
from flowstate.storage import FlowStore
from flowstate.testing import serve_in_process
from flowstate.v1 import flow_service_pb2 as pb

from .support import running_flows, stub_for

EXAMPLES_PER_RPC = 12
RAW_EXAMPLES_PER_RPC = 3
SERVICE = pb.DESCRIPTOR.services_by_name["FlowStateService"]
PHASES = ["data_import", "field_mapping", "data_cleansing", "asset_inventory"]
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
}
F = descriptor.FieldDescriptor
_INTS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _json() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.floats() | st.text(max_size=20)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    )


def _struct() -> st.SearchStrategy[struct_pb2.Struct]:
    def build(data: dict[str, Any]) -> struct_pb2.Struct:
        message = struct_pb2.Struct()
        message.update(data)
        return message

    return st.builds(build, st.dictionaries(st.text(max_size=8), _json(), max_size=4))


def _string(name: str, flow_ids: list[str]) -> st.SearchStrategy[str]:
    text = st.text(max_size=40) | st.just("x" * 5000) | st.just("C:\\u0000dir") | st.just("a\0b")
    if name.endswith("flow_id"):
        return st.sampled_from([*flow_ids, str(uuid.uuid4()), "", "not-a-uuid"]) | text
    if name.endswith("phase"):
        return st.sampled_from(PHASES) | text
    if name == "request_id":
        return st.builds(lambda: f"fuzz-{uuid.uuid4().hex}") | text
    return text


def _scalar(field: descriptor.FieldDescriptor, flow_ids: list[str]) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_STRING:
        return _string(field.name, flow_ids)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=20)
    if field.type == F.TYPE_DOUBLE:
        return st.floats() | st.sampled_from([0.0, 0.5, 1.0, -1.0, math.nan, math.inf])
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == F.TYPE_ENUM:
        assert field.enum_type is not None
        top = max(v.number for v in field.enum_type.values)
        return st.integers(-3, top + 3)
    low, high = _INTS[field.type]
    return st.integers(low, high) | st.integers(-3, 12).filter(lambda n: low <= n <= high)


def _message(
    message_type: descriptor.Descriptor, flow_ids: list[str], depth: int = 0
) -> st.SearchStrategy[Any]:
    if message_type.full_name == "google.protobuf.Struct":
        return _struct()
    cls = message_factory.GetMessageClass(message_type)
    if depth > 3:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in message_type.fields:
        entry = field.message_type
        if field.type == F.TYPE_MESSAGE and entry is not None and entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            optional[field.name] = st.dictionaries(
                _scalar(key, flow_ids), _field_value(value, flow_ids, depth + 1), max_size=3
            )
        elif field.is_repeated:
            optional[field.name] = st.lists(_field_value(field, flow_ids, depth + 1), max_size=3)
        else:
            optional[field.name] = _field_value(field, flow_ids, depth + 1)
    return st.builds(lambda kwargs: cls(**kwargs), st.fixed_dictionaries({}, optional=optional))


def _field_value(
    field: descriptor.FieldDescriptor, flow_ids: list[str], depth: int
) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_MESSAGE:
        assert field.message_type is not None
        return _message(field.message_type, flow_ids, depth)
    return _scalar(field, flow_ids)


def _draw(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of `strategy`, the same ones every run (derandomized)."""
    drawn: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


async def _call(
    channel: grpc.aio.Channel,
    method: descriptor.MethodDescriptor,
    body: bytes,
    metadata: tuple[tuple[str, str], ...],
) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream: Any = channel.unary_stream(path)  # raw bytes: no serializer
            call = stream(body, metadata=metadata, timeout=10)
            try:
                await call.read()
            finally:
                call.cancel()
            return grpc.StatusCode.OK
        unary: Any = channel.unary_unary(path)
        await unary(body, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_fuzzed_requests_never_get_unknown_or_internal(
    database_url: str, store: FlowStore, tenant: Tenant
) -> None:
    # Rate limits off: hundreds of calls a second per RPC would otherwise be refused as
    # RATE_LIMITED (deliberate, but it would stop the fuzzing from reaching the handlers).
    async with (
        serve_in_process(database_url, store=store, rate_limits=None) as server,
        server.channel() as channel,
    ):
        metadata = server.mint.metadata(tenant, scopes=["flows:admin"])
        flow_ids = await running_flows(stub_for(channel), metadata, 2)
        outcomes: dict[str, set[grpc.StatusCode]] = {}
        for method in SERVICE.methods:
            messages = await asyncio.to_thread(
                _draw, _message(method.input_type, flow_ids), EXAMPLES_PER_RPC
            )
            bodies = [m.SerializeToString() for m in messages]
            bodies += await asyncio.to_thread(
                _draw, st.binary(min_size=1, max_size=64), RAW_EXAMPLES_PER_RPC
            )
            for body in bodies:
                code = await _call(channel, method, body, metadata)
                outcomes.setdefault(method.name, set()).add(code)
                assert code in DELIBERATE, (method.name, code, body[:200])
        # Still serving, and the fuzzing reached past validation somewhere.
        assert await _call(
            channel, SERVICE.methods_by_name["GetFlowDefinition"], b"", metadata
        ) == (grpc.StatusCode.OK)
        assert sum(grpc.StatusCode.OK in codes for codes in outcomes.values()) >= 5, outcomes
