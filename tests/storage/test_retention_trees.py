"""Retention keeps trees of child flows whole and keeps what live flows depend on (issues 19,
21; docs/retention.md, "Trees and dependencies"), against real PostgreSQL.

Tenants' policies are one day; runs happen as of later moments (`Archiver.run_once(now)`), so
"expired" is decided by the database against that moment, never by waiting.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from flowstate.core.commands import CancelFlow, Context, TransitionPhase
from flowstate.core.definition_document import definition_from_document
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, ExternalDependency, FlowStatus, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.service.retention import Archiver
from flowstate.storage import FlowStore
from flowstate.storage.archives import (
    DirectoryArchiveSink,
    archive_name,
    encode_archive,
)
from flowstate.storage.retention import ArchiveRecord, CandidateBatch, RetentionStore

from .support import ContextFactory, asyncpg_dsn, fetch

CHILD = {"name": "tree_child", "phases": [{"name": "a", "weight": 100}]}
PARENT = {
    "name": "tree_parent",
    "phases": [
        {"name": "prep", "weight": 10},
        {
            "name": "cascade",
            "depends_on": ["prep"],
            "weight": 45,
            "kind": "child_flow",
            "child_flow": {"definition": "tree_child"},
        },
        {
            "name": "abandon",
            "depends_on": ["prep"],
            "weight": 45,
            "kind": "child_flow",
            "child_flow": {"definition": "tree_child", "on_parent_cancel": "abandon"},
        },
    ],
}
START = datetime.now(UTC)


@pytest_asyncio.fixture
async def retention_store(database_url: str) -> AsyncIterator[RetentionStore]:
    store = await RetentionStore.open(database_url)
    try:
        yield store
    finally:
        await store.close()


class Trees:
    """The test's tenant, with the two definitions and a one-day policy."""

    def __init__(self, store: FlowStore, tenant: Tenant, make_context: ContextFactory) -> None:
        self.store = store
        self.service = FlowService(store)
        self.tenant = tenant
        self.make_context = make_context

    def ctx(self, days: float = 0) -> Context:
        return self.make_context(now=START + timedelta(days=days))

    async def setup(self) -> Trees:
        for document in (CHILD, PARENT):
            await self.store.definitions.register(
                self.tenant,
                definition_from_document(document),
                request_id=uuid.uuid4().hex,
                now=START,
            )
        await self.store.retention_policies.set(self.tenant, 1, "test")
        return self

    async def parent(self, *, days: float = 0) -> tuple[str, str, str]:
        """A parent with both child phases started: (parent, cascade child, abandon child)."""
        created = await self.service.create_flow(
            self.tenant, definition_name="tree_parent", ctx=self.ctx(days)
        )
        flow_id = created.flow.flow_id
        for phase in ("prep",):
            await self.move(flow_id, phase, PhaseState.IN_PROGRESS, days)
            await self.move(flow_id, phase, PhaseState.COMPLETED, days)
        await self.move(flow_id, "cascade", PhaseState.IN_PROGRESS, days)
        started = await self.move(flow_id, "abandon", PhaseState.IN_PROGRESS, days)
        children = {p.name: p.child_flow_id for p in started.phases}
        cascade, abandon = children["cascade"], children["abandon"]
        assert cascade is not None
        assert abandon is not None
        return flow_id, cascade, abandon

    async def move(self, flow_id: str, phase: str, state: PhaseState, days: float = 0) -> Any:
        result = await self.service.mutate(
            self.tenant, flow_id, TransitionPhase(phase, state), self.ctx(days)
        )
        return result.flow

    async def cancel(self, flow_id: str, days: float = 0) -> None:
        await self.service.mutate(self.tenant, flow_id, CancelFlow("done"), self.ctx(days))

    async def exists(self, flow_id: str) -> bool:
        try:
            await self.store.get_flow(self.tenant, flow_id)
        except FlowStateError as exc:
            if exc.code is not ErrorCode.FLOW_NOT_FOUND:
                raise
            return False
        return True


@pytest_asyncio.fixture
async def trees(store: FlowStore, tenant: Tenant, make_context: ContextFactory) -> Trees:
    return await Trees(store, tenant, make_context).setup()


def _archiver(retention_store: RetentionStore, directory: Path) -> Archiver:
    return Archiver(retention_store, DirectoryArchiveSink(directory), batch_size=2)


