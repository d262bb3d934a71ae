"""What a group-commit batch does: one transaction for many `update_flow` calls of a tenant.

`flowstate.storage.group_commit` queues and groups the calls; `GroupCommitRunner._run_batch`
runs one batch: one round trip locks every flow (in id order) and reads the requests' keys,
each request is decided in order in a savepoint of its own (`DecisionTransaction`), one
statement writes every accepted change (`write_batch`), one COMMIT. `FlowStore` is a
`GroupCommitRunner`; docs/performance.md ("Group commit") has the correctness argument.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from flowstate.core.errors import FlowStateError
from flowstate.core.model import Flow, Tenant
from flowstate.storage import codec
from flowstate.storage.definitions_repo import DefinitionStore
from flowstate.storage.flow_transaction import (
    Decide,
    DecisionTransaction,
    FlowTransaction,
    check_decision,
    flow_not_found,
    notify_payload,
    write_change,
)
from flowstate.storage.group_commit import Queued
from flowstate.storage.runner import TransactionRunner, _Attempt
from flowstate.storage.sql import Transaction, tenant_params
from flowstate.storage.statements import LOCK_FLOWS, WRITE_BATCH
from flowstate.storage.values import MutationResult, Write

__all__ = ["GroupCommitRunner", "Mutation", "write_batch"]

_log = logging.getLogger("flowstate.storage")


@dataclass(frozen=True, slots=True)
class Mutation:
    """One `update_flow` call waiting for its batch (group commit)."""

    tenant: Tenant
    flow_id: str
    decide: Decide
    request_id: str
    now: datetime


class GroupCommitRunner(TransactionRunner):
    """The runner of group-commit batches; `FlowStore` provides what it declares here."""

    definitions: DefinitionStore
    _idempotency_ttl: timedelta

    _update_one: Callable[..., Awaitable[MutationResult]]
    """One `update_flow` call in a transaction of its own (`FlowStore._update_one`)."""

    def _transaction(self, tx: Transaction, tenant: Tenant, now: datetime) -> FlowTransaction:
        """The `FlowTransaction` a decision gets on `tx`."""
        return FlowTransaction(
            tx, tenant, now, definitions=self.definitions, key_ttl=self._idempotency_ttl
        )

    async def _run_batch(self, lane: Hashable, batch: list[Queued[MutationResult]]) -> None:
        """Run a group-commit batch: one transaction for all, or one each when that fails.

        One round trip locks every flow (in id order) and reads the requests' keys; each
        request is decided in order (the same flow twice: on the flow as the previous request
        left it), a refusal answering that request only; one statement writes every accepted
        change; one COMMIT. A database error before COMMIT runs every request again in a
        transaction of its own, in batch order (as if group commit were off); an error while
        committing (the outcome unknown), or one the runner has already classified (no pooled
        connection within the pool timeout), fails them all, as it fails a lone transaction.
        """
        mutations: list[Mutation] = [queued.request for queued in batch]
        if len(batch) == 1:
            await self._run_alone(batch[0])
            return
        tenant = mutations[0].tenant
        attempt = _Attempt()

        async def work(tx: Transaction) -> list[MutationResult | FlowStateError]:
            return await self._decide_batch(tx, tenant, mutations)

        try:
            results = await self._attempt(tenant, work, True, False, attempt)
        except FlowStateError as classified:
            # Already classified (no pooled connection in time, the database unreachable):
            # the same answer for every call; running them one by one would wait once each.
            for queued in batch:
                queued.settle(classified)
            return
        except Exception as exc:
            if attempt.committing:
                unknown = self._translate(exc)
                for queued in batch:
                    queued.settle(unknown)
                return
            _log.info(
                "group commit of %d mutations failed (%s); running them one by one",
                len(batch),
                type(exc).__name__,
            )
            for queued in batch:
                await self._run_alone(queued)
            return
        await self._after_write()
        for queued, result in zip(batch, results, strict=True):
            queued.settle(result)

    async def _run_alone(self, queued: Queued[MutationResult]) -> None:
        mutation: Mutation = queued.request
        try:
            result = await self._update_one(
                mutation.tenant,
                mutation.flow_id,
                mutation.decide,
                mutation.request_id,
                mutation.now,
            )
        except Exception as exc:
            queued.settle(exc)
            return
        queued.settle(result)

    async def _decide_batch(
        self, tx: Transaction, tenant: Tenant, mutations: list[Mutation]
    ) -> list[MutationResult | FlowStateError]:
        """Lock, decide each mutation in order, write the accepted ones (one statement)."""
        rows = await tx.fetch(
            LOCK_FLOWS,
            {
                **tenant_params(tenant),
                "flow_ids": sorted({m.flow_id for m in mutations}),
                "request_ids": [m.request_id for m in mutations if m.request_id],
            },
        )
        locked: dict[str, asyncpg.Record] = {}
        keys: dict[str, asyncpg.Record] = {}
        for row in rows:
            request_id = row["key_request_id"]
            if request_id is None:
                locked[str(row["id"])] = row
            else:
                keys[request_id] = row
        current: dict[str, Flow] = {}
        decision_tx = DecisionTransaction(tx)
        results: list[MutationResult | FlowStateError] = []
        writes: list[tuple[Mutation, Write]] = []
        for mutation in mutations:
            flow_id = mutation.flow_id
            flow_row = locked.get(flow_id)
            if flow_row is None:
                results.append(flow_not_found(flow_id))
                continue
            flow = current.get(flow_id)
            if flow is None:
                flow = current[flow_id] = codec.flow_from_row(flow_row)
            unit = self._transaction(decision_tx, tenant, mutation.now)
            try:
                stored = None
                key = keys.get(mutation.request_id) if mutation.request_id else None
                if key is not None:
                    stored = await unit.live_key(
                        mutation.request_id,
                        key["key_operation"],
                        key["key_fingerprint"],
                        key["key_response"],
                        key["key_expires_at"],
                    )
                outcome = await mutation.decide(unit, flow, stored)
            except FlowStateError as refusal:
                await decision_tx.end(keep=False)
                results.append(refusal)
                continue
            await decision_tx.end(keep=True)
            if isinstance(outcome, MutationResult):
                results.append(outcome)
                continue
            check_decision(flow.version, outcome.flow, outcome.entries)
            if outcome.entries or outcome.key is not None or outcome.timers is not None:
                writes.append((mutation, outcome))
            if outcome.entries:
                current[flow_id] = outcome.flow
            results.append(MutationResult(flow=outcome.flow, entries=outcome.entries))
        if writes:
            await write_batch(tx, tenant, writes, self._idempotency_ttl)
        return results


async def write_batch(
    tx: Transaction, tenant: Tenant, writes: list[tuple[Mutation, Write]], key_ttl: timedelta
) -> None:
    """Write a batch's accepted changes: `WRITE_BATCH`, the batch form of `write_change`."""
    if any(type(write) is not Write or write.timers is not None for _, write in writes):
        # Timers to sync, or a decision of a kind this statement does not know: the lone
        # write, one by one (still one transaction, one COMMIT).
        for mutation, write in writes:
            await write_change(tx, write, new=False, now=mutation.now, key_ttl=key_ttl)
        return
    states: list[dict[str, Any]] = []
    final: dict[str, int] = {}
    entries: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    notify: dict[str, str] = {}
    for mutation, write in writes:
        flow = write.flow
        states.append(codec.flow_to_json(flow))
        position = len(states)
        if write.entries:
            final[flow.flow_id] = position
            entries.extend(codec.entry_to_json(flow, e) for e in write.entries)
            notify[flow.flow_id] = notify_payload(flow)
        if write.key is not None:
            keys.append(
                {
                    "request_id": write.key.request_id,
                    "operation": write.key.operation,
                    "fingerprint": write.key.fingerprint,
                    "flow_id": flow.flow_id,
                    "position": position,
                    "entry_count": len(write.entries),
                    "created_at": mutation.now.isoformat(),
                    "expires_at": (mutation.now + key_ttl).isoformat(),
                }
            )
    await tx.execute(
        WRITE_BATCH,
        {
            **tenant_params(tenant),
            "states": states,
            "final": list(final.values()),
            "flow_ids": list(final),
            "entries": entries,
            "keys": keys,
            "notify": list(notify.values()),
        },
    )
