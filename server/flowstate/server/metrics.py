"""Prometheus metrics of one server, in its own registry, served on a separate HTTP port.

The metrics, their labels and what they count are listed once, in docs/operations.md
("Metrics"); `tests/docs/test_metrics_table.py` fails when a metric registered here is missing
from that table or the table names one that is not registered. The notes below are about how
the labels are kept bounded.

`result` is ``applied`` or the refusal's error code. Label values come from definitions and
enums, never from free request text, so cardinality stays bounded: refusals that name an
unknown phase (INVALID_PHASE) or a malformed request are not counted as transitions. Since
tenants register their own definitions, phase names are tenant data too: the first
`MAX_PHASE_LABELS` distinct phase names get their own ``phase`` label, every later one is
counted as ``other``.

`flowstate_tenant_requests_total` counts admitted (``admitted``), delayed for a reserved token
(``shaped``) and refused (``limited``) calls per tenant and RPC family
(`flowstate.server.ratelimit`); `flowstate_rate_limit_wait_seconds` their waits, by family
only. The ``tenant``
label (``account/engagement``) is given to at most ``FLOWSTATE_TENANT_METRICS_TOP_N`` (20)
tenants: the first ones to make `TENANT_LABEL_AFTER` calls (counted in a bounded table that
halves its counts when full, so only sustained callers get there); every other tenant is
``other``. Labels are kept for the process's life (a Prometheus series cannot be renamed).
Label children are cached so recording costs a dict lookup and an increment.

`flowstate_client_requests_total` counts RPCs by the ``x-flowstate-client: <sdk>/<version>``
header the SDKs send (`CLIENT_HEADER`): `sdk` is ``python``, ``typescript``, ``go``, ``other``
(any other value) or ``none`` (no header); `version` is the SDK's version when it looks like one
(``MAJOR.MINOR.PATCH``), else ``other``; after `_MAX_CLIENT_VERSIONS` distinct versions more
are counted as ``other``, so a misbehaving client cannot grow the label set.

`flowstate_stream_lag_seconds` is the time from a change's commit (the database's clock) to the
watch hub reading it for a live channel (once per channel that reads it): notification plus
read; a growing p99 means streams fall behind.

`flowstate_stuck_flows` counts the flows of *all* tenants that are not terminal and have not
changed for ``FLOWSTATE_STUCK_AFTER`` seconds, by status; `flowstate.server.stuck` refreshes it
every ``FLOWSTATE_STUCK_CHECK_INTERVAL`` seconds (every replica counts the same flows: aggregate
with ``max``, not ``sum``). The checked timestamp says how fresh it is (alert when it lags).

The archive metrics come from the archiver task (`flowstate.server.archiving`, on servers with
``FLOWSTATE_ARCHIVE_DIR``): flows archived, deleted and partitions dropped by this replica's
runs (sum over replicas), and after each run the flows of trees due for archiving still
waiting and how long the oldest of those trees is overdue (every replica sees the same:
aggregate with ``max``).

`flowstate_alerts_total` counts the alerts this server raised (`flowstate.server.alerts`), by
kind (``deadline_exceeded``, ``stuck``, ``approval_timeout``); each breach is raised once by one
replica, so aggregate with ``sum``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flowstate.core.errors import FlowStateError
from flowstate.core.model import AlertKind, ErrorCode, FlowStatus, HistoryEntry, HistoryKind, Tenant
from flowstate.core.rules import TERMINAL_STATUSES

__all__ = [
    "CLIENT_HEADER",
    "MAX_PHASE_LABELS",
    "TENANT_LABEL_AFTER",
    "Metrics",
    "MetricsEndpoint",
    "TenantLabels",
    "client_label",
]

#: Request metadata naming the SDK and its version, e.g. ``python/0.1.0``.
CLIENT_HEADER: Final = "x-flowstate-client"
_KNOWN_SDKS: Final = frozenset({"python", "typescript", "go"})
_VERSION: Final = re.compile(r"\d{1,4}\.\d{1,4}\.\d{1,4}(?:[-+][0-9A-Za-z.-]{1,32})?")
_MAX_CLIENT_VERSIONS: Final = 64
MAX_PHASE_LABELS: Final = 256
"""Distinct ``phase`` label values; later phase names are ``other``."""
TENANT_LABEL_AFTER: Final = 100
"""Calls after which a tenant gets its own ``tenant`` label (while fewer than N have one)."""
OTHER: Final = "other"

_RPC_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_LAG_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_STATE_BUCKETS: Final = (
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0,
    7 * 86400.0,
)  # fmt: skip
_TIMER_LAG_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
_LIVE_STATUSES: Final = tuple(s for s in FlowStatus if s not in TERMINAL_STATUSES)
_UNCOUNTED_REFUSALS: Final = frozenset({ErrorCode.INVALID_PHASE, ErrorCode.MALFORMED_REQUEST})


def client_label(header: str | None) -> tuple[str, str]:
    """(sdk, version) of an ``x-flowstate-client`` value, each from a bounded set (above)."""
    if header is None:
        return "none", ""
    sdk, _, version = header.partition("/")
    if sdk not in _KNOWN_SDKS:
        return "other", "other"
    return sdk, version if _VERSION.fullmatch(version) else "other"


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """The running HTTP endpoint: where it listens, and how to stop it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Metrics:
    """The server's metrics; one instance per server (tests run several in one process)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, tenant_top_n: int = 20
    ) -> None:
        """Register every metric in `registry` (a fresh one by default); at most
        `tenant_top_n` tenants get their own ``tenant`` label."""
        self.registry = registry or CollectorRegistry()
        self._phases: set[str] = set()
        self.tenant_labels = TenantLabels(tenant_top_n)
        self._tenant_requests = Counter(
            "flowstate_tenant_requests",
            "Calls per tenant (top N, else other) and RPC family: admitted, shaped or limited.",
            ["tenant", "family", "result"],
            registry=self.registry,
        )
        self._tenant_children: dict[tuple[str, str, str], Counter] = {}
        self._rate_limit_wait = Histogram(
            "flowstate_rate_limit_wait_seconds",
            "Waits of calls shaped by their tenant's rate limit (a reserved token), by family.",
            ["family"],
            buckets=_RPC_BUCKETS,
            registry=self.registry,
        )
        self._wait_children: dict[str, Histogram] = {}
        self._rpc_total = Counter(
            "flowstate_rpc_requests",
            "RPCs handled, by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self._rpc_seconds = Histogram(
            "flowstate_rpc_duration_seconds",
            "RPC latency in the server, by method and gRPC status code.",
            ["method", "code"],
            buckets=_RPC_BUCKETS,
            registry=self.registry,
        )
        self._transitions = Counter(
            "flowstate_phase_transitions",
            "Phase transitions applied or refused, by phase, from/to state and result.",
            ["phase", "from_state", "to_state", "result"],
            registry=self.registry,
        )
        self._time_in_state = Histogram(
            "flowstate_phase_time_in_state_seconds",
            "Time a phase spent in a state before leaving it.",
            ["phase", "state"],
            buckets=_STATE_BUCKETS,
            registry=self.registry,
        )
        self._retries = Counter(
            "flowstate_retries", "Retry steps applied, by phase.", ["phase"], registry=self.registry
        )
        self._rollbacks = Counter(
            "flowstate_rollbacks",
            "Phases rolled back, by phase and kind (rollback, cascade).",
            ["phase", "kind"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "flowstate_open_streams",
            "Open WatchFlow/WatchFlows streams.",
            ["method"],
            registry=self.registry,
        )
        self._stuck_flows = Gauge(
            "flowstate_stuck_flows",
            "Non-terminal flows of all tenants unchanged for FLOWSTATE_STUCK_AFTER, by status.",
            ["status"],
            registry=self.registry,
        )
        self._stuck_checked = Gauge(
            "flowstate_stuck_flows_checked_timestamp_seconds",
            "When flowstate_stuck_flows was last counted (Unix time).",
            registry=self.registry,
        )
        self._client_requests = Counter(
            "flowstate_client_requests",
            "RPCs by the SDK that sent them (x-flowstate-client), and its version.",
            ["sdk", "version"],
            registry=self.registry,
        )
        self._stream_lag = Histogram(
            "flowstate_stream_lag_seconds",
            "Seconds from a change's commit to the watch hub reading it live (per channel).",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self._bulk_flows = Counter(
            "flowstate_bulk_flows",
            "Flows a bulk action of this server took (applied, refused or skipped).",
            registry=self.registry,
        )
        self._timers_fired = Counter(
            "flowstate_timers_fired",
            "Timers that changed their flow (docs/timers.md), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self._timer_lag = Histogram(
            "flowstate_timer_lag_seconds",
            "How late a timer fired: database now minus its due time.",
            buckets=_TIMER_LAG_BUCKETS,
            registry=self.registry,
        )
        self._archived_flows = Counter(
            "flowstate_archived_flows_total",
            "Terminal flows archived (exported and verified) by this server's archiver.",
            registry=self.registry,
        )
        self._archive_purged = Counter(
            "flowstate_archive_purged_flows_total",
            "Archived flows deleted through the sanctioned function by this server's archiver.",
            registry=self.registry,
        )
        self._archive_dropped = Counter(
            "flowstate_archive_dropped_partitions_total",
            "History partitions dropped whole because every row in them was archived.",
            registry=self.registry,
        )
        self._archive_runs = Counter(
            "flowstate_archive_runs_total",
            "Archiver runs by result (ok, failed).",
            ["result"],
            registry=self.registry,
        )
        self._archive_pending = Gauge(
            "flowstate_archive_pending_flows",
            "Flows of trees due for archiving, not archived yet (after the last run).",
            registry=self.registry,
        )
        self._archive_lag = Gauge(
            "flowstate_archive_lag_seconds",
            "How long the oldest tree due for archiving is overdue (after a run).",
            registry=self.registry,
        )
        self._webhook_deliveries = Counter(
            "flowstate_webhook_deliveries",
            "Webhook delivery attempts by result: ok (2xx), failed; disabled counts subscriptions "
            "the failure budget stopped.",
            ["result"],
            registry=self.registry,
        )
        alerts = Counter(
            "flowstate_alerts",
            "Alerts raised (a deadline passed, a flow stuck, an approval timeout escalated).",
            ["kind"],
            registry=self.registry,
        )
        self._alert_children = {kind: alerts.labels(kind.value) for kind in AlertKind}
        self._client_children: dict[tuple[str, str], Counter] = {}
        self._rpc_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        # Label children by label tuple: ``labels(...)`` validates and hashes under a lock on
        # every call; these make recording a dict lookup. Label values are bounded (above).
        self._transition_children: dict[tuple[str, str, str, str], Counter] = {}
        self._time_in_state_children: dict[tuple[str, str], Histogram] = {}
        self._retry_children: dict[str, Counter] = {}
        self._rollback_children: dict[tuple[str, str], Counter] = {}
        self._open_stream_children: dict[str, Gauge] = {}

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one RPC and its latency."""
        children = self._rpc_children.get((method, code))
        if children is None:
            children = (
                self._rpc_total.labels(method, code),
                self._rpc_seconds.labels(method, code),
            )
            self._rpc_children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_client(self, sdk: str, version: str) -> bool:
        """Count one RPC of an SDK (labels from `client_label`); True the first time it is seen."""
        key = (sdk, version)
        child = self._client_children.get(key)
        first = child is None
        if child is None:
            if len(self._client_children) >= _MAX_CLIENT_VERSIONS and version:
                key = (sdk, "other")
                child = self._client_children.get(key)
            if child is None:
                child = self._client_children[key] = self._client_requests.labels(*key)
        child.inc()
        return first

    def observe_stream_lag(self, seconds: float) -> None:
        """A change read live by the watch hub `seconds` after its commit."""
        self._stream_lag.observe(seconds)

    def observe_webhook(self, result: str) -> None:
        """Count one webhook attempt (``ok``, ``failed``) or a disabled subscription."""
        self._webhook_deliveries.labels(result).inc()

    def open_stream_gauge(self, method: str) -> Gauge:
        """The ``flowstate_open_streams`` child of `method` (cached)."""
        gauge = self._open_stream_children.get(method)
        if gauge is None:
            gauge = self._open_stream_children[method] = self.open_streams.labels(method)
        return gauge

    def _phase(self, phase: str) -> str:
        """`phase` as a label value: itself among the first `MAX_PHASE_LABELS`, else other."""
        if phase in self._phases:
            return phase
        if len(self._phases) >= MAX_PHASE_LABELS:
            return OTHER
        self._phases.add(phase)
        return phase

    def observe_tenant(self, tenant: Tenant, family: str, result: str) -> None:
        """Count one call of `tenant` in `family`: ``admitted``, ``shaped`` (`observe_shaped`)
        or ``limited``."""
        key = (self.tenant_labels.label(tenant), family, result)
        child = self._tenant_children.get(key)
        if child is None:
            child = self._tenant_children[key] = self._tenant_requests.labels(*key)
        child.inc()

    def observe_shaped(self, tenant: Tenant, family: str, seconds: float) -> None:
        """Count a call of `tenant` in `family` that waits `seconds` for its reserved token."""
        self.observe_tenant(tenant, family, "shaped")
        histogram = self._wait_children.get(family)
        if histogram is None:
            histogram = self._wait_children[family] = self._rate_limit_wait.labels(family)
        histogram.observe(seconds)

    def _transition(self, phase: str, from_state: str, to_state: str, result: str) -> Counter:
        phase = self._phase(phase)
        key = (phase, from_state, to_state, result)
        child = self._transition_children.get(key)
        if child is None:
            child = self._transition_children[key] = self._transitions.labels(*key)
        return child

    def record_entries(self, entries: Iterable[HistoryEntry]) -> None:
        """Count the phase changes a mutation applied (transitions, retries, rollbacks) and the
        alerts it raised."""
        for entry in entries:
            if entry.alert is not None:
                self._alert_children[entry.alert.kind].inc()
            phase, from_state, to_state = entry.phase, entry.from_state, entry.to_state
            if phase is None or from_state is None or to_state is None:
                continue
            if from_state is to_state:  # a progress report, not a transition
                continue
            self._transition(phase, from_state.value, to_state.value, "applied").inc()
            phase = self._phase(phase)
            if entry.time_in_state_seconds is not None:
                key = (phase, from_state.value)
                histogram = self._time_in_state_children.get(key)
                if histogram is None:
                    histogram = self._time_in_state_children[key] = self._time_in_state.labels(*key)
                histogram.observe(entry.time_in_state_seconds)
            kind = entry.kind
            if kind is HistoryKind.RETRY:
                counter = self._retry_children.get(phase)
                if counter is None:
                    counter = self._retry_children[phase] = self._retries.labels(phase)
                counter.inc()
            elif kind is HistoryKind.ROLLBACK or kind is HistoryKind.CASCADE_ROLLBACK:
                rollback = (phase, "rollback" if kind is HistoryKind.ROLLBACK else "cascade")
                counter = self._rollback_children.get(rollback)
                if counter is None:
                    counter = self._rollback_children[rollback] = self._rollbacks.labels(*rollback)
                counter.inc()

    def record_refusal(self, error: FlowStateError) -> None:
        """Count a refused phase change (the core's refusals name the phase and states)."""
        phase = error.details.get("phase")
        if not isinstance(phase, str) or error.code in _UNCOUNTED_REFUSALS:
            return
        self._transition(
            phase,
            str(error.details.get("from_state", "")),
            str(error.details.get("to_state", "")),
            error.code.value,
        ).inc()

    def record_bulk_flows(self, count: int) -> None:
        """Count flows taken by this server's bulk worker."""
        self._bulk_flows.inc(count)

    def record_timer(self, kind: str, lag_seconds: float) -> None:
        """Count one fired timer and how late it fired."""
        self._timers_fired.labels(kind).inc()
        self._timer_lag.observe(max(lag_seconds, 0.0))

    def set_stuck_flows(self, counts: Mapping[FlowStatus, int], checked_at: float) -> None:
        """Publish a count of stuck flows (every live status, 0 where none) made at `checked_at`."""
        for status in _LIVE_STATUSES:
            self._stuck_flows.labels(status.value).set(counts.get(status, 0))
        self._stuck_checked.set(checked_at)

    def record_archive_run(
        self, *, archived: int, purged: int, dropped: int, pending: int, lag: float
    ) -> None:
        """Publish what one successful archiver run did and the backlog it left."""
        self._archived_flows.inc(archived)
        self._archive_purged.inc(purged)
        self._archive_dropped.inc(dropped)
        self._archive_runs.labels("ok").inc()
        self._archive_pending.set(pending)
        self._archive_lag.set(lag)

    def record_archive_failure(self) -> None:
        """Count an archiver run that failed."""
        self._archive_runs.labels("failed").inc()

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Serve ``/metrics`` over HTTP on `host`:`port` (0: an ephemeral port)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsEndpoint(host, int(server.server_port), server, thread)


