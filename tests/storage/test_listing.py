"""ListFlows: filters, stuck flows, keyset pagination, tokens, and the GIN index."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import select

from flowstate.core.commands import CancelFlow, TransitionPhase
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, PhaseError, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowQuery, FlowStore
from flowstate.storage.schema import flows
from flowstate.storage.sql import compile_statement
from flowstate.storage.statements import flow_filters as _flow_filters

from .support import T0, ContextFactory, asyncpg_dsn

S = PhaseState


async def _flows_in_states(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> dict[str, str]:
    """Four flows, changed at T0 + 0..3 minutes: name → flow id."""

    async def flow(minute: int, *commands: TransitionPhase | CancelFlow) -> str:
        ctx = make_context(now=T0 + timedelta(minutes=minute))
        created = await FlowService(store).create_flow(tenant, definition_name="discovery", ctx=ctx)
        for command in commands:
            await FlowService(store).mutate(tenant, created.flow.flow_id, command, ctx)
        return created.flow.flow_id

    failure = PhaseError(ErrorCode.AGENT_TIMEOUT, "timeout")
    return {
        "new": await flow(0),
        "importing": await flow(1, TransitionPhase("data_import", S.IN_PROGRESS)),
        "failed": await flow(
            2,
            TransitionPhase("data_import", S.IN_PROGRESS),
            TransitionPhase("data_import", S.FAILED, error=failure),
        ),
        "mapping": await flow(
            3,
            TransitionPhase("data_import", S.IN_PROGRESS),
            TransitionPhase("data_import", S.COMPLETED),
            TransitionPhase("field_mapping", S.IN_PROGRESS),
        ),
    }


async def _names(
    store: FlowStore, tenant: Tenant, ids: dict[str, str], query: FlowQuery
) -> set[str]:
    by_id = {flow_id: name for name, flow_id in ids.items()}
    page = await store.list_flows(tenant, query)
    return {by_id[f.flow_id] for f in page.flows}


QUERIES = {
    "everything": (FlowQuery(), {"new", "importing", "failed", "mapping"}),
    "status": (FlowQuery(statuses=frozenset({FlowStatus.FAILED})), {"failed"}),
    "statuses": (
        FlowQuery(statuses=frozenset({FlowStatus.INITIALIZED, FlowStatus.DISCOVERY})),
        {"new", "mapping"},
    ),
    "phase-state": (
        FlowQuery(phase_states={"data_import": frozenset({S.IN_PROGRESS})}),
        {"importing"},
    ),
    "phase-states-any-of": (
        FlowQuery(phase_states={"data_import": frozenset({S.IN_PROGRESS, S.FAILED})}),
        {"importing", "failed"},
    ),
    "phases-all-of": (
        FlowQuery(
            phase_states={
                "data_import": frozenset({S.COMPLETED}),
                "field_mapping": frozenset({S.IN_PROGRESS}),
            }
        ),
        {"mapping"},
    ),
    "unknown-phase": (FlowQuery(phase_states={"nope": frozenset({S.COMPLETED})}), set()),
    "stuck": (FlowQuery(updated_before=T0 + timedelta(minutes=2)), {"new", "importing"}),
    "stuck-and-status": (
        FlowQuery(
            updated_before=T0 + timedelta(minutes=5),
            statuses=frozenset({FlowStatus.DATA_GATHERING}),
        ),
        {"importing"},
    ),
    "definition": (
        FlowQuery(definition_name="discovery"),
        {"new", "importing", "failed", "mapping"},
    ),
    "other-definition": (FlowQuery(definition_name="other"), set()),
}


@pytest.mark.parametrize(("query", "expected"), QUERIES.values(), ids=QUERIES.keys())
async def test_filters(
    store: FlowStore,
    tenant: Tenant,
    make_context: ContextFactory,
    query: FlowQuery,
    expected: set[str],
) -> None:
    ids = await _flows_in_states(store, tenant, make_context)
    assert await _names(store, tenant, ids, query) == expected


async def test_flow_id_filter(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    ids = await _flows_in_states(store, tenant, make_context)
    query = FlowQuery(flow_ids=(ids["new"], ids["failed"], "00000000-0000-4000-8000-000000000000"))
    assert await _names(store, tenant, ids, query) == {"new", "failed"}


async def test_results_come_oldest_change_first(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    ids = await _flows_in_states(store, tenant, make_context)
    page = await store.list_flows(tenant, FlowQuery())
    assert [f.flow_id for f in page.flows] == [
        ids[n] for n in ("new", "importing", "failed", "mapping")
    ]


async def test_pages_cover_everything_once(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    created = set()
    for i in range(23):
        # Pairs of flows share an updated_at, so the id breaks ties across page boundaries.
        ctx = make_context(now=T0 + timedelta(seconds=i // 2))
        created.add(
            (
                await FlowService(store).create_flow(tenant, definition_name="discovery", ctx=ctx)
            ).flow.flow_id
        )

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await store.list_flows(tenant, FlowQuery(page_size=5, page_token=token))
        pages += 1
        seen.extend(f.flow_id for f in page.flows)
        token = page.next_page_token
        if not token:
            break
    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == created


async def test_pages_with_a_filter(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    ids = await _flows_in_states(store, tenant, make_context)
    query = FlowQuery(statuses=frozenset({FlowStatus.INITIALIZED, FlowStatus.FAILED}), page_size=1)
    first = await store.list_flows(tenant, query)
    second = await store.list_flows(
        tenant,
        FlowQuery(statuses=query.statuses, page_size=1, page_token=first.next_page_token),
    )
    assert [f.flow_id for f in first.flows + second.flows] == [ids["new"], ids["failed"]]
    assert second.next_page_token == ""


@pytest.mark.parametrize(
    "token",
    ["garbage!", "e30", "eyJrIjoiZmxvd3MiLCJxIjoiIiwicCI6WzFdfQ"],
    ids=["junk", "empty", "forged"],
)
async def test_a_bad_page_token_is_malformed(store: FlowStore, tenant: Tenant, token: str) -> None:
    with pytest.raises(FlowStateError) as refused:
        await store.list_flows(tenant, FlowQuery(page_token=token))
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == "page_token"


async def test_a_token_of_another_query_is_malformed(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    for _ in range(3):
        await FlowService(store).create_flow(
            tenant, definition_name="discovery", ctx=make_context()
        )
    page = await store.list_flows(tenant, FlowQuery(page_size=1))
    with pytest.raises(FlowStateError) as refused:
        await store.list_flows(
            tenant,
            FlowQuery(statuses=frozenset({FlowStatus.FAILED}), page_token=page.next_page_token),
        )
    assert refused.value.details["field"] == "page_token"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param(FlowQuery(page_size=-1), "page_size", id="negative-page-size"),
        pytest.param(
            FlowQuery(phase_states={"data_import": frozenset()}), "phase_states", id="no-state"
        ),
        pytest.param(FlowQuery(flow_ids=("x",)), "flow_ids", id="bad-id"),
        pytest.param(
            FlowQuery(updated_before=T0.replace(tzinfo=None)), "updated_before", id="naive"
        ),
    ],
)
async def test_bad_queries_are_malformed(
    store: FlowStore, tenant: Tenant, query: FlowQuery, field: str
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await store.list_flows(tenant, query)
    assert refused.value.details["field"] == field


async def test_the_phase_state_filter_uses_the_gin_index(
    store: FlowStore, tenant: Tenant, database_url: str
) -> None:
    """The containments the store generates are served by ix_flows_phase_states.

    (Within one tenant the planner may prefer the tenant btree when it is more selective, as
    on this nearly empty table; the GIN index is what makes a phase filter cheap across a
    large tenant.)
    """
    conditions, _ = _flow_filters(
        FlowQuery(phase_states={"data_import": frozenset({S.FAILED, S.RETRY_NEEDED})})
    )
    statement = compile_statement(select(flows).where(*conditions))
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL enable_seqscan = off")
            rows = await connection.fetch(
                "EXPLAIN (FORMAT JSON) " + statement.sql, *statement.args({})
            )
    finally:
        await connection.close()
    plan = json.dumps(json.loads(rows[0][0]))
    assert "ix_flows_phase_states" in plan
