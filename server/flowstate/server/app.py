"""`FlowstateServer`: assembles and runs the whole server; stops it gracefully.

Start-up order (each step undone if a later one fails):

1. resolve the token verification (`config.resolve_auth`) - fail fast, before any I/O;
2. the database: ``FLOWSTATE_DATABASE_URL``, or start the embedded PostgreSQL;
3. open the `FlowStore` (migrating first when asked: the default with the embedded DB);
4. start the watch hub (LISTEN/NOTIFY fan-out, `flowstate.server.watch`) on the store;
5. the grpc.aio server: FlowStateService, health (``grpc.health.v1``), reflection (v1alpha),
   keepalive and message-size options, TLS/mTLS when configured; bind, start;
6. the HTTP port, when configured (default 127.0.0.1:8080): Connect, gRPC-Web and the console
   over the same servicer (`flowstate.server.web`, `flowstate.server.connect`), under uvicorn on
   this event loop;
7. the timer loop (`flowstate.server.timers`, docs/timers.md) unless
   ``FLOWSTATE_TIMER_INTERVAL`` is 0, and the bulk worker (`flowstate.server.bulk`,
   docs/bulk-actions.md) unless ``FLOWSTATE_BULK_INTERVAL`` is 0;
7. webhook deliveries (`flowstate.service.webhook_delivery`, unless FLOWSTATE_WEBHOOKS=off);
8. health SERVING; the Prometheus endpoint, when configured, with the stuck-flows count on its
   timer (`flowstate.server.stuck`).

OpenTelemetry tracing (`flowstate.server.tracing`) starts with step 5 when configured.

Shutdown (`stop`, on SIGTERM/SIGINT in `flowstate serve`): health NOT_SERVING; stop the timer
loop (claimed timers it did not fire stay due: another replica fires them once the claims
expire); stop the bulk worker (it gives its action's lease up: another replica continues);
stop counting stuck flows; refuse every new RPC with UNAVAILABLE /
SERVER_SHUTTING_DOWN and RetryInfo (`rpc.CallGate`, on both ports: the HTTP port's calls go
through the same wrapper); close the watch hub, so open streams end at once with the same
status (clients resume elsewhere); let the
RPCs in flight finish within the grace period; stop gRPC; stop the HTTP port; close the store;
stop the embedded PostgreSQL; stop the metrics endpoint; flush the traces.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flowstate.server.alerts import AlertMonitor
from flowstate.server.archiving import ArchiverTask
from flowstate.server.auth import Authenticator
from flowstate.server.bulk import BulkLoop
from flowstate.server.config import AuthConfig, ConfigError, ServerSettings, resolve_auth
from flowstate.server.connect import connect_application
from flowstate.server.metrics import Metrics, MetricsEndpoint
from flowstate.server.ratelimit import RateLimiter
from flowstate.server.rpc import RpcSupport, add_service
from flowstate.server.servicer import FlowStateServicer
from flowstate.server.stuck import StuckFlowsMonitor
from flowstate.server.timers import TimerLoop
from flowstate.server.tracing import Tracing, start_tracing
from flowstate.server.watch import WatchHub
from flowstate.server.web import ConsoleAssets, HttpEndpoint, SignIn, WebApp, default_console_dir
from flowstate.service.bulk import BulkService
from flowstate.service.timers import TimerService
from flowstate.service.webhook_delivery import DeliverySettings, WebhookDispatcher
from flowstate.service.webhooks import TargetPolicy, WebhookSender, WebhookService
from flowstate.storage.changes import TenantLog
from flowstate.storage.embedded import EmbeddedPostgres
from flowstate.storage.store import FlowStore
from flowstate.storage.urls import normalize_database_url, redact_database_url
from flowstate.v1 import flow_service_pb2

__all__ = ["SERVICE_NAME", "FlowstateServer", "format_address", "grpc_options", "run_event_loop"]

_T = TypeVar("_T")


def run_event_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` to completion on the server's event loop, as `asyncio.run` does.

    uvloop where it is installed (a dependency on POSIX): measured 5-10% less server CPU per
    request than asyncio's default loop (bench getflow/validate/transition at 32 clients),
    mostly in asyncpg's transport; grpc.aio, streams and graceful shutdown run on it unchanged.
    Elsewhere asyncio's default loop.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - e.g. Windows, which uvloop does not support
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


_log = logging.getLogger("flowstate.server")

SERVICE_NAME: Final = flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"].full_name
"""``flowstate.v1.FlowStateService``."""


def grpc_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    """Channel arguments of the server: message sizes and keepalive suited to long streams."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Ping idle connections every 30 s so that dead peers of long streams are noticed and
        # NATs/load balancers keep the connection; give a ping 10 s to be answered.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Let clients ping as often as every 10 s (also without calls) without a GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_time_between_pings_ms", 10_000),
        # A fixed port must not be shared silently with another server (SO_REUSEPORT), except
        # by the workers of one `flowstate serve --workers N` (FLOWSTATE_REUSE_PORT).
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
    ]


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts bracketed."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = (
        settings.tls_client_ca_file.read_bytes()
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@dataclass
class _Resources:
    """What `start` has acquired so far, released in reverse order."""

    embedded: EmbeddedPostgres | None = None
    store: FlowStore | None = None
    owns_store: bool = True
    hub: WatchHub | None = None
    support: RpcSupport | None = None
    server: grpc.aio.Server | None = None
    http: HttpEndpoint | None = None
    metrics_endpoint: MetricsEndpoint | None = None
    stuck_monitor: StuckFlowsMonitor | None = None
    timer_loop: TimerLoop | None = None
    bulk_loop: BulkLoop | None = None
    archiver: ArchiverTask | None = None
    alert_monitor: AlertMonitor | None = None
    tracing: Tracing | None = None
    webhook_sender: WebhookSender | None = None
    webhook_log: TenantLog | None = None
    dispatcher: WebhookDispatcher | None = None

    async def release(self, grace: float) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.timer_loop is not None:
            steps.append(("timer loop", self.timer_loop.close))
        if self.bulk_loop is not None:
            steps.append(("bulk worker", self.bulk_loop.close))
        if self.stuck_monitor is not None:
            steps.append(("stuck-flows monitor", self.stuck_monitor.close))
        if self.archiver is not None:
            steps.append(("archiver", self.archiver.close))
        if self.dispatcher is not None:
            steps.append(("webhook deliveries", self.dispatcher.close))
        if self.webhook_log is not None:
            steps.append(("webhook change log", self.webhook_log.close))
        if self.alert_monitor is not None:
            steps.append(("alert monitor", self.alert_monitor.close))
        if self.server is not None:
            steps.append(
                ("grpc server", lambda: _stop_server(self.server, self.hub, self.support, grace))
            )
        elif self.hub is not None:
            steps.append(("watch hub", self.hub.close))
        if self.http is not None:
            http = self.http
            steps.append(("http port", lambda: http.close(grace)))
        if self.webhook_sender is not None:
            steps.append(("webhook sender", self.webhook_sender.close))
        if self.store is not None and self.owns_store:
            steps.append(("store", self.store.close))
        if self.embedded is not None:
            embedded = self.embedded
            steps.append(("embedded postgres", lambda: asyncio.to_thread(embedded.stop)))
        if self.metrics_endpoint is not None:
            endpoint = self.metrics_endpoint
            steps.append(("metrics endpoint", lambda: asyncio.to_thread(endpoint.close)))
        if self.tracing is not None:
            tracing = self.tracing  # last: the spans of the shutdown are flushed too
            steps.append(("tracing", lambda: asyncio.to_thread(tracing.shutdown)))
        for name, step in steps:
            try:
                await step()
            except Exception:
                _log.exception("stopping the %s failed", name)