class TenantLabels:
    """The ``tenant`` label of each tenant: its own for at most `top_n`, else ``other``."""

    __slots__ = ("_counts", "_labels", "_top_n")

    def __init__(self, top_n: int) -> None:
        """At most `top_n` tenants (0: none) get their own label."""
        self._top_n = top_n
        self._labels: dict[Tenant, str] = {}
        self._counts: dict[Tenant, int] = {}

    @property
    def labelled(self) -> int:
        """Tenants that have their own label."""
        return len(self._labels)

    def label(self, tenant: Tenant) -> str:
        """The label of `tenant` now (counts the call)."""
        label = self._labels.get(tenant)
        if label is not None:
            return label
        if len(self._labels) >= self._top_n:
            return OTHER
        count = self._counts.get(tenant, 0) + 1
        if count >= TENANT_LABEL_AFTER:
            self._counts.pop(tenant, None)
            label = self._labels[tenant] = f"{tenant.client_account_id}/{tenant.engagement_id}"
            return label
        if tenant not in self._counts and len(self._counts) >= 10 * self._top_n:
            # Bounded table: halve every count and forget the tenants that reach 0, so only
            # sustained callers can climb to TENANT_LABEL_AFTER.
            self._counts = {t: c // 2 for t, c in self._counts.items() if c // 2 > 0}
        self._counts[tenant] = count
        return OTHER
