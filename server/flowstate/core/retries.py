"""Automatic retry: the backoff of a phase's `retry_policy` and when its next attempt is due.

Pure functions (time comes in as an argument). The command layer stamps `next_attempt_at` on a
phase that enters FAILED (`flowstate.core.commands`); the timer engine moves it to RETRY_NEEDED
once that time has passed (`flowstate.core.timers`, kind ``retry_backoff``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flowstate.core.definition_document import MAX_RETRIES
from flowstate.core.definitions import PhaseDefinition, RetryPolicy
from flowstate.core.model import Phase, PhaseState

__all__ = ["next_attempt_at", "retry_backoff"]


def retry_backoff(policy: RetryPolicy, attempts_used: int) -> float:
    """Seconds to wait before the retry after `attempts_used` retries:
    ``min(initial_backoff * multiplier ** attempts_used, max_backoff)``."""
    # The exponent never needs to pass MAX_RETRIES (no phase uses more retries), and bounded
    # by it the power stays a finite float (multiplier <= 10).
    exponent = min(max(attempts_used, 0), MAX_RETRIES)
    return min(policy.initial_backoff * policy.multiplier**exponent, policy.max_backoff)


def next_attempt_at(definition: PhaseDefinition, phase: Phase, now: datetime) -> datetime | None:
    """When the server should retry `phase` (FAILED at `now`) automatically, or None.

    None unless the phase has a retry policy naming its error code, the code is retryable, and
    the phase has retries left under `max_retries` (the retry gate of `flowstate.core.commands`
    holds for automatic retries too).
    """
    policy = definition.policy.retry_policy
    error = phase.error
    if policy is None or phase.state is not PhaseState.FAILED or error is None:
        return None
    if error.error_code not in policy.retry_on or not error.retryable:
        return None
    if phase.retry_count >= definition.max_retries:
        return None
    return now + timedelta(seconds=retry_backoff(policy, phase.retry_count))
