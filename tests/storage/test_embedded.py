"""The embedded PostgreSQL: URL resolution, sharing between handles and processes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstate.storage.embedded import (
    EmbeddedPostgres,
    default_data_dir,
    resolve_database_url,
)
from flowstate.storage.urls import normalize_database_url, redact_database_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
        ("postgresql://u@h/db?sslmode=require", "postgresql+asyncpg://u@h/db?ssl=require"),
        ("postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@/db?host=/run/pg", "postgresql+asyncpg://u@/db?host=%2Frun%2Fpg"),
    ],
)
def test_urls_are_normalised_for_asyncpg(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "not a url"])
def test_other_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        normalize_database_url(bad)


def test_passwords_are_redacted() -> None:
    assert "secret" not in redact_database_url("postgresql://u:secret@h/db")


def test_a_configured_url_starts_nothing() -> None:
    with resolve_database_url({"FLOWSTATE_DATABASE_URL": "postgres://u@h/db"}) as resolved:
        assert resolved.url == "postgresql+asyncpg://u@h/db"
        assert resolved.embedded is None


def test_the_data_directory_comes_from_the_environment() -> None:
    assert default_data_dir({"FLOWSTATE_DATA_DIR": "/srv/flowstate"}) == Path("/srv/flowstate")
    assert default_data_dir({}).name == "flowstate"


@pytest.fixture
def data_dir(database_server: Any) -> Iterator[Path]:
    """A fresh data directory (the test's cluster is stopped by the test itself)."""
    if database_server.embedded is None:
        pytest.skip("needs the embedded server (FLOWSTATE_TEST_DATABASE_URL is set)")
    directory = Path(tempfile.mkdtemp(prefix="flowstate-test-embedded-"))
    try:
        yield directory
    finally:
        pg = directory / "pg"
        if (pg / "postmaster.pid").exists():  # a failed test must not leave a server behind
            EmbeddedPostgres.start(directory).stop(force=True)
        shutil.rmtree(directory, ignore_errors=True)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flowstate.storage.embedded import EmbeddedPostgres

    data_dir, barrier = Path(sys.argv[1]), Path(sys.argv[2])
    server = EmbeddedPostgres.start(data_dir)
    (barrier / sys.argv[3]).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < int(sys.argv[4]) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(server.psql("SELECT pg_postmaster_start_time()").strip(), flush=True)
    server.stop()
    """
)


def _start_children(data_dir: Path, barrier: Path, count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(data_dir),
                str(barrier),
                f"child-{i}",
                str(count + 1),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]


@pytest.mark.slow
async def test_processes_and_handles_share_one_server_and_the_last_stops_it(
    data_dir: Path, tmp_path: Path
) -> None:
    """Two processes and two handles of this one start on a fresh directory together."""
    children = await asyncio.to_thread(_start_children, data_dir, tmp_path, 2)
    first = await asyncio.to_thread(EmbeddedPostgres.start, data_dir)
    second = await asyncio.to_thread(EmbeddedPostgres.start, data_dir)
    assert first.url == second.url
    started = first.psql("SELECT pg_postmaster_start_time()").strip()
    (tmp_path / "parent").touch()
    for child in children:
        out, err = await asyncio.to_thread(child.communicate, timeout=120)
        assert child.returncode == 0, err
        assert out.strip() == started  # one postmaster, started once, for everyone

    # The children released their handles; ours keep the server up, until the last one goes.
    first.stop()
    assert second.psql("SELECT 1").strip() == "1"
    await asyncio.to_thread(second.stop)
    assert not (data_dir / "pg" / "postmaster.pid").exists()
