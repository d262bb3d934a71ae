"""The HTTP port: the API over Connect and gRPC-Web, and the web console, on the server's loop.

One ASGI application (`WebApp`), served by uvicorn on the event loop of the gRPC server
(`HttpEndpoint`; uvicorn's own signal handling is off: `flowstate serve` owns the signals):

- ``POST /flowstate.v1.FlowStateService/<Method>``: connectrpc's application over the gRPC
  servicer (`flowstate.server.connect`): Connect (JSON and binary, unary and server streaming)
  and gRPC-Web, so ``curl -H 'content-type: application/json'`` works for every unary RPC;
- ``GET /`` and every other ``GET``: the console (``console/dist``, built by ``make setup``),
  read into memory at start, so only the files that exist are ever served (no path handling);
  a path that names no file gets ``index.html`` (the single-page app routes it);
- ``POST /console/signin`` (local dev mode only): exchanges a one-time sign-in ticket (printed by
  `flowstate serve` and ``flowstate console-url``) for a session token; see `SignIn`.

Security: same-origin by default. A request with an ``Origin`` header that is neither this
server's own origin nor one of the configured origins (``--http-cors-origins``) is refused with
403 before it reaches anything; configured origins get CORS headers and preflight answers.
Every response carries a Content-Security-Policy that allows only this origin's scripts, styles
and connections, and no framing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import uvicorn

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.server.auth import Authenticator, JwtKey, mint_token
from flowstate.server.errors import CORRELATION_ID_HEADER

__all__ = [
    "CONSOLE_CSP",
    "SIGNIN_AUDIENCE",
    "SIGNIN_PATH",
    "ConsoleAssets",
    "HttpEndpoint",
    "SignIn",
    "WebApp",
    "default_console_dir",
    "mint_signin_ticket",
]

_log = logging.getLogger("flowstate.server.web")

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]
_Asgi = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

SIGNIN_PATH: Final = "/console/signin"
SIGNIN_AUDIENCE: Final = "flowstate-console-signin"
"""`aud` of a sign-in ticket: never accepted as an API token (the API checks its own audience)."""

CONSOLE_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = (
    (b"content-security-policy", CONSOLE_CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_CORS_ALLOW_HEADERS: Final = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, "
    "grpc-timeout, x-grpc-web, x-user-agent, x-correlation-id"
)
_CORS_EXPOSE_HEADERS: Final = (
    "grpc-status, grpc-message, grpc-status-details-bin, "
    f"{CORRELATION_ID_HEADER}, trailer-{CORRELATION_ID_HEADER}"
)
_MAX_SIGNIN_BODY: Final = 16 * 1024
_NOT_BUILT: Final = (
    b"<!doctype html><title>Flowstate</title><p>The console is not built: run "
    b"<code>make setup</code> (it builds <code>console/dist</code>), then restart the server.</p>"
)


def default_console_dir() -> Path:
    """``console/dist`` of the source tree this package runs from (an editable install)."""
    return Path(__file__).resolve().parents[3] / "console" / "dist"


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    cache: str


class ConsoleAssets:
    """The console's built files, in memory: path -> bytes and content type."""

    def __init__(self, files: Mapping[str, _Asset]) -> None:
        """Use `load`."""
        self._files = dict(files)

    @classmethod
    def load(cls, directory: Path) -> ConsoleAssets:
        """Every file under `directory` (none when it does not exist: `index` says so)."""
        files: dict[str, _Asset] = {}
        if directory.is_dir():
            for path in sorted(directory.rglob("*")):
                if not path.is_file():
                    continue
                url = "/" + path.relative_to(directory).as_posix()
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                if content_type.startswith("text/") or content_type.endswith("javascript"):
                    content_type += "; charset=utf-8"
                # The bundle's name does not change between builds: revalidate every time.
                files[url] = _Asset(path.read_bytes(), content_type, "no-cache")
        return cls(files)

    @property
    def built(self) -> bool:
        """Whether the console was found (``index.html``)."""
        return "/index.html" in self._files

    def get(self, path: str) -> _Asset:
        """The file at `path`, else ``index.html`` (the app's own routes), else a hint page."""
        asset = self._files.get(path) or self._files.get("/index.html")
        if asset is None:
            return _Asset(_NOT_BUILT, "text/html; charset=utf-8", "no-cache")
        return asset


