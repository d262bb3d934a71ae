"""``flowstate definitions`` against a live server: apply (and --check), list, show with the DAG."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest

from flowstate.cli import definitions as definitions_cli
from flowstate.cli import main as cli_main
from flowstate.core.model import Tenant
from flowstate.testing import RunningServer

from .conftest import CliResult, Runner

EXAMPLE = Path(__file__).parents[2] / "examples" / "definitions" / "order_fulfilment.yaml"


def run_cli(*argv: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main.main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def definitions(cli_server: RunningServer, cli_tenant: Tenant) -> Runner:
    """Runs ``flowstate definitions ...`` as the test's tenant with definitions:write."""
    token = cli_server.mint(cli_tenant, scopes=["flows:read", "flows:write", "definitions:write"])

    async def run(*argv: str) -> CliResult:
        connection = ["--address", cli_server.address, "--token", token]
        return await asyncio.to_thread(run_cli, "definitions", *argv, *connection)

    return run


async def test_apply_the_example_then_show_list_and_create_a_flow(
    definitions: Runner, flows: Runner
) -> None:
    checked = await definitions("apply", str(EXAMPLE), "--check")
    assert checked.code == 0, checked.err
    assert "valid; it would be order_fulfilment v1" in checked.out
    applied = await definitions("apply", str(EXAMPLE))
    assert applied.out.strip() == "registered: order_fulfilment v1"
    again = await definitions("apply", str(EXAMPLE))
    assert again.out.strip() == "unchanged: order_fulfilment v1"

    listed = await definitions("list")
    rows = {line.split()[0]: line.split() for line in listed.out.splitlines()[1:]}
    assert rows["order_fulfilment"][1:4] == ["1", "4", "tenant"]
    assert rows["discovery"][3] == "built-in"

    shown = await definitions("show", "order_fulfilment")
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0] == "order_fulfilment v1 (tenant): Order fulfilment"
    drawing = shown.out[shown.out.index("stage 1") :]
    assert "stage 1  │ receive │" in drawing
    assert "stage 2  │ pick │     │ gift_wrap? │" in drawing
    assert "▲ pick, gift_wrap" in drawing
    assert "stage 3  │ ship │" in drawing

    created = await flows("create", "--definition", "order_fulfilment", "--json")
    flow = json.loads(created.out)["flow"]
    assert flow["definitionName"] == "order_fulfilment"
    assert [p["name"] for p in flow["phases"]] == ["receive", "pick", "gift_wrap", "ship"]
    # The README's quickstart, step by step.
    flow_id = flow["flowId"]
    for phase, state in (
        ("receive", "in_progress"),
        ("receive", "completed"),
        ("pick", "in_progress"),
    ):
        moved = await flows("transition", flow_id, phase, state)
        assert moved.code == 0, moved.err
    skipped = await flows("skip", flow_id, "gift_wrap", "--json")
    assert skipped.code == 0, skipped.err
    after = json.loads(skipped.out)
    assert after["flow"]["phases"][2]["state"] == "PHASE_STATE_SKIPPED"
    assert after["flow"]["progress"] == 39.0  # receive 20 + pick 30 x 0.3 + gift_wrap 10
    assert after["historyEntries"][0]["kind"] == "HISTORY_EVENT_KIND_SKIP"


async def test_an_invalid_file_prints_every_problem_with_its_path(
    definitions: Runner, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(
        json.dumps(
            {
                "name": "broken",
                "phases": [
                    {"name": "a", "weight": 50, "depends_on": ["c"]},
                    {"name": "b", "weight": 40, "depends_on": ["a", "ghost"], "colour": "red"},
                    {"name": "c", "weight": 10, "depends_on": ["b"]},
                ],
            }
        )
    )
    result = await definitions("apply", str(broken), "--check")
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{broken}: 3 problem(s):",
        "  phases[1].colour: unknown field of a phase: 'colour'",
        "  phases[1].depends_on[1]: unknown phase 'ghost'",
        "  phases[1].depends_on[0]: dependency cycle: a -> c -> b -> a",
    ]


async def test_refusals_print_the_structured_error(
    definitions: Runner, flows: Runner, tmp_path: Path
) -> None:
    shadow = tmp_path / "discovery.yaml"
    shadow.write_text(EXAMPLE.read_text().replace("name: order_fulfilment", "name: discovery"))
    refused = await definitions("apply", str(shadow))
    assert refused.code == 1
    assert refused.err.startswith("flowstate: error: DEFINITION_SHADOWS_BUILTIN: ")
    missing = await definitions("show", "nope")
    assert missing.code == 1
    assert missing.err.startswith("flowstate: error: DEFINITION_NOT_FOUND: ")
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("name: [unclosed")
    bad = await definitions("apply", str(not_yaml))
    assert bad.code == 1
    assert "is not valid yaml" in bad.err


def test_render_dag_of_a_diamond() -> None:
    drawing = definitions_cli.render_dag(
        [("a", (), False), ("b", ("a",), False), ("c", ("a",), True), ("d", ("b", "c"), False)]
    )
    assert drawing.splitlines()[:8] == [
        "         ┌───┐",
        "stage 1  │ a │",
        "         └───┘",
        "         ┌───┐  ┌────┐",
        "stage 2  │ b │  │ c? │",
        "         └───┘  └────┘",
        "           ▲ a    ▲ a",
        "         ┌───┐",
    ]


TIMED_YAML = """
name: cli_timed
phases:
  - name: work
    weight: 100
    max_retries: 2
    policy:
      timeout: 1h
      heartbeat_timeout: 10m
      retry_policy:
        initial_backoff: 1h
        multiplier: 2
        max_backoff: 2h
        retry_on: [EXTERNAL_SERVICE_ERROR]
"""


async def test_timers_heartbeat_and_get_show_a_phases_timers(
    definitions: Runner, flows: Runner, tmp_path: Path
) -> None:
    source = tmp_path / "timed.yaml"
    source.write_text(TIMED_YAML)
    applied = await definitions("apply", str(source))
    assert applied.code == 0, applied.err
    shown = await definitions("show", "cli_timed", "--json")
    policy = json.loads(shown.out)["phases"][0]["policy"]
    assert (policy["timeout"], policy["heartbeatTimeout"]) == ("3600s", "600s")
    flow_id = json.loads((await flows("create", "--definition", "cli_timed", "--json")).out)[
        "flow"
    ]["flowId"]
    idle = await flows("heartbeat", flow_id, "work")
    assert idle.code == 1
    assert "INVALID_PHASE_TRANSITION" in idle.out + idle.err
    await flows("transition", flow_id, "work", "in_progress")
    beat = await flows("heartbeat", flow_id, "work")
    assert beat.code == 0, beat.err
    assert beat.out.startswith("alive; times out at ")
    running = await flows("get", flow_id)
    assert "TIMERS" in running.out.splitlines()[running.out.splitlines().index("") + 1]
    assert "timeout at " in running.out
    assert "heartbeat within 600s" in running.out
    failed = await flows(
        "transition", flow_id, "work", "failed", "--error-code", "EXTERNAL_SERVICE_ERROR"
    )
    assert failed.code == 0, failed.err
    got = await flows("get", flow_id)
    assert "retry at " in got.out
    as_json = json.loads((await flows("get", flow_id, "--json")).out)
    assert "nextAttemptTime" in as_json["phases"][0]
