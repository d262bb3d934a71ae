"""The SDK's IntEnums mirror the proto enums exactly, without the value prefix."""

from __future__ import annotations

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from flowstate.client import (
    ErrorCode,
    FlowStatus,
    HistoryEventKind,
    PhaseState,
    RecoveryAction,
    WatchRelation,
)
from flowstate.v1 import errors_pb2, flow_service_pb2, history_pb2, states_pb2

MIRRORS = [
    (PhaseState, states_pb2.PhaseState, "PHASE_STATE_"),
    (FlowStatus, states_pb2.FlowStatus, "FLOW_STATUS_"),
    (ErrorCode, errors_pb2.ErrorCode, "ERROR_CODE_"),
    (HistoryEventKind, history_pb2.HistoryEventKind, "HISTORY_EVENT_KIND_"),
    (RecoveryAction, flow_service_pb2.RecoveryAction, "RECOVERY_ACTION_"),
    (WatchRelation, flow_service_pb2.WatchRelation, "WATCH_RELATION_"),
]


@pytest.mark.parametrize(
    ("enum", "proto", "prefix"), MIRRORS, ids=[mirror[0].__name__ for mirror in MIRRORS]
)
def test_enum_mirrors_proto(enum: type[PhaseState], proto: EnumTypeWrapper, prefix: str) -> None:
    proto_values = {name.removeprefix(prefix): number for name, number in proto.items()}
    assert {member.name: member.value for member in enum} == proto_values
    assert enum.proto_prefix() == prefix
    for member in enum:
        assert proto.Value(member.proto_name) == member


@pytest.mark.parametrize(
    "spelling",
    ["IN_PROGRESS", "in_progress", "in-progress", "PHASE_STATE_IN_PROGRESS", 2, PhaseState(2)],
)
def test_parse_accepts_members_numbers_and_names(spelling: int | str) -> None:
    assert PhaseState.parse(spelling) is PhaseState.IN_PROGRESS


def test_parse_rejects_unknown_names_with_the_choices() -> None:
    with pytest.raises(ValueError, match="NOT_STARTED, IN_PROGRESS"):
        PhaseState.parse("RUNNING")
    with pytest.raises(TypeError):
        PhaseState.parse(True)


def test_unknown_numbers_become_pseudo_members() -> None:
    unknown = FlowStatus(42)
    assert unknown.name == "UNKNOWN_42"
    assert unknown == 42
    assert not unknown.is_terminal


def test_terminal_statuses() -> None:
    assert {status for status in FlowStatus if status.is_terminal} == {
        FlowStatus.COMPLETED,
        FlowStatus.CANCELLED,
    }
