"""Opaque page tokens and change cursors (AIP-158).

A token is URL-safe base64 of a small JSON document: what it continues (`kind`), a short hash
of the query it belongs to, and the keyset position. Tokens are not signed: a forged one can
only move the position within the caller's own tenant, because every query is tenant-scoped.
A token that does not decode, or belongs to another query, is MALFORMED_REQUEST.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from flowstate.storage.codec import dumps
from flowstate.storage.limits import malformed

__all__ = ["decode_token", "encode_token", "query_hash"]


def query_hash(query: Any) -> str:
    """A short stable hash of a JSON-able description of a query."""
    digest = hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:16]


def encode_token(kind: str, query: str, position: list[Any]) -> str:
    """The opaque token for `position` in the results of `query` (a `query_hash`)."""
    raw = dumps({"k": kind, "q": query, "p": position}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, kind: str, query: str, *, field: str = "page_token") -> list[Any]:
    """The position in `token`; MALFORMED_REQUEST naming `field` when it is not ours."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise malformed(field, f"{field} is not a valid token") from None
    if not isinstance(data, dict) or data.get("k") != kind or not isinstance(data.get("p"), list):
        raise malformed(field, f"{field} is not a valid token")
    if data.get("q") != query:
        raise malformed(field, f"{field} belongs to a different query")
    position: list[Any] = data["p"]
    return position
