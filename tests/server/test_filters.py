"""ListFlows / CountFlows / WatchFlows with a filter through real gRPC: results, positions of
parse errors, group keys, and a live stream that only carries matching changes."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from flowstate.v1 import errors_pb2, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, failure, refused

S = states_pb2


async def _fail(api: Api, flow_id: str, code: int) -> None:
    await api.move(flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    await api.move(flow_id, "data_import", S.PHASE_STATE_FAILED, failure=failure(code))


async def test_the_operator_finds_flows_failed_by_an_external_service_in_the_last_hour(
    api: Api,
) -> None:
    external = await api.create(labels={"team": "core"})
    timeout = await api.create(labels={"team": "core"})
    other_team = await api.create(labels={"team": "web"})
    await api.create(labels={"team": "core"})
    await _fail(api, external.flow_id, errors_pb2.ERROR_CODE_EXTERNAL_SERVICE_ERROR)
    await _fail(api, timeout.flow_id, errors_pb2.ERROR_CODE_AGENT_TIMEOUT)
    await _fail(api, other_team.flow_id, errors_pb2.ERROR_CODE_EXTERNAL_SERVICE_ERROR)

    text = 'error = EXTERNAL_SERVICE_ERROR AND updated > -1h AND labels.team = "core"'
    listed = await api.stub.ListFlows(pb.ListFlowsRequest(filter=text), metadata=api.metadata)
    assert [f.flow_id for f in listed.flows] == [external.flow_id]

    failed = await api.stub.ListFlows(
        pb.ListFlowsRequest(filter="status = FAILED", statuses=[S.FLOW_STATUS_FAILED]),
        metadata=api.metadata,
    )
    assert {f.flow_id for f in failed.flows} == {
        external.flow_id,
        timeout.flow_id,
        other_team.flow_id,
    }

    counted = await api.stub.CountFlows(
        pb.CountFlowsRequest(filter="labels.team = core", group_by="status"),
        metadata=api.metadata,
    )
    assert counted.total_count == 3
    assert [(g.key, g.count) for g in counted.groups] == [("FAILED", 2), ("INITIALIZED", 1)]
    by_phase = await api.stub.CountFlows(
        pb.CountFlowsRequest(group_by="phase.data_import"), metadata=api.metadata
    )
    assert dict((g.key, g.count) for g in by_phase.groups) == {"FAILED": 3, "NOT_STARTED": 1}
    by_definition = await api.stub.CountFlows(
        pb.CountFlowsRequest(group_by="definition"), metadata=api.metadata
    )
    assert [(g.key, g.count) for g in by_definition.groups] == [("discovery", 4)]


@pytest.mark.parametrize(
    ("text", "position"),
    [("status = NOPE", 9), ("labels.team = 'x' OR", 20), ("(stuck", 6), ("a ; b", 2)],
)
async def test_a_filter_that_does_not_parse_is_invalid_argument_with_its_position(
    api: Api, text: str, position: int
) -> None:
    for call in (
        api.stub.ListFlows(pb.ListFlowsRequest(filter=text), metadata=api.metadata),
        api.stub.CountFlows(pb.CountFlowsRequest(filter=text), metadata=api.metadata),
    ):
        failure_ = await refused(call)
        assert failure_.code is grpc.StatusCode.INVALID_ARGUMENT
        assert failure_.reason == "MALFORMED_REQUEST"
        assert failure_.flow_error is not None
        assert failure_.flow_error.details["position"] == position
        assert failure_.flow_error.details["field"] == "filter"
        assert f"at position {position}" in failure_.message


async def test_count_flows_refuses_an_unknown_grouping(api: Api) -> None:
    failure_ = await refused(
        api.stub.CountFlows(pb.CountFlowsRequest(group_by="colour"), metadata=api.metadata)
    )
    assert failure_.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure_.violated_fields == {"group_by"}


async def test_watch_flows_with_a_filter_streams_only_matching_flows(api: Api) -> None:
    core = await api.create(labels={"team": "core"})
    web = await api.create(labels={"team": "web"})
    call = api.stub.WatchFlows(
        pb.WatchFlowsRequest(filter='labels.team = "core" AND phase.data_import != COMPLETED'),
        metadata=api.metadata,
    )
    stream = aiter(call)
    snapshot = await asyncio.wait_for(anext(stream), 10)
    assert snapshot.event.flow_id == core.flow_id
    assert snapshot.event.WhichOneof("kind") == "snapshot"
    await api.move(web.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    await api.complete(core.flow_id, "data_import")  # IN_PROGRESS matches, COMPLETED does not
    changes: list[pb.FlowEvent] = []
    while len(changes) < 1:
        event = (await asyncio.wait_for(anext(stream), 10)).event
        if event.WhichOneof("kind") == "change":
            changes.append(event)
    assert [(e.flow_id, e.change.to_state) for e in changes] == [
        (core.flow_id, S.PHASE_STATE_IN_PROGRESS)
    ]
    await api.move(core.flow_id, "field_mapping", S.PHASE_STATE_IN_PROGRESS)
    marker = await api.create(labels={"team": "core"})  # matches: ends the wait
    while True:
        event = (await asyncio.wait_for(anext(stream), 10)).event
        if event.WhichOneof("kind") == "change":
            break
    assert event.flow_id == marker.flow_id  # nothing of web, nothing after core's completion
    call.cancel()


async def test_watch_flows_refuses_a_bad_filter(api: Api) -> None:
    call = api.stub.WatchFlows(pb.WatchFlowsRequest(filter="status ="), metadata=api.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await anext(aiter(call))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
