"""`watch` and `watch_flows` resume after failures without missing or repeating an event."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from recorded_errors import Recorded, recorded
from scripted_server import Bare, ScriptedServer, ScriptedServicer, Stream, flow_event

from flowstate.client import (
    AsyncFlowstateClient,
    FlowEvent,
    FlowEventKind,
    FlowNotFound,
    FlowstateClient,
    FlowstateError,
    FlowStatus,
    RetryPolicy,
    Unavailable,
    WatchRelation,
)
from flowstate.client._errors import InternalError
from flowstate.client._watch import is_resumable
from flowstate.v1 import errors_pb2, flow_service_pb2

COMPLETED = FlowStatus.COMPLETED.value
#: The errors a stream ends with, recorded from a real server (recorded_errors.py).
SHUTTING_DOWN = recorded("server_shutting_down")
TOO_SLOW = recorded("subscriber_too_slow")


def one(version: int, kind: str = "change", **kwargs: object) -> flow_service_pb2.WatchFlowResponse:
    return flow_service_pb2.WatchFlowResponse(event=flow_event(version, kind, **kwargs))  # type: ignore[arg-type]


def many(
    version: int, cursor: str, flow_id: str = "f-1", kind: str = "change"
) -> flow_service_pb2.WatchFlowsResponse:
    return flow_service_pb2.WatchFlowsResponse(
        event=flow_event(version, kind, flow_id=flow_id), cursor=cursor
    )


async def collect(events: object, limit: int = 100) -> list[FlowEvent]:
    collected: list[FlowEvent] = []
    async for event in events:  # type: ignore[attr-defined]
        collected.append(event)
        if len(collected) >= limit:
            break
    return collected


@pytest.mark.parametrize("failure", [SHUTTING_DOWN, TOO_SLOW], ids=["shutting-down", "too-slow"])
async def test_watch_resumes_after_the_last_version_without_duplicates(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, failure: Recorded, waits: list[float]
) -> None:
    servicer.add(
        "WatchFlow",
        Stream([one(3, "snapshot"), one(4), one(4, "heartbeat"), one(5)], then=failure),
        Stream([one(5), one(6), one(7, status=COMPLETED)]),
    )

    events = await collect(client.watch("f-1"))

    assert [(e.kind, e.flow_version) for e in events] == [
        (FlowEventKind.SNAPSHOT, 3),
        (FlowEventKind.CHANGE, 4),
        (FlowEventKind.CHANGE, 5),
        (FlowEventKind.CHANGE, 6),
        (FlowEventKind.CHANGE, 7),
    ]
    first, second = servicer.requests("WatchFlow")
    assert not first.HasField("after_version")
    assert second.after_version == 5
    assert events[0].snapshot is not None
    assert events[1].change is not None
    assert events[-1].status == FlowStatus.COMPLETED
    # SERVER_SHUTTING_DOWN asks for a second before reconnecting (its RetryInfo, recorded);
    # SUBSCRIBER_TOO_SLOW carries none: the watch policy's backoff.
    assert waits == ([1.0] if failure is SHUTTING_DOWN else [0.01])


async def test_watch_stops_after_the_terminal_event_without_waiting_for_the_server(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add("WatchFlow", Stream([one(2, "snapshot"), one(3, status=COMPLETED)], hang=True))

    events = await asyncio.wait_for(collect(client.watch("f-1")), timeout=5)

    assert [e.flow_version for e in events] == [2, 3]


async def test_watch_keep_open_continues_past_the_terminal_event(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add(
        "WatchFlow",
        Stream([one(3, status=COMPLETED)], then=SHUTTING_DOWN),
        Stream([one(3, "heartbeat")], hang=True),
    )

    events = await asyncio.wait_for(
        collect(client.watch("f-1", after_version=2, keep_open=True, include_heartbeats=True), 2),
        timeout=5,
    )

    assert [e.kind for e in events] == [FlowEventKind.CHANGE, FlowEventKind.HEARTBEAT]
    assert events[1].heartbeat_time is not None
    requests = servicer.requests("WatchFlow")
    assert [r.after_version for r in requests] == [2, 3]
    assert all(r.keep_open for r in requests)


async def test_watch_resumes_after_a_clean_end_before_the_terminal_event(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add(
        "WatchFlow",
        Stream([one(1, "snapshot")]),
        Stream([one(2, status=COMPLETED)]),
    )

    events = await collect(client.watch("f-1"))

    assert [e.flow_version for e in events] == [1, 2]


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN]
)
async def test_watch_resumes_a_stream_broken_without_a_status_from_the_server(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, code: grpc.StatusCode
) -> None:
    """As in the TypeScript and Go SDKs: e.g. gRPC's own `server.stop` cancels a stream."""
    servicer.add(
        "WatchFlow",
        Stream([one(1, "snapshot")], then=Bare(code, "gone")),
        Stream([one(2, status=COMPLETED)]),
    )

    events = await collect(client.watch("f-1"))

    assert [e.flow_version for e in events] == [1, 2]
    assert servicer.requests("WatchFlow")[1].after_version == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL])
