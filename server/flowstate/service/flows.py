"""`FlowService`: the use cases of flows, between the servicer and the store.

Each use case checks its inputs (`flowstate.storage.limits`), asks the pure core to decide, and
hands the decision to the store's transaction runner, which reads under lock, runs the decision
as a closure and writes what it returns (`FlowStore.update_flow` / `insert_flow`). Idempotency
lives here: a request id stands for the fingerprint of its request (`idempotency.fingerprint`);
a repeat replays the stored first result, a different request under the same id is
REQUEST_ID_REUSED. The core's refusals propagate unchanged.

Reads go straight to the store; the dry run (`validate_transition`) and the recovery options
are answered by the core (`flowstate.core.preview`, `flowstate.core.recovery`) on a flow read
from the store, and never write.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from flowstate.core.commands import (
    Command,
    Context,
    Decision,
    UpdatePhaseProgress,
    apply_command,
    check_heartbeat,
    create_flow,
)
from flowstate.core.definitions import BUILTIN_DEFINITIONS, FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow, FlowStatus, HistoryEntry, PhaseState, Tenant
from flowstate.core.preview import (
    TransitionVerdict,
    preview_flow_transition,
    preview_phase_transition,
    table_flow_transition,
    table_phase_transition,
)
from flowstate.core.recovery import RecoveryOption, get_recovery_options
from flowstate.core.timers import TimerKind, plan_timers
from flowstate.service.idempotency import fingerprint
from flowstate.storage.limits import (
    DEFAULT_HISTORY_PAGE_SIZE,
    MAX_DISPLAY_NAME_LENGTH,
    MAX_REASON_LENGTH,
    check_command,
    check_context,
    check_flow_id,
    check_labels,
    check_name,
    check_tenant,
    check_text,
    check_version,
)
from flowstate.storage.store import (
    FlowCount,
    FlowPage,
    FlowQuery,
    FlowStore,
    FlowTransaction,
    HistoryPage,
    IdempotencyKey,
    MutationResult,
    Outcome,
    StoredKey,
    Write,
)
from flowstate.storage.values import TimerSync

__all__ = ["FlowService", "Heartbeat", "RecoveryView", "TransitionCheck", "timer_sync"]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a heartbeat did: the flow's version, and the phase's heartbeat deadline (None
    when the phase has no `heartbeat_timeout`)."""

    flow_version: int
    deadline: datetime | None


def timer_sync(decision: Decision, definition: FlowDefinition, ctx: Context) -> TimerSync | None:
    """The flow's timers after `decision` (None when its definition never needs one)."""
    if not definition.has_timers or not decision.entries:
        return None
    return TimerSync(plan_timers(decision.flow, definition, decision.entries), ctx.now)


@dataclass(frozen=True, slots=True)
class TransitionCheck:
    """A ValidateTransition question: exactly one of `phase` / `to_status` is set.

    `from_state` / `from_status` are None when a flow is named (its actual state is used).
    """

    flow_id: str | None
    definition_name: str
    phase: str | None = None
    from_state: PhaseState | None = None
    to_state: PhaseState | None = None
    from_status: FlowStatus | None = None
    to_status: FlowStatus | None = None


@dataclass(frozen=True, slots=True)
class RecoveryView:
    """A flow, its definition and its ranked recovery options."""

    flow: Flow
    definition: FlowDefinition
    options: list[RecoveryOption]


async def _replayed(tx: FlowTransaction, stored: StoredKey, key: IdempotencyKey) -> MutationResult:
    """The stored first result of `key`, or REQUEST_ID_REUSED when it stood for another request."""
    if not stored.matches(key):
        raise FlowStateError(
            ErrorCode.REQUEST_ID_REUSED,
            f"Request id {key.request_id!r} was already used for a different request",
            request_id=key.request_id,
        )
    return await tx.replay(stored)


async def _replay_if_seen(tx: FlowTransaction, key: IdempotencyKey | None) -> MutationResult | None:
    if key is None:
        return None
    stored = await tx.find_key(key.request_id)
    return None if stored is None else await _replayed(tx, stored, key)


