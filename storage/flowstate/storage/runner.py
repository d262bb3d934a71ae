"""`TransactionRunner`: one PostgreSQL transaction per call, on a pool, with bounded retries.

The shape of every store call: take a pooled connection (waiting at most `pool_timeout` for a
free place in the pool; opening a new connection there is bounded by the connect timeout alone,
see "Two budgets" below),
``BEGIN`` and enter the tenant (app role, RLS settings) in one batch, run the work, ``COMMIT``.
Serialization failures and deadlocks are retried (3 attempts in all), a connection that breaks
before COMMIT is sent is retried once (after expiring every pooled connection), a racing
duplicate request id (its key's primary key) is retried so that the work replays it; anything
else surfaces at once as a `FlowStateError` (`flowstate.storage.errors`). A failed transaction
is rolled back, or its connection dropped when its state is unknown.

Two budgets. asyncpg's ``Pool.acquire`` both waits for a free place (a holder) and, when that
holder has no open connection (the pool opens them on demand, after `expire_connections`, or
after ``max_inactive_connection_lifetime``), opens one: connect, TLS, authentication and
`init_connection`'s type introspection, all inside the caller's wait. Under load, opening takes
long, so a deadline around ``acquire`` alone failed calls with ``pool_timeout`` while the pool
had room. Pools of a runner are therefore created with ``connect=open_connection``: when the
pool starts opening a connection for a caller waiting in `TransactionRunner`, the caller's
wait deadline ends (the pool had room), and the opening is bounded by asyncpg's connect
``timeout`` (`FlowStore.open`'s `connect_timeout`); a connect that times out is UNAVAILABLE
with the reason of an unreachable database, not ``pool_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from flowstate.core.errors import FlowStateError
from flowstate.core.model import Tenant
from flowstate.storage.errors import StoreUnavailable, classify, constraint_name, to_store_error
from flowstate.storage.limits import malformed
from flowstate.storage.schema import HISTORY_PARTITION_PREFIX
from flowstate.storage.sql import Connection, Transaction
from flowstate.storage.statements import begin

__all__ = ["TransactionRunner", "open_connection", "release"]

_log = logging.getLogger("flowstate.storage")
T = TypeVar("T")

_MAX_CONTENTION_ATTEMPTS = 3
_MAX_DISCONNECT_ATTEMPTS = 2
_MAX_KEY_RACE_ATTEMPTS = 3
_RETRY_BACKOFF_SECONDS = 0.02
_IDEMPOTENCY_PK = "pk_idempotency_keys"
# A new flow's id already taken (by any tenant): the flows row or, when the one write statement
# checks the history first, its version-1 entry. Only a create can hit the history constraint:
# a change of an existing flow holds the row lock while it picks the next version.
_FLOW_ID_TAKEN = frozenset({"pk_flows", "uq_flow_history_flow_id_version_occurred_at"})
# The history is partitioned by month: a violation there names the partition's own index
# (``flow_history_2026_12_flow_id_version_occurred_at_key``), not the parent's constraint. Seen
# when the existing flow's creation entry has the very same time as the new one's.
_FLOW_ID_TAKEN_IN_PARTITION = "_flow_id_version_occurred_at_key"
# The one refusal of such an id, identical whichever tenant holds it (docs/server.md).
_FLOW_ID_TAKEN_MESSAGE = (
    "flow_id is not available: omit it to have one generated, or send a new UUID"
)


# The task waiting for a pooled connection and its wait deadline (module doc, "Two budgets").
_WAITING: ContextVar[tuple[asyncio.Task[Any] | None, asyncio.Timeout] | None] = ContextVar(
    "flowstate_pool_wait", default=None
)


async def open_connection(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """The pools' ``connect``: a new connection, opened outside the waiting caller's pool
    deadline (the pool had room), bounded by asyncpg's connect ``timeout`` (module doc).

    Only the caller's own task counts: the pool's background refills run in tasks that
    inherited the context and must not touch a caller's deadline."""
    waiting = _WAITING.get()
    if waiting is not None and waiting[0] is asyncio.current_task():
        waiting[1].reschedule(None)
    connection: asyncpg.Connection = await asyncpg.connect(*args, **kwargs)
    return connection


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """The rest of `coro`, which yielded `waiting` on its first step: as ``yield from``."""
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # thrown into the task (its cancellation): pass it on
            try:
                waiting = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration:
                return


