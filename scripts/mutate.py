"""Mutation testing of the core and the use cases with mutmut (`make mutate`, `make mutate-sample`).

Packages (``--paths``, default both): ``core`` (``flowstate.core``, killed by tests/core; pure,
no database) and ``service`` (``flowstate.service``, killed by the storage and webhook tests,
which need PostgreSQL). Each package is mutated in a staging directory of its own,
``.mutmut/<package>``, with only its own tests: mutmut runs, per mutant, the tests that call the
mutated function, so a core mutant never waits for a database.

Why staging directories: mutmut derives module names from file paths and only knows the source
roots ``.``, ``src/`` and ``source/``; our packages live in ``server/flowstate/<package>``. So a
package is copied to ``.mutmut/<package>/src/flowstate/<package>`` (module
``flowstate.<package>`` again, found first on sys.path; the rest of the ``flowstate`` namespace
package still comes from the editable install, unmutated), its tests beside it, and mutmut runs
there. The staging directory is rebuilt on every run.

The database: mutmut runs each mutant's tests in a forked process, one pytest session per
mutant. For ``service`` this script starts one PostgreSQL server (the embedded one the suite
uses, `flowstate.storage.embedded`), migrates one template database once, and points the
sessions at them (FLOWSTATE_TEST_DATABASE_URL, FLOWSTATE_TEST_TEMPLATE_DATABASE): each
session copies the template into a database of its own (tests/conftest.py), so concurrent
sessions never meet and none pays for the migrations. The server, with every database a
killed session left behind, is deleted at the end.

Surviving mutants that cannot be killed are listed in ``tests/mutation/equivalents.toml``, each
with a reason. An entry names the mutated function and the changed lines (not mutmut's mutant
number, which shifts when a function is edited). The score is

    killed / (mutants - listed survivors)

where timeouts count as killed (the mutant made the tests hang). A listed mutant that a test now
kills is reported as stale, so the file cannot silently rot.

Usage (from the repository root, with the project's .venv):
    python scripts/mutate.py                              # every mutant; fails below --min-score
    python scripts/mutate.py --paths service --only '*idempotency*'   # one module
    python scripts/mutate.py --sample 60 --sample service=4 --seed 23   # the CI sample
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".mutmut"
EQUIVALENTS = ROOT / "tests" / "mutation" / "equivalents.toml"
MUTMUT = Path(sys.executable).parent / "mutmut"

KILLED = {"killed", "timeout"}

TEMPLATE_DATABASE = "flowstate_mutation_template"
# Test-only durability trade-offs, as tests/conftest.py sets them on its embedded server.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True)
class Package:
    """One mutated package: its source, the tests that may kill it, whether they need a database."""

    name: str
    tests: tuple[str, ...]
    """Test paths copied into the stage (tests/conftest.py is always copied)."""
    ignore: tuple[str, ...] = ()
    """Test files left out of mutation runs (see PACKAGES)."""
    database: bool = False
    triaged: tuple[str, ...] = ()
    """Modules whose survivors have been triaged (docs/testing.md): the sample draws from these
    only, so a module added later cannot fail CI before its own survivors are triaged. Add a
    module once `make mutate` shows its survivors killed or listed."""

    @property
    def source(self) -> str:
        return f"server/flowstate/{self.name}"

    @property
    def target(self) -> str:
        return f"src/flowstate/{self.name}"

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Mutant name prefixes of the triaged modules."""
        return tuple(f"flowstate.{self.name}.{module}." for module in self.triaged)


PACKAGES = {
    # test_purity reads the source files and refuses mutmut's trampoline import (kills nothing).
    "core": Package(
        name="core",
        tests=("tests/core",),
        ignore=("tests/core/test_purity.py",),
        triaged=(
            "alerts",
            "bulk",
            "children",
            "commands",
            "definitions",
            "derivation",
            "errors",
            "model",
            "preview",
            "recovery",
            "retries",
            "rules",
        ),
    ),
    # The use cases are exercised against the real database by their own tests, the storage
    # tests (the service over a real FlowStore) and the webhook tests. Left out: the tests
    # that start clusters of their own, kill or restart one, or migrate fresh databases
    # (seconds each, about storage, not the use cases): they would run for every mutant of
    # FlowService.create.
    "service": Package(
        name="service",
        tests=("tests/service", "tests/storage", "tests/webhooks"),
        ignore=(
            "tests/storage/test_embedded.py",
            "tests/storage/test_external_postgres.py",
            "tests/storage/test_migrations.py",
            "tests/storage/test_failures.py",
        ),
        database=True,
        triaged=(),
    ),
}


