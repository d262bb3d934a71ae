"""Client settings: the environment fills what the arguments leave unset; tokens never travel in
plaintext to a remote host; token sources may be async; every call names the SDK and version."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_server import ScriptedServer, ScriptedServicer

import flowstate.client
from flowstate.client import AsyncFlowstateClient, FlowstateClient
from flowstate.client._config import ClientConfig, is_local_address
from flowstate.v1 import flow_service_pb2


def config(environ: dict[str, str], **given: object) -> ClientConfig:
    options: dict[str, object] = {
        "address": None,
        "token": None,
        "secure": None,
        "root_certificates": None,
        "private_key": None,
        "certificate_chain": None,
        "allow_insecure": False,
        "timeout": 30.0,
        "retry": None,
        "watch_retry": None,
        "channel_options": (),
    }
    options.update(given)
    return ClientConfig.from_options(environ=environ, **options)  # type: ignore[arg-type]


def test_the_environment_fills_unset_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"CA")
    settings = config(
        {
            "FLOWSTATE_ADDRESS": "flows.example:443",
            "FLOWSTATE_TOKEN": "from-env",
            "FLOWSTATE_TLS_CA_FILE": str(ca),
        }
    )
    assert settings.address == "flows.example:443"
    assert settings.token == "from-env"
    assert settings.root_certificates == b"CA"
    assert settings.uses_tls


def test_explicit_arguments_win_over_the_environment(tmp_path: Path) -> None:
    environ = {
        "FLOWSTATE_ADDRESS": "flows.example:443",
        "FLOWSTATE_TOKEN": "from-env",
        "FLOWSTATE_TLS": "1",
    }
    settings = config(environ, address="127.0.0.1:9", token="given", secure=False)
    assert (settings.address, settings.token, settings.uses_tls) == ("127.0.0.1:9", "given", False)


def test_defaults_without_environment() -> None:
    settings = config({})
    assert (settings.address, settings.token, settings.uses_tls) == ("127.0.0.1:50051", None, False)


def test_an_unreadable_certificate_file_is_named() -> None:
    with pytest.raises(ValueError, match=r"FLOWSTATE_TLS_CA_FILE=/nonexistent/ca\.pem"):
        config({"FLOWSTATE_TLS_CA_FILE": "/nonexistent/ca.pem"})


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/tmp/flowstate.sock", True),
        ("dns:///localhost:50051", True),
        ("10.0.0.5:50051", False),
        ("flows.example:443", False),
        ("[2001:db8::1]:443", False),
    ],
)
def test_local_addresses(address: str, local: bool) -> None:
    assert is_local_address(address) is local


@pytest.mark.parametrize("client_class", [AsyncFlowstateClient, FlowstateClient])
def test_no_plaintext_to_a_remote_host(client_class: type) -> None:
    with pytest.raises(ValueError, match=r"refusing plaintext to flows\.example:443"):
        client_class(address="flows.example:443", token="secret")
    with pytest.raises(ValueError, match="refusing plaintext"):
        client_class(address="10.1.2.3:50051")  # the token may come later (FLOWSTATE_TOKEN)
    # Allowed: with TLS, explicitly insecure, or to loopback.
    client_class(address="flows.example:443", token="secret", secure=True)
    client_class(address="flows.example:443", token="secret", allow_insecure=True)
    client_class(address="127.0.0.1:1", token="secret")


async def test_async_token_source_and_client_header(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("GetFlow", flow_service_pb2.GetFlowResponse())

    async def token() -> str:
        return "async-token"

    async with AsyncFlowstateClient(address=scripted.address, token=token) as client:
        await client.get_flow("f-1")

    metadata = servicer.calls[0].metadata
    assert metadata["authorization"] == "Bearer async-token"
    assert metadata["x-flowstate-client"] == f"python/{flowstate.client.__version__}"


def test_the_sync_client_refuses_an_async_token_source() -> None:
    async def token() -> str:
        return "async-token"

    client = FlowstateClient(address="127.0.0.1:1", token=token)
    with pytest.raises(TypeError, match="returns a str"):
        client.get_flow("f-1")
    client.close()


async def test_address_and_token_from_the_environment(
    servicer: ScriptedServicer, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer.add("GetFlow", flow_service_pb2.GetFlowResponse())
    monkeypatch.setenv("FLOWSTATE_ADDRESS", scripted.address)
    monkeypatch.setenv("FLOWSTATE_TOKEN", "env-token")

    async with AsyncFlowstateClient() as client:
        await client.get_flow("f-1")

    assert servicer.calls[0].metadata["authorization"] == "Bearer env-token"
