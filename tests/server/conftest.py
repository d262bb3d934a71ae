"""Fixtures of the server tests: one real in-process server for the session, real Postgres.

``server`` (session)
    A `flowstate.testing.RunningServer` on 127.0.0.1:0 over the shared migrated database
    (``database_url`` and ``store`` of tests/conftest.py), with a metrics endpoint on an
    ephemeral port. Tests isolate by tenant.
``stub`` (session)
    A `FlowStateServiceAsyncStub` on one channel to ``server``.
``api`` (function)
    A `support.Api` bound to this test's unique ``tenant`` with flows:read and flows:write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio
import pytest
import pytest_asyncio

from flowstate.core.model import Tenant
from flowstate.storage import FlowStore
from flowstate.testing import RunningServer, serve_in_process
from flowstate.v1 import flow_service_pb2_grpc

from .support import Api


@pytest_asyncio.fixture(scope="session")
async def server(database_url: str, store: FlowStore) -> AsyncIterator[RunningServer]:
    """The session's in-process server."""
    async with serve_in_process(database_url, store=store, metrics_port=0) as running:
        yield running


@pytest_asyncio.fixture(scope="session")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    """One channel to the session's server."""
    async with server.channel() as opened:
        yield opened


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> flow_service_pb2_grpc.FlowStateServiceAsyncStub:
    """The FlowStateService stub on the session's channel."""
    return flow_service_pb2_grpc.FlowStateServiceStub(channel)


@pytest.fixture
def api(
    stub: flow_service_pb2_grpc.FlowStateServiceAsyncStub, server: RunningServer, tenant: Tenant
) -> Api:
    """The API as a reader-writer of this test's tenant."""
    return Api(stub, server.mint, tenant)
