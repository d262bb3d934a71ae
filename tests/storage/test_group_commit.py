"""Group commit: batched and unbatched runs of the same random workload end identically.

Each run gets its own tenant and store (group commit on, with one or two batches in flight, or
off) and plays the same waves of concurrent mutations: legal and illegal commands, stale
expected versions, unknown flows, duplicated request ids (in the same wave: one applies, the
other replays), request ids reused with another payload (REQUEST_ID_REUSED) or the same one
(an exact replay). Within a wave every flow gets at most one *distinct* request, so the outcome
does not depend on the order in which concurrent requests happen to run; the runs must agree on
every request's outcome, every flow's final state and every history entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from flowstate.core.commands import (
    CancelFlow,
    Command,
    Context,
    PauseFlow,
    ResumeFlow,
    Retry,
    SkipPhase,
    TransitionPhase,
    UpdatePhaseProgress,
)
from flowstate.core.errors import FlowStateError
from flowstate.core.model import Flow, HistoryEntry, PhaseState, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore, MutationResult
from flowstate.storage.sql import Transaction

from .support import T0, fetch

PHASES = ("data_import", "field_mapping", "data_cleansing")
TARGETS = (
    PhaseState.IN_PROGRESS,
    PhaseState.WAITING_APPROVAL,
    PhaseState.COMPLETED,
    PhaseState.WAITING_VALIDATION,
)
FLOWS = 8
WAVES = 12
UNKNOWN_FLOW = "unknown"


@dataclass(frozen=True)
class Op:
    """One request of the workload: on flow number `flow` (or UNKNOWN_FLOW)."""

    flow: int | str
    command: Command
    request_id: str = ""
    expected_version: int | None = None


def _command(rng: random.Random) -> Command:
    roll = rng.random()
    phase = rng.choice(PHASES)
    # Mostly changes that are legal on a started flow (data_import IN_PROGRESS), else anything.
    if roll < 0.3:
        return UpdatePhaseProgress("data_import", round(rng.random(), 2))
    if roll < 0.55:
        target = rng.choice((PhaseState.IN_PROGRESS, PhaseState.WAITING_APPROVAL))
        return TransitionPhase("data_import", target)
    roll = rng.random()
    if roll < 0.55:
        return TransitionPhase(phase, rng.choice(TARGETS), reason=f"r{rng.randint(0, 9)}")
    if roll < 0.8:
        return UpdatePhaseProgress(phase, round(rng.random(), 2))
    if roll < 0.85:
        return SkipPhase(phase)
    if roll < 0.9:
        return Retry(phase)
    if roll < 0.95:
        return PauseFlow() if rng.random() < 0.5 else ResumeFlow()
    return CancelFlow() if rng.random() < 0.2 else ResumeFlow()


def workload(seed: int) -> list[list[Op]]:
    """Waves of requests; within a wave no two *different* requests touch the same flow."""
    rng = random.Random(seed)
    waves: list[list[Op]] = []
    earlier: list[Op] = []
    for wave in range(WAVES):
        flows = rng.sample(range(FLOWS), k=rng.randint(3, FLOWS))
        ops: list[Op] = []
        for flow in flows[:-1]:  # the last one is kept for a reused request id
            ops.append(
                Op(
                    flow,
                    _command(rng),
                    request_id=f"w{wave}-f{flow}" if rng.random() < 0.6 else "",
                    expected_version=rng.randint(1, 6) if rng.random() < 0.2 else None,
                )
            )
        keyed = [op for op in ops if op.request_id]
        if keyed and rng.random() < 0.6:
            ops.append(rng.choice(keyed))  # the same request twice in one wave
        reusable = [op for op in earlier if op.request_id and op.flow not in flows[:-1]]
        if reusable and rng.random() < 0.7:
            old = rng.choice(reusable)
            if rng.random() < 0.5:
                ops.append(old)  # sent again: an exact replay (or the same refusal again)
            else:
                ops.append(dataclasses.replace(old, command=_command(rng), flow=flows[-1]))
        if rng.random() < 0.3:
            ops.append(Op(UNKNOWN_FLOW, UpdatePhaseProgress("data_import", 0.5), f"w{wave}-u"))
        rng.shuffle(ops)
        waves.append(ops)
        earlier.extend(ops)
    return waves


@dataclass
class Run:
    """What one run produced, with its own flow ids replaced by their numbers."""

    outcomes: list[list[tuple[Any, ...]]]
    flows: list[Flow]
    histories: list[tuple[HistoryEntry, ...]]
    txids_with_several_flows: int


def _outcome(result: MutationResult | BaseException, number: dict[str, int]) -> tuple[Any, ...]:
    if isinstance(result, FlowStateError):
        return ("refused", result.code)
    if isinstance(result, BaseException):
        raise result
    return ("ok", result.flow.version, result.replayed, len(result.entries))


async def play(url: str, seed: int, *, group_commit: bool, max_in_flight: int = 2) -> Run:
    tenant = Tenant(f"gc-{uuid.uuid4().hex[:10]}", "engagement")
    store = await FlowStore.open(
        url, group_commit=group_commit, group_commit_max_in_flight=max_in_flight
    )
    service = FlowService(store)
    try:
        ids: list[str] = []
        for n in range(FLOWS):
            created = await service.create_flow(
                tenant,
                definition_name="discovery",
                ctx=Context(now=T0, user_id="gc", request_id=f"create-{n}"),
            )
            ids.append(created.flow.flow_id)
            await service.mutate(
                tenant,
                created.flow.flow_id,
                TransitionPhase("data_import", PhaseState.IN_PROGRESS),
                Context(now=T0, user_id="gc"),
            )
        number = {flow_id: n for n, flow_id in enumerate(ids)}
        outcomes: list[list[tuple[Any, ...]]] = []
        for w, wave in enumerate(workload(seed)):

            async def send(op: Op, w: int = w, wave: list[Op] = wave) -> MutationResult:
                flow_id = str(uuid.UUID(int=w)) if op.flow == UNKNOWN_FLOW else ids[int(op.flow)]
                # The same request sent twice carries the same time (whichever runs first).
                now = T0 + timedelta(seconds=w + 1, milliseconds=wave.index(op))
                ctx = Context(now=now, user_id="gc", request_id=op.request_id)
                return await service.mutate(
                    tenant, flow_id, op.command, ctx, expected_version=op.expected_version
                )

            results = await asyncio.gather(*(send(op) for op in wave), return_exceptions=True)
            # Requests sent twice in a wave may run in either order: compare them as a set.
            by_request: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
            for op, result in zip(wave, results, strict=True):
                by_request.setdefault((op.flow, op.request_id, repr(op.command)), []).append(
                    _outcome(result, number)
                )
            outcomes.append(sorted(tuple(sorted(v)) for v in by_request.values()))
        flows = []
        histories = []
        for flow_id in ids:
            flow = await store.get_flow(tenant, flow_id)
            flows.append(dataclasses.replace(flow, flow_id="", tenant=Tenant("x", "y")))
            histories.append((await store.list_history(tenant, flow_id, page_size=1000)).entries)
        rows = await fetch(
            url,
            "SELECT count(*) AS n FROM (SELECT txid FROM flow_history WHERE client_account_id = $1"
            " GROUP BY txid HAVING count(DISTINCT flow_id) > 1) AS shared",
            tenant.client_account_id,
        )
        return Run(outcomes, flows, histories, rows[0]["n"])
    finally:
        await store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batched_and_unbatched_runs_end_identically(database_url: str, seed: int) -> None:
    unbatched = await play(database_url, seed, group_commit=False)
    one_in_flight = await play(database_url, seed, group_commit=True, max_in_flight=1)
    two_in_flight = await play(database_url, seed, group_commit=True, max_in_flight=2)

    assert unbatched.txids_with_several_flows == 0
    assert one_in_flight.txids_with_several_flows > 0  # batches did happen
    for batched in (one_in_flight, two_in_flight):
        assert batched.outcomes == unbatched.outcomes
        assert batched.flows == unbatched.flows
        assert batched.histories == unbatched.histories
    # The workload is not trivial: it has applied changes, refusals and replays.
    flat = [o for wave in unbatched.outcomes for group in wave for o in group]
    assert {o[0] for o in flat} == {"ok", "refused"}
    assert any(o[0] == "ok" and o[2] for o in flat)


@pytest.fixture
async def batched_store(database_url: str) -> AsyncIterator[FlowStore]:
    """A store with group commit and one batch in flight: the queue's order is the batch's."""
    store = await FlowStore.open(database_url, group_commit_max_in_flight=1)
    yield store
    await store.close()


async def test_the_same_flow_twice_in_a_batch_is_handled_in_order(
    batched_store: FlowStore, tenant: Tenant, make_context: Callable[..., Context]
) -> None:
    service = FlowService(batched_store)
    flow_id = await service.create_flow(tenant, definition_name="discovery", ctx=make_context())
    flow_id_str = flow_id.flow.flow_id
    await service.mutate(
        tenant, flow_id_str, TransitionPhase("data_import", PhaseState.IN_PROGRESS), make_context()
    )
    reports = [round(0.04 * (i + 1), 2) for i in range(20)]
    results = await asyncio.gather(
        *(
            service.mutate(
                tenant, flow_id_str, UpdatePhaseProgress("data_import", f), make_context()
            )
            for f in reports
        )
    )
    # The first starts a batch alone; the others queue behind it, in order, and go together.
    assert [r.flow.version for r in results] == list(range(3, 23))
    history = await batched_store.list_history(tenant, flow_id_str, after_version=2)
    assert [e.phase_progress for e in history.entries] == reports
    assert await batched_store.get_flow(tenant, flow_id_str) == results[-1].flow


class _FailingBatchStore(FlowStore):
    """Fails the first multi-request transaction right before COMMIT, as a database would."""

    failed = False
    _in_batch = False

    async def _decide_batch(self, tx: Transaction, tenant: Tenant, mutations: Any) -> Any:
        self._in_batch = True
        return await super()._decide_batch(tx, tenant, mutations)

    async def _before_commit(self, transaction: Transaction) -> None:
        in_batch, self._in_batch = self._in_batch, False
        if in_batch and not self.failed:
            self.failed = True
            raise asyncpg.exceptions.DeadlockDetectedError("injected")


async def test_a_failed_batch_runs_each_request_alone(
    database_url: str,
    tenant: Tenant,
    make_context: Callable[..., Context],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = await _FailingBatchStore.open(database_url, group_commit_max_in_flight=1)
    try:
        service = FlowService(store)
        ids = [
            (
                await service.create_flow(tenant, definition_name="discovery", ctx=make_context())
            ).flow.flow_id
            for _ in range(6)
        ]
        with caplog.at_level(logging.INFO, logger="flowstate.storage"):
            results = await asyncio.gather(
                *(
                    service.mutate(
                        tenant,
                        flow_id,
                        TransitionPhase("data_import", PhaseState.IN_PROGRESS),
                        make_context(f"fail-{n}"),
                    )
                    for n, flow_id in enumerate(ids)
                ),
                service.mutate(  # refused in the batch and again alone
                    tenant, ids[0], SkipPhase("data_import"), make_context("refused")
                ),
                return_exceptions=True,
            )
    finally:
        await store.close()
    assert store.failed
    assert "running them one by one" in caplog.text
    applied = [r for r in results if isinstance(r, MutationResult)]
    assert [r.flow.version for r in applied] == [2] * 6
    assert isinstance(results[-1], FlowStateError)
