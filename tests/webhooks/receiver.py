"""A webhook receiver on 127.0.0.1 for the tests: a small HTTP/1.1 server on asyncio streams.

It verifies every request's Standard Webhooks signature with its own code (base64 HMAC-SHA256
of ``id.timestamp.body``, independent of the server's `sign`), records what arrived, and
behaves as the test asks: fail the first `fail_first` requests with 500, or never answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """One request that reached the receiver."""

    message_id: str
    timestamp: int
    signature_valid: bool
    body: dict[str, Any]
    answered: int


def valid_signature(secret: str, message_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """The receiver's own check of ``webhook-signature`` (any of its space-separated values)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in header.split()
    )


@dataclass
class Receiver:
    """Records deliveries; `fail_first` requests get HTTP 500; `hang` never answers."""

    secret: str = ""
    fail_first: int = 0
    hang: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    requests: int = 0
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/hook``."""
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted(self) -> list[Delivery]:
        """Deliveries answered 2xx, in arrival order."""
        return [d for d in self.deliveries if d.answered == 204]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while True:
                    line = (await reader.readline()).decode("latin-1").strip()
                    if not line:
                        break
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                self.arrived.set()
                if self.hang:
                    await asyncio.Event().wait()  # never answers; cancelled at close
                status = 500 if self.requests <= self.fail_first else 204
                message_id = headers.get("webhook-id", "")
                timestamp = headers.get("webhook-timestamp", "0")
                self.deliveries.append(
                    Delivery(
                        message_id=message_id,
                        timestamp=int(timestamp),
                        signature_valid=valid_signature(
                            self.secret,
                            message_id,
                            timestamp,
                            body,
                            headers.get("webhook-signature", ""),
                        ),
                        body=json.loads(body),
                        answered=status,
                    )
                )
                reason = "No Content" if status == 204 else "Internal Server Error"
                writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def receiving(**options: Any) -> AsyncIterator[Receiver]:
    """Run a `Receiver` on 127.0.0.1 (an ephemeral port) until exit."""
    receiver = Receiver(**options)
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await receiver._handle(reader, writer)
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
