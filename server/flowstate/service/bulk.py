"""`BulkService`: bulk actions as long-running operations (docs/bulk-actions.md).

`start` stores the action and fixes its flows (`BulkActionStore.start`). `work_once` is one
round of a server's worker: lease the oldest running action nobody holds, then take its flows
in order, each through the ordinary mutation path (`FlowService.mutate`) as the user who
started the action, with the request id `bulk_request_id(action, flow)`. That id is what makes
a flow's change happen once per action whatever crashes: the command and the flow's
idempotency key commit together, so a flow whose change committed before its outcome was
recorded replays on the next attempt (by this server or the one that takes the lease over)
instead of changing again. Each outcome is recorded with the lease renewed in the same
statement; a lost lease (another server took over) or a cancelled action stops the round.

Throttling: one flow at a time per server, at most `rate` flows per second, so a bulk action
uses at most one pooled connection and leaves the rest to interactive calls (bench/RESULTS.md
has the measured effect on TransitionPhase latency).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowstate.core.bulk import (
    PHASE_KINDS,
    BulkActionState,
    BulkOutcome,
    bulk_command,
    bulk_request_id,
)
from flowstate.core.commands import Context
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service.flows import FlowService
from flowstate.storage.bulk import (
    BulkAction,
    BulkActionStore,
    BulkItem,
    BulkRequest,
    ClaimedAction,
)
from flowstate.storage.limits import check_name, malformed
from flowstate.storage.store import FlowStore

__all__ = ["BulkRound", "BulkService"]

_log = logging.getLogger("flowstate.service.bulk")

_NOT_NOW = frozenset(
    {ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE, ErrorCode.SERVER_SHUTTING_DOWN, ErrorCode.INTERNAL}
)
"""Errors that say nothing about the flow: the flow stays pending and is tried again."""


@dataclass(frozen=True, slots=True)
class BulkRound:
    """What one `work_once` did: the action it held (None: nothing to do) and flows taken."""

    action_id: str | None
    taken: int


class BulkService:
    """Starts bulk actions and works through them (see the module doc)."""

    def __init__(
        self,
        store: FlowStore,
        *,
        owner: str,
        rate: float = 100.0,
        lease: float = 30.0,
        batch: int = 100,
        clock: Callable[[], datetime],
    ) -> None:
        """Work as `owner` (unique per server process), at most `rate` flows per second, with
        leases of `lease` seconds, reading `batch` pending flows at a time; `clock` stamps each
        command's context."""
        self.actions = BulkActionStore(store)
        self._flows = FlowService(store)
        self.owner = owner
        self.rate = rate
        self.lease = lease
        self.batch = batch
        self._clock = clock
        self.current: ClaimedAction | None = None

    async def start(self, tenant: Tenant, request: BulkRequest) -> tuple[BulkAction, bool]:
        """Store a new action (see `BulkActionStore.start`); MALFORMED_REQUEST without a
        selection or without the phase a ROLLBACK or SKIP needs."""
        kind, phase, selection = request.kind, request.phase, request.selection
        if kind in PHASE_KINDS:
            if not phase:
                raise malformed("phase", f"a {kind.value} bulk action needs a phase")
            check_name("phase", phase)
        elif phase is not None:
            request = dataclasses.replace(request, phase=None)
        if selection.filter is None and not selection.flow_ids:
            raise malformed(
                "filter",
                "a bulk action needs a filter or flow ids (use 'NOT stuck OR stuck' "
                "for every flow)",
            )
        payload = {
            "kind": kind.value,
            "phase": request.phase,
            "filter": selection.filter_text,
            "flow_ids": sorted(selection.flow_ids),
            "reason": request.reason,
        }
        fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return await self.actions.start(tenant, request, fingerprint=fingerprint)

    async def work_once(self) -> BulkRound:
        """Lease one action and take its flows until none is left, it is cancelled, or the
        lease is lost. A database outage propagates (the lease expires; someone continues)."""
        claimed = await self.actions.claim(self.owner, lease=self.lease)
        if claimed is None:
            return BulkRound(None, 0)
        # Kept while the round runs and when it is cancelled (a stopping server), so that
        # `release` can give the lease up; cleared when the round ends by itself.
        self.current = claimed
        taken = 0
        while True:
            items = await self.actions.pending(claimed.action.action_id, limit=self.batch)
            if not items:
                await self.actions.finish(claimed)
                break
            for item in items:
                started = time.monotonic()
                state = await self._take(claimed, item)
                taken += 1
                if state is not BulkActionState.RUNNING:
                    self.current = None
                    return BulkRound(claimed.action.action_id, taken)
                pause = 1.0 / self.rate - (time.monotonic() - started)
                if pause > 0:
                    await asyncio.sleep(pause)
        self.current = None
        return BulkRound(claimed.action.action_id, taken)

    async def release(self) -> None:
        """Give up the lease held now, if any (a stopping server): another continues at once."""
        claimed, self.current = self.current, None
        if claimed is not None:
            await self.actions.release(claimed)

    async def _take(self, claimed: ClaimedAction, item: BulkItem) -> BulkActionState | None:
        action = claimed.action
        command = bulk_command(action.kind, item.phase, action.reason)
        outcome: BulkOutcome
        error: dict[str, Any] | None = None
        if command is None:
            outcome = BulkOutcome.SKIPPED
            error = {"reason": "no FAILED phase when the action started"}
        else:
            ctx = Context(
                now=self._clock(),
                user_id=action.user_id,
                request_id=bulk_request_id(action.action_id, item.flow_id),
            )
            try:
                await self._flows.mutate(action.tenant, item.flow_id, command, ctx)
                outcome = BulkOutcome.APPLIED
            except FlowStateError as exc:
                if exc.code in _NOT_NOW:
                    raise
                outcome = BulkOutcome.REFUSED
                error = {"error_code": exc.code.value, "message": exc.message}
                error["details"] = exc.details
        return await self.actions.record(claimed, item, outcome, error, lease=self.lease)
