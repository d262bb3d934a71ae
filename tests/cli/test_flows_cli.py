"""``flowstate flows`` against a live server: tables, --json, structured errors, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from flowstate.testing import RunningServer

from .conftest import CliResult, Runner, run_flows


def flow_id_of(result: CliResult) -> str:
    """The flow id a create/transition table printed."""
    for line in result.out.splitlines():
        if line.startswith("flow "):
            return line.split()[1]
    raise AssertionError(f"no flow id in:\n{result.out}")


async def test_create_transition_get_history_and_list_as_tables(flows: Runner) -> None:
    created = await flows("create", "--display-name", "cli demo", "--label", "team=red")
    flow_id = flow_id_of(created)
    started = await flows("transition", flow_id, "data_import", "in_progress", "--reason", "go")
    got = await flows("get", flow_id)
    history = await flows("history", flow_id)
    listed = await flows("list")

    assert created.code == 0, created.err
    assert "INITIALIZED" in created.out
    assert "team=red" in created.out
    assert started.code == 0, started.err
    assert "DATA_GATHERING" in started.out
    assert "6.0%" in started.out
    assert "appended:" in started.out
    assert got.code == 0
    assert "data_import          IN_PROGRESS" in got.out
    assert "version     2" in got.out
    header, *rows = history.out.splitlines()
    assert header.split()[:4] == ["VERSION", "TIME", "KIND", "PHASE"]
    assert [row.split()[0] for row in rows] == ["1", "2"]
    assert "INITIALIZED -> DATA_GATHERING" in rows[1]
    assert rows[1].rstrip().endswith("go")
    assert listed.out.splitlines()[0].startswith("FLOW ID")
    assert flow_id in listed.out
    assert "cli demo" in listed.out


async def test_json_output_is_the_canonical_proto3_json(flows: Runner) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]
    moved = json.loads(
        (await flows("transition", flow_id, "data_import", "IN_PROGRESS", "--json")).out
    )
    got = json.loads((await flows("get", flow_id, "--json")).out)
    history = json.loads((await flows("history", flow_id, "--json")).out)
    listed = json.loads((await flows("list", "--json", "--status", "DATA_GATHERING")).out)

    assert moved["flow"]["version"] == "2"  # int64 is a string in proto3 JSON
    assert moved["historyEntries"][0]["toState"] == "PHASE_STATE_IN_PROGRESS"
    assert got["status"] == "FLOW_STATUS_DATA_GATHERING"
    assert got["progress"] == 6.0
    assert [entry["kind"] for entry in history["historyEntries"]] == [
        "HISTORY_EVENT_KIND_CREATED",
        "HISTORY_EVENT_KIND_TRANSITION",
    ]
    assert [flow["flowId"] for flow in listed["flows"]] == [flow_id]


async def test_a_refusal_prints_the_structured_error_and_exits_1(flows: Runner) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]

    text = await flows("transition", flow_id, "data_import", "COMPLETED")
    as_json = await flows("transition", flow_id, "data_import", "COMPLETED", "--json")

    assert text.code == 1
    assert text.out == ""
    first, *rest = text.err.splitlines()
    assert first.startswith("flowstate: error: INVALID_PHASE_TRANSITION: ")
    details = json.loads(rest[0].removeprefix("  details: "))
    assert details["valid_transitions"] == ["in_progress"]
    assert "  grpc_status: FAILED_PRECONDITION" in rest
    assert any(line.startswith("  correlation_id: ") for line in rest)
    assert "Traceback" not in text.err
    assert as_json.code == 1
    error = json.loads(as_json.err)["error"]
    assert error["code"] == "INVALID_PHASE_TRANSITION"
    assert error["grpc_code"] == "FAILED_PRECONDITION"
    assert error["details"]["phase"] == "data_import"


async def test_not_found_and_bad_credentials(flows: Runner, cli_server: RunningServer) -> None:
    missing = await flows("get", "00000000-0000-4000-8000-000000000000")
    unauthenticated = await asyncio.to_thread(
        run_flows, "list", "--address", cli_server.address, "--token", "forged"
    )

    assert missing.code == 1
    assert missing.err.startswith("flowstate: error: FLOW_NOT_FOUND: ")
    assert unauthenticated.code == 1
    assert unauthenticated.err.startswith("flowstate: error: UNAUTHENTICATED: ")


async def test_an_unreachable_server_is_unavailable_naming_the_address() -> None:
    result = await asyncio.to_thread(
        run_flows, "list", "--address", "127.0.0.1:1", "--token", "t", "--timeout", "1"
    )
    as_json = await asyncio.to_thread(
        run_flows, "list", "--address", "127.0.0.1:1", "--token", "t", "--timeout", "1", "--json"
    )

    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("flowstate: error: UNAVAILABLE: cannot reach 127.0.0.1:1 (")
    assert "TEMPORARY_RESOURCE_UNAVAILABLE" not in result.err
    assert "grpc_status: UNAVAILABLE" in result.err
    error = json.loads(as_json.err)["error"]
    assert error["code"] == "UNAVAILABLE"
    assert error["message"].startswith("cannot reach 127.0.0.1:1 (")


async def test_a_port_that_never_answers_is_a_deadline_naming_the_address() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"

        result = await asyncio.to_thread(
            run_flows, "list", "--address", address, "--token", "t", "--timeout", "1"
        )

    assert result.code == 1
    assert result.err.startswith(
        f"flowstate: error: DEADLINE_EXCEEDED: no answer from {address} within 1s ("
    )


async def test_usage_errors_exit_2(flows: Runner) -> None:
    bad_state = await flows("transition", "00000000-0000-4000-8000-000000000000", "p", "RUNNING")
    bad_duration = await flows("list", "--stuck", "soon")

    assert bad_state.code == 2
    assert "argument STATE: unknown PhaseState 'RUNNING' (expected one of: NOT_STARTED," in (
        bad_state.err
    )
    assert bad_duration.code == 2
    assert "argument --stuck: not a duration like 30m, 2h or 1d: 'soon'" in bad_duration.err


async def test_recovery_lists_and_executes_options(flows: Runner) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]
    await flows("transition", flow_id, "data_import", "IN_PROGRESS")
    failed = await flows(
        "transition", flow_id, "data_import", "FAILED",
        "--error-code", "AGENT_TIMEOUT", "--error-message", "agent timed out",
    )  # fmt: skip

    listed = await flows("recovery", flow_id)
    executed = await flows("recovery", flow_id, "--execute", "1", "--json")

    assert failed.code == 0, failed.err
    assert "AGENT_TIMEOUT: agent timed out" in failed.out
    assert listed.code == 0
    rows = listed.out.splitlines()
    assert rows[1].split()[:2] == ["#", "ACTION"]
    assert rows[2].split()[:4] == ["1", "RETRY", "data_import", "RETRY_NEEDED"]
    assert executed.code == 0, executed.err
    assert json.loads(executed.out)["historyEntries"][0]["kind"] == "HISTORY_EVENT_KIND_RETRY"


async def test_mutations_pause_resume_rollback_retry_cancel(flows: Runner) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]

    async def status(*argv: str) -> str:
        result = await flows(*argv, "--json")
        assert result.code == 0, result.err
        return str(json.loads(result.out)["flow"]["status"]).removeprefix("FLOW_STATUS_")

    assert await status("transition", flow_id, "data_import", "IN_PROGRESS") == "DATA_GATHERING"
    assert await status("progress", flow_id, "data_import", "0.5") == "DATA_GATHERING"
    assert await status("pause", flow_id, "--reason", "maintenance") == "PAUSED"
    assert await status("resume", flow_id) == "DATA_GATHERING"
    assert await status("transition", flow_id, "data_import", "COMPLETED") == "DATA_GATHERING"
    assert (
        await status("rollback", flow_id, "data_import", "--expected-version", "6")
        == "DATA_GATHERING"
    )
    assert await status("transition", flow_id, "data_import", "IN_PROGRESS") == "DATA_GATHERING"
    assert (
        await status(
            "transition", flow_id, "data_import", "FAILED", "--error-code", "AGENT_TIMEOUT"
        )
        == "FAILED"
    )
    assert await status("retry", flow_id, "data_import") == "RETRY_PENDING"
    assert await status("cancel", flow_id) == "CANCELLED"
    stale = await flows("pause", flow_id, "--expected-version", "1")
    assert stale.code == 1
    assert stale.err.startswith("flowstate: error: VERSION_CONFLICT: ")


async def test_validate_answers_with_its_exit_code(flows: Runner) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]

    allowed = await flows("validate", flow_id, "--phase", "data_import", "--to", "IN_PROGRESS")
    blocked = await flows("validate", flow_id, "--phase", "field_mapping", "--to", "IN_PROGRESS")
    tables = await flows(
        "validate", "--phase", "data_import", "--from", "NOT_STARTED", "--to", "COMPLETED", "--json"
    )

    assert allowed.code == 0
    assert allowed.out.startswith("allowed: the flow would be DATA_GATHERING at 6.0%")
    assert blocked.code == 1
    assert blocked.out.startswith("not allowed: PHASE_ORDER_VIOLATION: ")
    assert "blocking phases: data_import" in blocked.out
    assert tables.code == 1
    assert json.loads(tables.out)["validTransitions"] == ["PHASE_STATE_IN_PROGRESS"]


async def test_address_and_token_come_from_the_environment(
    cli_server: RunningServer, cli_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSTATE_ADDRESS", cli_server.address)
    monkeypatch.setenv("FLOWSTATE_TOKEN", cli_token)

    created = await asyncio.to_thread(run_flows, "create", "--json")
    result = await asyncio.to_thread(run_flows, "list")

    assert created.code == 0, created.err
    flow_id = json.loads(created.out)["flow"]["flowId"]
    assert result.code == 0, result.err
    assert result.out.splitlines()[0].startswith("FLOW ID")
    assert flow_id in result.out


async def test_the_console_entry_point_runs_the_group(
    cli_server: RunningServer, cli_token: str
) -> None:
    pytest.importorskip("flowstate.cli.main", reason="the flowstate console script")
    env = {**os.environ, "FLOWSTATE_ADDRESS": cli_server.address, "FLOWSTATE_TOKEN": cli_token}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flowstate.cli.main", "flows", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    created = await asyncio.to_thread(run, "create", "--json")
    refused = await asyncio.to_thread(
        run, "transition", json.loads(created.stdout)["flow"]["flowId"], "data_import", "COMPLETED"
    )

    assert created.returncode == 0, created.stderr
    assert refused.returncode == 1
    assert refused.stderr.startswith("flowstate: error: INVALID_PHASE_TRANSITION: ")
    assert "Traceback" not in refused.stderr


async def test_output_into_a_closed_pipe_stops_quietly(
    cli_server: RunningServer, cli_token: str
) -> None:
    """``flowstate flows create | head -1``: the reader is gone; no error, SIGPIPE's status."""
    pytest.importorskip("flowstate.cli.main", reason="the flowstate console script")
    env = {**os.environ, "FLOWSTATE_ADDRESS": cli_server.address, "FLOWSTATE_TOKEN": cli_token}

    def run() -> subprocess.CompletedProcess[str]:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader left before the first line: every write fails
        try:
            return subprocess.run(
                [sys.executable, "-m", "flowstate.cli.main", "flows", "create"],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
        finally:
            os.close(write_end)

    result = await asyncio.to_thread(run)

    assert result.returncode == 128 + 13, result.stderr
    assert result.stderr == ""


async def test_watch_prints_every_event_until_the_flow_ends(flows: Runner) -> None:
    flow_id = flow_id_of(await flows("create"))
    await flows("transition", flow_id, "data_import", "IN_PROGRESS", "--reason", "go")
    await flows("cancel", flow_id, "--reason", "done")

    replayed = await flows("watch", flow_id, "--after-version", "0")
    snapshot = await flows("watch", flow_id, "--json")

    assert replayed.code == 0, replayed.err
    lines = replayed.out.splitlines()
    assert [line.split()[0] for line in lines] == ["v1", "v2", "v3"]
    assert "TRANSITION data_import NOT_STARTED -> IN_PROGRESS  DATA_GATHERING  6.0%" in lines[1]
    assert lines[1].endswith("go")
    assert "CANCELLED" in lines[2]
    assert lines[2].endswith("done")
    # The flow has ended: the stream is its snapshot, one JSON object per line.
    assert snapshot.code == 0, snapshot.err
    (event,) = [json.loads(line) for line in snapshot.out.splitlines()]
    assert event["flowVersion"] == "3"
    assert event["snapshot"]["status"] == "FLOW_STATUS_CANCELLED"


async def test_watch_of_a_bad_flow_id_prints_the_structured_error(flows: Runner) -> None:
    result = await flows("watch", "not-a-uuid")

    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("flowstate: error: MALFORMED_REQUEST: flow_id")
    assert "Traceback" not in result.err


async def test_decide_approves_with_a_comment_and_list_filters_alerting(flows: Runner) -> None:
    flow_id = json.loads((await flows("create", "--deadline", "2d", "--json")).out)["flow"][
        "flowId"
    ]
    for state in ("IN_PROGRESS", "WAITING_APPROVAL"):
        assert (await flows("transition", flow_id, "data_import", state)).code == 0
    early = await flows("decide", flow_id, "field_mapping", "approve")
    assert early.code == 1
    assert early.err.startswith("flowstate: error: INVALID_PHASE_TRANSITION: ")
    decided = await flows("decide", flow_id, "data_import", "approve", "--comment", "lgtm")
    assert decided.code == 0, decided.err
    assert "data_import          COMPLETED" in decided.out
    assert "DECISION" in decided.out
    assert decided.out.rstrip().endswith("lgtm")
    shown = await flows("get", flow_id)
    assert "deadline" in shown.out
    alerting = await flows("list", "--alerting")
    assert alerting.code == 0
    assert flow_id not in alerting.out
