"""The alert scan: raise due deadline and stuck-flow breaches exactly once.

Every server runs `AlertScan.run_once` on a timer (`flowstate.server.alerts`). One round:

1. the store lists up to `batch_size` flows of any tenant with something due, by the database
   clock (`FlowStore.due_alert_flows`: ``alert_due_at`` has passed, or a live flow without a
   STUCK alert in force has not changed for its status's threshold);
2. each flow is decided in its own transaction under its row lock (`FlowStore.update_flow`):
   the core says what is due on the flow *as locked* (`flowstate.core.commands.breaches`) and
   applies it as user ``system:timer``; the alert in force is written in the same
   transaction as its history entry, which is what the streams deliver, and the flow's timers
   are re-planned at its new version (as every change does).

Several replicas may pick the same flow: the second one waits for the lock, then finds the
alert in force and writes nothing, so each breach is raised once. A flow that changed in
between is judged as it is now. Failures of one flow are logged and the flow is tried again
next round. (Approval timeouts are timers of the timer engine: `flowstate.core.timers`.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from flowstate.core.commands import Context, Decision, apply_command, breaches
from flowstate.core.errors import FlowStateError
from flowstate.core.model import Flow, FlowStatus, HistoryEntry, Tenant
from flowstate.core.timers import SYSTEM_TIMER_USER
from flowstate.service.flows import timer_sync
from flowstate.storage.flow_transaction import FlowTransaction
from flowstate.storage.store import FlowStore, MutationResult, StoredKey, Write

__all__ = ["AlertScan", "ScanResult"]

_log = logging.getLogger("flowstate.service.alerts")


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one round did: the flows it changed (with their new entries) and how many it saw."""

    changed: tuple[MutationResult, ...]
    examined: int
    full: bool
    """Whether the round found a whole batch (more may be due: run again soon)."""

    @property
    def entries(self) -> tuple[HistoryEntry, ...]:
        """Every entry the round appended."""
        return tuple(e for result in self.changed for e in result.entries)


class AlertScan:
    """Raises due breaches over one store (see the module doc)."""

    def __init__(
        self, store: FlowStore, *, stuck_after: Mapping[FlowStatus, float], batch_size: int
    ) -> None:
        """`stuck_after`: seconds per status (0 / missing: never stuck); `batch_size` > 0."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._store = store
        self._stuck_after = dict(stuck_after)
        self._batch_size = batch_size

    async def run_once(self) -> ScanResult:
        """One round: find due flows and decide each; see the module doc."""
        now, due = await self._store.due_alert_flows(
            stuck_after=self._stuck_after, limit=self._batch_size
        )
        changed: list[MutationResult] = []
        for tenant, flow_id in due:
            try:
                result = await self._decide(tenant, flow_id, now)
            except FlowStateError as error:
                _log.warning("alert scan: flow %s: %s", flow_id, error.message)
                continue
            if result.entries:
                changed.append(result)
        return ScanResult(tuple(changed), len(due), len(due) >= self._batch_size)

    async def _decide(self, tenant: Tenant, flow_id: str, now: datetime) -> MutationResult:
        ctx = Context(now=now, user_id=SYSTEM_TIMER_USER)
        stuck_after = self._stuck_after

        async def decide(tx: FlowTransaction, flow: Flow, _stored: StoredKey | None) -> Write:
            definition = await tx.definition(flow.definition_name, flow.definition_version)
            entries: list[HistoryEntry] = []
            for command in breaches(flow, definition, now, stuck_after):
                decision = apply_command(flow, definition, command, ctx)
                flow = decision.flow
                entries.extend(decision.entries)
            # Re-plan the flow's phase timers at its new version, as every mutation does, so an
            # alert never voids a timeout that is still due (docs/timers.md).
            done = Decision(flow, tuple(entries))
            return Write(flow, done.entries, None, timer_sync(done, definition, ctx))

        return await self._store.update_flow(tenant, flow_id, decide, request_id="", now=now)
