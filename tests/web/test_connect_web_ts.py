"""The TypeScript client over @connectrpc/connect-web (Connect JSON, Connect binary, gRPC-Web)
against this server's HTTP port: ``console/test/connect_web.test.ts`` run by Node's test runner
(Node 20's fetch), with the server's URL and tokens in its environment."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from flowstate.core.model import Tenant
from flowstate.testing import RunningServer

CONSOLE = Path(__file__).resolve().parents[2] / "console"
TSX = CONSOLE / "node_modules" / ".bin" / "tsx"


@pytest.mark.skipif(not TSX.exists(), reason="console/node_modules is missing (make setup)")
async def test_connect_web_transports(web_server: RunningServer, base_url: str) -> None:
    tenant = Tenant("acme", f"connect-web-{uuid.uuid4().hex[:8]}")
    env = {
        **os.environ,
        "FLOWSTATE_HTTP_URL": base_url,
        "FLOWSTATE_TEST_TOKEN": web_server.mint(tenant),
        "FLOWSTATE_TEST_TOKEN_READONLY": web_server.mint(tenant, scopes=["flows:read"]),
    }
    process = await asyncio.create_subprocess_exec(
        str(TSX),
        "--test",
        "test/connect_web.test.ts",
        cwd=CONSOLE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "# fail 0" in text, text
    assert "# pass 12" in text, text
