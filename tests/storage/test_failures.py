"""Failures: nothing half-written, and an unreachable database is StoreUnavailable."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from flowstate.core.commands import TransitionPhase, UpdatePhaseProgress
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore, StoreUnavailable
from flowstate.storage.embedded import EmbeddedPostgres
from flowstate.storage.migrate import upgrade
from flowstate.storage.sql import Transaction

from .support import ContextFactory, HoldingStore, asyncpg_dsn, fetch, history_versions
from .test_concurrency import started_flow


class InjectedFailureError(Exception):
    """Raised by the test hook after the writes, before COMMIT."""


class FailingStore(FlowStore):
    """A store whose write transactions fail right before COMMIT."""

    calls = 0

    async def _before_commit(self, transaction: Transaction) -> None:
        type(self).calls += 1
        raise InjectedFailureError


class DisconnectingStore(FlowStore):
    """A store whose write transactions lose their connection right before COMMIT."""

    calls = 0

    async def _before_commit(self, transaction: Transaction) -> None:
        type(self).calls += 1
        await transaction.connection.execute(
            "RESET ROLE; SELECT pg_terminate_backend(pg_backend_pid())"
        )


async def test_a_failure_before_commit_leaves_no_trace(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    before = await store.get_flow(tenant, flow_id)
    failing = await FailingStore.open(database_url)
    try:
        with pytest.raises(FlowStateError) as failed:
            await FlowService(failing).mutate(
                tenant,
                flow_id,
                TransitionPhase("data_import", PhaseState.COMPLETED),
                make_context("r-fail"),
            )
        assert failed.value.code is ErrorCode.INTERNAL
        assert failed.value.message == "internal storage error"
        assert isinstance(failed.value.__cause__, InjectedFailureError)
        with pytest.raises(FlowStateError):
            await FlowService(failing).create_flow(
                tenant, definition_name="discovery", ctx=make_context()
            )
    finally:
        await failing.close()

    assert await store.get_flow(tenant, flow_id) == before
    assert await history_versions(database_url, flow_id) == [1, 2]
    keys = await fetch(
        database_url,
        "SELECT 1 FROM idempotency_keys WHERE client_account_id = $1",
        tenant.client_account_id,
    )
    assert keys == []
    # The request id was not consumed: the same request now applies.
    applied = await FlowService(store).mutate(
        tenant,
        flow_id,
        TransitionPhase("data_import", PhaseState.COMPLETED),
        make_context("r-fail"),
    )
    assert not applied.replayed


async def test_a_connection_lost_before_commit_is_retried_then_unavailable(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    disconnecting = await DisconnectingStore.open(database_url)
    DisconnectingStore.calls = 0
    try:
        with pytest.raises(StoreUnavailable) as unavailable:
            await FlowService(disconnecting).mutate(
                tenant, flow_id, UpdatePhaseProgress("data_import", 0.5), make_context()
            )
        assert unavailable.value.code is ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE
        assert unavailable.value.retry_allowed
        assert unavailable.value.details == {"reason": "unreachable"}
        assert DisconnectingStore.calls == 2  # one retry: nothing had been committed
        # The pool replaced the dead connections: reads still work.
        assert (await disconnecting.get_flow(tenant, flow_id)).version == 2
    finally:
        await disconnecting.close()
    assert await history_versions(database_url, flow_id) == [1, 2]


async def test_terminated_connections_are_replaced_transparently(
    tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    own = await FlowStore.open(database_url, pool_size=2)
    try:
        created = await FlowService(own).create_flow(
            tenant, definition_name="discovery", ctx=make_context()
        )
        await fetch(
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'flowstate' AND datname = current_database()"
            " AND pid <> pg_backend_pid()",
        )
        assert await own.get_flow(tenant, created.flow.flow_id) == created.flow
    finally:
        await own.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"postgresql://postgres@127.0.0.1:{_closed_port()}/flowstate", id="tcp"),
        pytest.param("postgresql://postgres@/flowstate?host=/nonexistent/socket/dir", id="unix"),
    ],
)
async def test_an_unreachable_database_is_unavailable(url: str) -> None:
    with pytest.raises(StoreUnavailable) as unavailable:
        await FlowStore.open(url, connect_timeout=2)
    assert unavailable.value.details == {"reason": "unreachable"}
    assert "postgres" not in unavailable.value.message.lower()


async def test_an_unmigrated_database_is_refused_at_open(fresh_database_url: str) -> None:
    with pytest.raises(FlowStateError) as refused:
        await FlowStore.open(fresh_database_url)
    assert refused.value.details["current_revision"] is None
    opened = await FlowStore.open(fresh_database_url, migrate=True)
    await opened.close()


async def test_pool_exhaustion_is_unavailable(
    tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    held = await HoldingStore.open(database_url, pool_size=1, pool_timeout=0.2)
    try:
        create = asyncio.create_task(
            FlowService(held).create_flow(tenant, definition_name="discovery", ctx=make_context())
        )
        await asyncio.wait_for(held.holding.wait(), 10)
        with pytest.raises(StoreUnavailable) as unavailable:
            await held.ping()
        assert unavailable.value.details == {"reason": "pool_timeout"}
        held.release.set()
        await asyncio.wait_for(create, 10)
    finally:
        held.release.set()
        await held.close()


async def test_a_flow_locked_too_long_is_unavailable(
    tenant: Tenant, make_context: ContextFactory, database_url: str, store: FlowStore
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    impatient = await FlowStore.open(database_url, lock_timeout=0.2)
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM flows WHERE id = $1 FOR UPDATE", flow_id)
            with pytest.raises(StoreUnavailable) as unavailable:
                await FlowService(impatient).mutate(
                    tenant, flow_id, UpdatePhaseProgress("data_import", 0.5), make_context()
                )
        assert unavailable.value.details == {"reason": "timeout"}
    finally:
        await blocker.close()
        await impatient.close()


@pytest_asyncio.fixture
async def own_server(database_server: Any) -> AsyncIterator[tuple[EmbeddedPostgres, Path]]:
    """An embedded cluster of the test's own, that the test may stop and restart."""
    if database_server.embedded is None:
        pytest.skip("needs the embedded server (FLOWSTATE_TEST_DATABASE_URL is set)")
    data_dir = Path(tempfile.mkdtemp(prefix="flowstate-test-restart-"))
    server = await asyncio.to_thread(EmbeddedPostgres.start, data_dir)
    try:
        yield server, data_dir
    finally:
        server.stop(force=True)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.slow
