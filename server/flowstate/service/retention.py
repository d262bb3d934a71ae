"""The retention use case: archive expired terminal flows, drop spent partitions, purge, restore.

A run (`Archiver.run_once`) does, in order:

1. create the monthly history partitions up to `partitions_ahead` from now (idempotent);
2. archive: batch after batch of whole trees of child flows (a flow outside trees is a tree of
   one) whose every flow is terminal and past its tenant's retention (or the default) since
   its last change, and that no live flow's external dependencies name; each batch one
   transaction: lock (SKIP LOCKED, so replicas split the work), export flow + full history as
   one JSON Lines archive, verify it was written, record it in `flow_archives`, commit;
3. drop every monthly partition that ended at least `settle` ago and holds only rows of
   archived flows (no row deletes for those);
4. purge: delete the remaining rows of archived flows through the one sanctioned database
   function, in batches; it deletes whole trees only (docs/retention.md, "Trees and
   dependencies").

Each step is bounded (`batch_size`, `max_batches`), so a run over a large backlog ends and the
next one continues. "Now" is the database clock unless a run is given one (tests, or an
operator archiving as of a date).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from flowstate.core.model import Tenant
from flowstate.storage.archives import (
    ArchivedFlowRows,
    ArchiveSink,
    archive_name,
    decode_archive,
    encode_archive,
    flows_in,
)
from flowstate.storage.retention import (
    ArchiveRecord,
    CandidateBatch,
    RetentionPolicy,
    RetentionStore,
)
from flowstate.storage.store import FlowStore

__all__ = ["ArchiveRunResult", "Archiver", "RestoreResult", "get_policy", "set_policy"]

_log = logging.getLogger("flowstate.retention")


@dataclass
class ArchiveRunResult:
    """What one run did."""

    archived_flows: int = 0
    archived_entries: int = 0
    archives: list[str] = field(default_factory=list)
    archived_by_tenant: Counter[Tenant] = field(default_factory=Counter)
    created_partitions: list[str] = field(default_factory=list)
    dropped_partitions: list[str] = field(default_factory=list)
    purged_flows: int = 0
    purged_entries: int = 0


@dataclass(frozen=True)
class RestoreResult:
    """Flows and history entries a restore brought back."""

    flows: int
    entries: int
    flow_ids: tuple[str, ...]


class Archiver:
    """Runs retention against one `RetentionStore` and one `ArchiveSink` (module doc)."""

    def __init__(
        self,
        store: RetentionStore,
        sink: ArchiveSink,
        *,
        default_days: int | None = None,
        batch_size: int = 200,
        max_batches: int = 50,
        settle: timedelta = timedelta(days=1),
        partitions_ahead: timedelta = timedelta(days=92),
    ) -> None:
        """Archive into `sink`; `default_days` for tenants without a policy (None: keep)."""
        if batch_size < 1 or max_batches < 1:
            raise ValueError("batch_size and max_batches must be at least 1")
        self.store = store
        self.sink = sink
        self.default_days = default_days
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.settle = settle
        self.partitions_ahead = partitions_ahead
        self._written: list[str] = []

    async def _write(self, batch: CandidateBatch) -> ArchiveRecord:
        now = datetime.now(UTC)
        record = await self.sink.write(archive_name(now), encode_archive(batch, now))
        self._written.append(record.location)
        return record

    async def run_once(self, now: datetime | None = None) -> ArchiveRunResult:
        """One bounded run of the four steps (module doc)."""
        result = ArchiveRunResult()
        self._written = result.archives
        result.created_partitions = await self.store.ensure_partitions(
            self.partitions_ahead, now=now
        )
        for _ in range(self.max_batches):
            flows = await self.store.archive_batch(
                self._write, default_days=self.default_days, limit=self.batch_size, now=now
            )
            if not flows:
                break  # (a batch holds whole trees: a short one does not mean the end)
            result.archived_flows += len(flows)
            result.archived_entries += sum(len(f.entries) for f in flows)
            result.archived_by_tenant.update(f.tenant for f in flows)
            _log.info("archived %d flow(s)", len(flows))
        result.dropped_partitions = await self.store.drop_archived_partitions(self.settle)
        for _ in range(self.max_batches):
            picked, purged, entries = await self.store.purge_batch(self.batch_size)
            result.purged_flows += purged
            result.purged_entries += entries
            if picked < self.batch_size:
                break
        return result

    async def lag(self, now: datetime | None = None) -> tuple[int, float]:
        """(expired flows waiting to be archived, seconds the oldest of them is overdue)."""
        return await self.store.lag(default_days=self.default_days, now=now)

    async def read_archive(self, location: str) -> list[ArchivedFlowRows]:
        """The flows of an archive at `location` (a path, or a URL the sink reads)."""
        return decode_archive(await self.sink.read(location), location)

    async def restore(self, location: str, flow_ids: Sequence[str] = ()) -> RestoreResult:
        """Bring back the flows of an archive (or those of `flow_ids` with their whole trees),
        exactly as archived.

        All or nothing; a flow that exists again (or was never deleted) refuses the restore.
        Restored flows are held: retention never archives them again by itself.
        """
        flows = flows_in(await self.read_archive(location), flow_ids)
        entries = await self.store.restore([(f.row, f.entries) for f in flows])
        return RestoreResult(len(flows), entries, tuple(f.flow_id for f in flows))


async def get_policy(store: FlowStore, tenant: Tenant) -> RetentionPolicy | None:
    """The tenant's own retention policy (GetRetentionPolicy), or None."""
    return await store.retention_policies.get(tenant)


async def set_policy(
    store: FlowStore, tenant: Tenant, retain_days: int, user_id: str
) -> RetentionPolicy | None:
    """Set the tenant's policy to `retain_days` (1..36500), or remove it (0): what is stored."""
    return await store.retention_policies.set(tenant, retain_days, user_id)
