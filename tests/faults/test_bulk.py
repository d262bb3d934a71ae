"""A bulk action whose server is killed (kill -9) mid-action: another server continues it after
the lease expires, and no flow is changed twice (docs/bulk-actions.md).

The database is the test's own, so only the servers it starts work on bulk actions. Flows are
written as rows (the test is about the action, not about creating flows). Bounded polling.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc.aio
import pytest_asyncio
from sqlalchemy.engine import make_url

from flowstate.core.bulk import bulk_request_id
from flowstate.core.model import (
    Tenant,
)
from flowstate.storage import migrate
from flowstate.testing import discovery_flow, insert_flow_rows, serve_subprocess
from flowstate.v1 import flow_service_pb2 as pb

from .support import request_id, stub_for

TENANT = Tenant("bulk-faults", "engagement")
FLOWS = 300
# Slow enough to kill it mid-action, a short lease so that the successor takes over soon.
ENV = {
    "FLOWSTATE_BULK_RATE": "60",
    "FLOWSTATE_BULK_LEASE": "1",
    "FLOWSTATE_BULK_INTERVAL": "0.1",
    "FLOWSTATE_TIMER_INTERVAL": "0",
}


def asyncpg_dsn(url: str) -> str:
    """The libpq form of a ``postgresql+asyncpg://`` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def sql(url: str, statement: str, *args: object) -> Any:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


@pytest_asyncio.fixture
async def own_db(database_server: Any) -> AsyncIterator[str]:
    url: str = await database_server.create_database()
    await migrate.upgrade(url)
    yield url
    await database_server.drop_database(url)


async def failed_flows(url: str, count: int) -> list[str]:
    """`count` discovery flows whose data_import FAILED with a retryable error."""
    now = datetime.now(UTC)
    flows = [discovery_flow(TENANT, at=now) for _ in range(count)]
    await insert_flow_rows(url, flows)
    return [flow.flow_id for flow in flows]


async def progress(url: str) -> tuple[str, int]:
    rows = await sql(url, "SELECT state, applied FROM bulk_actions")
    return rows[0]["state"], rows[0]["applied"]


async def test_a_killed_server_s_bulk_action_is_continued_and_no_flow_changes_twice(
    own_db: str,
) -> None:
    flows = await failed_flows(own_db, FLOWS)
    with serve_subprocess(database_url=own_db, env=ENV) as doomed:
        metadata = doomed.mint.metadata(TENANT, user="operator", scopes=("flows:admin",))
        async with grpc.aio.insecure_channel(doomed.address) as channel:
            started = await stub_for(channel).StartBulkAction(
                pb.StartBulkActionRequest(
                    request_id=request_id(),
                    action=pb.BULK_ACTION_TYPE_RETRY,
                    filter="stuck OR NOT stuck",
                ),
                metadata=metadata,
            )
        action_id = started.bulk_action.bulk_action_id
        assert started.bulk_action.total_count == FLOWS
        for _ in range(600):  # bounded: until it is well under way
            if (await progress(own_db))[1] >= 40:
                break
            await asyncio.sleep(0.05)
        doomed.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.process.wait, 30)
    state, applied_when_killed = await progress(own_db)
    assert state == "running"
    assert 40 <= applied_when_killed < FLOWS

    with serve_subprocess(database_url=own_db, env=ENV):
        for _ in range(1200):  # bounded: the lease expires, the successor finishes
            if (await progress(own_db))[0] == "succeeded":
                break
            await asyncio.sleep(0.05)
    assert await progress(own_db) == ("succeeded", FLOWS)

    rows = await sql(
        own_db,
        "SELECT flow_id::text AS flow_id, array_agg(request_id) AS ids FROM flow_history"
        " GROUP BY flow_id",
    )
    changed = {row["flow_id"]: list(row["ids"]) for row in rows}
    assert set(changed) == set(flows)
    for flow_id, ids in changed.items():
        assert ids == [bulk_request_id(action_id, flow_id)]  # once, by the action
    statuses = await sql(own_db, "SELECT DISTINCT status FROM flows")
    assert [row["status"] for row in statuses] == ["retry_pending"]
    items = await sql(
        own_db, "SELECT outcome, count(*) AS n FROM bulk_action_items GROUP BY outcome"
    )
    assert {row["outcome"]: row["n"] for row in items} == {"applied": FLOWS}
