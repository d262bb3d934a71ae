"""What `flowstate` prints on a database that is not ready: the fix, no INTERNAL, no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from flowstate.cli.main import main
from flowstate.storage.migrate import head_revision

NOT_MIGRATED = (
    "flowstate: error: FAILED_PRECONDITION: the database has never been migrated; this build "
    f"needs {head_revision()}: run `flowstate migrate upgrade`\n"
)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_serve_on_an_unmigrated_database_names_the_fix(fresh_database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(FLOWSTATE_DATABASE_URL=fresh_database_url, FLOWSTATE_JWT_SECRET="s" * 48)
    command = [sys.executable, "-m", "flowstate.cli.main", "serve", "--port", "0"]

    # A subprocess: serve installs signal handlers, which only the main thread may.
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.endswith(NOT_MIGRATED)
    assert "INTERNAL" not in done.stderr
    assert "Traceback" not in done.stderr


async def test_import_legacy_on_an_unmigrated_database_names_the_fix(
    fresh_database_url: str, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("flow_id,data_import_completed\n")

    code, out, err = await asyncio.to_thread(
        run, "import-legacy", "--file", str(rows), "--tenant", "a/b",
        "--database-url", fresh_database_url,
    )  # fmt: skip

    assert (code, out, err) == (1, "", NOT_MIGRATED)