class SignIn:
    """Local dev mode's sign-in link: a one-time, short-lived ticket exchanged for a token.

    The ticket is a JWT signed with the dev secret, audience `SIGNIN_AUDIENCE` (so it is never an
    API token), valid a few minutes. The console finds it in the URL *fragment* (never sent to
    a server, never in access logs or Referer), removes it from the address bar and history
    entry (``history.replaceState``), and POSTs it here; the answer is a session token with the
    ticket's tenant, user and scopes. A ticket is accepted once: a copy found later in the
    browser's history is worthless.
    """

    def __init__(
        self,
        key: JwtKey,
        *,
        issuer: str | None,
        audience: str | None,
        session_ttl: timedelta = timedelta(hours=12),
    ) -> None:
        """Sign and verify with `key` (HS256); sessions get `issuer` / `audience` (the API's)."""
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._session_ttl = session_ttl
        self._tickets = Authenticator(key, issuer=issuer, audience=SIGNIN_AUDIENCE)
        self._used: dict[str, float] = {}

    def exchange(self, ticket: str) -> dict[str, Any]:
        """The session of a valid, unused ticket; UNAUTHENTICATED otherwise."""
        principal = self._tickets.authenticate(f"Bearer {ticket}")
        now = time.time()
        self._used = {t: exp for t, exp in self._used.items() if exp > now}
        if ticket in self._used:
            raise FlowStateError(
                ErrorCode.UNAUTHENTICATED, "this sign-in link was already used", retry_allowed=False
            )
        self._used[ticket] = principal.expires_at
        scopes = sorted(s.value for s in principal.scopes)
        token = mint_token(
            self._key,
            tenant=principal.tenant,
            user_id=principal.user_id,
            scopes=scopes,
            ttl=self._session_ttl,
            issuer=self._issuer,
            audience=self._audience,
        )
        return {"token": token}


def mint_signin_ticket(
    key: JwtKey,
    *,
    tenant: Tenant,
    user_id: str,
    scopes: list[str],
    issuer: str | None,
    ttl: timedelta = timedelta(minutes=10),
) -> str:
    """A one-time sign-in ticket (see `SignIn`), unique even for identical claims."""
    return mint_token(
        key,
        tenant=tenant,
        user_id=user_id,
        scopes=scopes,
        ttl=ttl,
        issuer=issuer,
        audience=SIGNIN_AUDIENCE,
        token_id=secrets.token_hex(16),
    )


def _header(scope: _Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _own_origin(scope: _Scope) -> str | None:
    host = _header(scope, b"host")
    return f"{scope.get('scheme', 'http')}://{host}" if host else None


async def _respond(
    send: _Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *_SECURITY_HEADERS,
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: _Receive, limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json_error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"code": code, "message": message}).encode()


