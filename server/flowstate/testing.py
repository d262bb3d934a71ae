"""Test harness: run a real Flowstate server, in-process or as a `flowstate serve` subprocess.

In-process (async; for tests and benchmarks that share the event loop)::

    async with serve_in_process(database_url) as server:
        channel = server.channel()
        stub = flow_service_pb2_grpc.FlowStateServiceStub(channel)
        metadata = server.mint.metadata(tenant, scopes=["flows:write"])
        await stub.CreateFlow(CreateFlowRequest(request_id="r1"), metadata=metadata)

Subprocess (sync; for signal handling and end-to-end CLI tests)::

    with serve_subprocess(database_url=url) as proc:
        ...  # proc.address, proc.mint(tenant)
        assert proc.stop() == 0      # SIGTERM, waits for a clean exit

`insert_flow_rows` writes many flows as rows at once, for tests and benchmarks about what
reads and bulk actions do with them rather than about creating them.

Both servers listen on 127.0.0.1 with an ephemeral port and sign tokens with a fresh random HS256
secret (issuer ``flowstate-dev``, audience ``flowstate``), except a subprocess started without a
database URL: it runs the zero-configuration path (embedded PostgreSQL and the dev secret in
its data directory), and its minter reads that secret once the server is ready.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from flowstate.core.definitions import DISCOVERY
from flowstate.core.model import ErrorCode, Flow, FlowStatus, Phase, PhaseError, PhaseState, Tenant
from flowstate.server.app import FlowstateServer
from flowstate.server.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    JwtKey,
    Scope,
    load_or_create_dev_secret,
    mint_token,
)
from flowstate.server.config import ServerSettings
from flowstate.storage.store import FlowStore

__all__ = [
    "READY_LINE",
    "UPSTREAM_DOWN",
    "RunningServer",
    "ServerProcess",
    "TestPki",
    "TokenMinter",
    "discovery_flow",
    "insert_flow_rows",
    "serve_in_process",
    "serve_subprocess",
    "write_test_pki",
]


UPSTREAM_DOWN = PhaseError(ErrorCode.EXTERNAL_SERVICE_ERROR, "upstream down")
"""A retryable phase error (the discovery definition retries EXTERNAL_SERVICE_ERROR)."""


def discovery_flow(
    tenant: Tenant,
    *,
    at: datetime,
    data_import: PhaseState = PhaseState.FAILED,
    error: PhaseError | None = UPSTREAM_DOWN,
    retry_count: int = 0,
    others: PhaseState = PhaseState.NOT_STARTED,
    status: FlowStatus = FlowStatus.FAILED,
    progress: float = 0.0,
    labels: Mapping[str, str] | None = None,
) -> Flow:
    """A discovery flow at version 1 changed last `at`, built without the core and without
    history, for `insert_flow_rows`: by default its data_import FAILED with a retryable error
    and the other phases have not started (what a bulk RETRY test starts from). `error` and
    `retry_count` apply to data_import while it is FAILED."""
    failed = data_import is PhaseState.FAILED
    states = {phase.name: others for phase in DISCOVERY.phases} | {"data_import": data_import}
    return Flow(
        flow_id=str(uuid.uuid4()),
        tenant=tenant,
        definition_name=DISCOVERY.name,
        definition_version=DISCOVERY.version,
        phases=tuple(
            Phase(
                name,
                state,
                retry_count=retry_count if failed and name == "data_import" else 0,
                error=error if failed and name == "data_import" else None,
                state_entered_at=None if state is PhaseState.NOT_STARTED else at,
                started_at=None if state is PhaseState.NOT_STARTED else at,
            )
            for name, state in states.items()
        ),
        status=status,
        progress=progress,
        version=1,
        created_at=at,
        updated_at=at,
        labels=dict(labels or {}),
    )


async def insert_flow_rows(database_url: str, flows: Sequence[Flow]) -> None:
    """Write `flows` as rows of `flows` (as the connecting user, without history), each exactly
    as given (version, timestamps, phases), 2,000 per statement: thousands in a second."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from flowstate.storage import codec

    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn)
    try:
        for start in range(0, len(flows), 2000):
            batch = [codec.flow_to_json(flow) for flow in flows[start : start + 2000]]
            await connection.execute(
                "INSERT INTO flows SELECT * FROM jsonb_populate_recordset(NULL::flows, $1::jsonb)",
                codec.dumps(batch),
            )
    finally:
        await connection.close()


