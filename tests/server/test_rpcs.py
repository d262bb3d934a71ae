"""The success path of every FlowStateService RPC, over gRPC against a real server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import timestamp_pb2

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer
from flowstate.v1 import errors_pb2, history_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import PHASES, Api, S, phase_states, request_id, struct

F = S


async def test_create_flow(api: Api) -> None:
    chosen = str(uuid.uuid4())
    key = request_id()
    response = await api.stub.CreateFlow(
        pb.CreateFlowRequest(
            request_id=key,
            definition_name="discovery",
            flow_id=chosen.upper(),  # ids are compared canonically
            display_name="ACME wave 1",
            labels={"team": "migrations", "wave": "1"},
        ),
        metadata=api.metadata,
    )
    flow = response.flow
    assert flow.flow_id == chosen
    assert (flow.client_account_id, flow.engagement_id) == (
        api.tenant.client_account_id,
        api.tenant.engagement_id,
    )
    assert (flow.definition_name, flow.definition_version) == ("discovery", 1)
    assert (flow.status, flow.progress, flow.version) == (F.FLOW_STATUS_INITIALIZED, 0.0, 1)
    assert flow.display_name == "ACME wave 1"
    assert dict(flow.labels) == {"team": "migrations", "wave": "1"}
    assert all(p.state == S.PHASE_STATE_NOT_STARTED for p in flow.phases)
    assert flow.HasField("create_time")
    assert flow.create_time == flow.update_time
    (entry,) = response.history_entries
    assert (entry.kind, entry.flow_version, entry.request_id, entry.user_id) == (
        history_pb2.HISTORY_EVENT_KIND_CREATED,
        1,
        key,
        "tester",
    )
    assert entry.flow_id == chosen


async def test_get_flow(api: Api) -> None:
    created = await api.create()
    assert await api.get(created.flow_id) == created
    assert await api.get(created.flow_id.upper()) == created


async def test_list_flows_filters_and_pages(api: Api) -> None:
    fresh = await api.create()
    running = await api.create()
    await api.move(running.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    failed = await api.create()
    await api.move(failed.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    await api.move(failed.flow_id, "data_import", S.PHASE_STATE_FAILED)

    async def ids(**filters: Any) -> set[str]:
        response = await api.stub.ListFlows(
            pb.ListFlowsRequest(**filters),
            metadata=api.metadata,
        )
        assert not response.next_page_token
        return {f.flow_id for f in response.flows}

    assert await ids() == {fresh.flow_id, running.flow_id, failed.flow_id}
    assert await ids(statuses=[F.FLOW_STATUS_FAILED, F.FLOW_STATUS_INITIALIZED]) == {
        fresh.flow_id,
        failed.flow_id,
    }
    in_progress = pb.PhaseStateFilter(phase="data_import", states=[S.PHASE_STATE_IN_PROGRESS])
    assert await ids(phase_states=[in_progress]) == {running.flow_id}
    assert await ids(definition_name="discovery") == {
        fresh.flow_id,
        running.flow_id,
        failed.flow_id,
    }
    assert await ids(definition_name="other") == set()
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    assert await ids(updated_before=past) == set()
    future = timestamp_pb2.Timestamp()
    future.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    assert len(await ids(updated_before=future)) == 3

    seen: list[str] = []
    token = ""
    while True:
        page = await api.stub.ListFlows(
            pb.ListFlowsRequest(page_size=2, page_token=token), metadata=api.metadata
        )
        assert len(page.flows) <= 2
        seen += [f.flow_id for f in page.flows]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted({fresh.flow_id, running.flow_id, failed.flow_id})


async def test_list_flow_history_pages_in_version_order(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.complete(fid, "data_import")
    await api.complete(fid, "field_mapping")  # versions 1..5
    versions: list[int] = []
    token = ""
    while True:
        page = await api.stub.ListFlowHistory(
            pb.ListFlowHistoryRequest(flow_id=fid, page_size=2, page_token=token),
            metadata=api.metadata,
        )
        versions += [e.flow_version for e in page.history_entries]
        token = page.next_page_token
        if not token:
            break
    assert versions == [1, 2, 3, 4, 5]
    after = await api.stub.ListFlowHistory(
        pb.ListFlowHistoryRequest(flow_id=fid, after_version=3), metadata=api.metadata
    )
    assert [e.flow_version for e in after.history_entries] == [4, 5]
    entry = after.history_entries[1]
    assert (entry.from_state, entry.to_state) == (
        S.PHASE_STATE_IN_PROGRESS,
        S.PHASE_STATE_COMPLETED,
    )
    assert (entry.status_before, entry.status_after) == (
        F.FLOW_STATUS_DISCOVERY,
        F.FLOW_STATUS_DISCOVERY,
    )
    assert entry.HasField("time_in_state")
    assert entry.HasField("occur_time")


async def test_transition_records_reason_and_metadata(api: Api) -> None:
    fid = (await api.create()).flow_id
    response = await api.move(
        fid,
        "data_import",
        S.PHASE_STATE_IN_PROGRESS,
        reason="worker picked it up",
        metadata=struct(worker="w-7", attempt=1, tags=["a", "b"]),
    )
    (entry,) = response.history_entries
    assert entry.reason == "worker picked it up"
    assert dict(entry.metadata) == {"worker": "w-7", "attempt": 1, "tags": ["a", "b"]}
    phase = response.flow.phases[0]
    assert phase.HasField("start_time")
    assert phase.HasField("state_enter_time")


async def test_expected_version_applies_when_current(api: Api) -> None:
    flow = await api.create()
    response = await api.move(
        flow.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS, expected_version=flow.version
    )
    assert response.flow.version == flow.version + 1


async def test_get_flow_definition(api: Api) -> None:
    for request in (pb.GetFlowDefinitionRequest(name="discovery"), pb.GetFlowDefinitionRequest()):
        definition = (await api.stub.GetFlowDefinition(request, metadata=api.metadata)).definition
        assert (definition.name, definition.version) == ("discovery", 1)
        assert [p.name for p in definition.phases] == list(PHASES)
        assert [list(p.depends_on) for p in definition.phases] == [[], *[[p] for p in PHASES[:-1]]]
        assert sum(p.weight for p in definition.phases) == 100
        assert definition.phases[0].status_group == F.FLOW_STATUS_DATA_GATHERING
        rules = {r.from_state: list(r.to_states) for r in definition.phase_transitions}
        # The table is the same for every phase; SKIPPED applies to optional phases only.
        assert rules[S.PHASE_STATE_NOT_STARTED] == [
            S.PHASE_STATE_IN_PROGRESS,
            S.PHASE_STATE_SKIPPED,
        ]
        assert not any(p.optional for p in definition.phases)
        assert rules[S.PHASE_STATE_WAITING_APPROVAL] == [
            S.PHASE_STATE_IN_PROGRESS,
            S.PHASE_STATE_COMPLETED,
            S.PHASE_STATE_FAILED,
        ]
        factors = {f.state: f.factor for f in definition.progress_factors}
        assert factors[S.PHASE_STATE_IN_PROGRESS] == 0.3
        assert factors[S.PHASE_STATE_WAITING_APPROVAL] == 0.8


async def test_recovery_options_of_a_completed_phase(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.complete(fid, "data_import")
    response = await api.stub.GetRecoveryOptions(
        pb.GetRecoveryOptionsRequest(flow_id=fid), metadata=api.metadata
    )
    assert response.flow.flow_id == fid
    by_action = {o.action: o for o in response.options}
    rollback = by_action[pb.RECOVERY_ACTION_ROLLBACK]
    assert (rollback.phase, rollback.target_state, rollback.allowed) == (
        "data_import",
        S.PHASE_STATE_ROLLED_BACK,
        True,
    )
    assert rollback.WhichOneof("request") == "rollback"
    assert rollback.rollback.flow_id == fid
    cancel = by_action[pb.RECOVERY_ACTION_CANCEL]
    assert cancel.target_status == F.FLOW_STATUS_CANCELLED
    assert cancel.WhichOneof("request") == "cancel_flow"
    assert response.options[-1].action == pb.RECOVERY_ACTION_CANCEL  # giving up comes last


async def test_validate_transition_without_a_flow_checks_the_tables(api: Api) -> None:
    async def check(**fields: Any) -> pb.ValidateTransitionResponse:
        return await api.stub.ValidateTransition(
            pb.ValidateTransitionRequest(**fields),
            metadata=api.metadata,
        )

    allowed = await check(
        phase_transition=pb.PhaseTransition(
            phase="field_mapping",
            from_state=S.PHASE_STATE_IN_PROGRESS,
            to_state=S.PHASE_STATE_COMPLETED,
        )
    )
    assert allowed.allowed
    assert not allowed.HasField("error")
    assert S.PHASE_STATE_COMPLETED in allowed.valid_transitions

    refused = await check(
        phase_transition=pb.PhaseTransition(
            phase="field_mapping",
            from_state=S.PHASE_STATE_NOT_STARTED,
            to_state=S.PHASE_STATE_COMPLETED,
        )
    )
    assert not refused.allowed
    assert refused.error.error_code == errors_pb2.ERROR_CODE_INVALID_PHASE_TRANSITION
    assert list(refused.valid_transitions) == [S.PHASE_STATE_IN_PROGRESS]
    assert list(refused.error.valid_transitions) == [S.PHASE_STATE_IN_PROGRESS]

    unknown = await check(
        phase_transition=pb.PhaseTransition(
            phase="nope", from_state=S.PHASE_STATE_NOT_STARTED, to_state=S.PHASE_STATE_IN_PROGRESS
        )
    )
    assert not unknown.allowed
    assert unknown.error.error_code == errors_pb2.ERROR_CODE_INVALID_PHASE

    flow_ok = await check(
        flow_transition=pb.FlowTransition(
            from_status=F.FLOW_STATUS_DISCOVERY, to_status=F.FLOW_STATUS_PAUSED
        )
    )
    assert flow_ok.allowed
    terminal = await check(
        flow_transition=pb.FlowTransition(
            from_status=F.FLOW_STATUS_COMPLETED, to_status=F.FLOW_STATUS_ACTIVE
        )
    )
    assert not terminal.allowed
    assert list(terminal.valid_flow_transitions) == []


async def test_validate_transition_on_a_flow_dry_runs_and_writes_nothing(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.complete(fid, "data_import")
    before = await api.get(fid)

    async def check(**fields: Any) -> pb.ValidateTransitionResponse:
        return await api.stub.ValidateTransition(
            pb.ValidateTransitionRequest(flow_id=fid, **fields),
            metadata=api.metadata,
        )

    start = await check(
        phase_transition=pb.PhaseTransition(
            phase="field_mapping", to_state=S.PHASE_STATE_IN_PROGRESS
        )
    )
    assert start.allowed
    assert (start.flow_version, start.resulting_status, start.resulting_progress) == (
        3,
        F.FLOW_STATUS_DISCOVERY,
        26.0,
    )
    assert start.attempts_remaining == 3

    blocked = await check(
        phase_transition=pb.PhaseTransition(
            phase="data_cleansing", to_state=S.PHASE_STATE_IN_PROGRESS
        )
    )
    assert not blocked.allowed
    assert list(blocked.blocking_phases) == ["field_mapping"]
    assert list(blocked.error.blocking_phases) == ["field_mapping"]

    fail = await check(
        phase_transition=pb.PhaseTransition(phase="data_import", to_state=S.PHASE_STATE_FAILED)
    )
    assert not fail.allowed
    assert list(fail.valid_transitions) == [S.PHASE_STATE_RETRY_NEEDED, S.PHASE_STATE_ROLLED_BACK]

    pause = await check(flow_transition=pb.FlowTransition(to_status=F.FLOW_STATUS_PAUSED))
    assert pause.allowed
    assert pause.resulting_status == F.FLOW_STATUS_PAUSED
    # Other targets are derived statuses: the flow table answers.
    back = await check(flow_transition=pb.FlowTransition(to_status=F.FLOW_STATUS_INITIALIZED))
    assert not back.allowed
    assert back.error.error_code == errors_pb2.ERROR_CODE_INVALID_FLOW_TRANSITION
    assert F.FLOW_STATUS_INITIALIZED not in back.valid_flow_transitions
    assert F.FLOW_STATUS_PAUSED in back.valid_flow_transitions
    assert await api.get(fid) == before
    assert [e.flow_version for e in await api.history(fid)] == [1, 2, 3]


async def test_resume_and_cancel_validated_on_a_paused_flow(api: Api) -> None:
    fid = (await api.create()).flow_id
    await api.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    await api.stub.PauseFlow(
        pb.PauseFlowRequest(flow_id=fid, request_id=request_id()), metadata=api.metadata
    )

    async def check(target: S.FlowStatus.ValueType) -> pb.ValidateTransitionResponse:
        return await api.stub.ValidateTransition(
            pb.ValidateTransitionRequest(
                flow_id=fid,
                flow_transition=pb.FlowTransition(to_status=target),
            ),
            metadata=api.metadata,
        )

    resume = await check(F.FLOW_STATUS_DATA_GATHERING)
    assert resume.allowed
    assert resume.resulting_status == F.FLOW_STATUS_DATA_GATHERING
    elsewhere = await check(F.FLOW_STATUS_PLANNING)
    assert not elsewhere.allowed
    assert list(elsewhere.error.valid_flow_transitions) == [
        F.FLOW_STATUS_DATA_GATHERING,
        F.FLOW_STATUS_CANCELLED,
    ]
    cancel = await check(F.FLOW_STATUS_CANCELLED)
    assert (cancel.allowed, cancel.resulting_status) == (True, F.FLOW_STATUS_CANCELLED)


async def test_user_id_comes_from_the_token(server: RunningServer, api: Api) -> None:
    bob = Api(api.stub, server.mint, api.tenant, user="bob")
    fid = (await bob.create()).flow_id
    response = await bob.move(fid, "data_import", S.PHASE_STATE_IN_PROGRESS)
    assert response.history_entries[0].user_id == "bob"
    assert phase_states(response.flow)["data_import"] == S.PHASE_STATE_IN_PROGRESS


async def test_flows_of_each_tenant_are_listed_apart(server: RunningServer, api: Api) -> None:
    other = Api(api.stub, server.mint, Tenant(api.tenant.client_account_id, "another-engagement"))
    mine = await api.create()
    theirs = await other.create()
    listed = await api.stub.ListFlows(pb.ListFlowsRequest(), metadata=api.metadata)
    assert [f.flow_id for f in listed.flows] == [mine.flow_id]
    listed = await other.stub.ListFlows(pb.ListFlowsRequest(), metadata=other.metadata)
    assert [f.flow_id for f in listed.flows] == [theirs.flow_id]