class WebApp:
    """The ASGI application of the HTTP port (see the module docstring)."""

    def __init__(
        self,
        api: _Asgi,
        *,
        api_prefix: str,
        console: ConsoleAssets,
        signin: SignIn | None = None,
        cors_origins: frozenset[str] = frozenset(),
    ) -> None:
        """`api` serves every path under `api_prefix` (``/flowstate.v1.FlowStateService/``)."""
        self._api = api
        self._api_prefix = api_prefix
        self._console = console
        self._signin = signin
        self._cors_origins = cors_origins

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Route one request (lifespan is off; websockets are refused by uvicorn's config)."""
        if scope["type"] != "http":
            return
        origin = _header(scope, b"origin")
        cors: tuple[tuple[bytes, bytes], ...] = ()
        if origin is not None and origin != _own_origin(scope):
            if origin not in self._cors_origins:
                status, body = _json_error(
                    403, "permission_denied", f"origin {origin} is not allowed (CORS)"
                )
                await _respond(send, status, body, "application/json")
                return
            cors = (
                (b"access-control-allow-origin", origin.encode()),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers", _CORS_EXPOSE_HEADERS.encode()),
            )
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "OPTIONS":
            await _respond(
                send,
                204 if cors else 405,
                b"",
                "text/plain",
                (
                    *cors,
                    (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
                    (b"access-control-allow-headers", _CORS_ALLOW_HEADERS.encode()),
                    (b"access-control-max-age", b"600"),
                )
                if cors
                else (),
            )
            return
        if path.startswith(self._api_prefix):
            await self._api(scope, receive, self._with_headers(send, cors))
            return
        if path == SIGNIN_PATH:
            await self._exchange(scope, receive, send, cors)
            return
        if method not in ("GET", "HEAD"):
            status, body = _json_error(405, "unimplemented", f"{method} {path} is not served")
            await _respond(send, status, body, "application/json")
            return
        asset = self._console.get(path)
        await _respond(
            send,
            200,
            b"" if method == "HEAD" else asset.body,
            asset.content_type,
            ((b"cache-control", asset.cache.encode()), *cors),
        )

    @staticmethod
    def _with_headers(send: _Send, extra: tuple[tuple[bytes, bytes], ...]) -> _Send:
        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), *_SECURITY_HEADERS, *extra],
                }
            await send(message)

        return wrapped

    async def _exchange(
        self, scope: _Scope, receive: _Receive, send: _Send, cors: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        if self._signin is None:
            status, body = _json_error(
                404, "not_found", "sign-in links exist only in local dev mode: paste a token"
            )
        elif scope["method"] != "POST":
            status, body = _json_error(405, "unimplemented", "POST the ticket")
        else:
            raw = await _read_body(receive, _MAX_SIGNIN_BODY)
            try:
                ticket = json.loads(raw or b"").get("ticket") if raw else None
            except (ValueError, AttributeError):
                ticket = None
            if not isinstance(ticket, str) or not ticket:
                status, body = _json_error(
                    400, "invalid_argument", 'send {"ticket": "..."} as JSON'
                )
            else:
                try:
                    status, body = 200, json.dumps(self._signin.exchange(ticket)).encode()
                except FlowStateError as error:
                    status, body = _json_error(401, "unauthenticated", error.message)
        await _respond(
            send, status, body, "application/json", ((b"cache-control", b"no-store"), *cors)
        )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: `flowstate serve` owns SIGTERM and SIGINT."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # the workers of `flowstate serve --workers N` share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class HttpEndpoint:
    """uvicorn serving a `WebApp` on the running event loop; `close` stops it."""

    def __init__(self, server: _EmbeddedServer, task: asyncio.Task[None], port: int) -> None:
        """Use `start`."""
        self._server = server
        self._task = task
        self.port = port
        """The bound port (the actual one when asked for 0)."""

    @classmethod
    async def start(
        cls,
        app: WebApp,
        host: str,
        port: int,
        *,
        tls: tuple[Path | None, Path | None, Path | None] = (None, None, None),
        reuse_port: bool = False,
    ) -> HttpEndpoint:
        """Bind `host`:`port` (OSError if taken) and serve until `close`.

        `tls`: (certificate chain, key, client CA) as for the gRPC port: HTTPS when the first
        two are set, client certificates required when the third is. `reuse_port`: bind with
        SO_REUSEPORT (the port is shared by the workers of one `flowstate serve`).
        """
        cert, key, client_ca = tls
        sock = _bind(host, port, reuse_port=reuse_port)
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            ssl_certfile=cert,
            ssl_keyfile=key,
            ssl_ca_certs=client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca is not None else ssl.CERT_NONE,
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=10,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="flowstate-http")
        while not server.started:
            if task.done():
                sock.close()
                task.result()  # raises what stopped it
                raise OSError(f"the HTTP server on port {bound} stopped at start")
            await asyncio.sleep(0.01)
        return cls(server, task, bound)

    async def close(self, grace: float) -> None:
        """Stop accepting; give open requests `grace` seconds; then cancel what is left."""
        self._server.config.timeout_graceful_shutdown = max(int(grace), 1)
        self._server.should_exit = True
        await self._task
