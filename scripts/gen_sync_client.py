"""Generate the blocking Python client from the asyncio one (unasync): one client, two faces.

``clients/python/src/flowstate/client/_async_client.py`` is the one hand-written client;
``_sync_client.py`` is produced from it by the token rewrites below (``await`` dropped,
``async def`` → ``def``, ``grpc.aio`` → ``grpc``, ``asyncio.sleep`` → ``time.sleep``, async
iteration → plain iteration) and formatted with ruff. `make generate` runs it, `make
check-generated` fails when the committed file differs, and a test (clients/python/tests/
test_sdk_sync_parity.py) fails when the two drift.

Usage: ``python scripts/gen_sync_client.py [--check]`` from anywhere (``--check``: exit 1, and
write nothing, when the committed file is not what would be generated).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients/python/src/flowstate/client"
SOURCE = CLIENT / "_async_client.py"
TARGET = CLIENT / "_sync_client.py"

_HEADER = '''"""`FlowstateClient`: the blocking client of the Flowstate API (scripts, the CLI).

It mirrors `AsyncFlowstateClient` method for method over a synchronous ``grpc`` channel, with
the same requests, retries, results and errors; `watch` and `watch_flows` are plain iterators.

Generated from ``_async_client.py`` by ``scripts/gen_sync_client.py`` (``make generate``): edit
the asyncio client, not this file.
"""
'''

# (pattern, replacement) in order. Every pattern must match at least once (a rewrite that no
# longer applies means the async client changed shape: update this table), except those in
# _OPTIONAL (alternative spellings of one thing, e.g. the async iterator types).
_REWRITES: tuple[tuple[str, str], ...] = (
    (r"^import asyncio\n", "import threading\nimport time\n"),
    (r"\basyncio\.Event\(\)", "threading.Event()"),
    # Tokens: the asyncio client also accepts coroutine functions (awaited per attempt).
    (r"\bmetadata_async\(\)", "metadata()"),
    (r" \(or coroutine function\)", ""),
    (r"in whichever task iterates", "in whichever thread iterates"),
    # The wait before a stream reconnects: an Event with a timeout, no wait_for.
    (
        r"^( +)with contextlib\.suppress\(TimeoutError\):\n"
        r" +await asyncio\.wait_for\(self\._closed_event\.wait\(\), delay\)\n",
        r"\1self._closed_event.wait(delay)\n",
    ),
    # grpc.aio's CancelledError on a closed channel (and its helper) has no sync counterpart.
    (r"^( +)except asyncio\.CancelledError:\n(?:\1 [^\n]*\n)+", ""),
    (r"\n\n\ndef _being_cancelled\(\) -> bool:\n(?:[ #][^\n]*\n|\n(?= ))+", "\n"),
    (r"^import grpc\.aio\n", ""),
    (r"\n\n    The channel is opened on first use, inside the running event loop\.\n", "\n"),
    (r"The asyncio client", "The blocking client"),
    (r"an async context manager", "a context manager"),
    (r"\basync with\b", "with"),
    (r"\bAsyncFlowstateClient\b", "FlowstateClient"),
    (r"\bFlowStateServiceAsyncStub\b", "FlowStateServiceStub"),
    (r"\bgrpc\.aio\.AioRpcError\b", "grpc.RpcError"),
    (r"\bgrpc\.aio\.", "grpc."),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\bAsyncGenerator\[([^\]]+), None\]", r"Generator[\1, None, None]"),
    (r"\bAsyncGenerator\b", "Generator"),
    (r"\bAsyncIterator\b", "Iterator"),
    # `async for x in it: yield x` / `for x in it: yield x` -> `yield from it`
    (r"^( +)(?:async )?for (\w+) in ([^\n]+):\n +yield \2\n", r"\1yield from \3\n"),
    (r"\basync for\b", "for"),
    (r"\basync def\b", "def"),
    (r"\bawait ", ""),
    (r'\A"""[^"]*"""\n\n# ruff: noqa: ASYNC109[^\n]*\n', _HEADER),
)


_OPTIONAL = frozenset(
    {
        r"\bAsyncGenerator\[([^\]]+), None\]",
        r"\bAsyncGenerator\b",
        r"\bAsyncIterator\b",
    }
)


def generate() -> str:
    """The sync client's source, formatted."""
    text = SOURCE.read_text(encoding="utf-8")
    for pattern, replacement in _REWRITES:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if count == 0 and pattern not in _OPTIONAL:
            raise SystemExit(f"gen_sync_client.py: rewrite {pattern!r} no longer applies")
    # Imports sorted and lines joined the way the project formats code.
    ruff = [sys.executable, "-m", "ruff"]
    stdin = str(TARGET)
    fixed = subprocess.run(
        [*ruff, "check", "--select", "I,F401", "--fix", "--quiet", "--stdin-filename", stdin, "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout
    return subprocess.run(
        [*ruff, "format", "--quiet", "--stdin-filename", stdin, "-"],
        input=fixed,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout


def main(argv: list[str]) -> int:
    """Write (or with ``--check`` compare) the generated sync client."""
    source = generate()
    if "--check" in argv:
        if TARGET.read_text(encoding="utf-8") != source:
            print(f"{TARGET} is not generated from {SOURCE.name}: run make generate")
            return 1
        return 0
    TARGET.write_text(source, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
