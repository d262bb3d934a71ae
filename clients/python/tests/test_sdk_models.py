"""Proto messages convert to the SDK's frozen dataclasses (and requests are built right)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import json_format
from scripted_server import ScriptedServicer

from flowstate.client import (
    AsyncFlowstateClient,
    ErrorCode,
    Flow,
    FlowDefinition,
    FlowEvent,
    FlowEventKind,
    FlowStatus,
    HistoryEventKind,
    InvalidPhaseTransition,
    MutationResult,
    PhaseState,
    RecoveryAction,
    RecoveryOptions,
    ValidationResult,
    _requests,
)
from flowstate.v1 import (
    definition_pb2,
    errors_pb2,
    flow_pb2,
    flow_service_pb2,
    history_pb2,
    states_pb2,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def full_flow() -> flow_pb2.Flow:
    flow = flow_pb2.Flow(
        flow_id="7d0c0f4e-0000-4000-8000-000000000001",
        client_account_id="acme",
        engagement_id="e-1",
        definition_name="discovery",
        definition_version=1,
        status=states_pb2.FLOW_STATUS_PAUSED,
        status_before_pause=states_pb2.FLOW_STATUS_DISCOVERY,
        progress=42.0,
        version=9,
        display_name="Q4 discovery",
        labels={"team": "red"},
    )
    flow.create_time.FromDatetime(T0)
    flow.update_time.FromDatetime(T0 + timedelta(minutes=5))
    phase = flow.phases.add(
        name="data_import",
        state=states_pb2.PHASE_STATE_FAILED,
        progress=0.5,
        retry_count=1,
        max_retries=3,
        weight=20,
    )
    phase.last_retry_time.FromDatetime(T0)
    phase.error_context.error_code = errors_pb2.ERROR_CODE_AGENT_TIMEOUT
    phase.error_context.message = "agent timed out"
    phase.error_context.details.update({"agent": "a-1", "attempt": 2})
    phase.error_context.retryable = True
    phase.state_enter_time.FromDatetime(T0)
    phase.start_time.FromDatetime(T0)
    flow.phases.add(name="field_mapping", state=states_pb2.PHASE_STATE_NOT_STARTED, weight=20)
    return flow


def test_flow_converts_every_field() -> None:
    raw = full_flow()

    flow = Flow._from_proto(raw)

    assert flow.raw is raw
    assert flow.status is FlowStatus.PAUSED
    assert flow.status_before_pause is FlowStatus.DISCOVERY
    assert flow.progress == 42.0
    assert flow.version == 9
    assert flow.labels == {"team": "red"}
    assert flow.create_time == T0
    assert flow.update_time == T0 + timedelta(minutes=5)
    data_import = flow.phase("data_import")
    assert data_import.state is PhaseState.FAILED
    assert data_import.attempts_remaining == 2
    assert data_import.last_retry_time == T0
    assert data_import.complete_time is None
    assert data_import.error_context is not None
    assert data_import.error_context.error_code is ErrorCode.AGENT_TIMEOUT
    assert data_import.error_context.details == {"agent": "a-1", "attempt": 2}
    field_mapping = flow.phase("field_mapping")
    assert field_mapping.error_context is None
    assert field_mapping.state_enter_time is None
    with pytest.raises(KeyError):
        flow.phase("nope")
    assert not flow.is_terminal


def test_models_are_frozen_and_compare_by_value_not_by_raw() -> None:
    flow = Flow._from_proto(full_flow())
    with pytest.raises(dataclasses.FrozenInstanceError):
        flow.version = 10  # type: ignore[misc]
    assert flow == Flow._from_proto(full_flow())
    assert "raw" not in repr(flow)


def test_flow_without_pause_has_no_status_before_pause() -> None:
    flow = Flow._from_proto(flow_pb2.Flow(status=states_pb2.FLOW_STATUS_INITIALIZED))
    assert flow.status_before_pause is None
    assert flow.create_time is None


def test_history_entry_and_mutation_result() -> None:
    entry = history_pb2.HistoryEntry(
        flow_id="f",
        flow_version=3,
        kind=history_pb2.HISTORY_EVENT_KIND_CASCADE_ROLLBACK,
        phase="field_mapping",
        from_state=states_pb2.PHASE_STATE_COMPLETED,
        to_state=states_pb2.PHASE_STATE_ROLLED_BACK,
        status_before=states_pb2.FLOW_STATUS_DISCOVERY,
        status_after=states_pb2.FLOW_STATUS_DATA_GATHERING,
        reason="cascade",
        user_id="ops",
        request_id="r-1",
        progress_after=20.0,
        cause_phase="data_import",
    )
    entry.metadata.update({"ticket": "OPS-1"})
    entry.time_in_state.FromTimedelta(timedelta(seconds=90))
    entry.occur_time.FromDatetime(T0)
    pause = history_pb2.HistoryEntry(flow_id="f", flow_version=4, kind=7)  # type: ignore[arg-type]
    raw = flow_service_pb2.RollbackResponse(flow=full_flow(), history_entries=[entry, pause])

    result = MutationResult._from_proto(raw)

    cascade, paused = result.history_entries
    assert result.flow.version == 9
    assert cascade.kind is HistoryEventKind.CASCADE_ROLLBACK
    assert (cascade.from_state, cascade.to_state) == (PhaseState.COMPLETED, PhaseState.ROLLED_BACK)
    assert cascade.cause_phase == "data_import"
    assert cascade.time_in_state == timedelta(seconds=90)
    assert cascade.metadata == {"ticket": "OPS-1"}
    assert cascade.occur_time == T0
    assert paused.kind is HistoryEventKind.PAUSE
    assert (paused.phase, paused.from_state, paused.to_state) == (None, None, None)
    assert paused.time_in_state is None


def test_flow_definition() -> None:
    raw = definition_pb2.FlowDefinition(name="discovery", version=1)
    raw.phases.add(name="data_import", weight=20, max_retries=3, status_group=3)
    raw.phases.add(name="field_mapping", depends_on=["data_import"], weight=20)
    raw.phase_transitions.add(from_state=1, to_states=[2])
    raw.progress_factors.add(state=2, factor=0.3)

    definition = FlowDefinition._from_proto(raw)

    assert definition.phase("data_import").status_group is FlowStatus.DATA_GATHERING
    assert definition.phase("field_mapping").status_group is None
    assert definition.phase("field_mapping").depends_on == ("data_import",)
    assert definition.can_transition(PhaseState.NOT_STARTED, PhaseState.IN_PROGRESS)
    assert not definition.can_transition(PhaseState.NOT_STARTED, PhaseState.COMPLETED)
    assert definition.progress_factors[PhaseState.IN_PROGRESS] == 0.3


def test_validation_result_carries_an_unraised_error() -> None:
    raw = flow_service_pb2.ValidateTransitionResponse(
        allowed=False,
        error=errors_pb2.FlowError(
            error_code=errors_pb2.ERROR_CODE_INVALID_PHASE_TRANSITION,
            message="no",
            valid_transitions=[states_pb2.PHASE_STATE_IN_PROGRESS],
        ),
        valid_transitions=[states_pb2.PHASE_STATE_IN_PROGRESS],
        attempts_remaining=2,
    )

    result = ValidationResult._from_proto(raw)

    assert not result.allowed
    assert isinstance(result.error, InvalidPhaseTransition)
    assert result.error.valid_transitions == [PhaseState.IN_PROGRESS]
    assert result.valid_transitions == (PhaseState.IN_PROGRESS,)
    assert result.attempts_remaining == 2
    assert result.resulting_status is None
    with pytest.raises(InvalidPhaseTransition):
        result.raise_for_error()
    allowed = ValidationResult._from_proto(
        flow_service_pb2.ValidateTransitionResponse(
            allowed=True, resulting_status=states_pb2.FLOW_STATUS_DATA_GATHERING
        )
    )
    allowed.raise_for_error()
    assert allowed.resulting_status is FlowStatus.DATA_GATHERING
    assert allowed.attempts_remaining is None


def test_flow_events() -> None:
    snapshot = flow_service_pb2.FlowEvent(flow_id="f", flow_version=2, snapshot=full_flow())
    heartbeat = flow_service_pb2.FlowEvent()
    heartbeat.heartbeat.server_time.FromDatetime(T0)

    first = FlowEvent._from_proto(snapshot, cursor="c")
    beat = FlowEvent._from_proto(heartbeat)

    assert first.kind is FlowEventKind.SNAPSHOT
    assert first.snapshot is not None
    assert first.snapshot.version == 9
    assert first.cursor == "c"
    assert beat.kind is FlowEventKind.HEARTBEAT
    assert beat.heartbeat_time == T0
    assert beat.cursor is None


async def test_recovery_option_executes_its_request_with_a_fresh_request_id(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    option = flow_service_pb2.RecoveryOption(
        action=flow_service_pb2.RECOVERY_ACTION_ROLLBACK,
        phase="data_import",
        target_state=states_pb2.PHASE_STATE_ROLLED_BACK,
        allowed=True,
        rollback=flow_service_pb2.RollbackRequest(flow_id="f", phase="data_import", cascade=True),
    )
    blocked = flow_service_pb2.RecoveryOption(
        action=flow_service_pb2.RECOVERY_ACTION_RETRY,
        phase="data_import",
        allowed=False,
        blocked_by=errors_pb2.ERROR_CODE_MAX_RETRIES_EXCEEDED,
        attempts_remaining=0,
        retry=flow_service_pb2.RetryRequest(flow_id="f", phase="data_import"),
    )
    servicer.add(
        "GetRecoveryOptions",
        flow_service_pb2.GetRecoveryOptionsResponse(flow=full_flow(), options=[option, blocked]),
    )
    servicer.add("Rollback", flow_service_pb2.RollbackResponse(flow=full_flow()))

    options = await client.get_recovery_options("f")
    result = await options.options[0].execute(client)

    assert isinstance(options, RecoveryOptions)
    assert [o.action for o in options.allowed] == [RecoveryAction.ROLLBACK]
    assert options.options[1].blocked_by is ErrorCode.MAX_RETRIES_EXCEEDED
    assert options.options[1].attempts_remaining == 0
    assert result.flow.version == 9
    (sent,) = servicer.requests("Rollback")
    assert sent.phase == "data_import"
    assert sent.request_id
    assert option.rollback.request_id == ""  # the option's own request is left untouched


def test_validate_transition_requests() -> None:
    phase = _requests.validate_transition(
        flow_id="f",
        definition_name=None,
        phase="data_import",
        from_state=None,
        to_state="in_progress",
        from_status=None,
        to_status=None,
    )
    assert phase.WhichOneof("transition") == "phase_transition"
    assert PhaseState(phase.phase_transition.to_state) is PhaseState.IN_PROGRESS
    flow = _requests.validate_transition(
        flow_id=None,
        definition_name="discovery",
        phase=None,
        from_state=None,
        to_state=None,
        from_status=FlowStatus.PAUSED,
        to_status="CANCELLED",
    )
    assert FlowStatus(flow.flow_transition.from_status) is FlowStatus.PAUSED
    assert FlowStatus(flow.flow_transition.to_status) is FlowStatus.CANCELLED
    with pytest.raises(ValueError, match="needs from_state"):
        _requests.validate_transition(
            flow_id=None,
            definition_name=None,
            phase="p",
            from_state=None,
            to_state=2,
            from_status=None,
            to_status=None,
        )
    with pytest.raises(ValueError, match="give a phase transition"):
        _requests.validate_transition(
            flow_id="f",
            definition_name=None,
            phase=None,
            from_state=None,
            to_state=None,
            from_status=None,
            to_status=None,
        )


def test_list_flows_request_filters() -> None:
    request = _requests.list_flows(
        statuses=["FAILED", FlowStatus.RETRY_PENDING],
        phase_states={"data_import": ["FAILED", 7], "field_mapping": "IN_PROGRESS"},
        updated_before=timedelta(hours=1),
        definition_name="discovery",
        page_size=10,
        page_token=None,
        now=T0,
    )
    assert json_format.MessageToDict(request) == {
        "pageSize": 10,
        "statuses": ["FLOW_STATUS_FAILED", "FLOW_STATUS_RETRY_PENDING"],
        "phaseStates": [
            {"phase": "data_import", "states": ["PHASE_STATE_FAILED", "PHASE_STATE_RETRY_NEEDED"]},
            {"phase": "field_mapping", "states": ["PHASE_STATE_IN_PROGRESS"]},
        ],
        "updatedBefore": "2026-11-25T11:00:00Z",
        "definitionName": "discovery",
    }
    with pytest.raises(ValueError, match="timezone-aware"):
        _requests.list_flows(
            statuses=(),
            phase_states=None,
            updated_before=datetime(2026, 1, 1),  # the point of the test
            definition_name=None,
            page_size=0,
            page_token=None,
        )


def test_transition_request_carries_the_failure_report() -> None:
    request = _requests.transition_phase(
        "f",
        "data_import",
        "FAILED",
        reason="boom",
        error_code="AGENT_TIMEOUT",
        error_message="agent timed out",
        error_details={"agent": "a-1"},
        metadata={"host": "w-3"},
        request_id=None,
        expected_version=4,
    )
    assert ErrorCode(request.failure.error_code) is ErrorCode.AGENT_TIMEOUT
    assert request.failure.details["agent"] == "a-1"
    assert request.metadata["host"] == "w-3"
    assert request.expected_version == 4
    assert request.request_id
    plain = _requests.rollback(
        "f", "p", cascade=False, reason="", request_id="r", expected_version=None
    )
    assert plain.HasField("cascade")
    assert not plain.HasField("expected_version")
    with pytest.raises(ValueError, match="flow_id"):
        _requests.get_flow("")


async def test_iterators_follow_page_tokens(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add(
        "ListFlows",
        flow_service_pb2.ListFlowsResponse(
            flows=[flow_pb2.Flow(flow_id="a"), flow_pb2.Flow(flow_id="b")], next_page_token="p2"
        ),
        flow_service_pb2.ListFlowsResponse(flows=[flow_pb2.Flow(flow_id="c")]),
    )
    servicer.add(
        "ListFlowHistory",
        flow_service_pb2.ListFlowHistoryResponse(
            history_entries=[history_pb2.HistoryEntry(flow_version=2)], next_page_token="h2"
        ),
        flow_service_pb2.ListFlowHistoryResponse(
            history_entries=[history_pb2.HistoryEntry(flow_version=3)]
        ),
    )

    flows = [flow.flow_id async for flow in client.iter_flows(statuses=["FAILED"], page_size=2)]
    versions = [e.flow_version async for e in client.iter_flow_history("f", after_version=1)]

    assert flows == ["a", "b", "c"]
    assert [r.page_token for r in servicer.requests("ListFlows")] == ["", "p2"]
    assert all(list(r.statuses) == [FlowStatus.FAILED] for r in servicer.requests("ListFlows"))
    assert versions == [2, 3]
    assert [r.page_token for r in servicer.requests("ListFlowHistory")] == ["", "h2"]
    assert all(r.after_version == 1 for r in servicer.requests("ListFlowHistory"))