@dataclass(frozen=True)
class Mutant:
    """One mutant: its mutmut name, status and the lines it changes."""

    name: str
    status: str
    diff: str

    @property
    def function(self) -> str:
        """The mutated function's key (module plus mangled name, without the mutant number)."""
        return self.name.partition("__mutmut_")[0]


def _stage(stage: Path, package: Package, weaken: list[str]) -> None:
    """Rebuild `stage` with the package, its tests and a pyproject.toml for mutmut and pytest.

    `weaken` names test files left out (to check that the score really drops without them).
    """
    shutil.rmtree(stage, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    copies = {package.source: package.target, "tests/conftest.py": "tests/conftest.py"}
    copies.update({path: path for path in package.tests})
    for source, target in copies.items():
        origin, destination = ROOT / source, stage / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, destination, ignore=ignore)
        else:
            shutil.copy2(origin, destination)
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    options = dict(pytest_options["ini_options"])
    options.pop("testpaths", None)
    options.pop("timeout", None)  # mutmut has its own timeouts
    left_out = [f"--ignore={path}" for path in (*package.ignore, *weaken)]
    lines = [
        "[tool.mutmut]",
        f"source_paths = {json.dumps([package.target])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(list(package.tests))}",
        f"pytest_add_cli_args = {json.dumps(['-p', 'no:cacheprovider', '-q', *left_out])}",
        "",
        "[tool.pytest.ini_options]",
        *(f"{key} = {json.dumps(value)}" for key, value in options.items()),
        "",
    ]
    (stage / "pyproject.toml").write_text("\n".join(lines))
    (stage / "tmp").mkdir()


def _mutmut(stage: Path, env: dict[str, str], *args: str) -> int:
    """Run mutmut in `stage` with the `mutation` Hypothesis profile (few, fixed examples).

    Pytest's temporary directories go to the stage (numbered per session, safe for the
    concurrent sessions of the forked mutants); mutmut's output to ``mutmut.log`` there.
    """
    env = {
        **os.environ,
        **env,
        "CI": "true",
        "HYPOTHESIS_PROFILE": "mutation",
        "PYTEST_DEBUG_TEMPROOT": str(stage / "tmp"),
    }
    with (stage / "mutmut.log").open("w") as log:
        return subprocess.run(
            [str(MUTMUT), *args], cwd=stage, env=env, stdout=log, stderr=log, check=False
        ).returncode


def _all_names(stage: Path) -> list[str]:
    """Every mutant mutmut generates for the sources, from its .meta files."""
    names: list[str] = []
    for meta in sorted((stage / "mutants").rglob("*.py.meta")):
        names.extend(json.loads(meta.read_text())["exit_code_by_key"])
    return names


def _generate(stage: Path) -> list[str]:
    """Generate the mutants without running any (nor any test)."""
    code = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mutmut.__main__ import copy_src_dir, copy_also_copy_files, create_mutants\n"
            "import os\n"
            "os.makedirs('mutants', exist_ok=True)\n"
            "copy_src_dir(); copy_also_copy_files(); create_mutants(2)\n",
        ],
        cwd=stage,
        check=False,
        stdout=subprocess.DEVNULL,
    ).returncode
    if code:
        raise SystemExit(f"mutate: generating mutants failed (exit {code})")
    return _all_names(stage)


def _results(stage: Path, names: list[str]) -> list[Mutant]:
    """The mutants named (all when `names` is empty) with status and diff, as mutmut sees them.

    Diffs are computed for survivors only (each one parses its module again).
    """
    program = (
        "import json, sys\n"
        "from mutmut.__main__ import SourceFileMutationData, walk_mutatable_files,"
        " get_diff_for_mutant\n"
        "from mutmut.stats import status_by_exit_code\n"
        "wanted = set(json.load(sys.stdin))\n"
        "out = []\n"
        "for path in walk_mutatable_files():\n"
        "    m = SourceFileMutationData(path=path); m.load()\n"
        "    for key, code in m.exit_code_by_key.items():\n"
        "        if wanted and key not in wanted:\n"
        "            continue\n"
        "        status = status_by_exit_code[code]\n"
        "        diff = get_diff_for_mutant(key, path=path) if status != 'killed' else ''\n"
        "        out.append([key, status, diff])\n"
        "json.dump(out, sys.stdout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=stage,
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"mutate: reading mutmut's results failed:\n{done.stderr}")
    return [Mutant(name, status, diff) for name, status, diff in json.loads(done.stdout)]


