"""The definitions registry end to end through the real server (DESIGN.md section 9).

Registration (idempotent by body and by request id, versions, validate_only), version pinning
and old-version flows, tenant isolation (another tenant's definition is NOT_FOUND and never
listed), shadowing a built-in, SkipPhase on a diamond with parallel branches, and every refusal
with its rich error.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from flowstate.core.model import Tenant
from flowstate.v1 import definition_pb2, history_pb2, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import Api, failure, phase_states, refused, request_id

S = states_pb2
F = states_pb2


def diamond(name: str = "diamond", d_weight: int = 25) -> definition_pb2.FlowDefinition:
    """a -> b, a -> c (optional), b + c -> d."""
    return definition_pb2.FlowDefinition(
        name=name,
        display_name="Diamond",
        phases=[
            definition_pb2.PhaseDefinition(name="a", weight=25),
            definition_pb2.PhaseDefinition(
                name="b",
                depends_on=["a"],
                weight=50 - d_weight,
                status_group=F.FLOW_STATUS_DISCOVERY,
            ),
            definition_pb2.PhaseDefinition(
                name="c",
                depends_on=["a"],
                weight=25,
                optional=True,
                status_group=F.FLOW_STATUS_ASSESSMENT_READY,
            ),
            definition_pb2.PhaseDefinition(name="d", depends_on=["b", "c"], weight=d_weight),
        ],
    )


def writer(api: Api) -> Api:
    return api.as_(scopes=("flows:read", "flows:write", "definitions:write"))


async def register(api: Api, definition: definition_pb2.FlowDefinition, **fields: Any) -> Any:
    return await api.stub.CreateFlowDefinition(
        pb.CreateFlowDefinitionRequest(
            definition=definition, request_id=fields.pop("rid", request_id()), **fields
        ),
        metadata=api.metadata,
    )


async def skip(api: Api, flow_id: str, phase: str) -> pb.SkipPhaseResponse:
    return await api.stub.SkipPhase(
        pb.SkipPhaseRequest(flow_id=flow_id, phase=phase, request_id=request_id()),
        metadata=api.metadata,
    )


async def test_register_version_pin_and_run_a_diamond(api: Api) -> None:
    admin = writer(api)
    first = await register(admin, diamond())
    assert (first.definition.version, first.created, first.definition.builtin) == (1, True, False)
    assert first.definition.HasField("create_time")
    assert first.definition.phases[2].optional
    same = await register(admin, diamond())
    assert (same.definition.version, same.created) == (1, False)
    second = await register(admin, diamond(d_weight=30))
    assert (second.definition.version, second.created) == (2, True)

    old = await api.create(definition_name="diamond", definition_version=1)
    new = await api.create(definition_name="diamond")
    assert (old.definition_version, new.definition_version) == (1, 2)
    assert [p.optional for p in old.phases] == [False, False, True, False]

    flow_id = old.flow_id
    await api.complete(flow_id, "a")
    await api.move(flow_id, "b", S.PHASE_STATE_IN_PROGRESS)
    both = await api.move(flow_id, "c", S.PHASE_STATE_IN_PROGRESS)
    assert phase_states(both.flow)["b"] == S.PHASE_STATE_IN_PROGRESS
    assert phase_states(both.flow)["c"] == S.PHASE_STATE_IN_PROGRESS
    assert both.flow.status == F.FLOW_STATUS_ASSESSMENT_READY  # the later-listed branch's group
    blocked = await refused(api.move(flow_id, "d", S.PHASE_STATE_IN_PROGRESS))
    assert blocked.reason == "PHASE_ORDER_VIOLATION"
    assert blocked.flow_error is not None
    assert list(blocked.flow_error.blocking_phases) == ["b", "c"]
    await api.move(flow_id, "c", S.PHASE_STATE_FAILED, failure=failure())
    skipped = await skip(api, flow_id, "c")
    assert phase_states(skipped.flow)["c"] == S.PHASE_STATE_SKIPPED
    assert [e.kind for e in skipped.history_entries] == [history_pb2.HISTORY_EVENT_KIND_SKIP]
    assert skipped.history_entries[0].to_state == S.PHASE_STATE_SKIPPED
    assert skipped.flow.progress == 57.5  # a 25 + c 25 (skipped counts fully) + b 25 x 0.3
    await api.move(flow_id, "b", S.PHASE_STATE_COMPLETED)
    done = await api.complete(flow_id, "d")
    assert done.flow.status == F.FLOW_STATUS_COMPLETED
    assert done.flow.progress == 100.0


async def test_request_id_replays_and_refuses_another_body(api: Api) -> None:
    admin = writer(api)
    first = await register(admin, diamond(), rid="def-1")
    await register(admin, diamond(d_weight=30))
    again = await register(admin, diamond(), rid="def-1")
    assert (again.definition.version, again.created) == (first.definition.version, False)
    reused = await refused(register(admin, diamond(d_weight=40), rid="def-1"))
    assert reused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert reused.reason == "REQUEST_ID_REUSED"


async def test_another_tenants_definition_is_not_found_and_never_listed(api: Api) -> None:
    await register(writer(api), diamond("private_pipeline"))
    neighbour = api.as_(
        tenant=Tenant(api.tenant.client_account_id, api.tenant.engagement_id + "-n")
    )
    missing = await refused(
        neighbour.stub.GetFlowDefinition(
            pb.GetFlowDefinitionRequest(name="private_pipeline"), metadata=neighbour.metadata
        )
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert missing.reason == "DEFINITION_NOT_FOUND"
    create = await refused(neighbour.create(definition_name="private_pipeline"))
    assert create.code == grpc.StatusCode.NOT_FOUND
    listed = await neighbour.stub.ListFlowDefinitions(
        pb.ListFlowDefinitionsRequest(), metadata=neighbour.metadata
    )
    assert "private_pipeline" not in [d.name for d in listed.definitions]
    assert "discovery" in [d.name for d in listed.definitions]
    mine = await api.stub.ListFlowDefinitions(
        pb.ListFlowDefinitionsRequest(), metadata=api.metadata
    )
    names = {d.name: d.builtin for d in mine.definitions}
    assert names["private_pipeline"] is False
    assert names["discovery"] is True


async def test_listing_pages_and_versions(api: Api) -> None:
    admin = writer(api)
    for name in ("p_one", "p_two", "p_three"):
        await register(admin, diamond(name))
    await register(admin, diamond("p_two", d_weight=10))
    seen: list[tuple[str, int]] = []
    token = ""
    while True:
        page = await api.stub.ListFlowDefinitions(
            pb.ListFlowDefinitionsRequest(page_size=2, page_token=token), metadata=api.metadata
        )
        seen += [(d.name, d.version) for d in page.definitions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [("discovery", 1), ("p_one", 1), ("p_three", 1), ("p_two", 2)]
    versions = await api.stub.ListFlowDefinitions(
        pb.ListFlowDefinitionsRequest(name="p_two"), metadata=api.metadata
    )
    assert [d.version for d in versions.definitions] == [2, 1]
    pinned = await api.stub.GetFlowDefinition(
        pb.GetFlowDefinitionRequest(name="p_two", version=1), metadata=api.metadata
    )
    assert pinned.definition.phases[3].weight == 25


async def test_validate_only_stores_nothing(api: Api) -> None:
    checked = await register(writer(api), diamond("dry_run"), validate_only=True)
    assert (checked.definition.version, checked.created) == (1, False)
    missing = await refused(
        api.stub.GetFlowDefinition(
            pb.GetFlowDefinitionRequest(name="dry_run"), metadata=api.metadata
        )
    )
    assert missing.reason == "DEFINITION_NOT_FOUND"


def _broken() -> definition_pb2.FlowDefinition:
    broken = diamond("Broken Name")
    broken.phases[1].name = "a"  # duplicate
    broken.phases[3].depends_on.append("ghost")
    broken.phases[2].weight = 20
    return broken


def _cycle() -> definition_pb2.FlowDefinition:
    cyclic = diamond("cyclic")
    cyclic.phases[0].depends_on.append("d")
    return cyclic


@pytest.mark.parametrize(
    ("build", "fields"),
    [
        (
            _broken,
            {
                "name",
                "phases",
                "phases[1].name",
                "phases[1].depends_on[0]",  # the renamed phase now depends on itself
                "phases[3].depends_on[0]",  # 'b' is gone
                "phases[3].depends_on[2]",
            },
        ),
        (_cycle, {"phases[1].depends_on[0]", "phases[2].depends_on[0]"}),
        (lambda: definition_pb2.FlowDefinition(name="empty"), {"phases"}),
    ],
    ids=["every-problem-at-once", "cycle", "empty"],
)
async def test_invalid_definitions_are_refused_with_every_path(
    api: Api, build: Any, fields: set[str]
) -> None:
    refusal = await refused(register(writer(api), build()))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.reason == "MALFORMED_REQUEST"
    assert refusal.violated_fields == fields
    listed = await api.stub.ListFlowDefinitions(
        pb.ListFlowDefinitionsRequest(), metadata=api.metadata
    )
    assert [d.name for d in listed.definitions] == ["discovery"]


async def test_cycle_is_named(api: Api) -> None:
    refusal = await refused(register(writer(api), _cycle()))
    assert refusal.bad_request is not None
    descriptions = {v.description for v in refusal.bad_request.field_violations}
    assert descriptions == {
        "dependency cycle: a -> d -> b -> a",
        "dependency cycle: a -> d -> c -> a",
    }


async def test_refusals(api: Api) -> None:
    no_scope = await refused(register(api, diamond("needs_scope")))
    assert no_scope.code == grpc.StatusCode.PERMISSION_DENIED
    shadow = await refused(register(writer(api), diamond("discovery")))
    assert shadow.code == grpc.StatusCode.FAILED_PRECONDITION
    assert shadow.reason == "DEFINITION_SHADOWS_BUILTIN"
    no_rid = await refused(
        api.stub.CreateFlowDefinition(
            pb.CreateFlowDefinitionRequest(definition=diamond()),
            metadata=writer(api).metadata,
        )
    )
    assert no_rid.violated_fields == {"request_id"}
    flow = await api.create()
    not_optional = await refused(skip(api, flow.flow_id, "data_import"))
    assert not_optional.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not_optional.reason == "INVALID_PHASE_TRANSITION"
    assert not_optional.flow_error is not None
    assert list(not_optional.flow_error.valid_transitions) == [S.PHASE_STATE_IN_PROGRESS]
    unknown = await refused(
        api.stub.GetFlowDefinition(
            pb.GetFlowDefinitionRequest(name="discovery", version=7), metadata=api.metadata
        )
    )
    assert unknown.code == grpc.StatusCode.NOT_FOUND


async def test_shadowing_a_builtin_is_explicit_and_keeps_old_flows(api: Api) -> None:
    old = await api.create()
    shadow = await register(writer(api), diamond("discovery"), allow_shadow_builtin=True)
    assert shadow.definition.version == 2
    new = await api.create()
    assert (new.definition_name, new.definition_version) == ("discovery", 2)
    assert [p.name for p in new.phases] == ["a", "b", "c", "d"]
    moved = await api.move(old.flow_id, "data_import", S.PHASE_STATE_IN_PROGRESS)
    assert moved.flow.definition_version == 1
    neighbour = api.as_(tenant=Tenant(api.tenant.client_account_id + "-z", "e"))
    theirs = await neighbour.create()
    assert theirs.phases[0].name == "data_import"


async def test_recovery_offers_skip_for_a_failed_optional_phase(api: Api) -> None:
    await register(writer(api), diamond("recoverable"))
    flow = await api.create(definition_name="recoverable")
    await api.complete(flow.flow_id, "a")
    await api.move(flow.flow_id, "c", S.PHASE_STATE_IN_PROGRESS)
    await api.move(flow.flow_id, "c", S.PHASE_STATE_FAILED, failure=failure())
    options = await api.stub.GetRecoveryOptions(
        pb.GetRecoveryOptionsRequest(flow_id=flow.flow_id), metadata=api.metadata
    )
    skips = [o for o in options.options if o.action == pb.RECOVERY_ACTION_SKIP]
    assert len(skips) == 1
    assert skips[0].allowed
    request = skips[0].skip_phase
    request.request_id = request_id()
    done = await api.stub.SkipPhase(request, metadata=api.metadata)
    assert phase_states(done.flow)["c"] == S.PHASE_STATE_SKIPPED
