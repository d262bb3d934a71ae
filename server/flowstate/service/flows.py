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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType

from flowstate.core.children import child_failure, follow_command
from flowstate.core.commands import (
    FOLLOWING_STATES,
    CancelChild,
    CancelFlow,
    Command,
    Context,
    Decision,
    FollowChild,
    LinkChild,
    StartChild,
    UpdatePhaseProgress,
    apply_command,
    check_heartbeat,
    create_flow,
)
from flowstate.core.definitions import BUILTIN_DEFINITIONS, FlowDefinition
from flowstate.core.errors import FlowStateError
from flowstate.core.model import (
    ErrorCode,
    ExternalDependency,
    Flow,
    FlowStatus,
    HistoryEntry,
    PhaseState,
    Tenant,
)
from flowstate.core.preview import (
    TransitionVerdict,
    preview_flow_transition,
    preview_phase_transition,
    table_flow_transition,
    table_phase_transition,
)
from flowstate.core.recovery import RecoveryOption, get_recovery_options
from flowstate.core.rules import TERMINAL_STATUSES
from flowstate.core.timers import TimerKind, plan_timers
from flowstate.service.idempotency import fingerprint
from flowstate.storage.flow_transaction import FlowTransaction
from flowstate.storage.limits import (
    DEFAULT_HISTORY_PAGE_SIZE,
    MAX_CHILD_FLOW_DEPTH,
    MAX_CHILDREN_PER_FLOW,
    MAX_DISPLAY_NAME_LENGTH,
    MAX_EXTERNAL_DEPENDENCIES,
    MAX_REASON_LENGTH,
    MAX_TREE_FLOWS,
    check_command,
    check_context,
    check_flow_id,
    check_labels,
    check_name,
    check_tenant,
    check_text,
    check_version,
    malformed,
)
from flowstate.storage.store import (
    FlowCount,
    FlowPage,
    FlowQuery,
    FlowStore,
    HistoryPage,
    IdempotencyKey,
    MutationResult,
    Outcome,
    StoredKey,
    Write,
)
from flowstate.storage.values import TimerSync

__all__ = [
    "FlowService",
    "FlowTree",
    "Heartbeat",
    "RecoveryView",
    "TransitionCheck",
    "TreeDecide",
    "follow_through",
    "timer_sync",
    "update_tree",
]


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


class _NeedLocksError(FlowStateError):
    """Internal: a decision must change descendants this transaction did not lock first.

    Raised inside the transaction (which rolls back, releasing the flow's lock); `mutate` runs
    it again with them in `lock_first`, so that a flow is always locked after its descendants.
    """

    def __init__(self, level: int, flow_ids: list[str]) -> None:
        super().__init__(ErrorCode.INTERNAL, "child flows must be locked first")
        self.level = level
        self.flow_ids = flow_ids


