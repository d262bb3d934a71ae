"""`TimerService`: fire due timers through the ordinary mutation path (docs/timers.md).

`fire_due` claims a bounded batch of due timers of every tenant (`FlowStore.timers.claim`:
``FOR UPDATE SKIP LOCKED``, so N replicas share the work and never wait for each other) and
fires each in its own flow transaction (`FlowStore.update_flow`): under the flow's row lock it
re-reads the timer row (``FOR UPDATE``) and the database clock, then

- the row is gone (fired by another replica, or disarmed by a change of the flow): nothing;
- the row is not due any more (a Heartbeat pushed it back): its claim is released;
- the row was armed at another flow version than the flow's (a write that did not re-plan
  the flow's timers): void; the flow's timers are planned again;
- otherwise the core decides (`flowstate.core.timers.timer_command`): no command means the
  timer is void (replanned away); a command is applied as user ``system:timer`` with the
  database clock as its time, and flow, history, notification and the flow's new timers (the
  fired one gone) are written in that one transaction, like any mutation.

A refusal of the core is logged and the timer voided (the flow keeps its state). So a timer
fires at most once per due time, and late rather than never: a row stays until it fires or is
disarmed, whatever happens to the replica that claimed it (its claim expires after `lease`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flowstate.core.commands import Context, apply_command
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow
from flowstate.core.timers import SYSTEM_TIMER_USER, TimerKind, plan_timers, timer_command
from flowstate.service.flows import follow_through, timer_sync, update_tree
from flowstate.storage.flow_transaction import FlowTransaction
from flowstate.storage.store import FlowStore
from flowstate.storage.values import (
    ClaimedTimer,
    MutationResult,
    Outcome,
    StoredKey,
    TimerSync,
    Write,
)

__all__ = ["FiredTimer", "TimerRound", "TimerService"]

_log = logging.getLogger("flowstate.service.timers")


@dataclass(frozen=True, slots=True)
class FiredTimer:
    """A timer that changed its flow: its kind, and how late it fired (database clock)."""

    kind: str
    lag_seconds: float
    result: MutationResult


@dataclass(frozen=True, slots=True)
class TimerRound:
    """One round of `TimerService.fire_due`: how many timers it claimed, which fired."""

    claimed: int
    fired: list[FiredTimer]


class TimerService:
    """Fires due timers (see the module doc); one per server, driven by its timer loop."""

    def __init__(self, store: FlowStore, *, batch: int = 100, lease: float = 30.0) -> None:
        """Claim at most `batch` timers per round, each for `lease` seconds."""
        self.store = store
        self.batch = batch
        self.lease = lease

    async def fire_due(self) -> TimerRound:
        """Claim one batch of due timers and fire each (see the module doc)."""
        claimed = await self.store.timers.claim(batch=self.batch, lease=self.lease)
        fired: list[FiredTimer] = []
        for timer in claimed:
            try:
                outcome = await self.fire(timer)
            except FlowStateError as exc:
                if exc.code is ErrorCode.FLOW_NOT_FOUND:
                    continue  # deleted meanwhile: its timers went with it
                _log.warning(
                    "firing timer %s of flow %s phase %s failed; it stays due",
                    timer.kind,
                    timer.flow_id,
                    timer.phase,
                    exc_info=True,
                )
                continue
            if outcome is not None:
                fired.append(outcome)
        return TimerRound(len(claimed), fired)

    async def fire(self, timer: ClaimedTimer) -> FiredTimer | None:
        """Fire one claimed timer in its flow's transaction; None when it was void."""
        lag: list[float] = []

        async def decide(
            tx: FlowTransaction, flow: Flow, stored: StoredKey | None, children: set[str]
        ) -> Outcome:
            del stored  # timers carry no request id
            unchanged = MutationResult(flow=flow, entries=())
            locked = await tx.lock_timer(timer.flow_id, timer.phase, timer.kind)
            if locked is None:
                return unchanged  # fired by another replica, or disarmed by a change
            definition = await tx.definition(flow.definition_name, flow.definition_version)
            # The flow's timers as they should be: existing rows keep their due times, the
            # claim is released, rows the flow no longer needs go.
            replan = Write(flow, (), None, TimerSync(plan_timers(flow, definition), locked.now))
            if locked.due_at > locked.now:
                return replan  # pushed back meanwhile (a Heartbeat)
            if locked.flow_version != flow.version:
                await tx.delete_timer(timer.flow_id, timer.phase, timer.kind)
                return replan  # armed for another version of the flow: void, planned afresh
            try:
                kind = TimerKind(timer.kind)
            except ValueError:
                # A newer replica's kind (a rolling upgrade): leave it to a replica that knows
                # it, once this claim expires.
                _log.warning("timer kind %r is unknown to this server; left", timer.kind)
                return unchanged
            command = timer_command(flow, definition, kind, timer.phase)
            if command is None:
                return replan  # the flow no longer needs it: void
            ctx = Context(now=locked.now, user_id=SYSTEM_TIMER_USER)
            try:
                decision = apply_command(flow, definition, command, ctx)
            except FlowStateError as refusal:
                _log.warning(
                    "timer %s of flow %s phase %s refused by the core (%s); voided",
                    kind.value,
                    flow.flow_id,
                    timer.phase,
                    refusal.code.value,
                )
                await tx.delete_timer(timer.flow_id, timer.phase, timer.kind)
                return unchanged
            # A child flow's timer moves its parent phase too; a parent's retry cancels the
            # failed child (docs/child_flows.md): same transaction, same lock order.
            await follow_through(tx, decision, ctx, children)
            lag.append((locked.now - locked.due_at).total_seconds())
            return Write(
                decision.flow, decision.entries, None, timer_sync(decision, definition, ctx)
            )

        result = await update_tree(
            self.store, timer.tenant, timer.flow_id, decide, request_id="", now=timer.due_at
        )
        if not lag or not result.entries:
            return None
        return FiredTimer(kind=timer.kind, lag_seconds=lag[0], result=result)
