"""Phase policies of submitted definitions (timeouts, retry policy, approval), checked whole.

Each bad policy's violations are compared in full (path and text, in order) with the list
written out here from docs/definitions.md's rules; good policies are compared with the values
they must build. Found missing by `make mutate` (docs/testing.md): the document tests checked
that a policy was refused, not what the caller is told nor what a good policy becomes.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowstate.core import ErrorCode
from flowstate.core.definition_document import (
    check_document,
    definition_from_document,
    parse_duration,
)
from flowstate.core.definitions import (
    ApprovalPolicy,
    ApprovalTimeoutAction,
    PhasePolicy,
    RetryPolicy,
)

RETRYABLE = (
    "AGENT_TIMEOUT, CHILD_FLOW_CANCELLED, EXTERNAL_SERVICE_ERROR, PHASE_EXECUTION_FAILED, "
    "TEMPORARY_RESOURCE_UNAVAILABLE"
)
DURATION = "must be a duration: seconds, or a string like '30s', '5m', '2h'"
BETWEEN = "must be between 0.1 and 2.592e+06 seconds"  # 30 days


def phase(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "depends_on": [], "weight": 0, **extra}


def document(*policies: object) -> dict[str, Any]:
    phases = [phase(f"p{i}", policy=policy) for i, policy in enumerate(policies)]
    phases[0]["weight"] = 100
    return {"name": "policies", "phases": phases}


def violations(*policies: object) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in check_document(document(*policies))]


def test_timeouts_and_unknown_fields_of_a_policy() -> None:
    assert violations(
        "nope", {"timeout": "0.05s", "heartbeat_timeout": "31d", "extra": 1, 7: "x"}
    ) == [
        ("phases[0].policy", "must be a mapping of policies (timeout, heartbeat_timeout, ...)"),
        ("phases[1].policy.extra", "unknown field of a phase policy: 'extra'"),
        ("phases[1].policy", "unknown field of a phase policy: 7"),
        ("phases[1].policy.timeout", BETWEEN),
        ("phases[1].policy.heartbeat_timeout", BETWEEN),
    ]


def test_retry_policies() -> None:
    where = "policy.retry_policy"
    assert violations(
        {"retry_policy": "fast"},
        {
            "retry_policy": {
                "initial_backoff": "10s",
                "max_backoff": "5s",
                "multiplier": 11,
                "retry_on": [],
                "jitter": 1,
            }
        },
        {
            "retry_policy": {
                "initial_backoff": "1s",
                "max_backoff": "2m",
                "multiplier": True,
                "retry_on": [
                    "agent_timeout",
                    "ERROR_CODE_AGENT_TIMEOUT",
                    "DATA_VALIDATION_FAILED",
                    5,
                ],
            }
        },
        {"retry_policy": {"max_backoff": "x", "multiplier": 0.5, "retry_on": "AGENT_TIMEOUT"}},
    ) == [
        (
            f"phases[0].{where}",
            "must be a mapping (initial_backoff, multiplier, max_backoff, retry_on)",
        ),
        (f"phases[1].{where}.jitter", "unknown field of a retry policy: 'jitter'"),
        (f"phases[1].{where}.max_backoff", "must be at least initial_backoff"),
        (f"phases[1].{where}.multiplier", "must be a number in [1, 10]"),
        (f"phases[1].{where}.retry_on", "must be a non-empty list of retryable error codes"),
        (f"phases[2].{where}.multiplier", "must be a number in [1, 10]"),
        (f"phases[2].{where}.retry_on[1]", "AGENT_TIMEOUT is listed twice"),
        (
            f"phases[2].{where}.retry_on[2]",
            f"'DATA_VALIDATION_FAILED' is not a retryable error code: one of {RETRYABLE}",
        ),
        (f"phases[2].{where}.retry_on[3]", f"5 is not a retryable error code: one of {RETRYABLE}"),
        (f"phases[3].{where}.initial_backoff", DURATION),
        (f"phases[3].{where}.max_backoff", DURATION),
        (f"phases[3].{where}.multiplier", "must be a number in [1, 10]"),
        (f"phases[3].{where}.retry_on", "must be a non-empty list of retryable error codes"),
    ]


def test_approval_policies() -> None:
    where = "policy.approval"
    assert violations(
        {"approval": "yes"},
        {
            "approval": {
                "required": "yes",
                "scope": "has space",
                "claim": "",
                "claim_value": "with space ok",
                "approval_timeout": "1h",
                "who": 1,
                3: 4,
            }
        },
        {"approval": {"claim": "role", "on_timeout": "explode"}},
        {"approval": {"claim_value": "x", "approval_timeout": "0s", "scope": "a" * 257}},
    ) == [
        (f"phases[0].{where}", "must be a mapping (required, scope, claim, claim_value, ...)"),
        (f"phases[1].{where}.who", "unknown field of an approval policy: 'who'"),
        (f"phases[1].{where}", "unknown field of an approval policy: 3"),
        (f"phases[1].{where}.required", "must be true or false"),
        (f"phases[1].{where}.scope", "must not contain spaces"),
        (
            f"phases[1].{where}.claim",
            "must be a non-empty string of at most 256 characters",
        ),
        (f"phases[1].{where}.on_timeout", "approval_timeout and on_timeout are given together"),
        (f"phases[2].{where}.claim_value", "claim and claim_value are given together"),
        (f"phases[2].{where}.on_timeout", "'explode' is not one of: reject, escalate"),
        (
            f"phases[2].{where}.approval_timeout",
            "approval_timeout and on_timeout are given together",
        ),
        (f"phases[3].{where}.scope", "must be a non-empty string of at most 256 characters"),
        (f"phases[3].{where}.claim", "claim and claim_value are given together"),
        (f"phases[3].{where}.approval_timeout", BETWEEN),
        (f"phases[3].{where}.on_timeout", "approval_timeout and on_timeout are given together"),
    ]


def test_the_bounds_themselves_are_accepted() -> None:
    assert (
        violations(
            {
                "timeout": 0.1,
                "heartbeat_timeout": "30d",
                "retry_policy": {
                    "initial_backoff": 0,
                    "max_backoff": "0s",
                    "multiplier": 10,
                    "retry_on": [" agent_timeout "],
                },
                "approval": {"scope": "a" * 256, "claim": "c", "claim_value": "v"},
            },
            {
                "retry_policy": {
                    "initial_backoff": "1s",
                    "max_backoff": "1s",
                    "retry_on": ["AGENT_TIMEOUT"],
                    "multiplier": 1,
                }
            },
        )
        == []
    )


def test_good_policies_build_their_values() -> None:
    definition = definition_from_document(
        document(
            {
                "timeout": 0.1,
                "heartbeat_timeout": "30d",
                "retry_policy": {
                    "initial_backoff": "500ms",
                    "max_backoff": "2h",
                    "multiplier": 10,
                    "retry_on": [" agent_timeout ", "ERROR_CODE_EXTERNAL_SERVICE_ERROR"],
                },
                "approval": {
                    "required": True,
                    "scope": "flows:approve",
                    "claim": "role",
                    "claim_value": "lead reviewer",
                    "approval_timeout": "1d",
                    "on_timeout": "APPROVAL_TIMEOUT_ACTION_ESCALATE",
                },
            },
            {
                "retry_policy": {
                    "initial_backoff": 0,
                    "max_backoff": "0s",
                    "retry_on": ["agent_timeout"],
                },
                "approval": {},
            },
            {},
            {"approval": {"required": False}},
            {"approval": {"on_timeout": " Reject ", "approval_timeout": 60}},
        )
    )
    policies = [(p.policy, p.approval) for p in definition.phases]
    assert policies == [
        (
            PhasePolicy(
                timeout=0.1,
                heartbeat_timeout=30 * 86400.0,
                retry_policy=RetryPolicy(
                    initial_backoff=0.5,
                    multiplier=10.0,
                    max_backoff=7200.0,
                    retry_on=frozenset({ErrorCode.AGENT_TIMEOUT, ErrorCode.EXTERNAL_SERVICE_ERROR}),
                ),
            ),
            ApprovalPolicy(
                required=True,
                scope="flows:approve",
                claim="role",
                claim_value="lead reviewer",
                timeout_seconds=86400.0,
                on_timeout=ApprovalTimeoutAction.ESCALATE,
            ),
        ),
        (
            PhasePolicy(
                retry_policy=RetryPolicy(
                    initial_backoff=0.0,
                    multiplier=1.0,
                    max_backoff=0.0,
                    retry_on=frozenset({ErrorCode.AGENT_TIMEOUT}),
                )
            ),
            None,
        ),
        (PhasePolicy(), None),
        (PhasePolicy(), None),
        (
            PhasePolicy(),
            ApprovalPolicy(timeout_seconds=60.0, on_timeout=ApprovalTimeoutAction.REJECT),
        ),
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        (" 3m ", 180.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("30s", 30.0),
        ("1 h", None),
        (True, None),
        (float("nan"), None),
        (float("inf"), None),
        (float("-inf"), None),
        ("5", None),
        ("-1s", None),
        (None, None),
    ],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds
