"""The FlowStateService over Connect and gRPC-Web on the HTTP port, as curl and browsers use it.

Plain HTTP requests (httpx) against a real server: Connect unary in JSON (what ``curl -H
'content-type: application/json'`` sends) and in binary, a Connect server stream, gRPC-Web,
refusals with the same error details as over gRPC, authentication and scopes, the metrics, and
every RPC of the service reachable (the adapter is built from the service descriptor).
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from typing import Any

import httpx
import pytest
from google.rpc import error_details_pb2

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer
from flowstate.v1 import errors_pb2, flow_service_pb2
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import states_pb2 as states

SERVICE = "/flowstate.v1.FlowStateService"
_READS = frozenset({"GetFlow", "ListFlows", "ListFlowHistory", "GetFlowDefinition"})


def _auth(server: RunningServer, tenant: Tenant, **kwargs: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {server.mint(tenant, **kwargs)}"}


async def _call(
    http: httpx.AsyncClient, method: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """A Connect unary call in JSON, exactly as curl sends it (mutations get a request id)."""
    if method not in _READS:
        body = {"requestId": str(uuid.uuid4()), **body}
    return await http.post(
        f"{SERVICE}/{method}",
        content=json.dumps(body),
        headers={"content-type": "application/json", **headers},
    )


def _detail(body: dict[str, Any], type_name: str) -> bytes:
    """The bytes of the error detail of `type_name` (Connect: unpadded base64)."""
    for detail in body.get("details", []):
        if detail["type"] == type_name:
            value: str = detail["value"]
            return base64.b64decode(value + "=" * (-len(value) % 4))
    raise AssertionError(f"no {type_name} detail in {body}")


def _envelope(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def _trailers(frame: bytes) -> dict[str, str]:
    """A gRPC-Web trailer frame as a dict."""
    lines = frame.decode().split("\r\n")
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (flags, payload) frames of an enveloped body (Connect streams, gRPC-Web)."""
    frames = []
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        frames.append((flags, data[5 : 5 + size]))
        data = data[5 + size :]
    return frames


