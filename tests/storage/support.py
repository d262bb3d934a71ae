"""Helpers of the storage tests: clocks, flows with every field set, direct SQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstate.core.commands import Context
from flowstate.core.model import (
    AlertKind,
    ApprovalDecision,
    ErrorCode,
    ExternalDependency,
    Flow,
    FlowAlert,
    FlowStatus,
    HistoryEntry,
    HistoryKind,
    Phase,
    PhaseApproval,
    PhaseError,
    PhaseState,
    Tenant,
)
from flowstate.storage import FlowStore
from flowstate.storage.sql import Transaction

ContextFactory = Callable[..., Context]
T0 = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)


def asyncpg_dsn(url: str) -> str:
    """The libpq form of a ``postgresql+asyncpg://`` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of `sql`, run as the connecting (super)user, outside the store."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def history_versions(url: str, flow_id: str) -> list[int]:
    """Every version recorded for a flow, in order (straight from the table)."""
    rows = await fetch(
        url, "SELECT version FROM flow_history WHERE flow_id = $1 ORDER BY version", flow_id
    )
    return [r["version"] for r in rows]


def rich_flow(tenant: Tenant, *, flow_id: str | None = None) -> tuple[Flow, tuple[HistoryEntry]]:
    """A discovery flow with every field set to a non-default value, and its one entry."""
    error = PhaseError(
        ErrorCode.AGENT_TIMEOUT, "agent took too long", {"attempt": 2, "nested": {"a": [1, 2.5]}}
    )
    approval = PhaseApproval(
        ApprovalDecision.APPROVE, "approver-1", "fine ✓", T0 - timedelta(minutes=20)
    )
    alert = FlowAlert(
        AlertKind.APPROVAL_TIMEOUT,
        due_at=T0 - timedelta(minutes=2),
        raised_at=T0 - timedelta(minutes=1),
        status=FlowStatus.WAITING_APPROVAL,
        phase="field_mapping",
        message="waited too long",
    )
    phases = (
        Phase(
            "data_import",
            PhaseState.COMPLETED,
            progress=0.0,
            retry_count=1,
            last_retry_at=T0 - timedelta(minutes=30),
            state_entered_at=T0 - timedelta(minutes=20),
            started_at=T0 - timedelta(minutes=25),
            completed_at=T0 - timedelta(minutes=20),
            next_attempt_at=T0 - timedelta(minutes=21),
            approval=approval,
            child_flow_id="00000000-0000-4000-8000-0000000000c1",
        ),
        Phase(
            "field_mapping",
            PhaseState.IN_PROGRESS,
            progress=0.25,
            retry_count=2,
            last_retry_at=T0 - timedelta(minutes=10),
            error=error,
            state_entered_at=T0 - timedelta(minutes=5),
            started_at=T0 - timedelta(minutes=5),
        ),
        Phase("data_cleansing"),
        Phase("asset_inventory"),
        Phase("dependency_analysis"),
    )
    flow = Flow(
        flow_id=flow_id or str(uuid.uuid4()),
        tenant=tenant,
        definition_name="discovery",
        definition_version=1,
        phases=phases,
        status=FlowStatus.PAUSED,
        status_before_pause=FlowStatus.DISCOVERY,
        progress=33.0,
        version=1,
        created_at=T0 - timedelta(hours=1),
        updated_at=T0,
        display_name="Rich flow ✓ 'quoted'",
        labels={"team": "platform", "env": "qa"},
        deadline=T0 + timedelta(hours=3),
        alerts=(alert,),
        alert_due_at=T0 + timedelta(hours=3),
        parent_flow_id="00000000-0000-4000-8000-0000000000a1",
        parent_phase="deploy",
        external_dependencies=(
            ExternalDependency("data_import", "00000000-0000-4000-8000-0000000000b1", "ship"),
        ),
    )
    entry = HistoryEntry(
        flow_version=1,
        kind=HistoryKind.TRANSITION,
        status_before=FlowStatus.DATA_GATHERING,
        status_after=FlowStatus.PAUSED,
        occurred_at=T0,
        phase="field_mapping",
        from_state=PhaseState.RETRY_NEEDED,
        to_state=PhaseState.IN_PROGRESS,
        reason="because",
        user_id="user-1",
        request_id="request-1",
        metadata={"k": "v", "n": 1.5, "list": [True, None]},
        error=error,
        time_in_state_seconds=12.75,
        progress_after=33.0,
        cause="data_import",
        phase_progress=0.25,
        next_attempt_at=T0 + timedelta(seconds=1.5),
        approval=approval,
        alert=alert,
        phase_states_after=flow.phase_states,
        error_codes_after=frozenset({error.error_code, ErrorCode.EXTERNAL_SERVICE_ERROR}),
    )
    return flow, (entry,)


class HoldingStore(FlowStore):
    """A store whose write transactions wait, written but not committed, until `release`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def _before_commit(self, transaction: Transaction) -> None:
        self.holding.set()
        await self.release.wait()


async def insert_flows(url: str, flows: list[Flow]) -> None:
    """Write `flows` as rows, without history (`flowstate.testing.insert_flow_rows`)."""
    from flowstate.testing import insert_flow_rows

    await insert_flow_rows(url, flows)


async def store_both_ways(
    database_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[FlowStore]:
    """A store with group commit on, then off, for modules that run their tests both ways::

    store = pytest_asyncio.fixture(name="store", **BOTH_WAYS)(store_both_ways)
    """
    opened = await FlowStore.open(database_url, group_commit=request.param)
    yield opened
    await opened.close()


BOTH_WAYS: dict[str, Any] = {"params": [True, False], "ids": ["group-commit", "one-by-one"]}
