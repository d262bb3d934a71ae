"""Filters and counts against the database: SQL and `matches` agree on a few hundred flows,
values only ever go in as parameters, and CountFlows uses the indexes at 100k flows."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import asyncpg
import pytest

from flowstate.core.filters import FlowFacts, matches, parse_filter
from flowstate.core.model import ErrorCode, Flow, FlowStatus, Phase, PhaseError, PhaseState, Tenant
from flowstate.storage import FlowQuery, FlowStore
from flowstate.storage.migrate import upgrade
from flowstate.storage.statements import count_flows_statement, flow_filters

from .support import T0, asyncpg_dsn, insert_flows

NOW = T0
STUCK_BEFORE = NOW - timedelta(hours=1)
PHASES = (
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
)
CODES = (
    ErrorCode.EXTERNAL_SERVICE_ERROR,
    ErrorCode.AGENT_TIMEOUT,
    ErrorCode.DATA_VALIDATION_FAILED,
)


def random_flow(tenant: Tenant, rng: random.Random) -> Flow:
    """A flow with random (not necessarily reachable) status, phases, labels, errors, times."""
    states = [rng.choice(list(PhaseState)) for _ in PHASES]
    phases = tuple(
        Phase(
            name,
            state,
            error=(
                PhaseError(rng.choice(CODES), "boom")
                if state in (PhaseState.FAILED, PhaseState.RETRY_NEEDED)
                else None
            ),
        )
        for name, state in zip(PHASES, states, strict=True)
    )
    labels = {}
    if rng.random() < 0.8:
        labels["team"] = rng.choice(["core", "web", "data", "ops team"])
    if rng.random() < 0.5:
        labels["env"] = rng.choice(["prod", "dev"])
    created = NOW - timedelta(minutes=rng.randrange(0, 3 * 24 * 60))
    updated = created + (NOW - created) * rng.random()
    return Flow(
        flow_id=str(uuid.uuid4()),
        tenant=tenant,
        definition_name=rng.choice(["discovery", "order_fulfilment"]),
        definition_version=1,
        phases=phases,
        status=rng.choice(list(FlowStatus)),
        version=1,
        created_at=created,
        updated_at=updated,
        labels=labels,
    )


def facts(flow: Flow) -> FlowFacts:
    assert flow.created_at is not None
    assert flow.updated_at is not None
    return FlowFacts(
        status=flow.status,
        definition_name=flow.definition_name,
        phase_states=flow.phase_states,
        labels=flow.labels,
        error_codes=frozenset(p.error.error_code.value for p in flow.phases if p.error),
        created_at=flow.created_at,
        updated_at=flow.updated_at,
    )


FILTERS = [
    "status = FAILED",
    "status IN (FAILED, RETRY_PENDING, PAUSED)",
    "status != COMPLETED",
    "definition = order_fulfilment",
    'labels.team = "core"',
    "labels.team = 'ops team'",
    "labels.team IN (core, web)",
    "labels.env != prod",
    "phase.data_import = FAILED",
    "phase.field_mapping IN (IN_PROGRESS, RETRY_NEEDED)",
    "phase.nope = FAILED",
    "phase.nope != FAILED",
    "error = EXTERNAL_SERVICE_ERROR",
    "error IN (AGENT_TIMEOUT, DATA_VALIDATION_FAILED)",
    "error != EXTERNAL_SERVICE_ERROR",
    "updated > -1h",
    "created <= -2d",
    f'created > "{(NOW - timedelta(days=1)).isoformat()}"',
    "stuck",
    "NOT stuck",
    "error = EXTERNAL_SERVICE_ERROR AND updated > -6h",
    "(status = FAILED OR stuck) AND labels.team = core",
    "status = FAILED OR labels.env = dev OR phase.data_import = COMPLETED",
    "NOT (labels.team = core AND definition = discovery)",
]


@pytest.fixture(scope="module")
def rng() -> random.Random:
    return random.Random(18)


async def test_sql_and_matches_agree_on_every_filter(
    store: FlowStore, tenant: Tenant, database_url: str
) -> None:
    rng = random.Random(18)
    flows = [random_flow(tenant, rng) for _ in range(300)]
    await insert_flows(database_url, flows)
    by_id = {flow.flow_id: flow for flow in flows}
    for text in FILTERS:
        condition = parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE)
        expected = {f.flow_id for f in flows if matches(condition, facts(f))}
        found: set[str] = set()
        token = ""
        while True:
            page = await store.list_flows(
                tenant,
                FlowQuery(filter=condition, filter_text=text, page_size=500, page_token=token),
            )
            found |= {f.flow_id for f in page.flows}
            token = page.next_page_token
            if not token:
                break
        assert found == expected, text
        assert 0 < len(expected) < len(flows) or text.startswith("phase.nope"), text
        counted = await store.count_flows(tenant, FlowQuery(filter=condition), group_by="status")
        assert counted.total == len(expected)
        assert dict(counted.groups) == {
            status.value: n
            for status in FlowStatus
            if (n := sum(1 for i in expected if by_id[i].status is status))
        }


async def test_counts_by_definition_and_phase(
    store: FlowStore, tenant: Tenant, database_url: str
) -> None:
    rng = random.Random(7)
    flows = [random_flow(tenant, rng) for _ in range(120)]
    await insert_flows(database_url, flows)
    by_definition = await store.count_flows(tenant, FlowQuery(), group_by="definition")
    assert dict(by_definition.groups) == {
        name: sum(1 for f in flows if f.definition_name == name)
        for name in {f.definition_name for f in flows}
    }
    counts = [n for _, n in by_definition.groups]
    assert counts == sorted(counts, reverse=True)
    by_phase = await store.count_flows(tenant, FlowQuery(), group_by="phase", phase="data_import")
    assert sum(n for _, n in by_phase.groups) == 120 == by_phase.total
    assert dict(by_phase.groups)["failed"] == sum(
        1 for f in flows if f.phase("data_import").state is PhaseState.FAILED
    )
    missing = await store.count_flows(tenant, FlowQuery(), group_by="phase", phase="nope")
    assert missing.groups == (("", 120),)
    total = await store.count_flows(tenant, FlowQuery())
    assert (total.total, total.groups) == (120, ())


async def test_another_tenants_flows_are_never_counted_or_listed(
    store: FlowStore, tenant: Tenant, database_url: str
) -> None:
    other = Tenant(f"other-{uuid.uuid4()}", "e")
    rng = random.Random(3)
    await insert_flows(database_url, [random_flow(other, rng) for _ in range(20)])
    condition = parse_filter("NOT stuck OR stuck", now=NOW, stuck_before=STUCK_BEFORE)
    assert (await store.count_flows(tenant, FlowQuery(filter=condition))).total == 0
    assert (await store.list_flows(tenant, FlowQuery(filter=condition))).flows == ()


def test_values_are_bound_parameters_never_sql_text() -> None:
    hostile = "x'); DROP TABLE flows; --"
    text = (
        f'labels.team = "{hostile}" OR definition = "{hostile}" OR labels."{hostile}" = y'
        " OR error = AGENT_TIMEOUT OR updated > -1h OR stuck OR phase.data_import = FAILED"
    )
    condition = parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE)
    conditions, _ = flow_filters(FlowQuery(filter=condition))
    statement = count_flows_statement(conditions, "status", None)
    assert "DROP" not in statement.sql
    assert "AGENT_TIMEOUT" not in statement.sql
    assert "data_import" not in statement.sql
    assert any(hostile in str(value) for value in statement.defaults)


def test_a_filter_changes_the_page_token_fingerprint() -> None:
    condition = parse_filter("stuck", now=NOW, stuck_before=STUCK_BEFORE)
    _, with_filter = flow_filters(FlowQuery(filter=condition, filter_text="stuck"))
    _, without = flow_filters(FlowQuery())
    assert with_filter != without


async def _plan(connection: asyncpg.Connection, tenant: Tenant, text: str, group_by: str) -> str:
    condition = parse_filter(text, now=NOW, stuck_before=STUCK_BEFORE) if text else None
    conditions, _ = flow_filters(FlowQuery(filter=condition))
    statement = count_flows_statement(conditions, group_by, None)
    args = statement.args({"account": tenant.client_account_id, "engagement": tenant.engagement_id})
    rows = await connection.fetch("EXPLAIN " + statement.sql, *args)
    return "\n".join(row[0] for row in rows)


PLANS = [
    # (filter, group_by, indexes any of which serves it well)
    ("", "status", {"ix_flows_tenant_"}),
    ("status = FAILED", "status", {"ix_flows_tenant_status"}),
    ("status IN (FAILED, RETRY_PENDING)", "definition", {"ix_flows_tenant_status"}),
    ('labels.team = "team-7"', "status", {"ix_flows_labels"}),
    ("phase.data_import = FAILED", "status", {"ix_flows_phase_states", "ix_flows_tenant_"}),
    ("status = FAILED AND updated > -1h", "status", {"ix_flows_tenant_status"}),
]


async def test_count_flows_uses_an_index_at_100k_flows(fresh_database_url: str) -> None:
    """The common dashboard counts use an index, with one tenant among 20 (100k flows)."""
    await upgrade(fresh_database_url)
    tenant = Tenant("big", "e1")
    connection = await asyncpg.connect(asyncpg_dsn(fresh_database_url))
    try:
        await connection.execute(
            """
            INSERT INTO flows (id, client_account_id, engagement_id, definition_name,
                definition_version, status, version, phase_states, phase_details, progress,
                labels, created_at, updated_at)
            SELECT gen_random_uuid(), CASE WHEN i % 20 = 0 THEN 'big' ELSE 't' || (i % 20) END,
                'e1', 'discovery', 1,
                (ARRAY['initialized','data_gathering','failed','completed','retry_pending',
                       'completed','completed','completed'])[1 + i % 8],
                1,
                jsonb_build_object('data_import',
                    (ARRAY['completed','failed','in_progress','completed'])[1 + i % 4]),
                '[]'::jsonb, 0,
                jsonb_build_object('team', 'team-' || (i % 50)),
                now() - (i || ' seconds')::interval, now() - (i || ' seconds')::interval
            FROM generate_series(1, 100000) AS i
            """
        )
        await connection.execute("ANALYZE flows")
        for text, group_by, indexes in PLANS:
            plan = await _plan(connection, tenant, text, group_by)
            assert "Seq Scan" not in plan, (text, plan)
            assert any(index in plan for index in indexes), (text, plan)
    finally:
        await connection.close()
