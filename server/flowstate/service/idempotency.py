"""Request fingerprints: what a request id stands for.

A request id replays only the request it was first used for. The fingerprint is the SHA-256 of
the canonical JSON of (operation, payload): equal requests give equal fingerprints whatever the
order of their mapping keys or sets.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flowstate.storage.codec import dumps_canonical

__all__ = ["fingerprint"]


def _canonical(value: Any) -> Any:
    """JSON `default` hook: the canonical form of what the JSON encoder cannot write itself.

    Dataclasses (commands, errors) become their fields plus their type name, sets sorted
    lists, other mappings dicts, datetimes ISO text. (str enums are written as their value
    by the encoder itself.)
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, set | frozenset):
        return sorted(value, key=lambda item: json.dumps(item, default=_canonical))
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def fingerprint(operation: str, **payload: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of (operation, payload).

    A request's metadata arrives as an `EncodedJson`: its text is spliced in, not re-encoded.
    """
    canonical = dumps_canonical(
        {"operation": operation, **payload}, default=_canonical, allow_nan=True
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