READY_LINE = re.compile(r"^flowstate: serving on (\S+)$")
"""The line `flowstate serve` prints on stdout once it accepts RPCs."""

_DEFAULT_SCOPES = (Scope.READ.value, Scope.WRITE.value)


@dataclass(frozen=True)
class TokenMinter:
    """Mints bearer tokens the server under test accepts."""

    key: JwtKey
    issuer: str | None = DEV_ISSUER
    audience: str | None = DEV_AUDIENCE

    def __call__(
        self,
        tenant: Tenant,
        *,
        user: str = "tester",
        scopes: Iterable[str] = _DEFAULT_SCOPES,
        ttl: timedelta = timedelta(hours=1),
        now: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A token for `tenant` and `user` with `scopes` (default: read and write) and extra
        `claims` (e.g. ``{"groups": ["finance"]}`` for approval policies)."""
        return mint_token(
            self.key,
            tenant=tenant,
            user_id=user,
            scopes=scopes,
            ttl=ttl,
            issuer=self.issuer,
            audience=self.audience,
            now=now,
            extra_claims=claims,
        )

    def metadata(self, tenant: Tenant, **kwargs: Any) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying a fresh token (``authorization: Bearer ...``)."""
        return (("authorization", f"Bearer {self(tenant, **kwargs)}"),)

    @classmethod
    def random(cls) -> TokenMinter:
        """A minter with a fresh random HS256 secret; pass `secret` to the server."""
        return cls(JwtKey.hs256(secrets.token_urlsafe(48).encode()))

    @property
    def secret(self) -> str:
        """The HS256 secret, for FLOWSTATE_JWT_SECRET."""
        signing_key = self.key.signing_key
        if not isinstance(signing_key, bytes):
            raise ValueError(f"a {self.key.algorithm} key has no shareable secret")
        return signing_key.decode()


@dataclass
class RunningServer:
    """An in-process server under test."""

    server: FlowstateServer
    mint: TokenMinter

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return self.server.address

    def channel(self, **options: Any) -> grpc.aio.Channel:
        """A new plaintext channel to the server (close it, or use ``async with``)."""
        return grpc.aio.insecure_channel(self.address, options=list(options.items()))


@contextlib.asynccontextmanager
async def serve_in_process(
    database_url: str,
    *,
    store: FlowStore | None = None,
    minter: TokenMinter | None = None,
    **settings: Any,
) -> AsyncIterator[RunningServer]:
    """Run a server on 127.0.0.1:0 against `database_url` (already migrated) until exit.

    `store` reuses an open store (the server then does not close it); `settings` override
    `ServerSettings` fields (e.g. ``grace_period=0``, ``metrics_port=0``).
    """
    minter = minter or TokenMinter.random()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "database_url": database_url,
        "migrate": False,
        "jwt_secret": minter.secret,
        "jwt_issuer": minter.issuer,
        "jwt_audience": minter.audience,
        "grace_period": 1.0,
        "http_port": None,  # the HTTP port only when a test asks for it (http_port=0)
    }
    values.update(settings)
    server = await FlowstateServer.start(ServerSettings(**values).checked(), store=store)
    try:
        yield RunningServer(server, minter)
    finally:
        await server.stop()


