"""`FlowStateServicer`: the FlowStateService RPCs, a few lines each.

Every RPC reads the same way: validate and convert the request (`flowstate.server.validation`),
call a use case (`flowstate.service.FlowService`: idempotency, the core's decision, the store's
transaction), convert the response (`flowstate.server.convert`). Authentication, scopes, error
mapping, logging and metrics happen once, in the `flowstate.server.rpc` wrapper around each
method.

Decisions a reader should know:

- The tenant always comes from the token (`Call.tenant`), never from the request.
- `ValidateTransition` is the core's dry run (`flowstate.core.preview`) through the use case:
  without a flow id it never touches the database for built-in definitions; with one it reads
  the flow and dry-runs the matching core command; it never writes.
- `GetRecoveryOptions` pins each option's request to the flow's current version
  (`expected_version`), so an option executed after the flow changed fails with ABORTED
  instead of doing something the options did not describe.
- `Retry` with `force` needs flows:admin (PERMISSION_DENIED otherwise), checked before the use case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from flowstate.core.bulk import BulkActionState, BulkOutcome
from flowstate.core.definitions import FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.filters import Filter
from flowstate.core.model import (
    ErrorCode,
    ExternalDependency,
    Flow,
    FlowStatus,
    HistoryEntry,
    Tenant,
)
from flowstate.core.preview import TransitionVerdict
from flowstate.server import definitions, validation
from flowstate.server.auth import Scope
from flowstate.server.convert import (
    BULK_OUTCOME_TO_PROTO,
    FLOW_STATUS_TO_PROTO,
    FLOW_TARGETS,
    DefinitionView,
    bulk_action_to_proto,
    entries_to_proto,
    fill_event_change,
    phase_targets_proto,
    recovery_option_to_proto,
    retention_policy_to_proto,
    set_timestamp,
)
from flowstate.server.errors import flow_error_to_proto
from flowstate.server.rpc import Call, RpcSupport, stream, unary
from flowstate.server.webhooks import webhook_to_proto
from flowstate.service import FlowService
from flowstate.service import definitions as definition_service
from flowstate.service import retention as retention_service
from flowstate.service.bulk import BulkService
from flowstate.service.webhooks import WebhookService
from flowstate.storage.bulk import BulkItem, BulkRequest, BulkSelection
from flowstate.storage.store import FlowQuery, FlowStore, MutationResult
from flowstate.v1 import flow_pb2, flow_service_pb2_grpc, webhook_pb2
from flowstate.v1 import flow_service_pb2 as pb

__all__ = ["BULK_WATCH_INTERVAL", "EventSource", "EventValue", "FlowStateServicer"]

BULK_WATCH_INTERVAL = 0.5
"""Seconds between looks at a watched bulk action (WatchBulkAction)."""

_WATCH_RELATION: dict[str | None, pb.WatchRelation.ValueType] = {
    None: pb.WATCH_RELATION_UNSPECIFIED,
    "self": pb.WATCH_RELATION_SELF,
    "descendant": pb.WATCH_RELATION_DESCENDANT,
    "dependency": pb.WATCH_RELATION_DEPENDENCY,
}


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
    @property
    def relation(self) -> str | None: ...
    @property
    def parent_flow_id(self) -> str: ...
    @property
    def waiting(self) -> tuple[ExternalDependency, ...]: ...


class EventSource(Protocol):
    """What the servicer needs from the watch hub (`flowstate.server.watch.WatchHub`)."""

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
    ) -> AsyncIterator[EventValue]:
        """Events of one flow, or of its tree (FLOW_NOT_FOUND, SERVER_SHUTTING_DOWN...)."""
        ...

    def watch_flows(
        self,
        tenant: Tenant,
        *,
        statuses: frozenset[FlowStatus],
        definition_name: str,
        flow_ids: frozenset[str],
        cursor: str,
        condition: Filter | None = None,
    ) -> AsyncIterator[EventValue]:
        """Events of the tenant's matching flows, each with its resume cursor."""
        ...

    def shared_change(
        self, tenant: Tenant, value: EventValue, change: HistoryEntry
    ) -> tuple[pb.FlowEvent, pb.WatchFlowResponse]:
        """The change event of `value`, converted once for every stream that delivers it."""
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
    pb.DecidePhaseResponse,
    pb.LinkChildFlowResponse,
)


