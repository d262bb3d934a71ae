"""Change events are converted once per change and shared by the streams that deliver them.

Pins that the hub's shared conversion (`SharedChanges`) is the same message the servicer's
`_event` builds, that it is reused only for the very entry object the hub handed out, and that
tenants never share an entry's messages.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from flowstate.core.model import FlowStatus, HistoryEntry, HistoryKind, PhaseState, Tenant
from flowstate.server.rpc import RpcSupport
from flowstate.server.servicer import FlowStateServicer
from flowstate.server.watch import FlowEventValue, SharedChanges
from flowstate.storage.store import FlowStore

TENANT = Tenant("acct-shared", "eng-shared")
OTHER = Tenant("acct-other", "eng-shared")


def _servicer() -> FlowStateServicer:
    return FlowStateServicer(cast(FlowStore, None), cast(RpcSupport, None))


def _change(version: int, reason: str = "moved") -> FlowEventValue:
    entry = HistoryEntry(
        flow_version=version,
        kind=HistoryKind.TRANSITION,
        status_before=FlowStatus.INITIALIZED,
        status_after=FlowStatus.DATA_GATHERING,
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        phase="data_import",
        from_state=PhaseState.NOT_STARTED,
        to_state=PhaseState.IN_PROGRESS,
        reason=reason,
        user_id="u",
        progress_after=0.25,
    )
    return FlowEventValue(
        "flow-1", version, FlowStatus.DATA_GATHERING, 0.25, change=entry, cursor="c"
    )


async def test_shared_change_is_the_event_the_servicer_would_build() -> None:
    svc = _servicer()
    value = _change(2)
    assert value.change is not None
    event, response = SharedChanges().get(TENANT, value, value.change)
    assert event == await svc._event(value)
    assert response.event == event


def test_same_entry_object_is_converted_once_and_shared() -> None:
    svc = SharedChanges()
    value = _change(2)
    assert value.change is not None
    first = svc.get(TENANT, value, value.change)
    again = svc.get(TENANT, value, value.change)
    assert again[0] is first[0]
    assert again[1] is first[1]


def test_another_entry_or_tenant_under_the_same_key_is_converted_afresh() -> None:
    svc = SharedChanges()
    value = _change(2, reason="first")
    assert value.change is not None
    first = svc.get(TENANT, value, value.change)
    other = svc.get(OTHER, value, value.change)
    assert other[1] is not first[1]
    assert other[1] == first[1]
    replaced = _change(2, reason="second")
    assert replaced.change is not None
    fresh = svc.get(TENANT, replaced, replaced.change)
    assert fresh[1] is not first[1]
    assert fresh[0].change.reason == "second"


def test_cache_stays_bounded() -> None:
    svc = SharedChanges(limit=3)
    for version in range(1, 10):
        value = _change(version)
        assert value.change is not None
        svc.get(TENANT, value, value.change)
        assert len(svc) <= 3
