"""The bare reference server: what grpc.aio alone costs, for the ratios in the bench report.

It serves four FlowStateService methods trivially, with no database, no auth and no core:

- ``ValidateTransition`` returns a constant response (the echo reference of ValidateTransition);
- ``GetFlow`` returns an in-memory flow;
- ``TransitionPhase`` toggles the in-memory flow's ``data_import`` phase, bumps its version and
  broadcasts the change to every open ``WatchFlow`` stream (the fan-out reference);
- ``WatchFlow`` sends a snapshot, then every broadcast event, from a bounded per-subscriber queue.

With ``--dsn`` it is instead the *grpc+raw* reference: ``TransitionPhase`` runs the raw limit's
transaction (`bench.raw.minimal_transition`) on the requested flow through an asyncpg pool as
large as Flowstate's default, and answers with the flow's new version, status and progress;
``GetFlow`` runs the raw primary-key SELECT and answers with the row's version, status, progress
and phase states. That is the "minimal grpc.aio handler running the raw transaction" of issue 8:
what gRPC plus the bare statements cost in one Python process, with nothing of Flowstate's own.

It speaks the real API so the same load generator drives it and the real server alike, and it
is served the same way as ``flowstate serve`` (one process, one event loop, the same grpc
server options; see `bench._serverconf`). Run as ``python -m bench.ref_server --port 0``; it
prints ``PORT <n>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio

from bench import _serverconf, raw
from flowstate.server.config import ServerSettings
from flowstate.v1 import flow_pb2, flow_service_pb2, history_pb2, states_pb2

SERVICE = "flowstate.v1.FlowStateService"
PHASES = (
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
)
QUEUE_BOUND = 1024
"""Per-subscriber queue bound, as a real server must have one (DESIGN.md section 5)."""

POOL_SIZE = ServerSettings().db_pool_size
"""The grpc+raw reference's pool: as large as Flowstate's by default."""
_IN_PROGRESS = states_pb2.PHASE_STATE_IN_PROGRESS
_WAITING_APPROVAL = states_pb2.PHASE_STATE_WAITING_APPROVAL


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class Reference:
    """In-memory state of the reference server: one flow and its subscribers."""

    def __init__(self) -> None:
        now = _now()
        self.flow = flow_pb2.Flow(
            flow_id="00000000-0000-4000-8000-000000000001",
            client_account_id="bench",
            engagement_id="bench",
            definition_name="discovery",
            definition_version=1,
            status=states_pb2.FLOW_STATUS_DATA_GATHERING,
            progress=6.0,
            version=2,
            create_time=now,
            update_time=now,
        )
        for name in PHASES:
            phase = self.flow.phases.add(name=name, weight=20, max_retries=3)
            phase.state = states_pb2.PHASE_STATE_NOT_STARTED
        self.flow.phases[0].state = _IN_PROGRESS
        self.flow.phases[0].state_enter_time.CopyFrom(now)
        self.subscribers: set[asyncio.Queue[flow_service_pb2.WatchFlowResponse]] = set()
        self.validate_response = flow_service_pb2.ValidateTransitionResponse(
            allowed=True,
            valid_transitions=[
                states_pb2.PHASE_STATE_WAITING_VALIDATION,
                states_pb2.PHASE_STATE_WAITING_APPROVAL,
                states_pb2.PHASE_STATE_COMPLETED,
                states_pb2.PHASE_STATE_FAILED,
                states_pb2.PHASE_STATE_RETRY_NEEDED,
            ],
        )

    async def validate_transition(
        self,
        request: flow_service_pb2.ValidateTransitionRequest,
        context: aio.ServicerContext[
            flow_service_pb2.ValidateTransitionRequest, flow_service_pb2.ValidateTransitionResponse
        ],
    ) -> flow_service_pb2.ValidateTransitionResponse:
        """The echo: a constant answer."""
        return self.validate_response

    async def get_flow(
        self,
        request: flow_service_pb2.GetFlowRequest,
        context: aio.ServicerContext[
            flow_service_pb2.GetFlowRequest, flow_service_pb2.GetFlowResponse
        ],
    ) -> flow_service_pb2.GetFlowResponse:
        """The in-memory flow, whatever id is asked for."""
        return flow_service_pb2.GetFlowResponse(flow=self.flow)

    async def transition_phase(
        self,
        request: flow_service_pb2.TransitionPhaseRequest,
        context: aio.ServicerContext[
            flow_service_pb2.TransitionPhaseRequest, flow_service_pb2.TransitionPhaseResponse
        ],
    ) -> flow_service_pb2.TransitionPhaseResponse:
        """Toggle data_import, then broadcast the change to every subscriber."""
        phase = self.flow.phases[0]
        before = phase.state
        after = _WAITING_APPROVAL if before == _IN_PROGRESS else _IN_PROGRESS
        now = _now()
        phase.state = after
        phase.state_enter_time.CopyFrom(now)
        self.flow.version += 1
        self.flow.update_time.CopyFrom(now)
        entry = history_pb2.HistoryEntry(
            flow_id=self.flow.flow_id,
            flow_version=self.flow.version,
            kind=history_pb2.HISTORY_EVENT_KIND_TRANSITION,
            phase=phase.name,
            from_state=before,
            to_state=after,
            status_before=self.flow.status,
            status_after=self.flow.status,
            reason=request.reason,
            user_id="bench",
            request_id=request.request_id,
            occur_time=now,
            time_in_state=duration_pb2.Duration(nanos=1000),
            progress_after=self.flow.progress,
        )
        event = flow_service_pb2.WatchFlowResponse(
            event=flow_service_pb2.FlowEvent(
                flow_id=self.flow.flow_id,
                flow_version=self.flow.version,
                status=self.flow.status,
                progress=self.flow.progress,
                change=entry,
            )
        )
        for queue in self.subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)
        return flow_service_pb2.TransitionPhaseResponse(flow=self.flow, history_entries=[entry])

    async def watch_flow(
        self,
        request: flow_service_pb2.WatchFlowRequest,
        context: aio.ServicerContext[
            flow_service_pb2.WatchFlowRequest, flow_service_pb2.WatchFlowResponse
        ],
    ) -> AsyncIterator[flow_service_pb2.WatchFlowResponse]:
        """A snapshot, then every broadcast event."""
        queue: asyncio.Queue[flow_service_pb2.WatchFlowResponse] = asyncio.Queue(QUEUE_BOUND)
        self.subscribers.add(queue)
        try:
            yield flow_service_pb2.WatchFlowResponse(
                event=flow_service_pb2.FlowEvent(
                    flow_id=self.flow.flow_id,
                    flow_version=self.flow.version,
                    status=self.flow.status,
                    progress=self.flow.progress,
                    snapshot=self.flow,
                )
            )
            while True:
                yield await queue.get()
        finally:
            self.subscribers.discard(queue)

    def handler(self) -> grpc.GenericRpcHandler:
        """The four methods as a generic handler (the generated servicer base is abstract)."""
        return _handler(
            ValidateTransition=self.validate_transition,
            GetFlow=self.get_flow,
            TransitionPhase=self.transition_phase,
            WatchFlow=self.watch_flow,
        )


def _handler(**methods: Callable[..., Any]) -> grpc.GenericRpcHandler:
    """FlowStateService methods by name, (de)serialised as the service descriptor says."""
    service = flow_service_pb2.DESCRIPTOR.services_by_name["FlowStateService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for name, method in methods.items():
        descriptor = service.methods_by_name[name]
        request = getattr(flow_service_pb2, descriptor.input_type.name)
        response = getattr(flow_service_pb2, descriptor.output_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if descriptor.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[name] = make(
            method,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _status(value: str) -> states_pb2.FlowStatus.ValueType:
    return states_pb2.FlowStatus.Value(f"FLOW_STATUS_{value.upper()}")


class GrpcRaw:
    """The grpc+raw reference: the raw statements behind minimal handlers."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def transition_phase(
        self,
        request: flow_service_pb2.TransitionPhaseRequest,
        context: aio.ServicerContext[
            flow_service_pb2.TransitionPhaseRequest, flow_service_pb2.TransitionPhaseResponse
        ],
    ) -> flow_service_pb2.TransitionPhaseResponse:
        """Toggle the flow's data_import in the database; the new version, status, progress."""
        async with self.pool.acquire() as conn:
            d = await raw.minimal_transition(conn, request.flow_id, request.request_id)
        return flow_service_pb2.TransitionPhaseResponse(
            flow=flow_pb2.Flow(
                flow_id=request.flow_id,
                version=d["version"],
                status=_status(d["status"]),
                progress=d["progress"],
            )
        )

    async def get_flow(
        self,
        request: flow_service_pb2.GetFlowRequest,
        context: aio.ServicerContext[
            flow_service_pb2.GetFlowRequest, flow_service_pb2.GetFlowResponse
        ],
    ) -> flow_service_pb2.GetFlowResponse:
        """The raw primary-key SELECT; the row's version, status, progress and phase states."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(raw.SELECT_FLOW, request.flow_id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such flow")
        flow = flow_pb2.Flow(
            flow_id=request.flow_id,
            version=row["version"],
            status=_status(row["status"]),
            progress=row["progress"],
        )
        for name, state in row["phase_states"].items():
            flow.phases.add(
                name=name, state=states_pb2.PhaseState.Value(f"PHASE_STATE_{state.upper()}")
            )
        return flow_service_pb2.GetFlowResponse(flow=flow)

    def handler(self) -> grpc.GenericRpcHandler:
        """TransitionPhase and GetFlow."""
        return _handler(GetFlow=self.get_flow, TransitionPhase=self.transition_phase)


async def serve(port: int, dsn: str | None) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    server = aio.server(options=_serverconf.server_options())
    pool: asyncpg.Pool | None = None
    if dsn is None:
        server.add_generic_rpc_handlers((Reference().handler(),))
    else:
        pool = await asyncpg.create_pool(
            dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, init=raw.install_json_codecs
        )
        server.add_generic_rpc_handlers((GrpcRaw(pool).handler(),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)
    if pool is not None:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument(
        "--dsn", help="serve the grpc+raw reference (TransitionPhase only) on this database"
    )
    args = parser.parse_args(argv)
    _serverconf.run(serve(args.port, args.dsn))


if __name__ == "__main__":
    main(sys.argv[1:])
