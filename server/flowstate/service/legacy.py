"""Import of flows from the old per-phase boolean completion rows.

Before Flowstate, a discovery flow was a row with one boolean per phase
(``data_import_completed``, ``field_mapping_completed``, ``data_cleansing_completed``,
``asset_inventory_completed``, ``dependency_analysis_completed``) and a
``progress_percentage``. The reverse direction, for systems that still *read* those columns,
is the ``legacy_discovery_flows`` view (see docs/storage.md).

`import_legacy_rows` creates one discovery flow per row:

- phase state COMPLETED where the boolean is true, NOT_STARTED otherwise; status and progress
  are derived by the core from those states (``progress_percentage`` and any legacy status
  are ignored: they are what the derivation recomputes);
- one history entry (version 1, kind CREATED, reason ``"imported from legacy"``) whose metadata
  keeps the legacy booleans and id;
- the flow id is the row's ``flow_id`` (or its ``id`` when ``flow_id`` is missing or blank) when
  it is a UUID, else a UUID derived from the tenant and that legacy id, so importing the same
  file twice creates nothing new: rows whose flow already exists are reported as skipped.

Row values may be booleans or the strings a CSV export writes (true/false, t/f, 1/0, yes/no,
empty = false). A bad row is MALFORMED_REQUEST naming ``rows[i].column``; rows before it have
been imported (each flow is its own transaction, and a rerun skips them).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowstate.core.commands import Context, create_flow
from flowstate.core.definitions import DISCOVERY, FlowDefinition
from flowstate.core.derivation import calculate_progress, determine_flow_status
from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode, Flow, FlowStatus, HistoryEntry, PhaseState, Tenant
from flowstate.service.flows import FlowService
from flowstate.storage.limits import malformed
from flowstate.storage.store import FlowStore

__all__ = [
    "LEGACY_COMPLETION_COLUMNS",
    "LEGACY_IMPORT_REASON",
    "LegacyImportResult",
    "import_legacy_rows",
    "read_legacy_file",
]

LEGACY_COMPLETION_COLUMNS: Mapping[str, str] = {
    "data_import": "data_import_completed",
    "field_mapping": "field_mapping_completed",
    "data_cleansing": "data_cleansing_completed",
    "asset_inventory": "asset_inventory_completed",
    "dependency_analysis": "dependency_analysis_completed",
}
"""Discovery phase → the legacy boolean column saying it completed."""
LEGACY_IMPORT_REASON = "imported from legacy"
"""The reason of the history entry of an imported flow."""

_LEGACY_ID_NAMESPACE = uuid.UUID("5b0c8f0e-5f7c-4d53-9a55-6c6567616379")
_TRUE = frozenset({"true", "t", "1", "yes", "y"})
_FALSE = frozenset({"false", "f", "0", "no", "n", ""})


@dataclass(frozen=True, slots=True)
class LegacyImportResult:
    """Flow ids created by an import, and those skipped because they already existed."""

    created: tuple[str, ...]
    skipped: tuple[str, ...]


def _as_bool(value: object, field: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise malformed(field, f"{field} must be a boolean, got {value!r}")


def _flow_id(tenant: Tenant, row: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(flow id, legacy id) of a row: its flow_id, or its id when flow_id is missing or blank
    (a CSV export with both columns writes "" for a row without a flow_id)."""
    given = (row.get(column) for column in ("flow_id", "id"))
    legacy_id = next((str(v).strip() for v in given if v is not None and str(v).strip()), "")
    if not legacy_id:
        raise malformed(f"rows[{index}].flow_id", f"rows[{index}] has no flow_id or id")
    try:
        return str(uuid.UUID(legacy_id)), legacy_id
    except ValueError:
        name = f"{tenant.client_account_id}/{tenant.engagement_id}/{legacy_id}"
        return str(uuid.uuid5(_LEGACY_ID_NAMESPACE, name)), legacy_id


