"""Property tests over random DAG definitions with parallel and optional phases (Hypothesis).

Each example draws a definition (1-7 phases, each depending on up to three earlier ones, some
optional, random status groups and weights summing to 100) and a sequence of commands against
it: mostly moves that push the flow on (starts of ready phases, outcomes, skips, retries,
rollbacks), sometimes moves that must be refused (a start or skip before its dependencies, a
skip of a phase that is not optional). Invariants checked after every command (DESIGN.md
section 9, issue 14):

- no phase starts or is skipped before every dependency is COMPLETED or SKIPPED;
- progress stays within [0, 100] and never goes down under a non-failing move;
- the flow is COMPLETED iff every phase is COMPLETED or SKIPPED (unless paused or cancelled);
- a rollback leaves no started descendant of the rolled-back phase;
- a refused command changes nothing, and every status change is in the flow table;
- the derived status of parallel branches does not depend on the order they moved in.
"""

from __future__ import annotations

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
    HistoryEntry,
    HistoryKind,
    PhaseDefinition,
    PhaseState,
    Retry,
    Rollback,
    SkipPhase,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    create_flow,
    determine_flow_status,
    get_recovery_options,
    validate_command,
)
from flowstate.core.rules import DONE_STATES, GROUP_STATUSES, TERMINAL_STATUSES

from .support import RETRYABLE, TENANT, ctx
from .test_properties import check_decision, check_flow_invariants

S = PhaseState
DAG_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
_GROUPS = [None, *sorted(GROUP_STATUSES)]
# Moves after which progress may not go down (target factor >= source factor, no failure).
_FORWARD_TARGETS = {S.WAITING_VALIDATION, S.WAITING_APPROVAL, S.COMPLETED, S.SKIPPED}


@st.composite
def dags(draw: st.DrawFn) -> FlowDefinition:
    """A random valid definition: a DAG listed in a topological order, weights summing to 100."""
    count = draw(st.integers(1, 7), label="phases")
    names = [f"p{i}" for i in range(count)]
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=count - 1, max_size=count - 1)))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    phases = []
    for index, name in enumerate(names):
        depends_on = (
            draw(st.lists(st.sampled_from(names[:index]), unique=True, max_size=3)) if index else []
        )
        phases.append(
            PhaseDefinition(
                name=name,
                depends_on=tuple(depends_on),
                weight=weights[index],
                max_retries=draw(st.integers(0, 2)),
                status_group=draw(st.sampled_from(_GROUPS)),
                optional=draw(st.booleans()),
            )
        )
    return FlowDefinition(name="random", version=1, phases=tuple(phases))


def _done(flow: Flow, definition: FlowDefinition, name: str) -> bool:
    return all(flow.phase(d).state in DONE_STATES for d in definition.dependencies(name))


def forward_commands(flow: Flow, definition: FlowDefinition) -> list[Command]:
    """Moves that push the flow on, skips included."""
    commands: list[Command] = []
    for phase in flow.phases:
        name, state = phase.name, phase.state
        optional = definition.phase(name).optional
        if state in {S.NOT_STARTED, S.ROLLED_BACK} and _done(flow, definition, name):
            commands.append(TransitionPhase(name, S.IN_PROGRESS))
            if optional:
                commands.append(SkipPhase(name))
        elif state is S.IN_PROGRESS:
            commands += [
                TransitionPhase(name, S.COMPLETED),
                TransitionPhase(name, S.WAITING_APPROVAL),
                TransitionPhase(name, S.FAILED, error=RETRYABLE),
                UpdatePhaseProgress(name, 0.5),
            ]
        elif state in {S.WAITING_VALIDATION, S.WAITING_APPROVAL}:
            commands.append(TransitionPhase(name, S.COMPLETED))
        elif state in {S.FAILED, S.RETRY_NEEDED}:
            commands += [Retry(name), *([SkipPhase(name)] if optional else [])]
            if state is S.FAILED:
                commands.append(Rollback(name))
        elif state in DONE_STATES:
            commands.append(Rollback(name))
    return commands


