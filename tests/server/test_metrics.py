"""`Metrics` recording through its cached label children counts exactly what it did before."""

from __future__ import annotations

from datetime import UTC, datetime

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, HistoryEntry, HistoryKind, PhaseState
from flowstate.server.metrics import Metrics, client_label

_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _entry(
    kind: HistoryKind,
    from_state: PhaseState | None,
    to_state: PhaseState | None,
    *,
    phase: str | None = "data_import",
    seconds: float | None = None,
) -> HistoryEntry:
    return HistoryEntry(
        flow_version=2,
        kind=kind,
        status_before=FlowStatus.ACTIVE,
        status_after=FlowStatus.ACTIVE,
        occurred_at=_AT,
        phase=phase,
        from_state=from_state,
        to_state=to_state,
        time_in_state_seconds=seconds,
    )


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_record_entries_counts_every_call_per_label_tuple() -> None:
    metrics = Metrics()
    moved = _entry(HistoryKind.TRANSITION, PhaseState.NOT_STARTED, PhaseState.IN_PROGRESS)
    timed = _entry(
        HistoryKind.TRANSITION, PhaseState.IN_PROGRESS, PhaseState.COMPLETED, seconds=2.0
    )
    progress = _entry(HistoryKind.PROGRESS, PhaseState.IN_PROGRESS, PhaseState.IN_PROGRESS)
    flow_level = _entry(HistoryKind.PAUSE, None, None, phase=None)
    retry = _entry(HistoryKind.RETRY, PhaseState.FAILED, PhaseState.IN_PROGRESS)
    rollback = _entry(HistoryKind.ROLLBACK, PhaseState.COMPLETED, PhaseState.ROLLED_BACK)
    cascade = _entry(
        HistoryKind.CASCADE_ROLLBACK, PhaseState.COMPLETED, PhaseState.ROLLED_BACK, phase="b"
    )
    for _ in range(3):
        metrics.record_entries([moved, timed, progress, flow_level, retry, rollback, cascade])

    transitions = "flowstate_phase_transitions_total"
    assert (
        _value(
            metrics,
            transitions,
            phase="data_import",
            from_state="not_started",
            to_state="in_progress",
            result="applied",
        )
        == 3
    )
    assert (
        _value(
            metrics,
            transitions,
            phase="data_import",
            from_state="in_progress",
            to_state="in_progress",
            result="applied",
        )
        is None
    )
    assert (
        _value(
            metrics,
            "flowstate_phase_time_in_state_seconds_count",
            phase="data_import",
            state="in_progress",
        )
        == 3
    )
    assert (
        _value(
            metrics,
            "flowstate_phase_time_in_state_seconds_sum",
            phase="data_import",
            state="in_progress",
        )
        == 6.0
    )
    assert _value(metrics, "flowstate_retries_total", phase="data_import") == 3
    assert _value(metrics, "flowstate_rollbacks_total", phase="data_import", kind="rollback") == 3
    assert _value(metrics, "flowstate_rollbacks_total", phase="b", kind="cascade") == 3
    assert _value(metrics, "flowstate_rollbacks_total", phase="b", kind="rollback") is None


def test_record_refusal_counts_named_phase_refusals_only() -> None:
    metrics = Metrics()
    refused = FlowStateError(
        ErrorCode.INVALID_PHASE_TRANSITION,
        "no",
        phase="data_import",
        from_state="not_started",
        to_state="completed",
    )
    for _ in range(2):
        metrics.record_refusal(refused)
        metrics.record_refusal(FlowStateError(ErrorCode.INVALID_PHASE, "no", phase="nope"))
        metrics.record_refusal(FlowStateError(ErrorCode.FLOW_NOT_FOUND, "no"))
    assert (
        _value(
            metrics,
            "flowstate_phase_transitions_total",
            phase="data_import",
            from_state="not_started",
            to_state="completed",
            result=ErrorCode.INVALID_PHASE_TRANSITION.value,
        )
        == 2
    )
    assert (
        _value(
            metrics,
            "flowstate_phase_transitions_total",
            phase="nope",
            from_state="",
            to_state="",
            result=ErrorCode.INVALID_PHASE.value,
        )
        is None
    )


def test_open_stream_gauge_is_one_child_per_method() -> None:
    metrics = Metrics()
    gauge = metrics.open_stream_gauge("WatchFlow")
    assert metrics.open_stream_gauge("WatchFlow") is gauge
    gauge.inc()
    gauge.inc()
    gauge.dec()
    assert _value(metrics, "flowstate_open_streams", method="WatchFlow") == 1


def test_client_labels_are_bounded() -> None:
    assert client_label("python/0.1.0") == ("python", "0.1.0")
    assert client_label("go/1.2.3-rc.1") == ("go", "1.2.3-rc.1")
    assert client_label("typescript/latest") == ("typescript", "other")
    assert client_label("curl/8.0.0") == ("other", "other")
    assert client_label(None) == ("none", "")


def test_client_requests_are_counted_and_new_versions_capped() -> None:
    metrics = Metrics()
    assert metrics.observe_client("python", "0.1.0") is True
    assert metrics.observe_client("python", "0.1.0") is False
    assert _value(metrics, "flowstate_client_requests_total", sdk="python", version="0.1.0") == 2
    for patch in range(200):
        metrics.observe_client("go", f"1.0.{patch}")
    samples = [
        sample
        for family in metrics.registry.collect()
        if family.name == "flowstate_client_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
    assert len(samples) <= 65
    assert _value(metrics, "flowstate_client_requests_total", sdk="go", version="other") == 137