@contextlib.contextmanager
def _database() -> Iterator[dict[str, str]]:
    """One PostgreSQL server and a migrated template database for every test session.

    The suite's own server (the embedded one tests/conftest.py starts per session otherwise),
    started once; yields the environment that points tests/conftest.py at it. The server (with
    any database a killed session left behind) is stopped and deleted on exit.
    """
    # The project's own venv runs this script; imported here so the core runs need no database.
    from flowstate.storage.embedded import EmbeddedPostgres
    from flowstate.storage.migrate import upgrade

    data_dir = Path(tempfile.mkdtemp(prefix="flowstate-mutate-pg-"))
    server = EmbeddedPostgres.start(data_dir, database="postgres")
    try:
        for name, value in FAST_SETTINGS.items():
            server.psql(f"ALTER SYSTEM SET {name} = '{value}'")
        server.psql("SELECT pg_reload_conf()")
        server.psql(f'CREATE DATABASE "{TEMPLATE_DATABASE}" TEMPLATE template0')
        asyncio.run(upgrade(server.url_for(TEMPLATE_DATABASE)))
        yield {
            "FLOWSTATE_TEST_DATABASE_URL": server.url,
            "FLOWSTATE_TEST_TEMPLATE_DATABASE": TEMPLATE_DATABASE,
        }
        left = server.psql(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'flowstate\\_%'"
            f" AND datname <> '{TEMPLATE_DATABASE}'"
        )
        print(f"mutate: {left.strip()} databases left by killed test sessions, deleted with them")
    finally:
        server.stop(force=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def _changed_lines(diff: str) -> str:
    """The -/+ lines of a diff, stripped: what identifies a mutant across renumbering."""
    lines = [
        line[0] + line[1:].strip()
        for line in diff.splitlines()
        if line[:1] in "-+" and not line.startswith(("---", "+++"))
    ]
    return "\n".join(lines)


def _load_equivalents() -> list[dict[str, str]]:
    entries = tomllib.loads(EQUIVALENTS.read_text()).get("mutant", [])
    for entry in entries:
        missing = {"function", "change", "reason"} - set(entry)
        if missing:
            raise SystemExit(f"mutate: {EQUIVALENTS.name}: an entry lacks {sorted(missing)}")
    return list(entries)


def _listed(mutant: Mutant, entries: list[dict[str, str]]) -> dict[str, str] | None:
    change = _changed_lines(mutant.diff)
    for entry in entries:
        if entry["function"] == mutant.function and entry["change"].strip() == change:
            return entry
    return None


def _module(mutant: Mutant) -> str:
    """The mutant's module (``flowstate.core.commands``)."""
    return ".".join(mutant.name.split(".")[:3])


def _report(mutants: list[Mutant], min_score: float, elapsed: float, sample: str) -> int:
    entries = _load_equivalents()
    counts: dict[str, int] = {}
    for mutant in mutants:
        counts[mutant.status] = counts.get(mutant.status, 0) + 1
    survivors = [m for m in mutants if m.status not in KILLED]
    listed = [m for m in survivors if _listed(m, entries) is not None]
    unlisted = [m for m in survivors if _listed(m, entries) is None]
    killed = sum(1 for m in mutants if m.status in KILLED)
    considered = len(mutants) - len(listed)
    score = 100.0 * killed / considered if considered else 100.0
    print()
    print(f"mutate: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {sample}, {elapsed:.0f} s")
    print("mutate: statuses " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print("mutate: module: mutants, killed, listed, surviving unlisted, score")
    for module in sorted({_module(m) for m in mutants}):
        of_module = [m for m in mutants if _module(m) == module]
        module_killed = sum(1 for m in of_module if m.status in KILLED)
        module_listed = sum(1 for m in listed if _module(m) == module)
        module_open = sum(1 for m in unlisted if _module(m) == module)
        base = len(of_module) - module_listed
        module_score = 100.0 * module_killed / base if base else 100.0
        print(
            f"mutate:   {module}: {len(of_module)}, {module_killed}, {module_listed}, "
            f"{module_open}, {module_score:.1f}%"
        )
    kinds: dict[str, int] = {}
    for mutant in listed:
        kind = (_listed(mutant, entries) or {}).get("kind", "equivalent")
        kinds[kind] = kinds.get(kind, 0) + 1
    print(
        f"mutate: {len(mutants)} mutants, {killed} killed (timeouts included), "
        f"{len(listed)} listed ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), "
        f"{len(unlisted)} surviving unlisted"
    )
    print(f"mutate: score {score:.1f}% of non-equivalent mutants killed (minimum {min_score}%)")
    for mutant in unlisted:
        print(f"\n--- surviving: {mutant.name} ({mutant.status})")
        print(_changed_lines(mutant.diff))
    return 0 if score >= min_score else 1


def _stale_report(mutants: list[Mutant], packages: list[Package]) -> None:
    """Stale entries of the packages run in full: listed changes no mutant survives with."""
    entries = [
        e
        for e in _load_equivalents()
        if any(e["function"].startswith(f"flowstate.{p.name}.") for p in packages)
    ]
    surviving = {(m.function, _changed_lines(m.diff)) for m in mutants if m.status not in KILLED}
    stale = [e for e in entries if (e["function"], e["change"].strip()) not in surviving]
    for entry in stale:
        print(f"mutate: stale entry in {EQUIVALENTS.name}: {entry['function']}: {entry['change']}")


def _sample_sizes(values: list[str], packages: list[str]) -> dict[str, int]:
    """``--sample N`` (every package) and ``--sample PACKAGE=N`` (one) as {package: N}."""
    sizes = dict.fromkeys(packages, 0)
    for value in values:
        name, _, count = value.rpartition("=")
        if name and name not in PACKAGES:
            raise SystemExit(f"mutate: --sample {value}: no package {name!r}")
        if not count.isdigit():
            raise SystemExit(f"mutate: --sample {value}: not a number of mutants")
        for package in [name] if name else packages:
            if package in sizes:
                sizes[package] = int(count)
    return sizes


def _run_package(
    package: Package, stage: Path, args: argparse.Namespace, env: dict[str, str]
) -> tuple[list[Mutant], str]:
    """Mutate one package in its stage: its mutants (all, or the chosen ones) and a label."""
    _stage(stage, package, args.weaken)
    names: list[str] = []
    label = f"{package.name}: all mutants"
    size = args.sample_sizes.get(package.name, 0)
    if size:
        everything = [n for n in _generate(stage) if n.startswith(package.prefixes)]
        names = sorted(random.Random(args.seed).sample(everything, min(size, len(everything))))
        label = f"{package.name}: {len(names)} of {len(everything)} in triaged modules"
    elif args.only:
        names = sorted(n for n in _generate(stage) if any(fnmatch(n, g) for g in args.only))
        label = f"{package.name}: {len(names)} mutants matching {' '.join(args.only)}"
    if (size or args.only) and not names:
        return [], label
    code = _mutmut(stage, env, "run", "--max-children", str(args.max_children), *names)
    if code:
        tail = (stage / "mutmut.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"mutate: mutmut run failed (exit {code}); mutmut.log ends:\n{tail}")
    return _results(stage, names), label


def main(argv: list[str] | None = None) -> int:
    """Run mutmut over the chosen packages (or a seeded sample of them) and check the score."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--paths",
        default=",".join(PACKAGES),
        help=f"comma-separated packages to mutate, of {', '.join(PACKAGES)} (default: all)",
    )
    parser.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="[PACKAGE=]N",
        help="run only N mutants of the triaged modules (of every package, or of PACKAGE)",
    )
    parser.add_argument("--seed", type=int, default=23, help="seed of the sample")
    parser.add_argument("--min-score", type=float, default=90.0, help="percent, else exit 1")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--stage", type=Path, default=STAGE, help="work directory (.mutmut/PACKAGE is rebuilt)"
    )
    parser.add_argument(
        "--weaken",
        action="append",
        default=[],
        metavar="TEST_FILE",
        help="leave this test file out (e.g. tests/core/test_commands.py), to see the score drop",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="run only the mutants whose name matches (fnmatch; e.g. '*x__rollback__mutmut_*')",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.paths.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(PACKAGES))
    if unknown or not chosen:
        raise SystemExit(f"mutate: --paths: unknown packages {unknown}; known: {list(PACKAGES)}")
    args.sample_sizes = _sample_sizes(args.sample, chosen)
    if args.sample:
        chosen = [name for name in chosen if args.sample_sizes[name]]

    started = time.monotonic()
    mutants: list[Mutant] = []
    labels: list[str] = []
    stage_root = args.stage.resolve()
    for name in chosen:
        package = PACKAGES[name]
        with contextlib.ExitStack() as stack:
            env = stack.enter_context(_database()) if package.database else {}
            found, label = _run_package(package, stage_root / name, args, env)
        mutants += found
        labels.append(label)
    if not mutants:
        raise SystemExit(f"mutate: no mutant chosen ({'; '.join(labels)})")
    if not args.sample and not args.only:
        _stale_report(mutants, [PACKAGES[name] for name in chosen])
    label = "; ".join(labels) + (f" (seed {args.seed})" if args.sample else "")
    return _report(mutants, args.min_score, time.monotonic() - started, label)


if __name__ == "__main__":
    sys.exit(main())