def test_a_broken_stream_the_server_explained_is_not_resumed(code: grpc.StatusCode) -> None:
    """A CANCELLED or INTERNAL that carries the server's FlowError is the server's answer, not
    a broken connection. (No recorded error has these codes: the decision is tested on the
    decoded error; a recorded refusal ending a stream is raised over the wire below.)"""
    flow_error = errors_pb2.FlowError(error_code=errors_pb2.ERROR_CODE_INTERNAL)
    explained = InternalError("boom", grpc_code=code, flow_error=flow_error)
    assert not is_resumable(explained)
    assert is_resumable(InternalError("gone", grpc_code=code))


async def test_watch_raises_what_cannot_be_resumed(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add(
        "WatchFlow",
        Stream([one(1, "snapshot")], then=recorded("flow_not_found")),
    )

    seen: list[int] = []

    async def watch() -> None:
        async for event in client.watch("f-1"):
            seen.append(event.flow_version)

    with pytest.raises(FlowNotFound):
        await watch()
    assert seen == [1]
    assert len(servicer.requests("WatchFlow")) == 1


async def test_watch_gives_up_when_the_reconnect_deadline_runs_out(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("WatchFlow", *[Bare(grpc.StatusCode.UNAVAILABLE)] * 50)
    policy = RetryPolicy(
        max_attempts=None, initial_backoff=0.01, max_backoff=0.01, jitter=0, deadline=0.2
    )
    async with AsyncFlowstateClient(address=scripted.address, watch_retry=policy) as client:
        with pytest.raises(Unavailable):
            await collect(client.watch("f-1"))


async def test_a_streams_own_policy_and_reconnect_listener(
    servicer: ScriptedServicer, client: AsyncFlowstateClient, waits: list[float]
) -> None:
    """`retry` replaces the client's `watch_retry` for one stream; `on_reconnect` hears each
    reconnection: the error, the attempt and the delay (as the TypeScript and Go SDKs do)."""
    heard: list[tuple[type[FlowstateError], int, float]] = []

    def listener(error: FlowstateError, attempt: int, delay: float) -> None:
        heard.append((type(error), attempt, delay))

    servicer.add(
        "WatchFlow",
        Stream([one(1, "snapshot")], then=SHUTTING_DOWN),
        Stream([one(2)]),  # a clean end before the terminal event
        Stream([one(3, status=COMPLETED)]),
    )
    events = await collect(client.watch("f-1", on_reconnect=listener))
    assert [e.flow_version for e in events] == [1, 2, 3]
    # Each stream delivered an event before it ended: no opening failed in a row (attempt 0).
    assert [(cls.__name__, attempt) for cls, attempt, _ in heard] == [
        ("ServerShuttingDown", 0),
        ("Unavailable", 0),
    ]
    assert heard[0][2] == 1.0  # SERVER_SHUTTING_DOWN's recorded RetryInfo
    assert [delay for _, _, delay in heard] == waits

    servicer.add("WatchFlows", *[Bare(grpc.StatusCode.UNAVAILABLE)] * 5)
    once = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01, jitter=0)
    with pytest.raises(Unavailable):  # the client's watch_retry would go on for minutes
        await collect(client.watch_flows(retry=once, on_reconnect=listener))
    assert len(servicer.requests("WatchFlows")) == 2
    assert [(cls.__name__, attempt) for cls, attempt, _ in heard[2:]] == [("Unavailable", 1)]


async def test_watch_flows_resumes_from_the_last_cursor(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add(
        "WatchFlows",
        Stream(
            [
                many(3, "c1", "a", "snapshot"),
                many(5, "c2", "b", "snapshot"),
                many(4, "c3", "a"),
                many(0, "c3", "", "heartbeat"),
            ],
            then=SHUTTING_DOWN,
        ),
        # The server replays from c3; a repeat of a version already seen is dropped.
        Stream([many(4, "c3", "a"), many(6, "c4", "b")], hang=True),
    )

    events = await asyncio.wait_for(
        collect(client.watch_flows(statuses=["DISCOVERY"], definition_name="discovery"), 4),
        timeout=5,
    )

    assert [(e.flow_id, e.flow_version, e.cursor) for e in events] == [
        ("a", 3, "c1"),
        ("b", 5, "c2"),
        ("a", 4, "c3"),
        ("b", 6, "c4"),
    ]
    first, second = servicer.requests("WatchFlows")
    assert first.cursor == ""
    assert second.cursor == "c3"
    assert list(second.statuses) == [FlowStatus.DISCOVERY]
    assert second.definition_name == "discovery"


def node(
    version: int, cursor: str, flow_id: str, relation: int, kind: str = "change", **kwargs: object
) -> flow_service_pb2.WatchFlowResponse:
    return flow_service_pb2.WatchFlowResponse(
        event=flow_event(version, kind, flow_id=flow_id, **kwargs),  # type: ignore[arg-type]
        cursor=cursor,
        relation=relation,  # type: ignore[arg-type]
        parent_flow_id="p" if relation == WatchRelation.DESCENDANT else "",
    )


async def test_watch_of_a_tree_resumes_from_the_last_cursor_and_ends_after_a_clean_end(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    self_, child = WatchRelation.SELF, WatchRelation.DESCENDANT
    servicer.add(
        "WatchFlow",
        Stream(
            [node(1, "", "p", self_, "snapshot"), node(2, "c1", "k", child, "snapshot")],
            then=SHUTTING_DOWN,
        ),
        # Resumed from c1; a repeat of a version already seen is dropped. The parent's terminal
        # event, then its child's change of the same transaction, then a clean end: the end.
        Stream(
            [
                node(2, "c1", "k", child),
                node(3, "c2", "k", child),
                node(2, "c3", "p", self_, status=COMPLETED),
                node(4, "c4", "k", child, status=COMPLETED),
            ]
        ),
    )

    events = await asyncio.wait_for(collect(client.watch("p", children_depth=1)), timeout=5)

    assert [(e.flow_id, e.flow_version, e.cursor, e.relation) for e in events] == [
        ("p", 1, None, self_),
        ("k", 2, "c1", child),
        ("k", 3, "c2", child),
        ("p", 2, "c3", self_),
        ("k", 4, "c4", child),
    ]
    assert events[1].parent_flow_id == "p"
    first, second = servicer.requests("WatchFlow")
    assert (first.children_depth, first.cursor, first.HasField("after_version")) == (1, "", False)
    assert (second.children_depth, second.cursor) == (1, "c1")


async def test_watch_survives_a_server_restart_on_the_same_port(
    servicer: ScriptedServicer,
) -> None:
    """The first server dies mid-stream (no status at all); a new one starts on its port."""
    first = await ScriptedServer(servicer).start()
    port = first.port
    servicer.add("WatchFlow", Stream([one(1, "snapshot"), one(2)], hang=True))
    restarted_client = AsyncFlowstateClient(
        address=first.address,
        watch_retry=RetryPolicy(
            max_attempts=None, initial_backoff=0.05, max_backoff=0.2, jitter=0, deadline=20
        ),
    )
    seen: list[int] = []
    two_seen = asyncio.Event()

    async def watch() -> None:
        async for event in restarted_client.watch("f-1"):
            seen.append(event.flow_version)
            if len(seen) == 2:
                two_seen.set()

    task = asyncio.create_task(watch())
    await asyncio.wait_for(two_seen.wait(), timeout=5)
    await first.stop(None)

    second = ScriptedServer(servicer, port=port)
    servicer.add("WatchFlow", Stream([one(2), one(3, status=COMPLETED)]))
    await second.start()
    try:
        await asyncio.wait_for(task, timeout=15)
    finally:
        await second.stop(None)
        await restarted_client.close()

    assert seen == [1, 2, 3]
    assert servicer.requests("WatchFlow")[-1].after_version == 2


async def test_sync_watch_resumes_too(servicer: ScriptedServicer, scripted: ScriptedServer) -> None:
    servicer.add(
        "WatchFlow",
        Stream([one(1, "snapshot"), one(2)], then=SHUTTING_DOWN),
        Stream([one(2), one(3, status=COMPLETED)]),
    )
    policy = RetryPolicy(max_attempts=None, initial_backoff=0.01, jitter=0, deadline=5)
    waits: list[float] = []

    def run() -> list[int]:
        with FlowstateClient(address=scripted.address, watch_retry=policy) as client:
            client._pause = waits.append  # type: ignore[method-assign,assignment]  # not slept
            return [event.flow_version for event in client.watch("f-1")]

    assert await asyncio.to_thread(run) == [1, 2, 3]
    assert servicer.requests("WatchFlow")[1].after_version == 2
    assert waits == [1.0]  # SERVER_SHUTTING_DOWN's RetryInfo (recorded)


# --- close() ends open watches -----------------------------------------------------------------


async def test_close_ends_an_open_watch_in_another_task_without_cancelling_it(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("WatchFlow", Stream([one(1, "snapshot")], hang=True))
    client = AsyncFlowstateClient(address=scripted.address)
    seen: list[int] = []
    first = asyncio.Event()

    async def watch() -> str:
        async for event in client.watch("f-1"):
            seen.append(event.flow_version)
            first.set()
        return "ended"

    # In a TaskGroup: a CancelledError nobody asked for would tear the whole group down.
    async with asyncio.timeout(10), asyncio.TaskGroup() as group:
        watcher = group.create_task(watch())
        await first.wait()
        await client.close()

    assert watcher.result() == "ended"
    assert seen == [1]
    assert not watcher.cancelled()


async def test_close_ends_a_watch_that_waits_to_reconnect(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("WatchFlow", Stream([one(1, "snapshot")], then=SHUTTING_DOWN))
    slow = RetryPolicy(
        max_attempts=None, initial_backoff=60, max_backoff=60, jitter=0, deadline=600
    )
    client = AsyncFlowstateClient(address=scripted.address, watch_retry=slow)
    first = asyncio.Event()

    async def watch() -> list[int]:
        seen = []
        async for event in client.watch("f-1"):
            seen.append(event.flow_version)
            first.set()
        return seen

    async with asyncio.timeout(10):
        watcher = asyncio.create_task(watch())
        await first.wait()
        await client.close()
        assert await watcher == [1]
    assert len(servicer.requests("WatchFlow")) == 1


async def test_cancelling_the_watching_task_still_cancels_it(
    servicer: ScriptedServicer, client: AsyncFlowstateClient
) -> None:
    servicer.add("WatchFlow", Stream([one(1, "snapshot")], hang=True))
    first = asyncio.Event()

    async def watch() -> None:
        async for _ in client.watch("f-1"):
            first.set()

    watcher = asyncio.create_task(watch())
    async with asyncio.timeout(10):
        await first.wait()
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_sync_close_ends_a_watch_in_another_thread(
    servicer: ScriptedServicer, scripted: ScriptedServer
) -> None:
    servicer.add("WatchFlow", Stream([one(1, "snapshot")], hang=True))
    client = FlowstateClient(address=scripted.address)
    first = threading.Event()

    def watch() -> list[int]:
        seen = []
        for event in client.watch("f-1"):
            seen.append(event.flow_version)
            first.set()
        return seen

    async with asyncio.timeout(10):
        watcher = asyncio.ensure_future(asyncio.to_thread(watch))
        await asyncio.to_thread(first.wait, 10)
        client.close()
        assert await watcher == [1]


async def test_a_call_on_a_closed_client_is_cancelled_in_both_faces(
    scripted: ScriptedServer, servicer: ScriptedServicer
) -> None:
    """As in the TypeScript and Go SDKs: the SDK's own CANCELLED error, never sent."""
    async_client = AsyncFlowstateClient(address=scripted.address)
    await async_client.close()
    with pytest.raises(FlowstateError, match="the client is closed") as raised:
        await async_client.get_flow("f-1")
    assert raised.value.grpc_code == grpc.StatusCode.CANCELLED

    sync_client = FlowstateClient(address=scripted.address)
    sync_client.close()
    with pytest.raises(FlowstateError, match="the client is closed") as raised:
        sync_client.get_flow("f-1")
    assert raised.value.grpc_code == grpc.StatusCode.CANCELLED
    assert servicer.requests("GetFlow") == []