async def import_legacy_rows(
    store: FlowStore,
    tenant: Tenant,
    rows: Iterable[Mapping[str, Any]],
    *,
    user_id: str = "legacy-import",
    now: datetime | None = None,
) -> LegacyImportResult:
    """Create one discovery flow per legacy row (see the module docstring)."""
    service = FlowService(store)
    definition = await store.definitions.get(DISCOVERY.name)
    missing = [p for p in definition.phase_names if p not in LEGACY_COMPLETION_COLUMNS]
    if missing:
        raise FlowStateError(
            ErrorCode.MALFORMED_REQUEST,
            f"the {definition.name} definition has phases without a legacy column: {missing}",
            field="definition",
        )
    created: list[str] = []
    skipped: list[str] = []
    for index, row in enumerate(rows):
        flow_id, legacy_id = _flow_id(tenant, row, index)
        completed = {
            phase: _as_bool(row.get(column), f"rows[{index}].{column}")
            for phase, column in LEGACY_COMPLETION_COLUMNS.items()
        }
        display_name = row.get("display_name") or row.get("flow_name") or ""
        ctx = Context(
            now=now or datetime.now(UTC),
            user_id=user_id,
            request_id=f"legacy-import:{flow_id}",
        )
        flow, entries = _imported_flow(
            definition, tenant, flow_id, ctx, str(display_name), completed, legacy_id
        )
        try:
            result = await service.import_flow(flow, entries, ctx)
        except FlowStateError as error:
            already = error.code is ErrorCode.REQUEST_ID_REUSED or (
                error.code is ErrorCode.MALFORMED_REQUEST
                and error.details.get("field") == "flow_id"
            )
            if not already:
                raise
            skipped.append(flow_id)
            continue
        (skipped if result.replayed else created).append(flow_id)
    return LegacyImportResult(created=tuple(created), skipped=tuple(skipped))


def _imported_flow(
    definition: FlowDefinition,
    tenant: Tenant,
    flow_id: str,
    ctx: Context,
    display_name: str,
    completed: Mapping[str, bool],
    legacy_id: str,
) -> tuple[Flow, tuple[HistoryEntry, ...]]:
    decision = create_flow(flow_id, tenant, definition, ctx, display_name=display_name)
    phases = tuple(
        replace(p, state=PhaseState.COMPLETED, state_entered_at=ctx.now, completed_at=ctx.now)
        if completed[p.name]
        else p
        for p in decision.flow.phases
    )
    status = determine_flow_status(definition, phases, FlowStatus.INITIALIZED)
    progress = calculate_progress(definition, phases)
    flow = replace(decision.flow, phases=phases, status=status, progress=progress)
    (created_entry,) = decision.entries
    entry = replace(
        created_entry,
        status_after=status,
        progress_after=progress,
        phase_states_after=flow.phase_states,  # the imported states, not the created ones
        reason=LEGACY_IMPORT_REASON,
        metadata={
            **created_entry.metadata,
            "legacy_id": legacy_id,
            "legacy_completed": {LEGACY_COMPLETION_COLUMNS[k]: v for k, v in completed.items()},
        },
    )
    return flow, (entry,)


def read_legacy_file(path: Path, file_format: str | None = None) -> list[dict[str, Any]]:
    """Rows of a legacy export: CSV with a header line, or a JSON array of objects.

    `file_format` is ``"csv"`` or ``"json"``; None picks it from the file extension.
    MALFORMED_REQUEST (``field="file"``) when it cannot be read or is neither.
    """
    chosen = (file_format or path.suffix.lstrip(".")).lower()
    if chosen not in ("csv", "json"):
        raise malformed("file", f"cannot tell the format of {path}: use .csv or .json, or --format")
    try:
        # newline="": line breaks inside a quoted CSV field are data (the csv module's rule).
        with path.open(encoding="utf-8", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeError) as exc:
        raise malformed("file", f"cannot read {path}: {exc}") from None
    if chosen == "csv":
        return [dict(row) for row in csv.DictReader(io.StringIO(text, newline=""))]
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise malformed("file", f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, Mapping) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise malformed("file", f"{path} must hold a JSON array of objects")
    return [dict(r) for r in data]
