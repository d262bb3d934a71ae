"""Archive files: the JSON Lines format and where archives are written (a directory or S3).

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

`S3ArchiveSink` puts the object to an S3-compatible store (``s3://bucket/prefix``) with boto3
(pinned in pyproject.toml; credentials, region and endpoint from boto3's usual sources:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``
for MinIO, Ceph and the like, or the given `endpoint_url`), sending its SHA-256 so that the
store checks the upload itself, then GETs it back and compares the SHA-256 of what it reads.
boto3 is blocking: each call runs in a worker thread.

`archive_sink(target)` picks one: ``s3://...`` is S3, anything else a directory path.
"""

from __future__ import annotations

import asyncio
import base64
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
    "S3ArchiveSink",
    "archive_name",
    "archive_sink",
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


class S3ArchiveSink:
    """Archives as objects under ``s3://bucket/prefix`` of an S3-compatible store."""

    def __init__(self, url: str, *, endpoint_url: str | None = None) -> None:
        """Write under `url` (``s3://bucket`` or ``s3://bucket/prefix``)."""
        bucket, prefix = _split_s3_url(url, "archive_url")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._endpoint_url = endpoint_url
        self._client: Any = None

    def __repr__(self) -> str:
        """The bucket and prefix."""
        return f"S3ArchiveSink('s3://{self.bucket}/{self.prefix}')"

    def _s3(self) -> Any:
        if self._client is None:
            import boto3  # the one S3 library (pyproject.toml); imported when S3 is used

            self._client = boto3.client("s3", endpoint_url=self._endpoint_url)
        return self._client

    async def write(self, name: str, data: bytes) -> ArchiveRecord:
        """PUT with the SHA-256 for the store to check, then GET it back and compare."""
        digest = hashlib.sha256(data)
        expected = digest.hexdigest()
        key = f"{self.prefix}/{name}" if self.prefix else name
        location = f"s3://{self.bucket}/{key}"

        def put() -> None:
            self._s3().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/jsonl",
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
            )

        await asyncio.to_thread(put)
        back = await self.read(location)
        if hashlib.sha256(back).hexdigest() != expected:
            raise OSError(f"archive {location} does not read back as written")
        decode_archive(back, location)
        return ArchiveRecord(location=location, sha256=expected)

    async def read(self, location: str) -> bytes:
        """The bytes of the object at ``s3://bucket/key``."""
        bucket, key = _split_s3_url(location, "archive")

        def get() -> bytes:
            body: bytes = self._s3().get_object(Bucket=bucket, Key=key)["Body"].read()
            return body

        return await asyncio.to_thread(get)


def _split_s3_url(url: str, field: str) -> tuple[str, str]:
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not url.startswith("s3://") or not bucket:
        raise malformed(field, f"{url!r} is not an s3://bucket/key URL")
    return bucket, key


def archive_sink(target: str, *, endpoint_url: str | None = None) -> ArchiveSink:
    """The sink of `target`: ``s3://bucket/prefix`` (S3-compatible), else a directory path."""
    if target.startswith("s3://"):
        return S3ArchiveSink(target, endpoint_url=endpoint_url)
    return DirectoryArchiveSink(target)


def flows_in(
    archives: Sequence[ArchivedFlowRows], flow_ids: Sequence[str]
) -> list[ArchivedFlowRows]:
    """The flows of `archives` to restore for `flow_ids` (all of them when it is empty): each
    named flow with its whole tree as the archive holds it (its ancestors and descendants, by
    their parent links), parents before children, so that a restore brings trees back whole.
    MALFORMED_REQUEST (field ``flow_id``) for an id the archive does not hold."""
    by_id = {flow.flow_id: flow for flow in archives}
    missing = sorted(set(flow_ids) - by_id.keys())
    if missing:
        raise malformed("flow_id", f"the archive holds no flow {', '.join(missing)}")
    if flow_ids:
        wanted = set(flow_ids)
        children: dict[str, list[str]] = {}
        for flow in archives:
            parent = flow.row.get("parent_flow_id")
            if parent:
                children.setdefault(str(parent), []).append(flow.flow_id)
        roots = set()
        for flow_id in wanted:
            while (parent := by_id[flow_id].row.get("parent_flow_id")) and str(parent) in by_id:
                flow_id = str(parent)
            roots.add(flow_id)
        wanted = set()
        stack = list(roots)
        while stack:
            flow_id = stack.pop()
            if flow_id not in wanted:
                wanted.add(flow_id)
                stack.extend(children.get(flow_id, ()))
        chosen = [flow for flow in archives if flow.flow_id in wanted]
    else:
        chosen = list(archives)

    def depth(flow: ArchivedFlowRows) -> int:
        levels = 0
        while (parent := flow.row.get("parent_flow_id")) and str(parent) in by_id:
            flow = by_id[str(parent)]
            levels += 1
        return levels

    return sorted(chosen, key=depth)  # stable: the archive's order within a level
