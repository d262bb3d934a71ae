"""Mutation testing of the pure core with mutmut (`make mutate`, `make mutate-sample`).

Why a staging directory: mutmut derives module names from file paths and only knows the source
roots ``.``, ``src/`` and ``source/``; our core lives in ``server/flowstate/core``. So the core is
copied to ``.mutmut/src/flowstate/core`` (module ``flowstate.core`` again, found first on
sys.path; the rest of the ``flowstate`` namespace package still comes from the editable install),
the core tests beside it, and mutmut runs there. ``.mutmut/`` is rebuilt on every run.

Surviving mutants that cannot be killed are listed in ``tests/mutation/equivalents.toml``, each
with a reason. An entry names the mutated function and the changed lines (not mutmut's mutant
number, which shifts when a function is edited). The score is

    killed / (mutants - listed survivors)

where timeouts count as killed (the mutant made the tests hang). A listed mutant that a test now
kills is reported as stale, so the file cannot silently rot.

Usage (from the repository root, with the project's .venv):
    python scripts/mutate.py                      # every mutant; fails below --min-score
    python scripts/mutate.py --sample 60 --seed 23   # a fixed, seeded sample (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".mutmut"
EQUIVALENTS = ROOT / "tests" / "mutation" / "equivalents.toml"
MUTMUT = Path(sys.executable).parent / "mutmut"

# What is mutated, and the tests that may kill it. test_purity reads the source files and
# refuses mutmut's trampoline import, so it is left out of mutation runs (it kills nothing).
SOURCES = {"server/flowstate/core": "src/flowstate/core"}
TESTS = {"tests/core": "tests/core", "tests/conftest.py": "tests/conftest.py"}
PYTEST_ARGS = ["-p", "no:cacheprovider", "-q", "--ignore=tests/core/test_purity.py"]

KILLED = {"killed", "timeout"}

# The modules whose survivors have been triaged (docs/testing.md); the CI sample draws from these
# only, so a module added later cannot fail CI before its own tests are triaged. Add a module here
# once `make mutate` shows its survivors killed or listed.
TRIAGED = tuple(
    f"flowstate.core.{name}."
    for name in (
        "commands",
        "definitions",
        "derivation",
        "errors",
        "machine",
        "model",
        "recovery",
        "rules",
    )
)


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


def _stage(weaken: list[str]) -> None:
    """Rebuild .mutmut/ with the sources, the tests and a pyproject.toml for mutmut and pytest.

    `weaken` names test files left out (to check that the score really drops without them).
    """
    shutil.rmtree(STAGE, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in {**SOURCES, **TESTS}.items():
        origin, destination = ROOT / source, STAGE / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, destination, ignore=ignore)
        else:
            shutil.copy2(origin, destination)
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    options = dict(pytest_options["ini_options"])
    options.pop("testpaths", None)
    options.pop("timeout", None)  # mutmut has its own timeouts
    lines = [
        "[tool.mutmut]",
        f"source_paths = {json.dumps(list(SOURCES.values()))}",
        f"pytest_add_cli_args_test_selection = {json.dumps(['tests/core'])}",
        f"pytest_add_cli_args = {json.dumps(PYTEST_ARGS + [f'--ignore={w}' for w in weaken])}",
        "",
        "[tool.pytest.ini_options]",
        *(f"{key} = {json.dumps(value)}" for key, value in options.items()),
        "",
    ]
    (STAGE / "pyproject.toml").write_text("\n".join(lines))


def _mutmut(*args: str, quiet: bool = False) -> int:
    """Run mutmut in the stage with the `mutation` Hypothesis profile (few, fixed examples)."""
    env = {**os.environ, "CI": "true", "HYPOTHESIS_PROFILE": "mutation"}
    output = subprocess.DEVNULL if quiet else None
    return subprocess.run(
        [str(MUTMUT), *args], cwd=STAGE, env=env, stdout=output, check=False
    ).returncode


def _all_names() -> list[str]:
    """Every mutant mutmut generates for the sources, from its .meta files."""
    names: list[str] = []
    for meta in sorted((STAGE / "mutants").rglob("*.py.meta")):
        names.extend(json.loads(meta.read_text())["exit_code_by_key"])
    return names


def _generate() -> list[str]:
    """Generate the mutants (and mutmut's test statistics) without running any mutant."""
    code = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mutmut.__main__ import copy_src_dir, copy_also_copy_files, create_mutants\n"
            "import os\n"
            "os.makedirs('mutants', exist_ok=True)\n"
            "copy_src_dir(); copy_also_copy_files(); create_mutants(2)\n",
        ],
        cwd=STAGE,
        check=False,
        stdout=subprocess.DEVNULL,
    ).returncode
    if code:
        raise SystemExit(f"mutate: generating mutants failed (exit {code})")
    return _all_names()


