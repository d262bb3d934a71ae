"""`FlowStateServicer`: the FlowStateService RPCs, a few lines each.

Every RPC reads the same way: validate and convert the request (`flowstate.server.validation`),
call the store (which owns the transaction and runs the core) or the pure core, convert the
response (`flowstate.server.convert`). Authentication, scopes, error mapping, logging and
metrics happen once, in the `flowstate.server.rpc` wrapper around each method.

Decisions a reader should know:

- The tenant always comes from the token (`Call.tenant`), never from the request.
- `ValidateTransition` without a flow id is pure: built-in definitions are in memory, so it
  never touches the database (custom definitions are read once through the store's cache).
  With a flow id it reads the flow and dry-runs the matching core command; it never writes.
- `GetRecoveryOptions` pins each option's request to the flow's current version
  (`expected_version`), so an option executed after the flow changed fails with ABORTED
  instead of doing something the options did not describe.
- `Retry` with `force` needs flows:admin (PERMISSION_DENIED otherwise), checked before the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Protocol, TypeVar

from flowstate.core.commands import (
    CancelFlow,
    Command,
    PauseFlow,
    ResumeFlow,
    TransitionPhase,
    apply_command,
    validate_command,
    validate_flow_status_transition,
    validate_phase_transition,
)
from flowstate.core.definitions import BUILTIN_DEFINITIONS, FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import (
    ErrorCode,
    Flow,
    FlowStatus,
    HistoryEntry,
    PhaseError,
    PhaseState,
    Tenant,
)
from flowstate.core.recovery import get_recovery_options
from flowstate.core.rules import DONE_STATES, ERROR_STATES
from flowstate.server import definitions, validation
from flowstate.server.auth import Scope
from flowstate.server.convert import (
    FLOW_STATUS_TO_PROTO,
    FLOW_TARGETS,
    DefinitionView,
    entries_to_proto,
    entry_to_proto,
    phase_targets_proto,
    recovery_option_to_proto,
    set_timestamp,
)
from flowstate.server.errors import flow_error_to_proto
from flowstate.server.rpc import Call, RpcSupport, stream, unary
from flowstate.storage.store import FlowQuery, FlowStore, MutationResult
from flowstate.v1 import flow_pb2, flow_service_pb2_grpc
from flowstate.v1 import flow_service_pb2 as pb

__all__ = ["EventSource", "EventValue", "FlowStateServicer"]


class EventValue(Protocol):
    """One domain event of a status stream (`flowstate.server.watch.FlowEventValue`)."""

    @property
    def flow_id(self) -> str: ...
    @property
    def flow_version(self) -> int: ...
    @property
    def status(self) -> FlowStatus: ...
    @property
    def progress(self) -> float: ...
    @property
    def snapshot(self) -> Flow | None: ...
    @property
    def change(self) -> HistoryEntry | None: ...
    @property
    def heartbeat_at(self) -> datetime | None: ...
    @property
    def cursor(self) -> str: ...


class EventSource(Protocol):
    """What the servicer needs from the watch hub (`flowstate.server.watch.WatchHub`)."""

    def watch_flow(
        self, tenant: Tenant, flow_id: str, *, after_version: int | None, keep_open: bool
    ) -> AsyncIterator[EventValue]:
        """Events of one flow (FlowStateError FLOW_NOT_FOUND, SERVER_SHUTTING_DOWN...)."""
        ...

    def watch_flows(
        self,
        tenant: Tenant,
        *,
        statuses: frozenset[FlowStatus],
        definition_name: str,
        flow_ids: frozenset[str],
        cursor: str,
    ) -> AsyncIterator[EventValue]:
        """Events of the tenant's matching flows, each with its resume cursor."""
        ...


_MutationResponse = TypeVar(
    "_MutationResponse",
    pb.CreateFlowResponse,
    pb.TransitionPhaseResponse,
    pb.UpdatePhaseProgressResponse,
    pb.RollbackResponse,
    pb.RetryResponse,
    pb.PauseFlowResponse,
    pb.ResumeFlowResponse,
    pb.CancelFlowResponse,
    pb.SkipPhaseResponse,
)

