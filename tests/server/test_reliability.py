"""Hostile and careless requests: undecodable bytes, taken flow ids, huge error lists, escaped
NULs, ambiguous credentials, oversized pages. Each is refused clearly (or accepted verbatim),
changes nothing, and the server keeps serving. Against the session's real server.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer
from flowstate.v1 import errors_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, S, decode_failure, failure, refused, struct

_SERVICE = "/flowstate.v1.FlowStateService/"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_struct(depth: int) -> bytes:
    """A google.protobuf.Struct nested `depth` levels deep ({"k": {"k": ...}})."""
    struct_bytes = b""
    for _ in range(depth):
        value = _field(5, struct_bytes)  # Value.struct_value
        entry = _field(1, b"k") + _field(2, value)  # the map entry: key, value
        struct_bytes = _field(1, entry)  # Struct.fields
    return struct_bytes


def _undecodable_requests() -> dict[str, tuple[str, bytes]]:
    create = pb.CreateFlowRequest(request_id="r-1", display_name="x").SerializeToString()
    return {
        "invalid-utf8": ("CreateFlow", _field(1, b"r-\xff\xfe")),
        "truncated": ("CreateFlow", create[:-1]),
        "garbage": ("CreateFlow", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        "struct-500-deep": (
            "UpdatePhaseProgress",
            _field(1, str(uuid.uuid4()).encode())
            + _field(2, b"data_import")
            + _field(5, _deep_struct(500))
            + _field(6, b"r-2"),
        ),
    }


_UNDECODABLE = _undecodable_requests()


@pytest.mark.parametrize("case", list(_UNDECODABLE), ids=list(_UNDECODABLE))
async def test_an_undecodable_request_is_malformed_and_changes_nothing(
    server: RunningServer, api: Api, case: str
) -> None:
    method, body = _UNDECODABLE[case]
    async with server.channel() as channel:
        raw: Any = channel.unary_unary(_SERVICE + method)
        found = await refused(raw(body, metadata=api.metadata, timeout=10))
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.reason == "MALFORMED_REQUEST"
    assert found.bad_request is not None
    assert found.violated_fields == {"request"}
    for internal in ("DecodeError", "Error parsing", "Traceback", "google.protobuf", "Exception"):
        assert internal not in found.message
    # Nothing was written and the server still serves.
    listed = await api.stub.ListFlows(pb.ListFlowsRequest(), metadata=api.metadata)
    assert list(listed.flows) == []
    await api.create()


async def test_an_undecodable_request_without_credentials_is_unauthenticated(
    server: RunningServer,
) -> None:
    async with server.channel() as channel:
        raw: Any = channel.unary_unary(_SERVICE + "CreateFlow")
        found = await refused(raw(b"\xff\xff\xff", timeout=10))
    assert found.code == grpc.StatusCode.UNAUTHENTICATED


async def test_an_existing_flow_id_is_refused_the_same_way_in_any_tenant(api: Api) -> None:
    flow_id = str(uuid.uuid4())
    created = await api.create(flow_id=flow_id)
    assert created.flow_id == flow_id
    same_tenant = await refused(api.create(flow_id=flow_id))
    other = api.as_(tenant=Tenant(f"account-{uuid.uuid4().hex[:8]}", "engagement"))
    other_tenant = await refused(other.create(flow_id=flow_id))
    for found in (same_tenant, other_tenant):
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT
        assert found.reason == "MALFORMED_REQUEST"
        assert found.violated_fields == {"flow_id"}
    # Identical refusals: nothing tells the other tenant whose id it is, or anything about it.
    assert same_tenant.message == other_tenant.message
    assert same_tenant.bad_request == other_tenant.bad_request
    assert same_tenant.error_info is not None
    assert other_tenant.error_info is not None
    meta_same = {k: v for k, v in same_tenant.error_info.metadata.items() if k != "correlation_id"}
    meta_other = {
        k: v for k, v in other_tenant.error_info.metadata.items() if k != "correlation_id"
    }
    assert meta_same == meta_other
    # The original flow is untouched, and the other tenant got nothing.
    assert (await api.get(flow_id)).version == 1
    listed = await other.stub.ListFlows(pb.ListFlowsRequest(), metadata=other.metadata)
    assert list(listed.flows) == []


def _trailing_size(error: grpc.aio.AioRpcError) -> int:
    """Bytes of the trailing metadata on the wire (binary values base64-encoded) + message."""
    size = len((error.details() or "").encode())
    for key, value in error.trailing_metadata() or ():
        encoded = base64.b64encode(value) if isinstance(value, bytes) else value.encode()
        size += len(key) + len(encoded) + 32  # HPACK's per-entry overhead
    return size


@pytest.mark.parametrize("filters", [33, 40, 1000], ids=lambda n: f"{n}-bad-filters")
async def test_error_details_stay_small_whatever_the_input(api: Api, filters: int) -> None:
    request = pb.ListFlowsRequest(
        phase_states=[pb.PhaseStateFilter(phase="", states=[]) for _ in range(filters)]
    )
    try:
        await api.stub.ListFlows(request, metadata=api.metadata)
    except grpc.aio.AioRpcError as error:
        raw = error
    else:
        raise AssertionError("the call succeeded")
    found = decode_failure(raw)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.reason == "MALFORMED_REQUEST"
    assert _trailing_size(raw) < 6 * 1024
    assert found.bad_request is not None
    assert found.error_info is not None
    listed = len(found.bad_request.field_violations)
    assert 0 < listed <= 20
    # The count limit, each filter's empty phase and empty states, and every repeat of "".
    total = 1 + 2 * filters + (filters - 1)
    assert found.error_info.metadata["field_violations_omitted"] == str(total - listed)
    assert "field_violations" not in found.error_info.metadata
    assert found.flow_error is not None
    assert "field_violations" not in found.flow_error.details.fields
    assert found.flow_error.details["field_violations_omitted"] == total - listed
    assert f"and {total - 1} more" in found.message


async def test_escaped_nul_text_round_trips_and_a_real_nul_is_refused(api: Api) -> None:
    escaped = "C:\\u0000dir"  # six ordinary characters after "C:", no NUL
    flow = await api.create()
    await api.move(flow.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    moved = await api.move(
        flow.flow_id,
        "data_import",
        S.PHASE_STATE_FAILED,
        reason=escaped,
        metadata=struct(k=escaped, **{escaped: "key"}),
        failure=errors_pb2.PhaseFailure(
            error_code=failure().error_code, message=escaped, details=struct(path=escaped)
        ),
    )
    entry = moved.history_entries[-1]
    assert entry.reason == escaped
    assert entry.metadata["k"] == escaped
    assert entry.metadata[escaped] == "key"
    assert entry.error_context.details["path"] == escaped
    history = await api.history(flow.flow_id)
    assert history[-1].metadata["k"] == escaped
    assert history[-1].error_context.details["path"] == escaped

    found = await refused(
        api.move(flow.flow_id, "data_import", S.PHASE_STATE_RETRY_NEEDED, metadata=struct(k="a\0b"))
    )
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.violated_fields == {"metadata"}
    assert (await api.get(flow.flow_id)).version == flow.version + 2


async def test_two_authorization_headers_are_refused(api: Api, server: RunningServer) -> None:
    (header,) = api.metadata
    reader = server.mint.metadata(api.tenant, scopes=["flows:read"])[0]
    for metadata in ((header, reader), (reader, header), (header, header)):
        found = await refused(
            api.stub.GetFlowDefinition(pb.GetFlowDefinitionRequest(), metadata=metadata)
        )
        assert found.code == grpc.StatusCode.UNAUTHENTICATED
        assert "one authorization" in found.message


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_numeric_date_claims_must_be_numbers(
    api: Api, server: RunningServer, claim: str
) -> None:
    token = server.mint(api.tenant)
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    claims[claim] = str(int(claims["iat"]) + (3600 if claim == "exp" else 0))
    signing_key = server.mint.key.signing_key
    assert isinstance(signing_key, bytes)
    forged = jwt.encode(claims, signing_key, algorithm="HS256")
    found = await refused(
        api.stub.GetFlowDefinition(
            pb.GetFlowDefinitionRequest(), metadata=(("authorization", f"Bearer {forged}"),)
        )
    )
    assert found.code == grpc.StatusCode.UNAUTHENTICATED
    assert claim in found.message


async def test_a_page_size_above_the_maximum_is_lowered(api: Api) -> None:
    flow = await api.create()
    listed = await api.stub.ListFlows(pb.ListFlowsRequest(page_size=10**6), metadata=api.metadata)
    assert [f.flow_id for f in listed.flows] == [flow.flow_id]
    history = await api.stub.ListFlowHistory(
        pb.ListFlowHistoryRequest(flow_id=flow.flow_id, page_size=10**6), metadata=api.metadata
    )
    assert len(history.history_entries) == 1
    found = await refused(
        api.stub.ListFlows(pb.ListFlowsRequest(page_size=-1), metadata=api.metadata)
    )
    assert found.violated_fields == {"page_size"}
