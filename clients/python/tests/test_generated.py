"""Tests of the generated ``flowstate.v1`` Python code (``scripts/generate.sh``).

They check that every generated module imports, that a ``Flow`` with every field set survives
binary and JSON round trips, and that the enums and the service match DESIGN.md. Messages are
filled generically by walking their descriptors, so fields added to the protos later are covered
without touching this file.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, cast

import pytest
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

import flowstate.v1
from flowstate.v1 import flow_pb2, flow_service_pb2, states_pb2

# DESIGN.md, "Phase states" and "Flow status", in proto order after *_UNSPECIFIED = 0.
PHASE_STATES = [
    "NOT_STARTED",
    "IN_PROGRESS",
    "WAITING_VALIDATION",
    "WAITING_APPROVAL",
    "COMPLETED",
    "FAILED",
    "RETRY_NEEDED",
    "ROLLED_BACK",
    "SKIPPED",  # DESIGN.md section 9: optional phases
]
FLOW_STATUSES = [
    "INITIALIZED",
    "ACTIVE",
    "DATA_GATHERING",
    "DISCOVERY",
    "ASSESSMENT_READY",
    "PLANNING",
    "WAITING_APPROVAL",
    "RETRY_PENDING",
    "ERROR_RECOVERY",
    "COMPLETED",
    "FAILED",
    "PAUSED",
    "CANCELLED",
]
# DESIGN.md section 3: the RPCs of FlowStateService; the two Watch RPCs are server streaming.
RPCS = {
    "CreateFlow",
    "CreateFlowDefinition",  # section 9
    "ListFlowDefinitions",
    "SkipPhase",
    "Heartbeat",  # section 10
    "CountFlows",  # section 12
    "StartBulkAction",
    "GetBulkAction",
    "ListBulkActions",
    "ListBulkActionResults",
    "CancelBulkAction",
    "WatchBulkAction",
    "CreateWebhook",
    "ListWebhooks",
    "DeleteWebhook",
    "TestWebhook",
    "ReplayWebhook",
    "DecidePhase",  # section 10 (approvals)
    "GetFlow",
    "ListFlows",
    "ValidateTransition",
    "TransitionPhase",
    "UpdatePhaseProgress",
    "Rollback",
    "Retry",
    "GetRecoveryOptions",
    "PauseFlow",
    "ResumeFlow",
    "CancelFlow",
    "ListFlowHistory",
    "GetFlowDefinition",
    "WatchFlow",
    "WatchFlows",  # section 10 (timers)
    "LinkChildFlow",  # issue 21
    "GetRetentionPolicy",  # section 12 (retention)
    "SetRetentionPolicy",
}
STREAMING_RPCS = {"WatchFlow", "WatchFlows", "WatchBulkAction"}

_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}


def _last_enum_number(enum: EnumDescriptor) -> int:
    return enum.values[-1].number


def _scalar(field: FieldDescriptor) -> Any:
    """A non-default value for a scalar or enum field."""
    if field.type in _INT_TYPES:
        return 7
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5  # exactly representable as a float32 too
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-value"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\x01\xff"
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _last_enum_number(cast(EnumDescriptor, field.enum_type))
    raise AssertionError(f"unexpected field type {field.type} of {field.full_name}")


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _fields_to_set(descriptor: Descriptor) -> list[FieldDescriptor]:
    """Every field, except that only the first member of each oneof is chosen."""
    chosen: list[FieldDescriptor] = []
    seen_oneofs: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(oneof.name)
        chosen.append(field)
    return chosen


def fill(message: Message, stack: tuple[str, ...] = ()) -> None:
    """Set every field of ``message`` (one per oneof) to a non-default value, recursively.

    Repeated and map fields get one element; enums get their last value; a message type already
    being filled higher up (recursion such as google.protobuf.Struct) is left empty.
    """
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    if descriptor.full_name == "google.protobuf.Any":
        message.Pack(timestamp_pb2.Timestamp(seconds=7, nanos=7))  # type: ignore[attr-defined]
        return
    stack = (*stack, descriptor.full_name)
    for field in _fields_to_set(descriptor):
        value = getattr(message, field.name)
        if _is_map(field):
            entry = cast(Descriptor, field.message_type)
            key_field = entry.fields_by_name["key"]
            value_field = entry.fields_by_name["value"]
            key = _scalar(key_field)
            if value_field.message_type is not None:
                fill(value[key], stack)
            else:
                value[key] = _scalar(value_field)
        elif field.is_repeated:
            if field.message_type is not None:
                fill(value.add(), stack)
            else:
                value.append(_scalar(field))
        elif field.message_type is not None:
            if field.message_type.full_name not in stack:
                fill(value, stack)
            value.SetInParent()
        else:
            setattr(message, field.name, _scalar(field))


def unset_fields(message: Message, path: str) -> list[str]:
    """Paths of the fields that ``fill`` should have set but did not."""
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    if descriptor.full_name.startswith("google.protobuf."):
        return []
    present = {field.name for field, _ in message.ListFields()}
    missing: list[str] = []
    for field in _fields_to_set(descriptor):
        where = f"{path}.{field.name}"
        if field.name not in present:
            missing.append(where)
        elif field.message_type is not None and not _is_map(field):
            value = getattr(message, field.name)
            for child in value if field.is_repeated else [value]:
                missing.extend(unset_fields(child, where))
    return missing


def _generated_modules() -> list[str]:
    return sorted(
        f"flowstate.v1.{info.name}" for info in pkgutil.iter_modules(flowstate.v1.__path__)
    )


def test_flowstate_is_a_namespace_package() -> None:
    # Shared with the server distribution (src/flowstate): no flowstate/__init__.py anywhere.
    assert getattr(flowstate, "__file__", None) is None
    assert len(list(flowstate.__path__)) >= 1


def test_generated_modules_exist() -> None:
    modules = _generated_modules()
    assert "flowstate.v1.flow_pb2" in modules
    assert "flowstate.v1.flow_service_pb2_grpc" in modules


_PROTO_DIR = Path(__file__).resolve().parents[3] / "protos" / "flowstate" / "v1"


def test_every_proto_file_has_its_generated_modules() -> None:
    protos = sorted(p.stem for p in _PROTO_DIR.glob("*.proto"))
    assert protos, f"no .proto files under {_PROTO_DIR}"
    expected = {f"flowstate.v1.{stem}_pb2" for stem in protos} | {
        "flowstate.v1.flow_service_pb2_grpc",
        "flowstate.v1.flow_service_connect",  # Connect / gRPC-Web (the `connect` extra)
    }
    assert set(_generated_modules()) == expected


@pytest.mark.parametrize("module", [m for m in _generated_modules() if m.endswith("_pb2")])
def test_generated_message_module_describes_its_proto_file(module: str) -> None:
    """Each _pb2 module holds the descriptor of the .proto file it is named after."""
    imported = importlib.import_module(module)
    stem = module.rsplit(".", 1)[1].removesuffix("_pb2")
    assert imported.DESCRIPTOR.name == f"flowstate/v1/{stem}.proto"
    assert imported.DESCRIPTOR.package == "flowstate.v1"


def test_generated_grpc_module_has_the_stub_and_servicer_of_every_rpc() -> None:
    grpc_module = importlib.import_module("flowstate.v1.flow_service_pb2_grpc")
    service = flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"]
    servicer = grpc_module.FlowStateServiceServicer
    assert service.methods, "FlowStateService has no RPCs"
    for method in service.methods:
        assert callable(getattr(servicer, method.name)), method.name
    assert callable(grpc_module.add_FlowStateServiceServicer_to_server)


def _full_flow() -> flow_pb2.Flow:
    flow = flow_pb2.Flow()
    fill(flow)
    return flow


def test_fill_sets_every_field() -> None:
    assert unset_fields(_full_flow(), "Flow") == []


def test_flow_binary_round_trip() -> None:
    flow = _full_flow()
    data = flow.SerializeToString(deterministic=True)
    decoded = flow_pb2.Flow.FromString(data)
    assert decoded == flow
    assert decoded.SerializeToString(deterministic=True) == data
    assert unset_fields(decoded, "Flow") == []


def test_flow_json_round_trip() -> None:
    flow = _full_flow()
    decoded = json_format.Parse(json_format.MessageToJson(flow), flow_pb2.Flow())
    assert decoded == flow


def _names_after_unspecified(enum: EnumDescriptor, prefix: str) -> list[str]:
    values = sorted(enum.values, key=lambda value: value.number)
    assert values[0].name == f"{prefix}UNSPECIFIED"
    assert values[0].number == 0
    assert [value.number for value in values] == list(range(len(values)))
    return [value.name.removeprefix(prefix) for value in values[1:]]


def test_phase_state_names_match_design() -> None:
    enum = states_pb2.DESCRIPTOR.enum_types_by_name["PhaseState"]
    assert _names_after_unspecified(enum, "PHASE_STATE_") == PHASE_STATES


def test_flow_status_names_match_design() -> None:
    enum = states_pb2.DESCRIPTOR.enum_types_by_name["FlowStatus"]
    assert _names_after_unspecified(enum, "FLOW_STATUS_") == FLOW_STATUSES


def test_service_has_every_rpc() -> None:
    service = flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"]
    assert set(service.methods_by_name) == RPCS
    streaming = {m.name for m in service.methods if m.server_streaming}
    assert streaming == STREAMING_RPCS
    assert not any(m.client_streaming for m in service.methods)


def test_grpc_stub_and_servicer_exist() -> None:
    grpc_module = importlib.import_module("flowstate.v1.flow_service_pb2_grpc")
    assert hasattr(grpc_module, "FlowStateServiceStub")
    servicer = grpc_module.FlowStateServiceServicer
    for rpc in RPCS:
        assert callable(getattr(servicer, rpc))