async def test_a_stopped_server_is_unavailable_and_a_restart_recovers(
    own_server: tuple[EmbeddedPostgres, Path], tenant: Tenant, make_context: ContextFactory
) -> None:
    server, data_dir = own_server
    await upgrade(server.url)
    own = await FlowStore.open(server.url, connect_timeout=2)
    try:
        created = await FlowService(own).create_flow(
            tenant, definition_name="discovery", ctx=make_context()
        )
        flow_id = created.flow.flow_id
        await asyncio.to_thread(server.stop, force=True)

        for attempt in (
            own.get_flow(tenant, flow_id),
            FlowService(own).mutate(
                tenant,
                flow_id,
                TransitionPhase("data_import", PhaseState.IN_PROGRESS),
                make_context(),
            ),
            own.ping(),
        ):
            with pytest.raises(StoreUnavailable):
                await attempt

        restarted = await asyncio.to_thread(EmbeddedPostgres.start, data_dir)
        try:
            # Same data directory: the data survived, and the pool reconnects by itself.
            assert await own.get_flow(tenant, flow_id) == created.flow
        finally:
            restarted.stop(force=True)
    finally:
        await own.close()


class GatedProxy:
    """A TCP proxy on 127.0.0.1 to the database whose new connections wait at `gate`: a
    connection the pool opens stays in its opening (before PostgreSQL's first byte) until the
    test opens the gate."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(database_url)
        socket_dir = parsed.query.get("host")
        port = parsed.port or int(str(parsed.query.get("port", 5432)))
        # The embedded server listens on a unix socket (``?host=DIR``); others on TCP.
        self.unix = f"{socket_dir}/.s.PGSQL.{port}" if isinstance(socket_dir, str) else None
        self.upstream = (parsed.host or "127.0.0.1", port)
        self.url = database_url
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> GatedProxy:
        from sqlalchemy.engine import make_url

        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parsed = make_url(self.url)
        query = {k: v for k, v in parsed.query.items() if k not in ("host", "port")}
        self.url = parsed.set(host="127.0.0.1", port=port, query=query).render_as_string(
            hide_password=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrived.set()
        await self.gate.wait()
        if self.unix is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self.unix)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            self._pipes.add(asyncio.create_task(task))


async def test_opening_a_connection_does_not_count_against_the_pool_wait(
    tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    """The pool has room (size 2, one connection busy) but opening the second connection
    takes longer than the pool wait: the call waits for it (bounded by the connect timeout),
    it does not fail `pool_timeout` (docs/storage.md, "Timeouts")."""
    pool_timeout = 0.05
    async with GatedProxy(database_url) as proxy:
        proxy.gate.set()  # the store's first connection opens at once
        held = await HoldingStore.open(
            proxy.url, pool_size=2, pool_timeout=pool_timeout, connect_timeout=30
        )
        try:
            create = asyncio.create_task(
                FlowService(held).create_flow(
                    tenant, definition_name="discovery", ctx=make_context()
                )
            )
            await asyncio.wait_for(held.holding.wait(), 10)  # connection 1 is busy
            proxy.gate.clear()
            proxy.arrived.clear()
            ping = asyncio.create_task(held.ping())  # needs connection 2: the pool opens it
            await asyncio.wait_for(proxy.arrived.wait(), 10)
            # Not a synchronisation: the opening must outlast the pool wait, which is the
            # property under test (four times pool_timeout).
            await asyncio.sleep(pool_timeout * 4)
            assert not ping.done()
            proxy.gate.set()
            await asyncio.wait_for(ping, 30)  # no StoreUnavailable(pool_timeout)
            held.release.set()
            await asyncio.wait_for(create, 10)
        finally:
            held.release.set()
            proxy.gate.set()
            await held.close()


async def test_a_connection_that_cannot_be_opened_in_time_is_unreachable(
    tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    """The opening has its own budget, `connect_timeout`: past it the call is UNAVAILABLE with
    reason unreachable (never pool_timeout: the pool had room)."""
    async with GatedProxy(database_url) as proxy:
        proxy.gate.set()
        held = await HoldingStore.open(proxy.url, pool_size=2, pool_timeout=30, connect_timeout=0.2)
        try:
            create = asyncio.create_task(
                FlowService(held).create_flow(
                    tenant, definition_name="discovery", ctx=make_context()
                )
            )
            await asyncio.wait_for(held.holding.wait(), 10)
            proxy.gate.clear()  # connection 2 never opens
            with pytest.raises(StoreUnavailable) as unavailable:
                await asyncio.wait_for(held.ping(), 20)
            assert unavailable.value.details == {"reason": "unreachable"}
            held.release.set()
            await asyncio.wait_for(create, 10)
        finally:
            held.release.set()
            proxy.gate.set()
            await held.close()