async def _stop_server(
    server: grpc.aio.Server | None,
    hub: WatchHub | None,
    support: RpcSupport | None,
    grace: float,
) -> None:
    """Refuse new RPCs (UNAVAILABLE), end the streams (hub), let the RPCs in flight finish
    within `grace`, then stop gRPC (which cancels whatever is still running).

    The drain is ours (`rpc.CallGate`), not gRPC's: `server.stop(grace)` alone would cancel
    the calls gRPC had received but not yet handed over, and clients see CANCELLED.
    """
    assert server is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    if support is not None:
        support.gate.close()
    if hub is not None:
        await hub.close()
    if support is not None and not await support.gate.drained(max(deadline - loop.time(), 0)):
        _log.warning(
            "grace period over: cancelling %d RPCs still in flight", support.gate.in_flight
        )
    await server.stop(max(deadline - loop.time(), 0))


async def _start_http(
    settings: ServerSettings, auth: AuthConfig, servicer: FlowStateServicer
) -> HttpEndpoint:
    """The HTTP port: Connect + gRPC-Web over `servicer`, the console, dev sign-in links."""
    assert settings.http_port is not None
    signin = (
        SignIn(auth.key, issuer=auth.issuer, audience=auth.audience)
        if auth.source == "dev"
        else None
    )
    app = WebApp(
        connect_application(servicer, read_max_bytes=settings.max_message_bytes),
        api_prefix=f"/{SERVICE_NAME}/",
        console=ConsoleAssets.load(settings.console_dir or default_console_dir()),
        signin=signin,
        cors_origins=frozenset(settings.http_cors_origins),
    )
    try:
        return await HttpEndpoint.start(
            app,
            settings.http_host,
            settings.http_port,
            tls=(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file),
            reuse_port=settings.reuse_port,
        )
    except OSError as exc:
        target = format_address(settings.http_host, settings.http_port)
        raise ConfigError(
            f"cannot listen on {target} for HTTP ({exc.strerror or exc}); "
            "choose another --http-port, or --http-port off"
        ) from None


