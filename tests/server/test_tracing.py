"""OpenTelemetry tracing (FLOWSTATE_TRACING=console) of a real ``flowstate serve`` process."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

import grpc
import pytest

from flowstate.core.model import Tenant
from flowstate.server.config import ConfigError, ServerSettings
from flowstate.testing import ServerProcess, serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb

from .support import new_flow, request_id, sync_stub

SERVICE = "/flowstate.v1.FlowStateService"


def _spans(process: ServerProcess, trace_id: str) -> list[dict[str, Any]]:
    """The spans of `trace_id` the server printed so far (one JSON object per line)."""
    found = []
    for line in list(process.output):
        if not line.startswith("{"):
            continue
        span = json.loads(line)
        if span.get("context", {}).get("trace_id") == f"0x{trace_id}":
            found.append(span)
    return found


def test_rpcs_and_their_statements_are_traced(database_url: str, tenant: Tenant) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    env = {"FLOWSTATE_TRACING": "console", "OTEL_SERVICE_NAME": "flowstate-under-test"}
    with serve_subprocess(database_url=database_url, env=env) as process:
        metadata = (
            *process.mint.metadata(tenant),
            ("traceparent", f"00-{trace_id}-{parent_id}-01"),
        )
        with sync_stub(process.address) as stub:
            flow = new_flow(stub, metadata)
            with pytest.raises(grpc.RpcError):
                stub.GetFlow(pb.GetFlowRequest(flow_id=str(uuid.uuid4())), metadata=metadata)
            # A stream works under the interceptor too: snapshot, then the final change.
            stream = stub.WatchFlow(pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=metadata)
            assert next(stream).event.flow_version == 1
            stub.CancelFlow(
                pb.CancelFlowRequest(flow_id=flow.flow_id, request_id=request_id()),
                metadata=metadata,
            )
            assert [r.event.flow_version for r in stream] == [2]
        expected = {f"{SERVICE}/{name}" for name in ("CreateFlow", "GetFlow", "WatchFlow")}
        deadline = time.monotonic() + 10  # spans print as they end; bounded wait for the last
        while time.monotonic() < deadline:
            spans = _spans(process, trace_id)
            if expected <= {s["name"] for s in spans}:
                break
            time.sleep(0.05)
        assert process.stop() == 0

    rpcs = {s["name"]: s for s in spans if s["kind"] == "SpanKind.SERVER"}
    create, get = rpcs[f"{SERVICE}/CreateFlow"], rpcs[f"{SERVICE}/GetFlow"]
    assert create["parent_id"] == f"0x{parent_id}"  # the caller's trace continues
    assert create["resource"]["attributes"]["service.name"] == "flowstate-under-test"
    assert create["attributes"]["flowstate.correlation_id"]
    assert "flowstate.error_code" not in create["attributes"]
    assert get["attributes"]["flowstate.error_code"] == "FLOW_NOT_FOUND"
    assert rpcs[f"{SERVICE}/WatchFlow"]["attributes"]["flowstate.correlation_id"]
    statements = [
        s
        for s in spans
        if s["kind"] == "SpanKind.CLIENT" and s["parent_id"] == create["context"]["span_id"]
    ]
    assert statements, f"no statement spans under CreateFlow: {[s['name'] for s in spans]}"


def test_an_unknown_tracing_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="FLOWSTATE_TRACING"):
        ServerSettings.from_env({"FLOWSTATE_TRACING": "zipkin"})
