"""TLS and mTLS: the client verifies the server with given roots and presents its certificate."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import grpc.aio
import pytest

x509 = pytest.importorskip("cryptography.x509", reason="certificates are made with cryptography")

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from scripted_server import ScriptedServicer  # noqa: E402

from flowstate.client import AsyncFlowstateClient, FlowstateClient, RetryPolicy, Unavailable  # noqa: E402
from flowstate.v1 import flow_pb2, flow_service_pb2, flow_service_pb2_grpc  # noqa: E402


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> bytes:
    now = datetime.now(UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    certificate = builder.sign(issuer_key, hashes.SHA256())
    return cast(bytes, certificate.public_bytes(serialization.Encoding.PEM))


class Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _certificate("test-ca", ca_key, None, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        self.server_key = _pem_key(server_key)
        self.server_cert = _certificate("127.0.0.1", server_key, ("test-ca", ca_key), server=True)
        client_key = ec.generate_private_key(ec.SECP256R1())
        self.client_key = _pem_key(client_key)
        self.client_cert = _certificate("sdk-client", client_key, ("test-ca", ca_key))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def _tls_server(pki: Pki, servicer: ScriptedServicer, *, mtls: bool) -> tuple[Any, str]:
    server = grpc.aio.server()
    flow_service_pb2_grpc.add_FlowStateServiceServicer_to_server(cast(Any, servicer), server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)],
        root_certificates=pki.ca if mtls else None,
        require_client_auth=mtls,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, f"127.0.0.1:{port}"


def _answer(servicer: ScriptedServicer, count: int = 1) -> None:
    response = flow_service_pb2.GetFlowResponse(flow=flow_pb2.Flow(flow_id="tls"))
    servicer.add("GetFlow", *[response] * count)


async def test_tls_with_given_roots(pki: Pki, servicer: ScriptedServicer) -> None:
    server, address = await _tls_server(pki, servicer, mtls=False)
    _answer(servicer, 2)
    try:
        async with AsyncFlowstateClient(address=address, root_certificates=pki.ca) as client:
            assert (await client.get_flow("f")).flow_id == "tls"

        def sync_call() -> str:
            with FlowstateClient(address=address, root_certificates=pki.ca) as sync_client:
                return sync_client.get_flow("f").flow_id

        assert await asyncio.to_thread(sync_call) == "tls"
    finally:
        await server.stop(None)


async def test_mtls_presents_the_client_certificate(pki: Pki, servicer: ScriptedServicer) -> None:
    server, address = await _tls_server(pki, servicer, mtls=True)
    _answer(servicer)
    no_retry = RetryPolicy.disabled()
    try:
        async with AsyncFlowstateClient(
            address=address,
            root_certificates=pki.ca,
            private_key=pki.client_key,
            certificate_chain=pki.client_cert,
        ) as client:
            assert (await client.get_flow("f")).flow_id == "tls"
        async with AsyncFlowstateClient(
            address=address, root_certificates=pki.ca, retry=no_retry
        ) as anonymous:
            with pytest.raises(Unavailable):  # the handshake fails without a client certificate
                await anonymous.get_flow("f")
    finally:
        await server.stop(None)


async def test_a_plaintext_client_cannot_talk_to_a_tls_server(
    pki: Pki, servicer: ScriptedServicer
) -> None:
    server, address = await _tls_server(pki, servicer, mtls=False)
    try:
        async with AsyncFlowstateClient(
            address=address, retry=RetryPolicy.disabled(), timeout=2
        ) as client:
            with pytest.raises(Unavailable):
                await client.get_flow("f")
    finally:
        await server.stop(None)


def test_half_an_mtls_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="both private_key and certificate_chain"):
        AsyncFlowstateClient(private_key=b"key only")