async def _dangling(url: str) -> list[Any]:
    """Flows of every tenant naming a parent or a child that does not exist.

    The session's database is shared: another test stores a deliberately corrupt
    `phase_details` (a JSON string, tests/server/test_errors.py), which names no child."""
    return await fetch(
        url,
        """
        SELECT c.id FROM flows c
        WHERE c.parent_flow_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM flows p WHERE p.id = c.parent_flow_id)
        UNION ALL
        SELECT f.id FROM flows f, jsonb_array_elements(
            CASE jsonb_typeof(f.phase_details) WHEN 'array' THEN f.phase_details ELSE '[]' END
        ) AS d(details)
        WHERE d.details ? 'child_flow_id'
          AND NOT EXISTS (
              SELECT 1 FROM flows c WHERE c.id::text = d.details ->> 'child_flow_id'
          )
        """,
    )


async def _rows(url: str, flow_ids: list[str]) -> dict[str, Any]:
    rows = await fetch(
        url,
        "SELECT id::text AS id, to_jsonb(f)::text AS flow, (SELECT jsonb_agg(to_jsonb(h) ORDER BY"
        " version)::text FROM flow_history h WHERE h.flow_id = f.id) AS history"
        " FROM flows f WHERE id = ANY($1::uuid[])",
        flow_ids,
    )
    return {r["id"]: (r["flow"], r["history"]) for r in rows}


async def test_trees_are_archived_whole_only_when_every_flow_is_terminal_and_expired(
    trees: Trees, retention_store: RetentionStore, database_url: str, tmp_path: Path
) -> None:
    # A: cancelled with its cascading child; the abandoned child is left running.
    a, a_cascade, a_abandon = await trees.parent()
    await trees.cancel(a)
    # B: every flow cancelled, the abandoned child only later (day 3).
    b, b_cascade, b_abandon = await trees.parent()
    await trees.cancel(b)
    await trees.cancel(b_abandon, days=3)
    # C: a live parent whose cascading child ended (a terminal child under a live parent).
    c, c_cascade, _ = await trees.parent()
    await trees.cancel(c_cascade)
    assert (await trees.store.get_flow(trees.tenant, a_cascade)).status is FlowStatus.CANCELLED
    assert (await trees.store.get_flow(trees.tenant, a_abandon)).status is FlowStatus.INITIALIZED
    archiver = _archiver(retention_store, tmp_path)

    # Day 2: B's late child has not expired; A has a live child; C a live parent.
    first = await archiver.run_once(START + timedelta(days=2))
    assert trees.tenant not in first.archived_by_tenant
    assert all(
        [await trees.exists(f) for f in (a, a_cascade, a_abandon, b, b_cascade, b_abandon, c)]
    )
    assert await trees.exists(c_cascade)
    assert await _dangling(database_url) == []

    # Day 5: B is due whole (three flows in one archive file, parents first, though the
    # batch size is two); A and C still are not.
    second = await archiver.run_once(START + timedelta(days=5))
    assert second.archived_by_tenant[trees.tenant] == 3
    assert not any([await trees.exists(f) for f in (b, b_cascade, b_abandon)])
    assert all([await trees.exists(f) for f in (a, a_cascade, a_abandon, c, c_cascade)])
    [location] = {
        a.location for a in await retention_store.list_archives(trees.tenant) if a.flow_id == b
    }
    archive = await archiver.read_archive(location)
    assert archive[0].flow_id == b
    assert {f.flow_id for f in archive} == {b, b_cascade, b_abandon}
    assert await _dangling(database_url) == []

    # A's abandoned child ends: A goes whole on the next run once that end has expired.
    await trees.cancel(a_abandon, days=5)
    third = await archiver.run_once(START + timedelta(days=5, hours=12))
    assert trees.tenant not in third.archived_by_tenant
    fourth = await archiver.run_once(START + timedelta(days=7))
    assert fourth.archived_by_tenant[trees.tenant] == 3
    assert not any([await trees.exists(f) for f in (a, a_cascade, a_abandon)])
    # C never: its parent lives (its ended child stays with it).
    assert await trees.exists(c_cascade)
    assert await _dangling(database_url) == []


