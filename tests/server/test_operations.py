"""Running the server: health, reflection, metrics, correlation ids, TLS, signals, the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flowstate.core.model import Tenant
from flowstate.server.config import ConfigError
from flowstate.server.logs import configure_logging
from flowstate.storage import FlowStore
from flowstate.testing import RunningServer, serve_in_process, serve_subprocess, write_test_pki
from flowstate.v1 import flow_service_pb2 as pb
from flowstate.v1 import flow_service_pb2_grpc

from .support import Api, S, decode_failure, new_flow, refused, request_id, sync_stub

SERVICE = "flowstate.v1.FlowStateService"


async def test_reflection_lists_the_services(server: RunningServer) -> None:
    async with server.channel() as channel:
        # typeshed types the reflection stub for sync channels only.
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names: set[str] = set()
        async for response in call:
            names |= {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_health_turns_not_serving_while_draining(database_url: str, store: FlowStore) -> None:
    async with (
        serve_in_process(database_url, store=store) as running,
        running.channel() as channel,
    ):
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed: no method attributes
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        statuses = watch.__aiter__()
        assert (await anext(statuses)).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(running.server.stop(grace=5))
        assert (await anext(statuses)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # the last in-flight call: the server stops without using its grace
        await stopping


async def test_correlation_id_is_returned_or_generated(api: Api) -> None:
    create = api.stub.CreateFlow(
        pb.CreateFlowRequest(request_id=request_id()),
        metadata=(*api.metadata, ("x-correlation-id", "order-1234")),
    )
    await create
    assert ("x-correlation-id", "order-1234") in list(await create.trailing_metadata() or ())

    read = api.stub.GetFlowDefinition(pb.GetFlowDefinitionRequest(), metadata=api.metadata)
    await read
    generated = dict(await read.trailing_metadata() or ())["x-correlation-id"]
    assert isinstance(generated, str)
    assert len(generated) == 32


async def test_calls_are_counted_by_client_sdk(server: RunningServer, api: Api) -> None:
    for client in ("go/9.8.7", "curl/1"):
        await api.stub.GetFlowDefinition(
            pb.GetFlowDefinitionRequest(), metadata=(*api.metadata, ("x-flowstate-client", client))
        )
    port = server.server.metrics_port

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body: bytes = response.read()
            return body.decode()

    text = await asyncio.to_thread(scrape)
    assert 'flowstate_client_requests_total{sdk="go",version="9.8.7"}' in text
    assert 'flowstate_client_requests_total{sdk="other",version="other"}' in text


async def test_metrics_endpoint(server: RunningServer, api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    await refused(api.move(fid, "field_mapping", S.PHASE_STATE_IN_PROGRESS))
    await api.move(fid, "data_import", S.PHASE_STATE_FAILED)
    await api.retry(fid, "data_import")
    port = server.server.metrics_port
    assert port is not None

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body: bytes = response.read()
            return body.decode()

    text = await asyncio.to_thread(scrape)
    assert 'flowstate_rpc_requests_total{code="OK",method="CreateFlow"}' in text
    assert (
        'flowstate_rpc_requests_total{code="FAILED_PRECONDITION",method="TransitionPhase"}' in text
    )
    # Every RPC is timed: the +Inf bucket of CreateFlow holds at least this test's call.
    bucket = r'flowstate_rpc_duration_seconds_bucket\{code="OK",le="\+Inf",method="CreateFlow"\}'
    inf_bucket = re.search(rf"^{bucket} (\S+)$", text, re.MULTILINE)
    assert inf_bucket is not None
    assert float(inf_bucket.group(1)) >= 1
    assert (
        'flowstate_phase_transitions_total{from_state="not_started",phase="data_import",'
        'result="applied",to_state="in_progress"}' in text
    )
    assert (
        'flowstate_phase_transitions_total{from_state="not_started",phase="field_mapping",'
        'result="PHASE_ORDER_VIOLATION",to_state="in_progress"}' in text
    )
    assert 'flowstate_retries_total{phase="data_import"}' in text
    assert "flowstate_open_streams" in text
    assert "flowstate_phase_time_in_state_seconds_bucket" in text


async def test_tls_and_mtls(
    database_url: str, store: FlowStore, tenant: Tenant, tmp_path: Path
) -> None:
    pki = write_test_pki(tmp_path)
    async with serve_in_process(
        database_url,
        store=store,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    ) as running:
        metadata = running.mint.metadata(tenant)
        request = pb.GetFlowDefinitionRequest()
        with_cert = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        async with grpc.aio.secure_channel(running.address, with_cert) as channel:
            stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
            response = await stub.GetFlowDefinition(request, metadata=metadata)
            assert response.definition.name == "discovery"
        without_cert = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(running.address, without_cert) as channel:
            stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetFlowDefinition(request, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetFlowDefinition(request, metadata=metadata, timeout=10)


# --- the `flowstate` command ---------------------------------------------------------------------


def _flowstate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    return subprocess.run(
        [sys.executable, "-m", "flowstate.cli.main", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=120,
        check=False,
    )


def test_sigterm_drains_streams_and_exits_zero(database_url: str, tenant: Tenant) -> None:
    with serve_subprocess(database_url=database_url) as process:
        metadata = process.mint.metadata(tenant)
        with sync_stub(process.address) as stub:
            flow = new_flow(stub, metadata)
            stream = stub.WatchFlow(pb.WatchFlowRequest(flow_id=flow.flow_id), metadata=metadata)
            first = next(stream)
            assert first.event.snapshot.flow_id == flow.flow_id
            process.process.send_signal(15)
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:
                    pass
        assert process.stop(timeout=30) == 0
    error = ended.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    found = decode_failure(error)
    assert found.reason == "SERVER_SHUTTING_DOWN"
    assert "shutting down" in process.log()


def test_zero_config_serve_and_token_with_the_dev_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ready_file = tmp_path / "ready"
    with serve_subprocess(data_dir=data_dir, args=["--ready-file", str(ready_file)]) as process:
        assert ready_file.read_text().strip() == process.address
        minted = _flowstate(
            "token",
            "--tenant",
            "acme/migration-1",
            "--user",
            "alice",
            "--scopes",
            "flows:write",
            "--ttl",
            "1h",
            "--data-dir",
            str(data_dir),
        )
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        other = _flowstate(
            "token", "--tenant", "a/b", "--user", "x", "--data-dir", str(tmp_path / "other")
        )
        metadata = (("authorization", f"Bearer {token}"),)
        with sync_stub(process.address) as stub:
            flow = new_flow(stub, metadata)
            assert (flow.client_account_id, flow.engagement_id) == ("acme", "migration-1")
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetFlow(
                    pb.GetFlowRequest(flow_id=flow.flow_id),
                    metadata=(("authorization", f"Bearer {other.stdout.strip()}"),),
                )
            assert isinstance(caught.value, grpc.Call)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert process.stop() == 0
    assert (data_dir / "jwt-dev-secret").stat().st_mode & 0o777 == 0o600


def test_serve_refuses_an_external_database_without_a_key(database_url: str) -> None:
    result = _flowstate("serve", "--port", "0", env={"FLOWSTATE_DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "flowstate: error: INVALID_CONFIGURATION: no token verification configured" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "no-slash", "--user", "a"], "ACCOUNT/ENGAGEMENT"),
        (["--tenant", "a/b", "--user", "a", "--scopes", "flows:god"], "unknown scope"),
        (["--tenant", "a/b", "--user", "a", "--ttl", "soon"], "not a duration"),
    ],
    ids=["bad-tenant", "bad-scope", "bad-ttl"],
)
def test_token_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = _flowstate("token", *args, "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_port_in_use_is_a_clear_error(
    server: RunningServer, database_url: str, store: FlowStore
) -> None:
    # SO_REUSEPORT is off: a second server must not silently share the port.
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.server.port}"):
        async with serve_in_process(database_url, store=store, port=server.server.port):
            pass


async def test_messages_over_4_mib_are_refused(api: Api) -> None:
    too_big = pb.CreateFlowRequest(request_id=request_id(), display_name="x" * (4 * 1024 * 1024))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.CreateFlow(too_big, metadata=api.metadata)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_json_logs_carry_the_extra_fields() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)
    try:
        logging.getLogger("flowstate.test").info(
            "refused", extra={"correlation_id": "c-1", "grpc_code": "NOT_FOUND"}
        )
    finally:
        root.handlers[:] = saved_handlers  # give pytest its capture handlers back
        root.setLevel(saved_level)
    line = json.loads(stream.getvalue())
    assert line["message"] == "refused"
    assert (line["level"], line["logger"]) == ("INFO", "flowstate.test")
    assert (line["correlation_id"], line["grpc_code"]) == ("c-1", "NOT_FOUND")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_uvicorns_colour_copy_of_the_message_is_not_logged(fmt: str) -> None:
    """Uvicorn passes `color_message` (terminal escapes) as an extra: the log keeps it out."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(fmt, "INFO", stream)
    try:
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]",
            7,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
        )
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    text = stream.getvalue()
    assert "Started server process [7]" in text
    assert "color_message" not in text
    assert "\x1b" not in text
    assert "\\u001b" not in text


async def test_stream_lag_is_measured_for_changes_read_live(
    server: RunningServer, api: Api
) -> None:
    """A change delivered on an open stream adds one lag observation (bounded polling)."""
    port = server.server.metrics_port
    assert port is not None
    count = re.compile(r"^flowstate_stream_lag_seconds_count (\S+)$", re.MULTILINE)

    def observations() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            found = count.search(response.read().decode())
        assert found is not None
        return float(found.group(1))

    fid = (await api.create()).flow_id
    stream = api.stub.WatchFlow(pb.WatchFlowRequest(flow_id=fid), metadata=api.metadata)
    events = stream.__aiter__()
    assert (await anext(events)).event.flow_version == 1  # the snapshot: subscribed
    before = await asyncio.to_thread(observations)
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    assert (await asyncio.wait_for(anext(events), timeout=10)).event.flow_version == 2
    stream.cancel()

    assert await asyncio.to_thread(observations) >= before + 1
