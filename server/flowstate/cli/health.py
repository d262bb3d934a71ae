"""``flowstate health``: ask a server's gRPC health service whether it serves (a probe).

For container health checks, systemd and load balancers that cannot speak gRPC themselves::

    flowstate health                                   # 127.0.0.1:50051, the whole server
    flowstate health --service flowstate.v1.FlowStateService --address db-host:50051

Prints the status (``SERVING``) and exits 0 when serving; anything else (``NOT_SERVING`` while
starting or draining, an unknown service, an unreachable server) prints a structured error and
exits 1. The health service needs no token. TLS: ``--tls`` (system roots) or ``--tls-ca-file``
(``FLOWSTATE_TLS_CA_FILE``), and ``--tls-cert-file``/``--tls-key-file`` where mTLS is required.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from flowstate.cli._common import print_error

__all__ = ["register", "run"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
EXIT_SERVING = 0
EXIT_NOT_SERVING = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``health`` command."""
    parser = subparsers.add_parser(
        "health",
        help="check that a server is serving (gRPC health; exit 0 if so)",
        description="Ask the server's grpc.health.v1 service for its status. Exit 0 and print "
        "SERVING when it serves; otherwise print why and exit 1. No token is needed.",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("FLOWSTATE_ADDRESS", DEFAULT_ADDRESS),
        metavar="HOST:PORT",
        help="server address (FLOWSTATE_ADDRESS; default %(default)s)",
    )
    parser.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help='one service, e.g. flowstate.v1.FlowStateService (default "": the whole server)',
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up after this long (default %(default)s)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    parser.add_argument(
        "--tls-ca-file",
        type=Path,
        default=_env_path("FLOWSTATE_TLS_CA_FILE"),
        metavar="PEM",
        help="use TLS, trusting these roots (FLOWSTATE_TLS_CA_FILE)",
    )
    # No environment defaults for the client certificate: in a server's environment (the
    # container's HEALTHCHECK) FLOWSTATE_TLS_CERT_FILE is the server's own certificate.
    parser.add_argument(
        "--tls-cert-file", type=Path, metavar="PEM", help="client certificate, for mTLS"
    )
    parser.add_argument("--tls-key-file", type=Path, metavar="PEM", help="client key, for mTLS")
    parser.set_defaults(run=run)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not (args.tls or args.tls_ca_file or args.tls_cert_file):
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca_file.read_bytes() if args.tls_ca_file else None,
        private_key=args.tls_key_file.read_bytes() if args.tls_key_file else None,
        certificate_chain=args.tls_cert_file.read_bytes() if args.tls_cert_file else None,
    )
    return grpc.secure_channel(args.address, credentials)


def run(args: argparse.Namespace) -> int:
    """One Check call; the exit code (0: SERVING)."""
    with _channel(args) as channel:
        check = channel.unary_unary(  # typed, unlike HealthStub in types-grpcio-health-checking
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            if code is grpc.StatusCode.UNAVAILABLE:
                print_error(code.name, f"cannot reach {args.address} ({details})")
            elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
                print_error(code.name, f"no answer from {args.address} within {args.timeout:g}s")
            elif code is grpc.StatusCode.NOT_FOUND:
                print_error(code.name, f"the server has no service {args.service!r}")
            else:
                print_error(code.name, details or "health check failed")
            return EXIT_NOT_SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print_error("UNAVAILABLE", f"{args.address} is {status}")
        return EXIT_NOT_SERVING
    print(status)
    return EXIT_SERVING
