"""The values the store takes and returns: results, queries, pages, and a use case's decision.

Plain frozen dataclasses over core values; rows never appear here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from flowstate.core.filters import Filter
from flowstate.core.model import Flow, FlowStatus, HistoryEntry, PhaseState, Tenant
from flowstate.core.timers import PlannedTimer
from flowstate.storage.limits import DEFAULT_FLOW_PAGE_SIZE

__all__ = [
    "ClaimedTimer",
    "FlowCount",
    "FlowPage",
    "FlowQuery",
    "HistoryPage",
    "IdempotencyKey",
    "LockedTimer",
    "MutationResult",
    "Outcome",
    "StoredKey",
    "TimerSync",
    "Write",
]


@dataclass(frozen=True, slots=True)
class MutationResult:
    """What a create or a mutation did: the flow after it, the entries it appended.

    `replayed` is True when the request id had been seen with the same payload: the stored
    first result is returned and nothing is written.
    """

    flow: Flow
    entries: tuple[HistoryEntry, ...]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class FlowQuery:
    """Filters and page of `FlowStore.list_flows`; every filter is ANDed with the others.

    - `statuses`: the flow status is one of these (empty: any status);
    - `phase_states`: for every named phase, its state is one of the given states
      (``{"data_import": frozenset({FAILED, RETRY_NEEDED})}``); each set must be non-empty;
      served by the GIN index on ``phase_states`` (one ``@>`` containment per state);
    - `updated_before`: last changed strictly before this instant (stuck flows);
    - `definition_name`: follows this definition;
    - `flow_ids`: one of these flows (at most `MAX_FLOW_IDS_PER_QUERY`);
    - `filter`: a parsed filter (`flowstate.core.filters`), compiled by
      `flowstate.storage.filters`; `filter_text` is the text it was parsed from, which the
      page token fingerprints (relative times move between pages, the text does not);
    - `alerting`: only flows with an alert in force (`Flow.alerts` not empty).
    - `parent_flow_id`: a child flow of this flow.

    Results are ordered by (updated_at, flow id), oldest change first. `page_size` 0 means the
    default (`DEFAULT_FLOW_PAGE_SIZE`); larger than `MAX_FLOW_PAGE_SIZE` is lowered to it;
    negative is refused.
    `page_token` is a previous page's `next_page_token`, with the same filters.
    """

    statuses: frozenset[FlowStatus] = frozenset()
    phase_states: Mapping[str, frozenset[PhaseState]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    updated_before: datetime | None = None
    definition_name: str | None = None
    flow_ids: tuple[str, ...] = ()
    filter: Filter | None = None
    filter_text: str = ""
    alerting: bool = False
    parent_flow_id: str | None = None
    """Only the children of this flow (docs/child_flows.md)."""
    page_size: int = DEFAULT_FLOW_PAGE_SIZE
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class FlowCount:
    """`CountFlows`: how many flows match, in all and per group key (empty without a grouping).

    A flow whose grouped phase does not exist (another definition) counts under the key "".
    """

    total: int
    groups: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class FlowPage:
    """One page of flows; `next_page_token` is empty on the last page."""

    flows: tuple[Flow, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a flow's history in version order; `next_page_token` empty on the last."""

    entries: tuple[HistoryEntry, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """What a request id stands for: the operation and the fingerprint of its payload."""

    request_id: str
    operation: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A live stored idempotency key: what its request id stood for, and the first result."""

    operation: str
    fingerprint: str
    response: Mapping[str, Any]
    """The flow after the first request and how many entries it appended (`write_statement`)."""

    def matches(self, key: IdempotencyKey) -> bool:
        """Whether `key` asks for the same request this key remembers."""
        return (self.operation, self.fingerprint) == (key.operation, key.fingerprint)


@dataclass(frozen=True, slots=True)
class Write:
    """A use case's decision for the runner to store (`FlowStore.update_flow`/`insert_flow`).

    The flow after the change, the history entries it appends (one per version, from the old
    version + 1), and the request's key (None without a request id).
    """

    flow: Flow
    entries: tuple[HistoryEntry, ...]
    key: IdempotencyKey | None = None
    timers: TimerSync | None = None
    """The flow's timers after the change (None: leave them alone; the flow has none)."""


@dataclass(frozen=True, slots=True)
class TimerSync:
    """Replace a flow's timer rows with `timers` (`flowstate.core.timers.plan_timers`).

    Due times are relative to `now` (the clock the plan was made with): a row is due
    ``due_at - now`` after the writing statement by the database clock. A timer already stored
    keeps its due time unless the planned one `resets` it (and is later). Rows not planned go.
    """

    timers: tuple[PlannedTimer, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class ClaimedTimer:
    """A due timer claimed by this replica (`TimerStore.claim`), to fire or void."""

    tenant: Tenant
    flow_id: str
    phase: str
    kind: str
    """A `flowstate.core.timers.TimerKind` value (kept as text: a newer replica may know more)."""
    due_at: datetime
    flow_version: int


@dataclass(frozen=True, slots=True)
class LockedTimer:
    """A timer row read under lock in the flow's transaction, with the database clock."""

    due_at: datetime
    flow_version: int
    now: datetime


Outcome = Write | MutationResult
"""What a decision returns: a `Write`, or a replayed `MutationResult` (nothing is written)."""