async def test_a_restored_tree_is_identical_and_whole(
    trees: Trees, retention_store: RetentionStore, database_url: str, tmp_path: Path
) -> None:
    parent, cascade, abandon = await trees.parent()
    await trees.cancel(parent)
    await trees.cancel(abandon)
    members = [parent, cascade, abandon]
    before = await _rows(database_url, members)
    archiver = _archiver(retention_store, tmp_path)
    result = await archiver.run_once(START + timedelta(days=2))
    assert result.archived_by_tenant[trees.tenant] == 3
    assert await _rows(database_url, members) == {}
    [location] = {a.location for a in await retention_store.list_archives(trees.tenant)}

    # Naming one child restores its whole tree, parent first, exactly as archived.
    restored = await archiver.restore(location, [abandon])

    assert restored.flow_ids[0] == parent
    assert set(restored.flow_ids) == set(members)
    assert await _rows(database_url, members) == before
    assert await _dangling(database_url) == []
    tree = await trees.store.children_of(trees.tenant, [parent], limit=10)
    assert {f.flow_id for f in tree} == {cascade, abandon}


async def test_a_child_whose_parent_is_gone_is_not_restored_alone(
    trees: Trees, retention_store: RetentionStore, database_url: str, tmp_path: Path
) -> None:
    """An archive holding a child without its parent (what 0008's archiver could write) does
    not restore a dangling parent link."""
    parent, cascade, abandon = await trees.parent()
    await trees.cancel(parent)
    await trees.cancel(abandon)
    archiver = _archiver(retention_store, tmp_path)
    await archiver.run_once(START + timedelta(days=2))
    [location] = {a.location for a in await retention_store.list_archives(trees.tenant)}
    flows = [f for f in await archiver.read_archive(location) if f.flow_id == cascade]

    with pytest.raises(FlowStateError) as refused:
        await retention_store.restore([(f.row, f.entries) for f in flows])

    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == "flow_id"
    assert parent in refused.value.message
    assert not await trees.exists(cascade)
    with pytest.raises(FlowStateError) as unknown:
        await archiver.restore(location, [str(uuid.uuid4())])
    assert unknown.value.code is ErrorCode.MALFORMED_REQUEST


async def test_a_flow_a_live_flow_depends_on_is_kept_until_the_dependent_ends(
    trees: Trees, retention_store: RetentionStore, tmp_path: Path
) -> None:
    created = await trees.service.create_flow(
        trees.tenant, definition_name="tree_child", ctx=trees.ctx()
    )
    dependency = created.flow.flow_id
    await trees.cancel(dependency)
    dependent = (
        await trees.service.create_flow(
            trees.tenant,
            definition_name="tree_child",
            ctx=trees.ctx(),
            external_dependencies=(ExternalDependency("a", dependency, "a"),),
        )
    ).flow.flow_id
    archiver = _archiver(retention_store, tmp_path)

    first = await archiver.run_once(START + timedelta(days=3))
    assert trees.tenant not in first.archived_by_tenant
    assert await trees.exists(dependency)

    await trees.cancel(dependent, days=3)
    second = await archiver.run_once(START + timedelta(days=3, hours=1))
    assert second.archived_by_tenant[trees.tenant] == 1  # the dependency; the dependent is new
    assert not await trees.exists(dependency)
    # The terminal dependent names a flow that is gone: a read returns it as stored.
    kept = await trees.store.get_flow(trees.tenant, dependent)
    assert kept.external_dependencies == (ExternalDependency("a", dependency, "a"),)


async def test_an_archived_flow_cannot_become_a_dependency_or_a_child(
    trees: Trees, retention_store: RetentionStore, tmp_path: Path
) -> None:
    """Between the archive and the purge a flow exists but cannot be named again."""
    archived = (
        await trees.service.create_flow(trees.tenant, definition_name="tree_child", ctx=trees.ctx())
    ).flow.flow_id
    await trees.cancel(archived)
    written: list[CandidateBatch] = []
    sink = DirectoryArchiveSink(tmp_path)

    async def write(batch: CandidateBatch) -> ArchiveRecord:  # archive, do not purge
        written.append(batch)
        return await sink.write(archive_name(), encode_archive(batch, datetime.now(UTC)))

    while await retention_store.archive_batch(
        write, default_days=None, limit=100, now=START + timedelta(days=2)
    ):
        pass
    assert archived in {f.flow_id for batch in written for f in batch.flows}

    with pytest.raises(FlowStateError) as refused:
        await trees.service.create_flow(
            trees.tenant,
            definition_name="tree_child",
            ctx=trees.ctx(),
            external_dependencies=(ExternalDependency("a", archived, "a"),),
        )
    assert refused.value.code is ErrorCode.FLOW_NOT_FOUND
    assert refused.value.details["archived"] is True

    parent = (
        await trees.service.create_flow(
            trees.tenant, definition_name="tree_parent", ctx=trees.ctx()
        )
    ).flow.flow_id
    await trees.move(parent, "prep", PhaseState.IN_PROGRESS)
    await trees.move(parent, "prep", PhaseState.COMPLETED)
    with pytest.raises(FlowStateError) as not_linkable:
        await trees.service.link_child_flow(trees.tenant, parent, "cascade", archived, trees.ctx())
    assert not_linkable.value.code is ErrorCode.CHILD_FLOW_NOT_LINKABLE
    assert "archived" in not_linkable.value.message