async def _finish_release(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _resume(coro, waiting)


async def release(pool: asyncpg.Pool, connection: PoolConnectionProxy[asyncpg.Record]) -> None:
    """`pool.release(connection)` without its `asyncio.shield` task when nothing suspends.

    asyncpg shields every release in a new task, so that cancelling the caller cannot leave
    the connection checked out. On the usual path a release never suspends (the store's
    `reset_connection` runs no statement outside a transaction), so the first step of the
    holder's release finishes it in the caller's task; only a release that does suspend (a
    ROLLBACK, a close of an expired connection) runs its remainder shielded, as asyncpg does.
    Saves the task and one event-loop iteration per transaction. Uses asyncpg's holder
    (`_holder`, `_con`, pinned version); `tests/storage/test_pool_release.py` checks both paths.
    """
    proxy: Any = connection
    if (
        type(connection) is not PoolConnectionProxy
        or proxy._holder._pool is not pool
        or proxy._con is None
    ):
        await pool.release(connection)  # its checks and errors (a released one: nothing)
        return
    holder = proxy._holder
    pool._check_init()  # asyncpg's own check: the pool is not closing
    proxy._con._on_release()
    coro = holder.release(holder._timeout)
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    await asyncio.shield(_finish_release(coro, waiting))


@dataclass
class _Attempt:
    committing: bool = False


async def _abandon(connection: Connection, exc: BaseException, committing: bool) -> None:
    """Roll back a failed transaction, or drop the connection when its state is unknown."""
    recoverable = isinstance(exc, FlowStateError) or (
        isinstance(exc, Exception) and not classify(exc).disconnect
    )
    if not committing and recoverable and not connection.is_closed():
        try:
            await connection.execute("ROLLBACK")
            return
        except Exception:
            _log.debug("ROLLBACK failed; dropping the connection", exc_info=True)
    connection.terminate()


class TransactionRunner:
    """Runs work in transactions on one pool (see the module doc); the store builds on it."""

    def __init__(self, pool: asyncpg.Pool, *, pool_timeout: float = 10.0) -> None:
        """Run on `pool`, waiting at most `pool_timeout` seconds for a connection."""
        self._pool = pool
        self._pool_timeout = pool_timeout

    async def _run(
        self,
        tenant: Tenant | None,
        work: Callable[[Transaction], Awaitable[T]],
        *,
        write: bool = False,
        autocommit: bool = False,
    ) -> T:
        """Run `work` in one transaction (as the app role in `tenant`), with bounded retries.

        With `autocommit`, `work` runs one statement that is its own transaction (the read
        functions, which enter the tenant themselves): no BEGIN, no COMMIT.
        """
        attempts = {"contention": 0, "disconnect": 0, "key": 0}
        while True:
            attempt = _Attempt()
            try:
                result = await self._attempt(tenant, work, write, autocommit, attempt)
            except FlowStateError:
                raise
            except Exception as exc:
                if await self._should_retry(exc, attempts, attempt.committing):
                    continue
                raise self._translate(exc) from exc
            if write:
                await self._after_write()
            return result

    async def _attempt(
        self,
        tenant: Tenant | None,
        work: Callable[[Transaction], Awaitable[T]],
        write: bool,
        autocommit: bool,
        attempt: _Attempt,
    ) -> T:
        try:
            # asyncio.timeout rather than acquire(timeout=...), which runs a wait_for task.
            async with asyncio.timeout(self._pool_timeout) as deadline:
                waiting = _WAITING.set((asyncio.current_task(), deadline))
                try:
                    connection = await self._pool.acquire()
                finally:
                    _WAITING.reset(waiting)
        except TimeoutError:
            if deadline.expired():
                raise StoreUnavailable(reason="pool_timeout") from None
            raise  # a connect timeout inside acquire: classified as unreachable
        try:
            if autocommit:
                return await work(Transaction(connection))
            await connection.execute(begin(tenant))
            transaction = Transaction(connection)
            result = await work(transaction)
            if write:
                await self._before_commit(transaction)
            attempt.committing = True
            await connection.execute("COMMIT")
            return result
        except BaseException as exc:
            await _abandon(connection, exc, attempt.committing or autocommit)
            raise
        finally:
            await release(self._pool, connection)

    async def _should_retry(
        self, exc: Exception, attempts: dict[str, int], committing: bool
    ) -> bool:
        if constraint_name(exc) == _IDEMPOTENCY_PK:
            # A racing request with the same id committed first: run again to replay it.
            attempts["key"] += 1
            return attempts["key"] < _MAX_KEY_RACE_ATTEMPTS
        classified = classify(exc)
        if not classified.retry or (classified.disconnect and committing):
            return False  # after COMMIT was sent, only the caller can tell what happened
        kind = "disconnect" if classified.disconnect else "contention"
        limit = _MAX_DISCONNECT_ATTEMPTS if classified.disconnect else _MAX_CONTENTION_ATTEMPTS
        attempts[kind] += 1
        if attempts[kind] >= limit:
            return False
        if classified.disconnect:
            # One broken connection usually means all of them (a server restart, a failover):
            # have the pool replace every connection instead of finding them one by one.
            await self._pool.expire_connections()
        await asyncio.sleep(_RETRY_BACKOFF_SECONDS * attempts[kind])
        return True

    @staticmethod
    def _translate(exc: Exception) -> FlowStateError:
        name = constraint_name(exc) or ""
        in_history = name.startswith(HISTORY_PARTITION_PREFIX)
        if name in _FLOW_ID_TAKEN or (in_history and name.endswith(_FLOW_ID_TAKEN_IN_PARTITION)):
            return malformed("flow_id", _FLOW_ID_TAKEN_MESSAGE)
        return to_store_error(exc)

    async def _before_commit(self, transaction: Transaction) -> None:
        """Test hook: runs after a write transaction's statements, right before COMMIT.

        Does nothing here. A test subclass may raise (or break the connection) to check that
        a failure at that point leaves no trace.
        """

    async def _after_write(self) -> None:
        """Runs after each committed write transaction; nothing here (the store purges keys)."""
