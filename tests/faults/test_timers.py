"""Timers under replicas, kill -9 and races (docs/timers.md): every timer changes its flow once.

Each test has a database of its own, so only the servers it starts fire timers. Flows are set up
through the use cases with a long timeout, then made due together in SQL (all at the same
moment, which no wall clock could arrange), then fired by real `flowstate serve` processes (or
an in-process server for the race). Bounded polling throughout.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import grpc.aio
import pytest_asyncio
from sqlalchemy.engine import make_url

from flowstate.core.commands import Context, TransitionPhase
from flowstate.core.definition_document import definition_from_document
from flowstate.core.model import PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore, migrate
from flowstate.testing import serve_in_process, serve_subprocess
from flowstate.v1 import errors_pb2, states_pb2
from flowstate.v1 import flow_service_pb2 as pb

from .support import history, request_id, stub_for


def asyncpg_dsn(url: str) -> str:
    """The libpq form of a ``postgresql+asyncpg://`` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


TENANT = Tenant("timers-faults", "engagement")
SYSTEM_TIMER = "system:timer"
DEFINITION = {
    "name": "timed",
    "phases": [
        {"name": "work", "weight": 50, "policy": {"timeout": "1h"}},
        {"name": "after", "weight": 50, "depends_on": ["work"]},
    ],
}
FAST_TIMERS = {"FLOWSTATE_TIMER_INTERVAL": "0.05", "FLOWSTATE_TIMER_BATCH": "20"}


@pytest_asyncio.fixture
async def own_db(database_server: Any) -> AsyncIterator[str]:
    url: str = await database_server.create_database()
    await migrate.upgrade(url)
    yield url
    await database_server.drop_database(url)


async def running_timed_flows(url: str, count: int) -> list[str]:
    """`count` flows whose phase `work` is IN_PROGRESS with a timeout an hour away."""
    store = await FlowStore.open(url)
    try:
        service = FlowService(store)
        now = datetime.now(UTC)
        await store.definitions.register(
            TENANT, definition_from_document(DEFINITION), request_id="", now=now
        )

        async def one() -> str:
            ctx = Context(now=datetime.now(UTC), user_id="worker")
            created = await service.create_flow(TENANT, definition_name="timed", ctx=ctx)
            flow_id = created.flow.flow_id
            await service.mutate(
                TENANT, flow_id, TransitionPhase("work", PhaseState.IN_PROGRESS), ctx
            )
            return flow_id

        flows: list[str] = []
        for start in range(0, count, 20):
            flows += await asyncio.gather(*(one() for _ in range(min(20, count - start))))
        return flows
    finally:
        await store.close()


async def sql(url: str, statement: str, *args: object) -> Any:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


async def make_all_due(url: str, delay: float = 0.0) -> None:
    await sql(url, "UPDATE flow_timers SET due_at = now() + $1 * interval '1 second'", delay)


async def failed_by_timer(url: str, flows: Iterable[str]) -> dict[str, int]:
    """Per flow: how many history entries the timer wrote (read as the owner)."""
    rows = await sql(
        url,
        "SELECT flow_id::text AS flow_id, count(*) FILTER (WHERE user_id = $2) AS fired"
        " FROM flow_history WHERE flow_id = ANY($1::uuid[]) GROUP BY flow_id",
        list(flows),
        SYSTEM_TIMER,
    )
    return {row["flow_id"]: row["fired"] for row in rows}


async def states_of(url: str, flows: Iterable[str]) -> dict[str, str]:
    rows = await sql(
        url,
        "SELECT id::text AS id, phase_states->>'work' AS work FROM flows"
        " WHERE id = ANY($1::uuid[])",
        list(flows),
    )
    return {row["id"]: row["work"] for row in rows}


async def all_failed(url: str, flows: list[str], *, within: float) -> None:
    states: dict[str, str] = {}

    async def poll() -> None:
        states.update(await states_of(url, flows))

    deadline = asyncio.get_running_loop().time() + within
    while True:
        await poll()
        if all(states.get(f) == "failed" for f in flows):
            return
        if asyncio.get_running_loop().time() > deadline:
            left = sum(1 for f in flows if states.get(f) != "failed")
            raise AssertionError(f"{left} of {len(flows)} phases not failed within {within} s")
        await asyncio.sleep(0.1)


