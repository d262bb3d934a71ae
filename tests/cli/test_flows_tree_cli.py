"""``flowstate definitions apply`` of a child_flow definition (the file form of
docs/child_flows.md) and ``flowstate flows tree`` against a live server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer

from .conftest import Runner
from .test_definitions_cli import run_cli

CHILD = """
name: tree_child
phases:
  - {name: work, weight: 100}
"""
PARENT = """
name: tree_parent
phases:
  - name: left
    weight: 50
    kind: child_flow
    child_flow: {definition: tree_child}
  - name: right
    weight: 50
    kind: child_flow
    child_flow: {definition: tree_child, on_parent_cancel: abandon}
"""


@pytest.fixture
def admin(cli_server: RunningServer, cli_tenant: Tenant) -> Runner:
    token = cli_server.mint(cli_tenant, scopes=["flows:read", "flows:write", "definitions:write"])

    async def run(*argv: str) -> object:
        connection = ["--address", cli_server.address, "--token", token]
        return await asyncio.to_thread(run_cli, *argv, *connection)

    return run  # type: ignore[return-value]


async def test_apply_a_child_flow_definition_and_show_the_tree(
    admin: Runner, tmp_path: Path
) -> None:
    for name, text in (("child.yaml", CHILD), ("parent.yaml", PARENT)):
        path = tmp_path / name
        path.write_text(text)
        applied = await admin("definitions", "apply", str(path))
        assert applied.code == 0, applied.err
    created = await admin("flows", "create", "--definition", "tree_parent", "--json")
    parent_id = json.loads(created.out)["flow"]["flowId"]
    started = await admin("flows", "transition", parent_id, "left", "in_progress", "--json")
    assert started.code == 0, started.err
    child_id = json.loads(started.out)["flow"]["phases"][0]["childFlowId"]

    tree = await admin("flows", "tree", parent_id)
    assert tree.code == 0, tree.err
    first, second = tree.out.splitlines()[:2]
    assert first.startswith(parent_id)
    assert "tree_parent v1" in first
    assert f"└─ left (IN_PROGRESS): {child_id}  tree_child v1  INITIALIZED" in second
    as_json = await admin("flows", "tree", parent_id, "--json")
    assert [d["flowId"] for d in json.loads(as_json.out)["descendants"]] == [child_id]


async def test_watch_a_tree_names_each_flow_and_resumes_by_cursor(
    admin: Runner, tmp_path: Path
) -> None:
    for name, text in (("child.yaml", CHILD), ("parent.yaml", PARENT)):
        path = tmp_path / name
        path.write_text(text)
        assert (await admin("definitions", "apply", str(path))).code == 0
    created = await admin("flows", "create", "--definition", "tree_parent", "--json")
    parent_id = json.loads(created.out)["flow"]["flowId"]
    started = await admin("flows", "transition", parent_id, "left", "in_progress", "--json")
    child_id = json.loads(started.out)["flow"]["phases"][0]["childFlowId"]
    await admin("flows", "cancel", parent_id)  # cascades to the child: the stream ends

    lines = (await admin("flows", "watch", parent_id, "--children-depth", "1")).out.splitlines()
    assert lines[0].startswith(f"{parent_id}  SELF  v")
    assert lines[1].startswith(f"{child_id}  DESCENDANT  v")
    assert "cursor=" in lines[-1]
    as_json = await admin("flows", "watch", parent_id, "--children-depth", "1", "--json")
    responses = [json.loads(line) for line in as_json.out.splitlines()]
    assert [r["relation"] for r in responses] == [
        "WATCH_RELATION_SELF",
        "WATCH_RELATION_DESCENDANT",
    ]
    assert responses[1]["parentFlowId"] == parent_id
    resumed = await admin(
        "flows", "watch", parent_id, "--children-depth", "1", "--cursor", responses[-1]["cursor"]
    )
    assert resumed.code == 0, resumed.err
    assert resumed.out == ""  # nothing after the cursor: the tree had ended