class FlowStateServicer(flow_service_pb2_grpc.FlowStateServiceServicer):
    """The FlowStateService implementation over the use cases of a `FlowStore`."""

    def __init__(
        self,
        store: FlowStore,
        support: RpcSupport,
        hub: EventSource | None = None,
        *,
        stuck_after: float | Mapping[FlowStatus, float] = 3600.0,
        webhooks: WebhookService | None = None,
        bulk: BulkService | None = None,
    ) -> None:
        """Serve the use cases on `store` (and streams from `hub`, webhooks with `webhooks`;
        UNIMPLEMENTED without them).

        `support` holds the authenticator and metrics the `rpc` wrapper uses; `stuck_after`
        (seconds, or seconds per status: `ServerSettings.stuck_thresholds`, the STUCK alerts'
        rule) is what ``stuck`` means in filters.
        """
        self._stuck_after: timedelta | Mapping[FlowStatus, float] = (
            stuck_after if isinstance(stuck_after, Mapping) else timedelta(seconds=stuck_after)
        )
        self._bulk = bulk
        self._store = store
        self._webhooks = webhooks
        self._flows = FlowService(store)
        self._support = support
        self._hub = hub
        self._definitions = definitions.DefinitionViews()

    @property
    def rpc_support(self) -> RpcSupport:
        """The authenticator and metrics of the `rpc` wrapper."""
        return self._support

    # --- helpers --------------------------------------------------------------------------------

    def _filter(self, text: str, field: str = "filter") -> Filter | None:
        return validation.flow_filter(
            text, now=datetime.now(UTC), stuck_after=self._stuck_after, field=field
        )

    def _view(self, definition: FlowDefinition) -> DefinitionView:
        return self._definitions.view(definition)

    async def _definition_of(self, flow: Flow) -> FlowDefinition:
        """The definition `flow` follows, in its tenant's view (definitions never change)."""
        key = (flow.tenant, flow.definition_name, flow.definition_version)
        definition = self._definitions.resolved(*key)
        if definition is None:
            definition = await self._flows.definition_of(flow)
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
        result = await self._flows.mutate(
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
        result = await self._flows.create_flow(
            call.tenant,
            definition_name=args.definition_name,
            ctx=call.context(args.request_id),
            display_name=args.display_name,
            labels=args.labels,
            flow_id=args.flow_id,
            definition_version=args.definition_version or None,
            deadline=args.deadline,
            external_dependencies=args.external_dependencies,
        )
        return await self._respond(result, pb.CreateFlowResponse)

    @unary(Scope.READ)
    async def GetFlow(  # noqa: N802 - the proto's method name
        self, request: pb.GetFlowRequest, call: Call
    ) -> pb.GetFlowResponse:
        """Return one flow of the caller's tenant (with its descendants when asked)."""
        flow_id = validation.flow_id(request.flow_id)
        depth = validation.children_depth(request.children_depth)
        response = pb.GetFlowResponse()
        if not depth:
            await self._fill_flow(response.flow, await self._flows.get_flow(call.tenant, flow_id))
            return response
        tree = await self._flows.get_flow_tree(call.tenant, flow_id, depth)
        await self._fill_flow(response.flow, tree.flow)
        for descendant in tree.descendants:
            await self._fill_flow(response.descendants.add(), descendant)
        response.descendants_truncated = tree.truncated
        return response

    @unary(Scope.READ)
    async def ListFlows(  # noqa: N802 - the proto's method name
        self, request: pb.ListFlowsRequest, call: Call
    ) -> pb.ListFlowsResponse:
        """List the caller's flows matching the filters, one page."""
        args = validation.list_flows(request)
        page = await self._flows.list_flows(
            call.tenant,
            FlowQuery(
                statuses=frozenset(args.statuses),
                phase_states={k: frozenset(v) for k, v in args.phase_states.items()},
                updated_before=args.updated_before,
                definition_name=args.definition_name,
                filter=self._filter(args.filter_text),
                filter_text=args.filter_text,
                alerting=args.alerting,
                parent_flow_id=args.parent_flow_id,
                page_size=args.page_size,
                page_token=args.page_token,
            ),
        )
        return pb.ListFlowsResponse(
            flows=[await self._flow_message(flow) for flow in page.flows],
            next_page_token=page.next_page_token,
        )

    @unary(Scope.READ)
    async def CountFlows(  # noqa: N802 - the proto's method name
        self, request: pb.CountFlowsRequest, call: Call
    ) -> pb.CountFlowsResponse:
        """Count the caller's flows matching the filter, in all and per group."""
        group_by, phase = validation.count_group(request.group_by)
        condition = self._filter(request.filter)
        counted = await self._flows.count_flows(
            call.tenant,
            FlowQuery(filter=condition, filter_text=request.filter),
            group_by=group_by,
            phase=phase,
        )
        return pb.CountFlowsResponse(
            total_count=counted.total,
            groups=[
                pb.FlowCountGroup(key=key if group_by == "definition" else key.upper(), count=n)
                for key, n in counted.groups
            ],
        )

    @unary(Scope.RETENTION_ADMIN)
    async def GetRetentionPolicy(  # noqa: N802 - the proto's method name
        self, request: pb.GetRetentionPolicyRequest, call: Call
    ) -> pb.GetRetentionPolicyResponse:
        """The tenant's own retention policy (retain_days 0: none)."""
        policy = await retention_service.get_policy(self._store, call.tenant)
        return pb.GetRetentionPolicyResponse(policy=retention_policy_to_proto(policy))

    @unary(Scope.RETENTION_ADMIN)
    async def SetRetentionPolicy(  # noqa: N802 - the proto's method name
        self, request: pb.SetRetentionPolicyRequest, call: Call
    ) -> pb.SetRetentionPolicyResponse:
        """Set (1..36500 days) or remove (0) the tenant's retention policy."""
        policy = await retention_service.set_policy(
            self._store, call.tenant, request.retain_days, call.principal.user_id
        )
        return pb.SetRetentionPolicyResponse(policy=retention_policy_to_proto(policy))

    @unary(Scope.READ)
    async def ListFlowHistory(  # noqa: N802 - the proto's method name
        self, request: pb.ListFlowHistoryRequest, call: Call
    ) -> pb.ListFlowHistoryResponse:
        """List a flow's history entries in version order, one page."""
        args = validation.list_flow_history(request)
        page = await self._flows.list_history(
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
        stored = await definition_service.get_definition(
            self._store, call.tenant, name, version or None
        )
        return pb.GetFlowDefinitionResponse(
            definition=definitions.stored_to_proto(stored, self._view)
        )

    @unary(Scope.DEFINITIONS_WRITE)
    async def CreateFlowDefinition(  # noqa: N802 - the proto's method name
        self, request: pb.CreateFlowDefinitionRequest, call: Call
    ) -> pb.CreateFlowDefinitionResponse:
        """Register a definition for the caller's tenant (flowstate.service.definitions)."""
        args = definitions.create_flow_definition(request)
        stored, created = await definition_service.register_definition(
            self._store,
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
        page = await definition_service.list_definitions(
            self._store,
            call.tenant,
            name=args.name,
            page_size=args.page_size,
            page_token=args.page_token,
        )
        return pb.ListFlowDefinitionsResponse(
            definitions=[definitions.stored_to_proto(s, self._view) for s in page.definitions],
            next_page_token=page.next_page_token,
        )

    # --- webhooks (flowstate.service.webhooks) -------------------------------------------------

    def _webhook_service(self) -> WebhookService:
        if self._webhooks is None:
            raise NotImplementedError("this server was started without webhooks")
        return self._webhooks

    @unary(Scope.WEBHOOKS_ADMIN)
    async def CreateWebhook(  # noqa: N802 - the proto's method name
        self, request: webhook_pb2.CreateWebhookRequest, call: Call
    ) -> webhook_pb2.CreateWebhookResponse:
        """Subscribe a URL to the tenant's changes; the secret is answered only here."""
        args = validation.create_webhook(request)
        stored, secret = await self._webhook_service().create(
            call.tenant,
            url=args.url,
            statuses=args.statuses,
            definition_name=args.definition_name,
            secret=args.secret,
            filter_text=args.filter_text,
            now=call.context().now,
        )
        return webhook_pb2.CreateWebhookResponse(webhook=webhook_to_proto(stored), secret=secret)

    @unary(Scope.WEBHOOKS_ADMIN)
    async def ListWebhooks(  # noqa: N802 - the proto's method name
        self, request: webhook_pb2.ListWebhooksRequest, call: Call
    ) -> webhook_pb2.ListWebhooksResponse:
        """The tenant's webhooks with their delivery status."""
        found = await self._webhook_service().list(call.tenant)
        return webhook_pb2.ListWebhooksResponse(webhooks=[webhook_to_proto(w) for w in found])

    @unary(Scope.WEBHOOKS_ADMIN)
    async def DeleteWebhook(  # noqa: N802 - the proto's method name
        self, request: webhook_pb2.DeleteWebhookRequest, call: Call
    ) -> webhook_pb2.DeleteWebhookResponse:
        """Delete one of the tenant's webhooks."""
        await self._webhook_service().delete(call.tenant, validation.webhook_id(request.webhook_id))
        return webhook_pb2.DeleteWebhookResponse()

    @unary(Scope.WEBHOOKS_ADMIN)
    async def TestWebhook(  # noqa: N802 - the proto's method name
        self, request: webhook_pb2.TestWebhookRequest, call: Call
    ) -> webhook_pb2.TestWebhookResponse:
        """Send a signed test event now and report the receiver's answer."""
        message_id, result = await self._webhook_service().test(
            call.tenant, validation.webhook_id(request.webhook_id)
        )
        return webhook_pb2.TestWebhookResponse(
            delivered=result.ok, http_status=result.status, error=result.error, event_id=message_id
        )

    @unary(Scope.WEBHOOKS_ADMIN)
    async def ReplayWebhook(  # noqa: N802 - the proto's method name
        self, request: webhook_pb2.ReplayWebhookRequest, call: Call
    ) -> webhook_pb2.ReplayWebhookResponse:
        """Move the cursor (after a cursor, from a time, or to now) and enable the webhook."""
        webhook_id = validation.webhook_id(request.webhook_id)
        since = request.since_time.ToDatetime(UTC) if request.HasField("since_time") else None
        stored = await self._webhook_service().replay(
            call.tenant, webhook_id, after_cursor=request.after_cursor, since=since
        )
        return webhook_pb2.ReplayWebhookResponse(webhook=webhook_to_proto(stored))

    @unary(Scope.READ)
    async def GetRecoveryOptions(  # noqa: N802 - the proto's method name
        self, request: pb.GetRecoveryOptionsRequest, call: Call
    ) -> pb.GetRecoveryOptionsResponse:
        """The ranked recovery options of a flow, each with its ready-to-send request."""
        found = await self._flows.recovery_options(call.tenant, validation.flow_id(request.flow_id))
        response = pb.GetRecoveryOptionsResponse(
            options=[recovery_option_to_proto(found.flow, option) for option in found.options],
        )
        for child, option in found.child_options:
            message = recovery_option_to_proto(child, option)
            message.parent_phase = child.parent_phase or ""
            response.options.append(message)
        self._view(found.definition).fill_flow(response.flow, found.flow)
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
    async def LinkChildFlow(  # noqa: N802 - the proto's method name
        self, request: pb.LinkChildFlowRequest, call: Call
    ) -> pb.LinkChildFlowResponse:
        """Start a child_flow phase following an existing root flow of the tenant."""
        args = validation.link_child_flow(request)
        result = await self._flows.link_child_flow(
            call.tenant,
            args.flow_id,
            args.phase,
            args.child_flow_id,
            call.context(args.request_id),
            reason=args.reason,
            expected_version=args.expected_version,
        )
        return await self._respond(result, pb.LinkChildFlowResponse)

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
    async def Heartbeat(  # noqa: N802 - the proto's method name
        self, request: pb.HeartbeatRequest, call: Call
    ) -> pb.HeartbeatResponse:
        """A worker's sign of life: push the phase's heartbeat timeout back (docs/timers.md)."""
        flow_id, phase = validation.heartbeat(request)
        beat = await self._flows.heartbeat(call.tenant, flow_id, phase)
        response = pb.HeartbeatResponse(flow_version=beat.flow_version)
        if beat.deadline is not None:
            set_timestamp(response.heartbeat_deadline_time, beat.deadline)
        return response

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

    @unary(Scope.APPROVE)
    async def DecidePhase(  # noqa: N802 - the proto's method name
        self, request: pb.DecidePhaseRequest, call: Call
    ) -> pb.DecidePhaseResponse:
        """Approve, reject or send back a phase waiting for approval (the core checks the
        phase's policy against the caller's scopes and claims)."""
        return await self._mutate(validation.decide_phase(request), call, pb.DecidePhaseResponse)

    # --- ValidateTransition ---------------------------------------------------------------------

    @unary(Scope.READ)
    async def ValidateTransition(  # noqa: N802 - the proto's method name
        self, request: pb.ValidateTransitionRequest, call: Call
    ) -> pb.ValidateTransitionResponse:
        """Answer whether a phase or flow transition is legal, and why not; never writes."""
        check = validation.validate_transition(request)
        ctx = call.context()
        verdict = await self._flows.validate_transition(call.tenant, check, ctx)
        return _verdict_to_proto(verdict, call)

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
            fill_event_change(event, value.flow_id, value.change)
        elif value.heartbeat_at is not None:
            set_timestamp(event.heartbeat.server_time, value.heartbeat_at)
        return event

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
            call.tenant,
            args.flow_id,
            after_version=args.after_version,
            keep_open=args.keep_open,
            children_depth=args.children_depth,
            include_dependencies=args.include_dependencies,
            cursor=args.cursor,
        )
        if args.tree:
            async for value in events:
                yield await self._tree_response(call, value)
            return
        async for value in events:
            if value.change is not None and value.snapshot is None and value.flow_id:
                yield self._require_hub().shared_change(call.tenant, value, value.change)[1]
            else:
                yield pb.WatchFlowResponse(event=await self._event(value))

    async def _tree_response(self, call: Call, value: EventValue) -> pb.WatchFlowResponse:
        """A tree stream's event: the (shared) event with its cursor, relation and waiters."""
        if value.change is not None and value.snapshot is None and value.flow_id:
            event = self._require_hub().shared_change(call.tenant, value, value.change)[0]
        else:
            event = await self._event(value)
        return pb.WatchFlowResponse(
            event=event,
            cursor=value.cursor,
            relation=_WATCH_RELATION[value.relation],
            parent_flow_id=value.parent_flow_id,
            waiting=[
                pb.WaitingPhase(flow_id=w.flow_id, phase=w.phase, flow_phase=w.flow_phase)
                for w in value.waiting
            ],
        )

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
            condition=self._filter(args.filter_text),
        )
        async for value in events:
            if value.change is not None and value.snapshot is None and value.flow_id:
                # The cursor is the stream's own; the converted event is shared (and copied in).
                event = self._require_hub().shared_change(call.tenant, value, value.change)[0]
            else:
                event = await self._event(value)
            yield pb.WatchFlowsResponse(event=event, cursor=value.cursor)

    # --- bulk actions (docs/bulk-actions.md) ----------------------------------------------------

    def _require_bulk(self) -> BulkService:
        if self._bulk is None:
            raise FlowStateError(ErrorCode.INTERNAL, "bulk actions are not configured")
        return self._bulk

    @unary(Scope.ADMIN)
    async def StartBulkAction(  # noqa: N802 - the proto's method name
        self, request: pb.StartBulkActionRequest, call: Call
    ) -> pb.StartBulkActionResponse:
        """Start a bulk action over a filter or ids; it runs in the background."""
        args = validation.start_bulk_action(request)
        condition = self._filter(args.filter_text) if args.filter_text else None
        bulk = BulkRequest(
            kind=args.kind,
            selection=BulkSelection(condition, args.filter_text, args.flow_ids),
            phase=args.phase,
            reason=args.reason,
            user_id=call.principal.user_id,
            request_id=args.request_id,
        )
        action, _ = await self._require_bulk().start(call.tenant, bulk)
        return pb.StartBulkActionResponse(bulk_action=bulk_action_to_proto(action))

    @unary(Scope.ADMIN)
    async def GetBulkAction(  # noqa: N802 - the proto's method name
        self, request: pb.GetBulkActionRequest, call: Call
    ) -> pb.GetBulkActionResponse:
        """Return one bulk action of the caller's tenant."""
        action_id = validation.bulk_action_id(request.bulk_action_id)
        action = await self._require_bulk().actions.get(call.tenant, action_id)
        return pb.GetBulkActionResponse(bulk_action=bulk_action_to_proto(action))

    @unary(Scope.ADMIN)
    async def ListBulkActions(  # noqa: N802 - the proto's method name
        self, request: pb.ListBulkActionsRequest, call: Call
    ) -> pb.ListBulkActionsResponse:
        """List the caller's bulk actions, newest first."""
        size, token = validation.list_bulk_actions(request)
        actions, next_token = await self._require_bulk().actions.list_actions(
            call.tenant, page_size=size, page_token=token
        )
        return pb.ListBulkActionsResponse(
            bulk_actions=[bulk_action_to_proto(a) for a in actions], next_page_token=next_token
        )

    @unary(Scope.ADMIN)
    async def ListBulkActionResults(  # noqa: N802 - the proto's method name
        self, request: pb.ListBulkActionResultsRequest, call: Call
    ) -> pb.ListBulkActionResultsResponse:
        """List a bulk action's per-flow results, in the order its flows are taken."""
        action_id, outcome, size, token = validation.list_bulk_action_results(request)
        items, next_token = await self._require_bulk().actions.results(
            call.tenant, action_id, outcome=outcome, page_size=size, page_token=token
        )
        return pb.ListBulkActionResultsResponse(
            results=[_bulk_result(item, call) for item in items], next_page_token=next_token
        )

    @unary(Scope.ADMIN)
    async def CancelBulkAction(  # noqa: N802 - the proto's method name
        self, request: pb.CancelBulkActionRequest, call: Call
    ) -> pb.CancelBulkActionResponse:
        """Cancel a running bulk action (a finished one is returned unchanged)."""
        action_id = validation.bulk_action_id(request.bulk_action_id)
        action = await self._require_bulk().actions.cancel(call.tenant, action_id)
        return pb.CancelBulkActionResponse(bulk_action=bulk_action_to_proto(action))

    @stream(Scope.ADMIN)
    async def WatchBulkAction(  # noqa: N802 - the proto's method name
        self, request: pb.WatchBulkActionRequest, call: Call
    ) -> AsyncIterator[pb.WatchBulkActionResponse]:
        """Stream a bulk action whenever its progress changes, until it is finished.

        Polls the action (every `BULK_WATCH_INTERVAL` seconds): progress is a figure to watch,
        not a log to replay, so a missed intermediate count loses nothing.
        """
        action_id = validation.bulk_action_id(request.bulk_action_id)
        actions = self._require_bulk().actions
        last: tuple[object, ...] | None = None
        while True:
            action = await actions.get(call.tenant, action_id)
            seen = (action.state, action.applied, action.refused, action.skipped)
            if seen != last:
                last = seen
                yield pb.WatchBulkActionResponse(bulk_action=bulk_action_to_proto(action))
            if action.state is not BulkActionState.RUNNING:
                return
            await asyncio.sleep(BULK_WATCH_INTERVAL)


def _verdict_to_proto(verdict: TransitionVerdict, call: Call) -> pb.ValidateTransitionResponse:
    """The core's verdict as a ValidateTransitionResponse (the refusal as a FlowError)."""
    response = pb.ValidateTransitionResponse(
        allowed=verdict.allowed,
        blocking_phases=verdict.blocking_phases,
        flow_version=verdict.flow_version,
    )
    if verdict.refusal is not None:
        response.error.CopyFrom(
            flow_error_to_proto(
                verdict.refusal, correlation_id=call.correlation_id, now=call.context().now
            )
        )
    if verdict.targets_of_state is not None:
        response.valid_transitions.extend(
            phase_targets_proto(verdict.targets_of_state, optional=verdict.optional)
        )
    if verdict.targets_of_status is not None:
        response.valid_flow_transitions.extend(FLOW_TARGETS[verdict.targets_of_status])
    if verdict.attempts_remaining is not None:
        response.attempts_remaining = verdict.attempts_remaining
    if verdict.resulting_status is not None:
        response.resulting_status = FLOW_STATUS_TO_PROTO[verdict.resulting_status]
    if verdict.resulting_progress is not None:
        response.resulting_progress = verdict.resulting_progress
    return response


def _bulk_result(item: BulkItem, call: Call) -> pb.BulkFlowResult:
    """One per-flow result; a refusal as the FlowError the flow's own call would have got."""
    result = pb.BulkFlowResult(flow_id=item.flow_id, phase=item.phase or "")
    if item.outcome is not None:
        result.outcome = BULK_OUTCOME_TO_PROTO[item.outcome]
    if item.done_at is not None:
        set_timestamp(result.done_time, item.done_at)
    error = item.error or {}
    if item.outcome is BulkOutcome.REFUSED and "error_code" in error:
        refusal = FlowStateError(
            ErrorCode(error["error_code"]),
            str(error.get("message", "")),
            **error.get("details", {}),
        )
        result.error.CopyFrom(
            flow_error_to_proto(refusal, correlation_id="", now=item.done_at or datetime.now(UTC))
        )
    elif item.outcome is BulkOutcome.SKIPPED:
        result.skip_reason = str(error.get("reason", ""))
    return result