@dataclass(frozen=True, slots=True)
class FlowTree:
    """A flow and its descendants down to a depth, breadth first (`truncated` when
    `MAX_TREE_FLOWS` cut it)."""

    flow: Flow
    descendants: tuple[Flow, ...]
    truncated: bool = False


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
    child_options: tuple[tuple[Flow, RecoveryOption], ...] = ()
    """The options of the active child flows the flow's phases follow (and of theirs), each
    with the child it acts on, after the flow's own."""


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
        external_dependencies: tuple[ExternalDependency, ...] = (),
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
        externals = _check_external_dependencies(external_dependencies, requested_id)
        key = self._key(
            ctx,
            "create_flow",
            definition_name=definition_name,
            **({"definition_version": version} if version else {}),
            display_name=display_name,
            labels=dict(labels),
            flow_id=requested_id,
            **({"deadline": deadline.isoformat()} if deadline else {}),
            **({"external_dependencies": externals} if externals else {}),
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
            flow = decision.flow
            if externals:
                await _check_external_targets(tx, definition, externals)
                flow = replace(flow, external_dependencies=externals)
            return Write(flow, decision.entries, key)

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

        async def fixed(tx: FlowTransaction, flow: Flow) -> Command:
            return command

        heartbeats: list[float] = []
        result = await self._mutate_tree(
            tenant, flow_id, ctx, key, expected_version, fixed, heartbeats=heartbeats
        )
        if heartbeats and isinstance(command, UpdatePhaseProgress):
            await self.store.timers.touch_heartbeat(
                tenant, flow_id, command.phase, TimerKind.HEARTBEAT_TIMEOUT.value, heartbeats[-1]
            )
        return result

    async def link_child_flow(
        self,
        tenant: Tenant,
        flow_id: str,
        phase: str,
        child_flow_id: str,
        ctx: Context,
        *,
        reason: str = "",
        expected_version: int | None = None,
    ) -> MutationResult:
        """Start the child_flow `phase` of `flow_id` following the existing flow
        `child_flow_id` instead of a new child (docs/child_flows.md).

        The child must be a root flow of the same tenant (FLOW_NOT_FOUND otherwise, as for any
        flow of another tenant), follow the phase's child definition (and version, when the
        phase pins one), and not be the parent or one of its ancestors
        (CHILD_FLOW_NOT_LINKABLE); the limits of `MAX_CHILD_FLOW_DEPTH` and
        `MAX_CHILDREN_PER_FLOW` hold. The phase starts like `TransitionPhase` to IN_PROGRESS
        (order, pause, retry gate) and at once follows the child's current state.
        """
        check_tenant(tenant)
        check_context(ctx)
        flow_id = check_flow_id(flow_id)
        child_id = check_flow_id(child_flow_id, "child_flow_id")
        check_name("phase", phase)
        check_text("reason", reason, MAX_REASON_LENGTH)
        if expected_version is not None:
            check_version("expected_version", expected_version)
        if child_id == flow_id:
            raise _not_linkable(child_id, "a flow cannot be its own child")
        key = self._key(
            ctx,
            "link_child_flow",
            flow_id=flow_id,
            phase=phase,
            child_flow_id=child_id,
            reason=reason,
            expected_version=expected_version,
        )

        async def command(tx: FlowTransaction, parent: Flow) -> Command:
            found = await tx.lock_flows([child_id])
            if not found:
                raise FlowStateError(
                    ErrorCode.FLOW_NOT_FOUND,
                    f"Flow {child_id!r} does not exist",
                    flow_id=child_id,
                )
            child = found[0]
            if await tx.archived([child_id]):
                raise _not_linkable(
                    child_id,
                    f"flow {child_id} is archived (its retention has passed) and about to be "
                    "deleted",
                )
            definition = await tx.definition(parent.definition_name, parent.definition_version)
            spec = definition.phase(phase).child_flow
            if spec is not None:
                if child.definition_name != spec.definition_name or (
                    spec.definition_version and child.definition_version != spec.definition_version
                ):
                    raise _not_linkable(
                        child_id,
                        f"phase '{phase}' runs child flows of {spec.definition_name!r}"
                        + (f" v{spec.definition_version}" if spec.definition_version else "")
                        + f", not {child.definition_name!r} v{child.definition_version}",
                    )
                if child.parent_flow_id is not None:
                    raise _not_linkable(
                        child_id, f"flow {child_id} is already a child of {child.parent_flow_id}"
                    )
                if child_id in await tx.ancestors(parent.flow_id, MAX_CHILD_FLOW_DEPTH + 1):
                    raise _not_linkable(
                        child_id, f"flow {child_id} is an ancestor of {parent.flow_id}"
                    )
                await _check_child_limits(tx, parent, subtree_of=child)
                await tx.set_parent(child_id, parent.flow_id, phase)
            return LinkChild(phase, _follow_of(child), reason)

        return await self._mutate_tree(
            tenant, flow_id, ctx, key, expected_version, command, lock_first=[child_id]
        )

    async def _mutate_tree(
        self,
        tenant: Tenant,
        flow_id: str,
        ctx: Context,
        key: IdempotencyKey | None,
        expected_version: int | None,
        command_of: Callable[[FlowTransaction, Flow], Awaitable[Command]],
        *,
        lock_first: list[str] | None = None,
        heartbeats: list[float] | None = None,
    ) -> MutationResult:
        """`mutate`'s transaction: decide on the flow, perform the decision's effects on child
        flows, and let the parent phase follow the flow, all in one transaction.

        Lock order (docs/child_flows.md, "Atomicity"): a flow is locked after its
        descendants. The flow's parents are locked after it (walking up); descendants that a
        decision changes (a cancel cascade) must be locked before it, so when a decision
        needs some that were not, the transaction is rolled back and run again with them in
        `lock_first`, deepest first.
        """

        async def decide(
            tx: FlowTransaction, flow: Flow, stored: StoredKey | None, locked: set[str]
        ) -> Outcome:
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
                command = await command_of(tx, flow)
                definition = await tx.definition(flow.definition_name, flow.definition_version)
                decision = apply_command(
                    flow, definition, command, await _with_external(tx, flow, ctx)
                )
                if (
                    heartbeats is not None
                    and isinstance(command, UpdatePhaseProgress)
                    and not decision.entries
                ):
                    # A repeated report changes nothing but is still a heartbeat.
                    beat = definition.phase(command.phase).policy.heartbeat_timeout
                    if beat is not None:
                        heartbeats.append(beat)
                await _perform_effects(tx, decision, ctx, locked, 1)
            except _NeedLocksError:
                raise
            except FlowStateError:
                # A duplicate of this request may have committed while we waited for the lock
                # (its key is invisible to the lock statement's snapshot, and its effect is
                # what made this one fail): look again, now that it is visible.
                replay = await _replay_if_seen(tx, key)
                if replay is not None:
                    return replay
                raise
            if decision.entries:
                await _propagate_up(tx, decision.flow, ctx)
            return Write(
                decision.flow, decision.entries, key, timer_sync(decision, definition, ctx)
            )

        return await update_tree(
            self.store,
            tenant,
            flow_id,
            decide,
            request_id=ctx.request_id,
            now=ctx.now,
            lock_first=lock_first or (),
        )

    async def get_flow_tree(self, tenant: Tenant, flow_id: str, depth: int) -> FlowTree:
        """The flow and its descendants down to `depth` levels (at most `MAX_TREE_FLOWS`)."""
        flow = await self.store.get_flow(tenant, flow_id)
        depth = min(max(depth, 0), MAX_CHILD_FLOW_DEPTH)
        found: list[Flow] = []
        level = [flow.flow_id]
        truncated = False
        for _ in range(depth):
            if not level:
                break
            room = MAX_TREE_FLOWS - len(found)
            children = await self.store.children_of(tenant, level, room + 1)
            if len(children) > room:
                children, truncated = children[:room], True
            found.extend(children)
            level = [c.flow_id for c in children]
            if truncated:
                break
        return FlowTree(flow, tuple(found), truncated)

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
        due = await self.store.timers.touch_heartbeat(
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
        return await self.store.definitions.get(name, version, tenant=tenant)

    async def definition_of(self, flow: Flow) -> FlowDefinition:
        """The definition `flow` follows, in its tenant's view."""
        return await self.get_definition(
            flow.definition_name, flow.definition_version, tenant=flow.tenant
        )

    async def recovery_options(self, tenant: Tenant, flow_id: str) -> RecoveryView:
        """The ranked recovery options of a flow (the core's), with the flow they are for."""
        flow = await self.store.get_flow(tenant, flow_id)
        definition = await self.definition_of(flow)
        child_options: list[tuple[Flow, RecoveryOption]] = []
        level = [flow]
        for _ in range(MAX_CHILD_FLOW_DEPTH):
            followed = [
                p.child_flow_id
                for parent in level
                for p in parent.phases
                if p.child_flow_id is not None and p.state in FOLLOWING_STATES
            ]
            if not followed:
                break
            page = await self.store.list_flows(tenant, FlowQuery(flow_ids=tuple(followed)))
            level = [c for c in page.flows if c.status not in TERMINAL_STATUSES]
            for child in level:
                child_definition = await self.definition_of(child)
                child_options.extend(
                    (child, option) for option in get_recovery_options(child, child_definition)
                )
        return RecoveryView(
            flow, definition, get_recovery_options(flow, definition), tuple(child_options)
        )

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
                definition = await self.store.definitions.get(check.definition_name, tenant=tenant)
            return table_phase_transition(definition, check.phase, check.from_state, check.to_state)
        flow = await self.store.get_flow(tenant, check.flow_id)
        definition = await self.definition_of(flow)
        if check.to_state is not None:
            assert check.phase is not None
            return preview_phase_transition(flow, definition, check.phase, check.to_state, ctx)
        assert check.to_status is not None
        return preview_flow_transition(flow, definition, check.to_status, ctx)


# --- child flows and cross-flow dependencies (docs/child_flows.md) -----------------------------


def _not_linkable(child_id: str, why: str) -> FlowStateError:
    return FlowStateError(
        ErrorCode.CHILD_FLOW_NOT_LINKABLE,
        f"Flow {child_id} cannot be linked as a child: {why}",
        child_flow_id=child_id,
    )


def _follow_of(child: Flow) -> FollowChild:
    return FollowChild(
        phase="",
        child_flow_id=child.flow_id,
        child_status=child.status,
        child_progress=child.progress,
        child_error=child_failure(child) if child.status is FlowStatus.FAILED else None,
    )


def _check_external_dependencies(
    dependencies: tuple[ExternalDependency, ...], own_id: str | None
) -> tuple[ExternalDependency, ...]:
    if len(dependencies) > MAX_EXTERNAL_DEPENDENCIES:
        raise malformed(
            "external_dependencies",
            f"at most {MAX_EXTERNAL_DEPENDENCIES} external dependencies",
            limit=MAX_EXTERNAL_DEPENDENCIES,
        )
    checked = []
    for index, dependency in enumerate(dependencies):
        field = f"external_dependencies[{index}]"
        check_name(f"{field}.phase", dependency.phase)
        check_name(f"{field}.flow_phase", dependency.flow_phase)
        other = check_flow_id(dependency.flow_id, f"{field}.flow_id")
        if other == own_id:
            raise malformed(f"{field}.flow_id", "a flow cannot depend on itself")
        checked.append(ExternalDependency(dependency.phase, other, dependency.flow_phase))
    if len(set(checked)) != len(checked):
        raise malformed("external_dependencies", "an external dependency is listed twice")
    return tuple(checked)


async def _check_external_targets(
    tx: FlowTransaction, definition: FlowDefinition, externals: tuple[ExternalDependency, ...]
) -> None:
    """Every external dependency names a phase of this definition and an existing phase of a
    flow of the tenant (another tenant's flow is FLOW_NOT_FOUND, as always)."""
    named = sorted({d.flow_id for d in externals})
    # Held FOR KEY SHARE until COMMIT, then checked against the archive catalog: a flow that
    # retention archived (about to be deleted) cannot become a dependency (docs/retention.md).
    others = {f.flow_id: f for f in await tx.share_flows(named)}
    archived = await tx.archived(sorted(others))
    for dependency in externals:
        definition.phase(dependency.phase)
        other = others.get(dependency.flow_id)
        if dependency.flow_id in archived:
            raise FlowStateError(
                ErrorCode.FLOW_NOT_FOUND,
                f"Flow {dependency.flow_id!r} is archived (its retention has passed) and about "
                "to be deleted: it cannot become a dependency",
                flow_id=dependency.flow_id,
                archived=True,
            )
        if other is None:
            raise FlowStateError(
                ErrorCode.FLOW_NOT_FOUND,
                f"Flow {dependency.flow_id!r} does not exist",
                flow_id=dependency.flow_id,
            )
        if dependency.flow_phase not in other.phase_states:
            raise FlowStateError(
                ErrorCode.INVALID_PHASE,
                f"Flow {dependency.flow_id} has no phase {dependency.flow_phase!r}",
                phase=dependency.flow_phase,
                valid_phases=list(other.phase_states),
            )


async def _with_external(tx: FlowTransaction, flow: Flow, ctx: Context) -> Context:
    """`ctx` with the states of the phases of other flows that `flow` depends on."""
    if not flow.external_dependencies:
        return ctx
    ids = sorted({d.flow_id for d in flow.external_dependencies})
    states = {
        (other.flow_id, name): state
        for other in await tx.read_flows(ids)
        for name, state in other.phase_states.items()
    }
    return replace(ctx, external_states=states)


async def _check_child_limits(
    tx: FlowTransaction, parent: Flow, subtree_of: Flow | None = None
) -> None:
    """CHILD_FLOW_LIMIT_EXCEEDED when `parent` has its most children, or a child would sit
    deeper than `MAX_CHILD_FLOW_DEPTH` (a linked flow's own children count: its subtree's
    depth is bounded by the same limit, so its deepest level is checked conservatively)."""
    children = await tx.count_children(parent.flow_id)
    if children >= MAX_CHILDREN_PER_FLOW:
        raise FlowStateError(
            ErrorCode.CHILD_FLOW_LIMIT_EXCEEDED,
            f"Flow {parent.flow_id} already has {children} child flows, the most allowed",
            limit=MAX_CHILDREN_PER_FLOW,
        )
    depth = len(await tx.ancestors(parent.flow_id, MAX_CHILD_FLOW_DEPTH + 1))
    extra = 0
    if subtree_of is not None and any(p.child_flow_id for p in subtree_of.phases):
        extra = 1  # a linked flow with children: at least one more level below it
    if depth + extra > MAX_CHILD_FLOW_DEPTH:
        raise FlowStateError(
            ErrorCode.CHILD_FLOW_LIMIT_EXCEEDED,
            f"A child of flow {parent.flow_id} would be deeper than {MAX_CHILD_FLOW_DEPTH} "
            "levels of child flows",
            limit=MAX_CHILD_FLOW_DEPTH,
        )


TreeDecide = Callable[[FlowTransaction, Flow, StoredKey | None, set[str]], Awaitable[Outcome]]
"""A decision in a tree: `FlowStore.update_flow`'s closure, also given the descendants this
attempt locked first (`follow_through` needs them)."""


async def update_tree(
    store: FlowStore,
    tenant: Tenant,
    flow_id: str,
    decide: TreeDecide,
    *,
    request_id: str,
    now: datetime,
    lock_first: Sequence[str] = (),
) -> MutationResult:
    """`FlowStore.update_flow` for a flow that may be in a tree of child flows.

    Lock order (docs/child_flows.md, "Atomicity"): a flow is locked after its descendants.
    Its parents are locked after it (`follow_through` walks up); descendants that a decision
    changes (a cancel cascade) must be locked before it, so when a decision needs some that
    were not (`follow_through` raises), the transaction is rolled back and run again with them
    in ``lock_first``, deepest level first.
    """
    levels: dict[int, set[str]] = {}
    for _ in range(MAX_CHILD_FLOW_DEPTH * 4 + 2):
        order = [i for level in sorted(levels, reverse=True) for i in sorted(levels[level])]
        locked = {i for ids in levels.values() for i in ids}

        async def attempt(
            tx: FlowTransaction, flow: Flow, stored: StoredKey | None, locked: set[str] = locked
        ) -> Outcome:
            return await decide(tx, flow, stored, locked)

        try:
            return await store.update_flow(
                tenant,
                flow_id,
                attempt,
                request_id=request_id,
                now=now,
                lock_first=[*lock_first, *order],
            )
        except _NeedLocksError as need:
            levels.setdefault(need.level, set()).update(need.flow_ids)
    raise FlowStateError(ErrorCode.INTERNAL, "child flows changed while being locked")


async def follow_through(
    tx: FlowTransaction, decision: Decision, ctx: Context, locked: set[str]
) -> None:
    """What a decision on a flow means for the rest of its tree, in the same transaction: the
    child flows it starts or cancels, and its parent phase (and theirs, up to the root)."""
    await _perform_effects(tx, decision, ctx, locked, 1)
    if decision.entries:
        await _propagate_up(tx, decision.flow, ctx)


async def _perform_effects(
    tx: FlowTransaction, decision: Decision, ctx: Context, locked: set[str], level: int
) -> None:
    """Create and cancel the child flows `decision` asks for, in this transaction.

    A child to cancel must have been locked before the flow (`_NeedLocksError` otherwise); its own
    cascade (grandchildren) is performed the same way, one level deeper.
    """
    cancels = [e for e in decision.effects if isinstance(e, CancelChild)]
    missing = sorted({e.child_flow_id for e in cancels} - locked)
    if missing:
        raise _NeedLocksError(level, missing)
    for effect in decision.effects:
        if isinstance(effect, StartChild):
            await _start_child(tx, decision.flow, effect, ctx)
            continue
        found = await tx.lock_flows([effect.child_flow_id])
        if not found or found[0].status in TERMINAL_STATUSES:
            continue
        child = found[0]
        definition = await tx.definition(child.definition_name, child.definition_version)
        cancelled = apply_command(child, definition, CancelFlow(reason=effect.reason), ctx)
        await _perform_effects(tx, cancelled, ctx, locked, level + 1)
        timers = timer_sync(cancelled, definition, ctx)
        await tx.write(Write(cancelled.flow, cancelled.entries, None, timers), new=False)


async def _start_child(tx: FlowTransaction, parent: Flow, effect: StartChild, ctx: Context) -> None:
    await _check_child_limits(tx, parent)
    spec = effect.spec
    definition = await tx.definition(spec.definition_name, spec.definition_version or None)
    created = create_flow(
        effect.child_flow_id,
        parent.tenant,
        definition,
        ctx,
        display_name=f"{parent.display_name or parent.flow_id} / {effect.phase}"[:256],
    )
    child = replace(created.flow, parent_flow_id=parent.flow_id, parent_phase=effect.phase)
    await tx.write(Write(child, created.entries), new=True)  # nothing runs yet: no timers


async def _propagate_up(tx: FlowTransaction, flow: Flow, ctx: Context) -> None:
    """Let the parent phase follow `flow`, and its parent the parent, up to the root."""
    current = flow
    for _ in range(MAX_CHILD_FLOW_DEPTH + 1):
        follow = follow_command(current)
        if follow is None or current.parent_flow_id is None:
            return
        found = await tx.lock_flows([current.parent_flow_id])
        if not found:
            return
        parent = found[0]
        definition = await tx.definition(parent.definition_name, parent.definition_version)
        decision = apply_command(parent, definition, follow, ctx)
        if not decision.entries:
            return
        timers = timer_sync(decision, definition, ctx)
        await tx.write(Write(decision.flow, decision.entries, None, timers), new=False)
        current = decision.flow
