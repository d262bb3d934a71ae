"""Archive files: the JSON Lines format and where archives are written (a local directory).

One archive holds one batch of flows (`flowstate.storage.retention`), as JSON Lines (UTF-8):

    {"format": "flowstate-archive", "version": 1, "created_at": "...", "flows": N}
    {"kind": "flow", "row": {<every column of the flows row>}}
    {"kind": "entry", "row": {<every column of one flow_history row, seq and txid included>}}
    ... (the flow's entries in version order, then the next flow line)

Rows are PostgreSQL's own ``to_jsonb`` of the stored row, so a restore
(``jsonb_populate_record``) brings back exactly what was stored. The file name is
``flowstate-archive-<UTC time>-<random>.jsonl``.

`DirectoryArchiveSink` writes to a temporary name, fsyncs the file, renames it into place,
fsyncs the directory, then reads the file back and compares its SHA-256 with the bytes it meant
to write (and parses it) before it reports the archive written: the archiver deletes nothing
that this check did not see on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from flowstate.storage.codec import dumps
from flowstate.storage.limits import malformed
from flowstate.storage.retention import ArchiveRecord, CandidateBatch

__all__ = [
    "ARCHIVE_FORMAT",
    "ARCHIVE_VERSION",
    "ArchiveSink",
    "ArchivedFlowRows",
    "DirectoryArchiveSink",
    "archive_name",
    "decode_archive",
    "encode_archive",
]

ARCHIVE_FORMAT = "flowstate-archive"
ARCHIVE_VERSION = 1


@dataclass(frozen=True, slots=True)
class ArchivedFlowRows:
    """One flow read back from an archive: its row and its history rows (JSON objects)."""

    row: dict[str, Any]
    entries: list[dict[str, Any]]

    @property
    def flow_id(self) -> str:
        """The flow's id."""
        return str(self.row["id"])


class ArchiveSink(Protocol):
    """Where archives go: `write` stores and verifies one archive; `read` returns its bytes."""

    async def write(self, name: str, data: bytes) -> ArchiveRecord:
        """Store `data` as `name`, verify it, and say where it is and its SHA-256."""
        ...

    async def read(self, location: str) -> bytes:
        """The bytes of an archive written by `write`."""
        ...


def archive_name(now: datetime | None = None) -> str:
    """A new archive's file name (UTC time, then a random part: names never collide)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"flowstate-archive-{moment:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:12]}.jsonl"


def encode_archive(batch: CandidateBatch, created_at: datetime) -> bytes:
    """The JSON Lines bytes of a batch (module doc)."""
    header = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "created_at": created_at.astimezone(UTC).isoformat(),
        "flows": len(batch.flows),
    }
    lines = [dumps(header)]
    for flow in batch.flows:
        lines.append(dumps({"kind": "flow", "row": flow.row}))
        lines.extend(dumps({"kind": "entry", "row": entry}) for entry in flow.entries)
    return ("\n".join(lines) + "\n").encode()


def decode_archive(data: bytes, source: str = "archive") -> list[ArchivedFlowRows]:
    """The flows of an archive; MALFORMED_REQUEST (field ``archive``) when it is not one."""

    def bad(reason: str) -> Exception:
        return malformed("archive", f"{source} is not a Flowstate archive: {reason}")

    try:
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(str(exc)) from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != ARCHIVE_FORMAT:
        raise bad("no header line")
    if lines[0].get("version") != ARCHIVE_VERSION:
        raise bad(f"unknown version {lines[0].get('version')!r}")
    flows: list[ArchivedFlowRows] = []
    for number, line in enumerate(lines[1:], start=2):
        kind = line.get("kind") if isinstance(line, dict) else None
        row = line.get("row") if isinstance(line, dict) else None
        if not isinstance(row, dict):
            raise bad(f"line {number} has no row")
        if kind == "flow":
            flows.append(ArchivedFlowRows(row, []))
        elif kind == "entry" and flows and row.get("flow_id") == flows[-1].flow_id:
            flows[-1].entries.append(row)
        else:
            raise bad(f"line {number} is neither a flow nor an entry of the flow before it")
    if len(flows) != lines[0].get("flows"):
        raise bad(
            f"the header announces {lines[0].get('flows')} flows, the file holds {len(flows)}"
        )
    return flows


def _write_durably(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class DirectoryArchiveSink:
    """Archives as files in a local directory (created when missing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Write into `directory`."""
        self.directory = Path(directory)

    def __repr__(self) -> str:
        """The directory."""
        return f"DirectoryArchiveSink({str(self.directory)!r})"

    async def write(self, name: str, data: bytes) -> ArchiveRecord:
        """Write, fsync, rename, fsync the directory; read back and compare (module doc)."""
        expected = hashlib.sha256(data).hexdigest()
        path = self.directory / name

        def write_and_verify() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_durably(path, data)
            if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
                raise OSError(f"archive {path} does not read back as written")

        await asyncio.to_thread(write_and_verify)
        decode_archive(await self.read(str(path)), str(path))
        return ArchiveRecord(location=str(path), sha256=expected)

    async def read(self, location: str) -> bytes:
        """The bytes of the archive at `location` (a path)."""
        return await asyncio.to_thread(Path(location).read_bytes)


def flows_in(
    archives: Sequence[ArchivedFlowRows], flow_ids: Sequence[str]
) -> list[ArchivedFlowRows]:
    """The flows of `archives` whose id is in `flow_ids` (all of them when it is empty)."""
    if not flow_ids:
        return list(archives)
    wanted = set(flow_ids)
    return [flow for flow in archives if flow.flow_id in wanted]