async def test_unary_json_create_then_get(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    headers = _auth(web_server, tenant, user="carol")
    created = await _call(http, "CreateFlow", {"definitionName": "discovery"}, headers)
    assert created.status_code == 200, created.text
    assert created.headers["content-type"] == "application/json"
    assert created.headers["trailer-x-correlation-id"]
    flow = created.json()["flow"]
    assert flow["status"] == "FLOW_STATUS_INITIALIZED"
    assert next(p["name"] for p in flow["phases"]) == "data_import"

    moved = await _call(
        http,
        "TransitionPhase",
        {
            "flowId": flow["flowId"],
            "phase": "data_import",
            "targetState": "PHASE_STATE_IN_PROGRESS",
            "expectedVersion": flow["version"],
        },
        headers,
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["historyEntries"][0]["userId"] == "carol"

    got = await _call(http, "GetFlow", {"flowId": flow["flowId"]}, headers)
    assert got.status_code == 200
    assert got.json()["flow"]["progress"] == 6.0
    assert got.json()["flow"]["status"] == "FLOW_STATUS_DATA_GATHERING"


async def test_unary_binary(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    response = await http.post(
        f"{SERVICE}/CreateFlow",
        content=pb.CreateFlowRequest(request_id=str(uuid.uuid4())).SerializeToString(),
        headers={"content-type": "application/proto", **_auth(web_server, tenant)},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    created = pb.CreateFlowResponse.FromString(response.content)
    assert created.flow.status == states.FLOW_STATUS_INITIALIZED


async def test_refusal_carries_error_info_and_flow_error(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    headers = _auth(web_server, tenant)
    flow = (await _call(http, "CreateFlow", {}, headers)).json()["flow"]
    refused = await _call(
        http,
        "TransitionPhase",
        {"flowId": flow["flowId"], "phase": "data_import", "targetState": "PHASE_STATE_COMPLETED"},
        headers,
    )
    assert refused.status_code == 400  # Connect's HTTP status for failed_precondition
    body = refused.json()
    assert body["code"] == "failed_precondition"
    assert "NOT_STARTED" in body["message"] or "not_started" in body["message"]
    info = error_details_pb2.ErrorInfo.FromString(_detail(body, "google.rpc.ErrorInfo"))
    assert (info.reason, info.domain) == ("INVALID_PHASE_TRANSITION", "flowstate.v1")
    error = errors_pb2.FlowError.FromString(_detail(body, "flowstate.v1.FlowError"))
    assert list(error.valid_transitions) == [states.PHASE_STATE_IN_PROGRESS]
    assert error.correlation_id == refused.headers["trailer-x-correlation-id"]


async def test_version_conflict_names_the_current_version(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    headers = _auth(web_server, tenant)
    flow = (await _call(http, "CreateFlow", {}, headers)).json()["flow"]
    body = {"flowId": flow["flowId"], "expectedVersion": str(int(flow["version"]) + 5)}
    refused = await _call(http, "PauseFlow", body, headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "aborted"
    error = errors_pb2.FlowError.FromString(_detail(refused.json(), "flowstate.v1.FlowError"))
    assert error.current_version == int(flow["version"])


async def test_malformed_request_carries_bad_request(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    refused = await _call(http, "GetFlow", {"flowId": "not-a-uuid"}, _auth(web_server, tenant))
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_argument"
    bad = error_details_pb2.BadRequest.FromString(_detail(refused.json(), "google.rpc.BadRequest"))
    assert [v.field for v in bad.field_violations] == ["flow_id"]


async def test_missing_token_and_small_scope_are_refused(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    anonymous = await _call(http, "ListFlows", {}, {})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    reader = _auth(web_server, tenant, scopes=["flows:read"])
    assert (await _call(http, "ListFlows", {}, reader)).status_code == 200
    denied = await _call(http, "CreateFlow", {}, reader)
    assert denied.status_code == 403
    assert denied.json()["code"] == "permission_denied"
    info = error_details_pb2.ErrorInfo.FromString(_detail(denied.json(), "google.rpc.ErrorInfo"))
    assert info.reason == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    "method",
    [m.name for m in flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"].methods],
)
async def test_every_rpc_is_served(http: httpx.AsyncClient, method: str) -> None:
    """Each RPC reaches the servicer's wrapper (UNAUTHENTICATED without a token, not 404)."""
    streaming = method.startswith("Watch")
    response = await http.post(
        f"{SERVICE}/{method}",
        content=_envelope(b"{}") if streaming else b"{}",
        headers={"content-type": "application/connect+json" if streaming else "application/json"},
    )
    if streaming:
        end = json.loads(_frames(response.content)[-1][1])
        assert end["error"]["code"] == "unauthenticated"
    else:
        assert response.status_code == 401, response.text


async def test_connect_server_stream(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    headers = _auth(web_server, tenant)
    flow = (await _call(http, "CreateFlow", {}, headers)).json()["flow"]
    await _call(http, "CancelFlow", {"flowId": flow["flowId"], "reason": "done"}, headers)
    request = _envelope(json.dumps({"flowId": flow["flowId"], "afterVersion": "0"}).encode())
    response = await http.post(
        f"{SERVICE}/WatchFlow",
        content=request,
        headers={"content-type": "application/connect+json", **headers},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/connect+json"
    frames = _frames(response.content)
    *messages, (end_flags, end) = frames
    assert end_flags == 2
    assert json.loads(end) == {
        "metadata": {"x-correlation-id": [json.loads(end)["metadata"]["x-correlation-id"][0]]}
    }
    events = [json.loads(payload)["event"] for _, payload in messages]
    assert [e["status"] for e in events][-1] == "FLOW_STATUS_CANCELLED"
    assert [int(e["flowVersion"]) for e in events] == sorted(int(e["flowVersion"]) for e in events)


async def test_grpc_web_unary_and_stream(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    headers |= _auth(web_server, tenant)
    created = await http.post(
        f"{SERVICE}/CreateFlow",
        content=_envelope(pb.CreateFlowRequest(request_id=str(uuid.uuid4())).SerializeToString()),
        headers=headers,
    )
    assert created.status_code == 200
    (flags, message), (trailer_flags, trailer) = _frames(created.content)
    assert flags == 0
    assert trailer_flags == 0x80
    assert _trailers(trailer)["grpc-status"] == "0"
    assert _trailers(trailer)["x-correlation-id"]
    flow = pb.CreateFlowResponse.FromString(message).flow

    refused = await http.post(
        f"{SERVICE}/GetFlow",
        content=_envelope(pb.GetFlowRequest(flow_id="not-a-uuid").SerializeToString()),
        headers=headers,
    )
    trailers = _trailers(_frames(refused.content)[-1][1])
    assert trailers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert trailers["grpc-status-details-bin"]

    cancel = pb.CancelFlowRequest(
        flow_id=flow.flow_id, reason="done", request_id="c-" + flow.flow_id
    )
    await http.post(
        f"{SERVICE}/CancelFlow", content=_envelope(cancel.SerializeToString()), headers=headers
    )
    watched = await http.post(
        f"{SERVICE}/WatchFlow",
        content=_envelope(pb.WatchFlowRequest(flow_id=flow.flow_id).SerializeToString()),
        headers=headers,
    )
    *messages, (trailer_flags, trailer) = _frames(watched.content)
    assert trailer_flags == 0x80
    assert _trailers(trailer)["grpc-status"] == "0"
    last = pb.WatchFlowResponse.FromString(messages[-1][1])
    assert last.event.status == states.FLOW_STATUS_CANCELLED


async def test_rpcs_over_http_are_counted_in_the_same_metrics(
    http: httpx.AsyncClient, web_server: RunningServer, tenant: Tenant
) -> None:
    def count() -> float:
        value = web_server.server.metrics.registry.get_sample_value(
            "flowstate_rpc_requests_total", {"method": "ListFlows", "code": "OK"}
        )
        return value or 0.0

    before = count()
    assert (await _call(http, "ListFlows", {}, _auth(web_server, tenant))).status_code == 200
    assert count() == before + 1
