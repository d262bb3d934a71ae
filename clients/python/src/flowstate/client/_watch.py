"""Bookkeeping of resumable status streams, shared by the async and the sync client.

A stream is resumed after UNAVAILABLE (a dropped connection, a restarting server, a server
shutting down), after SUBSCRIBER_TOO_SLOW, and after a call that broke without any status from
the server (CANCELLED and the like, e.g. from gRPC's own stop) by opening it again from the last
position seen: ``after_version`` = the last flow version for `watch`, the last cursor for
`watch_flows` and for `watch` with ``children_depth`` / ``include_dependencies``. The server
replays what happened in between from history, so nothing is missed; events at or below a
version already delivered are dropped here, so nothing is delivered twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeAlias, TypeVar

import grpc
from google.rpc import error_details_pb2

from flowstate.client import _requests
from flowstate.client._enums import ErrorCode, FlowEventKind, FlowStatus
from flowstate.client._errors import ERROR_DOMAIN, FlowstateError
from flowstate.client._models import FlowEvent
from flowstate.v1 import flow_service_pb2

__all__ = ["FlowWatch", "FlowsWatch", "ReconnectListener", "TreeWatch", "is_resumable"]

ReconnectListener: TypeAlias = Callable[[FlowstateError, int, float], None]
"""Called before each reconnection of a stream (`watch`/`watch_flows` ``on_reconnect``) with the
error that ended it, the attempt (how many openings in a row failed without delivering an
event: 0 when the stream had delivered events) and the delay in seconds before it opens again."""

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


_BROKEN_WITHOUT_STATUS = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
"""Codes a stream ends with when its connection or the server process goes away mid-call
(gRPC's own `server.stop` cancels the calls it still holds): resumable when the server sent no
error details, as in the TypeScript and Go SDKs."""


def is_resumable(error: FlowstateError) -> bool:
    """Whether a stream that ended with `error` should be opened again from its position.

    Yes after UNAVAILABLE (including SERVER_SHUTTING_DOWN) and SUBSCRIBER_TOO_SLOW, and after a
    call that broke without any status from the server (no rich status). The caller's own
    cancellation never gets here: it surfaces as `asyncio.CancelledError` or a closed client.
    """
    if (
        error.grpc_code == grpc.StatusCode.UNAVAILABLE
        or error.code == ErrorCode.SUBSCRIBER_TOO_SLOW
    ):
        return True
    return error.grpc_code in _BROKEN_WITHOUT_STATUS and not _from_server(error)


def _from_server(error: FlowstateError) -> bool:
    """Whether the server produced the status: it carries a FlowError or a Flowstate ErrorInfo."""
    if error.flow_error is not None:
        return True
    for detail in error.status.details if error.status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain in ("", ERROR_DOMAIN):
            return True
    return False


class _Position(Generic[_Request, _Response]):
    """Where a resumable stream stands, the one place its rules live: the cursor to reopen it
    from, each flow's last version delivered (a replayed one is dropped), whether the current
    connection delivered anything, and whether the watched flow's terminal event came.

    The streams differ only in the request they send, how a response becomes an event, which
    flow a version belongs to, and which event is the watched flow's terminal one.
    """

    def __init__(self, *, cursor: str | None, include_heartbeats: bool, keep_open: bool) -> None:
        self.cursor = cursor
        self.include_heartbeats = include_heartbeats
        self.keep_open = keep_open
        self.versions: dict[str, int] = {}
        self.terminal_seen = False
        self.received = False

    def request(self) -> _Request:
        """The request that opens (or reopens) the stream at the current position."""
        self.received = False
        return self._request()

    def accept(self, response: _Response) -> FlowEvent | None:
        """The event to deliver for `response`, or None to drop it (a duplicate, a heartbeat)."""
        self.received = True
        event = self._event(response)
        if event.cursor:
            self.cursor = event.cursor
        if event.kind == FlowEventKind.HEARTBEAT:
            return event if self.include_heartbeats else None
        key = self._version_key(event)
        last = self.versions.get(key)
        if last is not None and event.flow_version <= last:
            return None
        self.versions[key] = event.flow_version
        if self._ends_watch(event):
            self.terminal_seen = True
        return event

    @property
    def done(self) -> bool:
        """Whether the iteration is over without waiting for the stream's end."""
        return False

    def ended_for_good(self) -> bool:
        """After a stream ended without error: True if there is nothing more to wait for.

        A stream that ends cleanly after delivering events (and before the watched flow's
        terminal event) is resumed; one that ends without sending anything means the server
        has nothing more to send.
        """
        return (self.terminal_seen and not self.keep_open) or not self.received

    def _request(self) -> _Request:
        raise NotImplementedError

    def _event(self, response: _Response) -> FlowEvent:
        raise NotImplementedError

    def _version_key(self, event: FlowEvent) -> str:
        """The flow whose last version `event` advances."""
        return event.flow_id

    def _ends_watch(self, event: FlowEvent) -> bool:
        """Whether `event` (new, not a heartbeat) is the watched flow's terminal event."""
        return False


class FlowWatch(_Position[flow_service_pb2.WatchFlowRequest, flow_service_pb2.WatchFlowResponse]):
    """The position of one `watch` stream: the last version delivered."""

    def __init__(
        self,
        flow_id: str,
        *,
        after_version: int | None,
        keep_open: bool,
        include_heartbeats: bool,
        cursor: str | None = None,
    ) -> None:
        """Start after `after_version` (None: with a snapshot of the current flow).

        `cursor` is sent as is (the server refuses it on a plain stream: one place decides)."""
        super().__init__(cursor=cursor, include_heartbeats=include_heartbeats, keep_open=keep_open)
        self.flow_id = flow_id
        if after_version is not None:
            self.versions[flow_id] = after_version

    @property
    def last_version(self) -> int | None:
        """The last version delivered (or the one to start after)."""
        return self.versions.get(self.flow_id)

    @property
    def done(self) -> bool:
        """Whether the iteration is over: the terminal event was delivered (without keep_open)."""
        return self.terminal_seen and not self.keep_open

    def _request(self) -> flow_service_pb2.WatchFlowRequest:
        return _requests.watch_flow(
            self.flow_id,
            after_version=self.last_version,
            keep_open=self.keep_open,
            cursor=self.cursor,
        )

    def _event(self, response: flow_service_pb2.WatchFlowResponse) -> FlowEvent:
        # Without the response's cursor: a plain stream resumes by version alone.
        return FlowEvent._from_proto(response.event)

    def _version_key(self, event: FlowEvent) -> str:
        return self.flow_id  # one flow: the watched one, however its id was spelt

    def _ends_watch(self, event: FlowEvent) -> bool:
        return FlowStatus(event.status).is_terminal


class FlowsWatch(
    _Position[flow_service_pb2.WatchFlowsRequest, flow_service_pb2.WatchFlowsResponse]
):
    """The position of one `watch_flows` stream: the last cursor and each flow's last version.

    It never ends by itself (no watched flow, so no terminal event)."""

    def __init__(
        self,
        *,
        statuses: tuple[_requests.EnumLike, ...],
        definition_name: str | None,
        flow_ids: tuple[str, ...],
        cursor: str | None,
        include_heartbeats: bool,
        filter: str = "",
    ) -> None:
        """Start after `cursor` (None: with a snapshot of every matching flow)."""
        super().__init__(cursor=cursor, include_heartbeats=include_heartbeats, keep_open=True)
        self.filter = filter
        self.statuses = statuses
        self.definition_name = definition_name
        self.flow_ids = flow_ids

    def _request(self) -> flow_service_pb2.WatchFlowsRequest:
        return _requests.watch_flows(
            statuses=self.statuses,
            definition_name=self.definition_name,
            flow_ids=self.flow_ids,
            cursor=self.cursor,
            filter=self.filter,
        )

    def _event(self, response: flow_service_pb2.WatchFlowsResponse) -> FlowEvent:
        return FlowEvent._from_proto(response.event, cursor=response.cursor)


class TreeWatch(_Position[flow_service_pb2.WatchFlowRequest, flow_service_pb2.WatchFlowResponse]):
    """The position of a `watch` stream with children or dependencies: the last cursor, and
    each flow's last version (the stream carries several flows).

    The server ends the stream after the watched flow's terminal transaction (its children's
    changes in it included): the iteration ends with the stream, not at the event (`done` stays
    False)."""

    def __init__(
        self,
        flow_id: str,
        *,
        children_depth: int,
        include_dependencies: bool,
        cursor: str | None,
        keep_open: bool,
        include_heartbeats: bool,
        after_version: int | None = None,
    ) -> None:
        """Start after `cursor` (None: with a snapshot of the tree).

        `after_version` is sent as is on the first request (the server refuses it here)."""
        super().__init__(cursor=cursor, include_heartbeats=include_heartbeats, keep_open=keep_open)
        self.after_version = after_version
        self.flow_id = flow_id
        self.children_depth = children_depth
        self.include_dependencies = include_dependencies

    def _request(self) -> flow_service_pb2.WatchFlowRequest:
        return _requests.watch_flow(
            self.flow_id,
            after_version=self.after_version,
            keep_open=self.keep_open,
            children_depth=self.children_depth,
            include_dependencies=self.include_dependencies,
            cursor=self.cursor,
        )

    def _event(self, response: flow_service_pb2.WatchFlowResponse) -> FlowEvent:
        return FlowEvent._from_watch(response)

    def _ends_watch(self, event: FlowEvent) -> bool:
        return event.flow_id == self.flow_id and FlowStatus(event.status).is_terminal