# A dry run of a transition into FAILED/RETRY_NEEDED needs a failure report; its content
# does not change the answer (the retry gate reads the error the phase already carries).
_DRY_RUN_FAILURE = PhaseError(ErrorCode.PHASE_EXECUTION_FAILED, "ValidateTransition dry run")

# Change events converted once and shared by every stream that delivers them (see
# `FlowStateServicer._change_event`); cleared when full, like a window of recent changes.
_SHARED_CHANGES_MAX = 4096


def _phase_refusal(definition: FlowDefinition, phase: str) -> FlowStateError | None:
    """INVALID_PHASE when `definition` has no phase `phase`."""
    if definition.has_phase(phase):
        return None
    try:
        definition.phase(phase)  # raises the core's INVALID_PHASE, with the valid phases
    except FlowStateError as refusal:
        return refusal
    return None  # pragma: no cover - has_phase said it does not exist


class FlowStateServicer(flow_service_pb2_grpc.FlowStateServiceServicer):
    """The FlowStateService implementation over a `FlowStore`."""

    def __init__(
        self, store: FlowStore, support: RpcSupport, hub: EventSource | None = None
    ) -> None:
        """Serve `store` (and streams from `hub`; UNIMPLEMENTED without one).

        `support` holds the authenticator and metrics the `rpc` wrapper uses.
        """
        self._store = store
        self._support = support
        self._hub = hub
        self._definitions = definitions.DefinitionViews()
        # (tenant, flow id, version) -> (the hub's entry, its FlowEvent, its WatchFlowResponse)
        self._changes: dict[
            tuple[Tenant, str, int], tuple[HistoryEntry, pb.FlowEvent, pb.WatchFlowResponse]
        ] = {}

    @property
    def rpc_support(self) -> RpcSupport:
        """The authenticator and metrics of the `rpc` wrapper."""
        return self._support

    # --- helpers --------------------------------------------------------------------------------

    def _view(self, definition: FlowDefinition) -> DefinitionView:
        return self._definitions.view(definition)

    async def _definition_of(self, flow: Flow) -> FlowDefinition:
        """The definition `flow` follows, in its tenant's view (definitions never change)."""
        key = (flow.tenant, flow.definition_name, flow.definition_version)
        definition = self._definitions.resolved(*key)
        if definition is None:
            definition = await self._store.get_definition(
                flow.definition_name, flow.definition_version, tenant=flow.tenant
            )
            self._definitions.remember(flow.tenant, definition)
        return definition

    async def _flow_message(self, flow: Flow) -> flow_pb2.Flow:
        return self._view(await self._definition_of(flow)).flow_to_proto(flow)

    async def _fill_flow(self, target: flow_pb2.Flow, flow: Flow) -> None:
        """Fill a message's Flow field in place (no separate message copied in)."""
        self._view(await self._definition_of(flow)).fill_flow(target, flow)

    async def _respond(
        self, result: MutationResult, response_type: type[_MutationResponse]
    ) -> _MutationResponse:
        if not result.replayed:
            self._support.metrics.record_entries(result.entries)
        response = response_type(
            history_entries=entries_to_proto(result.flow.flow_id, result.entries)
        )
        await self._fill_flow(response.flow, result.flow)
        return response

    async def _mutate(
        self, mutation: validation.Mutation, call: Call, response_type: type[_MutationResponse]
    ) -> _MutationResponse:
        result = await self._store.mutate(
            call.tenant,
            mutation.flow_id,
            mutation.command,
            call.context(mutation.request_id),
            expected_version=mutation.expected_version,
        )
        return await self._respond(result, response_type)

    # --- flows ----------------------------------------------------------------------------------

    @unary(Scope.WRITE)
    async def CreateFlow(  # noqa: N802 - the proto's method name
        self, request: pb.CreateFlowRequest, call: Call
    ) -> pb.CreateFlowResponse:
        """Create a flow of a definition at a version (the latest when 0), in the tenant's view."""
        args = validation.create_flow(request)
        result = await self._store.create_flow(
            call.tenant,
            definition_name=args.definition_name,
            definition_version=args.definition_version or None,
            ctx=call.context(args.request_id),
            display_name=args.display_name,
            labels=args.labels,
            flow_id=args.flow_id,
        )
        return await self._respond(result, pb.CreateFlowResponse)

    @unary(Scope.READ)
    async def GetFlow(  # noqa: N802 - the proto's method name
        self, request: pb.GetFlowRequest, call: Call
    ) -> pb.GetFlowResponse:
        """Return one flow of the caller's tenant."""
        flow = await self._store.get_flow(call.tenant, validation.flow_id(request.flow_id))
        response = pb.GetFlowResponse()
        await self._fill_flow(response.flow, flow)
        return response

    @unary(Scope.READ)
    async def ListFlows(  # noqa: N802 - the proto's method name
        self, request: pb.ListFlowsRequest, call: Call
    ) -> pb.ListFlowsResponse:
        """List the caller's flows matching the filters, one page."""
        args = validation.list_flows(request)
        page = await self._store.list_flows(
            call.tenant,
            FlowQuery(
                statuses=frozenset(args.statuses),
                phase_states={k: frozenset(v) for k, v in args.phase_states.items()},
                updated_before=args.updated_before,
                definition_name=args.definition_name,
                page_size=args.page_size,
                page_token=args.page_token,
            ),
        )
        return pb.ListFlowsResponse(
            flows=[await self._flow_message(flow) for flow in page.flows],
            next_page_token=page.next_page_token,
        )

    @unary(Scope.READ)
    async def ListFlowHistory(  # noqa: N802 - the proto's method name
        self, request: pb.ListFlowHistoryRequest, call: Call
    ) -> pb.ListFlowHistoryResponse:
        """List a flow's history entries in version order, one page."""
        args = validation.list_flow_history(request)
        page = await self._store.list_history(
            call.tenant,
            args.flow_id,
            after_version=args.after_version,
            page_size=args.page_size,
            page_token=args.page_token,
        )
        return pb.ListFlowHistoryResponse(
            history_entries=entries_to_proto(args.flow_id, page.entries),
            next_page_token=page.next_page_token,
        )

    @unary(Scope.READ)
    async def GetFlowDefinition(  # noqa: N802 - the proto's method name
        self, request: pb.GetFlowDefinitionRequest, call: Call
    ) -> pb.GetFlowDefinitionResponse:
        """Return a definition of the tenant or a built-in (the latest version when 0)."""
        name, version = validation.get_flow_definition(request)
        stored = await self._store.get_stored_definition(name, version or None, tenant=call.tenant)
        return pb.GetFlowDefinitionResponse(
            definition=definitions.stored_to_proto(stored, self._view)
        )

    @unary(Scope.DEFINITIONS_WRITE)
    async def CreateFlowDefinition(  # noqa: N802 - the proto's method name
        self, request: pb.CreateFlowDefinitionRequest, call: Call
    ) -> pb.CreateFlowDefinitionResponse:
        """Register a definition for the caller's tenant (flowstate.storage.definitions_repo)."""
        args = definitions.create_flow_definition(request)
        stored, created = await self._store.register_definition(
            call.tenant,
            args.document,
            call.context(args.request_id),
            allow_shadow_builtin=args.allow_shadow_builtin,
            validate_only=args.validate_only,
        )
        return pb.CreateFlowDefinitionResponse(
            definition=definitions.stored_to_proto(stored, self._view), created=created
        )

    @unary(Scope.READ)
    async def ListFlowDefinitions(  # noqa: N802 - the proto's method name
        self, request: pb.ListFlowDefinitionsRequest, call: Call
    ) -> pb.ListFlowDefinitionsResponse:
        """The tenant's and the built-in definitions, one page."""
        args = definitions.list_flow_definitions(request)
        page = await self._store.list_definitions(
            call.tenant, name=args.name, page_size=args.page_size, page_token=args.page_token
        )
        return pb.ListFlowDefinitionsResponse(
            definitions=[definitions.stored_to_proto(s, self._view) for s in page.definitions],
            next_page_token=page.next_page_token,
        )

    @unary(Scope.READ)
    async def GetRecoveryOptions(  # noqa: N802 - the proto's method name
        self, request: pb.GetRecoveryOptionsRequest, call: Call
    ) -> pb.GetRecoveryOptionsResponse:
        """The ranked recovery options of a flow, each with its ready-to-send request."""
        flow = await self._store.get_flow(call.tenant, validation.flow_id(request.flow_id))
        definition = await self._definition_of(flow)
        options = get_recovery_options(flow, definition)
        response = pb.GetRecoveryOptionsResponse(
            options=[recovery_option_to_proto(flow, option) for option in options],
        )
        self._view(definition).fill_flow(response.flow, flow)
        return response

    # --- mutations ------------------------------------------------------------------------------

    @unary(Scope.WRITE)
    async def TransitionPhase(  # noqa: N802 - the proto's method name
        self, request: pb.TransitionPhaseRequest, call: Call
    ) -> pb.TransitionPhaseResponse:
        """Move a phase to a target state."""
        return await self._mutate(
            validation.transition_phase(request), call, pb.TransitionPhaseResponse
        )

    @unary(Scope.WRITE)
    async def SkipPhase(  # noqa: N802 - the proto's method name
        self, request: pb.SkipPhaseRequest, call: Call
    ) -> pb.SkipPhaseResponse:
        """Skip an optional phase (the checks of TransitionPhase to SKIPPED)."""
        return await self._mutate(definitions.skip_phase(request), call, pb.SkipPhaseResponse)

    @unary(Scope.WRITE)
    async def UpdatePhaseProgress(  # noqa: N802 - the proto's method name
        self, request: pb.UpdatePhaseProgressRequest, call: Call
    ) -> pb.UpdatePhaseProgressResponse:
        """Report in-phase progress of a running phase."""
        return await self._mutate(
            validation.update_phase_progress(request), call, pb.UpdatePhaseProgressResponse
        )

    @unary(Scope.WRITE)
    async def Rollback(  # noqa: N802 - the proto's method name
        self, request: pb.RollbackRequest, call: Call
    ) -> pb.RollbackResponse:
        """Roll a phase back (cascading by default)."""
        return await self._mutate(validation.rollback(request), call, pb.RollbackResponse)

    @unary(Scope.WRITE)
    async def Retry(  # noqa: N802 - the proto's method name
        self, request: pb.RetryRequest, call: Call
    ) -> pb.RetryResponse:
        """Retry a failed phase; `force` needs flows:admin."""
        mutation = validation.retry(request)
        if request.force:
            call.principal.require(Scope.ADMIN)
        return await self._mutate(mutation, call, pb.RetryResponse)

    @unary(Scope.WRITE)
    async def PauseFlow(  # noqa: N802 - the proto's method name
        self, request: pb.PauseFlowRequest, call: Call
    ) -> pb.PauseFlowResponse:
        """Pause a flow."""
        return await self._mutate(validation.pause_flow(request), call, pb.PauseFlowResponse)

    @unary(Scope.WRITE)
    async def ResumeFlow(  # noqa: N802 - the proto's method name
        self, request: pb.ResumeFlowRequest, call: Call
    ) -> pb.ResumeFlowResponse:
        """Resume a paused flow."""
        return await self._mutate(validation.resume_flow(request), call, pb.ResumeFlowResponse)

    @unary(Scope.WRITE)
    async def CancelFlow(  # noqa: N802 - the proto's method name
        self, request: pb.CancelFlowRequest, call: Call
    ) -> pb.CancelFlowResponse:
        """Cancel a flow (terminal)."""
        return await self._mutate(validation.cancel_flow(request), call, pb.CancelFlowResponse)

    # --- ValidateTransition ---------------------------------------------------------------------

    @unary(Scope.READ)
    async def ValidateTransition(  # noqa: N802 - the proto's method name
        self, request: pb.ValidateTransitionRequest, call: Call
    ) -> pb.ValidateTransitionResponse:
        """Answer whether a phase or flow transition is legal, and why not; never writes."""
        check = validation.validate_transition(request)
        if check.flow_id is None:
            return await self._validate_tables(check, call)
        flow = await self._store.get_flow(call.tenant, check.flow_id)
        definition = await self._definition_of(flow)
        if check.to_state is not None:
            return self._validate_phase_on_flow(check, flow, definition, call)
        return self._validate_status_on_flow(check, flow, definition, call)

    def _answer(
        self, refusal: FlowStateError | None, call: Call, **fields: Any
    ) -> pb.ValidateTransitionResponse:
        response = pb.ValidateTransitionResponse(allowed=refusal is None, **fields)
        if refusal is not None:
            response.error.CopyFrom(
                flow_error_to_proto(
                    refusal, correlation_id=call.correlation_id, now=call.context().now
                )
            )
        return response

    async def _validate_tables(
        self, check: validation.TransitionCheck, call: Call
    ) -> pb.ValidateTransitionResponse:
        """Without a flow: the definition's phase names and the transition tables only."""
        if check.to_status is not None:
            assert check.from_status is not None
            return self._answer(
                validate_flow_status_transition(check.from_status, check.to_status),
                call,
                valid_flow_transitions=FLOW_TARGETS[check.from_status],
            )
        assert check.phase is not None
        assert check.from_state is not None
        assert check.to_state is not None
        # A built-in's name answers from the code, without the database: the tables are the same
        # for every definition (a tenant's shadow of it is checked with a flow_id).
        definition = BUILTIN_DEFINITIONS.get(check.definition_name) or (
            await self._store.get_definition(check.definition_name, tenant=call.tenant)
        )
        optional = definition.has_phase(check.phase) and definition.phase(check.phase).optional
        refusal = _phase_refusal(definition, check.phase) or validate_phase_transition(
            check.phase, check.from_state, check.to_state, optional=optional
        )
        return self._answer(
            refusal,
            call,
            valid_transitions=phase_targets_proto(check.from_state, optional=optional),
        )

    def _validate_phase_on_flow(
        self,
        check: validation.TransitionCheck,
        flow: Flow,
        definition: FlowDefinition,
        call: Call,
    ) -> pb.ValidateTransitionResponse:
        assert check.phase is not None
        assert check.to_state is not None
        refusal = _phase_refusal(definition, check.phase)
        if refusal is not None:
            return self._answer(refusal, call, flow_version=flow.version)
        phase = flow.phase(check.phase)
        limits = definition.phase(check.phase)
        needs_failure = check.to_state in ERROR_STATES and phase.state not in ERROR_STATES
        command = TransitionPhase(
            check.phase, check.to_state, error=_DRY_RUN_FAILURE if needs_failure else None
        )
        blocking = []
        if check.to_state in (PhaseState.IN_PROGRESS, PhaseState.SKIPPED):
            blocking = [d for d in limits.depends_on if flow.phase(d).state not in DONE_STATES]
        fields: dict[str, Any] = {
            "valid_transitions": phase_targets_proto(phase.state, optional=limits.optional),
            "blocking_phases": blocking,
            "attempts_remaining": max(limits.max_retries - phase.retry_count, 0),
            "flow_version": flow.version,
        }
        return self._dry_run(flow, definition, command, call, fields)

    def _validate_status_on_flow(
        self,
        check: validation.TransitionCheck,
        flow: Flow,
        definition: FlowDefinition,
        call: Call,
    ) -> pb.ValidateTransitionResponse:
        target = check.to_status
        assert target is not None
        fields: dict[str, Any] = {
            "valid_flow_transitions": FLOW_TARGETS[flow.status],
            "flow_version": flow.version,
        }
        command: Command | None = None
        if target is FlowStatus.PAUSED:
            command = PauseFlow()
        elif target is FlowStatus.CANCELLED:
            command = CancelFlow()
        elif flow.status is FlowStatus.PAUSED:
            command = ResumeFlow()
        if command is None:
            # Any other target is a status the derivation produces, not one a caller asks for:
            # the answer is the flow table's.
            refusal = validate_flow_status_transition(flow.status, target)
            if refusal is None:
                fields["resulting_status"] = FLOW_STATUS_TO_PROTO[target]
                fields["resulting_progress"] = flow.progress
            return self._answer(refusal, call, **fields)
        return self._dry_run(flow, definition, command, call, fields, wanted_status=target)

    def _dry_run(
        self,
        flow: Flow,
        definition: FlowDefinition,
        command: Command,
        call: Call,
        fields: dict[str, Any],
        *,
        wanted_status: FlowStatus | None = None,
    ) -> pb.ValidateTransitionResponse:
        """Run `command` through the core without storing anything; describe the outcome."""
        ctx = call.context()
        refusal = validate_command(flow, definition, command, ctx)
        if refusal is None:
            after = apply_command(flow, definition, command, ctx).flow
            if wanted_status is not None and after.status is not wanted_status:
                refusal = FlowStateError(
                    ErrorCode.INVALID_FLOW_TRANSITION,
                    f"Resuming the flow leads to '{after.status.value}', "
                    f"not '{wanted_status.value}'",
                    from_status=flow.status,
                    to_status=wanted_status,
                    valid_transitions=[after.status, FlowStatus.CANCELLED],
                )
            else:
                fields["resulting_status"] = FLOW_STATUS_TO_PROTO[after.status]
                fields["resulting_progress"] = after.progress
        return self._answer(refusal, call, **fields)

    # --- streams ------------------------------------------------------------------------------

    async def _event(self, value: EventValue) -> pb.FlowEvent:
        """A hub event as a FlowEvent message.

        A WatchFlows heartbeat is about no flow: its status stays UNSPECIFIED rather than
        claiming the placeholder status the hub fills in.
        """
        event = pb.FlowEvent(
            flow_id=value.flow_id,
            flow_version=value.flow_version,
            progress=value.progress,
        )
        if value.flow_id:
            event.status = FLOW_STATUS_TO_PROTO[value.status]
        if value.snapshot is not None:
            await self._fill_flow(event.snapshot, value.snapshot)
        elif value.change is not None:
            event.change.CopyFrom(entry_to_proto(value.flow_id, value.change))
        elif value.heartbeat_at is not None:
            set_timestamp(event.heartbeat.server_time, value.heartbeat_at)
        return event

    def _shared_change(
        self, tenant: Tenant, value: EventValue, change: HistoryEntry
    ) -> tuple[pb.FlowEvent, pb.WatchFlowResponse]:
        """The change event of `value`, converted once for every stream that delivers it.

        The hub reads each change once and hands the same `HistoryEntry` object to all its
        subscribers, so a fan-out to N streams converts it once instead of N times. The cache
        holds the entry itself and reuses the messages only for that very object, so a stale or
        colliding key can cost a conversion but never deliver another entry. The messages are
        shared: nothing may modify them after this (grpc only serialises them).
        """
        key = (tenant, value.flow_id, value.flow_version)
        cached = self._changes.get(key)
        if cached is not None and cached[0] is change:
            return cached[1], cached[2]
        event = pb.FlowEvent(
            flow_id=value.flow_id,
            flow_version=value.flow_version,
            progress=value.progress,
            status=FLOW_STATUS_TO_PROTO[value.status],
            change=entry_to_proto(value.flow_id, change),
        )
        response = pb.WatchFlowResponse(event=event)
        if len(self._changes) >= _SHARED_CHANGES_MAX:
            self._changes.clear()
        self._changes[key] = (change, event, response)
        return event, response

    def _require_hub(self) -> EventSource:
        if self._hub is None:
            raise NotImplementedError("status streams are not available on this server")
        return self._hub

    @stream(Scope.READ)
    async def WatchFlow(  # noqa: N802 - the proto's method name
        self, request: pb.WatchFlowRequest, call: Call
    ) -> AsyncIterator[pb.WatchFlowResponse]:
        """Stream one flow's snapshot (or replay) and then its changes, from the hub."""
        args = validation.watch_flow(request)
        events = self._require_hub().watch_flow(
            call.tenant, args.flow_id, after_version=args.after_version, keep_open=args.keep_open
        )
        async for value in events:
            if value.change is not None and value.snapshot is None and value.flow_id:
                yield self._shared_change(call.tenant, value, value.change)[1]
            else:
                yield pb.WatchFlowResponse(event=await self._event(value))

    @stream(Scope.READ)
    async def WatchFlows(  # noqa: N802 - the proto's method name
        self, request: pb.WatchFlowsRequest, call: Call
    ) -> AsyncIterator[pb.WatchFlowsResponse]:
        """Stream the tenant's matching flows (snapshot or resume by cursor), then changes."""
        args = validation.watch_flows(request)
        events = self._require_hub().watch_flows(
            call.tenant,
            statuses=frozenset(args.statuses),
            definition_name=args.definition_name or "",
            flow_ids=frozenset(args.flow_ids),
            cursor=args.cursor or "",
        )
        async for value in events:
            if value.change is not None and value.snapshot is None and value.flow_id:
                # The cursor is the stream's own; the converted event is shared (and copied in).
                event = self._shared_change(call.tenant, value, value.change)[0]
            else:
                event = await self._event(value)
            yield pb.WatchFlowsResponse(event=event, cursor=value.cursor)
