"""Per-tenant fair use: a token bucket per (tenant, RPC family), checked in the `rpc` wrapper.

Families come from the scope a method needs (`family_of`): ``read`` (flows:read calls),
``stream`` (opening a WatchFlow / WatchFlows stream: a stream is limited when it opens, not
per event), ``write`` (flows:write, definitions:write) and ``admin`` (flows:admin,
webhooks:admin). Each (tenant, family) has a bucket of `burst` tokens refilled at `rate`
tokens per second; a call takes one.

**Shaping, then policing.** A call that finds its bucket empty *reserves* the next token
(`reserve`): the bucket goes negative and the call waits until its token is due, then runs,
so a tenant over its rate is slowed to it, and a client calling in a closed loop (one that
ignores RetryInfo) waits instead of coming back at once for another refusal, which would cost
the event loop about what serving it would. A reservation is made only if its wait is at most
`max_wait` (``FLOWSTATE_RATE_LIMIT_MAX_WAIT``, default `DEFAULT_MAX_WAIT`) and at most the
call's remaining deadline; the bucket therefore never goes below ``-rate * max_wait``, which
bounds the calls of one tenant and family waiting at once (at most ``rate * max_wait``, e.g.
2,500 reads with the defaults). Any other call is refused at once with RESOURCE_EXHAUSTED /
RATE_LIMITED and a ``google.rpc.RetryInfo`` delay: when a reservation within its budget would
fit. Nothing is applied for a refused call, so the SDKs retry it after that delay. A reserved
token is spent even if its call then ends without running (cancelled, or released by a drain).
``max_wait`` 0 refuses at once (pure policing).

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
from typing import Final, NamedTuple

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.server.auth import Scope

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_WAIT",
    "FAMILIES",
    "MAX_BUCKETS",
    "MAX_WAIT_CEILING",
    "Limit",
    "RateLimiter",
    "Reservation",
    "check_max_wait",
    "family_of",
    "parse_limits",
    "parse_max_wait",
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

DEFAULT_MAX_WAIT: Final = 0.5
"""Seconds a call may wait for a reserved token (module doc): long enough to slow a closed-loop
client to the rate without refusing it, short against the deadlines clients set."""
MAX_WAIT_CEILING: Final = 10.0
"""The largest accepted max wait: a longer one parks more calls and outlives most deadlines."""


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


def check_max_wait(seconds: float) -> float:
    """`seconds` if it is a max wait (0, refuse at once, to `MAX_WAIT_CEILING`), else ValueError
    with the reason."""
    if not 0 <= seconds <= MAX_WAIT_CEILING:
        raise ValueError(f"must be between 0 and {MAX_WAIT_CEILING:g} seconds, not {seconds:g}")
    return seconds


def parse_max_wait(value: str) -> float:
    """``FLOWSTATE_RATE_LIMIT_MAX_WAIT``: seconds (`check_max_wait`); ValueError with the reason
    for anything else."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {value!r}") from None
    return check_max_wait(seconds)


class Reservation(NamedTuple):
    """What `RateLimiter.reserve` decided for a call that found no token."""

    reserved: bool
    """Whether a token is reserved for the call (it runs once `seconds` have passed)."""
    seconds: float
    """Reserved: the wait until the token is due (0.0: one was there after all). Refused: the
    RetryInfo delay, whole milliseconds (at least 0.001)."""


def _ceil_ms(seconds: float) -> float:
    """`seconds` (> 0) rounded up to the millisecond (float noise of 1e-9 ms aside), at least
    0.001: a wait is never 0.0, which means a token was taken."""
    return max(1, math.ceil(round(seconds * 1000, 9))) / 1000


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Token buckets per (tenant, family) in this replica (see the module doc)."""

    def __init__(
        self,
        limits: Mapping[str, Limit],
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Limit each family of `limits` (a family absent from it is not limited); a call may
        wait up to `max_wait` seconds for a reserved token (0: refused at once)."""
        self._limits = dict(limits)
        self._max_wait = max_wait
        self._clock = clock
        self._buckets: dict[tuple[Tenant, str], _Bucket] = {}

    @property
    def limits(self) -> Mapping[str, Limit]:
        """The limit of each family."""
        return self._limits

    @property
    def max_wait(self) -> float:
        """The longest wait for a reserved token, in seconds (0: none)."""
        return self._max_wait

    def take(self, tenant: Tenant, family: str) -> float:
        """Take a token: 0.0, or (the bucket is empty) the seconds until the next one is there,
        rounded up to the millisecond (so at least 0.001, and a retry after it finds a token);
        nothing is taken then (`reserve` decides whether the call waits or is refused).

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
        return _ceil_ms((1 - bucket.tokens) / limit.rate)

    def reserve(self, tenant: Tenant, family: str, deadline: float | None) -> Reservation:
        """After `take` found no token: reserve the next one for a call with `deadline` seconds
        left (None: no deadline), if it is due within `max_wait` and the deadline (so the bucket
        stays above ``-rate * max_wait``); else refuse, the delay being when a reservation within
        the same budget would fit."""
        limit = self._limits[family]
        now = self._clock()
        bucket = self._buckets.get((tenant, family))
        if bucket is None:  # swept meanwhile: full again
            bucket = self._buckets[(tenant, family)] = _Bucket(limit.burst, now)
        bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.updated) * limit.rate)
        bucket.updated = now
        due = max(0.0, (1 - bucket.tokens) / limit.rate)
        budget = self._max_wait if deadline is None else max(0.0, min(self._max_wait, deadline))
        if due <= budget:
            bucket.tokens -= 1
            return Reservation(True, due)
        return Reservation(False, _ceil_ms(due - budget))

    def check(self, tenant: Tenant, family: str) -> None:
        """Take a token now, or raise RATE_LIMITED with ``retry_after_seconds`` (see `take`;
        no reservation)."""
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