def probing_commands(flow: Flow, definition: FlowDefinition) -> list[Command]:
    """Moves that are often refused: out of order, or skips of phases that are not optional."""
    commands: list[Command] = []
    for name in definition.phase_names:
        commands += [
            TransitionPhase(name, S.IN_PROGRESS),
            SkipPhase(name),
            TransitionPhase(name, S.SKIPPED),
            Rollback(name, cascade=False),
        ]
    return commands


def _non_failing(old: Flow, command: Command) -> bool:
    if isinstance(command, SkipPhase):
        return True
    if isinstance(command, UpdatePhaseProgress):
        return command.progress >= old.phase(command.phase).progress
    if isinstance(command, TransitionPhase):
        source = old.phase(command.phase).state
        if command.target_state is S.IN_PROGRESS:
            return source in {S.NOT_STARTED, S.ROLLED_BACK, S.RETRY_NEEDED}
        return command.target_state in _FORWARD_TARGETS and source in {
            S.NOT_STARTED,
            S.ROLLED_BACK,
            S.IN_PROGRESS,
            S.WAITING_VALIDATION,
            S.WAITING_APPROVAL,
            S.FAILED,
            S.RETRY_NEEDED,
        }
    return False


def check_dag_invariants(
    old: Flow,
    new: Flow,
    command: Command,
    definition: FlowDefinition,
    entries: tuple[HistoryEntry, ...],
) -> None:
    for entry in entries:
        if entry.kind is HistoryKind.CASCADE_ROLLBACK or entry.phase is None:
            continue
        if entry.to_state in (S.IN_PROGRESS, S.SKIPPED):
            assert _done(old, definition, entry.phase), f"{entry.phase} moved before its inputs"
        if entry.to_state is S.SKIPPED:
            assert definition.phase(entry.phase).optional
    if _non_failing(old, command):
        assert new.progress >= old.progress, f"progress went down by {command!r}"
    assert 0.0 <= new.progress <= 100.0
    every_done = all(p.state in DONE_STATES for p in new.phases)
    if new.status is FlowStatus.COMPLETED:
        assert every_done
    elif new.status not in {FlowStatus.PAUSED, FlowStatus.CANCELLED}:
        assert not every_done
    rolled_back = [
        e.phase for e in entries if e.kind is HistoryKind.ROLLBACK and e.phase is not None
    ]
    for name in rolled_back:
        for dependent in definition.dependents(name):
            assert new.phase(dependent).state in {S.NOT_STARTED, S.ROLLED_BACK}, (
                f"{dependent} still started after rolling back {name}"
            )


def run_dag(data: st.DataObject, definition: FlowDefinition, steps: int) -> Flow:
    flow = create_flow("flow-d", TENANT, definition, ctx(0)).flow
    for step in range(1, steps + 1):
        forward = forward_commands(flow, definition)
        mode = data.draw(st.integers(0, 9), label="mode")
        pool = forward if forward and mode < 8 else probing_commands(flow, definition)
        command = data.draw(st.sampled_from(pool), label="command")
        refusal = validate_command(flow, definition, command, ctx(step))
        if refusal is not None:
            # The dry run and the real command agree, and a refusal changes nothing.
            snapshot = repr(flow)
            with pytest.raises(FlowStateError) as refused:
                apply_command(flow, definition, command, ctx(step))
            assert refused.value.code is refusal.code
            assert repr(flow) == snapshot
            continue
        decision = apply_command(flow, definition, command, ctx(step))
        check_decision(flow, decision.flow, decision.entries, command, definition)
        check_dag_invariants(flow, decision.flow, command, definition, decision.entries)
        flow = decision.flow
        check_flow_invariants(flow, definition)
    return flow


