"""The first hour with `flowstate`: --version, help for every argument, the valid values listed
where they are asked for, phase failures and restarts in one command, WatchFlows."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest

from flowstate.cli.main import build_parser, main

from .conftest import CliResult, Runner

FAILURE_CODES = (
    "PHASE_EXECUTION_FAILED, AGENT_TIMEOUT, EXTERNAL_SERVICE_ERROR (retryable) or "
    "DATA_VALIDATION_FAILED (not retryable)"
)


def flowstate(*argv: str) -> CliResult:
    """`flowstate ARGV` in this process; argparse's exits (--help, --version) become codes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def help_of(*argv: str) -> str:
    """The --help text of a command, on one line per paragraph (argparse wraps at $COLUMNS)."""
    result = flowstate(*argv, "--help")
    assert result.code == 0, result.err
    return " ".join(result.out.split())


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub-)command's parser, with its command path."""
    found = [(" ".join(("flowstate", *path)), parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += parsers(child, (*path, name))
    return found


def test_version_names_the_server_client_and_api() -> None:
    result = flowstate("--version")

    assert result.code == 0
    assert result.out.startswith("flowstate 0.1.0 (client 0.1.0, API flowstate.v1, Python 3.")


def test_every_positional_and_option_of_every_command_has_help() -> None:
    commands = parsers(build_parser())
    missing = [
        f"{command}: {action.metavar or action.dest}"
        for command, parser in commands
        for action in parser._actions
        if not action.help
    ]

    assert {"flowstate flows watch-all", "flowstate migrate upgrade"} <= dict(commands).keys()
    assert missing == []


def test_migrate_help_shows_the_commands_not_a_docstring() -> None:
    text = flowstate("migrate", "--help").out

    assert "flowstate migrate upgrade              to the latest revision" in text
    assert "Database roles" in text
    assert "``" not in text
    assert "`register`" not in text
    assert "upgrade" in help_of("--help")


def test_help_lists_states_statuses_and_failure_codes_where_they_are_asked_for() -> None:
    transition = help_of("flows", "transition")
    listing = help_of("flows", "list")
    validate = help_of("flows", "validate")
    retry = help_of("flows", "retry")

    states = "NOT_STARTED, IN_PROGRESS, WAITING_VALIDATION, WAITING_APPROVAL, COMPLETED, FAILED,"
    assert f"States: {states} RETRY_NEEDED, ROLLED_BACK" in transition
    assert "--error-code CODE why the phase failed (required for FAILED / RETRY_NEEDED): " in (
        transition
    )
    assert FAILURE_CODES in transition
    assert "PLANNING, WAITING_APPROVAL, RETRY_PENDING, ERROR_RECOVERY, COMPLETED, FAILED" in listing
    assert "Statuses: INITIALIZED, ACTIVE," in validate
    assert "States: NOT_STARTED," in validate
    assert "so a FAILED phase needs two calls, or one with --restart" in retry


async def test_a_failure_without_error_code_names_the_option_and_changes_nothing(
    flows: Runner,
) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]
    await flows("transition", flow_id, "data_import", "IN_PROGRESS")

    refused = await flows("transition", flow_id, "data_import", "FAILED")
    unknown = await flows("transition", flow_id, "data_import", "FAILED", "--error-code", "oops")
    got = json.loads((await flows("get", flow_id, "--json")).out)

    assert refused.code == 2
    assert refused.err == (
        "flowstate: error: INVALID_ARGUMENT: a move to FAILED reports why: add --error-code "
        f"CODE, one of {FAILURE_CODES} (and --error-message TEXT)\n"
    )
    assert unknown.code == 2
    assert (
        f"argument --error-code: unknown error code 'oops': a phase failure is {FAILURE_CODES}"
    ) in unknown.err
    assert got["version"] == "2"
    assert got["phases"][0]["state"] == "PHASE_STATE_IN_PROGRESS"


async def test_retry_restart_takes_a_failed_phase_back_to_in_progress_in_one_command(
    flows: Runner,
) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]
    await flows("transition", flow_id, "data_import", "in_progress")
    failed = await flows(
        "transition", flow_id, "data_import", "failed", "--error-code", "agent_timeout"
    )

    restarted = await flows("retry", flow_id, "data_import", "--restart", "--reason", "again")
    history = json.loads((await flows("history", flow_id, "--json")).out)["historyEntries"]

    assert failed.code == 0, failed.err
    assert restarted.code == 0, restarted.err
    assert "data_import          IN_PROGRESS" in restarted.out
    appended = restarted.out.split("appended:\n")[1].splitlines()
    assert [row.split()[3:7] for row in appended[1:]] == [
        ["RETRY", "data_import", "FAILED", "RETRY_NEEDED"],
        ["RETRY", "data_import", "RETRY_NEEDED", "IN_PROGRESS"],
    ]
    assert [entry["toState"] for entry in history[-2:]] == [
        "PHASE_STATE_RETRY_NEEDED",
        "PHASE_STATE_IN_PROGRESS",
    ]
    assert [entry["flowVersion"] for entry in history[-2:]] == ["4", "5"]


async def test_retry_restart_as_json_has_both_entries(flows: Runner) -> None:
    flow_id = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]
    await flows("transition", flow_id, "data_import", "IN_PROGRESS")
    await flows("transition", flow_id, "data_import", "FAILED", "--error-code", "AGENT_TIMEOUT")
    once = json.loads((await flows("retry", flow_id, "data_import", "--json")).out)

    restarted = json.loads(
        (await flows("retry", flow_id, "data_import", "--restart", "--json")).out
    )

    assert [e["toState"] for e in once["historyEntries"]] == ["PHASE_STATE_RETRY_NEEDED"]
    # Already RETRY_NEEDED: --restart is the one remaining step.
    assert [e["toState"] for e in restarted["historyEntries"]] == ["PHASE_STATE_IN_PROGRESS"]
    assert restarted["flow"]["phases"][0]["retryCount"] == 1


async def test_watch_all_prints_each_flow_then_resumes_from_a_cursor(flows: Runner) -> None:
    first = json.loads((await flows("create", "--json")).out)["flow"]["flowId"]
    second = json.loads((await flows("create", "--json", "--display-name", "b")).out)["flow"][
        "flowId"
    ]

    snapshots = await flows("watch-all", "--limit", "2", "--json")
    lines = [json.loads(line) for line in snapshots.out.splitlines()]
    await flows("transition", second, "data_import", "IN_PROGRESS", "--reason", "go")
    resumed = await flows("watch-all", "--cursor", lines[-1]["cursor"], "--limit", "1")
    only_first = await flows("watch-all", "--flow-id", first, "--limit", "1")

    assert snapshots.code == 0, snapshots.err
    assert sorted(line["event"]["flowId"] for line in lines) == sorted([first, second])
    assert all("snapshot" in line["event"] for line in lines)
    assert resumed.code == 0, resumed.err
    (change,) = resumed.out.splitlines()
    assert change.startswith(f"{second}  v2  ")
    assert "TRANSITION data_import NOT_STARTED -> IN_PROGRESS  DATA_GATHERING  6.0%" in change
    assert "  cursor=" in change
    assert only_first.out.startswith(f"{first}  v1  SNAPSHOT  INITIALIZED  0.0%")


@pytest.mark.parametrize("value", ["RUNNING", "data_gathering!"])
async def test_an_unknown_status_lists_the_statuses(flows: Runner, value: str) -> None:
    result = await flows("list", "--status", value)

    assert result.code == 2
    assert f"argument --status: unknown FlowStatus {value!r} (expected one of: INITIALIZED," in (
        result.err
    )
