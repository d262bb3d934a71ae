"""DecidePhase and approval policies through the real server (DESIGN.md section 10).

Scope and identity are enforced (no flows:approve, a missing or wrong scope or claim: the call is
PERMISSION_DENIED and nothing changes), the decision is recorded with its approver in history
and on the phase, a repeated request id replays, and a phase whose policy requires approval
cannot leave WAITING_APPROVAL through TransitionPhase.
"""

from __future__ import annotations

import grpc

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer
from flowstate.v1 import approvals_pb2, definition_pb2, errors_pb2, history_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, S, refused, request_id

A = approvals_pb2


def _review_definition(policy: approvals_pb2.ApprovalPolicy) -> definition_pb2.FlowDefinition:
    return definition_pb2.FlowDefinition(
        name="review",
        phases=[
            definition_pb2.PhaseDefinition(name="draft", weight=50),
            definition_pb2.PhaseDefinition(
                name="publish",
                weight=50,
                max_retries=2,
                depends_on=["draft"],
                policy=definition_pb2.PhasePolicy(approval=policy),
            ),
        ],
    )


async def _waiting_flow(api: Api, policy: approvals_pb2.ApprovalPolicy) -> str:
    """A flow of a definition with `policy` on `publish`, whose `publish` waits for approval
    (its worker completed it: with a required approval that lands in WAITING_APPROVAL)."""
    admin = api.as_(scopes=("flows:admin",))
    await admin.stub.CreateFlowDefinition(
        pb.CreateFlowDefinitionRequest(
            request_id=request_id(), definition=_review_definition(policy)
        ),
        metadata=admin.metadata,
    )
    flow = await api.create(definition_name="review")
    await api.complete(flow.flow_id, "draft")
    await api.move(flow.flow_id, "publish", S.PHASE_STATE_IN_PROGRESS)
    target = S.PHASE_STATE_COMPLETED if policy.required else S.PHASE_STATE_WAITING_APPROVAL
    completed = await api.move(flow.flow_id, "publish", target)
    assert [p.state for p in completed.flow.phases] == [
        S.PHASE_STATE_COMPLETED,
        S.PHASE_STATE_WAITING_APPROVAL,
    ]
    return flow.flow_id


def _decide(
    flow_id: str, decision: int = A.APPROVAL_DECISION_APPROVE, **fields: object
) -> pb.DecidePhaseRequest:
    fields.setdefault("request_id", request_id())
    return pb.DecidePhaseRequest(
        flow_id=flow_id,
        phase="publish",
        decision=decision,  # type: ignore[arg-type]
        comment="ship it",
        **fields,  # type: ignore[arg-type]
    )


async def test_scope_and_identity_are_enforced_and_nothing_changes_on_refusal(
    api: Api, server: RunningServer, tenant: Tenant
) -> None:
    policy = A.ApprovalPolicy(
        required=True, scope="approve:finance", claim="groups", claim_value="finance"
    )
    flow_id = await _waiting_flow(api, policy)
    before = await api.get(flow_id)

    def caller(
        scopes: tuple[str, ...], claims: dict[str, object] | None = None
    ) -> tuple[tuple[str, str], ...]:
        return server.mint.metadata(tenant, user="carol", scopes=scopes, claims=claims)

    attempts = [
        caller(("flows:write",), {"groups": ["finance"]}),  # no flows:approve
        caller(("flows:approve",), {"groups": ["finance"]}),  # not the policy's scope
        caller(("flows:approve", "approve:finance")),  # no claim
        caller(("flows:approve", "approve:finance"), {"groups": ["sales"]}),  # wrong claim
        caller(("flows:approve", "approve:finance"), {"groups": "finance-ish"}),  # wrong value
    ]
    for metadata in attempts:
        failure = await refused(api.stub.DecidePhase(_decide(flow_id), metadata=metadata))
        assert failure.code is grpc.StatusCode.PERMISSION_DENIED
        assert failure.reason == "PERMISSION_DENIED"
    assert await api.get(flow_id) == before

    approver = caller(("flows:approve", "approve:finance"), {"groups": ["sales", "finance"]})
    request = _decide(flow_id)
    response = await api.stub.DecidePhase(request, metadata=approver)
    publish = response.flow.phases[1]
    assert publish.state == S.PHASE_STATE_COMPLETED
    assert response.flow.status == S.FLOW_STATUS_COMPLETED
    assert (publish.approval.decision, publish.approval.approver, publish.approval.comment) == (
        A.APPROVAL_DECISION_APPROVE,
        "carol",
        "ship it",
    )
    (entry,) = response.history_entries
    assert entry.kind == history_pb2.HISTORY_EVENT_KIND_DECISION
    assert (entry.user_id, entry.approval.approver, entry.reason) == ("carol", "carol", "ship it")
    assert (await api.history(flow_id))[-1] == entry

    replay = await api.stub.DecidePhase(request, metadata=approver)
    assert replay.flow.version == response.flow.version
    assert list(replay.history_entries) == list(response.history_entries)


async def test_reject_fails_the_phase_for_good_and_request_changes_sends_it_back(
    api: Api,
) -> None:
    flow_id = await _waiting_flow(api, A.ApprovalPolicy())
    approver = api.as_(scopes=("flows:approve",))
    sent_back = await approver.stub.DecidePhase(
        _decide(flow_id, A.APPROVAL_DECISION_REQUEST_CHANGES), metadata=approver.metadata
    )
    assert sent_back.flow.phases[1].state == S.PHASE_STATE_IN_PROGRESS
    await api.move(flow_id, "publish", S.PHASE_STATE_WAITING_APPROVAL)
    rejected = await approver.stub.DecidePhase(
        _decide(flow_id, A.APPROVAL_DECISION_REJECT), metadata=approver.metadata
    )
    publish = rejected.flow.phases[1]
    assert publish.state == S.PHASE_STATE_FAILED
    assert publish.error_context.error_code == errors_pb2.ERROR_CODE_APPROVAL_REJECTED
    assert not publish.error_context.retryable
    failure = await refused(api.retry(flow_id, "publish"))
    assert failure.reason == "RETRY_NOT_ALLOWED"


async def test_required_approval_is_not_bypassed_by_transition_phase(api: Api) -> None:
    flow_id = await _waiting_flow(api, A.ApprovalPolicy(required=True))
    before = await api.get(flow_id)
    failure = await refused(api.move(flow_id, "publish", S.PHASE_STATE_COMPLETED))
    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "APPROVAL_REQUIRED"
    assert await api.get(flow_id) == before


async def test_a_bad_decision_is_a_field_violation(api: Api) -> None:
    flow_id = await _waiting_flow(api, A.ApprovalPolicy())
    approver = api.as_(scopes=("flows:approve",))
    failure = await refused(
        approver.stub.DecidePhase(_decide(flow_id, 0), metadata=approver.metadata)
    )
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "decision" in failure.violated_fields


async def test_a_policy_with_bad_values_is_refused_with_paths(api: Api) -> None:
    admin = api.as_(scopes=("flows:admin",))
    policy = A.ApprovalPolicy(claim="groups", on_timeout=A.APPROVAL_TIMEOUT_ACTION_REJECT)
    failure = await refused(
        admin.stub.CreateFlowDefinition(
            pb.CreateFlowDefinitionRequest(
                request_id=request_id(), definition=_review_definition(policy)
            ),
            metadata=admin.metadata,
        )
    )
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.violated_fields == {
        "phases[1].policy.approval.claim_value",
        "phases[1].policy.approval.approval_timeout",
    }
