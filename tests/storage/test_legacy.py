"""Backward compatibility: importing legacy boolean rows, and the view that shows them again."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from flowstate.cli import storage_commands
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, FlowStatus, HistoryKind, PhaseState, Tenant
from flowstate.service import import_legacy_rows
from flowstate.service.legacy import LEGACY_IMPORT_REASON, read_legacy_file
from flowstate.storage import FlowQuery, FlowStore, migrate

from .support import fetch

COLUMNS = (
    "data_import_completed",
    "field_mapping_completed",
    "data_cleansing_completed",
    "asset_inventory_completed",
    "dependency_analysis_completed",
)
ROWS: list[dict[str, Any]] = [
    {"id": "legacy-1", "flow_name": "Acme", **dict.fromkeys(COLUMNS, False)},
    {"id": "legacy-2", **dict(zip(COLUMNS, [True, True, False, False, False], strict=True))},
    {"id": "legacy-3", **dict.fromkeys(COLUMNS, "true")},
]


async def test_rows_become_flows_with_their_phase_states(
    store: FlowStore, tenant: Tenant, database_url: str
) -> None:
    result = await import_legacy_rows(store, tenant, ROWS)
    assert len(result.created) == 3
    assert result.skipped == ()
    fresh, half, done = [await store.get_flow(tenant, i) for i in result.created]

    assert fresh.display_name == "Acme"
    assert set(fresh.phase_states.values()) == {PhaseState.NOT_STARTED}
    assert fresh.status is FlowStatus.INITIALIZED
    assert half.phase_states["field_mapping"] is PhaseState.COMPLETED
    assert half.phase_states["data_cleansing"] is PhaseState.NOT_STARTED
    assert half.status is FlowStatus.DISCOVERY
    assert half.progress == 40.0
    assert done.status is FlowStatus.COMPLETED
    assert done.progress == 100.0

    (entry,) = (await store.list_history(tenant, half.flow_id)).entries
    assert entry.kind is HistoryKind.CREATED
    assert entry.reason == LEGACY_IMPORT_REASON
    assert entry.status_after is FlowStatus.DISCOVERY
    assert entry.metadata["legacy_id"] == "legacy-2"
    assert entry.metadata["legacy_completed"]["field_mapping_completed"] is True

    view = await fetch(
        database_url,
        "SELECT * FROM legacy_discovery_flows WHERE client_account_id = $1"
        " AND engagement_id = $2 ORDER BY progress_percentage",
        tenant.client_account_id,
        tenant.engagement_id,
    )
    assert [r["progress_percentage"] for r in view] == [0.0, 40.0, 100.0]
    assert [r[c] for c in COLUMNS for r in view[1:2]] == [True, True, False, False, False]
    assert view[2]["status"] == "completed"
    assert str(view[1]["flow_id"]) == half.flow_id


async def test_importing_twice_creates_nothing_new(store: FlowStore, tenant: Tenant) -> None:
    first = await import_legacy_rows(store, tenant, ROWS[:2])
    second = await import_legacy_rows(store, tenant, ROWS)
    assert second.skipped == first.created
    assert len(second.created) == 1
    assert len((await store.list_flows(tenant, FlowQuery())).flows) == 3


@pytest.mark.parametrize(
    ("row", "field"),
    [
        pytest.param({"data_import_completed": True}, "rows[0].flow_id", id="no-id"),
        pytest.param(
            {"id": "x", "data_import_completed": "maybe"},
            "rows[0].data_import_completed",
            id="not-bool",
        ),
    ],
)
async def test_a_bad_row_is_malformed(
    store: FlowStore, tenant: Tenant, row: dict[str, object], field: str
) -> None:
    with pytest.raises(FlowStateError) as refused:
        await import_legacy_rows(store, tenant, [row])
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details["field"] == field


def test_files_are_read_as_csv_or_json(tmp_path: Path) -> None:
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("id,data_import_completed\nlegacy-9,t\n", encoding="utf-8")
    json_file = tmp_path / "rows.json"
    json_file.write_text(json.dumps({"rows": [{"id": "legacy-9"}]}), encoding="utf-8")
    assert read_legacy_file(csv_file) == [{"id": "legacy-9", "data_import_completed": "t"}]
    assert read_legacy_file(json_file) == [{"id": "legacy-9"}]
    for bad in (tmp_path / "rows.txt", tmp_path / "missing.csv"):
        with pytest.raises(FlowStateError) as refused:
            read_legacy_file(bad)
        assert refused.value.details["field"] == "file"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowstate")
    storage_commands.register(parser.add_subparsers(dest="command"))
    return parser


async def test_the_import_command(
    tmp_path: Path,
    tenant: Tenant,
    database_url: str,
    store: FlowStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS), encoding="utf-8")
    tenant_arg = f"{tenant.client_account_id}/{tenant.engagement_id}"
    args = _parser().parse_args(
        [
            "import-legacy",
            "--file",
            str(rows),
            "--tenant",
            tenant_arg,
            "--database-url",
            database_url,
        ]
    )

    assert await asyncio.to_thread(args.run, args) == 0
    assert "imported 3 flow(s), skipped 0 existing" in capsys.readouterr().out
    assert len((await store.list_flows(tenant, FlowQuery())).flows) == 3


def test_a_bad_tenant_argument_is_malformed() -> None:
    with pytest.raises(FlowStateError) as refused:
        storage_commands.parse_tenant("no-slash")
    assert refused.value.details["field"] == "tenant"


async def test_the_migrate_command(
    fresh_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:

    parser = _parser()

    def run(*argv: str) -> str:
        args = parser.parse_args(["migrate", *argv, "--database-url", fresh_database_url])
        assert args.run(args) == 0
        return capsys.readouterr().out

    head = migrate.head_revision()
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    before_head = scripts.get_revision(head).down_revision
    assert isinstance(before_head, str)
    assert "revision: none" in await asyncio.to_thread(run, "current")
    assert f"revision: {head}" in await asyncio.to_thread(run, "upgrade")
    assert f"revision: {before_head}" in await asyncio.to_thread(run, "downgrade", "-1")
    assert "revision: none" in await asyncio.to_thread(run, "downgrade", "base")


async def test_migrate_refuses_an_unknown_revision(fresh_database_url: str) -> None:
    with pytest.raises(FlowStateError) as refused:
        await migrate.upgrade(fresh_database_url, "nonsense")
    assert refused.value.code is ErrorCode.MALFORMED_REQUEST
    assert refused.value.details == {"field": "revision"}
