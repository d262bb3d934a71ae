"""``flowstate flows list --filter`` and ``flowstate flows count --by`` against a real server."""

from __future__ import annotations

import json

from .conftest import Runner


async def _create(flows: Runner, *labels: str) -> str:
    args = [item for label in labels for item in ("--label", label)]
    result = await flows("create", *args, "--json")
    assert result.code == 0, result.err
    flow_id: str = json.loads(result.out)["flow"]["flowId"]
    return flow_id


async def test_list_with_a_filter_and_count_by_status(flows: Runner) -> None:
    core = await _create(flows, "team=core")
    await _create(flows, "team=web")
    started = await flows("transition", core, "data_import", "in_progress")
    assert started.code == 0, started.err

    listed = await flows("list", "--filter", 'labels.team = "core"', "--json")
    assert [f["flowId"] for f in json.loads(listed.out)["flows"]] == [core]

    counted = await flows("count", "--by", "status")
    assert counted.code == 0, counted.err
    lines = [line.split() for line in counted.out.splitlines()]
    assert lines[0] == ["STATUS", "COUNT"]
    assert ["DATA_GATHERING", "1"] in lines
    assert ["INITIALIZED", "1"] in lines
    assert lines[-1] == ["TOTAL", "2"]

    as_json = json.loads((await flows("count", "--filter", "labels.team = web", "--json")).out)
    assert as_json["totalCount"] == "1"


async def test_a_bad_filter_prints_the_position_and_exits_1(flows: Runner) -> None:
    result = await flows("list", "--filter", "status = NOPE")
    assert result.code == 1
    assert "at position 9" in result.err
