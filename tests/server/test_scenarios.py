"""End-to-end scenarios over gRPC: the discovery flow's life, failures, recovery, pause, cancel."""

from __future__ import annotations

import grpc
import pytest

from flowstate.v1 import errors_pb2, history_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import PHASES, Api, S, failure, phase_states, refused, request_id

F = S  # FlowStatus values live in states_pb2 too
H = history_pb2


async def test_discovery_flow_from_creation_to_completed_with_exact_progress(api: Api) -> None:
    flow = await api.create(display_name="acme discovery", labels={"team": "migrations"})
    assert (flow.status, flow.progress, flow.version) == (F.FLOW_STATUS_INITIALIZED, 0.0, 1)
    assert [p.name for p in flow.phases] == list(PHASES)
    assert [p.weight for p in flow.phases] == [20] * 5
    assert [p.max_retries for p in flow.phases] == [3, 3, 2, 3, 2]
    fid = flow.flow_id

    steps: list[tuple[str, int, float, int]] = [
        ("data_import", S.PHASE_STATE_IN_PROGRESS, 6.0, F.FLOW_STATUS_DATA_GATHERING),
        ("data_import", S.PHASE_STATE_COMPLETED, 20.0, F.FLOW_STATUS_DATA_GATHERING),
        ("field_mapping", S.PHASE_STATE_IN_PROGRESS, 26.0, F.FLOW_STATUS_DISCOVERY),
        ("field_mapping", S.PHASE_STATE_WAITING_VALIDATION, 34.0, F.FLOW_STATUS_DISCOVERY),
        ("field_mapping", S.PHASE_STATE_WAITING_APPROVAL, 36.0, F.FLOW_STATUS_WAITING_APPROVAL),
        ("field_mapping", S.PHASE_STATE_COMPLETED, 40.0, F.FLOW_STATUS_DISCOVERY),
        ("data_cleansing", S.PHASE_STATE_IN_PROGRESS, 46.0, F.FLOW_STATUS_DISCOVERY),
        ("data_cleansing", S.PHASE_STATE_COMPLETED, 60.0, F.FLOW_STATUS_DISCOVERY),
        ("asset_inventory", S.PHASE_STATE_IN_PROGRESS, 66.0, F.FLOW_STATUS_ASSESSMENT_READY),
        ("asset_inventory", S.PHASE_STATE_COMPLETED, 80.0, F.FLOW_STATUS_ASSESSMENT_READY),
        ("dependency_analysis", S.PHASE_STATE_IN_PROGRESS, 86.0, F.FLOW_STATUS_PLANNING),
        ("dependency_analysis", S.PHASE_STATE_COMPLETED, 100.0, F.FLOW_STATUS_COMPLETED),
    ]
    version = 1
    for phase, state, progress, status in steps:
        response = await api.move(fid, phase, state, reason=f"{phase} step")
        version += 1
        assert (response.flow.progress, response.flow.status) == (progress, status), phase
        assert response.flow.version == version
        (entry,) = response.history_entries
        assert (entry.phase, entry.to_state, entry.flow_version) == (phase, state, version)
        assert entry.kind == H.HISTORY_EVENT_KIND_TRANSITION
        assert entry.user_id == "tester"
        assert entry.progress_after == progress

    final = await api.get(fid)
    assert final.status == F.FLOW_STATUS_COMPLETED
    assert all(p.state == S.PHASE_STATE_COMPLETED for p in final.phases)
    assert all(p.HasField("complete_time") for p in final.phases)
    assert [e.flow_version for e in await api.history(fid)] == list(range(1, version + 1))


