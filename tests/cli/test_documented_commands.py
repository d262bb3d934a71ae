"""Every `flowstate ...` command in a code block of the READMEs and docs/ is one the CLI takes.

A renamed command or flag then fails here, not in a new user's shell (README once said
``flowstate migrate`` for ``flowstate migrate upgrade``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from flowstate.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("clients/*/README.md")])
_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_COMMAND = re.compile(
    r"(?:^|[\s(]|/bin/)flowstate ((?:serve|token|migrate|flows|import-legacy)\b[^|;#)&\n]*)"
)


_INLINE = re.compile(r"`(?:\.venv/bin/)?flowstate ([a-z][^`]*)`")
_TEMPLATE = re.compile(r"\.\.\.|[\[|<]| / ")  # a synopsis (`flows list|get`), not a command


def documented_commands() -> list[tuple[str, str]]:
    """(label, argv text) of every command in a fenced block or an inline code span."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        commands = [
            command
            for block in _FENCE.findall(text)
            for line in block.replace("\\\n", " ").splitlines()
            for command in _COMMAND.findall(line)
        ]
        commands += [c for c in _INLINE.findall(_FENCE.sub("", text)) if not _TEMPLATE.search(c)]
        found += [(f"{document.relative_to(ROOT)}: {c.strip()}", c) for c in commands]
    return found


COMMANDS = documented_commands()


def test_the_documents_show_commands() -> None:
    names = {label.split(": ", 1)[1].split()[0] for label, _ in COMMANDS}
    assert {"serve", "token", "migrate", "flows"} <= names


@pytest.mark.parametrize(("label", "command"), COMMANDS, ids=[label for label, _ in COMMANDS])
def test_a_documented_command_parses(label: str, command: str) -> None:
    argv = shlex.split(command)
    if len(argv) == 1:  # prose naming a command ("`flowstate token` signs with ..."): a leaf
        # (`flowstate migrate` alone is not: it needs an action, as README once forgot).
        assert _leaf_commands().get(argv[0]), f"{label}: not a command that runs on its own"
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:
            if exit_.code == 0:  # --help
                return
            pytest.fail(f"{label}: {err.getvalue().strip().splitlines()[-1]}")
    assert getattr(args, "run", None) is not None, f"{label}: not a complete command"


def _leaf_commands() -> dict[str, bool]:
    """Every top-level command: whether it is a leaf (has no sub-commands of its own)."""
    (commands,) = [
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return {
        name: not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        for name, parser in commands.items()
    }