async def test_the_sanctioned_delete_refuses_a_partial_tree(
    trees: Trees, database_url: str
) -> None:
    """Even called by hand on an archive record of a parent whose child lives, the function
    deletes nothing; and the application role still can call neither function."""
    parent, cascade, abandon = await trees.parent()
    await trees.cancel(parent)
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "INSERT INTO flow_archives (flow_id, client_account_id, engagement_id, flow_version,"
            " entry_count, location, sha256) SELECT id, client_account_id, engagement_id,"
            " version, 0, 'test', '' FROM flows WHERE id = ANY($1::uuid[])",
            [parent, cascade],
        )
        purged = await connection.fetchrow(
            "SELECT * FROM flowstate_purge_archived_flows($1::uuid[])", [parent, cascade]
        )
        assert purged is not None
        assert (purged["flows"], purged["entries"]) == (0, 0)
        for call in (
            "SELECT flowstate_purge_archived_flows(ARRAY[$1::uuid])",
            "SELECT flowstate_purgeable_flows(ARRAY[$1::uuid])",
        ):
            async with connection.transaction():
                await connection.execute("SET LOCAL ROLE flowstate_app")
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                    await connection.execute(call, parent)
        await connection.execute(
            "DELETE FROM flow_archives WHERE flow_id = ANY($1::uuid[])", [parent, cascade]
        )
    finally:
        await connection.close()
    assert all([await trees.exists(f) for f in (parent, cascade, abandon)])
    assert await _dangling(database_url) == []


async def test_the_backlog_counts_due_trees_not_trees_kept_on_purpose(
    fresh_database_url: str, make_context: ContextFactory, tmp_path: Path
) -> None:
    """`lag` (the pending and lag metrics, docs/operations.md): a terminal child under a live
    parent is kept on purpose, not a backlog; a due tree counts with all its flows, overdue
    from its last change. A database of its own: the backlog is every tenant's."""
    from flowstate.storage.migrate import upgrade

    await upgrade(fresh_database_url)
    store = await FlowStore.open(fresh_database_url, pool_size=2)
    retention_store = await RetentionStore.open(fresh_database_url)
    try:
        trees = await Trees(store, Tenant("acct-lag", "trees"), make_context).setup()
        archiver = _archiver(retention_store, tmp_path)
        _, live_cascade, _ = await trees.parent()
        await trees.cancel(live_cascade)  # a terminal child under a live parent
        assert await archiver.lag(START + timedelta(days=3)) == (0, 0.0)

        done, _, done_abandon = await trees.parent()
        await trees.cancel(done)
        await trees.cancel(done_abandon, days=1)  # the tree's last change: day 1
        pending, overdue = await archiver.lag(START + timedelta(days=3))
        assert pending == 3
        assert overdue == pytest.approx(timedelta(days=1).total_seconds(), abs=60)

        result = await archiver.run_once(START + timedelta(days=3))
        assert result.archived_flows == 3
        assert await archiver.lag(START + timedelta(days=3)) == (0, 0.0)
        assert await trees.exists(live_cascade)
    finally:
        await retention_store.close()
        await store.close()


async def _wait_for_lock_waiter(url: str) -> None:
    """Bounded polling until a connection of the store (application_name ``flowstate``; the
    archiver's own pool has another) waits for a lock: the race under test is being raced."""
    for _ in range(500):
        rows = await fetch(
            url,
            "SELECT 1 FROM pg_stat_activity"
            " WHERE application_name = 'flowstate' AND wait_event_type = 'Lock'",
        )
        if rows:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no connection of the store waited for a lock")