async def test_in_phase_progress_moves_overall_progress_smoothly(api: Api) -> None:
    flow = await api.create()
    await api.move(flow.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    response = await api.stub.UpdatePhaseProgress(
        pb.UpdatePhaseProgressRequest(
            flow_id=flow.flow_id, phase="data_import", progress=0.5, request_id=request_id()
        ),
        metadata=api.metadata,
    )
    assert response.flow.progress == 10.0  # 20 x (0.3 + 0.4 x 0.5)
    assert response.flow.phases[0].progress == 0.5
    (entry,) = response.history_entries
    assert entry.kind == H.HISTORY_EVENT_KIND_PROGRESS


async def test_failure_then_recovery_options_then_retry_then_completion(api: Api) -> None:
    flow = await api.create()
    fid = flow.flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    failed = await api.move(
        fid,
        "data_import",
        S.PHASE_STATE_FAILED,
        failure=failure(errors_pb2.ERROR_CODE_AGENT_TIMEOUT, "agent timed out"),
    )
    assert failed.flow.status == F.FLOW_STATUS_FAILED
    context = failed.flow.phases[0].error_context
    assert (context.error_code, context.message, context.retryable) == (
        errors_pb2.ERROR_CODE_AGENT_TIMEOUT,
        "agent timed out",
        True,
    )

    options = await api.stub.GetRecoveryOptions(
        pb.GetRecoveryOptionsRequest(flow_id=fid), metadata=api.metadata
    )
    first = options.options[0]
    assert first.action == pb.RECOVERY_ACTION_RETRY
    assert (first.phase, first.target_state, first.allowed) == (
        "data_import",
        S.PHASE_STATE_RETRY_NEEDED,
        True,
    )
    assert first.attempts_remaining == 3
    assert first.WhichOneof("request") == "retry"
    assert not first.retry.request_id  # the caller sets one
    assert first.retry.expected_version == failed.flow.version
    actions = [o.action for o in options.options]
    assert pb.RECOVERY_ACTION_CANCEL in actions
    assert pb.RECOVERY_ACTION_ROLLBACK in actions

    # Execute the offered request as is (plus a request id): FAILED -> RETRY_NEEDED.
    offered = pb.RetryRequest()
    offered.CopyFrom(first.retry)
    offered.request_id = request_id()
    retried = await api.stub.Retry(offered, metadata=api.metadata)
    assert retried.flow.status == F.FLOW_STATUS_RETRY_PENDING
    assert retried.flow.progress == 2.0  # 20 x 0.1
    assert retried.history_entries[0].kind == H.HISTORY_EVENT_KIND_RETRY

    # RETRY_NEEDED -> IN_PROGRESS counts one attempt.
    restarted = await api.retry(fid, "data_import")
    phase = restarted.flow.phases[0]
    assert (phase.state, phase.retry_count) == (S.PHASE_STATE_IN_PROGRESS, 1)
    assert phase.HasField("last_retry_time")
    assert restarted.flow.status == F.FLOW_STATUS_ERROR_RECOVERY

    done = await api.move(fid, "data_import", S.PHASE_STATE_COMPLETED)
    assert done.flow.status == F.FLOW_STATUS_DATA_GATHERING
    assert not done.flow.phases[0].HasField("error_context")
    for name in PHASES[1:]:
        last = await api.complete(fid, name)
    assert last.flow.status == F.FLOW_STATUS_COMPLETED
    assert last.flow.progress == 100.0


async def test_retries_exhausted(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.complete(fid, "data_import")
    await api.complete(fid, "field_mapping")
    await api.move(fid, "data_cleansing", S.PHASE_STATE_IN_PROGRESS)  # max_retries = 2
    for _ in range(2):
        await api.move(fid, "data_cleansing", S.PHASE_STATE_FAILED)
        await api.retry(fid, "data_cleansing")  # -> RETRY_NEEDED
        await api.retry(fid, "data_cleansing")  # -> IN_PROGRESS, one attempt
    await api.move(fid, "data_cleansing", S.PHASE_STATE_FAILED)

    failure_ = await refused(api.retry(fid, "data_cleansing"))
    assert failure_.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure_.reason == "MAX_RETRIES_EXCEEDED"
    assert failure_.flow_error is not None
    assert failure_.flow_error.attempts_remaining == 0
    assert "rollback" in failure_.flow_error.recovery
    assert failure_.retry_info is None

    options = await api.stub.GetRecoveryOptions(
        pb.GetRecoveryOptionsRequest(flow_id=fid), metadata=api.metadata
    )
    retry = next(o for o in options.options if o.action == pb.RECOVERY_ACTION_RETRY)
    assert not retry.allowed
    assert retry.blocked_by == errors_pb2.ERROR_CODE_MAX_RETRIES_EXCEEDED
    assert retry.attempts_remaining == 0


async def test_rollback_with_cascade_invalidates_started_dependents(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.complete(fid, "data_import")
    await api.complete(fid, "field_mapping")
    await api.move(fid, "data_cleansing", S.PHASE_STATE_IN_PROGRESS)

    response = await api.rollback(fid, "field_mapping", reason="bad mapping")
    states = phase_states(response.flow)
    assert states["data_import"] == S.PHASE_STATE_COMPLETED
    assert states["field_mapping"] == S.PHASE_STATE_ROLLED_BACK
    assert states["data_cleansing"] == S.PHASE_STATE_ROLLED_BACK
    assert states["asset_inventory"] == S.PHASE_STATE_NOT_STARTED
    kinds = [(e.kind, e.phase, e.cause_phase) for e in response.history_entries]
    assert kinds == [
        (H.HISTORY_EVENT_KIND_ROLLBACK, "field_mapping", ""),
        (H.HISTORY_EVENT_KIND_CASCADE_ROLLBACK, "data_cleansing", "field_mapping"),
    ]
    assert response.flow.progress == 20.0
    # A rolled-back phase restarts when its dependencies are complete.
    restarted = await api.move(fid, "field_mapping", S.PHASE_STATE_IN_PROGRESS)
    assert restarted.flow.progress == 26.0


async def test_rollback_without_cascade_refuses_with_active_dependents(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.complete(fid, "data_import")
    await api.move(fid, "field_mapping", S.PHASE_STATE_IN_PROGRESS)
    before = await api.get(fid)

    failure_ = await refused(api.rollback(fid, "data_import", cascade=False))
    assert failure_.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure_.reason == "DEPENDENT_PHASES_ACTIVE"
    assert failure_.flow_error is not None
    assert list(failure_.flow_error.dependent_phases) == ["field_mapping"]
    assert await api.get(fid) == before

    # Without active dependents, cascade=false succeeds.
    other = (await api.create()).flow_id
    await api.complete(other, "data_import")
    response = await api.rollback(other, "data_import", cascade=False)
    assert [e.phase for e in response.history_entries] == ["data_import"]


async def test_pause_blocks_starts_but_running_phases_finish(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    paused = await api.stub.PauseFlow(
        pb.PauseFlowRequest(flow_id=fid, reason="maintenance", request_id=request_id()),
        metadata=api.metadata,
    )
    assert paused.flow.status == F.FLOW_STATUS_PAUSED
    assert paused.flow.status_before_pause == F.FLOW_STATUS_DATA_GATHERING
    assert paused.history_entries[0].kind == H.HISTORY_EVENT_KIND_PAUSE

    finished = await api.move(fid, "data_import", S.PHASE_STATE_COMPLETED)
    assert finished.flow.status == F.FLOW_STATUS_PAUSED
    assert finished.flow.progress == 20.0

    blocked = await refused(api.move(fid, "field_mapping", S.PHASE_STATE_IN_PROGRESS))
    assert blocked.code == grpc.StatusCode.FAILED_PRECONDITION
    assert blocked.reason == "FLOW_PAUSED"

    resumed = await api.stub.ResumeFlow(
        pb.ResumeFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
    )
    assert resumed.flow.status == F.FLOW_STATUS_DATA_GATHERING
    started = await api.move(fid, "field_mapping", S.PHASE_STATE_IN_PROGRESS)
    assert started.flow.status == F.FLOW_STATUS_DISCOVERY


async def test_cancel_is_terminal(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    cancelled = await api.stub.CancelFlow(
        pb.CancelFlowRequest(flow_id=fid, reason="customer left", request_id=request_id()),
        metadata=api.metadata,
    )
    assert cancelled.flow.status == F.FLOW_STATUS_CANCELLED
    assert cancelled.history_entries[0].kind == H.HISTORY_EVENT_KIND_CANCEL

    phase_change = await refused(api.move(fid, "data_import", S.PHASE_STATE_COMPLETED))
    assert (phase_change.code, phase_change.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "FLOW_TERMINAL",
    )
    for call in (
        api.stub.PauseFlow(
            pb.PauseFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
        ),
        api.stub.CancelFlow(
            pb.CancelFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
        ),
        api.stub.ResumeFlow(
            pb.ResumeFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
        ),
    ):
        failure_ = await refused(call)
        assert (failure_.code, failure_.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "INVALID_FLOW_TRANSITION",
        )
    options = await api.stub.GetRecoveryOptions(
        pb.GetRecoveryOptionsRequest(flow_id=fid), metadata=api.metadata
    )
    assert list(options.options) == []


@pytest.mark.parametrize("repeat", [2, 3])
async def test_idempotent_replay_returns_the_first_response(api: Api, repeat: int) -> None:
    fid = (await api.create()).flow_id
    key = request_id()
    responses = [
        await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS, request_id=key)
        for _ in range(repeat)
    ]
    assert all(r == responses[0] for r in responses)
    history = await api.history(fid)
    assert [e.request_id for e in history].count(key) == 1
    assert (await api.get(fid)).version == 2

    create_key = request_id()
    first = await api.create(request_id=create_key)
    again = await api.create(request_id=create_key)
    assert first == again
