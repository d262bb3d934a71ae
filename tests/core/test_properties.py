"""Property tests over random command sequences (Hypothesis).

Commands are drawn against the current flow: half are forward moves (start a ready phase,
complete, ask approval, fail, retry, roll back), a third pass the table and order checks, the
rest are random (unknown phases, illegal targets, malformed progress, flow commands). So runs go
deep (retries, cascades, pauses, completion) instead of bouncing off the first refusal. Both the
built-in discovery definition and a custom definition with parallel branches are exercised.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowstate.core import (
    DISCOVERY,
    PHASE_TRANSITIONS,
    CancelFlow,
    Command,
    Flow,
    FlowDefinition,
    FlowStateError,
    FlowStatus,
    HistoryEntry,
    PauseFlow,
    PhaseState,
    RecoveryAction,
    ResumeFlow,
    Retry,
    Rollback,
    TransitionPhase,
    UpdatePhaseProgress,
    apply_command,
    calculate_progress,
    create_flow,
    determine_flow_status,
    get_recovery_options,
    validate_command,
)
from flowstate.core.rules import TERMINAL_STATUSES, flow_transition_allowed

from .support import BRANCHY, FATAL, RETRYABLE, TENANT, ctx


def examples(wanted: int) -> int:
    """`wanted`, unless the loaded profile asks for far fewer (``mutation``: one run per mutant)."""
    default = settings.default
    return min(wanted, 2 * default.max_examples) if default is not None else wanted


PROPERTY_SETTINGS = settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
STICKY = TERMINAL_STATUSES | {FlowStatus.PAUSED}
PHASE_COMMANDS = (TransitionPhase, UpdatePhaseProgress, Rollback, Retry)
FLOW_COMMANDS: dict[str, Command] = {
    "pause": PauseFlow(),
    "resume": ResumeFlow(),
    "cancel": CancelFlow(),
}
KIND = st.sampled_from(["transition"] * 5 + ["progress", "rollback", "retry", *FLOW_COMMANDS])
ERRORS = st.sampled_from([RETRYABLE, RETRYABLE, FATAL, None])
FRACTIONS = st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0, -0.1, 1.5, float("nan")])


def _ready(flow: Flow, definition: FlowDefinition, name: str) -> bool:
    return all(flow.phase(d).state is PhaseState.COMPLETED for d in definition.dependencies(name))


def forward_commands(flow: Flow, definition: FlowDefinition) -> list[Command]:
    """Moves that push the flow on: starts of ready phases, outcomes, recovery of failures."""
    commands: list[Command] = []
    for phase in flow.phases:
        name, state = phase.name, phase.state
        if state in {PhaseState.NOT_STARTED, PhaseState.ROLLED_BACK}:
            if _ready(flow, definition, name):
                commands.append(TransitionPhase(name, PhaseState.IN_PROGRESS))
        elif state is PhaseState.IN_PROGRESS:
            commands.append(TransitionPhase(name, PhaseState.COMPLETED))
            commands.append(TransitionPhase(name, PhaseState.WAITING_APPROVAL))
            commands.append(TransitionPhase(name, PhaseState.FAILED, error=RETRYABLE))
        elif state in {PhaseState.WAITING_VALIDATION, PhaseState.WAITING_APPROVAL}:
            commands.append(TransitionPhase(name, PhaseState.COMPLETED))
        elif state is PhaseState.FAILED:
            commands += [Retry(name), Rollback(name)]
        elif state is PhaseState.RETRY_NEEDED:
            commands.append(Retry(name))
    # Pause while work runs (outcomes still land), and resume: the interesting pause cases.
    if flow.status is FlowStatus.PAUSED:
        commands.append(ResumeFlow())
    elif any(p.state is PhaseState.IN_PROGRESS for p in flow.phases):
        commands.append(PauseFlow())
    return commands


def plausible_commands(flow: Flow, definition: FlowDefinition) -> list[Command]:
    """Commands that pass the table and order checks (others may still refuse them)."""
    commands: list[Command] = []
    for phase in flow.phases:
        ready = _ready(flow, definition, phase.name)
        for target in sorted(PHASE_TRANSITIONS[phase.state]):
            if target is not PhaseState.IN_PROGRESS or ready:
                error = (
                    RETRYABLE if target in {PhaseState.FAILED, PhaseState.RETRY_NEEDED} else None
                )
                commands.append(TransitionPhase(phase.name, target, error=error))
        if phase.state is PhaseState.IN_PROGRESS:
            commands.append(UpdatePhaseProgress(phase.name, 0.5))
    commands.append(ResumeFlow() if flow.status is FlowStatus.PAUSED else PauseFlow())
    return commands


def draw_command(data: st.DataObject, flow: Flow, definition: FlowDefinition) -> Command:
    """A command for `flow`: mostly forward moves, often plausible ones, sometimes random.

    Hypothesis shrinks draws towards 0 and early list elements, so 0 means "forward".
    """
    mode = data.draw(st.integers(0, 19), label="mode")
    forward = forward_commands(flow, definition)
    if mode < 10 and forward:
        return data.draw(st.sampled_from(forward), label="forward")
    if mode < 17:
        return data.draw(st.sampled_from(plausible_commands(flow, definition)), label="plausible")
    kind = data.draw(KIND, label="kind")
    if kind in FLOW_COMMANDS:
        return FLOW_COMMANDS[kind]
    phase = data.draw(st.sampled_from([*definition.phase_names, "ghost"]), label="phase")
    current = flow.phase(phase).state if definition.has_phase(phase) else PhaseState.NOT_STARTED
    if kind == "transition":
        legal = data.draw(st.booleans(), label="legal")
        targets = sorted(PHASE_TRANSITIONS[current]) if legal else list(PhaseState)
        target = data.draw(st.sampled_from(targets), label="target")
        error = data.draw(ERRORS, label="error")
        if target not in {PhaseState.FAILED, PhaseState.RETRY_NEEDED} and error is not FATAL:
            error = None  # mostly well-formed; FATAL on a success stays as a malformed probe
        return TransitionPhase(phase, target, reason="random", error=error)
    if kind == "progress":
        return UpdatePhaseProgress(phase, data.draw(FRACTIONS, label="fraction"))
    if kind == "rollback":
        return Rollback(phase, cascade=data.draw(st.booleans(), label="cascade"))
    return Retry(phase, force=data.draw(st.booleans(), label="force"))


def check_flow_invariants(flow: Flow, definition: FlowDefinition) -> None:
    assert 0.0 <= flow.progress <= 100.0
    assert flow.progress == calculate_progress(definition, flow.phases)
    if flow.status not in STICKY:
        # Status is always what the derivation gives (a fixed point of the rules).
        assert determine_flow_status(definition, flow.phases, flow.status) is flow.status
    if flow.status is FlowStatus.PAUSED:
        resume_to = flow.status_before_pause
        assert resume_to is not None
        assert determine_flow_status(definition, flow.phases, resume_to) is resume_to
    else:
        assert flow.status_before_pause is None
    # DESIGN.md's direct transitions: a paused flow can always be resumed, any other
    # non-terminal flow paused, and every non-terminal flow cancelled.
    if flow.status not in TERMINAL_STATUSES:
        direct = ResumeFlow() if flow.status is FlowStatus.PAUSED else PauseFlow()
        assert validate_command(flow, definition, direct, ctx(0)) is None
        assert validate_command(flow, definition, CancelFlow(), ctx(0)) is None


def check_decision(
    old: Flow,
    new: Flow,
    entries: tuple[HistoryEntry, ...],
    command: Command,
    definition: FlowDefinition,
) -> None:
    assert old.status not in TERMINAL_STATUSES, "a terminal flow changed"
    if not entries:  # only a repeated progress report is a no-op
        assert isinstance(command, UpdatePhaseProgress)
        assert new == old
        return
    assert [e.flow_version for e in entries] == list(
        range(old.version + 1, old.version + 1 + len(entries))
    )
    assert new.version == entries[-1].flow_version
    assert entries[0].status_before is old.status
    assert entries[-1].status_after is new.status
    for before, after in itertools.pairwise(entries):
        assert before.status_after is after.status_before
    for entry in entries:
        assert 0.0 <= entry.progress_after <= 100.0
        if entry.status_before is not entry.status_after:
            assert flow_transition_allowed(entry.status_before, entry.status_after), (
                f"{entry.status_before.value} -> {entry.status_after.value} by {command!r}"
            )
    if isinstance(command, PHASE_COMMANDS) and old.status is not FlowStatus.PAUSED:
        derived = determine_flow_status(definition, new.phases, entries[-1].status_before)
        assert new.status is derived
    check_facts_after(old, entries)
    assert entries[-1].phase_states_after == new.phase_states


def check_facts_after(old: Flow, entries: tuple[HistoryEntry, ...]) -> None:
    """Each entry records the flow it leaves: the phase states and open error codes reached by
    applying the entries so far, one phase change each, to `old` (what filters on changes
    read, whenever they read it)."""
    states = old.phase_states
    errors = {p.name: p.error for p in old.phases}
    for entry in entries:
        if entry.phase is not None:
            assert entry.to_state is not None
            assert states[entry.phase] is entry.from_state
            states[entry.phase] = entry.to_state
            errors[entry.phase] = entry.error
        assert entry.phase_states_after == states
        assert entry.error_codes_after == frozenset(e.error_code for e in errors.values() if e)


def run_random_commands(data: st.DataObject, definition: FlowDefinition, steps: int) -> Flow:
    created = create_flow("flow-p", TENANT, definition, ctx(0))
    flow = created.flow
    history: list[HistoryEntry] = list(created.entries)
    assert created.entries[0].phase_states_after == {
        name: PhaseState.NOT_STARTED for name in definition.phase_names
    }
    assert created.entries[0].error_codes_after == frozenset()
    for step in range(1, steps + 1):
        command = draw_command(data, flow, definition)
        admin = isinstance(command, Retry) and data.draw(st.booleans(), label="admin")
        context = ctx(step, admin=admin)
        snapshot = repr(flow)  # values are frozen; repr also catches mutated nested dicts
        dry_run = validate_command(flow, definition, command, context)
        try:
            decision = apply_command(flow, definition, command, context)
        except FlowStateError as refusal:
            refused: FlowStateError | None = refusal
        else:
            refused = None
        assert repr(flow) == snapshot, "deciding changed the input flow"
        if refused is not None:
            assert dry_run is not None
            assert dry_run.code is refused.code
            continue
        assert dry_run is None
        check_decision(flow, decision.flow, decision.entries, command, definition)
        flow = decision.flow
        history.extend(decision.entries)
        check_flow_invariants(flow, definition)
        assert [e.flow_version for e in history] == list(range(1, flow.version + 1))
    return flow


@PROPERTY_SETTINGS
@given(data=st.data(), steps=st.integers(1, 30))
def test_random_commands_on_discovery_keep_every_invariant(data: st.DataObject, steps: int) -> None:
    run_random_commands(data, DISCOVERY, steps)


@PROPERTY_SETTINGS
@given(data=st.data(), steps=st.integers(1, 30))
def test_random_commands_on_parallel_branches_keep_every_invariant(
    data: st.DataObject, steps: int
) -> None:
    run_random_commands(data, BRANCHY, steps)


@settings(max_examples=examples(100), deadline=None)
@given(
    data=st.data(),
    steps=st.integers(0, 25),
    definition=st.sampled_from([DISCOVERY, BRANCHY]),
)
def test_every_allowed_recovery_option_applies(
    data: st.DataObject, steps: int, definition: FlowDefinition
) -> None:
    flow = run_random_commands(data, definition, steps)
    options = get_recovery_options(flow, definition)
    if flow.status in TERMINAL_STATUSES:
        assert options == []
        return
    assert any(o.action is RecoveryAction.CANCEL and o.allowed for o in options)
    allowed = [o.allowed for o in options]
    assert allowed == sorted(allowed, reverse=True), "blocked options must come last"
    for option in options:
        admin = option.action is RecoveryAction.FORCE_RETRY
        refusal = validate_command(flow, definition, option.command, ctx(99, admin=admin))
        if option.allowed:
            assert refusal is None
            decision = apply_command(flow, definition, option.command, ctx(99, admin=admin))
            assert decision.flow.status is option.target_status
        else:
            assert refusal is not None
            assert refusal.code is option.blocked_by


@settings(max_examples=examples(50), deadline=None)
@given(data=st.data(), steps=st.integers(0, 20))
def test_terminal_flows_absorb_every_command(data: st.DataObject, steps: int) -> None:
    flow = run_random_commands(data, DISCOVERY, steps)
    if flow.status not in TERMINAL_STATUSES:
        flow = apply_command(flow, DISCOVERY, CancelFlow(), ctx(100)).flow
    for _ in range(10):
        command = draw_command(data, flow, DISCOVERY)
        assert validate_command(flow, DISCOVERY, command, ctx(101, admin=True)) is not None
