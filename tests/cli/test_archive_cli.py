"""`flowstate archive`: policy, run (as of a later date), list, restore, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowstate.cli.main import main
from flowstate.core.commands import CancelFlow, Context
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Tenant
from flowstate.service import FlowService
from flowstate.storage import FlowStore


def _flowstate(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


async def test_archive_run_list_restore(
    store: FlowStore,
    database_url: str,
    tenant: Tenant,
    make_context: Callable[..., Context],
    tmp_path: Path,
) -> None:
    service = FlowService(store)
    created = await service.create_flow(tenant, definition_name="discovery", ctx=make_context())
    flow_id = created.flow.flow_id
    await service.mutate(tenant, flow_id, CancelFlow("done"), make_context())
    before = await store.get_flow(tenant, flow_id)
    name = f"{tenant.client_account_id}/{tenant.engagement_id}"
    db = ("--database-url", database_url)

    def cli(*argv: str) -> tuple[int, str]:
        return _flowstate(*argv, *db)

    code, out = await asyncio.to_thread(cli, "archive", "policy", "set", name, "7")
    assert (code, out.strip()) == (0, f"{name}: terminal flows kept 7 day(s)")
    later = (datetime.now(UTC) + timedelta(days=8)).isoformat()
    code, out = await asyncio.to_thread(
        cli, "archive", "run", "--dir", str(tmp_path), "--now", later
    )
    assert code == 0
    assert "archived" in out
    with pytest.raises(FlowStateError) as gone:
        await store.get_flow(tenant, flow_id)
    assert gone.value.code is ErrorCode.FLOW_NOT_FOUND

    code, out = await asyncio.to_thread(cli, "archive", "list", "--tenant", name)
    assert code == 0
    [row] = [line.split("\t") for line in out.splitlines()[1:]]
    assert row[0] == flow_id
    location = Path(row[-1])
    assert location.parent == tmp_path

    code, out = await asyncio.to_thread(cli, "archive", "restore", str(location), "--flow", flow_id)
    assert (code, out.strip()) == (0, "restored 1 flow(s), 2 history entries")
    assert await store.get_flow(tenant, flow_id) == before
    removed = f"{name}: policy removed (the archiver's --default-days applies)"
    code, out = await asyncio.to_thread(cli, "archive", "policy", "clear", name)
    assert (code, out.strip()) == (0, removed)
    code, out = await asyncio.to_thread(cli, "archive", "policy", "set", name, "0")
    assert (code, out.strip()) == (0, removed)  # one rule: set 0 is clear
    code, out = await asyncio.to_thread(cli, "archive", "policy", "get", name)
    assert out.strip() == f"{name}: no policy (the archiver's --default-days applies)"
