"""The container image, deploy/compose.yaml and the systemd unit, checked as far as this machine
allows.

Always: the Dockerfile is multi-stage, runs as a non-root user and health-checks through the
gRPC health service; every command the image, compose and the unit run is one the `flowstate`
CLI takes; compose has PostgreSQL 15, a migrate step and two replicas wired in that order;
the unit passes ``systemd-analyze verify`` (where systemd-analyze exists). The Dockerfile's
build stage runs as a script: its COPY sources into a fresh context, its RUN steps there (the
wheels, a venv from them), and the resulting ``flowstate`` answers a health check.

Only with a Docker daemon: ``docker build`` and a container that turns healthy as a non-root
user. Without one that test is skipped and says what was not checked.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowstate.cli.main import build_parser
from flowstate.testing import serve_in_process

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
UNIT = ROOT / "deploy" / "flowstate.service"


@dataclass
class Stage:
    """One FROM ... stage of the Dockerfile: its name and (instruction, arguments) lines."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for assignment in shlex.split(args):
                key, _, value = assignment.partition("=")
                values[key] = value
        return values


def stages() -> list[Stage]:
    """The Dockerfile's stages (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction == "FROM":
            name = args.split(" AS ")[1].strip() if " AS " in args else f"stage{len(found)}"
            found.append(Stage(name))
        elif found:
            found[-1].instructions.append((instruction, " ".join(args.split())))
    return found


def assert_cli_takes(argv: list[str], where: str) -> None:
    """`argv` (after ``flowstate``) is a complete command of the CLI."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `flowstate {shlex.join(argv)}` is not a flowstate command")
    assert getattr(args, "run", None) is not None, where


# --- Dockerfile ----------------------------------------------------------------------------------


