"""Connection settings shared by the async and the sync client.

Settings left unset come from the environment, with the CLI's names (explicit arguments win):

- ``FLOWSTATE_ADDRESS``: ``host:port`` of the server (else ``127.0.0.1:50051``);
- ``FLOWSTATE_TOKEN``: the bearer token;
- ``FLOWSTATE_TLS_CA_FILE``, ``FLOWSTATE_TLS_CERT_FILE`` + ``FLOWSTATE_TLS_KEY_FILE`` (mTLS), and
  ``FLOWSTATE_TLS=1`` for TLS with the system roots: read only when no TLS argument is given.

Plaintext goes only to loopback hosts (127.0.0.0/8, ::1, localhost) and unix sockets unless
`allow_insecure` says so (a bearer token would travel unencrypted), as in the TypeScript and Go
SDKs.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from flowstate.client._retry import RetryPolicy
from flowstate.client._version import __version__

__all__ = ["CLIENT_HEADER", "DEFAULT_ADDRESS", "ClientConfig", "TokenSource", "is_local_address"]

#: Where `flowstate serve` listens by default.
DEFAULT_ADDRESS = "127.0.0.1:50051"

#: Request metadata naming this SDK and its version (the server counts calls by it).
CLIENT_HEADER = ("x-flowstate-client", f"python/{__version__}")

#: A bearer token, or a function returning the current one, or an awaitable of it (called
#: before every attempt, so a refreshing token source just returns the fresh token). The sync
#: client accepts only functions returning a string.
TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]

_TRUE = frozenset({"1", "true", "yes", "on"})


def is_local_address(address: str) -> bool:
    """Whether a gRPC target names a unix socket or a loopback host (plaintext is safe there)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    target = address
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:", "passthrough:///"):
        if target.startswith(prefix):
            target = target[len(prefix) :]
            break
    host = target
    if target.startswith("["):
        host = target[1 : target.find("]")] if "]" in target else target
    elif target.count(":") == 1:
        host = target.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_pem(environ: Mapping[str, str], name: str) -> bytes | None:
    path = environ.get(name)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}={path}: cannot read it ({exc.strerror})") from exc


#: Reconnection policy of status streams: keep trying for two minutes of consecutive failures
#: (a server restart, a rolling deploy), never giving up earlier because of an attempt count.
DEFAULT_WATCH_RETRY = RetryPolicy(
    max_attempts=None, initial_backoff=0.1, max_backoff=5.0, deadline=120.0
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Everything a client needs to reach the server; built from the client's keyword options."""

    address: str = DEFAULT_ADDRESS
    token: TokenSource | None = None
    secure: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    timeout: float | None = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    watch_retry: RetryPolicy = DEFAULT_WATCH_RETRY
    channel_options: Sequence[tuple[str, Any]] = ()
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        """Reject an mTLS half-configuration and plaintext to a remote host."""
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("mTLS needs both private_key and certificate_chain")
        if not self.uses_tls and not self.allow_insecure and not is_local_address(self.address):
            raise ValueError(
                f"refusing plaintext to {self.address}: the bearer token would travel "
                "unencrypted; use TLS (secure=True or root_certificates), or "
                "allow_insecure=True on a trusted network"
            )

    @classmethod
    def from_options(
        cls,
        *,
        address: str | None,
        token: TokenSource | None,
        secure: bool | None,
        root_certificates: bytes | None,
        private_key: bytes | None,
        certificate_chain: bytes | None,
        allow_insecure: bool,
        timeout: float | None,
        retry: RetryPolicy | None,
        watch_retry: RetryPolicy | None,
        channel_options: Sequence[tuple[str, Any]],
        environ: Mapping[str, str] | None = None,
    ) -> ClientConfig:
        """The client's settings: the arguments given, the environment for the rest."""
        env = os.environ if environ is None else environ
        explicit_tls = secure is not None or any(
            value is not None for value in (root_certificates, private_key, certificate_chain)
        )
        if not explicit_tls:
            secure = env.get("FLOWSTATE_TLS", "").strip().lower() in _TRUE
            root_certificates = _read_pem(env, "FLOWSTATE_TLS_CA_FILE")
            certificate_chain = _read_pem(env, "FLOWSTATE_TLS_CERT_FILE")
            private_key = _read_pem(env, "FLOWSTATE_TLS_KEY_FILE")
        return cls(
            address=address or env.get("FLOWSTATE_ADDRESS") or DEFAULT_ADDRESS,
            token=token if token is not None else (env.get("FLOWSTATE_TOKEN") or None),
            secure=bool(secure),
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            allow_insecure=allow_insecure,
            timeout=timeout,
            retry=retry if retry is not None else RetryPolicy(),
            watch_retry=watch_retry if watch_retry is not None else DEFAULT_WATCH_RETRY,
            channel_options=tuple(channel_options),
        )

    @property
    def uses_tls(self) -> bool:
        """Whether the channel is encrypted (asked for, or implied by a certificate)."""
        return (
            self.secure or self.root_certificates is not None or self.certificate_chain is not None
        )

    def grpc_options(self) -> list[tuple[str, Any]]:
        """`channel_options` plus the SDK's defaults for the keys they leave unset.

        gRPC's own reconnection backoff grows to two minutes while a server is down; a call made
        during that backoff fails at once even if the server is back. Capping it near the retry
        policy's `max_backoff` lets the SDK's retries (and resumed streams) reach a restarted
        server as soon as it listens again.
        """
        options = list(self.channel_options)
        given = {key for key, _ in options}
        cap_ms = int(max(self.retry.max_backoff, self.watch_retry.max_backoff, 1.0) * 1000)
        defaults = {
            "grpc.initial_reconnect_backoff_ms": 100,
            "grpc.max_reconnect_backoff_ms": cap_ms,
        }
        options += [(key, value) for key, value in defaults.items() if key not in given]
        return options

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials (system roots unless `root_certificates`), or None for plaintext."""
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the SDK's name and version, the bearer token read from its source.

        For the sync client: an async token source is refused with a TypeError.
        """
        token = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(token):
            if inspect.iscoroutine(token):
                token.close()
            raise TypeError("the sync FlowstateClient needs a token source that returns a str")
        return self._with_token(token)

    async def metadata_async(self) -> tuple[tuple[str, str], ...]:
        """`metadata` for the async client: the token source may be a coroutine function."""
        token = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(token):
            token = await token
        return self._with_token(token)

    @staticmethod
    def _with_token(token: object) -> tuple[tuple[str, str], ...]:
        if token is None or token == "":
            return (CLIENT_HEADER,)
        return (CLIENT_HEADER, ("authorization", f"Bearer {token}"))
