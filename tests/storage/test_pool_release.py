"""`runner.release`: asyncpg's release without its shield task, with its guarantees.

The usual release (an idle connection) finishes in the caller's task; one that must run a
statement (a connection left in a transaction: ROLLBACK) runs it shielded, so that cancelling
the caller still returns the connection to the pool, rolled back. Both leave the pool as
`Pool.release` would: the connection free, its proxy detached, the next acquire served.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from flowstate.storage.runner import release
from flowstate.storage.store import FlowStore


async def _free(pool: asyncpg.Pool) -> int:
    return pool.get_idle_size()


async def test_an_idle_connection_is_released_without_a_task(store: FlowStore) -> None:
    pool = store._pool
    connection = await pool.acquire()
    tasks_before = len(asyncio.all_tasks())
    idle_before = await _free(pool)
    released = release(pool, connection)
    # One step of the coroutine finishes it: nothing was scheduled, nothing awaited.
    with pytest.raises(StopIteration):
        released.send(None)
    assert len(asyncio.all_tasks()) == tasks_before
    assert await _free(pool) == idle_before + 1
    with pytest.raises(asyncpg.InterfaceError):
        await connection.fetchval("SELECT 1")  # the proxy is detached, as after Pool.release
    again = await pool.acquire()
    try:
        assert await again.fetchval("SELECT 1") == 1
    finally:
        await release(pool, again)


async def test_a_release_that_rolls_back_finishes_when_the_caller_is_cancelled(
    store: FlowStore,
) -> None:
    pool = store._pool
    connection = await pool.acquire()
    raw = connection._con  # type: ignore[attr-defined]
    await connection.execute("BEGIN")
    idle_before = await _free(pool)
    task = asyncio.create_task(release(pool, connection))
    await asyncio.sleep(0)  # the release has sent its ROLLBACK and waits for it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):  # bounded: the shielded remainder finishes on its own
        if await _free(pool) == idle_before + 1:
            break
        await asyncio.sleep(0.01)
    assert await _free(pool) == idle_before + 1
    assert not raw.is_in_transaction()
    again = await pool.acquire()
    try:
        assert await again.fetchval("SELECT 1") == 1
    finally:
        await release(pool, again)


async def test_a_released_connection_is_released_once(store: FlowStore) -> None:
    pool = store._pool
    connection = await pool.acquire()
    await release(pool, connection)
    idle = await _free(pool)
    await release(pool, connection)  # as Pool.release: a second release does nothing
    assert await _free(pool) == idle
