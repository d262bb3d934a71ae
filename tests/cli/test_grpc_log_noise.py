"""`flowstate serve` keeps gRPC's C-core INFO lines out of its log unless GRPC_VERBOSITY asks.

The trigger is a plaintext client at a TLS port: the C core logs the failed handshake at INFO
(``ssl_transport_security.cc ... Handshake failed``). A server started with GRPC_VERBOSITY=INFO
shows that the trigger works; one started without the variable must not print it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from flowstate.testing import ServerProcess, serve_subprocess, write_test_pki

C_CORE_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]", re.MULTILINE)


def knock_in_plaintext(server: ServerProcess) -> None:
    """A plaintext call at the TLS port: the server's handshake fails."""
    with grpc.insecure_channel(server.address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        with pytest.raises(grpc.RpcError):
            check(health_pb2.HealthCheckRequest(), timeout=2)


def test_the_c_core_logs_only_errors_by_default(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = write_test_pki(tmp_path)
    tls = ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)  # as a user's shell has it

    with (
        serve_subprocess(database_url=database_url, args=tls) as quiet,
        serve_subprocess(
            database_url=database_url, args=tls, env={"GRPC_VERBOSITY": "INFO"}
        ) as verbose,
    ):
        knock_in_plaintext(quiet)
        knock_in_plaintext(verbose)
        deadline = time.monotonic() + 30
        while "Handshake failed" not in verbose.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert quiet.stop() == 0
        assert verbose.stop() == 0

    assert "Handshake failed" in verbose.log()
    assert C_CORE_LINE.search(verbose.log())
    assert "Handshake failed" not in quiet.log()
    assert not C_CORE_LINE.search(quiet.log()), quiet.log()
    assert "flowstate: serving on" in quiet.log()
