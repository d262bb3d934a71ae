"""The blocking client is generated from the asyncio one: the two cannot drift.

`scripts/gen_sync_client.py` writes ``_sync_client.py`` from ``_async_client.py`` (`make
generate`); this fails when the committed sync client is not what it would write, and when the
two faces stop offering the same methods with the same parameters.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from flowstate.client import AsyncFlowstateClient, FlowstateClient

_ROOT = Path(__file__).resolve().parents[3]


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    script = _ROOT / "scripts" / "gen_sync_client.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _public(cls: type) -> dict[str, list[tuple[str, object]]]:
    methods = {}
    for name, member in vars(cls).items():
        if name.startswith("_") or not callable(member):
            continue
        parameters = inspect.signature(member).parameters.values()
        methods[name] = [(p.name, p.default) for p in parameters]
    return methods


def test_both_faces_offer_the_same_methods_and_parameters() -> None:
    assert _public(FlowstateClient) == _public(AsyncFlowstateClient)
