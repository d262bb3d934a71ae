"""Retry policy of the SDK: which failures are retried, how long to wait, when to give up.

Unary calls are retried on UNAVAILABLE (the server or its database is unreachable, or the
server is shutting down) and on RATE_LIMITED (the tenant's request budget: RESOURCE_EXHAUSTED,
nothing was applied), each time waiting at least the delay of the server's RetryInfo. That is
safe for mutations because the SDK sends the *same* ``request_id`` on every attempt, and the
server returns the first response for a repeated id instead of applying the change twice.
Every other failure is raised at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc

from flowstate.client._enums import ErrorCode
from flowstate.client._errors import FlowstateError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter and an overall deadline.

    The wait before attempt ``n + 1`` is ``min(max_backoff, initial_backoff * multiplier **
    (n - 1))``, scaled by a random factor in ``[1 - jitter, 1 + jitter]``, and at least the delay
    the server suggested in a ``google.rpc.RetryInfo`` (even above `max_backoff`). No attempt
    starts after `deadline` seconds from the first one, and each attempt's own timeout is cut to
    what is left of it (an attempt without a timeout is bounded by the caller only).

    Attributes:
        max_attempts: Attempts in all, the first included (1 disables retries); None: no limit
            (bounded by `deadline`).
        initial_backoff: Seconds to wait before the second attempt.
        max_backoff: The longest wait between two attempts, in seconds.
        multiplier: Growth of the wait from one attempt to the next.
        jitter: Relative randomisation of each wait, in [0, 1].
        deadline: Seconds from the first attempt after which no attempt starts; None: no limit.
        retryable_codes: gRPC codes worth another attempt.
        retry_rate_limited: Retry RATE_LIMITED refusals (after the server's RetryInfo delay).
    """

    max_attempts: int | None = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    deadline: float | None = 30.0
    retryable_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    retry_rate_limited: bool = True

    def __post_init__(self) -> None:
        """Reject settings that cannot work."""
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None for no limit)")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("deadline must be positive (or None for no limit)")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int, *, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), jitter applied."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rng() - 1)))


class RetryState:
    """The attempts of one call (or of one stream's reconnections) under a `RetryPolicy`."""

    def __init__(self, policy: RetryPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Start counting now."""
        self._policy = policy
        self._clock = clock
        self._start = clock()
        self.attempt = 0

    def reset(self) -> None:
        """Forget earlier failures (a stream received an event: it was healthy again)."""
        self._start = self._clock()
        self.attempt = 0

    def begin(self) -> None:
        """Count one more attempt."""
        self.attempt += 1

    def attempt_timeout(self, timeout: float | None) -> float | None:
        """The timeout of the attempt about to start: `timeout`, cut to the deadline left.

        None stays None: without a timeout only the caller's own deadline bounds the attempt.
        """
        if self._policy.deadline is None or timeout is None:
            return timeout
        left = max(0.001, self._policy.deadline - (self._clock() - self._start))
        return min(timeout, left)

    def next_delay(self, error: FlowstateError, *, retryable: bool | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up and raise `error`.

        `retryable` overrides the policy's decision by gRPC code (streams use it to resume on
        errors a unary call would not retry).
        """
        policy = self._policy
        if retryable is None:
            retryable = error.grpc_code in policy.retryable_codes or (
                policy.retry_rate_limited and error.code is ErrorCode.RATE_LIMITED
            )
        if not retryable:
            return None
        minimum = 0.0
        if error.retry_delay is not None:
            # The server's RetryInfo is a minimum, even above max_backoff (the deadline still
            # bounds it: a wait that would pass it gives up instead).
            minimum = error.retry_delay / timedelta(seconds=1)
        return self.next_backoff(minimum=minimum)

    def next_backoff(self, *, minimum: float = 0.0) -> float | None:
        """Seconds to wait before the next attempt, or None when attempts or time ran out."""
        policy = self._policy
        if policy.max_attempts is not None and self.attempt >= policy.max_attempts:
            return None
        delay = max(minimum, policy.backoff(max(1, self.attempt)))
        if policy.deadline is not None:
            left = policy.deadline - (self._clock() - self._start)
            if delay >= left:
                return None
        return delay
