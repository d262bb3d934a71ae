"""``flowstate serve``: run the gRPC server until SIGTERM or SIGINT, then drain and exit 0.

Settings come from flags, else ``FLOWSTATE_*`` environment variables, else defaults (see
`flowstate.server.config.ServerSettings`). Once the server accepts RPCs it prints one line to
stdout, ``flowstate: serving on HOST:PORT`` (the actual port when ``--port 0``), and writes the
address to ``--ready-file`` when given. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import signal
from pathlib import Path

from flowstate.cli.console import console_signin_url
from flowstate.cli.workers import supervise
from flowstate.server.app import FlowstateServer, run_event_loop
from flowstate.server.config import ConfigError, ServerSettings, parse_http_port, parse_origins
from flowstate.server.logs import LOG_FORMATS, configure_logging

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="run the Flowstate gRPC server",
        description="Run the Flowstate gRPC server. Without FLOWSTATE_DATABASE_URL it starts an "
        "embedded PostgreSQL in the data directory and uses a local dev secret for tokens "
        "(mint them with `flowstate token`). Every flag has a FLOWSTATE_* variable.",
    )
    parser.add_argument("--host", help="listen address (FLOWSTATE_HOST; 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="listen port, 0 for an ephemeral one (FLOWSTATE_PORT; 50051)"
    )
    parser.add_argument(
        "--database-url", help="external PostgreSQL URL (FLOWSTATE_DATABASE_URL; embedded)"
    )
    parser.add_argument("--data-dir", type=Path, help="data directory (FLOWSTATE_DATA_DIR)")
    parser.add_argument(
        "--migrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="migrate the database at start (FLOWSTATE_MIGRATE_ON_START; on with the embedded "
        "database, off otherwise)",
    )
    parser.add_argument(
        "--ready-file", type=Path, help="write the listening address here once serving"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port, 0 for an ephemeral one "
        "(FLOWSTATE_METRICS_PORT; off)",
    )
    parser.add_argument("--metrics-host", help="metrics address (FLOWSTATE_METRICS_HOST)")
    parser.add_argument(
        "--http-port",
        help="Connect, gRPC-Web and the web console on this port, 0 for an ephemeral one, "
        "off for none (FLOWSTATE_HTTP_PORT; 8080)",
    )
    parser.add_argument("--http-host", help="HTTP port address (FLOWSTATE_HTTP_HOST; 127.0.0.1)")
    parser.add_argument(
        "--http-cors-origins",
        type=_origins,
        help="comma-separated origins allowed to call the HTTP port from a browser "
        "(FLOWSTATE_HTTP_CORS_ORIGINS; none: same-origin only)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines on stderr as text or one JSON object each (FLOWSTATE_LOG_FORMAT; text)",
    )
    parser.add_argument(
        "--log-level",
        help="DEBUG, INFO, WARNING or ERROR (FLOWSTATE_LOG_LEVEL; INFO)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        help="seconds in-flight RPCs get on shutdown (FLOWSTATE_GRACE_PERIOD; 10)",
    )
    parser.add_argument(
        "--jwt-secret-file", type=Path, help="HS256 secret file (FLOWSTATE_JWT_SECRET_FILE)"
    )
    parser.add_argument(
        "--jwt-public-key-file",
        type=Path,
        help="RS256/ES256 PEM public key (FLOWSTATE_JWT_PUBLIC_KEY_FILE)",
    )
    parser.add_argument("--jwt-issuer", help="required token issuer (FLOWSTATE_JWT_ISSUER)")
    parser.add_argument("--jwt-audience", help="required token audience (FLOWSTATE_JWT_AUDIENCE)")
    parser.add_argument(
        "--dev-auth",
        action="store_true",
        default=None,
        help="use the data directory's dev secret even with an external database "
        "(FLOWSTATE_DEV_AUTH)",
    )
    parser.add_argument(
        "--tls-cert-file",
        type=Path,
        help="serve TLS with this PEM certificate chain (FLOWSTATE_TLS_CERT_FILE)",
    )
    parser.add_argument(
        "--tls-key-file", type=Path, help="the certificate's PEM key (FLOWSTATE_TLS_KEY_FILE)"
    )
    parser.add_argument(
        "--tls-client-ca-file",
        type=Path,
        help="require client certificates signed by these PEM roots, mTLS "
        "(FLOWSTATE_TLS_CLIENT_CA_FILE)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the ports, under a supervisor that restarts them "
        "(FLOWSTATE_WORKERS; the number of cores)",
    )
    parser.set_defaults(run=run)


def _origins(text: str) -> tuple[str, ...]:
    try:
        return parse_origins(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Environment settings overridden by the flags that were given."""
    settings = ServerSettings.from_env(os.environ).with_overrides(
        host=args.host,
        port=args.port,
        database_url=args.database_url,
        data_dir=args.data_dir,
        migrate=args.migrate,
        ready_file=args.ready_file,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        http_host=args.http_host,
        http_cors_origins=args.http_cors_origins,
        log_format=args.log_format,
        log_level=args.log_level,
        grace_period=args.grace_period,
        jwt_secret_file=args.jwt_secret_file,
        jwt_public_key_file=args.jwt_public_key_file,
        jwt_issuer=args.jwt_issuer,
        jwt_audience=args.jwt_audience,
        dev_auth=args.dev_auth,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
        tls_client_ca_file=args.tls_client_ca_file,
        workers=args.workers,
    )
    if args.http_port is not None:  # "off" is None, which with_overrides would skip
        settings = dataclasses.replace(settings, http_port=parse_http_port(args.http_port))
    return settings.checked()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown."""
    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        return run_event_loop(supervise(settings))
    return run_event_loop(serve(settings))


def _write_ready_file(path: Path, address: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(address + "\n")
    temporary.replace(path)  # atomic: a watcher never reads a half-written file


def _freeze_startup_heap() -> None:
    """Keep what start-up made (imported libraries, pools, the servicer: nearly the whole heap)
    out of the garbage collector's full passes, which then walk only what serving creates.

    Each full pass over that heap cost 40-110 ms of CPU, about once per 2,000 transitions at
    32 clients (docs/performance.md, "Garbage collection"). Here, not in `FlowstateServer.start`:
    a process that starts servers in-process (the tests) keeps its collector as it was."""
    gc.collect()
    gc.freeze()


async def serve(settings: ServerSettings) -> int:
    """Start the server, announce it, wait for a signal, stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await FlowstateServer.start(settings)
    _freeze_startup_heap()
    worker = settings.reuse_port  # a worker of `serve --workers N`: the supervisor announces
    try:
        if server.metrics_port is not None:
            print(
                f"flowstate: metrics on http://{settings.metrics_host}:{server.metrics_port}"
                "/metrics",
                flush=True,
            )
        if server.console_url is not None and not worker:
            print(f"flowstate: console on {server.console_url}", flush=True)
            if server.auth.source == "dev":
                link = console_signin_url(server.console_url, server.auth)
                print(f"flowstate: sign in as dev/local (one-time link): {link}", flush=True)
        if settings.ready_file is not None:
            _write_ready_file(settings.ready_file, server.address)
        # Last: whoever waits for this line may rely on everything above.
        verb = "worker serving" if worker else "serving"
        print(f"flowstate: {verb} on {server.address}", flush=True)
        await stop.wait()
    finally:
        await server.stop()
    return 0
