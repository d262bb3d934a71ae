"""Every field of a Flow and a HistoryEntry survives the database (rows and stored responses)."""

from __future__ import annotations

import dataclasses

from flowstate.core.commands import TransitionPhase
from flowstate.core.model import PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowQuery, FlowStore

from .support import ContextFactory, rich_flow


async def test_every_field_round_trips(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    flow, entries = rich_flow(tenant)
    # The fixture really sets every field with a default (a value or a factory) to something
    # else somewhere, so a column the storage forgets cannot pass by holding the default.
    for values in ((flow,), flow.phases, entries):
        for spec in dataclasses.fields(values[0]):
            if spec.default is not dataclasses.MISSING:
                default = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            else:
                continue  # required: the constructor call sets it
            assert any(getattr(v, spec.name) != default for v in values), spec.name

    stored = await FlowService(store).import_flow(flow, entries, make_context("import-1"))
    assert stored.flow == flow
    assert await store.get_flow(tenant, flow.flow_id) == flow
    page = await store.list_flows(tenant, FlowQuery())
    assert page.flows == (flow,)
    history = await store.list_history(tenant, flow.flow_id)
    assert history.entries == entries
    assert await store.read_changes(tenant, flow.flow_id, 0, 10) == entries


async def test_stored_response_round_trips(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    """A replay rebuilds flow and entries from the JSON kept with the idempotency key."""
    flow, entries = rich_flow(tenant)
    first = await FlowService(store).import_flow(flow, entries, make_context("import-2"))
    again = await FlowService(store).import_flow(flow, entries, make_context("import-2"))
    assert again.replayed
    assert (again.flow, again.entries) == (first.flow, first.entries) == (flow, entries)


async def test_mutation_result_equals_what_is_read_back(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory
) -> None:
    created = await FlowService(store).create_flow(
        tenant, definition_name="discovery", ctx=make_context(), labels={"a": "b"}
    )
    result = await FlowService(store).mutate(
        tenant,
        created.flow.flow_id,
        TransitionPhase("data_import", PhaseState.IN_PROGRESS, metadata={"x": [1, "y"]}),
        make_context("start-1"),
    )
    assert await store.get_flow(tenant, created.flow.flow_id) == result.flow
    history = await store.list_history(tenant, created.flow.flow_id)
    assert history.entries == created.entries + result.entries
    replay = await FlowService(store).mutate(
        tenant,
        created.flow.flow_id,
        TransitionPhase("data_import", PhaseState.IN_PROGRESS, metadata={"x": [1, "y"]}),
        make_context("start-1"),
    )
    assert replay.replayed
    assert (replay.flow, replay.entries) == (result.flow, result.entries)
