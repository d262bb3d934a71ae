"""`FlowstateClient`: the blocking client of the Flowstate API (scripts, the CLI).

It mirrors `AsyncFlowstateClient` method for method over a synchronous ``grpc`` channel, with
the same requests, retries, results and errors; `watch` and `watch_flows` are plain iterators.

Generated from ``_async_client.py`` by ``scripts/gen_sync_client.py`` (``make generate``): edit
the asyncio client, not this file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.message import Message

from flowstate.client import _requests
from flowstate.client._config import ClientConfig, TokenSource
from flowstate.client._enums import BulkActionType, BulkFlowOutcome
from flowstate.client._errors import FlowstateError, Unavailable, error_from_rpc_error
from flowstate.client._models import (
    BulkAction,
    BulkFlowResult,
    DefinitionPage,
    DefinitionRegistration,
    ExternalDependency,
    Flow,
    FlowCount,
    FlowDefinition,
    FlowEvent,
    FlowPage,
    FlowTree,
    HeartbeatResult,
    HistoryEntry,
    HistoryPage,
    MutationResult,
    RecoveryOption,
    RecoveryOptions,
    RetentionPolicy,
    ValidationResult,
)
from flowstate.client._requests import EnumLike, new_request_id
from flowstate.client._retry import RetryPolicy, RetryState
from flowstate.client._watch import (
    FlowsWatch,
    FlowWatch,
    ReconnectListener,
    TreeWatch,
    is_resumable,
)
from flowstate.v1 import definition_pb2, flow_service_pb2, flow_service_pb2_grpc, webhook_pb2

__all__ = ["FlowstateClient"]

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)


class FlowstateClient:
    """The blocking client of the Flowstate API: one method per RPC, typed results and errors.

    Every method raises a `FlowstateError` subclass chosen by the server's error code. Calls are
    retried on UNAVAILABLE under the `retry` policy; mutations carry a generated ``request_id``
    (unless given one) that every retry reuses, so a change is never applied twice.

    Use it as a context manager, or call `close` when done::

        with FlowstateClient(token=token) as client:
            created = client.create_flow("discovery")
            client.transition_phase(created.flow.flow_id, "data_import", "IN_PROGRESS")
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        token: TokenSource | None = None,
        secure: bool | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        allow_insecure: bool = False,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        watch_retry: RetryPolicy | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Configure the client; nothing is connected yet.

        Settings left unset come from the environment (``FLOWSTATE_ADDRESS``,
        ``FLOWSTATE_TOKEN``, ``FLOWSTATE_TLS_CA_FILE``, ...: see `flowstate.client._config`).

        Args:
            address: ``host:port`` of the server; else ``FLOWSTATE_ADDRESS``, else
                ``127.0.0.1:50051``.
            token: A bearer JWT, or a callable returning the
                current one, called per attempt; else ``FLOWSTATE_TOKEN``.
            secure: Use TLS with the system's root certificates (implied by the next three).
            root_certificates: PEM roots that sign the server's certificate.
            private_key: PEM client key, for mTLS (with `certificate_chain`).
            certificate_chain: PEM client certificate chain, for mTLS.
            allow_insecure: Send the token in plaintext to a host that is not loopback (only on
                a trusted network); refused otherwise.
            timeout: Seconds each unary attempt may take (None: no limit); overridable per call.
            retry: Retry policy of unary calls (default: `RetryPolicy()`).
            watch_retry: Reconnection policy of `watch`/`watch_flows` (default: unlimited
                attempts within 120 s of consecutive failures).
            channel_options: Extra ``grpc`` channel arguments.
        """
        self._config = ClientConfig.from_options(
            address=address,
            token=token,
            secure=secure,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            allow_insecure=allow_insecure,
            timeout=timeout,
            retry=retry,
            watch_retry=watch_retry,
            channel_options=channel_options,
        )
        self._channel: grpc.Channel | None = None
        self._stub: flow_service_pb2_grpc.FlowStateServiceStub | None = None
        self._closed = False
        #: Set by `close`: ends the wait before a stream reconnects.
        self._closed_event = threading.Event()
        #: Seam for tests: how the client waits between attempts.
        self._sleep: Callable[[float], Any] = time.sleep

    @property
    def address(self) -> str:
        """The server address this client talks to."""
        return self._config.address

    def __enter__(self) -> Self:
        """Return the client itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the client."""
        self.close()

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards.

        Open `watch`/`watch_flows` iterations end (they return, in whichever thread iterates
        them), promptly, also while waiting to reconnect: a locally closed client is final.
        """
        self._closed = True
        self._closed_event.set()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None

    def _service(self) -> flow_service_pb2_grpc.FlowStateServiceStub:
        if self._closed:
            # As in the TypeScript and Go SDKs: a call on a closed client is CANCELLED.
            raise FlowstateError("the client is closed", grpc_code=grpc.StatusCode.CANCELLED)
        if self._stub is None:
            config = self._config
            credentials = config.channel_credentials()
            options = config.grpc_options()
            if credentials is None:
                self._channel = grpc.insecure_channel(config.address, options=options)
            else:
                self._channel = grpc.secure_channel(config.address, credentials, options=options)
            self._stub = flow_service_pb2_grpc.FlowStateServiceStub(self._channel)
        return self._stub

    def _call(
        self,
        method: Callable[
            [flow_service_pb2_grpc.FlowStateServiceStub],
            grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        ],
        request: _Req,
        timeout: float | None,
        retry: RetryPolicy | None = None,
    ) -> _Resp:
        """Send `request` through the stub method `method` picks, retrying under the policy
        (`retry`: this call's own, overriding the client's)."""
        config = self._config
        state = RetryState(retry if retry is not None else config.retry)
        call_timeout = config.timeout if timeout is None else timeout
        while True:
            state.begin()
            try:
                return method(self._service())(
                    request,
                    timeout=state.attempt_timeout(call_timeout),
                    metadata=config.metadata(),
                )
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
                delay = state.next_delay(error)
                if delay is None:
                    raise error from exc
            self._sleep(delay)

    # --- flows ---------------------------------------------------------------------------

    def create_flow(
        self,
        definition_name: str = "",
        *,
        definition_version: int = 0,
        flow_id: str | None = None,
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        deadline: datetime | None = None,
        external_dependencies: Iterable[ExternalDependency] = (),
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Create a flow of a definition ("discovery" when empty), all phases NOT_STARTED.

        Args:
            definition_name: The definition to follow.
            definition_version: Its version; the latest when 0.
            flow_id: A client-chosen UUID; the server picks one when None.
            display_name: A human-readable name.
            labels: Free-form labels.
            request_id: Idempotency key; generated when None.
            deadline: When the flow should be finished (timezone-aware); the definition's
                `deadline` when None. A flow not terminal by then gets a DEADLINE_EXCEEDED alert.
            external_dependencies: Phases of other flows (same tenant) that phases of this
                flow wait for (docs/child_flows.md); at most 32.
            timeout: Seconds per attempt; the client's default when None.
            retry: This call's retry policy; the client's when None.
        """
        request = _requests.create_flow(
            definition_name=definition_name,
            definition_version=definition_version,
            flow_id=flow_id,
            display_name=display_name,
            labels=labels,
            request_id=request_id,
            deadline=deadline,
            external_dependencies=external_dependencies,
        )
        response = self._call(lambda s: s.CreateFlow, request, timeout, retry)
        return MutationResult._from_proto(response)

    def get_flow(
        self, flow_id: str, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> Flow:
        """Return one flow (`FlowNotFound` if the caller's tenant has no such flow)."""
        response = self._call(lambda s: s.GetFlow, _requests.get_flow(flow_id), timeout, retry)
        return Flow._from_proto(response.flow)

    def get_flow_tree(
        self,
        flow_id: str,
        *,
        depth: int = 5,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> FlowTree:
        """Return a flow with its child flows down to `depth` levels (1-5; docs/child_flows.md).

        Raises:
            FlowNotFound: the caller's tenant has no such flow.
        """
        request = _requests.get_flow(flow_id, children_depth=depth)
        response = self._call(lambda s: s.GetFlow, request, timeout, retry)
        return FlowTree._from_proto(response)

    def link_child_flow(
        self,
        flow_id: str,
        phase: str,
        child_flow_id: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> MutationResult:
        """Start the child_flow `phase` of `flow_id` following the existing root flow
        `child_flow_id` (same tenant, the phase's child definition) instead of a new child.

        Raises:
            FlowNotFound: either flow does not exist for the caller's tenant.
            ChildFlowNotLinkable: the flow already has a parent, follows another definition,
                is an ancestor of `flow_id`, or the phase is not of kind child_flow.
            ChildFlowLimitExceeded, InvalidPhaseTransition, PhaseOrderViolation, FlowPaused,
            FlowTerminal, VersionConflict.
        """
        request = _requests.link_child_flow(
            flow_id,
            phase,
            child_flow_id,
            reason=reason,
            request_id=request_id,
            expected_version=expected_version,
        )
        response = self._call(lambda s: s.LinkChildFlow, request, timeout)
        return MutationResult._from_proto(response)

    def list_flows(
        self,
        *,
        statuses: Iterable[EnumLike] = (),
        phase_states: Mapping[str, Iterable[EnumLike] | EnumLike] | None = None,
        updated_before: datetime | timedelta | None = None,
        definition_name: str | None = None,
        filter: str = "",
        alerting: bool = False,
        page_size: int = 0,
        page_token: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        parent_flow_id: str | None = None,
    ) -> FlowPage:
        """Return one page of the caller's flows, least recently changed first.

        Args:
            statuses: Only flows in one of these statuses.
            phase_states: Only flows whose named phases are in one of the given states,
                e.g. ``{"data_import": ["FAILED", "RETRY_NEEDED"]}``.
            updated_before: Only flows unchanged since this time; a `timedelta` means
                "unchanged for that long" (stuck flows).
            definition_name: Only flows of this definition.
            filter: Only flows matching this filter (docs/filters.md), e.g.
                ``'error = EXTERNAL_SERVICE_ERROR AND updated > -1h'``.
            alerting: Only flows with an alert in force (`Flow.alerts`).
            page_size: At most this many flows (the server's default when 0).
            page_token: `FlowPage.next_page_token` of the previous page.
            timeout: Seconds per attempt; the client's default when None.
            retry: This call's retry policy; the client's when None.
            parent_flow_id: Only the child flows of this flow.
        """
        request = _requests.list_flows(
            statuses=statuses,
            phase_states=phase_states,
            updated_before=updated_before,
            definition_name=definition_name,
            page_size=page_size,
            page_token=page_token,
            filter=filter,
            alerting=alerting,
            parent_flow_id=parent_flow_id,
        )
        response = self._call(lambda s: s.ListFlows, request, timeout, retry)
        return FlowPage._from_proto(response)

    def iter_flows(
        self,
        *,
        statuses: Iterable[EnumLike] = (),
        phase_states: Mapping[str, Iterable[EnumLike] | EnumLike] | None = None,
        updated_before: datetime | timedelta | None = None,
        definition_name: str | None = None,
        filter: str = "",
        alerting: bool = False,
        page_size: int = 0,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        parent_flow_id: str | None = None,
    ) -> Generator[Flow, None, None]:
        """Yield every matching flow, fetching pages as needed (filters as `list_flows`)."""
        statuses = tuple(statuses)
        if isinstance(updated_before, timedelta):
            # Fixed once, so that every page uses the same cut-off.
            updated_before = datetime.now().astimezone() - updated_before
        token: str | None = None
        while True:
            page = self.list_flows(
                statuses=statuses,
                phase_states=phase_states,
                updated_before=updated_before,
                definition_name=definition_name,
                filter=filter,
                alerting=alerting,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
                retry=retry,
                parent_flow_id=parent_flow_id,
            )
            yield from page.flows
            token = page.next_page_token
            if token is None:
                return

    def count_flows(
        self,
        filter: str = "",
        *,
        group_by: str = "",
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> FlowCount:
        """Count the caller's flows matching `filter` (every flow when empty), in all and per
        `group_by` key: "status", "definition", "phase.<name>", or "" (the total only)."""
        request = flow_service_pb2.CountFlowsRequest(filter=filter, group_by=group_by)
        response = self._call(lambda s: s.CountFlows, request, timeout, retry)
        return FlowCount._from_proto(response)

    def get_retention_policy(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> RetentionPolicy:
        """The tenant's retention policy (scope ``retention:admin``; retain_days 0: none)."""
        request = flow_service_pb2.GetRetentionPolicyRequest()
        response = self._call(lambda s: s.GetRetentionPolicy, request, timeout, retry)
        return RetentionPolicy._from_proto(response.policy)

    def set_retention_policy(
        self,
        retain_days: int,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> RetentionPolicy:
        """Keep the tenant's COMPLETED and CANCELLED flows `retain_days` (1..36500) after their
        last change, then archive and delete them; 0 removes the tenant's own policy. Scope
        ``retention:admin``; idempotent."""
        request = flow_service_pb2.SetRetentionPolicyRequest(retain_days=retain_days)
        response = self._call(lambda s: s.SetRetentionPolicy, request, timeout, retry)
        return RetentionPolicy._from_proto(response.policy)

    def validate_transition(
        self,
        *,
        flow_id: str | None = None,
        definition_name: str | None = None,
        phase: str | None = None,
        from_state: EnumLike | None = None,
        to_state: EnumLike | None = None,
        from_status: EnumLike | None = None,
        to_status: EnumLike | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> ValidationResult:
        """Ask whether a transition is legal, without changing anything (a dry run).

        A phase transition needs `phase` and `to_state`; a flow transition `to_status`. With a
        `flow_id` the flow's actual state is used (and dependencies, pause, retry counters);
        without one, `from_state`/`from_status` is checked against the definition's tables.
        A refusal is returned in `ValidationResult.error`, not raised.
        """
        request = _requests.validate_transition(
            flow_id=flow_id,
            definition_name=definition_name,
            phase=phase,
            from_state=from_state,
            to_state=to_state,
            from_status=from_status,
            to_status=to_status,
        )
        response = self._call(lambda s: s.ValidateTransition, request, timeout, retry)
        return ValidationResult._from_proto(response)

    def transition_phase(
        self,
        flow_id: str,
        phase: str,
        target_state: EnumLike,
        *,
        reason: str = "",
        error_code: EnumLike | None = None,
        error_message: str = "",
        error_details: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Move a phase to `target_state` (a `PhaseState`, its number or its name).

        A move to FAILED or RETRY_NEEDED carries the failure report: `error_code` (e.g.
        ``ErrorCode.AGENT_TIMEOUT``), `error_message` and `error_details`.

        Raises:
            InvalidPhase, InvalidPhaseTransition, PhaseOrderViolation, FlowPaused,
            FlowTerminal, VersionConflict: see the errors module.
        """
        request = _requests.transition_phase(
            flow_id,
            phase,
            target_state,
            reason=reason,
            error_code=error_code,
            error_message=error_message,
            error_details=error_details,
            metadata=metadata,
            request_id=request_id,
            expected_version=expected_version,
        )
        response = self._call(lambda s: s.TransitionPhase, request, timeout, retry)
        return MutationResult._from_proto(response)

    def update_phase_progress(
        self,
        flow_id: str,
        phase: str,
        progress: float,
        *,
        reason: str = "",
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Report in-phase progress `progress` in [0, 1] for a phase that is IN_PROGRESS."""
        request = _requests.update_phase_progress(
            flow_id,
            phase,
            progress,
            reason=reason,
            metadata=metadata,
            request_id=request_id,
            expected_version=expected_version,
        )
        response = self._call(lambda s: s.UpdatePhaseProgress, request, timeout, retry)
        return MutationResult._from_proto(response)

    def heartbeat(
        self,
        flow_id: str,
        phase: str,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> HeartbeatResult:
        """A worker's sign of life for `phase` (IN_PROGRESS): pushes its heartbeat timeout back.

        Writes no history and no new flow version. Raises `InvalidPhaseTransition` when the
        phase is not running (e.g. the server timed it out: stop working on it).
        """
        request = _requests.heartbeat(flow_id, phase)
        response = self._call(lambda s: s.Heartbeat, request, timeout, retry)
        return HeartbeatResult._from_proto(response)

    def rollback(
        self,
        flow_id: str,
        phase: str,
        *,
        cascade: bool = True,
        reason: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Roll a COMPLETED or FAILED phase back, with its started dependents unless `cascade`
        is False (then active dependents raise `DependentPhasesActive`)."""
        request = _requests.rollback(
            flow_id,
            phase,
            cascade=cascade,
            reason=reason,
            request_id=request_id,
            expected_version=expected_version,
        )
        response = self._call(lambda s: s.Rollback, request, timeout, retry)
        return MutationResult._from_proto(response)

    def retry(
        self,
        flow_id: str,
        phase: str,
        *,
        force: bool = False,
        reason: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Retry a phase: FAILED → RETRY_NEEDED, RETRY_NEEDED → IN_PROGRESS (one attempt).

        `force` retries a non-retryable failure (needs the ``flows:admin`` scope).

        Raises:
            MaxRetriesExceeded, RetryNotAllowed: with the `recovery` that remains.
        """
        request = _requests.retry(
            flow_id,
            phase,
            force=force,
            reason=reason,
            request_id=request_id,
            expected_version=expected_version,
        )
        response = self._call(lambda s: s.Retry, request, timeout, retry)
        return MutationResult._from_proto(response)

    def get_recovery_options(
        self, flow_id: str, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> RecoveryOptions:
        """Return the recovery actions for the flow's current state, most useful first."""
        request = flow_service_pb2.GetRecoveryOptionsRequest(flow_id=flow_id)
        response = self._call(lambda s: s.GetRecoveryOptions, request, timeout, retry)
        return RecoveryOptions._from_proto(response)

    def execute_recovery(
        self,
        option: RecoveryOption,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Send the request a `RecoveryOption` carries (with a fresh ``request_id``)."""
        if option.request is None:
            raise ValueError(f"recovery option {option.action.name} carries no request")
        request = _requests.with_request_id(option.request, request_id)
        response: Any
        match request:
            case flow_service_pb2.RetryRequest():
                response = self._call(lambda s: s.Retry, request, timeout, retry)
            case flow_service_pb2.RollbackRequest():
                response = self._call(lambda s: s.Rollback, request, timeout, retry)
            case flow_service_pb2.TransitionPhaseRequest():
                response = self._call(lambda s: s.TransitionPhase, request, timeout, retry)
            case flow_service_pb2.ResumeFlowRequest():
                response = self._call(lambda s: s.ResumeFlow, request, timeout, retry)
            case flow_service_pb2.CancelFlowRequest():
                response = self._call(lambda s: s.CancelFlow, request, timeout, retry)
            case flow_service_pb2.PauseFlowRequest():
                response = self._call(lambda s: s.PauseFlow, request, timeout, retry)
            case flow_service_pb2.SkipPhaseRequest():
                response = self._call(lambda s: s.SkipPhase, request, timeout, retry)
        return MutationResult._from_proto(response)

    def pause_flow(
        self,
        flow_id: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Pause a non-terminal flow: no phase may start until it is resumed."""
        request = _requests.pause_flow(
            flow_id, reason=reason, request_id=request_id, expected_version=expected_version
        )
        response = self._call(lambda s: s.PauseFlow, request, timeout, retry)
        return MutationResult._from_proto(response)

    def resume_flow(
        self,
        flow_id: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Resume a paused flow to the status derived from its phases."""
        request = _requests.resume_flow(
            flow_id, reason=reason, request_id=request_id, expected_version=expected_version
        )
        response = self._call(lambda s: s.ResumeFlow, request, timeout, retry)
        return MutationResult._from_proto(response)

    def cancel_flow(
        self,
        flow_id: str,
        *,
        reason: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> MutationResult:
        """Cancel a non-terminal flow; CANCELLED is terminal."""
        request = _requests.cancel_flow(
            flow_id, reason=reason, request_id=request_id, expected_version=expected_version
        )
        response = self._call(lambda s: s.CancelFlow, request, timeout, retry)
        return MutationResult._from_proto(response)

    def list_flow_history(
        self,
        flow_id: str,
        *,
        after_version: int = 0,
        page_size: int = 0,
        page_token: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> HistoryPage:
        """Return one page of a flow's history, in version order, after `after_version`."""
        request = _requests.list_flow_history(
            flow_id, after_version=after_version, page_size=page_size, page_token=page_token
        )
        response = self._call(lambda s: s.ListFlowHistory, request, timeout, retry)
        return HistoryPage._from_proto(response)

    def iter_flow_history(
        self,
        flow_id: str,
        *,
        after_version: int = 0,
        page_size: int = 0,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Generator[HistoryEntry, None, None]:
        """Yield every history entry of a flow after `after_version`, fetching pages as needed."""
        token: str | None = None
        while True:
            page = self.list_flow_history(
                flow_id,
                after_version=after_version,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
                retry=retry,
            )
            yield from page.history_entries
            token = page.next_page_token
            if token is None:
                return

    def get_flow_definition(
        self,
        name: str = "discovery",
        *,
        version: int = 0,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> FlowDefinition:
        """Return a flow definition (the latest version when `version` is 0)."""
        request = flow_service_pb2.GetFlowDefinitionRequest(name=name, version=version)
        response = self._call(lambda s: s.GetFlowDefinition, request, timeout, retry)
        return FlowDefinition._from_proto(response.definition)

    # --- definitions ---------------------------------------------------------------------

    def create_flow_definition(
        self,
        definition: Mapping[str, Any] | definition_pb2.FlowDefinition,
        *,
        allow_shadow_builtin: bool = False,
        validate_only: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> DefinitionRegistration:
        """Register a definition for the caller's tenant (needs the ``definitions:write`` scope).

        `definition` is a ``FlowDefinition`` message or a mapping with its fields (a parsed YAML
        or JSON file). The body identical to the latest version returns that version
        (``created`` False); any other body becomes the next version. With `validate_only`
        nothing is stored.

        Raises:
            MalformedRequest: every structural problem, each with its path
                (``.field_violations``); DefinitionShadowsBuiltin, RequestIdReused,
                PermissionDenied.
        """
        request = _requests.create_flow_definition(
            definition,
            allow_shadow_builtin=allow_shadow_builtin,
            validate_only=validate_only,
            request_id=request_id,
        )
        response = self._call(lambda s: s.CreateFlowDefinition, request, timeout)
        return DefinitionRegistration._from_proto(response)

    def list_flow_definitions(
        self,
        *,
        name: str = "",
        page_size: int = 0,
        page_token: str | None = None,
        timeout: float | None = None,
    ) -> DefinitionPage:
        """One page of the definitions the caller can use: the latest version of each name (its
        tenant's and the built-ins), or with `name` every version of it, newest first."""
        request = flow_service_pb2.ListFlowDefinitionsRequest(
            name=name, page_size=page_size, page_token=page_token or ""
        )
        response = self._call(lambda s: s.ListFlowDefinitions, request, timeout)
        return DefinitionPage._from_proto(response)

    def iter_flow_definitions(
        self, *, name: str = "", page_size: int = 0, timeout: float | None = None
    ) -> Generator[FlowDefinition, None, None]:
        """Every definition `list_flow_definitions` lists, page after page."""
        token: str | None = None
        while True:
            page = self.list_flow_definitions(
                name=name, page_size=page_size, page_token=token, timeout=timeout
            )
            yield from page.definitions
            token = page.next_page_token
            if token is None:
                return

    # --- webhooks (scope webhooks:admin; docs/webhooks.md) ---------------------------------

    def create_webhook(
        self,
        url: str,
        *,
        statuses: Iterable[EnumLike] = (),
        definition_name: str = "",
        secret: str = "",
        filter: str = "",
        timeout: float | None = None,
    ) -> webhook_pb2.CreateWebhookResponse:
        """Subscribe `url` to the tenant's flow changes; the response carries the webhook and
        its signing secret (returned only here; `secret` empty: the server makes one).
        `filter`: only changes after which the flow matches it (docs/filters.md, without
        ``stuck`` and relative times), e.g. ``'status = FAILED AND labels.team = "core"'``.

        Raises:
            MalformedRequest: a refused URL (not https, or a private address), a bad secret,
                a filter that does not parse (``details["position"]``).
        """
        request = webhook_pb2.CreateWebhookRequest(
            url=url,
            statuses=[_requests.flow_status(status) for status in statuses],
            definition_name=definition_name,
            secret=secret,
            filter=filter,
        )
        return self._call(lambda s: s.CreateWebhook, request, timeout)

    def list_webhooks(self, *, timeout: float | None = None) -> list[webhook_pb2.Webhook]:
        """The tenant's webhooks with their delivery status (never their secrets)."""
        request = webhook_pb2.ListWebhooksRequest()
        response = self._call(lambda s: s.ListWebhooks, request, timeout)
        return list(response.webhooks)

    def delete_webhook(self, webhook_id: str, *, timeout: float | None = None) -> None:
        """Delete a webhook (WebhookNotFound for an unknown id or another tenant's)."""
        request = webhook_pb2.DeleteWebhookRequest(webhook_id=webhook_id)
        self._call(lambda s: s.DeleteWebhook, request, timeout)

    def test_webhook(
        self, webhook_id: str, *, timeout: float | None = None
    ) -> webhook_pb2.TestWebhookResponse:
        """Send one signed ``webhook.test`` event now; the receiver's answer."""
        request = webhook_pb2.TestWebhookRequest(webhook_id=webhook_id)
        return self._call(lambda s: s.TestWebhook, request, timeout)

    def replay_webhook(
        self,
        webhook_id: str,
        *,
        after_cursor: str = "",
        since: datetime | None = None,
        timeout: float | None = None,
    ) -> webhook_pb2.Webhook:
        """Deliver again every change after `after_cursor` (a delivery's ``cursor``), or since
        `since`, or (neither) from now on; enables a disabled webhook."""
        request = webhook_pb2.ReplayWebhookRequest(webhook_id=webhook_id, after_cursor=after_cursor)
        if since is not None:
            request.since_time.FromDatetime(since)
        response = self._call(lambda s: s.ReplayWebhook, request, timeout)
        return response.webhook

    def skip_phase(
        self,
        flow_id: str,
        phase: str,
        *,
        reason: str = "",
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> MutationResult:
        """Skip an optional phase (→ SKIPPED, which satisfies its dependents).

        Raises:
            InvalidPhaseTransition: the phase is not optional, or not skippable from its state;
            PhaseOrderViolation, FlowPaused, FlowTerminal, VersionConflict.
        """
        request = _requests.skip_phase(
            flow_id,
            phase,
            reason=reason,
            metadata=metadata,
            request_id=request_id,
            expected_version=expected_version,
        )
        response = self._call(lambda s: s.SkipPhase, request, timeout)
        return MutationResult._from_proto(response)

    # --- bulk actions (docs/bulk-actions.md; scope flows:admin) -------------------------------

    def start_bulk_action(
        self,
        action: EnumLike,
        *,
        filter: str = "",
        flow_ids: Iterable[str] = (),
        phase: str = "",
        reason: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> BulkAction:
        """Start a bulk action (``"RETRY"``, ``"CANCEL"``, ``"PAUSE"``, ``"RESUME"``,
        ``"ROLLBACK"`` or ``"SKIP"``; the last two need `phase`) over the flows matching
        `filter` or the given `flow_ids`; the server works through it in the background.
        Idempotent on `request_id` (generated when None), so it is retried safely."""
        request = flow_service_pb2.StartBulkActionRequest(
            request_id=request_id or new_request_id(),
            action=flow_service_pb2.BulkActionType.ValueType(BulkActionType.parse(action)),
            filter=filter,
            flow_ids=list(flow_ids),
            phase=phase,
            reason=reason,
        )
        response = self._call(lambda s: s.StartBulkAction, request, timeout, retry)
        return BulkAction._from_proto(response.bulk_action)

    def get_bulk_action(
        self,
        bulk_action_id: str,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> BulkAction:
        """Return one bulk action (`NotFound` if the caller's tenant has no such action)."""
        request = flow_service_pb2.GetBulkActionRequest(bulk_action_id=bulk_action_id)
        response = self._call(lambda s: s.GetBulkAction, request, timeout, retry)
        return BulkAction._from_proto(response.bulk_action)

    def list_bulk_actions(
        self,
        *,
        page_size: int = 0,
        page_token: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> tuple[list[BulkAction], str | None]:
        """One page of the caller's bulk actions, newest first, and the next page's token."""
        request = flow_service_pb2.ListBulkActionsRequest(
            page_size=page_size, page_token=page_token or ""
        )
        response = self._call(lambda s: s.ListBulkActions, request, timeout, retry)
        actions = [BulkAction._from_proto(a) for a in response.bulk_actions]
        return actions, response.next_page_token or None

    def list_bulk_action_results(
        self,
        bulk_action_id: str,
        *,
        outcome: EnumLike | None = None,
        page_size: int = 0,
        page_token: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> tuple[list[BulkFlowResult], str | None]:
        """One page of a bulk action's per-flow results in the order its flows are taken (only
        `outcome`, e.g. ``"REFUSED"``, when given) and the next page's token."""
        request = flow_service_pb2.ListBulkActionResultsRequest(
            bulk_action_id=bulk_action_id,
            outcome=flow_service_pb2.BulkFlowOutcome.ValueType(
                BulkFlowOutcome.parse(outcome) if outcome is not None else 0
            ),
            page_size=page_size,
            page_token=page_token or "",
        )
        response = self._call(lambda s: s.ListBulkActionResults, request, timeout, retry)
        results = [BulkFlowResult._from_proto(r) for r in response.results]
        return results, response.next_page_token or None

    def iter_bulk_action_results(
        self,
        bulk_action_id: str,
        *,
        outcome: EnumLike | None = None,
        page_size: int = 0,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Generator[BulkFlowResult, None, None]:
        """Yield a bulk action's per-flow results (`list_bulk_action_results`), fetching pages
        as needed."""
        token: str | None = None
        while True:
            results, token = self.list_bulk_action_results(
                bulk_action_id,
                outcome=outcome,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
                retry=retry,
            )
            yield from results
            if token is None:
                return

    def cancel_bulk_action(
        self,
        bulk_action_id: str,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> BulkAction:
        """Cancel a running bulk action (flows not taken yet are left alone)."""
        request = flow_service_pb2.CancelBulkActionRequest(bulk_action_id=bulk_action_id)
        response = self._call(lambda s: s.CancelBulkAction, request, timeout, retry)
        return BulkAction._from_proto(response.bulk_action)

    def watch_bulk_action(self, bulk_action_id: str) -> Generator[BulkAction, None, None]:
        """Yield the bulk action now and whenever its progress changes, until it finishes."""
        metadata = self._config.metadata()
        call = self._service().WatchBulkAction(
            flow_service_pb2.WatchBulkActionRequest(bulk_action_id=bulk_action_id),
            metadata=metadata,
        )
        try:
            for response in call:
                yield BulkAction._from_proto(response.bulk_action)
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def decide_phase(
        self,
        flow_id: str,
        phase: str,
        decision: EnumLike,
        *,
        comment: str = "",
        request_id: str | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> MutationResult:
        """Decide on a phase waiting for approval (needs the flows:approve scope).

        `decision` is an `ApprovalDecision` (or its name: ``"APPROVE"``, ``"REJECT"``,
        ``"REQUEST_CHANGES"``): APPROVE → COMPLETED, REQUEST_CHANGES → IN_PROGRESS, REJECT →
        FAILED (non-retryable APPROVAL_REJECTED). The approver (the token's subject), decision
        and comment are recorded on the phase (`Phase.approval`) and in history.

        Raises:
            PermissionDenied: no flows:approve scope, or the phase's policy names a scope or
                claim the token lacks; InvalidPhaseTransition (not WAITING_APPROVAL),
                PhaseOrderViolation, FlowPaused, FlowTerminal, VersionConflict.
        """
        request = _requests.decide_phase(
            flow_id,
            phase,
            decision,
            comment=comment,
            request_id=request_id,
            expected_version=expected_version,
        )
        response = self._call(lambda s: s.DecidePhase, request, timeout)
        return MutationResult._from_proto(response)

    def _pause(self, delay: float) -> None:
        """Wait `delay` seconds before a stream reconnects, or less if the client closes."""
        self._closed_event.wait(delay)

    # --- streams -------------------------------------------------------------------------

    def watch(
        self,
        flow_id: str,
        *,
        after_version: int | None = None,
        keep_open: bool = False,
        include_heartbeats: bool = False,
        children_depth: int = 0,
        include_dependencies: bool = False,
        cursor: str | None = None,
        retry: RetryPolicy | None = None,
        on_reconnect: ReconnectListener | None = None,
    ) -> Generator[FlowEvent, None, None]:
        """Yield a flow's events: a snapshot (or the changes after `after_version`), then each
        change as it commits, in version order.

        Disconnects, server restarts, SERVER_SHUTTING_DOWN and SUBSCRIBER_TOO_SLOW are handled
        by reconnecting from the last version seen, with backoff (`watch_retry`); no event is
        yielded twice and none is missed. The iteration ends after the terminal event unless
        `keep_open`. Heartbeats are yielded only with `include_heartbeats`. `retry` overrides
        the client's `watch_retry` for this stream; `on_reconnect(error, attempt, delay)` is
        called before each reconnection (for logging, metrics, tests).

        With `children_depth` (1-5) the events of the flow's child flows down to that many
        levels come too (children created later included), and with `include_dependencies`
        the changes of the phases its `external_dependencies` wait for; each event says which
        flow it is about (`FlowEvent.flow_id`, `relation`, `parent_flow_id`, `waiting`). Such a
        stream starts with a snapshot event per flow, resumes by `FlowEvent.cursor` (pass it
        as `cursor`; not with `after_version`) and ends after the flow's terminal transaction
        (docs/child_flows.md, "Watching a tree").
        """
        position: FlowWatch | TreeWatch
        if children_depth or include_dependencies:
            position = TreeWatch(
                flow_id,
                children_depth=children_depth,
                include_dependencies=include_dependencies,
                cursor=cursor,
                keep_open=keep_open,
                include_heartbeats=include_heartbeats,
                after_version=after_version,
            )
        else:
            position = FlowWatch(
                flow_id,
                after_version=after_version,
                keep_open=keep_open,
                include_heartbeats=include_heartbeats,
                cursor=cursor,
            )
        yield from self._stream(lambda s: s.WatchFlow, position, retry, on_reconnect)

    def watch_flows(
        self,
        *,
        statuses: Iterable[EnumLike] = (),
        definition_name: str | None = None,
        flow_ids: Iterable[str] = (),
        cursor: str | None = None,
        include_heartbeats: bool = False,
        filter: str = "",
        retry: RetryPolicy | None = None,
        on_reconnect: ReconnectListener | None = None,
    ) -> Generator[FlowEvent, None, None]:
        """Yield the events of every matching flow of the caller's tenant, resuming as `watch`
        (`retry` and `on_reconnect` as there).

        `filter` (docs/filters.md) is evaluated on each flow as the change left it.

        Each event carries a `FlowEvent.cursor`; pass the last one as `cursor` to resume later
        (None: start with a snapshot of every matching flow).
        """
        position = FlowsWatch(
            statuses=tuple(statuses),
            definition_name=definition_name,
            flow_ids=tuple(flow_ids),
            cursor=cursor,
            include_heartbeats=include_heartbeats,
            filter=filter,
        )
        yield from self._stream(lambda s: s.WatchFlows, position, retry, on_reconnect)

    def _stream(
        self,
        method: Callable[[flow_service_pb2_grpc.FlowStateServiceStub], Any],
        position: FlowWatch | FlowsWatch | TreeWatch,
        policy: RetryPolicy | None,
        on_reconnect: ReconnectListener | None,
    ) -> Generator[FlowEvent, None, None]:
        state = RetryState(policy or self._config.watch_retry)
        while True:
            state.begin()
            if self._closed:
                return
            metadata = self._config.metadata()
            call = method(self._service())(position.request(), metadata=metadata)
            try:
                for response in call:
                    state.reset()
                    event = position.accept(response)
                    if event is not None:
                        yield event
                    if position.done:
                        return
            except grpc.RpcError as exc:
                if self._closed:
                    return
                error = error_from_rpc_error(exc)
                delay = state.next_delay(error, retryable=is_resumable(error))
                if delay is None:
                    raise error from exc
                if on_reconnect is not None:
                    on_reconnect(error, state.attempt, delay)
                self._pause(delay)
                continue
            finally:
                call.cancel()
            if position.ended_for_good():
                return
            delay = state.next_backoff()
            if delay is None:
                return
            if on_reconnect is not None:
                # A clean end before the stream is over (a server draining without a status).
                ended = Unavailable(
                    "stream ended early; resuming", grpc_code=grpc.StatusCode.UNAVAILABLE
                )
                on_reconnect(ended, state.attempt, delay)
            self._pause(delay)