class FlowService:
    """The flow use cases over one `FlowStore` (cheap to make: it holds only the store)."""

    def __init__(self, store: FlowStore) -> None:
        """Serve the use cases on `store`."""
        self.store = store

    # --- writes ---------------------------------------------------------------------------------

    async def create_flow(
        self,
        tenant: Tenant,
        *,
        definition_name: str,
        ctx: Context,
        display_name: str = "",
        labels: Mapping[str, str] = MappingProxyType({}),
        flow_id: str | None = None,
        definition_version: int | None = None,
        deadline: datetime | None = None,
    ) -> MutationResult:
        """Create a flow following `definition_name` at `definition_version` (None or 0: the
        latest) in the tenant's view (its own definitions and the built-ins).

        The flow keeps that version (docs/definitions.md). `flow_id` (a UUID) is generated when
        None. Idempotent on ``ctx.request_id`` when it is non-empty (the fingerprint covers
        definition, version, display name, labels and flow_id). DEFINITION_NOT_FOUND for an
        unknown definition or version (also another tenant's); MALFORMED_REQUEST for bad values
        or an existing `flow_id`. `deadline` (timezone-aware; None: the definition's, if any)
        is when the flow should be finished.
        """
        check_tenant(tenant)
        check_context(ctx)
        check_name("definition_name", definition_name)
        check_text("display_name", display_name, MAX_DISPLAY_NAME_LENGTH)
        check_labels(labels)
        requested_id = None if flow_id is None else check_flow_id(flow_id)
        if deadline is not None and deadline.utcoffset() is None:
            raise ValueError("deadline must be timezone-aware")
        version = None
        if definition_version:
            version = check_version("definition_version", definition_version, minimum=1)
        key = self._key(
            ctx,
            "create_flow",
            definition_name=definition_name,
            **({"definition_version": version} if version else {}),
            display_name=display_name,
            labels=dict(labels),
            flow_id=requested_id,
            **({"deadline": deadline.isoformat()} if deadline else {}),
        )

        async def decide(tx: FlowTransaction) -> Outcome:
            replay = await _replay_if_seen(tx, key)
            if replay is not None:
                return replay
            definition = await tx.definition(definition_name, version)
            decision = create_flow(
                requested_id or str(uuid.uuid4()),
                tenant,
                definition,
                ctx,
                display_name=display_name,
                labels=labels,
                deadline=deadline,
            )
            return Write(decision.flow, decision.entries, key)

        return await self.store.insert_flow(tenant, decide, now=ctx.now)

    async def import_flow(
        self, flow: Flow, entries: tuple[HistoryEntry, ...], ctx: Context
    ) -> MutationResult:
        """Store a flow built outside the commands (an import), with its initial entries.

        For import tools only (`flowstate.service.legacy`): the flow must be at version
        ``len(entries)`` and follow a stored definition. Idempotent on ``ctx.request_id`` like
        `create_flow` (the fingerprint covers the flow id and its phase states).
        """
        check_tenant(flow.tenant)
        check_context(ctx)
        flow_id = check_flow_id(flow.flow_id)
        check_text("display_name", flow.display_name, MAX_DISPLAY_NAME_LENGTH)
        check_labels(flow.labels)
        versions = [e.flow_version for e in entries]
        if versions != list(range(1, len(entries) + 1)) or flow.version != len(entries):
            raise ValueError(f"entry versions {versions} do not follow flow version 0")
        for entry in entries:
            check_text("reason", entry.reason, MAX_REASON_LENGTH)
        key = self._key(ctx, "import_flow", flow_id=flow_id, phase_states=flow.phase_states)

        async def decide(tx: FlowTransaction) -> Outcome:
            replay = await _replay_if_seen(tx, key)
            if replay is not None:
                return replay
            await tx.definition(flow.definition_name, flow.definition_version)
            return Write(flow, entries, key)

        return await self.store.insert_flow(flow.tenant, decide, now=ctx.now)

    async def mutate(
        self,
        tenant: Tenant,
        flow_id: str,
        command: Command,
        ctx: Context,
        *,
        expected_version: int | None = None,
    ) -> MutationResult:
        """Apply `command` to the flow in one transaction; return the flow and new entries.

        Under the flow's lock: replays a known ``ctx.request_id`` (same payload: the stored
        result with ``replayed=True``; different payload: REQUEST_ID_REUSED), checks
        `expected_version` (VERSION_CONFLICT with ``current_version``), decides with the core
        (its refusals propagate unchanged), then the store writes flow, history, idempotency
        key and the notification together. FLOW_NOT_FOUND for a missing flow or another
        tenant's. A command the core turns into no change (no entries) writes nothing but its
        key.
        """
        check_tenant(tenant)
        check_context(ctx)
        flow_id = check_flow_id(flow_id)
        check_command(command)
        if expected_version is not None:
            check_version("expected_version", expected_version)
        key = self._key(
            ctx, "mutate", flow_id=flow_id, command=command, expected_version=expected_version
        )

        async def decide(tx: FlowTransaction, flow: Flow, stored: StoredKey | None) -> Outcome:
            if key is not None and stored is not None:
                return await _replayed(tx, stored, key)
            try:
                if expected_version is not None and expected_version != flow.version:
                    raise FlowStateError(
                        ErrorCode.VERSION_CONFLICT,
                        f"Flow {flow_id!r} is at version {flow.version}, not {expected_version}",
                        current_version=flow.version,
                        expected_version=expected_version,
                    )
                definition = await tx.definition(flow.definition_name, flow.definition_version)
                decision = apply_command(flow, definition, command, ctx)
                if isinstance(command, UpdatePhaseProgress) and not decision.entries:
                    # A repeated report changes nothing but is still a heartbeat.
                    beat = definition.phase(command.phase).policy.heartbeat_timeout
                    if beat is not None:
                        heartbeats.append(beat)
            except FlowStateError:
                # A duplicate of this request may have committed while we waited for the lock
                # (its key is invisible to the lock statement's snapshot, and its effect is
                # what made this one fail): look again, now that it is visible.
                replay = await _replay_if_seen(tx, key)
                if replay is not None:
                    return replay
                raise
            return Write(
                decision.flow, decision.entries, key, timer_sync(decision, definition, ctx)
            )

        heartbeats: list[float] = []
        result = await self.store.update_flow(
            tenant, flow_id, decide, request_id=ctx.request_id, now=ctx.now
        )
        if heartbeats and isinstance(command, UpdatePhaseProgress):
            await self.store.touch_heartbeat(
                tenant, flow_id, command.phase, TimerKind.HEARTBEAT_TIMEOUT.value, heartbeats[-1]
            )
        return result

    async def heartbeat(self, tenant: Tenant, flow_id: str, phase: str) -> Heartbeat:
        """A worker's sign of life for `phase` (IN_PROGRESS): push its heartbeat timer back.

        Writes no history and no new flow version: only the timer row moves (docs/timers.md).
        The deadline is None when the phase has no `heartbeat_timeout`. INVALID_PHASE for an
        unknown phase, INVALID_PHASE_TRANSITION (with the phase's state) when it is not
        IN_PROGRESS (a late worker learns its phase timed out), FLOW_NOT_FOUND.
        """
        check_tenant(tenant)
        flow_id = check_flow_id(flow_id)
        flow = await self.store.get_flow(tenant, flow_id)
        definition = await self.definition_of(flow)
        seconds = definition.phase(phase).policy.heartbeat_timeout
        check_heartbeat(flow, definition, phase)
        if seconds is None:
            return Heartbeat(flow.version, None)
        due = await self.store.touch_heartbeat(
            tenant, flow_id, phase, TimerKind.HEARTBEAT_TIMEOUT.value, seconds
        )
        if due is None:  # the phase changed since the read (e.g. it just timed out)
            flow = await self.store.get_flow(tenant, flow_id)
            check_heartbeat(flow, definition, phase)
        return Heartbeat(flow.version, due)

    @staticmethod
    def _key(ctx: Context, operation: str, **payload: object) -> IdempotencyKey | None:
        if not ctx.request_id:
            return None
        return IdempotencyKey(ctx.request_id, operation, fingerprint(operation, **payload))

    # --- reads ----------------------------------------------------------------------------------

    async def get_flow(self, tenant: Tenant, flow_id: str) -> Flow:
        """The flow; FLOW_NOT_FOUND when it does not exist or belongs to another tenant."""
        return await self.store.get_flow(tenant, flow_id)

    async def list_flows(self, tenant: Tenant, query: FlowQuery) -> FlowPage:
        """One page of the tenant's flows matching `query` (see `FlowQuery`)."""
        return await self.store.list_flows(tenant, query)

    async def count_flows(
        self, tenant: Tenant, query: FlowQuery, *, group_by: str = "", phase: str | None = None
    ) -> FlowCount:
        """How many of the tenant's flows match `query`, per group (`FlowStore.count_flows`)."""
        return await self.store.count_flows(tenant, query, group_by=group_by, phase=phase)

    async def list_history(
        self,
        tenant: Tenant,
        flow_id: str,
        *,
        after_version: int = 0,
        page_size: int = DEFAULT_HISTORY_PAGE_SIZE,
        page_token: str = "",
    ) -> HistoryPage:
        """The flow's history after `after_version`, in version order, one page at a time."""
        return await self.store.list_history(
            tenant, flow_id, after_version=after_version, page_size=page_size, page_token=page_token
        )

    async def get_definition(
        self, name: str, version: int | None = None, *, tenant: Tenant | None = None
    ) -> FlowDefinition:
        """A definition in `tenant`'s view (None: built-ins only; its latest version when
        `version` is None), from the store's cache when it has been read before."""
        return await self.store.get_definition(name, version, tenant=tenant)

    async def definition_of(self, flow: Flow) -> FlowDefinition:
        """The definition `flow` follows, in its tenant's view."""
        return await self.get_definition(
            flow.definition_name, flow.definition_version, tenant=flow.tenant
        )

    async def recovery_options(self, tenant: Tenant, flow_id: str) -> RecoveryView:
        """The ranked recovery options of a flow (the core's), with the flow they are for."""
        flow = await self.store.get_flow(tenant, flow_id)
        definition = await self.definition_of(flow)
        return RecoveryView(flow, definition, get_recovery_options(flow, definition))

    async def validate_transition(
        self, tenant: Tenant, check: TransitionCheck, ctx: Context
    ) -> TransitionVerdict:
        """Whether a phase or flow transition is legal, and why not; never writes.

        Without a flow id only the tables and the definition's phase names are consulted
        (built-in definitions from memory: no database). With one, the core dry-runs the
        matching command on the flow as it is now.
        """
        if check.flow_id is None:
            if check.to_status is not None:
                assert check.from_status is not None
                return table_flow_transition(check.from_status, check.to_status)
            assert check.phase is not None
            assert check.from_state is not None
            assert check.to_state is not None
            # A built-in's name answers from memory: the tables are the same for every
            # definition (a tenant's shadow of it is checked with a flow id).
            definition = BUILTIN_DEFINITIONS.get(check.definition_name)
            if definition is None:
                definition = await self.store.get_definition(check.definition_name, tenant=tenant)
            return table_phase_transition(definition, check.phase, check.from_state, check.to_state)
        flow = await self.store.get_flow(tenant, check.flow_id)
        definition = await self.definition_of(flow)
        if check.to_state is not None:
            assert check.phase is not None
            return preview_phase_transition(flow, definition, check.phase, check.to_state, ctx)
        assert check.to_status is not None
        return preview_flow_transition(flow, definition, check.to_status, ctx)