@dataclass
class ServerProcess:
    """A `flowstate serve` subprocess under test."""

    process: subprocess.Popen[str]
    address: str
    mint: TokenMinter
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=2000))

    def stop(self, timeout: float = 30.0, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM), wait up to `timeout` seconds and return the exit code.

        Kills the process and raises TimeoutError when it does not exit in time.
        """
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise TimeoutError(
                f"flowstate serve did not exit {timeout}s after {sig.name}; output:\n" + self.log()
            ) from None

    def log(self) -> str:
        """The process's recent output (stdout and stderr, interleaved)."""
        return "\n".join(self.output)


def _pump(
    stream: Iterable[str], output: collections.deque[str], ready: threading.Event, found: list[str]
) -> None:
    """Copy the process's lines into `output`; signal `ready` on the ready line."""
    for raw in stream:
        line = raw.rstrip("\n")
        output.append(line)
        match = READY_LINE.match(line)
        if match and not ready.is_set():
            found.append(match.group(1))
            ready.set()
    ready.set()  # end of output: the process exited (found stays empty)


@contextlib.contextmanager
def serve_subprocess(
    *,
    database_url: str | None = None,
    data_dir: Path | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
    stop_timeout: float = 30.0,
) -> Iterator[ServerProcess]:
    """Run ``python -m flowstate.cli.main serve --port 0`` until exit; wait until it serves.

    With `database_url` (migrated) the server uses it with a fresh random secret; without, it
    starts its embedded PostgreSQL in `data_dir` (required then) in local dev mode. `env` adds
    environment variables; `args` extra flags. On exit the process gets SIGTERM (and is killed
    if it does not exit within `stop_timeout`).
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    command = [sys.executable, "-m", "flowstate.cli.main", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--http-port", "off"]  # `args` may turn it on (--http-port 0)
    minter: TokenMinter | None = None
    if database_url is not None:
        minter = TokenMinter.random()
        environment["FLOWSTATE_DATABASE_URL"] = database_url
        environment["FLOWSTATE_JWT_SECRET"] = minter.secret
        environment["FLOWSTATE_JWT_ISSUER"] = DEV_ISSUER
        environment["FLOWSTATE_JWT_AUDIENCE"] = DEV_AUDIENCE
    elif data_dir is None:
        raise ValueError("serve_subprocess needs a database_url or a data_dir")
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    environment.update(env or {})
    command += list(args)
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    output: collections.deque[str] = collections.deque(maxlen=2000)
    ready = threading.Event()
    found: list[str] = []
    assert process.stdout is not None
    pump = threading.Thread(target=_pump, args=(process.stdout, output, ready, found), daemon=True)
    pump.start()
    handle: ServerProcess | None = None
    try:
        if not ready.wait(ready_timeout) or not found:
            raise RuntimeError(
                f"flowstate serve did not become ready (exit code {process.poll()}); output:\n"
                + "\n".join(output)
            )
        if minter is None:
            assert data_dir is not None
            minter = TokenMinter(JwtKey.hs256(load_or_create_dev_secret(data_dir)))
        handle = ServerProcess(process, found[0], minter, output)
        yield handle
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        pump.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


@dataclass(frozen=True)
class TestPki:
    """PEM files of a throwaway CA, a server certificate and a client certificate it signed."""

    __test__ = False  # not a pytest test class

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_test_pki(directory: Path, *, valid_for: timedelta = timedelta(days=1)) -> TestPki:
    """Write a CA, a server certificate (``localhost``, 127.0.0.1, ::1) and a client one to
    `directory`: for TLS (``--tls-cert-file``/``--tls-key-file``, clients trust ``ca``) and mTLS
    (``--tls-client-ca-file`` = ``ca``, clients present ``client_*``). Keys are P-256."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def builder(
        subject: str, issuer: str, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + valid_for)
        )

    def write(
        stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("flowstate test CA", "flowstate test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_path, _ = write("ca", ca, ca_key)

    def leaf(
        stem: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            builder(stem, "flowstate test CA", key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return write(stem, certificate, key)

    server_cert, server_key = leaf(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ],
    )
    client_cert, client_key = leaf(
        "client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("flowstate-test-client")]
    )
    return TestPki(ca_path, server_cert, server_key, client_cert, client_key)
