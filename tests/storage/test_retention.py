"""Retention: archive + sanctioned delete, restore, partitions, policies (real PostgreSQL).

"Now" is injected into the archiver (flows are written at the real time, the run happens as
of a later date), so nothing waits for days to pass.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from flowstate.core.commands import CancelFlow, TransitionPhase
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.service.retention import Archiver
from flowstate.storage import FlowStore
from flowstate.storage.archives import (
    ArchivedFlowRows,
    DirectoryArchiveSink,
    S3ArchiveSink,
    archive_sink,
    decode_archive,
)
from flowstate.storage.migrate import upgrade
from flowstate.storage.retention import RetentionPolicies, RetentionStore

from .support import ContextFactory, asyncpg_dsn, fetch

LATER = timedelta(days=31)  # the run happens this long after the flows ended


@pytest_asyncio.fixture
async def retention_store(database_url: str) -> AsyncIterator[RetentionStore]:
    store = await RetentionStore.open(database_url)
    try:
        yield store
    finally:
        await store.close()


def _archiver(store: RetentionStore, directory: Path, **kwargs: Any) -> Archiver:
    return Archiver(store, DirectoryArchiveSink(directory), **kwargs)


async def _terminal_flow(
    service: FlowService, tenant: Tenant, make_context: ContextFactory, *, steps: int = 0
) -> str:
    """A discovery flow with `steps` phase changes, then cancelled."""
    created = await service.create_flow(tenant, definition_name="discovery", ctx=make_context())
    flow_id = created.flow.flow_id
    changes = [
        TransitionPhase("data_import", PhaseState.IN_PROGRESS),
        TransitionPhase("data_import", PhaseState.COMPLETED),
    ][:steps]
    for command in changes:
        await service.mutate(tenant, flow_id, command, make_context())
    await service.mutate(tenant, flow_id, CancelFlow("done"), make_context())
    return flow_id


async def _rows(url: str, flow_id: str) -> tuple[Any, list[Any]]:
    """The flow's row and its history rows, every column (seq and txid too), as JSON."""
    flow = await fetch(url, "SELECT to_jsonb(f) AS r FROM flows f WHERE id = $1", flow_id)
    history = await fetch(
        url,
        "SELECT to_jsonb(h) AS r FROM flow_history h WHERE flow_id = $1 ORDER BY version",
        flow_id,
    )
    return (
        json.loads(flow[0]["r"]) if flow else None,
        [json.loads(r["r"]) for r in history],
    )


def _read_archives(directory: Path) -> list[ArchivedFlowRows]:
    return [flow for path in directory.iterdir() for flow in decode_archive(path.read_bytes())]


async def _expiring_flows(
    store: FlowStore,
    retention_store: RetentionStore,
    url: str,
    tenant: Tenant,
    make_context: ContextFactory,
    *,
    count: int,
    steps: int,
) -> tuple[list[str], dict[str, tuple[Any, list[Any]]]]:
    """`count` ended flows of a tenant kept one day, and their rows as stored now."""
    service = FlowService(store)
    await store.retention_policies.set(tenant, 1, "admin")
    flow_ids = [
        await _terminal_flow(service, tenant, make_context, steps=steps) for _ in range(count)
    ]
    return flow_ids, {flow_id: await _rows(url, flow_id) for flow_id in flow_ids}