def test_the_image_is_multi_stage_non_root_and_health_checked() -> None:
    build, final = stages()[0], stages()[-1]

    assert len(stages()) == 2
    assert build.name == "build"
    assert final.all("COPY") == ["--from=build /opt/flowstate /opt/flowstate"]
    (user,) = final.all("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert any("useradd --system --uid 10001" in run for run in final.all("RUN"))
    # Both wheels are built, and the server is installed from them.
    assert "./clients/python ." in build.all("RUN")[0]
    assert "pip install --find-links /wheels /wheels/flowstate-*.whl" in build.all("RUN")[1]
    (health,) = final.all("HEALTHCHECK")
    assert health.startswith("--interval=10s ")
    assert "CMD flowstate health " in health


def test_the_image_runs_flowstate_commands() -> None:
    final = stages()[-1]
    env = final.env()
    (entrypoint,) = final.all("ENTRYPOINT")
    (command,) = final.all("CMD")
    health = final.all("HEALTHCHECK")[0].split(" CMD ", 1)[1]

    assert yaml.safe_load(entrypoint) == ["flowstate"]
    assert_cli_takes(yaml.safe_load(command), "CMD")
    health_argv = shlex.split(health.replace("${FLOWSTATE_PORT}", env["FLOWSTATE_PORT"]))
    assert health_argv[:2] == ["flowstate", "health"]
    assert_cli_takes(health_argv[1:], "HEALTHCHECK")
    assert env["FLOWSTATE_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/flowstate/bin:")


def copy_context(target: Path) -> list[str]:
    """Copy the build stage's COPY sources into `target`, honouring .dockerignore's dirs."""
    ignored = {
        line.strip().removeprefix("**/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = []
    for args in stages()[0].all("COPY"):
        *items, _destination = args.split()
        for item in items:
            source = ROOT / item
            assert source.exists(), f"COPY {item}: not in the repository"
            assert item.rstrip("/") not in ignored, f"COPY {item}: excluded by .dockerignore"
            if source.is_dir():
                shutil.copytree(
                    source,
                    target / item,
                    ignore=shutil.ignore_patterns(*ignored, "*.egg-info"),
                    dirs_exist_ok=True,
                )
            else:
                shutil.copy2(source, target / item)
            sources.append(item)
    return sources


async def test_the_build_stage_runs_as_a_script_and_its_flowstate_serves_health(
    tmp_path: Path, database_url: str
) -> None:
    """Stage 1's RUN steps, /wheels and /opt/flowstate mapped into a temporary directory.

    pip's cache is used (the image sets PIP_NO_CACHE_DIR to keep its layer small; here it
    would only download the same wheels again).
    """
    context, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "opt-flowstate"
    context.mkdir()
    assert copy_context(context) == [
        "pyproject.toml", "README.md", "LICENSE", "server/", "storage/", "clients/python/",
    ]  # fmt: skip
    build = stages()[0]
    env = {**os.environ, **build.env()}
    env.pop("PIP_NO_CACHE_DIR")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` is Python 3.11
    for step in build.all("RUN"):
        script = step.replace("/opt/flowstate", str(venv)).replace("/wheels", str(wheels))
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"RUN {step}\n{done.stdout}\n{done.stderr}"

    assert sorted(wheel.name.split("-")[0] for wheel in wheels.glob("*.whl")) == [
        "flowstate",
        "flowstate_client",
    ]
    async with serve_in_process(database_url) as server:
        health = await asyncio.to_thread(
            _run_flowstate, venv, "health", "--address", server.address
        )
    assert (health.returncode, health.stdout) == (0, "SERVING\n"), health.stderr


def _run_flowstate(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "flowstate"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")},
    )


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return info.returncode == 0


def test_the_image_builds_and_turns_healthy_as_a_non_root_user() -> None:
    if not _docker_daemon():
        pytest.skip(
            "no Docker daemon: `docker build`, the container's non-root user at run time and "
            "its HEALTHCHECK were NOT exercised (the build stage ran as a script instead)"
        )
    tag = "flowstate:test"
    built = subprocess.run(
        ["docker", "build", "--tag", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    started = subprocess.run(
        ["docker", "run", "--detach", "--publish", "127.0.0.1::50051", tag],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    container = started.stdout.strip()
    try:
        status = ""
        deadline = time.monotonic() + 180
        while status != "healthy" and time.monotonic() < deadline:
            status = _inspect(container, "{{.State.Health.Status}}")
            assert status in ("starting", "healthy"), _logs(container)
            time.sleep(1)
        assert status == "healthy", _logs(container)
        uid = subprocess.run(
            ["docker", "exec", container, "id", "-u"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert uid.stdout.strip() == "10001"
    finally:
        subprocess.run(["docker", "rm", "--force", container], capture_output=True, check=False)


def _inspect(container: str, template: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "--format", template, container],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()


def _logs(container: str) -> str:
    logs = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, check=False
    )
    return logs.stdout + logs.stderr


# --- compose ----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_runs_postgres_15_a_migrate_step_and_two_replicas() -> None:
    services = compose()["services"]

    assert set(services) == {"postgres", "migrate", "flowstate-1", "flowstate-2"}
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for replica in ("flowstate-1", "flowstate-2"):
        assert services[replica]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
    for name in ("migrate", "flowstate-1", "flowstate-2"):
        service = services[name]
        assert service["image"] == "flowstate:dev"
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").is_file()
        assert_cli_takes(service["command"], f"compose service {name}")
        environment = service["environment"]
        assert environment["FLOWSTATE_DATABASE_URL"].startswith("postgresql://flowstate:")
        assert environment["FLOWSTATE_JWT_SECRET"].startswith("${FLOWSTATE_JWT_SECRET:?")
    assert services["migrate"]["command"] == ["migrate", "upgrade"]
    host_ports = [services[r]["ports"][0].split(":")[1] for r in ("flowstate-1", "flowstate-2")]
    assert host_ports == ["50051", "50052"]


def test_compose_sets_postgres_up_as_a_dba_would(pg15: Any) -> None:
    """postgres-init.sql makes a non-superuser owner and the app role; it runs as is."""
    (volume,) = [v for v in compose()["services"]["postgres"]["volumes"] if "init" in v]
    script = COMPOSE.parent / volume.split(":")[0]
    sql = script.read_text()
    try:
        pg15.psql(sql)
        owner = pg15.psql(
            "SELECT rolsuper, rolcreaterole, pg_has_role(oid, 'flowstate_app', 'MEMBER')"
            " FROM pg_roles WHERE rolname = 'flowstate'"
        )
        assert owner == "f|f|t"
        assert (
            pg15.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'flowstate'")
            == "flowstate"
        )
    finally:
        pg15.psql(
            "DROP DATABASE IF EXISTS flowstate WITH (FORCE); DROP ROLE IF EXISTS flowstate_app; "
            "DROP ROLE IF EXISTS flowstate"
        )


# --- systemd ---------------------------------------------------------------------------------


def unit_values(key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def test_the_systemd_unit_migrates_then_serves_as_an_unprivileged_user() -> None:
    (pre,) = unit_values("ExecStartPre")
    (start,) = unit_values("ExecStart")

    assert unit_values("User") == ["flowstate"]
    assert unit_values("KillSignal") == ["SIGTERM"]
    assert int(unit_values("TimeoutStopSec")[0]) > 10  # the default grace period is 10 s
    for where, line in (("ExecStartPre", pre), ("ExecStart", start)):
        executable, *argv = shlex.split(line)
        assert executable == "/opt/flowstate/bin/flowstate"
        assert_cli_takes(argv, where)
    assert shlex.split(pre)[1:] == ["migrate", "upgrade"]


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax was NOT verified")
    # verify wants the executables and the environment file to exist: point at ours.
    flowstate = Path(sys.executable).parent / "flowstate"
    text = UNIT.read_text().replace("/opt/flowstate/bin/flowstate", str(flowstate))
    text = re.sub(r"(?m)^EnvironmentFile=.*$", f"EnvironmentFile=-{tmp_path}/none.env", text)
    unit = tmp_path / "flowstate.service"
    unit.write_text(text)

    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )

    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == ""
