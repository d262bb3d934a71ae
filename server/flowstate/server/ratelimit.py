"""Per-tenant fair use: a token bucket per (tenant, RPC family), checked in the `rpc` wrapper.

Families come from the scope a method needs (`family_of`): ``read`` (flows:read calls),
``stream`` (opening a WatchFlow / WatchFlows stream: a stream is limited when it opens, not
per event), ``write`` (flows:write, definitions:write) and ``admin`` (flows:admin,
webhooks:admin). Each (tenant, family) has a bucket of `burst` tokens refilled at `rate`
tokens per second; a call takes one. An empty bucket refuses the call with RESOURCE_EXHAUSTED /
RATE_LIMITED and a ``google.rpc.RetryInfo`` delay: when the next token will be there. Nothing
is applied for a refused call, so the SDKs retry it after that delay.

Defaults (`DEFAULT_LIMITS`, per tenant and per replica): read 5000/s (burst 10000), write
2000/s (4000), stream 100/s (200), admin 50/s (100): above what one replica serves on the
benchmark machine (bench/RESULTS.md), so they stop runaway clients without touching normal
load; an operator sets them from the capacity to share (docs/operations.md, "Rate limits").
``FLOWSTATE_RATE_LIMITS`` overrides them (``read=500:1000,write=200:400``,
``family=rate[:burst]``; a family left out keeps its default; ``off`` disables limiting).

**Replicas.** Buckets live in each server process's memory (a check costs a dict lookup, no
round trip): when a tenant's calls are spread over N processes (replicas, and the workers of
``serve --workers``), the tenant's limit is about N times the configured one, so configure
``limit / N`` for a budget across all of them. A
Postgres-backed bucket would make the limit exact but would add a database round trip to every
call, the very resource a noisy tenant exhausts. Memory stays bounded: buckets that have filled
up again are dropped (a full bucket is the same as none) when more than `MAX_BUCKETS` exist.

The clock is `time.monotonic`, passed in so tests drive it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.server.auth import Scope

__all__ = [
    "DEFAULT_LIMITS",
    "FAMILIES",
    "MAX_BUCKETS",
    "Limit",
    "RateLimiter",
    "family_of",
    "parse_limits",
]

FAMILIES: Final = ("read", "write", "stream", "admin")
"""The RPC families, each with its own bucket per tenant."""
MAX_BUCKETS: Final = 100_000
"""Buckets kept before full ones are dropped."""


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate` tokens per second, at most `burst` saved up."""

    rate: float
    burst: float


DEFAULT_LIMITS: Final[Mapping[str, Limit]] = {
    "read": Limit(5000, 10000),
    "write": Limit(2000, 4000),
    "stream": Limit(100, 200),
    "admin": Limit(50, 100),
}
"""Per tenant and per replica (module doc)."""


def family_of(scope: Scope, *, streaming: bool) -> str:
    """The family of a method that needs `scope` (streams: ``stream``)."""
    if streaming:
        return "stream"
    if scope is Scope.READ:
        return "read"
    if scope in (Scope.WRITE, Scope.DEFINITIONS_WRITE):
        return "write"
    return "admin"


def parse_limits(value: str) -> dict[str, Limit] | None:
    """``FLOWSTATE_RATE_LIMITS``: None for ``off``, else the defaults with the given overrides.

    ValueError (with the reason) for anything else.
    """
    text = value.strip().lower()
    if text in ("off", "none", "0"):
        return None
    limits = dict(DEFAULT_LIMITS)
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        family, sep, numbers = item.partition("=")
        rate_text, sep2, burst_text = numbers.partition(":")
        if family not in FAMILIES or not sep:
            raise ValueError(f"{item!r}: expected family=rate[:burst], family one of {FAMILIES}")
        try:
            rate = float(rate_text)
            burst = float(burst_text) if sep2 else max(1.0, rate)
        except ValueError:
            raise ValueError(f"{item!r}: rate and burst must be numbers") from None
        if not (rate > 0 and burst >= 1 and math.isfinite(rate) and math.isfinite(burst)):
            raise ValueError(f"{item!r}: rate must be > 0 and burst >= 1")
        limits[family] = Limit(rate, burst)
    return limits


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Token buckets per (tenant, family) in this replica (see the module doc)."""

    def __init__(
        self, limits: Mapping[str, Limit], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Limit each family of `limits` (a family absent from it is not limited)."""
        self._limits = dict(limits)
        self._clock = clock
        self._buckets: dict[tuple[Tenant, str], _Bucket] = {}

    @property
    def limits(self) -> Mapping[str, Limit]:
        """The limit of each family."""
        return self._limits

    def take(self, tenant: Tenant, family: str) -> float:
        """Take a token: 0.0, or (the bucket is empty) the seconds until the next one is there,
        rounded up to the millisecond (so at least 0.001, and a retry after it finds a token).

        The hot path of every call: no exception, no allocation once the bucket exists.
        """
        limit = self._limits.get(family)
        if limit is None:
            return 0.0
        now = self._clock()
        key = (tenant, family)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._sweep(now)
            bucket = self._buckets[key] = _Bucket(limit.burst, now)
        else:
            bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.updated) * limit.rate)
            bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return math.ceil((1 - bucket.tokens) / limit.rate * 1000) / 1000

    def check(self, tenant: Tenant, family: str) -> None:
        """Take a token, or raise RATE_LIMITED with ``retry_after_seconds`` (see `take`)."""
        wait = self.take(tenant, family)
        if wait:
            raise self.refusal(family, wait)

    def refusal(self, family: str, wait: float) -> FlowStateError:
        """The RATE_LIMITED error of a call of `family` refused `wait` seconds before the next
        token (the server serializes it once per tenant, family and wait: `PrebuiltStatus`)."""
        limit = self._limits[family]
        return FlowStateError(
            ErrorCode.RATE_LIMITED,
            f"the tenant's {family} calls exceed {limit.rate:g}/s (burst {limit.burst:g}); "
            f"retry in {wait:.3f}s",
            retry_allowed=True,
            family=family,
            retry_after_seconds=wait,
        )

    def _sweep(self, now: float) -> None:
        """Drop the buckets that have filled up again (equivalent to no bucket)."""
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self._limits[key[1]].rate
            >= self._limits[key[1]].burst
        ]
        for key in full:
            del self._buckets[key]