async def test_archive_and_delete_a_thousand_terminal_flows(
    store: FlowStore,
    retention_store: RetentionStore,
    database_url: str,
    make_context: ContextFactory,
    tmp_path: Path,
) -> None:
    service = FlowService(store)
    expiring = Tenant(f"acct-{uuid.uuid4().hex[:8]}", "retention")
    keeping = Tenant(f"acct-{uuid.uuid4().hex[:8]}", "retention")
    await store.retention_policies.set(expiring, 30, "admin")
    await store.retention_policies.set(keeping, 60, "admin")
    gate = asyncio.Semaphore(8)

    async def terminal(tenant: Tenant) -> str:
        async with gate:
            return await _terminal_flow(service, tenant, make_context)

    doomed = await asyncio.gather(*(terminal(expiring) for _ in range(1000)))
    kept = await _terminal_flow(service, keeping, make_context)
    running = (
        await service.create_flow(expiring, definition_name="discovery", ctx=make_context())
    ).flow.flow_id
    now = datetime.now(UTC) + LATER

    archiver = _archiver(retention_store, tmp_path, batch_size=300)
    assert await archiver.lag(now) >= (1000, 0.0)
    result = await archiver.run_once(now)

    assert result.archived_by_tenant[expiring] == 1000
    assert keeping not in result.archived_by_tenant
    assert result.purged_flows >= 1000
    by_id = {flow.flow_id: flow for flow in _read_archives(tmp_path)}
    assert set(doomed) <= set(by_id)
    assert all(len(by_id[flow_id].entries) == 2 for flow_id in doomed)
    remaining = await fetch(
        database_url,
        "SELECT count(*) AS n FROM flow_history WHERE flow_id = ANY($1::uuid[])",
        doomed,
    )
    assert remaining[0]["n"] == 0
    flows_left = await fetch(
        database_url, "SELECT count(*) AS n FROM flows WHERE id = ANY($1::uuid[])", doomed
    )
    assert flows_left[0]["n"] == 0
    # Untouched: the other tenant's (not expired) and the running flow.
    assert (await store.get_flow(keeping, kept)).version == 2
    assert (await store.get_flow(expiring, running)).version == 1
    assert len((await store.list_history(expiring, running)).entries) == 1
    # Nothing left to do for this tenant: a second run archives none of its flows.
    again = await archiver.run_once(now)
    assert expiring not in again.archived_by_tenant


async def test_an_archived_flow_restores_identically(
    store: FlowStore,
    retention_store: RetentionStore,
    database_url: str,
    tenant: Tenant,
    make_context: ContextFactory,
    tmp_path: Path,
) -> None:
    flow_ids, before = await _expiring_flows(
        store, retention_store, database_url, tenant, make_context, count=3, steps=2
    )
    domain_before = {
        flow_id: (
            await store.get_flow(tenant, flow_id),
            (await store.list_history(tenant, flow_id)).entries,
        )
        for flow_id in flow_ids
    }
    archiver = _archiver(retention_store, tmp_path)

    result = await archiver.run_once(datetime.now(UTC) + timedelta(days=2))

    assert result.archived_by_tenant[tenant] == 3
    for flow_id in flow_ids:
        with pytest.raises(FlowStateError) as gone:
            await store.get_flow(tenant, flow_id)
        assert gone.value.code is ErrorCode.FLOW_NOT_FOUND
    listing = {a.flow_id: a for a in await retention_store.list_archives(tenant)}
    assert set(listing) == set(flow_ids)
    location = listing[flow_ids[0]].location
    assert all(a.purged_at is not None and a.entry_count == 4 for a in listing.values())

    restored = await archiver.restore(location)

    assert set(restored.flow_ids) == set(flow_ids)
    assert restored.entries == 12
    for flow_id in flow_ids:
        assert await _rows(database_url, flow_id) == before[flow_id]
        assert (
            await store.get_flow(tenant, flow_id),
            (await store.list_history(tenant, flow_id)).entries,
        ) == domain_before[flow_id]
    # Restored flows are held: a later run does not archive them again.
    later = await archiver.run_once(datetime.now(UTC) + timedelta(days=30))
    assert tenant not in later.archived_by_tenant
    # A flow that exists cannot be restored over; nothing changes.
    with pytest.raises(FlowStateError) as refused:
        await archiver.restore(location)
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == "flow_id"


