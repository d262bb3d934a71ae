"""GetRetentionPolicy / SetRetentionPolicy through the Python SDK against a real server."""

from __future__ import annotations

import uuid

import pytest

from flowstate.client import (
    AsyncFlowstateClient,
    MalformedRequest,
    PermissionDenied,
)
from flowstate.core.model import Tenant
from flowstate.testing import RunningServer


def _client(server: RunningServer, tenant: Tenant, *scopes: str) -> AsyncFlowstateClient:
    token = server.mint(tenant, user="ops-alice", scopes=scopes)
    return AsyncFlowstateClient(address=server.server.address, token=token, timeout=10)


async def test_set_get_and_clear_the_tenants_policy(server: RunningServer) -> None:
    tenant = Tenant(f"retention-{uuid.uuid4().hex[:12]}", "rpc")
    other = Tenant(tenant.client_account_id, "other")
    async with _client(server, tenant, "retention:admin") as client:
        assert (await client.get_retention_policy()).retain_days == 0

        stored = await client.set_retention_policy(90)

        assert (stored.retain_days, stored.updated_by) == (90, "ops-alice")
        assert stored.update_time is not None
        assert await client.get_retention_policy() == stored
        assert (await client.set_retention_policy(90)).retain_days == 90  # idempotent
        for bad in (-1, 36501):
            with pytest.raises(MalformedRequest) as refused:
                await client.set_retention_policy(bad)
            assert refused.value.details["field"] == "retain_days"
        assert (await client.get_retention_policy()).retain_days == 90  # nothing changed
    async with _client(server, other, "retention:admin") as neighbour:
        assert (await neighbour.get_retention_policy()).retain_days == 0
    async with _client(server, tenant, "retention:admin") as client:
        cleared = await client.set_retention_policy(0)
        assert (cleared.retain_days, cleared.update_time) == (0, None)
        assert (await client.get_retention_policy()).retain_days == 0


async def test_flows_admin_is_not_enough(server: RunningServer) -> None:
    tenant = Tenant(f"retention-{uuid.uuid4().hex[:12]}", "rpc")
    async with _client(server, tenant, "flows:admin") as client:
        with pytest.raises(PermissionDenied):
            await client.set_retention_policy(1)
        with pytest.raises(PermissionDenied):
            await client.get_retention_policy()
