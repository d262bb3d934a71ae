"""Per-tenant fair use: token buckets per (tenant, RPC family), RESOURCE_EXHAUSTED + RetryInfo,
and metric labels whose cardinality stays bounded whatever tenants do."""

from __future__ import annotations

import grpc
import pytest

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.server.auth import Scope
from flowstate.server.metrics import MAX_PHASE_LABELS, TENANT_LABEL_AFTER, Metrics, TenantLabels
from flowstate.server.ratelimit import DEFAULT_LIMITS, Limit, RateLimiter, family_of, parse_limits
from flowstate.storage import FlowStore

from .support import Clock, decode_failure, limited_server, unique_tenant

A, B = Tenant("acct", "noisy"), Tenant("acct", "quiet")


def _refusal(limiter: RateLimiter, tenant: Tenant, family: str) -> FlowStateError:
    with pytest.raises(FlowStateError) as caught:
        limiter.check(tenant, family)
    return caught.value


def test_a_bucket_allows_its_burst_then_refuses_with_the_time_to_the_next_token() -> None:
    clock = Clock()
    limiter = RateLimiter({"write": Limit(rate=2, burst=3)}, clock=clock)
    for _ in range(3):
        limiter.check(A, "write")
    refused = _refusal(limiter, A, "write")
    assert refused.code is ErrorCode.RATE_LIMITED
    assert refused.retry_allowed
    assert refused.details["retry_after_seconds"] == 0.5
    assert refused.details["family"] == "write"
    clock.now += 0.5  # one token back
    limiter.check(A, "write")
    assert _refusal(limiter, A, "write").details["retry_after_seconds"] == 0.5


def test_tenants_and_families_have_their_own_buckets() -> None:
    limiter = RateLimiter({"write": Limit(1, 1), "read": Limit(1, 1)}, clock=Clock())
    limiter.check(A, "write")
    _refusal(limiter, A, "write")
    limiter.check(B, "write")  # another tenant: untouched
    limiter.check(A, "read")  # another family: untouched
    limiter.check(A, "stream")  # a family without a limit is not limited


def test_a_bucket_never_saves_more_than_its_burst() -> None:
    clock = Clock()
    limiter = RateLimiter({"read": Limit(10, 2)}, clock=clock)
    limiter.check(A, "read")
    clock.now += 3600
    limiter.check(A, "read")
    limiter.check(A, "read")
    _refusal(limiter, A, "read")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("off", None, id="off"),
        pytest.param("", dict(DEFAULT_LIMITS), id="empty-keeps-defaults"),
        pytest.param(
            "read=10:20, write=5",
            {**DEFAULT_LIMITS, "read": Limit(10, 20), "write": Limit(5, 5)},
            id="overrides",
        ),
    ],
)
def test_parse_limits(text: str, expected: dict[str, Limit] | None) -> None:
    assert parse_limits(text) == expected


@pytest.mark.parametrize("text", ["bulk=1:2", "read", "read=x", "read=0", "read=5:0.5"])
def test_parse_limits_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match=r"read|bulk"):
        parse_limits(text)


@pytest.mark.parametrize(
    ("scope", "streaming", "family"),
    [
        (Scope.READ, False, "read"),
        (Scope.READ, True, "stream"),
        (Scope.WRITE, False, "write"),
        (Scope.DEFINITIONS_WRITE, False, "write"),
        (Scope.ADMIN, False, "admin"),
        (Scope.WEBHOOKS_ADMIN, False, "admin"),
    ],
)
def test_family_of_a_method(scope: Scope, streaming: bool, family: str) -> None:
    assert family_of(scope, streaming=streaming) == family


def test_only_the_first_n_sustained_tenants_get_their_own_label() -> None:
    labels = TenantLabels(top_n=2)
    tenants = [Tenant("acct", f"eng-{i}") for i in range(3)]
    for tenant in tenants:
        for _ in range(TENANT_LABEL_AFTER - 1):
            assert labels.label(tenant) == "other"
    assert labels.label(tenants[0]) == "acct/eng-0"
    assert labels.label(tenants[1]) == "acct/eng-1"
    assert labels.label(tenants[2]) == "other"  # the slots are taken
    assert labels.labelled == 2


def test_one_off_callers_never_fill_the_label_slots() -> None:
    labels = TenantLabels(top_n=2)
    for i in range(10_000):
        assert labels.label(Tenant("acct", f"once-{i}")) == "other"
    assert labels.labelled == 0


def test_phase_labels_are_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_PHASE_LABELS + 50):
        metrics.record_refusal(
            FlowStateError(
                ErrorCode.INVALID_PHASE_TRANSITION,
                "no",
                phase=f"phase_{i}",
                from_state="completed",
                to_state="in_progress",
            )
        )
    phases = {
        sample.labels["phase"]
        for family in metrics.registry.collect()
        if family.name == "flowstate_phase_transitions"
        for sample in family.samples
    }
    assert len(phases) == MAX_PHASE_LABELS + 1
    assert "other" in phases


async def test_a_flooding_tenant_is_refused_while_another_tenant_is_served(
    database_url: str, store: FlowStore
) -> None:
    noisy, quiet = unique_tenant("acct-limits", "noisy"), unique_tenant("acct-limits", "quiet")
    async with limited_server(
        database_url,
        store,
        {"read": Limit(rate=1, burst=5)},
        max_wait=0,  # policing only (shaping: test_rate_shaping.py)
    ) as server:
        refused = await server.flood(noisy, 30)
        quiet_results = [await server.outcome(quiet) for _ in range(5)]
        assert 20 <= len(refused) <= 25  # a burst of 5, and about one token while flooding
        assert quiet_results == [None] * 5
        failure = decode_failure(refused[0])
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert failure.reason == "RATE_LIMITED"
        assert failure.retry_delay is not None
        assert 0 < failure.retry_delay <= 1.0
        assert server.requests("read")["limited"] == len(refused)
