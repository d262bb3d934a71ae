"""The status-stream hub behind WatchFlow and WatchFlows (DESIGN.md section 5).

One `WatchHub` per server process. The history table is the log; LISTEN/NOTIFY is only a
wake-up signal. The moving parts:

- **One listener connection** (`_Listener`) LISTENs on ``flowstate_changes``. A notification
  names a flow and its tenant; the hub pokes that flow's channel and that tenant's channel. When
  the connection drops (or stops answering a ping) it reconnects with backoff and pokes *every*
  channel, which re-reads from history: a lost notification costs a read, never a change.
- **Channels** (`_Channel`): one per watched flow, one per watching tenant, shared by all of its
  subscribers. A channel holds a bounded window of the log (the last `queue_limit` entries it
  read) and at most one read in flight per start position (single-flight), so a change watched
  by 1000 streams costs one history read. On a poke the channel's pump reads the log after the
  window's end, appends, and fires one `asyncio.Event` that every subscriber waits on. The pump
  never awaits a subscriber.
- **Subscribers** are the async generators returned by `watch_flow` / `watch_flows`. Each keeps
  only its position. It serves itself from the channel's window; when its position has fallen
  out of the window (it read too slowly, or it is replaying) it reads the log itself, in pages of
  `queue_limit`, through the same single-flight reads. So a slow consumer costs no memory
  beyond one page and never delays anyone: it is resynchronised from history and misses nothing
  (`SUBSCRIBER_TOO_SLOW` is therefore never raised; the code exists for the servicer's table).
- Streams send a heartbeat after `heartbeat_interval` seconds without an event, and end with
  `FlowStateError(SERVER_SHUTTING_DOWN)` when the hub closes.

WatchFlow positions are flow versions. WatchFlows positions are ``(txid, seq)`` of the tenant's
commit-ordered log (see `flowstate.storage.changes` and docs/streams.md for why the cursor is
gap-free).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

import asyncpg

from flowstate.core.errors import FlowStateError
from flowstate.core.filters import Filter, matches
from flowstate.core.model import (
    ErrorCode,
    ExternalDependency,
    Flow,
    FlowStatus,
    HistoryEntry,
    Tenant,
)
from flowstate.core.rules import TERMINAL_STATUSES
from flowstate.server.convert import FLOW_STATUS_TO_PROTO, fill_event_change
from flowstate.storage.changes import (
    MAX_SEQ,
    SNAPSHOT_LIMIT,
    LogPosition,
    TenantChange,
    TenantCursor,
    TenantLog,
    TreeRead,
)
from flowstate.storage.sql import connect_arguments
from flowstate.storage.statements import NOTIFY_CHANNEL
from flowstate.storage.urls import normalize_database_url
from flowstate.v1 import flow_service_pb2 as pb

__all__ = ["NOTIFY_CHANNEL", "FlowEventValue", "SharedChanges", "WatchHub", "WatchStore"]

_log = logging.getLogger("flowstate.watch")

_PING_INTERVAL: Final = 10.0
_PING_TIMEOUT: Final = 5.0
_RECONNECT_INITIAL: Final = 0.05
_RECONNECT_MAX: Final = 5.0
_PENDING_RETRY_INITIAL: Final = 0.005
_PENDING_RETRY_MAX: Final = 0.5
_CLOSE_DRAIN_TIMEOUT: Final = 5.0
_SHARED_CHANGES_MAX: Final = 4096


class WatchStore(Protocol):
    """What the hub needs from `flowstate.storage.FlowStore`."""

    async def get_flow(self, tenant: Tenant, flow_id: str) -> Flow:
        """The flow, or FlowStateError(FLOW_NOT_FOUND) (also for another tenant's flow)."""
        ...

    async def read_changes(
        self, tenant: Tenant, flow_id: str, after_version: int, limit: int
    ) -> tuple[HistoryEntry, ...]:
        """History entries of the flow with version > `after_version`, oldest first."""
        ...


Relation = Literal["self", "descendant", "dependency"] | None
"""How an event's flow relates to the flow a tree stream watches (None: a plain stream)."""


@dataclass(frozen=True, slots=True)
class FlowEventValue:
    """One event of a status stream, domain-level (the servicer turns it into a FlowEvent).

    Exactly one of `snapshot`, `change` and `heartbeat_at` is set. `flow_version`, `status` and
    `progress` describe the flow after the event; on WatchFlows heartbeats `flow_id` is empty,
    `flow_version` 0, `status` INITIALIZED and `progress` 0 (meaningless there). `cursor` is set
    on WatchFlows events only: the resume token after this event (empty on the snapshot events
    of the initial snapshot but the last, which cannot be resumed in the middle).
    """

    flow_id: str
    flow_version: int
    status: FlowStatus
    progress: float
    snapshot: Flow | None = None
    change: HistoryEntry | None = None
    heartbeat_at: datetime | None = None
    cursor: str = ""
    relation: Relation = None
    """On WatchFlow streams with children or dependencies: how the event's flow relates to the
    watched flow ("self", "descendant", "dependency"); None on plain streams."""
    parent_flow_id: str = ""
    """On "descendant" events: the parent of the event's flow."""
    waiting: tuple[ExternalDependency, ...] = ()
    """On "dependency" events: the waiting phases, each as the waiting flow's dependency
    (`phase` of `flow_id` waits for `flow_phase` of the event's flow)."""


def _shutting_down() -> FlowStateError:
    return FlowStateError(
        ErrorCode.SERVER_SHUTTING_DOWN,
        "the server is shutting down; reconnect and resume from the last version or cursor seen",
        retry_allowed=True,
    )


P = TypeVar("P", int, LogPosition)
"""A position in a channel's log: a flow version, or a tenant-log ``(txid, seq)``."""
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Read(Generic[P, T]):
    """Items after a position; every item in ``(after, covered]`` is in `items`."""

    items: tuple[T, ...]
    covered: P
    full: bool
    pending: bool = False


class _Channel(Generic[P, T]):
    """The shared window of one log (a flow's versions, or a tenant's changes).

    Invariant: when `head` is not None, `items` holds every item with position in
    ``(base, head]``, in order, and `positions` their positions.
    """

    def __init__(
        self,
        key: Hashable,
        reader: Callable[[P, int], Awaitable[_Read[P, T]]],
        position_of: Callable[[T], P],
        limit: int,
        on_empty: Callable[[Hashable], None],
        on_live: Callable[[Sequence[T]], None] = lambda items: None,
    ) -> None:
        self.key = key
        self.changed = asyncio.Event()
        self.subscribers = 0
        self.pokes = 0
        self.base: P | None = None
        self.head: P | None = None
        self.items: list[T] = []
        self.positions: list[P] = []
        self._reader: Callable[[P, int], Awaitable[_Read[P, T]]] = reader
        self.position_of: Callable[[T], P] = position_of
        self._limit = limit
        self._on_empty = on_empty
        self._on_live = on_live
        self._fetches: dict[P, asyncio.Task[_Read[P, T]]] = {}
        self._pump: asyncio.Task[None] | None = None
        self._dirty = False
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = _PENDING_RETRY_INITIAL

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self) -> int:
        """Count a subscriber in; returns the poke count to hand to `go_live`."""
        self.subscribers += 1
        return self.pokes

    def unsubscribe(self) -> None:
        """Count a subscriber out; the hub forgets the channel when none is left."""
        self.subscribers -= 1
        if self.subscribers == 0:
            if self._retry is not None:
                self._retry.cancel()
            self._on_empty(self.key)

    def go_live(self, position: P, pokes_seen: int, *, current: bool) -> None:
        """A subscriber stands at `position` and follows the channel from now on.

        When `position` is `current` (a snapshot's), a channel that has never read starts its
        window there. A poke that arrived while the subscriber was taking its snapshot (and
        found no window to read after) is replayed.
        """
        if self.head is None and current:
            self.base = self.head = position
        if self.pokes != pokes_seen:
            self.poke()

    def items_after(self, position: P) -> list[T] | None:
        """The window's items after `position`; None when the window does not cover it."""
        if self.base is None or self.head is None or position < self.base:
            return None
        if position >= self.head:
            return []
        return self.items[bisect.bisect_right(self.positions, position) :]

    # -- reading -----------------------------------------------------------------------------

    async def fetch(self, after: P) -> _Read[P, T]:
        """Read the log after `after` (single-flight per position) and merge it into the window."""
        task = self._fetches.get(after)
        if task is None:
            task = asyncio.ensure_future(self._fetch(after))
            self._fetches[after] = task
            task.add_done_callback(lambda done: self._fetch_done(after, done))
        return await asyncio.shield(task)

    def _fetch_done(self, after: P, task: asyncio.Task[_Read[P, T]]) -> None:
        if self._fetches.get(after) is task:
            del self._fetches[after]
        if not task.cancelled():
            task.exception()  # retrieved here so that an unawaited failure is not reported twice

    async def _fetch(self, after: P) -> _Read[P, T]:
        pokes = self.pokes
        read = await self._reader(after, self._limit)
        self._absorb(after, read)
        if self.pokes != pokes:
            # A notification came while this read ran: its change may have committed after
            # the read's snapshot. Read again, for its own sake: a poke before the channel's
            # first read started no pump, and a pump that joined this read (single-flight) has
            # already cleared its dirty flag.
            self.poke()
        return read

    def _absorb(self, after: P, read: _Read[P, T]) -> None:
        if self.head is None or self.base is None or after > self.head:
            # A gap (or the first read): the window restarts at this read.
            self.base, self.head = after, read.covered
            self.items = list(read.items)
            self.positions = [self.position_of(item) for item in read.items]
            if read.full and self._pump is None:
                self.poke()  # a page ended the window: more may follow, read on
        else:
            extended = read.covered > self.head
            for item in read.items:
                position = self.position_of(item)
                if position > self.head:
                    self.items.append(item)
                    self.positions.append(position)
            self.head = max(self.head, read.covered)
            if extended and read.full and self._pump is None:
                self.poke()  # a page ended the window: more may follow, read on
        overflow = len(self.items) - self._limit
        if overflow > 0:
            self.base = self.positions[overflow - 1]
            del self.items[:overflow]
            del self.positions[:overflow]

    def fire(self) -> None:
        """Wake every subscriber (they look at the window, or at the hub's closing flag)."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def poke(self) -> None:
        """Something may have changed: read the log after the window (one pump at a time)."""
        self.pokes += 1
        self._dirty = True
        if self._pump is None and self.head is not None:
            self._pump = asyncio.ensure_future(self._run_pump())

    async def _run_pump(self) -> None:
        try:
            while self._dirty and self.head is not None and self.subscribers:
                self._dirty = False
                while True:
                    read = await self.fetch(self.head)
                    if read.items:
                        self._on_live(read.items)  # newly committed: measure the lag
                        self.fire()
                    if not read.full:
                        break
                self._schedule_retry(read.pending)
        except Exception:  # a failed read ends nothing: the channel re-reads with backoff
            _log.warning("watch channel %r: read failed", self.key, exc_info=True)
            self.fire()
            # No notification may follow (the change was the last one): read again soon.
            self._schedule_retry(pending=True)
        finally:
            self._pump = None

    def retry_soon(self) -> None:
        """A follower's own read found committed entries behind the horizon: read again soon
        (their notification may have come before anyone listened on this channel)."""
        self._schedule_retry(pending=True)

    def _schedule_retry(self, pending: bool) -> None:
        """Re-read soon when committed changes wait behind the horizon (no notify will come)."""
        if not pending:
            self._retry_delay = _PENDING_RETRY_INITIAL
            return
        if self._retry is None or self._retry.cancelled():
            delay, self._retry_delay = (
                self._retry_delay,
                min(self._retry_delay * 2, _PENDING_RETRY_MAX),
            )
            self._retry = asyncio.get_running_loop().call_later(delay, self._retry_poke)

    def _retry_poke(self) -> None:
        self._retry = None
        if self.subscribers:
            self.poke()

    async def drain(self) -> None:
        """Wait for reads in flight (used at close)."""
        tasks: list[asyncio.Future[Any]] = list(self._fetches.values())
        if self._pump is not None:
            tasks.append(self._pump)
        if self._retry is not None:
            self._retry.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_DRAIN_TIMEOUT)


def _version_of(entry: HistoryEntry) -> int:
    return entry.flow_version


def _position_of(change: TenantChange) -> LogPosition:
    return change.position


def _now() -> datetime:
    return datetime.now(UTC)


class _Listener:
    """The process's one LISTEN connection, reconnected with backoff for as long as the hub runs."""

    def __init__(self, hub: WatchHub, connect_kwargs: dict[str, Any]) -> None:
        self._hub = hub
        self._connect_kwargs = connect_kwargs
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.connections = 0
        self.first_error: Exception | None = None
        """Why the first connection failed (before any succeeded): `WatchHub.start` raises it."""
        self.first_failed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the current listener connection (for tests and logs)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        delay = _RECONNECT_INITIAL
        while not self._stop.is_set():
            try:
                await self._serve()
                delay = _RECONNECT_INITIAL
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                _log.warning("watch listener: connection lost (%s); reconnecting", exc)
                self._note_failure(exc)
            except Exception as exc:
                _log.exception("watch listener: unexpected error; reconnecting")
                self._note_failure(exc)
            finally:
                self.connected.clear()
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(delay * 2, _RECONNECT_MAX)

    def _note_failure(self, error: Exception) -> None:
        if self.connections == 0 and self.first_error is None:
            self.first_error = error
            self.first_failed.set()

    async def _serve(self) -> None:
        lost = asyncio.Event()
        conn: asyncpg.Connection = await asyncpg.connect(**self._connect_kwargs)
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            # Only a listening connection is "the listener" (`backend_pid`, `connections`).
            self._conn = conn
            self.connections += 1
            self.connected.set()
            # Notifications may have been missed while we were away (or before the first
            # connection): every channel re-reads from history.
            self._hub._poke_all()
            while not self._stop.is_set() and not lost.is_set():
                waiters = [
                    asyncio.ensure_future(self._stop.wait()),
                    asyncio.ensure_future(lost.wait()),
                ]
                try:
                    await asyncio.wait(
                        waiters, timeout=_PING_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if not self._stop.is_set() and not lost.is_set():
                    async with asyncio.timeout(_PING_TIMEOUT):
                        await conn.fetchval("SELECT 1")
            if lost.is_set() and not self._stop.is_set():
                raise ConnectionError("the listener connection was closed")
        finally:
            self._conn = None
            if not conn.is_closed():
                try:
                    async with asyncio.timeout(_PING_TIMEOUT):
                        await conn.close()
                except Exception:
                    conn.terminate()

    def _on_notify(
        self,
        _conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any],
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        try:
            data = json.loads(str(payload))
            tenant = Tenant(str(data["client_account_id"]), str(data["engagement_id"]))
            flow_id = str(data["flow_id"])
        except (ValueError, KeyError, TypeError):
            _log.warning("watch listener: ignoring malformed notification %r", str(payload)[:200])
            return
        self._hub._on_change(tenant, flow_id)


class ChangeEvent(Protocol):
    """What `SharedChanges` reads of an event (a `FlowEventValue` or the servicer's view of one)."""

    @property
    def flow_id(self) -> str: ...
    @property
    def flow_version(self) -> int: ...
    @property
    def status(self) -> FlowStatus: ...
    @property
    def progress(self) -> float: ...


class SharedChanges:
    """Change events converted once and shared by every stream that delivers them.

    The hub reads each change once and hands the same `HistoryEntry` object to all its
    subscribers, so a fan-out to N streams converts it once instead of N times. The cache holds
    the entry itself and reuses the messages only for that very object, so a stale or colliding
    key can cost a conversion but never deliver another entry. The messages are shared: nothing
    may modify them after this (grpc only serialises them). Cleared when full, like a window of
    recent changes.
    """

    def __init__(self, limit: int = _SHARED_CHANGES_MAX) -> None:
        """Keep at most `limit` changes."""
        self._limit = limit
        # (tenant, flow id, version) -> (the hub's entry, its FlowEvent, its WatchFlowResponse)
        self._changes: dict[
            tuple[Tenant, str, int], tuple[HistoryEntry, pb.FlowEvent, pb.WatchFlowResponse]
        ] = {}

    def __len__(self) -> int:
        """How many changes are cached."""
        return len(self._changes)

    def get(
        self, tenant: Tenant, value: ChangeEvent, change: HistoryEntry
    ) -> tuple[pb.FlowEvent, pb.WatchFlowResponse]:
        """The change event of `value` (whose change is `change`) and its WatchFlowResponse."""
        key = (tenant, value.flow_id, value.flow_version)
        cached = self._changes.get(key)
        if cached is not None and cached[0] is change:
            return cached[1], cached[2]
        event = pb.FlowEvent(
            flow_id=value.flow_id,
            flow_version=value.flow_version,
            progress=value.progress,
            status=FLOW_STATUS_TO_PROTO[value.status],
        )
        fill_event_change(event, value.flow_id, change)
        response = pb.WatchFlowResponse(event=event)
        if len(self._changes) >= self._limit:
            self._changes.clear()
        self._changes[key] = (change, event, response)
        return event, response


class WatchHub:
    """Fan-out of committed flow changes to WatchFlow / WatchFlows streams (see module doc)."""

    def __init__(
        self,
        store: WatchStore,
        log: TenantLog,
        connect_kwargs: dict[str, Any],
        *,
        heartbeat_interval: float,
        queue_limit: int,
        snapshot_limit: int = SNAPSHOT_LIMIT,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        """Use `start`; this only wires the parts."""
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self._store = store
        self._log = log
        self._heartbeat = heartbeat_interval
        self._limit = queue_limit
        self._snapshot_limit = snapshot_limit
        self._on_lag = on_lag
        self._closing = False
        self._open = 0
        self._flow_channels: dict[Hashable, _Channel[int, HistoryEntry]] = {}
        self._tenant_channels: dict[Hashable, _Channel[LogPosition, TenantChange]] = {}
        self._listener = _Listener(self, connect_kwargs)
        self._ticker: asyncio.Task[None] | None = None
        self._shared = SharedChanges()

    def shared_change(
        self, tenant: Tenant, value: ChangeEvent, change: HistoryEntry
    ) -> tuple[pb.FlowEvent, pb.WatchFlowResponse]:
        """The change event of `value`, converted once for every stream that delivers it."""
        return self._shared.get(tenant, value, change)

    @classmethod
    async def start(
        cls,
        store: WatchStore,
        database_url: str,
        *,
        heartbeat_interval: float = 15.0,
        queue_limit: int = 256,
        snapshot_limit: int = SNAPSHOT_LIMIT,
        on_lag: Callable[[float], None] | None = None,
    ) -> WatchHub:
        """Connect the listener (waits for the first connection) and return the running hub.

        `heartbeat_interval`: seconds without an event before a stream gets a heartbeat.
        `queue_limit`: entries each channel keeps in memory, and the page size of history reads.
        `snapshot_limit`: most flows in the initial snapshot of WatchFlows.
        `on_lag`: called with the seconds from each change's commit to the hub reading it live.
        """
        connect_kwargs = connect_arguments(normalize_database_url(database_url))
        log = await TenantLog.open(database_url)
        hub = cls(
            store,
            log,
            connect_kwargs,
            heartbeat_interval=heartbeat_interval,
            queue_limit=queue_limit,
            snapshot_limit=snapshot_limit,
            on_lag=on_lag,
        )
        hub._listener.start()
        hub._ticker = asyncio.ensure_future(hub._tick())
        listener = hub._listener
        waiters = [
            asyncio.ensure_future(listener.connected.wait()),
            asyncio.ensure_future(listener.first_failed.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if not listener.connected.is_set():
                # Fail fast with the cause (e.g. connection refused), not after a bare timeout.
                if listener.first_error is not None:
                    raise listener.first_error
                raise TimeoutError("the watch hub's LISTEN connection did not connect in 30 s")
        except BaseException:
            await hub.close()
            raise
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return hub

    @property
    def open_streams(self) -> int:
        """Streams currently open on this hub (for the open-streams gauge)."""
        return self._open

    @property
    def listener_pid(self) -> int | None:
        """The PostgreSQL backend pid of the LISTEN connection (None while reconnecting)."""
        return self._listener.backend_pid

    @property
    def listener_connections(self) -> int:
        """How many times the listener has connected (1 + reconnections)."""
        return self._listener.connections

    async def close(self) -> None:
        """End every open stream with SERVER_SHUTTING_DOWN, then stop listening.

        Streams waiting for a change end at once; a stream whose consumer is not reading ends
        the next time it is read. Reads in flight are allowed to finish (bounded).
        """
        if self._closing:
            return
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        channels: list[_Channel[Any, Any]] = [
            *self._flow_channels.values(),
            *self._tenant_channels.values(),
        ]
        for channel in channels:
            channel.fire()
        await self._listener.stop()
        await asyncio.gather(*(channel.drain() for channel in channels))
        await self._log.close()

    async def _tick(self) -> None:
        """Wake every stream twice per heartbeat interval so that idle ones can send a heartbeat.

        One timer for the process instead of one per stream: a stream's heartbeat therefore
        goes out between 1 and 1.5 intervals after its last event.
        """
        while not self._closing:
            await asyncio.sleep(self._heartbeat / 2)
            channels: list[_Channel[Any, Any]] = [
                *self._flow_channels.values(),
                *self._tenant_channels.values(),
            ]
            for channel in channels:
                channel.fire()

    # -- notifications -----------------------------------------------------------------------

    def _on_change(self, tenant: Tenant, flow_id: str) -> None:
        flow_channel = self._flow_channels.get((tenant, flow_id))
        if flow_channel is not None:
            flow_channel.poke()
        tenant_channel = self._tenant_channels.get(tenant)
        if tenant_channel is not None:
            tenant_channel.poke()

    def _poke_all(self) -> None:
        for flow_channel in list(self._flow_channels.values()):
            flow_channel.poke()
        for tenant_channel in list(self._tenant_channels.values()):
            tenant_channel.poke()

    def _check_open(self) -> None:
        if self._closing:
            raise _shutting_down()

    def _as_shutdown(self, error: Exception) -> None:
        """Raise SERVER_SHUTTING_DOWN instead of `error` when the hub is closing.

        A stream whose first read starts while `close` runs meets a closing pool (asyncpg's
        "pool is closing"): that is the shutdown, and the client must see the resumable
        status, not an internal error.
        """
        if self._closing and not isinstance(error, FlowStateError):
            raise _shutting_down() from error

    # -- channels ----------------------------------------------------------------------------

    def _flow_channel(self, tenant: Tenant, flow_id: str) -> _Channel[int, HistoryEntry]:
        key = (tenant, flow_id)
        channel = self._flow_channels.get(key)
        if channel is None:

            async def read(after: int, limit: int) -> _Read[int, HistoryEntry]:
                entries = await self._store.read_changes(tenant, flow_id, after, limit)
                covered = entries[-1].flow_version if entries else after
                return _Read(entries, covered, full=len(entries) >= limit)

            channel = _Channel(
                key,
                read,
                _version_of,
                self._limit,
                self._forget_flow_channel,
                lambda entries: self._observe_lag(entry.occurred_at for entry in entries),
            )
            self._flow_channels[key] = channel
        return channel

    def _forget_flow_channel(self, key: Hashable) -> None:
        self._flow_channels.pop(key, None)

    def _tenant_channel(self, tenant: Tenant) -> _Channel[LogPosition, TenantChange]:
        channel = self._tenant_channels.get(tenant)
        if channel is None:

            async def read(after: LogPosition, limit: int) -> _Read[LogPosition, TenantChange]:
                result = await self._log.read(tenant, after, limit)
                return _Read(
                    result.changes,
                    result.covered,
                    full=len(result.changes) >= limit,
                    pending=result.pending,
                )

            channel = _Channel(
                tenant,
                read,
                _position_of,
                self._limit,
                self._forget_tenant,
                lambda changes: self._observe_lag(c.entry.occurred_at for c in changes),
            )
            self._tenant_channels[tenant] = channel
        return channel

    def _forget_tenant(self, key: Hashable) -> None:
        self._tenant_channels.pop(key, None)

    def _observe_lag(self, committed: Iterable[datetime]) -> None:
        if self._on_lag is None:
            return
        now = _now()
        for moment in committed:
            self._on_lag(max((now - moment).total_seconds(), 0.0))  # clocks may differ a little

    async def _follow(
        self,
        channel: _Channel[P, T],
        position: P,
        *,
        catch_up: bool,
        done: Callable[[P], bool] | None = None,
    ) -> AsyncGenerator[tuple[T | None, P], None]:
        """Items of `channel` after `position`, forever, each with the position it ends at.

        `catch_up`: the log may already hold items after `position` (a resume), so read it
        first instead of waiting for a notification. Yields ``(None, position)`` when a
        heartbeat is due; `position` then says how far the log is known to hold nothing more
        for this follower. Returns when `done(position)` holds once everything known has been
        yielded (before waiting). Raises SERVER_SHUTTING_DOWN when the hub closes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._heartbeat
        while True:
            changed = channel.changed  # taken before looking, so that no wake-up is lost
            self._check_open()
            items = None if catch_up else channel.items_after(position)
            catch_up = False
            if items is None:
                read = await channel.fetch(position)
                self._check_open()
                if read.pending:
                    channel.retry_soon()
                items = list(read.items)
                covered = read.covered
                catch_up = read.full
            else:
                covered = channel.head if channel.head is not None else position
            for item in items:
                position = channel.position_of(item)
                yield item, position
            if items:
                deadline = loop.time() + self._heartbeat
            position = max(position, covered)
            if items:
                continue
            if done is not None and done(position):
                return
            if loop.time() >= deadline:
                yield None, position
                deadline = loop.time() + self._heartbeat
                continue
            # No timer per stream: the hub's ticker fires every channel twice per interval.
            await changed.wait()

    # -- WatchFlow ---------------------------------------------------------------------------

    def watch_flow(
        self,
        tenant: Tenant,
        flow_id: str,
        *,
        after_version: int | None,
        keep_open: bool,
        children_depth: int = 0,
        include_dependencies: bool = False,
        cursor: str = "",
    ) -> AsyncGenerator[FlowEventValue, None]:
        """Stream one flow: a snapshot (or the changes after `after_version`), then live changes.

        Raises (from the iterator) FLOW_NOT_FOUND for a missing flow or another tenant's,
        MALFORMED_REQUEST for an `after_version` below 0 or beyond the flow's version, and
        SERVER_SHUTTING_DOWN when the hub closes. Ends after the event that made the flow
        COMPLETED or CANCELLED (or after a terminal snapshot) unless `keep_open`.

        With `children_depth` or `include_dependencies` the stream is a tree stream
        (`_watch_tree`): it resumes by `cursor` (`after_version` is then ignored).
        """
        if children_depth or include_dependencies:
            return self._watch_tree(
                tenant, flow_id, children_depth, include_dependencies, cursor, keep_open
            )
        return self._watch_flow(tenant, flow_id, after_version, keep_open)

    async def _watch_flow(
        self, tenant: Tenant, flow_id: str, after_version: int | None, keep_open: bool
    ) -> AsyncGenerator[FlowEventValue, None]:
        self._check_open()
        if after_version is not None and after_version < 0:
            raise FlowStateError(
                ErrorCode.MALFORMED_REQUEST,
                "after_version must not be negative",
                field="after_version",
            )
        channel = self._flow_channel(tenant, flow_id)
        # Subscribe before the snapshot: a change that commits after it is read from history.
        pokes = channel.subscribe()
        self._open += 1
        try:
            flow = await self._store.get_flow(tenant, flow_id)
            self._check_open()
            status, progress = flow.status, flow.progress
            if after_version is None:
                position = flow.version
                yield FlowEventValue(flow_id, flow.version, status, progress, snapshot=flow)
            elif after_version > flow.version:
                raise FlowStateError(
                    ErrorCode.MALFORMED_REQUEST,
                    f"after_version {after_version} is beyond the flow's version {flow.version}",
                    field="after_version",
                    current_version=flow.version,
                )
            else:
                position = after_version
            if not keep_open and status in TERMINAL_STATUSES and position >= flow.version:
                return
            current = position == flow.version
            channel.go_live(position, pokes, current=current)
            follow_flow = self._follow(channel, position, catch_up=not current)
            async with contextlib.aclosing(follow_flow) as follower:
                async for entry, position in follower:
                    if entry is None:
                        yield FlowEventValue(
                            flow_id, position, status, progress, heartbeat_at=_now()
                        )
                        continue
                    status, progress = entry.status_after, entry.progress_after
                    yield FlowEventValue(flow_id, position, status, progress, change=entry)
                    if not keep_open and status in TERMINAL_STATUSES:
                        return
        except Exception as error:
            self._as_shutdown(error)
            raise
        finally:
            self._open -= 1
            channel.unsubscribe()

    # -- WatchFlow of a tree (children, dependencies) ---------------------------------------

    async def _watch_tree(
        self,
        tenant: Tenant,
        flow_id: str,
        depth: int,
        dependencies: bool,
        cursor_token: str,
        keep_open: bool,
    ) -> AsyncGenerator[FlowEventValue, None]:
        """A flow, its descendants down to `depth` and (with `dependencies`) the phases its
        tree's external dependencies name, from the tenant log (docs/child_flows.md, "Watching
        a tree"): a snapshot event per flow (or the changes after `cursor_token`), then live.

        Which flows belong is the tree as read at the start, grown while the stream runs: a
        change of a flow whose parent belongs makes it belong (a new child, at most `depth`
        levels down), and a member's entry that links a child reads the linked flow's subtree.
        Every event carries the cursor after it, as on WatchFlows. Without `keep_open` the
        stream ends once the watched flow's terminal transaction has been sent (its children's
        changes in that transaction included), or, on a resume of an already terminal flow,
        once the log up to now has been sent.
        """
        self._check_open()
        resume = TenantCursor.decode(cursor_token) if cursor_token else None
        channel = self._tenant_channel(tenant)
        pokes = channel.subscribe()
        self._open += 1
        try:
            if resume is not None:
                await self._log.check_cursor(resume)
            read = await self._log.tree(
                tenant,
                flow_id,
                depth,
                dependencies=dependencies,
                snapshot=resume is None,
                links=resume is not None,  # a link after the cursor: its earlier entries stay out
            )
            self._check_open()
            tree = _Tree(flow_id, depth, dependencies, read)
            root = read.flows[0]
            status, progress, version = root.status, root.progress, root.version
            end_at: LogPosition | None = None  # the watched flow's terminal transaction's end
            idle_end: LogPosition | None = None  # a resume of a terminal flow: end once idle
            if resume is None:
                assert read.cursor is not None
                cursor = read.cursor
                snapshots = tree.snapshot_events(read)
                for index, event in enumerate(snapshots):
                    self._check_open()
                    last = index == len(snapshots) - 1
                    yield replace(event, cursor=cursor.encode()) if last else event
                if not keep_open and status in TERMINAL_STATUSES:
                    return
            else:
                cursor = resume
                if not keep_open and status in TERMINAL_STATUSES:
                    # Send what the log holds up to the read (the terminal transaction included,
                    # also while an older transaction holds the horizon back), then end.
                    idle_end = (read.xmax - 1, MAX_SEQ)
            self._check_open()
            channel.go_live(cursor.position, pokes, current=resume is None)

            def done(position: LogPosition) -> bool:
                return (end_at is not None and position >= end_at) or (
                    idle_end is not None and position >= idle_end
                )

            follow_tenant = self._follow(
                channel, cursor.position, catch_up=resume is not None, done=done
            )
            async with contextlib.aclosing(follow_tenant) as follower:
                async for change, position in follower:
                    if change is None:
                        cursor = cursor.advanced(position)
                        yield FlowEventValue(
                            flow_id,
                            version,
                            status,
                            progress,
                            heartbeat_at=_now(),
                            cursor=cursor.encode(),
                            relation="self",
                        )
                        continue
                    if end_at is not None and position > end_at:
                        return  # the terminal transaction was sent; not past it
                    consumed = cursor.consumed(change)
                    cursor = cursor.advanced(position)
                    if consumed:
                        continue
                    found = await tree.event_of(change, self._log, tenant)
                    if found is None:
                        continue
                    if change.flow_id == flow_id:
                        entry = change.entry
                        status, progress, version = (
                            entry.status_after,
                            entry.progress_after,
                            entry.flow_version,
                        )
                        if not keep_open and status in TERMINAL_STATUSES:
                            end_at = (position[0], MAX_SEQ)
                    yield replace(found, cursor=cursor.encode())
        except Exception as error:
            self._as_shutdown(error)
            raise
        finally:
            self._open -= 1
            channel.unsubscribe()

    # -- WatchFlows --------------------------------------------------------------------------

    def watch_flows(
        self,
        tenant: Tenant,
        *,
        statuses: frozenset[FlowStatus],
        definition_name: str,
        flow_ids: frozenset[str],
        cursor: str,
        condition: Filter | None = None,
    ) -> AsyncGenerator[FlowEventValue, None]:
        """Stream the tenant's matching flows: a snapshot (or changes after `cursor`), then live.

        Filters (each ignored when empty): the status after the change, the definition name,
        the flow ids, and `condition` (a parsed filter, on the flow as the change left it:
        `TenantChange.facts`). Every event carries the cursor to resume after it. Raises (from the
        iterator) MALFORMED_REQUEST for a bad cursor or a snapshot over the limit, and
        SERVER_SHUTTING_DOWN when the hub closes.
        """
        return self._watch_flows(tenant, statuses, definition_name, flow_ids, cursor, condition)

    async def _watch_flows(
        self,
        tenant: Tenant,
        statuses: frozenset[FlowStatus],
        definition_name: str,
        flow_ids: frozenset[str],
        cursor_token: str,
        condition: Filter | None,
    ) -> AsyncGenerator[FlowEventValue, None]:
        self._check_open()
        resume = TenantCursor.decode(cursor_token) if cursor_token else None
        channel = self._tenant_channel(tenant)
        pokes = channel.subscribe()
        self._open += 1
        try:
            if resume is not None:
                await self._log.check_cursor(resume)
                cursor = resume
            else:
                snapshot = await self._log.snapshot(
                    tenant,
                    statuses=statuses,
                    definition_name=definition_name,
                    flow_ids=flow_ids,
                    limit=self._snapshot_limit,
                    condition=condition,
                )
                cursor = snapshot.cursor
                last = len(snapshot.flows) - 1
                for index, flow in enumerate(snapshot.flows):
                    self._check_open()
                    yield FlowEventValue(
                        flow.flow_id,
                        flow.version,
                        flow.status,
                        flow.progress,
                        snapshot=flow,
                        cursor=cursor.encode() if index == last else "",
                    )
            self._check_open()
            channel.go_live(cursor.position, pokes, current=resume is None)
            follow_tenant = self._follow(channel, cursor.position, catch_up=resume is not None)
            async with contextlib.aclosing(follow_tenant) as follower:
                async for change, position in follower:
                    if change is None:
                        cursor = cursor.advanced(position)
                        yield FlowEventValue(
                            "",
                            0,
                            FlowStatus.INITIALIZED,
                            0.0,
                            heartbeat_at=_now(),
                            cursor=cursor.encode(),
                        )
                        continue
                    consumed = cursor.consumed(change)
                    cursor = cursor.advanced(position)
                    if consumed or not _matches(
                        change, statuses, definition_name, flow_ids, condition
                    ):
                        continue
                    entry = change.entry
                    yield FlowEventValue(
                        change.flow_id,
                        entry.flow_version,
                        entry.status_after,
                        entry.progress_after,
                        change=entry,
                        cursor=cursor.encode(),
                    )
        except Exception as error:
            self._as_shutdown(error)
            raise
        finally:
            self._open -= 1
            channel.unsubscribe()


class _Tree:
    """Which flows a tree stream covers, and the event (if any) each change makes.

    `members` maps each covered flow to its depth below the watched flow (0 for it);
    `joined` the txid from which a member's entries belong (a linked flow's link, for it and
    its subtree; absent: all of them); `waiting` maps ``(flow id, phase)`` of another flow to
    the dependencies that wait for it.
    """

    def __init__(self, flow_id: str, depth: int, dependencies: bool, read: TreeRead) -> None:
        self.flow_id = flow_id
        self.depth = depth
        self.dependencies = dependencies
        self.members: dict[str, int] = {}
        self.joined: dict[str, int] = {}
        self.waiting: dict[tuple[str, str], list[ExternalDependency]] = {}
        self._add(read, 0)

    def _add(self, read: TreeRead, base: int, since: int = 0) -> None:
        """Make the flows of `read` (at `base` + their depth) members, with their dependencies;
        their entries belong from `since`, from their link or from their parent's on."""
        for flow, depth in zip(read.flows, read.depths, strict=True):
            if flow.flow_id not in self.members:
                self.members[flow.flow_id] = base + depth
                joined = since
                if base + depth > 0:
                    parent = self.joined.get(flow.parent_flow_id or "", 0)
                    joined = max(since, parent, read.links.get(flow.flow_id, 0))
                if joined:
                    self.joined[flow.flow_id] = joined
            if not self.dependencies:
                continue
            for dep in flow.external_dependencies:
                waiting = ExternalDependency(dep.phase, flow.flow_id, dep.flow_phase)
                known = self.waiting.setdefault((dep.flow_id, dep.flow_phase), [])
                if waiting not in known:
                    known.append(waiting)

    def _waiting_on(self, flow_id: str) -> tuple[ExternalDependency, ...]:
        return tuple(w for (f, _), ws in self.waiting.items() if f == flow_id for w in ws)

    def snapshot_events(self, read: TreeRead) -> list[FlowEventValue]:
        """One snapshot event per flow of `read`: the watched flow, descendants, dependencies."""
        events = [
            FlowEventValue(
                flow.flow_id,
                flow.version,
                flow.status,
                flow.progress,
                snapshot=flow,
                relation="self" if flow.flow_id == self.flow_id else "descendant",
                parent_flow_id=flow.parent_flow_id or "" if flow.flow_id != self.flow_id else "",
            )
            for flow in read.flows
        ]
        events.extend(
            FlowEventValue(
                flow.flow_id,
                flow.version,
                flow.status,
                flow.progress,
                snapshot=flow,
                relation="dependency",
                waiting=self._waiting_on(flow.flow_id),
            )
            for flow in read.dependencies
            if flow.flow_id not in self.members
        )
        return events

    async def event_of(
        self, change: TenantChange, log: TenantLog, tenant: Tenant
    ) -> FlowEventValue | None:
        """The event `change` makes on the stream (None: not the tree's), growing the tree."""
        flow_id, entry = change.flow_id, change.entry
        if flow_id in self.members and change.position[0] < self.joined.get(flow_id, 0):
            return self._dependency_event(change)  # a linked flow's entry from before its link
        if flow_id not in self.members:
            parent_depth = self.members.get(change.parent_flow_id or "")
            if parent_depth is None or parent_depth >= self.depth or entry.flow_version > 1:
                # Not the tree's; or an entry of a flow linked later, read after its link: the
                # link's entry (below) makes it belong from there on.
                return self._dependency_event(change)
            # A new child's first entry, in its parent's transaction.
            self.members[flow_id] = parent_depth + 1
            joined = self.joined.get(change.parent_flow_id or "", 0)
            if joined:
                self.joined[flow_id] = joined
        linked = entry.metadata.get("child_flow_id") if entry.metadata.get("linked") else None
        if (
            isinstance(linked, str)
            and linked not in self.members
            and self.members[flow_id] < self.depth
        ):
            # The link of an existing flow (which writes no entry of its own): it and its
            # subtree belong from this transaction on.
            self.members[linked] = self.members[flow_id] + 1
            self.joined[linked] = change.position[0]
            await self._grow(log, tenant, linked)
        relation: Relation = "self" if flow_id == self.flow_id else "descendant"
        return FlowEventValue(
            flow_id,
            entry.flow_version,
            entry.status_after,
            entry.progress_after,
            change=entry,
            relation=relation,
            parent_flow_id=change.parent_flow_id or "" if relation == "descendant" else "",
            waiting=tuple(self.waiting.get((flow_id, entry.phase or ""), ())),
        )

    async def _grow(self, log: TenantLog, tenant: Tenant, flow_id: str) -> None:
        """Add the subtree below `flow_id` (a member) as it is now."""
        base = self.members[flow_id]
        read = await log.tree(
            tenant, flow_id, self.depth - base, dependencies=False, snapshot=False
        )
        self._add(read, base, self.joined.get(flow_id, 0))

    def _dependency_event(self, change: TenantChange) -> FlowEventValue | None:
        entry = change.entry
        if entry.phase is None or entry.to_state is None:
            return None
        waiting = self.waiting.get((change.flow_id, entry.phase))
        if not waiting:
            return None
        return FlowEventValue(
            change.flow_id,
            entry.flow_version,
            entry.status_after,
            entry.progress_after,
            change=entry,
            relation="dependency",
            waiting=tuple(waiting),
        )


def _matches(
    change: TenantChange,
    statuses: frozenset[FlowStatus],
    definition_name: str,
    flow_ids: frozenset[str],
    condition: Filter | None,
) -> bool:
    """Whether a change passes the WatchFlows filters (each ignored when empty)."""
    return (
        (not statuses or change.entry.status_after in statuses)
        and (not definition_name or change.definition_name == definition_name)
        and (not flow_ids or change.flow_id in flow_ids)
        and (condition is None or (change.facts is not None and matches(condition, change.facts)))
    )
