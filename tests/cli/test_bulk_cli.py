"""``flowstate bulk``: dry run, a retry followed to the end with its summary, status, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

from flowstate.cli import bulk as bulk_cli
from flowstate.testing import RunningServer

from .conftest import CliResult, Runner


def run_bulk(*argv: str) -> CliResult:
    """Run ``flowstate bulk ARGV`` in this thread, capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = bulk_cli.main(["bulk", *argv])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


async def _failed_flow(flows: Runner, code: str) -> str:
    created = json.loads((await flows("create", "--label", "team=core", "--json")).out)
    flow_id: str = created["flow"]["flowId"]
    assert (await flows("transition", flow_id, "data_import", "in_progress")).code == 0
    failed = await flows(
        "transition", flow_id, "data_import", "failed", "--error-code", code, "--error-message", "x"
    )
    assert failed.code == 0, failed.err
    return flow_id


async def test_dry_run_then_retry_with_progress_and_summary(
    flows: Runner, cli_server: RunningServer, cli_token: str
) -> None:
    connection = ("--address", cli_server.address, "--token", cli_token)

    async def bulk(*argv: str) -> CliResult:
        return await asyncio.to_thread(run_bulk, *argv, *connection)

    retryable = await _failed_flow(flows, "EXTERNAL_SERVICE_ERROR")
    invalid = await _failed_flow(flows, "DATA_VALIDATION_FAILED")
    text = "status = FAILED AND labels.team = core"

    dry = await bulk("retry", "--filter", text, "--dry-run")
    assert dry.code == 0, dry.err
    assert "would take 2 flows; nothing was started" in dry.out
    assert retryable in dry.out
    assert invalid in dry.out
    assert "no bulk actions" in (await bulk("list")).out

    done = await bulk("retry", "--filter", text, "--reason", "outage over")
    assert done.code == 0, done.err
    assert "2/2 (100%) applied 1, refused 1, skipped 0" in done.out
    lines = [line.split() for line in done.out.splitlines()]
    assert ["state", "SUCCEEDED"] in lines
    assert ["applied", "1"] in lines
    assert ["refused", "1"] in lines
    refused_rows = [line for line in lines if line and line[0] == invalid]
    assert refused_rows
    assert refused_rows[0][1:3] == ["data_import", "RETRY_NOT_ALLOWED"]

    listed = json.loads((await bulk("list", "--json")).out)["bulkActions"]
    action_id = listed[0]["bulkActionId"]
    status = await bulk("status", action_id)
    assert ["state", "SUCCEEDED"] in [line.split() for line in status.out.splitlines()]
    stopped = await bulk("cancel", action_id)  # already finished: unchanged
    assert ["state", "SUCCEEDED"] in [line.split() for line in stopped.out.splitlines()]
    missing = await bulk("status", "00000000-0000-4000-8000-000000000000")
    assert missing.code == 1
    assert "BULK_ACTION_NOT_FOUND" in missing.err


async def test_bulk_needs_a_selection(cli_server: RunningServer, cli_token: str) -> None:
    result = await asyncio.to_thread(
        run_bulk, "pause", "--address", cli_server.address, "--token", cli_token
    )
    assert result.code == 2
    assert "--filter or --ids is required" in result.err