async def test_the_application_role_still_cannot_delete_history(
    store: FlowStore, tenant: Tenant, make_context: ContextFactory, database_url: str
) -> None:
    flow_id = await _terminal_flow(FlowService(store), tenant, make_context)
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        # The app role, even with the setting the sanctioned function uses: no DELETE grant.
        async with connection.transaction():
            await connection.execute(
                "SET LOCAL ROLE flowstate_app;"
                "SELECT set_config('flowstate.sanctioned_delete', 'archived', true)"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await connection.execute("DELETE FROM flow_history WHERE flow_id = $1", flow_id)
        # Nor may it call the sanctioned function.
        async with connection.transaction():
            await connection.execute("SET LOCAL ROLE flowstate_app")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await connection.execute(
                    "SELECT flowstate_purge_archived_flows(ARRAY[$1::uuid])", flow_id
                )
        # The owner without the function: the append-only trigger refuses.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await connection.execute("DELETE FROM flow_history WHERE flow_id = $1", flow_id)
        # The function itself deletes nothing that has not been archived.
        purged = await connection.fetchrow(
            "SELECT * FROM flowstate_purge_archived_flows(ARRAY[$1::uuid])", flow_id
        )
        assert purged is not None
        assert (purged["flows"], purged["entries"]) == (0, 0)
    finally:
        await connection.close()
    assert len((await store.list_history(tenant, flow_id)).entries) == 2


async def test_a_partition_whose_rows_are_all_archived_is_dropped(
    fresh_database_url: str, make_context: ContextFactory, tmp_path: Path
) -> None:
    """Flows of March 2021 all end: their partition goes whole, no row deleted; May's stays
    while one of its flows runs (its ended flows are deleted row by row)."""
    await upgrade(fresh_database_url)
    store = await FlowStore.open(fresh_database_url, pool_size=2)
    retention = await RetentionStore.open(fresh_database_url)
    try:
        assert await retention.ensure_partitions(
            timedelta(days=120), now=datetime(2021, 3, 10, tzinfo=UTC)
        ) == [
            "flow_history_2021_03",
            "flow_history_2021_04",
            "flow_history_2021_05",
            "flow_history_2021_06",
            "flow_history_2021_07",
        ]
        service = FlowService(store)
        tenant = Tenant("acct-partitions", "retention")
        await store.retention_policies.set(tenant, 30, "admin")

        def at(month: int) -> ContextFactory:
            moment = datetime(2021, month, 15, tzinfo=UTC)
            return lambda *a, **k: make_context(*a, **{**k, "now": moment})

        march = [await _terminal_flow(service, tenant, at(3)) for _ in range(3)]
        may = [await _terminal_flow(service, tenant, at(5)) for _ in range(2)]
        running = (
            await service.create_flow(tenant, definition_name="discovery", ctx=at(5)())
        ).flow.flow_id
        homes = await fetch(
            fresh_database_url,
            "SELECT DISTINCT tableoid::regclass::text AS p FROM flow_history",
        )
        assert {r["p"] for r in homes} == {"flow_history_2021_03", "flow_history_2021_05"}

        result = await _archiver(retention, tmp_path, default_days=None).run_once()

        assert result.archived_flows == 5
        # March (all archived) and the empty months that ended; May keeps a running flow.
        assert result.dropped_partitions == [
            "flow_history_2021_03",
            "flow_history_2021_04",
            "flow_history_2021_06",
            "flow_history_2021_07",
        ]
        assert (result.purged_flows, result.purged_entries) == (5, 4)  # may's rows only
        tables = await fetch(
            fresh_database_url,
            "SELECT relname FROM pg_class WHERE relname LIKE 'flow_history_2021%'",
        )
        assert "flow_history_2021_03" not in {r["relname"] for r in tables}
        assert "flow_history_2021_05" in {r["relname"] for r in tables}
        left = await fetch(
            fresh_database_url,
            "SELECT count(*) AS n FROM flows WHERE id = ANY($1::uuid[])",
            [*march, *may],
        )
        assert left[0]["n"] == 0
        assert len((await store.list_history(tenant, running)).entries) == 1
    finally:
        await retention.close()
        await store.close()


async def test_policies_are_per_tenant_and_validated(
    store: FlowStore, retention_store: RetentionStore, tenant: Tenant
) -> None:
    """One implementation on either runner (the server's store, the CLI's retention store);
    one rule: 1..36500 days sets, 0 removes, anything else is refused."""
    other = Tenant(tenant.client_account_id, tenant.engagement_id + "-other")
    policies = store.retention_policies
    assert await policies.get(tenant) is None
    stored = await policies.set(tenant, 90, "alice")
    assert stored is not None
    assert (stored.retain_days, stored.updated_by) == (90, "alice")
    assert await policies.get(other) is None
    assert await RetentionPolicies(retention_store).get(tenant) == stored
    for bad in (-1, 36501, True, False):
        with pytest.raises(FlowStateError) as refused:
            await policies.set(tenant, bad, "alice")
        assert refused.value.code is ErrorCode.MALFORMED_REQUEST
        assert refused.value.details["field"] == "retain_days"
    assert await policies.get(tenant) == stored
    assert await RetentionPolicies(retention_store).set(tenant, 0, "bob") is None
    assert await policies.get(tenant) is None
    assert await policies.set(tenant, 0, "bob") is None  # removing no policy is no error


async def test_a_damaged_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    data = b'{"format": "flowstate-archive", "version": 1, "flows": 2}\n'
    with pytest.raises(FlowStateError) as refused:
        decode_archive(data, str(path))
    assert refused.value.details["field"] == "archive"
    assert "announces 2 flows" in str(refused.value)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3-compatible server (moto's, pure Python) on 127.0.0.1, with a bucket."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "flowstate-test",
        "AWS_SECRET_ACCESS_KEY": "flowstate-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="flowstate-archive")
        yield endpoint
    finally:
        server.stop()


async def test_archives_to_an_s3_compatible_store_and_restores_from_it(
    store: FlowStore,
    retention_store: RetentionStore,
    database_url: str,
    tenant: Tenant,
    make_context: ContextFactory,
    s3_endpoint: str,
) -> None:
    flow_ids, before = await _expiring_flows(
        store, retention_store, database_url, tenant, make_context, count=2, steps=1
    )
    sink = S3ArchiveSink("s3://flowstate-archive/prod/eu", endpoint_url=s3_endpoint)
    archiver = Archiver(retention_store, sink)

    result = await archiver.run_once(datetime.now(UTC) + timedelta(days=2))

    assert result.archived_by_tenant[tenant] == 2
    [location] = {a.location for a in await retention_store.list_archives(tenant)}
    assert location.startswith("s3://flowstate-archive/prod/eu/flowstate-archive-")
    assert {f.flow_id for f in decode_archive(await sink.read(location))} >= set(flow_ids)
    assert [await _rows(database_url, flow_id) for flow_id in flow_ids] == [(None, [])] * 2

    restored = await Archiver(
        retention_store, archive_sink(location, endpoint_url=s3_endpoint)
    ).restore(location, flow_ids)

    assert restored.flows == 2
    for flow_id in flow_ids:
        assert await _rows(database_url, flow_id) == before[flow_id]


async def test_an_archive_from_an_older_schema_restores_with_defaults(
    store: FlowStore,
    retention_store: RetentionStore,
    database_url: str,
    tenant: Tenant,
    make_context: ContextFactory,
    tmp_path: Path,
) -> None:
    """A column added after the archive was written takes its default; an unknown key is
    ignored (archives outlive schema versions)."""
    service = FlowService(store)
    await store.retention_policies.set(tenant, 1, "admin")
    flow_id = await _terminal_flow(service, tenant, make_context)
    archiver = _archiver(retention_store, tmp_path / "new")
    await archiver.run_once(datetime.now(UTC) + timedelta(days=2))
    [listing] = await retention_store.list_archives(tenant)
    [flow] = await archiver.read_archive(listing.location)
    old_row = {k: v for k, v in flow.row.items() if k not in ("labels", "display_name")}
    old_row["retired_column"] = "from an older build"
    old_entries = [{k: v for k, v in e.items() if k != "phase_progress"} for e in flow.entries]

    await retention_store.restore([(old_row, old_entries)])

    restored = await store.get_flow(tenant, flow_id)
    assert (restored.labels, restored.display_name) == ({}, "")
    assert len((await store.list_history(tenant, flow_id)).entries) == 2
