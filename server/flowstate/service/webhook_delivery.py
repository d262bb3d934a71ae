"""The webhook delivery loop: leases in Postgres, one task per subscription, bounded requests.

`WebhookDispatcher` runs in every server replica. Each `poll_interval` it claims (or renews)
leases on active subscriptions (`FlowStore.webhooks.claim`: the lease is a row lock-free
``lease_owner``/``lease_expires_at`` pair on the database clock, so exactly one replica delivers
a subscription at a time, and a crashed replica's subscriptions move to another once its leases
expire). For every subscription it holds, one task reads the tenant change log
(`flowstate.storage.changes.TenantLog`) after the subscription's stored cursor and delivers the
matching changes one at a time, in log order, so a flow's changes arrive in version order:

- a 2xx moves the stored cursor past the change (`advance`); a change the filter does not match
  moves it too, without a request. The filter is the subscription's statuses, definition and
  ``filter`` text (the filter language, parsed once per task by `webhook_filter`), evaluated
  on each change exactly as WatchFlows evaluates its filter: on the flow as the change left it
  (`TenantChange.facts`);
- a failure is counted (`record_failure`) and the same change is tried again after an
  exponential backoff with jitter (``initial_backoff * 2**(n-1)``, at most `max_backoff`, times a
  random factor in [0.5, 1]); after `failure_budget` consecutive failed attempts the subscription
  is DISABLED with the reason (the last error) visible in ListWebhooks; ReplayWebhook enables it;
- the cursor only moves after the receiver acknowledged, so a crash re-delivers at most the
  changes in flight (at least once; ``webhook-id`` is stable, receivers deduplicate).

A slow or dead receiver holds only its own task, and each request is bounded by the sender's
timeout; at most `max_concurrency` requests are in flight per replica (a semaphore around each
attempt, not around the task, so subscriptions waiting out a backoff hold no slot). A task whose
lease was lost (another replica claimed it after an expiry, the subscription was deleted or
disabled) stops at its next write and is cancelled at the next claim. On shutdown the tasks are
cancelled and the leases released, so another replica takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from flowstate.core.errors import FlowStateError
from flowstate.core.filters import Filter, matches
from flowstate.service.webhooks import WebhookSender, change_body, event_id, webhook_filter
from flowstate.storage.changes import LogPosition, TenantChange, TenantLog
from flowstate.storage.store import FlowStore
from flowstate.storage.webhooks_repo import ClaimedWebhook

__all__ = ["DeliverySettings", "WebhookDispatcher"]

_log = logging.getLogger("flowstate.webhooks")
_READ_BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How deliveries run (every field has a ``FLOWSTATE_WEBHOOK_*`` setting)."""

    poll_interval: float = 1.0
    """Seconds between lease claims, and between log reads of an idle subscription."""
    lease_seconds: float = 30.0
    """How long a claimed lease lasts without renewal (renewed every `poll_interval`)."""
    max_concurrency: int = 32
    """Requests in flight at once in one replica."""
    max_subscriptions: int = 1000
    """Subscriptions one replica holds at most."""
    initial_backoff: float = 1.0
    """Seconds before the first retry of a failed delivery."""
    max_backoff: float = 300.0
    """Longest wait between two attempts."""
    failure_budget: int = 12
    """Consecutive failed attempts after which a subscription is disabled."""


DeliveryObserver = Callable[[str], None]
"""Told ``ok``, ``failed`` or ``disabled`` after each attempt (metrics)."""


