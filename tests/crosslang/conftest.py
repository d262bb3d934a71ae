"""Fixtures of the cross-language tests: one real server, tokens, the Go and TypeScript programs.

``crosslang_server`` (module)
    A `CrossLangServer`: the harness's server when ``FLOWSTATE_TEST_ADDRESS`` is set (the test
    runs under ``scripts/with_test_server.py``), otherwise a ``flowstate serve`` subprocess
    (`flowstate.testing.serve_subprocess`) over the session's migrated database, with tokens
    for a tenant of its own (writer, read-only) and for another tenant.
``go_program`` (session)
    The path of ``clients/go/cmd/flowstate-crosslang``, built once into a temporary directory.
``ts_program`` (session)
    The command prefix running ``clients/typescript/test/crosslang/cli.ts`` with tsx.

A missing toolchain (``go``, or ``clients/typescript/node_modules``) fails the tests under
``CI=true`` and skips them, loudly, otherwise (run ``make setup``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowstate.core.model import Tenant
from flowstate.testing import serve_subprocess

ROOT = Path(__file__).resolve().parents[2]
GO_MODULE = ROOT / "clients" / "go"
TS_PACKAGE = ROOT / "clients" / "typescript"
IN_CI = os.environ.get("CI") in ("true", "1")


def missing(what: str) -> None:
    """Fail under CI, skip loudly otherwise."""
    message = f"cross-language tests need {what} (run `make setup`)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(f"SKIPPED: {message}")


@dataclass(frozen=True)
class CrossLangServer:
    """The server the three clients talk to, and their credentials."""

    address: str
    token: str
    readonly_token: str
    other_tenant_token: str

    def env(self) -> dict[str, str]:
        """The environment of the Go and TypeScript programs."""
        return {
            **os.environ,
            "FLOWSTATE_ADDRESS": self.address,
            "FLOWSTATE_TOKEN": self.token,
            "FLOWSTATE_TOKEN_READONLY": self.readonly_token,
            "FLOWSTATE_TOKEN_OTHER_TENANT": self.other_tenant_token,
        }


@pytest.fixture(scope="module")
def crosslang_server(request: pytest.FixtureRequest) -> Iterator[CrossLangServer]:
    """The harness's server, or a `flowstate serve` subprocess of our own."""
    address = os.environ.get("FLOWSTATE_TEST_ADDRESS")
    if address:
        yield CrossLangServer(
            address=address,
            token=os.environ["FLOWSTATE_TEST_TOKEN"],
            readonly_token=os.environ["FLOWSTATE_TEST_TOKEN_READONLY"],
            other_tenant_token=os.environ["FLOWSTATE_TEST_TOKEN_OTHER_TENANT"],
        )
        return
    database_url: str = request.getfixturevalue("database_url")
    suffix = uuid.uuid4().hex[:12]
    tenant = Tenant(f"crosslang-{suffix}", "eng-a")
    other = Tenant(f"crosslang-{suffix}", "eng-b")
    with serve_subprocess(database_url=database_url, ready_timeout=60) as server:
        yield CrossLangServer(
            address=server.address,
            token=server.mint(tenant, user="crosslang", scopes=["flows:write"]),
            readonly_token=server.mint(tenant, user="crosslang-reader", scopes=["flows:read"]),
            other_tenant_token=server.mint(other, user="intruder", scopes=["flows:write"]),
        )


@pytest.fixture(scope="session")
def go_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``flowstate-crosslang``, built from clients/go/cmd/flowstate-crosslang."""
    go = shutil.which("go")
    if go is None:
        missing("the Go toolchain")
    assert go is not None
    binary = tmp_path_factory.mktemp("go") / "flowstate-crosslang"
    build = subprocess.run(
        [go, "build", "-o", str(binary), "./cmd/flowstate-crosslang"],
        cwd=GO_MODULE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"go build failed:\n{build.stdout}{build.stderr}")
    return binary


@pytest.fixture(scope="session")
def ts_program() -> list[str]:
    """The command running the TypeScript program (tsx from clients/typescript)."""
    tsx = TS_PACKAGE / "node_modules" / ".bin" / "tsx"
    if not tsx.exists() or shutil.which("node") is None:
        missing("Node.js and clients/typescript/node_modules")
    return [str(tsx), str(TS_PACKAGE / "test" / "crosslang" / "cli.ts")]
