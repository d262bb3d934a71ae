"""`DefinitionView.flow_to_proto` / `fill_flow` (skeleton copy, in-place timestamps) build
exactly the message of the straightforward conversion they replaced, kept here as the oracle."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from flowstate.core.definitions import BUILTIN_DEFINITIONS
from flowstate.core.model import ErrorCode, Flow, FlowStatus, Phase, PhaseError, PhaseState, Tenant
from flowstate.server.convert import DefinitionView, set_timestamp, timestamp
from flowstate.v1 import errors_pb2, flow_pb2, flow_service_pb2, states_pb2

DISCOVERY = BUILTIN_DEFINITIONS["discovery"]
T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def _oracle_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return message


# The oracle maps values by their proto names, not through the conversion tables under test.
def _oracle_state(state: PhaseState) -> states_pb2.PhaseState.ValueType:
    return states_pb2.PhaseState.Value(f"PHASE_STATE_{state.name}")


def _oracle_status(status: FlowStatus) -> states_pb2.FlowStatus.ValueType:
    return states_pb2.FlowStatus.Value(f"FLOW_STATUS_{status.name}")


def _oracle_error(error: PhaseError) -> errors_pb2.PhaseFailure:
    details = struct_pb2.Struct()
    details.update(error.details)
    return errors_pb2.PhaseFailure(
        error_code=errors_pb2.ErrorCode.Value(f"ERROR_CODE_{error.error_code.name}"),
        message=error.message,
        details=details,
        retryable=error.retryable,
    )


def _oracle(flow: Flow) -> flow_pb2.Flow:
    limits = {p.name: (p.weight, p.max_retries) for p in DISCOVERY.phases}
    phases = []
    for phase in flow.phases:
        weight, max_retries = limits.get(phase.name, (0, 0))
        pm = flow_pb2.Phase(
            name=phase.name,
            state=_oracle_state(phase.state),
            progress=phase.progress,
            retry_count=phase.retry_count,
            max_retries=max_retries,
            weight=weight,
        )
        if phase.last_retry_at is not None:
            pm.last_retry_time.CopyFrom(_oracle_timestamp(phase.last_retry_at))
        if phase.error is not None:
            pm.error_context.CopyFrom(_oracle_error(phase.error))
        if phase.state_entered_at is not None:
            pm.state_enter_time.CopyFrom(_oracle_timestamp(phase.state_entered_at))
        if phase.started_at is not None:
            pm.start_time.CopyFrom(_oracle_timestamp(phase.started_at))
        if phase.completed_at is not None:
            pm.complete_time.CopyFrom(_oracle_timestamp(phase.completed_at))
        phases.append(pm)
    message = flow_pb2.Flow(
        flow_id=flow.flow_id,
        client_account_id=flow.tenant.client_account_id,
        engagement_id=flow.tenant.engagement_id,
        definition_name=flow.definition_name,
        definition_version=flow.definition_version,
        status=_oracle_status(flow.status),
        phases=phases,
        progress=flow.progress,
        version=flow.version,
        display_name=flow.display_name,
        labels=dict(flow.labels),
    )
    if flow.status_before_pause is not None:
        message.status_before_pause = _oracle_status(flow.status_before_pause)
    if flow.created_at is not None:
        message.create_time.CopyFrom(_oracle_timestamp(flow.created_at))
    if flow.updated_at is not None:
        message.update_time.CopyFrom(_oracle_timestamp(flow.updated_at))
    return message


def _flow(**changes: object) -> Flow:
    flow = Flow(
        flow_id="f-1",
        tenant=Tenant("acct", "eng"),
        definition_name=DISCOVERY.name,
        definition_version=DISCOVERY.version,
        phases=tuple(Phase(name=name) for name in DISCOVERY.phase_names),
        version=1,
        created_at=T0,
        updated_at=T0,
    )
    return dataclasses.replace(flow, **changes)  # type: ignore[arg-type]


def _busy() -> Flow:
    first, second, *rest = DISCOVERY.phase_names
    phases = (
        Phase(
            first,
            PhaseState.COMPLETED,
            progress=1.0,
            retry_count=2,
            last_retry_at=T0 + timedelta(seconds=5),
            state_entered_at=T0 + timedelta(seconds=9),
            started_at=T0 + timedelta(seconds=1),
            completed_at=T0 + timedelta(seconds=9, microseconds=1),
        ),
        Phase(
            second,
            PhaseState.FAILED,
            progress=0.4,
            error=PhaseError(ErrorCode.PHASE_EXECUTION_FAILED, "boom", {"rows": 5, "x": "y"}),
            state_entered_at=T0 + timedelta(minutes=3),
            started_at=T0 + timedelta(minutes=2),
        ),
        *(Phase(name) for name in rest),
    )
    return _flow(
        phases=phases,
        status=FlowStatus.PAUSED,
        status_before_pause=FlowStatus.ACTIVE,
        progress=0.37,
        version=12,
        updated_at=T0 + timedelta(hours=1),
        display_name="Busy",
        labels={"team": "a", "env": "b"},
    )


CASES = {
    "new": _flow(),
    "busy": _busy(),
    "no timestamps": _flow(created_at=None, updated_at=None),
    "naive and offset times": _flow(
        created_at=datetime(2026, 1, 1, 12, 0, 0, 5),
        updated_at=datetime(2026, 1, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=-7))),
    ),
    "before the epoch": _flow(created_at=datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    "phases not the definition's": _flow(phases=(Phase("zeta"), Phase(DISCOVERY.phase_names[0]))),
    "fewer phases": _flow(phases=(Phase(DISCOVERY.phase_names[0], PhaseState.IN_PROGRESS),)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flow_message_matches_the_straightforward_conversion(name: str) -> None:
    flow = CASES[name]
    view = DefinitionView(DISCOVERY)
    expected = _oracle(flow)
    assert view.flow_to_proto(flow) == expected
    # Filled in place into a response field that held another flow: replaced entirely.
    response = flow_service_pb2.GetFlowResponse()
    view.fill_flow(response.flow, _busy())
    view.fill_flow(response.flow, flow)
    assert response.flow == expected
    assert response.flow.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC),
        datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 6, 1, 0, 0, 0, 123456),
        datetime(2026, 6, 1, 0, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_timestamps_match_from_datetime(moment: datetime) -> None:
    expected = _oracle_timestamp(moment)
    assert timestamp(moment) == expected
    target = flow_pb2.Phase()
    set_timestamp(target.start_time, moment)
    assert target.start_time == expected
