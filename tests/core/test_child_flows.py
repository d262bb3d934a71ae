"""Child flows in the pure core: the commands and effects of child_flow phases, how a parent
phase follows its child, external dependencies, and invariants over random trees (Hypothesis).

The random-tree properties drive an in-memory world that performs the decisions' effects and
the propagation to parents the way `flowstate.service.flows` does in one transaction, and check
after every command:

- every parent phase that follows an active child mirrors it (state, in-phase progress);
- a COMPLETED child_flow phase has a COMPLETED child;
- no child is active unless its parent phase follows it, or its parent was cancelled with an
  `abandon` policy (no orphan left running by a rollback, retry, skip or cascade);
- every flow's progress is its phases' progress, and its status in the flow table;
- the tree is a tree: each child's parent names it, depths stay within the limit.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowstate.core import (
    CancelFlow,
    Command,
    Flow,
    FlowDefinition,
    FlowStateError,
    FlowStatus,
    PhaseDefinition,
    PhaseError,
    PhaseState,
    Retry,
    Rollback,
    SkipPhase,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    calculate_progress,
    create_flow,
)
from flowstate.core.children import child_failure, follow_command
from flowstate.core.commands import (
    FOLLOWING_STATES,
    CancelChild,
    Decision,
    FollowChild,
    LinkChild,
    StartChild,
    check_external_order,
    child_flow_id_for,
)
from flowstate.core.definitions import ChildFlowSpec, ParentCancelPolicy, child_from_dict
from flowstate.core.model import ErrorCode, ExternalDependency, HistoryKind
from flowstate.core.rules import TERMINAL_STATUSES, flow_transition_allowed

from .support import RETRYABLE, TENANT, at, ctx, flow_with

S = PhaseState
F = FlowStatus

LEAF = FlowDefinition(
    name="leaf",
    version=1,
    phases=(
        PhaseDefinition("a", (), 50, 2, None),
        PhaseDefinition("b", ("a",), 50, 1, None, optional=True),
    ),
)
MID = FlowDefinition(
    name="mid",
    version=1,
    phases=(
        PhaseDefinition("x", (), 40, 1, None),
        PhaseDefinition("y", ("x",), 60, 2, None, child_flow=ChildFlowSpec("leaf")),
    ),
)
ROOT = FlowDefinition(
    name="root",
    version=1,
    phases=(
        PhaseDefinition("p", (), 10, 1, None),
        PhaseDefinition("c1", ("p",), 40, 2, None, child_flow=ChildFlowSpec("mid")),
        PhaseDefinition(
            "c2",
            ("p",),
            40,
            2,
            None,
            optional=True,
            child_flow=ChildFlowSpec("leaf", on_parent_cancel=ParentCancelPolicy.ABANDON),
        ),
        PhaseDefinition("q", ("c1", "c2"), 10, 0, None),
    ),
)
DEFINITIONS = {d.name: d for d in (LEAF, MID, ROOT)}
ROOT_ID = "00000000-0000-4000-8000-000000000001"


class World:
    """Flows in memory, changed the way the service changes them in one transaction."""

    def __init__(self) -> None:
        self.flows: dict[str, Flow] = {}
        self.flows[ROOT_ID] = create_flow(ROOT_ID, TENANT, ROOT, ctx()).flow

    def apply(self, flow_id: str, command: Command) -> Decision:
        flow = self.flows[flow_id]
        decision = apply_command(flow, DEFINITIONS[flow.definition_name], command, ctx())
        self._effects(decision)
        self.flows[flow_id] = decision.flow
        if decision.entries:
            self._propagate(decision.flow)
        return decision

    def _effects(self, decision: Decision) -> None:
        for effect in decision.effects:
            if isinstance(effect, StartChild):
                child = create_flow(
                    effect.child_flow_id, TENANT, DEFINITIONS[effect.spec.definition_name], ctx()
                ).flow
                self.flows[child.flow_id] = replace(
                    child, parent_flow_id=decision.flow.flow_id, parent_phase=effect.phase
                )
            else:
                assert isinstance(effect, CancelChild)
                child = self.flows[effect.child_flow_id]
                if child.status in TERMINAL_STATUSES:
                    continue
                cancelled = apply_command(
                    child, DEFINITIONS[child.definition_name], CancelFlow(effect.reason), ctx()
                )
                self._effects(cancelled)
                self.flows[child.flow_id] = cancelled.flow

    def _propagate(self, flow: Flow) -> None:
        follow = follow_command(flow)
        while follow is not None and flow.parent_flow_id is not None:
            parent = self.flows[flow.parent_flow_id]
            decision = apply_command(parent, DEFINITIONS[parent.definition_name], follow, ctx())
            if not decision.entries:
                return
            self.flows[parent.flow_id] = decision.flow
            flow = decision.flow
            follow = follow_command(flow)


def expected_phase_state(child: Flow) -> PhaseState:
    if child.status is F.COMPLETED:
        return S.COMPLETED
    if child.status in (F.FAILED, F.CANCELLED):
        return S.FAILED
    return S.IN_PROGRESS


def check_invariants(world: World) -> None:
    for flow in world.flows.values():
        definition = DEFINITIONS[flow.definition_name]
        assert flow.progress == calculate_progress(definition, flow.phases)
        depth, cursor = 0, flow
        while cursor.parent_flow_id is not None:
            cursor = world.flows[cursor.parent_flow_id]
            depth += 1
            assert depth <= 5
        for phase in flow.phases:
            if phase.child_flow_id is None:
                continue
            child = world.flows[phase.child_flow_id]
            assert (child.parent_flow_id, child.parent_phase) == (flow.flow_id, phase.name)
            follows = phase.state in FOLLOWING_STATES and flow.status not in TERMINAL_STATUSES
            if follows:
                assert phase.state is expected_phase_state(child), (phase, child.status)
                if phase.state is S.IN_PROGRESS:
                    assert phase.progress == child.progress / 100
            if phase.state is S.COMPLETED:
                assert child.status is F.COMPLETED
        if flow.parent_flow_id is not None and flow.status not in TERMINAL_STATUSES:
            parent = world.flows[flow.parent_flow_id]
            assert flow.parent_phase is not None
            holder = parent.phase(flow.parent_phase)
            following = holder.child_flow_id == flow.flow_id and holder.state in FOLLOWING_STATES
            spec = DEFINITIONS[parent.definition_name].phase(flow.parent_phase).child_flow
            assert spec is not None
            abandoned = (
                parent.status is F.CANCELLED and spec.on_parent_cancel is ParentCancelPolicy.ABANDON
            )
            assert (following and parent.status is not F.CANCELLED) or abandoned, (
                flow.flow_id,
                holder,
                parent.status,
            )


def forward_commands(flow: Flow) -> list[Command]:
    """Moves that usually apply: starts of ready phases, outcomes of running task phases."""
    definition = DEFINITIONS[flow.definition_name]
    commands: list[Command] = []
    for phase in flow.phases:
        name, state = phase.name, phase.state
        ready = all(
            flow.phase(d).state in (S.COMPLETED, S.SKIPPED) for d in definition.dependencies(name)
        )
        if state in (S.NOT_STARTED, S.ROLLED_BACK, S.RETRY_NEEDED) and ready:
            commands.append(
                Retry(name) if state is S.RETRY_NEEDED else TransitionPhase(name, S.IN_PROGRESS)
            )
        elif state is S.IN_PROGRESS and definition.phase(name).child_flow is None:
            commands += [
                TransitionPhase(name, S.COMPLETED),
                TransitionPhase(name, S.COMPLETED),
                TransitionPhase(name, S.FAILED, error=RETRYABLE),
                UpdatePhaseProgress(name, 0.5),
            ]
        elif state is S.FAILED:
            commands.append(Retry(name))
    return commands


def any_commands(flow: Flow) -> list[Command]:
    """Every kind of command on every phase: many are refused."""
    definition = DEFINITIONS[flow.definition_name]
    commands: list[Command] = [CancelFlow()]
    for phase in flow.phases:
        name = phase.name
        commands += [
            TransitionPhase(name, S.IN_PROGRESS),
            TransitionPhase(name, S.COMPLETED),
            TransitionPhase(name, S.FAILED, error=RETRYABLE),
            UpdatePhaseProgress(name, 0.5),
            Retry(name),
            Rollback(name),
        ]
        if definition.phase(name).optional:
            commands.append(SkipPhase(name))
    return commands


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 9)),
        min_size=10,
        max_size=80,
    )
)
def test_invariants_over_random_trees(steps: list[tuple[int, int, int]]) -> None:
    world = World()
    for which, what, mode in steps:
        ids = sorted(world.flows)
        flow = world.flows[ids[which % len(ids)]]
        commands = (forward_commands(flow) if mode < 8 else []) or any_commands(flow)
        before = dict(world.flows)
        try:
            decision = world.apply(flow.flow_id, commands[what % len(commands)])
        except FlowStateError:
            assert world.flows == before  # a refusal changes nothing, in any flow
            continue
        for entry in decision.entries:
            if entry.status_before is not entry.status_after:
                assert flow_transition_allowed(entry.status_before, entry.status_after)
        check_invariants(world)


# --- the commands, one by one -------------------------------------------------------------------


def started(world: World) -> tuple[str, str]:
    """The root with p done and c1, c2 started: (c1's child, c2's child)."""
    world.apply(ROOT_ID, TransitionPhase("p", S.IN_PROGRESS))
    world.apply(ROOT_ID, TransitionPhase("p", S.COMPLETED))
    first = world.apply(ROOT_ID, TransitionPhase("c1", S.IN_PROGRESS))
    second = world.apply(ROOT_ID, TransitionPhase("c2", S.IN_PROGRESS))
    c1 = first.flow.phase("c1").child_flow_id
    c2 = second.flow.phase("c2").child_flow_id
    assert c1 is not None
    assert c2 is not None
    return c1, c2


def test_a_start_asks_for_a_child_with_a_deterministic_id() -> None:
    world = World()
    world.apply(ROOT_ID, TransitionPhase("p", S.IN_PROGRESS))
    world.apply(ROOT_ID, TransitionPhase("p", S.COMPLETED))
    flow = world.flows[ROOT_ID]
    decision = apply_command(flow, ROOT, TransitionPhase("c1", S.IN_PROGRESS), ctx())
    expected = child_flow_id_for(ROOT_ID, "c1", flow.version + 1)
    spec = ROOT.phase("c1").child_flow
    assert spec is not None
    assert decision.effects == (StartChild("c1", expected, spec),)
    assert decision.flow.phase("c1").child_flow_id == expected
    assert decision.entries[0].metadata["child_flow_id"] == expected
    again = apply_command(flow, ROOT, TransitionPhase("c1", S.IN_PROGRESS), ctx())
    assert again.effects == decision.effects  # pure: the same decision twice


@pytest.mark.parametrize(
    ("status", "state", "code"),
    [
        (F.COMPLETED, S.COMPLETED, None),
        (F.FAILED, S.FAILED, ErrorCode.DATA_VALIDATION_FAILED),
        (F.CANCELLED, S.FAILED, ErrorCode.CHILD_FLOW_CANCELLED),
        (F.ACTIVE, S.IN_PROGRESS, None),
        (F.PAUSED, S.IN_PROGRESS, None),
        (F.RETRY_PENDING, S.IN_PROGRESS, None),
    ],
    ids=lambda v: getattr(v, "value", str(v)),
)
def test_the_phase_follows_the_childs_status(
    status: FlowStatus, state: PhaseState, code: ErrorCode | None
) -> None:
    world = World()
    c1, _ = started(world)
    error = PhaseError(ErrorCode.DATA_VALIDATION_FAILED, "bad", {})
    follow = FollowChild("c1", c1, status, 40.0, error if status is F.FAILED else None)
    decision = apply_command(world.flows[ROOT_ID], ROOT, follow, ctx())
    phase = decision.flow.phase("c1")
    assert phase.state is state
    assert (phase.error.error_code if phase.error else None) is code
    if state is S.IN_PROGRESS:
        assert phase.progress == 0.4


def test_a_stale_child_or_a_terminal_parent_is_ignored() -> None:
    world = World()
    c1, _ = started(world)
    flow = world.flows[ROOT_ID]
    stale = FollowChild("c1", "00000000-0000-4000-8000-00000000dead", F.COMPLETED)
    assert apply_command(flow, ROOT, stale, ctx()).entries == ()
    cancelled = world.apply(ROOT_ID, CancelFlow()).flow
    assert apply_command(cancelled, ROOT, FollowChild("c1", c1, F.COMPLETED), ctx()).entries == ()


def test_child_failure_names_the_child_and_keeps_its_code() -> None:
    world = World()
    c1, _ = started(world)
    world.apply(c1, TransitionPhase("x", S.IN_PROGRESS))
    failed = world.apply(
        c1, TransitionPhase("x", S.FAILED, error=PhaseError(ErrorCode.AGENT_TIMEOUT, "slow", {}))
    ).flow
    error = child_failure(failed)
    assert error is not None
    assert error.error_code is ErrorCode.AGENT_TIMEOUT
    assert error.details == {"child_flow_id": c1, "child_phase": "x", "child_details": {}}
    assert world.flows[ROOT_ID].phase("c1").error == error


@pytest.mark.parametrize(
    "command",
    [TransitionPhase("c1", S.COMPLETED), UpdatePhaseProgress("c1", 0.5)],
    ids=["complete", "progress"],
)
def test_workers_do_not_report_a_child_flow_phase(command: Command) -> None:
    world = World()
    started(world)
    with pytest.raises(FlowStateError) as refused:
        apply_command(world.flows[ROOT_ID], ROOT, command, ctx())
    assert refused.value.code is ErrorCode.PHASE_FOLLOWS_CHILD_FLOW


def test_cancel_cascades_or_abandons_per_phase() -> None:
    world = World()
    c1, c2 = started(world)
    decision = world.apply(ROOT_ID, CancelFlow())
    assert [e.child_flow_id for e in decision.effects if isinstance(e, CancelChild)] == [c1]
    assert world.flows[c1].status is F.CANCELLED
    assert world.flows[c2].status is F.INITIALIZED


def test_retry_cancels_the_failed_child_and_starts_a_new_one() -> None:
    world = World()
    c1, _ = started(world)
    world.apply(c1, CancelFlow())
    assert world.flows[ROOT_ID].phase("c1").error == PhaseError(
        ErrorCode.CHILD_FLOW_CANCELLED, f"Child flow {c1} was cancelled", {"child_flow_id": c1}
    )
    world.apply(ROOT_ID, Retry("c1"))
    restarted = world.apply(ROOT_ID, Retry("c1")).flow.phase("c1")
    assert restarted.state is S.IN_PROGRESS
    assert restarted.child_flow_id not in (None, c1)
    assert restarted.retry_count == 1


def test_link_follows_the_linked_childs_state_at_once() -> None:
    world = World()
    world.apply(ROOT_ID, TransitionPhase("p", S.IN_PROGRESS))
    world.apply(ROOT_ID, TransitionPhase("p", S.COMPLETED))
    linked = "00000000-0000-4000-8000-000000000042"
    follow = FollowChild("", linked, F.COMPLETED, 100.0)
    decision = apply_command(world.flows[ROOT_ID], ROOT, LinkChild("c2", follow), ctx())
    phase = decision.flow.phase("c2")
    assert (phase.state, phase.child_flow_id) == (S.COMPLETED, linked)
    assert decision.effects == ()
    with pytest.raises(FlowStateError) as refused:
        apply_command(world.flows[ROOT_ID], ROOT, LinkChild("p", follow), ctx())
    assert refused.value.code is ErrorCode.CHILD_FLOW_NOT_LINKABLE


def test_external_dependencies_block_a_start_and_name_the_other_flow() -> None:
    other = "00000000-0000-4000-8000-0000000000aa"
    flow = replace(
        create_flow(ROOT_ID, TENANT, LEAF, ctx()).flow,
        external_dependencies=(ExternalDependency("a", other, "done"),),
    )
    with pytest.raises(FlowStateError) as refused:
        apply_command(flow, LEAF, TransitionPhase("a", S.IN_PROGRESS), ctx())
    assert refused.value.code is ErrorCode.PHASE_ORDER_VIOLATION
    assert refused.value.details["blocking_phases"] == [f"{other}/done"]
    ready = replace(ctx(), external_states={(other, "done"): S.COMPLETED})
    started_flow = apply_command(flow, LEAF, TransitionPhase("a", S.IN_PROGRESS), ready).flow
    assert started_flow.phase("a").state is S.IN_PROGRESS


def test_a_child_flow_spec_reads_back_from_its_stored_form() -> None:
    assert child_from_dict(
        {"definition": "etl", "version": 3, "on_parent_cancel": "abandon"}
    ) == ChildFlowSpec("etl", 3, ParentCancelPolicy.ABANDON)
    assert child_from_dict({"definition": "etl"}) == ChildFlowSpec(
        "etl", 0, ParentCancelPolicy.CASCADE
    )


def test_child_failure_message_and_what_counts_as_the_failure() -> None:
    world = World()
    c1, _ = started(world)
    world.apply(c1, TransitionPhase("x", S.IN_PROGRESS))
    failed = world.apply(
        c1, TransitionPhase("x", S.FAILED, error=PhaseError(ErrorCode.AGENT_TIMEOUT, "slow", {}))
    ).flow
    error = child_failure(failed)
    assert error is not None
    assert error.message == f"Child flow {c1} failed in phase 'x': slow"
    # An error on a phase that is not FAILED (waiting for its retry) is no failure of the child.
    waiting = replace(failed, phases=tuple(replace(p, state=S.RETRY_NEEDED) for p in failed.phases))
    assert child_failure(waiting) is None


def test_follow_command_needs_both_parent_fields_and_hands_an_error_only_when_failed() -> None:
    world = World()
    c1, _ = started(world)
    world.apply(c1, TransitionPhase("x", S.IN_PROGRESS))
    failed = world.apply(
        c1, TransitionPhase("x", S.FAILED, error=PhaseError(ErrorCode.AGENT_TIMEOUT, "slow", {}))
    ).flow
    assert follow_command(replace(failed, parent_phase=None)) is None
    assert follow_command(replace(failed, parent_flow_id=None)) is None
    follow = follow_command(failed)
    assert follow is not None
    assert follow.child_error == child_failure(failed)
    # Cancelled with a failed phase: the parent phase fails with CHILD_FLOW_CANCELLED, not the
    # child's error.
    cancelled = follow_command(replace(failed, status=F.CANCELLED))
    assert cancelled is not None
    assert cancelled.child_status is F.CANCELLED
    assert cancelled.child_error is None


def test_the_external_order_refusal_names_the_start_or_the_skip() -> None:
    other = "00000000-0000-4000-8000-0000000000aa"
    flow = replace(
        create_flow(ROOT_ID, TENANT, LEAF, ctx()).flow,
        external_dependencies=(
            ExternalDependency("b", other, "done"),
            ExternalDependency("b", other, "checked"),
            ExternalDependency("b", other, "running"),
            ExternalDependency("a", other, "other"),
        ),
    )
    states = {(other, "checked"): S.SKIPPED, (other, "running"): S.IN_PROGRESS}
    assert check_external_order(flow, states, "b", S.COMPLETED) is None
    assert check_external_order(flow, {}, "b", S.FAILED) is None
    for target, verb in ((S.IN_PROGRESS, "start"), (S.SKIPPED, "be skipped")):
        refusal = check_external_order(flow, states, "b", target)
        assert refusal is not None
        assert refusal.code is ErrorCode.PHASE_ORDER_VIOLATION
        assert refusal.message == (
            f"Phase 'b' cannot {verb} before phase(s) of other flows completed: "
            f"'{other}/done', '{other}/running'"
        )
        assert refusal.details == {
            "phase": "b",
            "from_state": "not_started",
            "to_state": target.value,
            "blocking_phases": [f"{other}/done", f"{other}/running"],
            "blocking_external": [
                {"flow_id": other, "phase": "done"},
                {"flow_id": other, "phase": "running"},
            ],
        }


def test_an_external_dependency_of_a_phase_the_flow_lacks_has_no_from_state() -> None:
    other = "00000000-0000-4000-8000-0000000000aa"
    flow = replace(
        create_flow(ROOT_ID, TENANT, LEAF, ctx()).flow,
        external_dependencies=(ExternalDependency("ghost", other, "done"),),
    )
    refusal = check_external_order(flow, {}, "ghost", S.IN_PROGRESS)
    assert refusal is not None
    assert refusal.details["from_state"] is None


def test_a_link_on_the_retry_step_counts_the_attempt_at_the_links_time() -> None:
    world = World()
    _, c2 = started(world)
    failed = apply_command(world.flows[ROOT_ID], ROOT, FollowChild("c2", c2, F.FAILED), ctx(10))
    waiting = apply_command(failed.flow, ROOT, TransitionPhase("c2", S.RETRY_NEEDED), ctx(20)).flow
    linked = "00000000-0000-4000-8000-000000000043"
    follow = FollowChild("", linked, F.ACTIVE, 40.0)
    decision = apply_command(waiting, ROOT, LinkChild("c2", follow, "take over"), ctx(30))
    phase = decision.flow.phase("c2")
    assert (phase.state, phase.child_flow_id, phase.progress) == (S.IN_PROGRESS, linked, 0.4)
    assert (phase.retry_count, phase.last_retry_at, phase.state_entered_at) == (1, at(30), at(30))
    # The failure's error stays on the phase until it completes (as on any retry's start).
    assert phase.error == failed.flow.phase("c2").error
    assert phase.error is not None
    assert [(e.kind, e.reason, dict(e.metadata)) for e in decision.entries] == [
        (HistoryKind.TRANSITION, "take over", {"child_flow_id": linked, "linked": True}),
        (
            HistoryKind.PROGRESS,
            f"child flow {linked} is active",
            {"child_flow_id": linked, "child_status": "active"},
        ),
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (F.FAILED, PhaseError(ErrorCode.PHASE_EXECUTION_FAILED, "Child flow {id} failed", {})),
        (
            F.CANCELLED,
            PhaseError(ErrorCode.CHILD_FLOW_CANCELLED, "Child flow {id} was cancelled", {}),
        ),
    ],
)
def test_a_child_that_ends_without_an_error_of_its_own_fails_the_phase_naming_it(
    status: FlowStatus, error: PhaseError
) -> None:
    world = World()
    _, c2 = started(world)
    decision = apply_command(world.flows[ROOT_ID], ROOT, FollowChild("c2", c2, status), ctx(10))
    phase = decision.flow.phase("c2")
    assert phase.state is S.FAILED
    assert phase.error == replace(
        error, message=error.message.format(id=c2), details={"child_flow_id": c2}
    )


def test_the_refusals_of_a_link_are_whole() -> None:
    world = World()
    _, c2 = started(world)
    root = world.flows[ROOT_ID]
    follow = FollowChild("", "00000000-0000-4000-8000-000000000044", F.ACTIVE)

    def refusal(flow: Flow, phase: str) -> FlowStateError:
        with pytest.raises(FlowStateError) as refused:
            apply_command(flow, ROOT, LinkChild(phase, follow), ctx(10))
        return refused.value

    not_linkable = refusal(root, "q")
    assert (not_linkable.code, not_linkable.message, not_linkable.details) == (
        ErrorCode.CHILD_FLOW_NOT_LINKABLE,
        "Phase 'q' is not of kind child_flow",
        {"phase": "q"},
    )
    # c2 is optional: the refusal of a link (a start) out of FAILED offers the skip.
    failed = apply_command(root, ROOT, FollowChild("c2", c2, F.FAILED), ctx(5)).flow
    out_of_failed = refusal(failed, "c2")
    assert out_of_failed.code is ErrorCode.INVALID_PHASE_TRANSITION
    assert out_of_failed.details["valid_transitions"] == ["retry_needed", "rolled_back", "skipped"]
    ended = apply_command(root, ROOT, CancelFlow(), ctx(5)).flow
    terminal = refusal(ended, "c2")
    assert (terminal.code, terminal.message, terminal.details) == (
        ErrorCode.FLOW_TERMINAL,
        "Flow is cancelled: phase 'c2' can no longer change",
        {"phase": "c2", "flow_status": "cancelled"},
    )


def test_a_link_on_the_retry_step_of_a_non_retryable_failure_needs_an_admins_retry() -> None:
    """The link is the retry's start: a non-retryable error is lifted only by an admin's
    forced Retry, never by a link (not even an admin's: a link has no force)."""
    world = World()
    _, c2 = started(world)
    fatal = PhaseError(ErrorCode.DATA_VALIDATION_FAILED, "bad rows", {})
    assert not fatal.retryable
    failed = apply_command(
        world.flows[ROOT_ID], ROOT, FollowChild("c2", c2, F.FAILED, child_error=fatal), ctx(10)
    ).flow
    waiting = apply_command(failed, ROOT, Retry("c2", force=True), replace(ctx(20), is_admin=True))
    follow = FollowChild("", "00000000-0000-4000-8000-000000000045", F.ACTIVE)
    with pytest.raises(FlowStateError) as refused:
        apply_command(waiting.flow, ROOT, LinkChild("c2", follow), replace(ctx(30), is_admin=True))
    assert refused.value.code is ErrorCode.RETRY_NOT_ALLOWED
    assert refused.value.message == (
        "Phase 'c2' failed with non-retryable DATA_VALIDATION_FAILED; retrying it needs admin force"
    )


def test_following_a_child_records_each_step_with_the_childs_status() -> None:
    world = World()
    _, c2 = started(world)
    failed = apply_command(world.flows[ROOT_ID], ROOT, FollowChild("c2", c2, F.FAILED), ctx(10))
    error = PhaseError(
        ErrorCode.PHASE_EXECUTION_FAILED, f"Child flow {c2} failed", {"child_flow_id": c2}
    )
    recovered = apply_command(failed.flow, ROOT, FollowChild("c2", c2, F.ACTIVE, 50.0), ctx(20))
    done = apply_command(recovered.flow, ROOT, FollowChild("c2", c2, F.COMPLETED, 100.0), ctx(30))
    meta = {"child_flow_id": c2}
    steps = [
        (
            e.kind,
            e.from_state,
            e.to_state,
            e.reason,
            dict(e.metadata),
            e.error,
            e.occurred_at,
            e.phase_progress,
        )
        for e in (*failed.entries, *recovered.entries, *done.entries)
    ]
    assert steps == [
        (
            HistoryKind.TRANSITION,
            S.IN_PROGRESS,
            S.FAILED,
            f"child flow {c2} is failed",
            {**meta, "child_status": "failed"},
            error,
            at(10),
            None,
        ),
        (
            HistoryKind.TRANSITION,
            S.FAILED,
            S.IN_PROGRESS,
            f"child flow {c2} is active",
            {**meta, "child_status": "active"},
            error,
            at(20),
            None,
        ),
        (
            HistoryKind.PROGRESS,
            S.IN_PROGRESS,
            S.IN_PROGRESS,
            f"child flow {c2} is active",
            {**meta, "child_status": "active"},
            error,
            at(20),
            0.5,
        ),
        (
            HistoryKind.TRANSITION,
            S.IN_PROGRESS,
            S.COMPLETED,
            f"child flow {c2} is completed",
            {**meta, "child_status": "completed"},
            None,
            at(30),
            None,
        ),
    ]
    phase = done.flow.phase("c2")
    assert (phase.state_entered_at, phase.completed_at, phase.error) == (at(30), at(30), None)


def test_a_childs_progress_is_clamped_to_the_phases_range() -> None:
    world = World()
    _, c2 = started(world)
    root = world.flows[ROOT_ID]
    over = apply_command(root, ROOT, FollowChild("c2", c2, F.ACTIVE, 150.0), ctx(10))
    under = apply_command(over.flow, ROOT, FollowChild("c2", c2, F.ACTIVE, -5.0), ctx(20))
    assert [e.phase_progress for e in (*over.entries, *under.entries)] == [1.0, 0.0]
    assert under.flow.phase("c2").progress == 0.0


def test_every_cancel_of_a_child_says_why() -> None:
    world = World()
    c1, c2 = started(world)
    running = world.flows[ROOT_ID]

    def effects(flow: Flow, command: Command) -> tuple[object, ...]:
        return apply_command(flow, ROOT, command, ctx()).effects

    assert effects(running, CancelFlow()) == (
        CancelChild("c1", c1, "the parent flow was cancelled"),
    )
    assert effects(running, Rollback("p")) == (
        CancelChild("c1", c1, "phase 'c1' of the parent was rolled back"),
        CancelChild("c2", c2, "phase 'c2' of the parent was rolled back"),
    )
    world.apply(c1, CancelFlow())
    world.apply(c2, CancelFlow())
    failed = world.flows[ROOT_ID]
    assert (failed.phase("c1").state, failed.phase("c2").state) == (S.FAILED, S.FAILED)
    assert effects(failed, SkipPhase("c2")) == (
        CancelChild("c2", c2, "phase 'c2' of the parent was skipped"),
    )
    retried = (CancelChild("c1", c1, "phase 'c1' of the parent is retried"),)
    assert effects(failed, Retry("c1")) == retried
    assert effects(failed, TransitionPhase("c1", S.RETRY_NEEDED)) == retried
    assert effects(failed, Rollback("c1")) == (
        CancelChild("c1", c1, "phase 'c1' of the parent was rolled back"),
    )
    waiting = apply_command(failed, ROOT, Retry("c1"), ctx()).flow
    assert effects(waiting, TransitionPhase("c1", S.FAILED)) == ()  # abandoning cancels nothing


def test_the_refusal_of_a_report_on_a_child_flow_phase_is_whole() -> None:
    world = World()
    c1, _ = started(world)
    flow = world.flows[ROOT_ID]
    message = (
        "Phase 'c1' follows its child flow: its progress and outcome come from the child "
        "(report them there, or cancel the child to fail the phase)"
    )
    unlinked = flow_with({"p": S.COMPLETED, "c1": S.IN_PROGRESS}, definition=ROOT)  # no child id
    cases: list[tuple[Flow, Command, str, str]] = [
        (flow, TransitionPhase("c1", S.COMPLETED), "completed", c1),
        (flow, UpdatePhaseProgress("c1", 0.5), "in_progress", c1),
        (unlinked, TransitionPhase("c1", S.COMPLETED), "completed", ""),
    ]
    for subject, command, to_state, child in cases:
        with pytest.raises(FlowStateError) as refused:
            apply_command(subject, ROOT, command, ctx())
        assert refused.value.code is ErrorCode.PHASE_FOLLOWS_CHILD_FLOW
        assert str(refused.value) == message
        assert refused.value.details == {
            "phase": "c1",
            "from_state": "in_progress",
            "to_state": to_state,
            "child_flow_id": child,
        }