def _results() -> list[Mutant]:
    """Every mutant with its status and diff (mutmut's own view, in-process)."""
    program = (
        "import json, sys\n"
        "from mutmut.__main__ import SourceFileMutationData, walk_mutatable_files,"
        " get_diff_for_mutant\n"
        "from mutmut.stats import status_by_exit_code\n"
        "out = []\n"
        "for path in walk_mutatable_files():\n"
        "    m = SourceFileMutationData(path=path); m.load()\n"
        "    for key, code in m.exit_code_by_key.items():\n"
        "        status = status_by_exit_code[code]\n"
        "        diff = get_diff_for_mutant(key, path=path) if status != 'killed' else ''\n"
        "        out.append([key, status, diff])\n"
        "json.dump(out, sys.stdout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=STAGE, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"mutate: reading mutmut's results failed:\n{done.stderr}")
    return [Mutant(name, status, diff) for name, status, diff in json.loads(done.stdout)]


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


def _unlisted_report(mutants: list[Mutant]) -> None:
    """Stale entries: listed changes no mutant survives with (killed now, or code changed)."""
    entries = _load_equivalents()
    surviving = {(m.function, _changed_lines(m.diff)) for m in mutants if m.status not in KILLED}
    stale = [e for e in entries if (e["function"], e["change"].strip()) not in surviving]
    for entry in stale:
        print(f"mutate: stale entry in {EQUIVALENTS.name}: {entry['function']}: {entry['change']}")


def main(argv: list[str] | None = None) -> int:
    """Run mutmut over the core (or a seeded sample of it) and check the score."""
    global STAGE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=0, help="run only N mutants (0: all)")
    parser.add_argument("--seed", type=int, default=23, help="seed of the sample")
    parser.add_argument("--min-score", type=float, default=90.0, help="percent, else exit 1")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--stage", type=Path, default=STAGE, help="work directory (rebuilt)")
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

    STAGE = args.stage.resolve()
    started = time.monotonic()
    _stage(args.weaken)
    names: list[str] = []
    label = "all mutants"
    if args.sample:
        everything = [n for n in _generate() if n.startswith(TRIAGED)]
        names = sorted(
            random.Random(args.seed).sample(everything, min(args.sample, len(everything)))
        )
        label = f"sample of {len(names)} of {len(everything)} in triaged modules (seed {args.seed})"
    elif args.only:
        names = sorted(n for n in _generate() if any(fnmatch(n, glob) for glob in args.only))
        if not names:
            raise SystemExit(f"mutate: no mutant matches {args.only}")
        label = f"{len(names)} mutants matching {' '.join(args.only)}"
    code = _mutmut("run", "--max-children", str(args.max_children), *names, quiet=True)
    if code:
        raise SystemExit(f"mutate: mutmut run failed (exit {code}); run it in {STAGE} to see why")
    mutants = _results()
    if names:
        chosen = set(names)
        mutants = [m for m in mutants if m.name in chosen]
    else:
        _unlisted_report(mutants)
    return _report(mutants, args.min_score, time.monotonic() - started, label)


if __name__ == "__main__":
    sys.exit(main())