async def test_a_new_dependency_and_an_archive_batch_racing_never_leave_a_dangling_one(
    trees: Trees, retention_store: RetentionStore, database_url: str, tmp_path: Path
) -> None:
    """Both orders of the race, with locks, not timing: a flow being created with a dependency
    holds it FOR KEY SHARE, so an archive batch passes it by; a creation that waits for a batch
    holding the flow sees the archive once the batch commits and is refused."""
    target = (
        await trees.service.create_flow(trees.tenant, definition_name="tree_child", ctx=trees.ctx())
    ).flow.flow_id
    await trees.cancel(target)
    sink = DirectoryArchiveSink(tmp_path)
    release = asyncio.Event()
    writing = asyncio.Event()

    async def write(batch: CandidateBatch) -> ArchiveRecord:
        if target in {f.flow_id for f in batch.flows}:
            writing.set()
            await release.wait()  # the batch holds its flows locked until this returns
        return await sink.write(archive_name(), encode_archive(batch, datetime.now(UTC)))

    # 1. A creator holds the flow (FOR KEY SHARE, as create_flow does): the batch skips it.
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            await connection.execute("SELECT 1 FROM flows WHERE id = $1 FOR KEY SHARE", target)
            release.set()
            while await retention_store.archive_batch(
                write, default_days=None, limit=100, now=START + timedelta(days=2)
            ):
                pass
            assert not writing.is_set()
    finally:
        await connection.close()

    # 2. The batch holds the flow: the creation waits for it, then sees the archive.
    release.clear()
    batch = asyncio.create_task(
        retention_store.archive_batch(
            write, default_days=None, limit=100, now=START + timedelta(days=2)
        )
    )
    create: asyncio.Task[Any] | None = None
    try:
        await asyncio.wait_for(writing.wait(), 30)
        create = asyncio.create_task(
            trees.service.create_flow(
                trees.tenant,
                definition_name="tree_child",
                ctx=trees.ctx(),
                external_dependencies=(ExternalDependency("a", target, "a"),),
            )
        )
        await _wait_for_lock_waiter(database_url)
        release.set()
        assert target in {f.flow_id for f in await asyncio.wait_for(batch, 30)}
        with pytest.raises(FlowStateError) as refused:
            await asyncio.wait_for(create, 30)
        assert refused.value.code is ErrorCode.FLOW_NOT_FOUND
        assert refused.value.details["archived"] is True
    finally:
        release.set()
        await asyncio.gather(batch, *([create] if create else []), return_exceptions=True)


async def _wait_until_waiting_for_a_lock(url: str, pid: int) -> None:
    """Bounded polling until the backend `pid` waits for a lock."""
    for _ in range(500):
        rows = await fetch(
            url, "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", pid
        )
        if rows:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} never waited for a lock")


async def test_two_purges_of_one_tree_racing_count_each_flow_once(
    trees: Trees, retention_store: RetentionStore, database_url: str, tmp_path: Path
) -> None:
    """Two replicas' archivers purging one tree at once (the `purged_flows` counter,
    docs/operations.md), raced with locks, not timing: the first purge holds the tree's rows
    until it commits; the second chose the same tree on its own snapshot and waits for them,
    then deletes nothing and answers nothing. The replicas' counts add up to the flows deleted."""
    parent, cascade, abandon = await trees.parent()
    await trees.cancel(parent)
    await trees.cancel(abandon)
    sink = DirectoryArchiveSink(tmp_path)

    async def write(batch: CandidateBatch) -> ArchiveRecord:
        return await sink.write(archive_name(), encode_archive(batch, datetime.now(UTC)))

    archived: set[str] = set()
    while batch := await retention_store.archive_batch(
        write, default_days=None, limit=100, now=START + timedelta(days=2)
    ):
        archived.update(f.flow_id for f in batch)
    assert {parent, cascade, abandon} <= archived

    purge = "SELECT flows, entries FROM flowstate_purge_archived_flows($1::uuid[])"
    first = await asyncpg.connect(asyncpg_dsn(database_url))
    second = await asyncpg.connect(asyncpg_dsn(database_url))
    racing: asyncio.Task[Any] | None = None
    try:
        async with first.transaction():
            counted_first = await first.fetchrow(purge, [parent])
            racing = asyncio.create_task(second.fetchrow(purge, [cascade]))
            await _wait_until_waiting_for_a_lock(database_url, second.get_server_pid())
        counted_second = await asyncio.wait_for(racing, 30)
    finally:
        if racing is not None:
            await asyncio.gather(racing, return_exceptions=True)
        await first.close()
        await second.close()
    assert counted_first is not None
    assert counted_second is not None
    assert counted_first["flows"] == 3
    assert counted_first["entries"] > 0
    assert (counted_second["flows"], counted_second["entries"]) == (0, 0)
    assert not any([await trees.exists(f) for f in (parent, cascade, abandon)])
    assert await _dangling(database_url) == []