class WebhookDispatcher:
    """Delivers every replica-held subscription (see the module doc). `start`, then `close`."""

    def __init__(
        self,
        store: FlowStore,
        log: TenantLog,
        sender: WebhookSender,
        settings: DeliverySettings,
        observe: DeliveryObserver | None = None,
    ) -> None:
        """Use `start`."""
        self._store = store
        self._log = log
        self._sender = sender
        self._settings = settings
        self._observe = observe or (lambda _result: None)
        self.owner = f"replica-{secrets.token_hex(8)}"
        """This replica's lease owner id."""
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._tasks: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    @classmethod
    def start(
        cls,
        store: FlowStore,
        log: TenantLog,
        sender: WebhookSender,
        settings: DeliverySettings,
        observe: DeliveryObserver | None = None,
    ) -> WebhookDispatcher:
        """Start the claim loop on the running event loop."""
        dispatcher = cls(store, log, sender, settings, observe)
        dispatcher._loop_task = asyncio.create_task(dispatcher._run(), name="webhook-claims")
        return dispatcher

    @property
    def held(self) -> frozenset[str]:
        """Ids of the subscriptions this replica is delivering now."""
        return frozenset(self._tasks)

    async def close(self) -> None:
        """Stop every task and release this replica's leases."""
        tasks = [self._loop_task] if self._loop_task is not None else []
        tasks += [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            await self._store.webhooks.release(self.owner)
        except FlowStateError:
            _log.warning("could not release the webhook leases (they expire on their own)")

    async def _run(self) -> None:
        while True:
            try:
                claimed = await self._store.webhooks.claim(
                    self.owner,
                    lease_seconds=self._settings.lease_seconds,
                    limit=self._settings.max_subscriptions,
                )
            except FlowStateError as exc:
                _log.warning("claiming webhook leases failed: %s", exc.message)
            else:
                self._reconcile(claimed)
            await asyncio.sleep(self._settings.poll_interval)

    def _reconcile(self, claimed: tuple[ClaimedWebhook, ...]) -> None:
        held = {webhook.id: webhook.generation for webhook in claimed}
        for webhook_id, (generation, task) in list(self._tasks.items()):
            if held.get(webhook_id) != generation or task.done():
                task.cancel()  # lease lost, rewound (a replay), disabled, deleted, or ended
                del self._tasks[webhook_id]
        for webhook in claimed:
            if webhook.id not in self._tasks:
                task = asyncio.create_task(self._deliver_all(webhook), name=f"webhook-{webhook.id}")
                self._tasks[webhook.id] = (webhook.generation, task)

    @staticmethod
    def _matches(webhook: ClaimedWebhook, condition: Filter | None, change: TenantChange) -> bool:
        if webhook.statuses and change.entry.status_after.value not in webhook.statuses:
            return False
        if webhook.definition_name and webhook.definition_name != change.definition_name:
            return False
        return condition is None or (change.facts is not None and matches(condition, change.facts))

    async def _deliver_all(self, webhook: ClaimedWebhook) -> None:
        """Deliver `webhook`'s changes from its cursor on, until the lease is lost."""
        cursor: LogPosition = webhook.cursor
        try:
            condition = webhook_filter(webhook.filter)  # checked at creation: it parses
            while True:
                read = await self._log.read(webhook.tenant, cursor, _READ_BATCH)
                skipped: LogPosition | None = None
                for change in read.changes:
                    if not self._matches(webhook, condition, change):
                        skipped = change.position
                        continue
                    if not await self._deliver_one(webhook, change):
                        return  # lease lost or subscription disabled
                    skipped = None
                if skipped is not None and not await self._store.webhooks.advance(
                    webhook, self.owner, skipped, delivered=0, now=datetime.now(UTC)
                ):
                    return
                cursor = max(cursor, read.covered)
                if not read.changes:
                    await asyncio.sleep(
                        self._settings.poll_interval / 10
                        if read.pending
                        else self._settings.poll_interval
                    )
        except asyncio.CancelledError:
            raise
        except FlowStateError as exc:
            # The database is unreachable or similar: the next claim restarts from the cursor.
            _log.warning("webhook %s: delivery stopped: %s", webhook.id, exc.message)
        except Exception:
            _log.exception("webhook %s: delivery failed unexpectedly", webhook.id)

    async def _deliver_one(self, webhook: ClaimedWebhook, change: TenantChange) -> bool:
        """Deliver `change` until acknowledged: True; False when the lease is lost or the
        subscription was disabled."""
        message_id = event_id(change.flow_id, change.entry.flow_version)
        body = change_body(change)
        while True:
            async with self._slots:
                result = await self._sender.send(webhook.url, webhook.secret, message_id, body)
            now = datetime.now(UTC)
            if result.ok:
                self._observe("ok")
                return await self._store.webhooks.advance(
                    webhook, self.owner, change.position, delivered=1, now=now
                )
            self._observe("failed")
            count = await self._store.webhooks.record_failure(
                webhook,
                self.owner,
                error=result.error,
                budget=self._settings.failure_budget,
                now=now,
            )
            if count is None:
                return False
            if count.disabled_reason:
                self._observe("disabled")
                _log.warning("webhook %s: %s", webhook.id, count.disabled_reason)
                return False
            await asyncio.sleep(self._backoff(count.failures))

    def _backoff(self, failures: int) -> float:
        base = self._settings.initial_backoff * float(2 ** min(failures - 1, 30))
        jitter = random.uniform(0.5, 1.0)
        return float(min(self._settings.max_backoff, base) * jitter)
