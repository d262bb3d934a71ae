"""Connection settings shared by the async and the sync client."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from flowstate.client._retry import RetryPolicy

__all__ = ["DEFAULT_ADDRESS", "ClientConfig", "TokenSource"]

#: Where `flowstate serve` listens by default.
DEFAULT_ADDRESS = "127.0.0.1:50051"

#: A bearer token, or a function returning the current one (called before every attempt, so a
#: refreshing token source just returns the fresh token).
TokenSource = str | Callable[[], str]

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

    def __post_init__(self) -> None:
        """Reject an mTLS half-configuration early, with a clear message."""
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("mTLS needs both private_key and certificate_chain")

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
        """Per-call metadata: the bearer token, read from its source now."""
        if self.token is None:
            return ()
        token = self.token() if callable(self.token) else self.token
        return (("authorization", f"Bearer {token}"),) if token else ()
