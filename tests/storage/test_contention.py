"""Serialization failures and deadlocks: the transaction is retried, a bounded number of times.

The failures are real PostgreSQL errors (SQLSTATE 40001 and 40P01, raised by the server inside
the write transaction right before COMMIT), so the classification, the rollback and the retry
run exactly as they would under real contention.
"""

from __future__ import annotations

import pytest

from flowstate.core.commands import UpdatePhaseProgress
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore, StoreUnavailable
from flowstate.storage.sql import Transaction

from .support import ContextFactory, history_versions
from .test_concurrency import started_flow


class ContendedStore(FlowStore):
    """A store whose write transactions hit `sqlstate` the first `failures` times."""

    sqlstate = "40001"
    failures = 0
    calls = 0

    async def _before_commit(self, transaction: Transaction) -> None:
        cls = type(self)
        cls.calls += 1
        if cls.calls <= cls.failures:
            await transaction.connection.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'injected contention' "
                f"USING ERRCODE = '{cls.sqlstate}'; END $$"
            )


@pytest.mark.parametrize("state", ["40001", "40P01"], ids=["serialization", "deadlock"])
async def test_contention_is_retried_and_the_change_applies_once(
    tenant: Tenant, make_context: ContextFactory, database_url: str, store: FlowStore, state: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    contended = await ContendedStore.open(database_url)
    ContendedStore.sqlstate, ContendedStore.failures, ContendedStore.calls = state, 2, 0
    try:
        applied = await FlowService(contended).mutate(
            tenant, flow_id, UpdatePhaseProgress("data_import", 0.5), make_context()
        )
    finally:
        await contended.close()
    assert ContendedStore.calls == 3  # two rolled-back attempts, then the one that commits
    assert applied.flow.version == 3
    assert await history_versions(database_url, flow_id) == [1, 2, 3]


@pytest.mark.parametrize("state", ["40001", "40P01"], ids=["serialization", "deadlock"])
async def test_contention_past_the_retries_is_unavailable_and_changes_nothing(
    tenant: Tenant, make_context: ContextFactory, database_url: str, store: FlowStore, state: str
) -> None:
    flow_id = await started_flow(store, tenant, make_context)
    contended = await ContendedStore.open(database_url)
    ContendedStore.sqlstate, ContendedStore.failures, ContendedStore.calls = state, 100, 0
    try:
        with pytest.raises(StoreUnavailable) as unavailable:
            await FlowService(contended).mutate(
                tenant, flow_id, UpdatePhaseProgress("data_import", 0.5), make_context()
            )
    finally:
        await contended.close()
    assert unavailable.value.code is ErrorCode.TEMPORARY_RESOURCE_UNAVAILABLE
    assert unavailable.value.retry_allowed
    assert unavailable.value.details == {"reason": "contention"}
    assert ContendedStore.calls == 3  # the bound: three attempts in all
    assert await history_versions(database_url, flow_id) == [1, 2]
