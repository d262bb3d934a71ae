"""Fixtures of the SDK tests: a real scripted ``grpc.aio`` server and clients pointed at it."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
from scripted_server import ScriptedServer, ScriptedServicer

from flowstate.client import AsyncFlowstateClient, RetryPolicy

#: Fast retries for tests: no jitter, tiny waits.
FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05, jitter=0.0)


#: The environment the clients read settings from (cleared so a developer's shell cannot leak in).
CLIENT_ENVIRONMENT = (
    "FLOWSTATE_ADDRESS",
    "FLOWSTATE_TOKEN",
    "FLOWSTATE_TLS",
    "FLOWSTATE_TLS_CA_FILE",
    "FLOWSTATE_TLS_CERT_FILE",
    "FLOWSTATE_TLS_KEY_FILE",
)


@pytest.fixture(autouse=True)
def _no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLIENT_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def servicer() -> ScriptedServicer:
    """The script and the record of the server."""
    return ScriptedServicer()


@pytest.fixture
async def scripted(servicer: ScriptedServicer) -> AsyncIterator[ScriptedServer]:
    """A started scripted server on 127.0.0.1:<free port>."""
    server = await ScriptedServer(servicer).start()
    yield server
    await server.stop(None)


@pytest.fixture
def waits() -> list[float]:
    """The waits, in seconds, the `client` fixture's calls and streams took between attempts."""
    return []


@pytest.fixture
async def client(
    scripted: ScriptedServer, waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AsyncFlowstateClient]:
    """An async client of the scripted server with fast retries and a static token.

    Its waits between attempts (unary retries, stream reconnections) are recorded in `waits`
    instead of slept: the recorded errors carry the real server's RetryInfo (1 s for
    TEMPORARY_RESOURCE_UNAVAILABLE, SERVER_SHUTTING_DOWN and RATE_LIMITED), which the client
    honours as a minimum; the tests assert the wait instead of spending it.
    """

    async def recorded_sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(0)

    async with AsyncFlowstateClient(
        address=scripted.address,
        token="test-token",
        retry=FAST_RETRY,
        watch_retry=RetryPolicy(
            max_attempts=None, initial_backoff=0.01, max_backoff=0.05, jitter=0.0, deadline=10.0
        ),
        timeout=5.0,
    ) as client:
        client._sleep = recorded_sleep
        monkeypatch.setattr(client, "_pause", recorded_sleep)
        yield client


# --- end-to-end: a real Flowstate server over a real PostgreSQL ------------------------------
#
# The SDK's end-to-end tests use the shared database fixtures of the server's test suite
# (tests/conftest.py: an embedded PostgreSQL per session, a database migrated to head). They are
# loaded from that file by path, under their own module name; where the server distribution is
# not installed (the SDK tested alone) the end-to-end tests are skipped.
def _load_root_conftest() -> ModuleType | None:
    path = Path(__file__).resolve().parents[3] / "tests" / "conftest.py"
    if not path.is_file() or importlib.util.find_spec("flowstate.testing") is None:
        return None
    spec = importlib.util.spec_from_file_location("flowstate_sdk_tests_root_conftest", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_root_conftest = _load_root_conftest()

if _root_conftest is not None:
    database_server = _root_conftest.database_server
    database_url = _root_conftest.database_url
else:

    @pytest.fixture(scope="session")
    def database_url() -> str:
        """Stands in for the server suite's fixture when the server is not installed."""
        pytest.skip("end-to-end tests need the flowstate server distribution")
