"""Importing legacy rows (`flowstate.service.legacy.import_legacy_rows`): what each row becomes.

The flow and its one history entry are compared whole; every refusal by its code, message and
field, and the rows before a refused one stay imported. Found missing by ``make mutate``
(docs/testing.md): the row checks were tested for "refused or not" only.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstate.core.commands import Context
from flowstate.core.definitions import DISCOVERY, PhaseDefinition, definition_to_dict
from flowstate.core.errors import FlowStateError
from flowstate.core.model import (
    ErrorCode,
    Flow,
    FlowStatus,
    HistoryEntry,
    HistoryKind,
    Phase,
    PhaseState,
    Tenant,
)
from flowstate.service import FlowService, LegacyImportResult, import_legacy_rows
from flowstate.storage import FlowQuery, FlowStore

T0 = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
S = PhaseState
COLUMNS = {
    "data_import": "data_import_completed",
    "field_mapping": "field_mapping_completed",
    "data_cleansing": "data_cleansing_completed",
    "asset_inventory": "asset_inventory_completed",
    "dependency_analysis": "dependency_analysis_completed",
}
LEGACY_NAMESPACE = uuid.UUID("5b0c8f0e-5f7c-4d53-9a55-6c6567616379")
"""Pinned: a flow's id derived from a legacy id must not change between releases, or importing
the same file again after an upgrade would create every flow a second time."""


def _derived_id(tenant: Tenant, legacy_id: str) -> str:
    name = f"{tenant.client_account_id}/{tenant.engagement_id}/{legacy_id}"
    return str(uuid.uuid5(LEGACY_NAMESPACE, name))


async def _refusal(
    store: FlowStore, tenant: Tenant, rows: list[dict[str, Any]]
) -> tuple[ErrorCode, str, dict[str, Any]]:
    with pytest.raises(FlowStateError) as refused:
        await import_legacy_rows(store, tenant, rows, now=T0)
    return refused.value.code, refused.value.message, dict(refused.value.details)


async def test_a_row_becomes_a_whole_flow_with_its_created_entry(
    store: FlowStore, tenant: Tenant
) -> None:
    row = {
        "id": " legacy-7 ",
        "flow_name": "Acme",
        "data_import_completed": "t",
        "field_mapping_completed": 1,
        "data_cleansing_completed": "",
        "asset_inventory_completed": None,
        # dependency_analysis_completed missing: false
        "progress_percentage": 99,  # recomputed, not read
        "status": "completed",
    }
    result = await import_legacy_rows(store, tenant, [row], user_id="migrator", now=T0)

    flow_id = _derived_id(tenant, "legacy-7")
    assert result == LegacyImportResult(created=(flow_id,), skipped=())
    done = Phase(name="", state=S.COMPLETED, state_entered_at=T0, completed_at=T0)
    phases = tuple(
        replace(done, name=name) if name in ("data_import", "field_mapping") else Phase(name=name)
        for name in COLUMNS
    )
    assert await store.get_flow(tenant, flow_id) == Flow(
        flow_id=flow_id,
        tenant=tenant,
        definition_name="discovery",
        definition_version=1,
        phases=phases,
        status=FlowStatus.DISCOVERY,
        progress=40.0,
        version=1,
        created_at=T0,
        updated_at=T0,
        display_name="Acme",
    )
    completed = {
        "data_import_completed": True,
        "field_mapping_completed": True,
        "data_cleansing_completed": False,
        "asset_inventory_completed": False,
        "dependency_analysis_completed": False,
    }
    history = await store.list_history(tenant, flow_id)
    assert history.entries == (
        HistoryEntry(
            flow_version=1,
            kind=HistoryKind.CREATED,
            status_before=FlowStatus.INITIALIZED,
            status_after=FlowStatus.DISCOVERY,
            occurred_at=T0,
            reason="imported from legacy",
            user_id="migrator",
            request_id=f"legacy-import:{flow_id}",
            metadata={
                "definition": "discovery",
                "definition_version": 1,
                "legacy_id": "legacy-7",
                "legacy_completed": completed,
            },
            progress_after=40.0,
            phase_states_after={p.name: p.state for p in phases},
            error_codes_after=frozenset(),
        ),
    )


async def test_every_spelling_of_a_boolean(store: FlowStore, tenant: Tenant) -> None:
    values: list[tuple[object, bool]] = [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (None, False),
        ("TRUE", True),
        (" yes ", True),
        ("Y", True),
        ("t", True),
        ("1", True),
        ("False", False),
        ("f", False),
        ("No", False),
        ("n", False),
        ("0", False),
        ("", False),
    ]
    rows = [{"id": f"spelling-{i}", "data_import_completed": v} for i, (v, _) in enumerate(values)]
    result = await import_legacy_rows(store, tenant, rows, now=T0)
    assert len(result.created) == len(values)
    for flow_id, (value, expected) in zip(result.created, values, strict=True):
        flow = await store.get_flow(tenant, flow_id)
        state = S.COMPLETED if expected else S.NOT_STARTED
        assert (value, flow.phase("data_import").state) == (value, state)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(2, "2"), (-1, "-1"), (1.0, "1.0"), ("maybe", "'maybe'"), ("tru", "'tru'"), ([], "[]")],
)
async def test_a_value_that_is_no_boolean_is_refused_after_the_rows_before_it(
    store: FlowStore, tenant: Tenant, value: object, shown: str
) -> None:
    bad = {"id": "bad", "asset_inventory_completed": value}
    rows: list[dict[str, Any]] = [{"id": "good"}, bad]
    field = "rows[1].asset_inventory_completed"
    assert await _refusal(store, tenant, rows) == (
        ErrorCode.MALFORMED_REQUEST,
        f"{field} must be a boolean, got {shown}",
        {"field": field},
    )
    listed = await store.list_flows(tenant, FlowQuery())
    assert [f.flow_id for f in listed.flows] == [_derived_id(tenant, "good")]


async def test_the_flow_id_is_the_rows_uuid_or_derived_from_its_legacy_id(
    store: FlowStore, tenant: Tenant
) -> None:
    given = uuid.uuid4()
    rows: list[dict[str, Any]] = [
        {"flow_id": str(given).upper(), "id": "ignored"},
        {"flow_id": "legacy-a", "id": "ignored"},
        {"id": 42},
    ]
    result = await import_legacy_rows(store, tenant, rows, now=T0)
    assert result.created == (
        str(given),
        _derived_id(tenant, "legacy-a"),
        _derived_id(tenant, "42"),
    )
    # The same legacy id in another tenant is another flow.
    other = Tenant(f"other-{tenant.client_account_id}", tenant.engagement_id)
    assert (await import_legacy_rows(store, other, rows[1:2], now=T0)).created == (
        _derived_id(other, "legacy-a"),
    )
    assert _derived_id(other, "legacy-a") != _derived_id(tenant, "legacy-a")


@pytest.mark.parametrize(
    "row", [{}, {"id": None}, {"id": "  "}, {"flow_id": "", "data_import_completed": True}]
)
async def test_a_row_without_an_id_is_refused(
    store: FlowStore, tenant: Tenant, row: dict[str, Any]
) -> None:
    assert await _refusal(store, tenant, [{"id": "first"}, row]) == (
        ErrorCode.MALFORMED_REQUEST,
        "rows[1] has no flow_id or id",
        {"field": "rows[1].flow_id"},
    )


async def test_an_empty_flow_id_column_falls_back_to_the_id(
    store: FlowStore, tenant: Tenant
) -> None:
    """A CSV export with both columns gives "" for a row without a flow_id: its id counts."""
    rows = [{"flow_id": "", "id": "legacy-b"}, {"flow_id": " ", "id": "legacy-c"}]
    result = await import_legacy_rows(store, tenant, rows, now=T0)
    assert result.created == (_derived_id(tenant, "legacy-b"), _derived_id(tenant, "legacy-c"))


async def test_what_exists_already_is_skipped_and_other_refusals_stop_the_import(
    store: FlowStore, tenant: Tenant
) -> None:
    first = await import_legacy_rows(store, tenant, [{"id": "x"}, {"id": "x"}], now=T0)
    x = _derived_id(tenant, "x")
    assert first == LegacyImportResult(created=(x,), skipped=(x,))  # replayed
    # The same legacy id with other booleans: the flow keeps what it was imported with.
    changed = await import_legacy_rows(
        store, tenant, [{"id": "x", "data_import_completed": True}], now=T0
    )
    assert changed == LegacyImportResult(created=(), skipped=(x,))
    assert (await store.get_flow(tenant, x)).phase("data_import").state is S.NOT_STARTED
    # A flow made otherwise with the row's id, at the same time (its creation entry has the
    # import's key: the history's partition refuses it before the flows table does).
    made = str(uuid.uuid4())
    ctx = Context(now=T0, user_id="tester")
    service = FlowService(store)
    await service.create_flow(tenant, definition_name="discovery", ctx=ctx, flow_id=made)
    with pytest.raises(FlowStateError) as taken:
        await service.create_flow(tenant, definition_name="discovery", ctx=ctx, flow_id=made)
    assert (taken.value.code, taken.value.message, taken.value.details) == (
        ErrorCode.MALFORMED_REQUEST,
        "flow_id is not available: omit it to have one generated, or send a new UUID",
        {"field": "flow_id"},
    )
    assert await import_legacy_rows(store, tenant, [{"id": made}], now=T0) == (
        LegacyImportResult(created=(), skipped=(made,))
    )
    # Any other refusal is the caller's to see.
    assert await _refusal(store, tenant, [{"id": "y", "display_name": "n" * 257}]) == (
        ErrorCode.MALFORMED_REQUEST,
        "display_name is longer than 256 characters",
        {"field": "display_name", "limit": 256},
    )


async def _sql(url: str, statement: str, *args: object) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def _builtin_discovery_v2(url: str, phases: tuple[PhaseDefinition, ...]) -> None:
    """A newer built-in discovery, as a later release would seed it."""
    body = definition_to_dict(replace(DISCOVERY, version=2, phases=phases))
    await _sql(
        url,
        "INSERT INTO flow_definitions (name, version, body) VALUES ('discovery', 2, $1::jsonb)",
        json.dumps(body),
    )


async def test_rows_follow_the_latest_builtin_discovery(
    own_store: FlowStore, own_database_url: str, tenant: Tenant
) -> None:
    weights = dict(zip(COLUMNS, (40, 15, 15, 15, 15), strict=True))
    heavier = tuple(replace(p, weight=weights[p.name]) for p in DISCOVERY.phases)
    await _builtin_discovery_v2(own_database_url, heavier)
    result = await import_legacy_rows(
        own_store, tenant, [{"id": "v2", "data_import_completed": True}], now=T0
    )
    flow = await own_store.get_flow(tenant, result.created[0])
    assert (flow.definition_version, flow.progress) == (2, 40.0)


async def test_a_discovery_with_phases_of_no_legacy_column_is_refused(
    own_store: FlowStore, own_database_url: str, tenant: Tenant
) -> None:
    last = DISCOVERY.phases[-1]
    extra = replace(last, name="review", depends_on=(last.name,), weight=0)
    await _builtin_discovery_v2(own_database_url, (*DISCOVERY.phases, extra))
    assert await _refusal(own_store, tenant, [{"id": "r"}]) == (
        ErrorCode.MALFORMED_REQUEST,
        "the discovery definition has phases without a legacy column: ['review']",
        {"field": "definition"},
    )
    assert (await own_store.list_flows(tenant, FlowQuery())).flows == ()