_BACKLOG_ROOTS = """
INSERT INTO flows (id, client_account_id, engagement_id, definition_name, definition_version,
    status, version, phase_states, phase_details, progress, labels, created_at, updated_at,
    parent_flow_id, external_dependencies)
SELECT md5('root' || i)::uuid, 't' || (i % 20), 'e', 'tree_child', 1, 'cancelled', 1,
    '{}'::jsonb, '[]'::jsonb, 0, '{}'::jsonb, $1::timestamptz - interval '60 days',
    $1::timestamptz - interval '30 days' - make_interval(secs => i), NULL, '[]'::jsonb
FROM generate_series(1, 100000) AS i
"""
_BACKLOG_CHILDREN = """
INSERT INTO flows (id, client_account_id, engagement_id, definition_name, definition_version,
    status, version, phase_states, phase_details, progress, labels, created_at, updated_at,
    parent_flow_id, external_dependencies)
SELECT md5('child' || i || '-' || k)::uuid, 't' || (i % 20), 'e', 'tree_child', 1,
    CASE WHEN i % 1000 = 1 AND k = 1 THEN 'initialized' ELSE 'completed' END, 1,
    '{}'::jsonb, '[]'::jsonb, 0, '{}'::jsonb, $1::timestamptz - interval '60 days',
    $1::timestamptz - interval '20 days' - make_interval(hours => k),
    md5('root' || i)::uuid, '[]'::jsonb
FROM generate_series(1, 100000) AS i CROSS JOIN generate_series(1, 2) AS k
WHERE i % 100 = 0 OR i % 1000 = 1
UNION ALL
SELECT md5('dependent' || i)::uuid, 't' || (i % 20), 'e', 'tree_child', 1, 'initialized', 1,
    '{}'::jsonb, '[]'::jsonb, 0, '{}'::jsonb, $1::timestamptz, $1::timestamptz, NULL,
    jsonb_build_array(jsonb_build_object(
        'phase', 'a', 'flow_id', md5('root' || i)::uuid::text, 'flow_phase', 'a'))
FROM generate_series(1, 100000) AS i WHERE i % 1000 = 2
"""
_BACKLOG_ARCHIVES = """
INSERT INTO flow_archives (flow_id, client_account_id, engagement_id, flow_version,
    entry_count, location, sha256, restored_at)
SELECT id, client_account_id, engagement_id, 1, 0, 'test', '',
    CASE WHEN parent_flow_id IS NOT NULL THEN $1::timestamptz END
FROM flows
WHERE id IN (SELECT md5('root' || i)::uuid FROM generate_series(1, 100000) AS i
             WHERE i % 10 = 3 OR i % 200 = 0)
   OR id IN (SELECT md5('child' || i || '-1')::uuid FROM generate_series(1, 100000) AS i
             WHERE i % 400 = 0)
"""


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


async def test_the_backlog_at_100k_expired_roots_walks_trees_once_and_counts_as_batches_do(
    fresh_database_url: str,
) -> None:
    """The backlog query (`lag`) at 100,000 expired roots, most of them lone flows (every 100th
    with two expired children, every 400th of those with a restored child; every 1000th with a
    live child, or named by a live flow; every 10th archived): it walks all the trees in one
    recursive query (its recursive union runs once, not once per root as it did: ~3.7 s,
    docs/retention.md), and counts exactly what the batches' rule (`_DUE_TREES`, one lateral
    tree per root) counts."""
    from flowstate.storage import retention
    from flowstate.storage.migrate import upgrade

    await upgrade(fresh_database_url)
    now = datetime.now(UTC)
    connection = await asyncpg.connect(asyncpg_dsn(fresh_database_url))
    try:
        for statement in (_BACKLOG_ROOTS, _BACKLOG_CHILDREN, _BACKLOG_ARCHIVES):
            await connection.execute(statement, now)
        await connection.execute("ANALYZE")
        [plan] = json.loads(
            await connection.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + retention._LAG, now, 7)
        )
        reference = retention._DUE_TREES.format(
            columns="coalesce(sum(cardinality(tree.members)), 0)", rest=""
        )
        expected = await connection.fetchval(reference, now, 7)
    finally:
        await connection.close()
    unions = [n for n in _nodes(plan["Plan"]) if n["Node Type"] == "Recursive Union"]
    assert [n["Actual Loops"] for n in unions] == [1]
    store = await RetentionStore.open(fresh_database_url)
    try:
        pending, _ = await store.lag(default_days=7, now=now)
    finally:
        await store.close()
    assert 80000 < pending == expected
