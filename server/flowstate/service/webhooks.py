"""Webhooks: Standard Webhooks signing, the target policy (SSRF), the sender, the use cases.

**Signing** follows the Standard Webhooks specification (https://www.standardwebhooks.com/):
each request carries ``webhook-id`` (stable across retries and replays of one change:
``evt_<flow id>_<version>``, so a receiver deduplicates by it), ``webhook-timestamp`` (Unix
seconds of the attempt) and ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over
``id.timestamp.body`` keyed with the secret's bytes. Secrets are ``whsec_`` + base64 of 24 to
64 bytes; the server makes 32 random bytes when none is given. No library on PyPI that we could
pin implements the specification (the reference ``standardwebhooks`` package is not published
there), so it is implemented here and tested against the specification's published example.

**Target policy** (server-side request forgery): a webhook URL is ``https`` with a host name
or address, no user info; every address its host resolves to must be public, that is not
private, loopback, link-local, multicast, reserved or unspecified (IPv4-mapped IPv6 addresses
are checked as their IPv4 address), unless it lies in a network the operator allowed
(``FLOWSTATE_WEBHOOK_ALLOW_NETWORKS``, e.g. ``127.0.0.0/8`` for local development). ``http``
is accepted only when every address is in an allowed network. The check runs when the webhook is
created and again before every request, and the request then goes to the address that was
checked (the host name travels in ``Host`` and TLS SNI), so a DNS answer that changes between
the check and the connection (rebinding) cannot redirect it.

**Requests** have a total time limit, never follow redirects (a 3xx is a failure), read at most
`WebhookSender.max_response_bytes` of the answer and ignore the rest. A 2xx acknowledges the
delivery; anything else is a failed attempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from flowstate.core.filters import Filter, parse_filter
from flowstate.core.model import FlowStatus, Tenant
from flowstate.storage.changes import LogPosition, TenantChange, TenantCursor
from flowstate.storage.limits import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_FILTER_TERMS,
    MAX_NAME_LENGTH,
    MAX_WEBHOOK_URL_LENGTH,
    check_name,
    check_text,
    malformed,
)
from flowstate.storage.store import FlowStore
from flowstate.storage.webhooks_repo import StoredWebhook

__all__ = [
    "SECRET_PREFIX",
    "DeliveryResult",
    "TargetPolicy",
    "TargetRefusedError",
    "WebhookSender",
    "WebhookService",
    "change_body",
    "event_id",
    "new_secret",
    "secret_key",
    "sign",
    "webhook_filter",
]

SECRET_PREFIX: Final = "whsec_"
_SECRET_BYTES: Final = 32
_MIN_SECRET_BYTES: Final = 24
_MAX_SECRET_BYTES: Final = 64
_USER_AGENT: Final = "flowstate-webhooks/1"
_MAX_ERROR: Final = 500

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def webhook_filter(text: str, *, field: str = "filter") -> Filter | None:
    """A webhook's ``filter`` as a tree (None when blank): the filter language of ListFlows and
    WatchFlows (docs/filters.md), evaluated on each change as WatchFlows does (on the flow as
    the change left it), without ``stuck`` and relative times (``updated > -1h``), which
    depend on the time of evaluation and so mean nothing in a filter kept for the webhook's
    life. MALFORMED_REQUEST on `field` with the ``position`` of the problem otherwise."""
    check_text(field, text, MAX_FILTER_LENGTH)
    now = datetime.now(UTC)  # resolves nothing: `timeless` refuses what would need it
    return parse_filter(
        text,
        now=now,
        stuck_before=now,
        field=field,
        max_depth=MAX_FILTER_DEPTH,
        max_terms=MAX_FILTER_TERMS,
        timeless=True,
    )


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret (MALFORMED_REQUEST, field ``secret``, otherwise)."""
    if not secret.startswith(SECRET_PREFIX):
        raise malformed("secret", f"secret must start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise malformed("secret", f"secret must be {SECRET_PREFIX} followed by base64") from None
    if not _MIN_SECRET_BYTES <= len(key) <= _MAX_SECRET_BYTES:
        raise malformed(
            "secret", f"secret must hold {_MIN_SECRET_BYTES} to {_MAX_SECRET_BYTES} bytes"
        )
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event_id(flow_id: str, version: int) -> str:
    """The ``webhook-id`` of one change: the same for every attempt and replay of it."""
    return f"evt_{flow_id}_{version}"


def change_body(change: TenantChange) -> bytes:
    """The JSON body delivering one change (``type`` ``flow.changed``; docs/webhooks.md).

    Enum values are the proto enums' names without their prefix (``DATA_GATHERING``,
    ``IN_PROGRESS``, ``TRANSITION``), as in the JSON form of the API."""
    entry = change.entry
    data: dict[str, Any] = {
        "flow_id": change.flow_id,
        "flow_version": entry.flow_version,
        "definition_name": change.definition_name,
        "kind": entry.kind.name,
        "phase": entry.phase,
        "from_state": entry.from_state.name if entry.from_state else None,
        "to_state": entry.to_state.name if entry.to_state else None,
        "status_before": entry.status_before.name,
        "status_after": entry.status_after.name,
        "progress": entry.progress_after,
        "reason": entry.reason,
        "user_id": entry.user_id,
        "request_id": entry.request_id,
        "occurred_at": entry.occurred_at.isoformat(),
        "cursor": TenantCursor(change.position).encode(),
    }
    if entry.error is not None:
        data["error"] = {"code": entry.error.error_code.name, "message": entry.error.message}
    document = {"type": "flow.changed", "timestamp": entry.occurred_at.isoformat(), "data": data}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


class TargetRefusedError(Exception):
    """A webhook URL or the addresses it resolves to are not allowed (the reason is the text)."""


def _plain(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _internal(address: Address) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: its parts and the addresses it may be reached at."""

    scheme: str
    host: str
    port: int
    addresses: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """Which webhook URLs are allowed (see the module doc)."""

    allowed_networks: tuple[Network, ...] = ()

    def _allowed(self, address: Address) -> bool:
        plain = _plain(address)
        return any(plain in network for network in self.allowed_networks)

    @staticmethod
    def parse(url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of `url`; TargetRefusedError when it is not a usable URL."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise TargetRefusedError(f"not a valid URL ({exc})") from None
        if parts.scheme not in ("https", "http"):
            raise TargetRefusedError("the URL must be https")
        if parts.username is not None or parts.password is not None:
            raise TargetRefusedError("the URL must not carry user info")
        host = parts.hostname
        if not host:
            raise TargetRefusedError("the URL has no host")
        if parts.fragment:
            raise TargetRefusedError("the URL must not have a fragment")
        return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)

    async def check(self, url: str) -> Target:
        """Resolve `url`'s host and check every address; TargetRefusedError with the reason."""
        scheme, host, port = self.parse(url)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise TargetRefusedError(f"{host} does not resolve ({exc.strerror or exc})") from None
        addresses: list[Address] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise TargetRefusedError(f"{host} does not resolve")
        for address in addresses:
            if _internal(_plain(address)) and not self._allowed(address):
                raise TargetRefusedError(
                    f"{host} resolves to {address}, a private, loopback or link-local address "
                    "(an operator may allow its network: FLOWSTATE_WEBHOOK_ALLOW_NETWORKS)"
                )
        if scheme == "http" and not all(self._allowed(a) for a in addresses):
            raise TargetRefusedError("the URL must be https (http only to allowed networks)")
        return Target(scheme, host, port, tuple(addresses))


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one attempt got: acknowledged (2xx) or not, the HTTP status (0: none), the error."""

    ok: bool
    status: int = 0
    error: str = ""


class WebhookSender:
    """Signs and POSTs webhook bodies under the target policy (see the module doc)."""

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        timeout: float = 10.0,
        max_response_bytes: int = 64 * 1024,
    ) -> None:
        """One HTTP client for every delivery of this server (closed by `close`)."""
        self.policy = policy
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the policy checks the real target
            timeout=httpx.Timeout(timeout),
            headers={"user-agent": _USER_AGENT},
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def send(self, url: str, secret: str, message_id: str, body: bytes) -> DeliveryResult:
        """One signed attempt (never raises for the receiver's faults)."""
        try:
            target = await self.policy.check(url)
        except TargetRefusedError as exc:
            return DeliveryResult(False, 0, f"target refused: {exc}")
        timestamp = int(time.time())
        address = target.addresses[0]
        pinned = httpx.URL(url).copy_with(host=str(address))
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port != default_port:
            host_header += f":{target.port}"
        headers = {
            "host": host_header,
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with asyncio.timeout(self.timeout):
                request = self._client.build_request(
                    "POST", pinned, content=body, headers=headers, extensions=extensions
                )
                response = await self._client.send(request, stream=True)
                try:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= self.max_response_bytes:
                            break  # the rest is not ours to read
                finally:
                    await response.aclose()
        except TimeoutError:
            return DeliveryResult(False, 0, f"no answer within {self.timeout:g}s")
        except httpx.HTTPError as exc:
            return DeliveryResult(False, 0, _clip(f"{type(exc).__name__}: {exc}"))
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult(True, status)
        if 300 <= status < 400:
            return DeliveryResult(False, status, f"HTTP {status}: redirects are not followed")
        return DeliveryResult(False, status, f"HTTP {status}")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


def _check_statuses(statuses: Sequence[FlowStatus]) -> tuple[str, ...]:
    return tuple(sorted({FlowStatus(status).value for status in statuses}))


class WebhookService:
    """The webhook use cases of a tenant: create, list, delete, test, replay."""

    def __init__(self, store: FlowStore, sender: WebhookSender) -> None:
        """Use `store` for subscriptions and `sender` for test deliveries and URL checks."""
        self._store = store
        self._sender = sender

    async def create(
        self,
        tenant: Tenant,
        *,
        url: str,
        statuses: Sequence[FlowStatus],
        definition_name: str,
        secret: str,
        filter_text: str = "",
        now: datetime,
    ) -> tuple[StoredWebhook, str]:
        """A new subscription and its secret (MALFORMED_REQUEST for a refused URL, secret or
        filter: `webhook_filter`)."""
        check_text("url", url, MAX_WEBHOOK_URL_LENGTH)
        webhook_filter(filter_text)  # refused here, with its position, rather than at delivery
        if definition_name:
            check_name("definition_name", definition_name)
        check_text("definition_name", definition_name, MAX_NAME_LENGTH)
        if secret:
            secret_key(secret)
        else:
            secret = new_secret()
        try:
            await self._sender.policy.check(url)
        except TargetRefusedError as exc:
            raise malformed("url", f"url refused: {exc}") from None
        stored = await self._store.webhooks.create(
            tenant,
            url=url,
            secret=secret,
            statuses=_check_statuses(statuses),
            definition_name=definition_name,
            filter=filter_text,
            now=now,
        )
        return stored, secret

    async def list(self, tenant: Tenant) -> tuple[StoredWebhook, ...]:
        """Every subscription of `tenant`."""
        return await self._store.webhooks.list_all(tenant)

    async def delete(self, tenant: Tenant, webhook_id: str) -> None:
        """Delete one (WEBHOOK_NOT_FOUND)."""
        await self._store.webhooks.delete(tenant, webhook_id)

    async def test(self, tenant: Tenant, webhook_id: str) -> tuple[str, DeliveryResult]:
        """Send a ``webhook.test`` event now: (its webhook-id, what the receiver answered)."""
        stored, secret = await self._store.webhooks.get(tenant, webhook_id)
        message_id = f"test_{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "type": "webhook.test",
                "timestamp": datetime.now(UTC).isoformat(),
                "data": {"webhook_id": stored.id},
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        return message_id, await self._sender.send(stored.url, secret, message_id, body)

    async def replay(
        self,
        tenant: Tenant,
        webhook_id: str,
        *,
        after_cursor: str = "",
        since: datetime | None = None,
    ) -> StoredWebhook:
        """Move the cursor (after a cursor, from a time, or to now) and enable the webhook."""
        if after_cursor and since is not None:
            raise malformed("after_cursor", "give after_cursor or since_time, not both")
        position: LogPosition | None = None
        if after_cursor:
            decoded = TenantCursor.decode(after_cursor)
            if decoded.skip:
                raise malformed("after_cursor", "after_cursor must be a webhook delivery's cursor")
            position = decoded.position
        return await self._store.webhooks.rewind(tenant, webhook_id, position=position, since=since)