class FlowstateServer:
    """A running Flowstate server. Start with `start`, stop with `stop`."""

    def __init__(
        self,
        settings: ServerSettings,
        resources: _Resources,
        health_servicer: health.aio.HealthServicer,
        metrics: Metrics,
        port: int,
        auth: AuthConfig,
    ) -> None:
        """Use `start`."""
        self.settings = settings
        self._resources = resources
        self._health = health_servicer
        self.metrics = metrics
        self.port = port
        """The bound port (the actual one when the settings asked for 0)."""
        self.auth = auth
        """How tokens are verified (the key, issuer, audience)."""
        self._stopped = asyncio.Event()
        self._stopping = False

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return format_address(self.settings.host, self.port)

    @property
    def store(self) -> FlowStore:
        """The server's store."""
        assert self._resources.store is not None
        return self._resources.store

    @property
    def http_port(self) -> int | None:
        """The HTTP port (Connect, gRPC-Web, console), when it runs."""
        return self._resources.http.port if self._resources.http is not None else None

    @property
    def console_url(self) -> str | None:
        """``http://HOST:PORT/``: the console, when the HTTP port runs."""
        port = self.http_port
        if port is None:
            return None
        scheme = "https" if self.settings.tls_cert_file is not None else "http"
        return f"{scheme}://{format_address(self.settings.http_host, port)}/"

    @property
    def archiver(self) -> ArchiverTask | None:
        """The archiver task (archiving with FLOWSTATE_ARCHIVE_DIR/_URL; partitions always)."""
        return self._resources.archiver

    @property
    def metrics_port(self) -> int | None:
        """The Prometheus endpoint's port, when it runs."""
        endpoint = self._resources.metrics_endpoint
        return endpoint.port if endpoint is not None else None

    @classmethod
    async def start(
        cls, settings: ServerSettings, *, store: FlowStore | None = None
    ) -> FlowstateServer:
        """Start everything (see the module docstring); `store` replaces steps 2-3."""
        auth = resolve_auth(settings)
        resources = _Resources(store=store, owns_store=store is None)
        try:
            url = await cls._open_store(settings, resources)
            assert resources.store is not None
            metrics = Metrics(tenant_top_n=settings.tenant_metrics_top_n)
            resources.hub = await WatchHub.start(
                resources.store,
                url,
                heartbeat_interval=settings.heartbeat_interval,
                on_lag=metrics.observe_stream_lag,
            )
            resources.tracing = start_tracing(settings.tracing)
            support = RpcSupport(
                Authenticator(auth.key, issuer=auth.issuer, audience=auth.audience),
                metrics,
                traced=resources.tracing is not None,
                limiter=(
                    RateLimiter(settings.rate_limits, max_wait=settings.rate_limit_max_wait)
                    if settings.rate_limits
                    else None
                ),
            )
            server = grpc.aio.server(
                options=grpc_options(settings),
                interceptors=() if resources.tracing is None else (resources.tracing.interceptor,),
            )
            resources.server = server
            resources.webhook_sender = WebhookSender(
                TargetPolicy(
                    tuple(
                        ipaddress.ip_network(n, strict=False)
                        for n in settings.webhook_allow_networks
                    )
                ),
                timeout=settings.webhook_timeout,
            )
            bulk_service = BulkService(
                resources.store,
                owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                rate=settings.bulk_rate,
                lease=settings.bulk_lease,
                clock=lambda: datetime.now(UTC),
            )
            servicer = FlowStateServicer(
                resources.store,
                support,
                resources.hub,
                stuck_after=settings.stuck_thresholds(),
                webhooks=WebhookService(resources.store, resources.webhook_sender),
                bulk=bulk_service,
            )
            add_service(
                servicer, server, flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"]
            )
            resources.support = support
            health_servicer = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            target = format_address(settings.host, settings.port)
            credentials = _credentials(settings)
            try:
                if credentials is None:
                    port = server.add_insecure_port(target)
                else:
                    port = server.add_secure_port(target, credentials)
            except RuntimeError:
                raise ConfigError(
                    f"cannot listen on {target} (address in use, or not an address of this host)"
                ) from None
            await server.start()
            if settings.http_port is not None:
                resources.http = await _start_http(settings, auth, servicer)
            if settings.timer_interval > 0:
                timer_service = TimerService(
                    resources.store, batch=settings.timer_batch, lease=settings.timer_lease
                )
                resources.timer_loop = TimerLoop.start(
                    timer_service, metrics, interval=settings.timer_interval
                )
            if settings.bulk_interval > 0:
                resources.bulk_loop = BulkLoop.start(
                    bulk_service, metrics, interval=settings.bulk_interval
                )
            if settings.alert_check_interval > 0:
                resources.alert_monitor = AlertMonitor.start(
                    resources.store,
                    metrics,
                    stuck_after=settings.stuck_thresholds(),
                    interval=settings.alert_check_interval,
                    batch_size=settings.alert_batch_size,
                )
            for service in ("", SERVICE_NAME):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
            if settings.webhooks:
                resources.webhook_log = await TenantLog.open(url, max_size=2)
                resources.dispatcher = WebhookDispatcher.start(
                    resources.store,
                    resources.webhook_log,
                    resources.webhook_sender,
                    DeliverySettings(
                        poll_interval=settings.webhook_poll_interval,
                        lease_seconds=settings.webhook_lease_seconds,
                        max_concurrency=settings.webhook_max_concurrency,
                        initial_backoff=settings.webhook_initial_backoff,
                        max_backoff=settings.webhook_max_backoff,
                        failure_budget=settings.webhook_failure_budget,
                    ),
                    metrics.observe_webhook,
                )
            if settings.metrics_port is not None:
                resources.metrics_endpoint = metrics.serve(
                    settings.metrics_host, settings.metrics_port
                )
                if settings.stuck_check_interval > 0:
                    resources.stuck_monitor = StuckFlowsMonitor.start(
                        resources.store,
                        metrics,
                        stuck_after=settings.stuck_after,
                        interval=settings.stuck_check_interval,
                    )
            # Archives when a target is set; always keeps history partitions created ahead.
            resources.archiver = await ArchiverTask.start(
                url,
                settings.archive_target,
                metrics,
                interval=settings.archive_interval,
                default_days=settings.retention_default_days,
            )
        except BaseException:
            await resources.release(grace=0)
            raise
        instance = cls(settings, resources, health_servicer, metrics, port, auth)
        _log.info(
            "serving on %s (%s, auth: %s)",
            instance.address,
            "TLS" if credentials is not None else "plaintext",
            auth.source,
        )
        return instance

    @staticmethod
    async def _open_store(settings: ServerSettings, resources: _Resources) -> str:
        """Set `resources.store` (unless given) and return the database URL."""
        if resources.store is not None:
            if settings.database_url is None:
                raise ConfigError("a server started on a given store needs its database_url")
            return normalize_database_url(settings.database_url)
        if settings.database_url is not None:
            url = normalize_database_url(settings.database_url)
        else:
            data_dir = settings.resolved_data_dir
            resources.embedded = await asyncio.to_thread(EmbeddedPostgres.start, data_dir)
            url = resources.embedded.url
        _log.info(
            "database %s (%s)%s",
            redact_database_url(url),
            "embedded" if resources.embedded is not None else "external",
            ", migrating to head" if settings.migrate_on_start else "",
        )
        resources.store = await FlowStore.open(
            url,
            migrate=settings.migrate_on_start,
            pool_size=settings.db_pool_size,
            group_commit=settings.group_commit,
            group_commit_max_batch=settings.group_commit_max_batch,
            group_commit_max_in_flight=settings.group_commit_max_in_flight,
        )
        return url

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop (see the module docstring); idempotent, concurrent calls wait."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            grace = self.settings.grace_period if grace is None else grace
            _log.info("shutting down (grace period %.1fs)", grace)
            await self._health.enter_graceful_shutdown()
            await self._resources.release(grace)
            _log.info("stopped")
        finally:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until `stop` has finished."""
        await self._stopped.wait()

    async def __aenter__(self) -> FlowstateServer:
        """Return self; `stop` on exit."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the server."""
        await self.stop()
