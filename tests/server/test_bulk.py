"""Bulk actions through real gRPC against the session's server (its bulk worker does the work):
the operator's retry of every flow failed by an external service, its progress stream and its
per-flow results; scopes; bad requests; another tenant's action is NOT_FOUND."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from flowstate.v1 import errors_pb2, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, failure, refused, request_id

S = states_pb2


async def _failed(api: Api, code: int) -> str:
    flow = await api.create()
    await api.move(flow.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    await api.move(flow.flow_id, "data_import", S.PHASE_STATE_FAILED, failure=failure(code))
    return flow.flow_id


async def test_bulk_retry_of_flows_failed_by_an_external_service(api: Api) -> None:
    admin = api.as_(scopes=["flows:admin"])
    external = [await _failed(api, errors_pb2.ERROR_CODE_EXTERNAL_SERVICE_ERROR) for _ in range(3)]
    await _failed(api, errors_pb2.ERROR_CODE_AGENT_TIMEOUT)  # not matched by the filter
    invalid = await _failed(api, errors_pb2.ERROR_CODE_DATA_VALIDATION_FAILED)

    started = await admin.stub.StartBulkAction(
        pb.StartBulkActionRequest(
            request_id=request_id(),
            action=pb.BULK_ACTION_TYPE_RETRY,
            filter="error IN (EXTERNAL_SERVICE_ERROR, DATA_VALIDATION_FAILED) AND updated > -1h",
            reason="the upstream outage is over",
        ),
        metadata=admin.metadata,
    )
    action = started.bulk_action
    assert (action.state, action.total_count) == (pb.BULK_ACTION_STATE_RUNNING, 4)
    assert action.user_id == "tester"

    seen = []
    watch = admin.stub.WatchBulkAction(
        pb.WatchBulkActionRequest(bulk_action_id=action.bulk_action_id), metadata=admin.metadata
    )
    async with asyncio.timeout(30):
        async for response in watch:
            seen.append(response.bulk_action)
    final = seen[-1]
    assert final.state == pb.BULK_ACTION_STATE_SUCCEEDED
    assert (final.applied_count, final.refused_count, final.skipped_count) == (3, 1, 0)
    done = [a.applied_count + a.refused_count + a.skipped_count for a in seen]
    assert done == sorted(done)  # progress only moves forward

    results = await admin.stub.ListBulkActionResults(
        pb.ListBulkActionResultsRequest(bulk_action_id=action.bulk_action_id),
        metadata=admin.metadata,
    )
    outcomes = {r.flow_id: r for r in results.results}
    assert {f for f, r in outcomes.items() if r.outcome == pb.BULK_FLOW_OUTCOME_APPLIED} == set(
        external
    )
    refusal = outcomes[invalid]
    assert refusal.outcome == pb.BULK_FLOW_OUTCOME_REFUSED
    assert refusal.error.error_code == errors_pb2.ERROR_CODE_RETRY_NOT_ALLOWED
    assert refusal.phase == "data_import"
    only_refused = await admin.stub.ListBulkActionResults(
        pb.ListBulkActionResultsRequest(
            bulk_action_id=action.bulk_action_id, outcome=pb.BULK_FLOW_OUTCOME_REFUSED
        ),
        metadata=admin.metadata,
    )
    assert [r.flow_id for r in only_refused.results] == [invalid]
    for flow_id in external:
        flow = await api.get(flow_id)
        assert flow.status == S.FLOW_STATUS_RETRY_PENDING

    listed = await admin.stub.ListBulkActions(pb.ListBulkActionsRequest(), metadata=admin.metadata)
    assert [a.bulk_action_id for a in listed.bulk_actions] == [action.bulk_action_id]
    got = await admin.stub.GetBulkAction(
        pb.GetBulkActionRequest(bulk_action_id=action.bulk_action_id), metadata=admin.metadata
    )
    assert got.bulk_action.applied_count == 3


async def test_bulk_actions_need_flows_admin(api: Api) -> None:
    failure_ = await refused(
        api.stub.StartBulkAction(
            pb.StartBulkActionRequest(
                request_id=request_id(), action=pb.BULK_ACTION_TYPE_CANCEL, filter="stuck"
            ),
            metadata=api.metadata,
        )
    )
    assert failure_.code is grpc.StatusCode.PERMISSION_DENIED


async def test_a_bad_bulk_request_is_refused_and_starts_nothing(api: Api) -> None:
    admin = api.as_(scopes=["flows:admin"])
    bad_filter = await refused(
        admin.stub.StartBulkAction(
            pb.StartBulkActionRequest(
                request_id=request_id(), action=pb.BULK_ACTION_TYPE_CANCEL, filter="status ="
            ),
            metadata=admin.metadata,
        )
    )
    assert bad_filter.code is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_filter.flow_error is not None
    assert bad_filter.flow_error.details["position"] == 8
    no_phase = await refused(
        admin.stub.StartBulkAction(
            pb.StartBulkActionRequest(
                request_id=request_id(), action=pb.BULK_ACTION_TYPE_ROLLBACK, filter="stuck"
            ),
            metadata=admin.metadata,
        )
    )
    assert no_phase.violated_fields == {"phase"}
    nothing = await refused(
        admin.stub.StartBulkAction(
            pb.StartBulkActionRequest(request_id=request_id(), action=pb.BULK_ACTION_TYPE_PAUSE),
            metadata=admin.metadata,
        )
    )
    assert nothing.violated_fields == {"filter"}
    listed = await admin.stub.ListBulkActions(pb.ListBulkActionsRequest(), metadata=admin.metadata)
    assert list(listed.bulk_actions) == []


async def test_another_tenants_bulk_action_is_not_found(api: Api) -> None:
    admin = api.as_(scopes=["flows:admin"])
    flow = await api.create()
    started = await admin.stub.StartBulkAction(
        pb.StartBulkActionRequest(
            request_id=request_id(), action=pb.BULK_ACTION_TYPE_PAUSE, flow_ids=[flow.flow_id]
        ),
        metadata=admin.metadata,
    )
    action_id = started.bulk_action.bulk_action_id
    other = admin.as_(tenant=type(api.tenant)("someone-else", "other"), scopes=["flows:admin"])
    for call in (
        other.stub.GetBulkAction(
            pb.GetBulkActionRequest(bulk_action_id=action_id), metadata=other.metadata
        ),
        other.stub.CancelBulkAction(
            pb.CancelBulkActionRequest(bulk_action_id=action_id), metadata=other.metadata
        ),
        other.stub.ListBulkActionResults(
            pb.ListBulkActionResultsRequest(bulk_action_id=action_id), metadata=other.metadata
        ),
    ):
        failure_ = await refused(call)
        assert failure_.code is grpc.StatusCode.NOT_FOUND
        assert failure_.reason == "BULK_ACTION_NOT_FOUND"
    watch = other.stub.WatchBulkAction(
        pb.WatchBulkActionRequest(bulk_action_id=action_id), metadata=other.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await anext(aiter(watch))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