@DAG_SETTINGS
@given(data=st.data(), definition=dags(), steps=st.integers(1, 40))
def test_random_commands_on_random_dags_keep_every_invariant(
    data: st.DataObject, definition: FlowDefinition, steps: int
) -> None:
    run_dag(data, definition, steps)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), definition=dags(), steps=st.integers(0, 30))
def test_every_allowed_recovery_option_applies_on_random_dags(
    data: st.DataObject, definition: FlowDefinition, steps: int
) -> None:
    flow = run_dag(data, definition, steps)
    for option in get_recovery_options(flow, definition):
        refusal = validate_command(flow, definition, option.command, ctx(99))
        if option.action.value == "force_retry":
            continue
        assert (refusal is None) is option.allowed
        if option.allowed:
            assert apply_command(flow, definition, option.command, ctx(99)).flow.status is (
                option.target_status
            )


@settings(max_examples=100, deadline=None)
@given(definition=dags(), data=st.data())
def test_driving_a_dag_forward_always_completes_it(
    definition: FlowDefinition, data: st.DataObject
) -> None:
    """Starting and completing (or skipping) ready phases in any order reaches COMPLETED."""
    flow = create_flow("flow-f", TENANT, definition, ctx(0)).flow
    for step in range(1, 3 * len(definition.phases) + 1):
        moves: list[Command] = []
        for phase in flow.phases:
            if phase.state is S.NOT_STARTED and _done(flow, definition, phase.name):
                moves.append(TransitionPhase(phase.name, S.IN_PROGRESS))
                if definition.phase(phase.name).optional:
                    moves.append(SkipPhase(phase.name))
            elif phase.state is S.IN_PROGRESS:
                moves.append(TransitionPhase(phase.name, S.COMPLETED))
        if not moves:
            break
        flow = apply_command(flow, definition, data.draw(st.sampled_from(moves)), ctx(step)).flow
    assert flow.status is FlowStatus.COMPLETED
    assert flow.progress == 100.0


@settings(max_examples=100, deadline=None)
@given(definition=dags(), data=st.data())
def test_status_of_parallel_phases_does_not_depend_on_the_order_they_moved(
    definition: FlowDefinition, data: st.DataObject
) -> None:
    """Start every phase whose dependencies are done, in two random orders: the same status."""
    created = create_flow("flow-o", TENANT, definition, ctx(0)).flow
    first = created.phases[0].name
    base = apply_command(created, definition, TransitionPhase(first, S.IN_PROGRESS), ctx(1)).flow
    base = apply_command(base, definition, TransitionPhase(first, S.COMPLETED), ctx(2)).flow
    ready = [
        p.name for p in base.phases if p.state is S.NOT_STARTED and _done(base, definition, p.name)
    ]
    statuses = set()
    for _ in range(2):
        order = data.draw(st.permutations(ready))
        flow = base
        for step, name in enumerate(order, start=3):
            flow = apply_command(
                flow, definition, TransitionPhase(name, S.IN_PROGRESS), ctx(step)
            ).flow
        statuses.add(flow.status)
        if order and flow.status not in TERMINAL_STATUSES:
            # Rule 8 for parallel branches: the group of the branch listed latest wins.
            latest = max(order, key=definition.phase_names.index)
            assert flow.status is (definition.phase(latest).status_group or FlowStatus.ACTIVE)
            assert determine_flow_status(definition, flow.phases, FlowStatus.INITIALIZED) is (
                flow.status
            )
    assert len(statuses) == 1


def test_cancel_is_always_available_on_a_dag() -> None:
    definition = FlowDefinition(
        name="tiny",
        version=1,
        phases=(PhaseDefinition("only", (), 100, 0, None, optional=True),),
    )
    flow = create_flow("flow-t", TENANT, definition, ctx(0)).flow
    skipped = apply_command(flow, definition, SkipPhase("only"), ctx(1)).flow
    assert skipped.status is FlowStatus.COMPLETED
    assert skipped.progress == 100.0
    assert validate_command(flow, definition, CancelFlow(), ctx(1)) is None
