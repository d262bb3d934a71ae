#!/usr/bin/env python3
"""Install every SDK from its built artifact outside the repository and run the examples with it.

    scripts/test_examples.py [--keep]

What a user does, once per SDK, in a fresh temporary directory (never inside the checkout):

1. Build the artifacts: the client and server wheels (``pip wheel --no-deps``), the TypeScript
   package (``npm pack``, which builds ``dist/`` through its ``prepare`` script) and a Go module
   proxy (``file://``) serving ``flowstate.dev/client`` at the SDK's version, as ``go get``
   would fetch it.
2. Python: a fresh venv with only the client wheel (its dependency ranges resolved by pip);
   ``mypy --strict`` over ``examples/python`` against that venv. Then the server wheel plus the
   client wheel in the same venv: its ``flowstate serve`` is the server of step 5 (from a
   checkout, ``pip install .`` needs the client beside it: ``pip install ./clients/python .``).
3. TypeScript: ``examples/typescript`` copied out, the packed tarball installed with its peer
   dependencies (``npm install``), compiled with ``tsc`` in strict mode.
4. Go: ``examples/go`` copied out (its go.mod has no ``replace``), ``go mod tidy`` through the
   module proxy, ``go vet``, ``go build``.
5. ``scripts/with_test_server.py --flowstate <server venv>/bin/flowstate`` runs every example
   program against that server (``FLOWSTATE_ADDRESS`` and ``FLOWSTATE_TOKEN`` point them at it).

Exits non-zero at the first failure; prints the seconds each step took. Needs the repository's
.venv (mypy), Node and npm, Go, and the package registries (or their caches).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PYTHON = os.environ.get("PYTHON_BOOTSTRAP") or shutil.which("python3.11") or sys.executable
GO_MODULE = "flowstate.dev/client"


def _say(message: str) -> None:
    print(f"test_examples: {message}", flush=True)


@contextmanager
def _step(name: str) -> Iterator[None]:
    started = time.monotonic()
    _say(f"{name} ...")
    yield
    _say(f"{name}: ok ({time.monotonic() - started:.1f} s)")


def _run(args: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure print its output and exit."""
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        _say(f"FAILED ({result.returncode}): {' '.join(map(str, args))} (in {cwd})")
        sys.stdout.write(result.stdout)
        sys.stdout.write(result.stderr)
        raise SystemExit(1)
    return result.stdout


def _quiet_pip(venv: Path, *args: str | Path) -> None:
    """pip install into `venv` (created without pip: this interpreter's pip installs into it)."""
    _run(
        [
            sys.executable,
            *("-m", "pip", "--python", venv / "bin" / "python", "install"),
            *("--quiet", "--disable-pip-version-check", *args),
        ],
        cwd=venv,
    )


def build_wheels(work: Path) -> tuple[Path, Path]:
    """(client wheel, server wheel), built as a user would from the checkout."""
    dist = work / "dist"
    for source in (ROOT / "clients" / "python", ROOT):
        _run(
            [
                sys.executable,
                *("-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"),
                # hatchling comes with the dev tools (no isolated build env to set up twice).
                *("--no-deps", "--no-build-isolation", "--wheel-dir", dist, source),
            ],
            cwd=work,
        )
    (client,) = dist.glob("flowstate_client-*.whl")
    (server,) = [wheel for wheel in dist.glob("flowstate-*.whl") if wheel != client]
    with zipfile.ZipFile(client) as wheel:
        names = set(wheel.namelist())
    for required in ("flowstate/v1/py.typed", "flowstate/client/py.typed"):
        if required not in names:
            _say(f"FAILED: the client wheel lacks {required}")
            raise SystemExit(1)
    if "flowstate/__init__.py" in names:
        _say("FAILED: the client wheel ships flowstate/__init__.py (breaks the namespace)")
        raise SystemExit(1)
    return client, server


def python_consumer(work: Path, client_wheel: Path, server_wheel: Path) -> Path:
    """A fresh venv: the client wheel alone, mypy --strict over the examples; then the server."""
    consumer = work / "python"
    shutil.copytree(EXAMPLES / "python", consumer)
    venv = work / "venv"
    _run([PYTHON, "-m", "venv", "--without-pip", venv], cwd=work)
    _quiet_pip(venv, client_wheel)
    _run(
        [
            ROOT / ".venv" / "bin" / "mypy",
            *("--strict", "--no-incremental"),
            *("--python-executable", venv / "bin" / "python", "."),
        ],
        cwd=consumer,
    )
    # The server wheel next to it: its `flowstate serve` is the server the examples talk to.
    _quiet_pip(venv, server_wheel, client_wheel)
    return venv