async def test_two_replicas_fail_200_phases_due_at_once_exactly_once_each(own_db: str) -> None:
    flows = await running_timed_flows(own_db, 200)
    await make_all_due(own_db, delay=1.0)
    with (
        serve_subprocess(database_url=own_db, env=FAST_TIMERS),
        serve_subprocess(database_url=own_db, env=FAST_TIMERS),
    ):
        await all_failed(own_db, flows, within=60)
    fired = await failed_by_timer(own_db, flows)
    assert fired == dict.fromkeys(flows, 1)
    versions = await sql(
        own_db,
        "SELECT flow_id, array_agg(version ORDER BY version) AS v FROM flow_history"
        " WHERE flow_id = ANY($1::uuid[]) GROUP BY flow_id",
        flows,
    )
    assert all(list(row["v"]) == [1, 2, 3] for row in versions)
    assert await sql(own_db, "SELECT 1 FROM flow_timers") == []


async def test_a_replica_killed_holding_claims_leaves_them_to_the_other(own_db: str) -> None:
    flows = await running_timed_flows(own_db, 10)
    # Hold the flows' row locks: the first replica claims the due timers, then waits on them.
    holder = await asyncpg.connect(asyncpg_dsn(own_db))
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM flows WHERE id = ANY($1::uuid[]) FOR UPDATE", flows)
        lease = {"FLOWSTATE_TIMER_LEASE": "2", **FAST_TIMERS, "FLOWSTATE_TIMER_BATCH": "100"}
        with serve_subprocess(database_url=own_db, env=lease) as doomed:
            await make_all_due(own_db)

            async def claimed() -> int:
                rows = await sql(
                    own_db, "SELECT count(*) AS n FROM flow_timers WHERE claimed_until IS NOT NULL"
                )
                return int(rows[0]["n"])

            for _ in range(200):  # bounded: until the replica has claimed all ten
                if await claimed() == len(flows):
                    break
                await asyncio.sleep(0.05)
            assert await claimed() == len(flows)
            doomed.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(doomed.process.wait, 30)
        await transaction.rollback()
    finally:
        await holder.close()
    assert set((await states_of(own_db, flows)).values()) == {"in_progress"}
    # The dead replica's claims expire; the survivor fires every one, once.
    with serve_subprocess(database_url=own_db, env=FAST_TIMERS):
        await all_failed(own_db, flows, within=30)
    assert await failed_by_timer(own_db, flows) == dict.fromkeys(flows, 1)


async def test_a_timer_racing_the_workers_completion_lets_exactly_one_win(own_db: str) -> None:
    flows = await running_timed_flows(own_db, 40)
    store = await FlowStore.open(own_db)
    try:
        async with serve_in_process(
            own_db, store=store, timer_interval=0.01, timer_batch=5
        ) as running:
            metadata = running.mint.metadata(
                TENANT, user="worker", scopes=("flows:write", "flows:read")
            )
            async with running.channel() as channel:
                stub = stub_for(channel)
                await make_all_due(own_db, delay=0.3)
                await asyncio.sleep(0.25)  # complete right around the due time

                async def complete(flow_id: str) -> grpc.StatusCode:
                    try:
                        await stub.TransitionPhase(
                            pb.TransitionPhaseRequest(
                                flow_id=flow_id,
                                phase="work",
                                target_state=states_pb2.PHASE_STATE_COMPLETED,
                                request_id=request_id(),
                            ),
                            metadata=metadata,
                        )
                    except grpc.aio.AioRpcError as error:
                        return error.code()
                    return grpc.StatusCode.OK

                # Each completion commits before or after its timer fires: either way the
                # flow's outcome is settled when the answer comes back.
                answers = await asyncio.gather(*(complete(f) for f in flows))
                for flow_id, answer in zip(flows, answers, strict=True):
                    entries = await history(stub, metadata, flow_id)
                    assert [e.flow_version for e in entries] == [1, 2, 3], flow_id
                    last = entries[-1]
                    if answer == grpc.StatusCode.OK:
                        assert (last.user_id, last.to_state) == (
                            "worker",
                            states_pb2.PHASE_STATE_COMPLETED,
                        )
                    else:
                        assert answer == grpc.StatusCode.FAILED_PRECONDITION
                        assert (last.user_id, last.to_state) == (
                            SYSTEM_TIMER,
                            states_pb2.PHASE_STATE_FAILED,
                        )
                        assert last.error_context.error_code == errors_pb2.ERROR_CODE_AGENT_TIMEOUT
    finally:
        await store.close()
    assert await sql(own_db, "SELECT 1 FROM flow_timers") == []