def typescript_consumer(work: Path) -> Path:
    """The compiled example project, with the packed package installed."""
    package_dir = ROOT / "clients" / "typescript"
    packed = json.loads(
        _run(["npm", "pack", "--json", "--pack-destination", work], cwd=package_dir)
    )
    tarball = work / packed[0]["filename"]
    consumer = work / "typescript"
    shutil.copytree(EXAMPLES / "typescript", consumer, ignore=shutil.ignore_patterns("dist"))
    npm = ["npm", "install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"]
    _run([*npm, tarball], cwd=consumer)
    _run(["npx", "--no-install", "tsc", "-p", "."], cwd=consumer)
    return consumer


def _go_version() -> str:
    source = (ROOT / "clients" / "go" / "flowstate" / "client.go").read_text()
    match = re.search(r'^const Version = "([^"]+)"', source, re.MULTILINE)
    if match is None:
        raise SystemExit("test_examples: no `const Version` in clients/go/flowstate/client.go")
    return "v" + match.group(1)


def go_proxy(work: Path) -> Path:
    """A file:// GOPROXY serving the SDK module at its version (the module zip of clients/go)."""
    module = ROOT / "clients" / "go"
    version = _go_version()
    files = _run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "."], cwd=module
    ).split()
    proxy = work / "goproxy"
    at = proxy / GO_MODULE / "@v"
    at.mkdir(parents=True)
    (at / "list").write_text(version + "\n")
    (at / f"{version}.info").write_text(json.dumps({"Version": version}))
    shutil.copyfile(module / "go.mod", at / f"{version}.mod")
    with zipfile.ZipFile(at / f"{version}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            if (module / name).is_file():
                archive.write(module / name, f"{GO_MODULE}@{version}/{name}")
    return proxy


def go_consumer(work: Path, proxy: Path) -> Path:
    """The built Go example, its dependency fetched from the proxy (no replace directive)."""
    consumer = work / "go"
    shutil.copytree(EXAMPLES / "go", consumer)
    if "replace" in (consumer / "go.mod").read_text():
        raise SystemExit("test_examples: examples/go/go.mod must not use replace")
    env = {
        **os.environ,
        "GOPROXY": f"file://{proxy},{os.environ.get('GOPROXY') or 'https://proxy.golang.org'}",
        "GONOSUMDB": GO_MODULE,  # not in the public checksum database (not published yet)
        "GOFLAGS": "-mod=mod",
        "GOWORK": "off",
    }
    _run(["go", "mod", "tidy"], cwd=consumer, env=env)
    _run(["go", "vet", "./..."], cwd=consumer, env=env)
    _run(["go", "build", "-o", "lifecycle", "."], cwd=consumer, env=env)
    return consumer / "lifecycle"


def run_examples(work: Path, venv: Path, typescript: Path, go_binary: Path) -> None:
    """Every example against the test server (called under with_test_server.py)."""
    env = {
        **os.environ,
        "FLOWSTATE_ADDRESS": os.environ["FLOWSTATE_TEST_ADDRESS"],
        "FLOWSTATE_TOKEN": os.environ["FLOWSTATE_TEST_TOKEN"],
    }
    python = venv / "bin" / "python"
    programs: list[tuple[str, list[str | Path], Path]] = [
        ("python lifecycle.py", [python, "lifecycle.py"], work / "python"),
        ("python blocking.py", [python, "blocking.py"], work / "python"),
        ("node dist/lifecycle.js", ["node", "dist/lifecycle.js"], typescript),
        ("go lifecycle", [go_binary], go_binary.parent),
    ]
    for name, command, cwd in programs:
        with _step(f"run {name}"):
            output = _run(command, cwd=cwd, env=env)
            if "COMPLETED" not in output:
                _say(f"FAILED: {name} printed no COMPLETED:\n{output}")
                raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # step 5, internal
    args = parser.parse_args(argv)
    if args.run is not None:
        state = json.loads((args.run / "state.json").read_text())
        run_examples(args.run, Path(state["venv"]), Path(state["typescript"]), Path(state["go"]))
        return 0

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="flowstate-examples-"))
    try:
        with _step("build the client and server wheels"):
            client_wheel, server_wheel = build_wheels(work)
        with _step("python: install the wheels into fresh venvs, mypy --strict the examples"):
            venv = python_consumer(work, client_wheel, server_wheel)
        with _step("typescript: npm pack, install into a fresh project, tsc strict"):
            typescript = typescript_consumer(work)
        with _step("go: module proxy, go mod tidy, go vet, go build"):
            go_binary = go_consumer(work, go_proxy(work))
        state = {"venv": str(venv), "typescript": str(typescript), "go": str(go_binary)}
        (work / "state.json").write_text(json.dumps(state))
        _say("run the examples against `flowstate serve` from the server wheel")
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "with_test_server.py"),
                *("--flowstate", str(venv / "bin" / "flowstate"), "--"),
                *(sys.executable, __file__, "--run", str(work)),
            ],
            check=False,
        )
        if result.returncode != 0:
            return result.returncode
        _say(f"all examples passed ({time.monotonic() - started:.0f} s)")
        return 0
    finally:
        if args.keep:
            _say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
