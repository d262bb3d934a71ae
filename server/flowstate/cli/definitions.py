"""``flowstate definitions``: register, list and draw flow definitions on a running server.

- ``apply FILE`` registers the definition in a YAML or JSON file for the token's tenant (needs
  the ``definitions:write`` scope). The file is checked locally first, with the server's own
  rules (`flowstate.core.definition_document`), and every problem is printed with its path
  (``phases[2].depends_on[0]``); ``--check`` then asks the server for a dry run
  (``validate_only``) and stores nothing. ``--allow-shadow-builtin`` registers a built-in's name.
- ``list`` prints the latest version of every definition the tenant can use (``--name`` lists
  every version of one).
- ``show NAME [--version N]`` prints the phases and draws the DAG: one row of boxes per stage
  (a phase's stage is the length of the longest dependency path leading to it, so the phases of
  one stage can run in parallel), each box followed by the phases it waits for.

Connection flags, output (``--json``) and exit statuses are those of ``flowstate flows``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from flowstate.cli.flows import (
    EXIT_ERROR,
    EXIT_OK,
    _common_options,
    _Output,
    _proto_json,
    _run,
    _table,
    _time,
)
from flowstate.client import FlowDefinition, FlowstateClient
from flowstate.core.definition_document import check_document

__all__ = ["load_document", "register", "render_dag"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``definitions`` command group to the ``flowstate`` command line."""
    group = subparsers.add_parser(
        "definitions",
        help="register, list and draw flow definitions",
        description="Register, list and draw the flow definitions of your tenant.",
    )
    commands = group.add_subparsers(
        dest="definitions_command", metavar="COMMAND", required=True, help="what to do"
    )
    common = _common_options()

    parser = commands.add_parser(
        "apply",
        parents=[common],
        help="register the definition in a YAML or JSON file (a new version if it changed)",
        description="Register the definition in FILE (YAML or JSON) for your tenant. An "
        "unchanged file returns the existing version.",
    )
    parser.add_argument("file", type=Path, help="the definition, .yaml/.yml or .json")
    parser.add_argument(
        "--check", action="store_true", help="validate only: print every problem, store nothing"
    )
    parser.add_argument(
        "--allow-shadow-builtin",
        action="store_true",
        help="register a built-in definition's name for your tenant",
    )
    parser.add_argument("--request-id", help="idempotency key (generated when omitted)")
    parser.set_defaults(run=_apply)

    parser = commands.add_parser(
        "list", parents=[common], help="list the definitions you can use (latest versions)"
    )
    parser.add_argument("--name", default="", help="every version of this definition instead")
    parser.set_defaults(run=lambda args: _run(_list, args))

    parser = commands.add_parser(
        "show", parents=[common], help="show a definition's phases and draw its DAG"
    )
    parser.add_argument("name", help="the definition's name, e.g. discovery")
    parser.add_argument("--version", type=int, default=0, help="the version (default: latest)")
    parser.set_defaults(run=lambda args: _run(_show, args))


def load_document(path: Path) -> Any:
    """The parsed file: JSON for ``.json``, YAML otherwise (safe loader: data only).

    Raises ValueError with the file's name when it cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from None


def _apply(args: argparse.Namespace) -> int:
    output = _Output(as_json=args.json, out=sys.stdout, err=sys.stderr)
    try:
        document = load_document(args.file)
    except ValueError as exc:
        print(f"flowstate: error: INVALID_ARGUMENT: {exc}", file=output.err)
        return EXIT_ERROR
    violations = check_document(document)
    if violations:
        if output.as_json:
            output.json({"violations": [v.to_dict() for v in violations]})
        else:
            output.line(f"{args.file}: {len(violations)} problem(s):")
            for violation in violations:
                output.line(f"  {violation.field or '(document)'}: {violation.description}")
        return EXIT_ERROR

    def send(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
        result = client.create_flow_definition(
            document,
            allow_shadow_builtin=args.allow_shadow_builtin,
            validate_only=args.check,
            request_id=args.request_id,
        )
        definition = result.definition
        if output.as_json:
            output.json(_proto_json(result.raw))
        elif args.check:
            output.line(f"{args.file}: valid; it would be {definition.name} v{definition.version}")
        else:
            what = "registered" if result.created else "unchanged"
            output.line(f"{what}: {definition.name} v{definition.version}")
        return EXIT_OK

    return _run(send, args)


def _list(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    definitions = list(client.iter_flow_definitions(name=args.name))
    if output.as_json:
        output.json({"definitions": [_proto_json(d.raw) for d in definitions]})
        return EXIT_OK
    if not definitions:
        output.line("no definitions")
        return EXIT_OK
    output.line(
        _table(
            ["NAME", "VERSION", "PHASES", "OWNER", "REGISTERED", "DISPLAY NAME"],
            [
                [
                    d.name,
                    str(d.version),
                    str(len(d.phases)),
                    "built-in" if d.builtin else "tenant",
                    _time(d.create_time),
                    d.display_name,
                ]
                for d in definitions
            ],
        )
    )
    return EXIT_OK


def _show(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    definition = client.get_flow_definition(args.name, version=args.version)
    if output.as_json:
        output.json(_proto_json(definition.raw))
        return EXIT_OK
    owner = "built-in" if definition.builtin else "tenant"
    title = f"{definition.name} v{definition.version} ({owner})"
    if definition.display_name:
        title += f": {definition.display_name}"
    output.line(title)
    if definition.description:
        output.line(definition.description)
    output.line()
    output.line(
        _table(
            ["PHASE", "DEPENDS ON", "WEIGHT", "RETRIES", "GROUP", "OPTIONAL"],
            [
                [
                    p.name,
                    ", ".join(p.depends_on) or "-",
                    str(p.weight),
                    str(p.max_retries),
                    p.status_group.name if p.status_group else "-",
                    "yes" if p.optional else "",
                ]
                for p in definition.phases
            ],
        )
    )
    output.line()
    output.line(render_dag(_graph(definition)))
    return EXIT_OK


def _graph(definition: FlowDefinition) -> list[tuple[str, tuple[str, ...], bool]]:
    return [(p.name, tuple(p.depends_on), p.optional) for p in definition.phases]


def render_dag(phases: Sequence[tuple[str, Sequence[str], bool]]) -> str:
    """Draw a DAG given as (name, depends_on, optional) in a topological order.

    One row of boxes per stage (the longest dependency path to the phase), so the boxes of a row
    may run in parallel; under a box, ``▲ a, b`` names what it waits for. Optional phases are
    marked ``?``. Deterministic: rows keep definition order.
    """
    stage: dict[str, int] = {}
    for name, depends_on, _ in phases:
        stage[name] = 1 + max((stage[d] for d in depends_on if d in stage), default=-1)
    lines: list[str] = []
    rows: Mapping[int, list[tuple[str, Sequence[str], bool]]] = {
        level: [p for p in phases if stage[p[0]] == level] for level in sorted(set(stage.values()))
    }
    for level, row in rows.items():
        labels = [f" {name}{'?' if optional else ''} " for name, _, optional in row]
        waits = [f"  ▲ {', '.join(deps)}" if deps else "" for _, deps, _ in row]
        widths = [max(len(label) + 2, len(wait)) for label, wait in zip(labels, waits, strict=True)]
        prefix = f"stage {level + 1}  "
        pad = " " * len(prefix)
        top = "  ".join(
            ("┌" + "─" * len(lb) + "┐").ljust(w) for lb, w in zip(labels, widths, strict=True)
        )
        mid = "  ".join(("│" + lb + "│").ljust(w) for lb, w in zip(labels, widths, strict=True))
        bottom = "  ".join(
            ("└" + "─" * len(lb) + "┘").ljust(w) for lb, w in zip(labels, widths, strict=True)
        )
        lines += [pad + top.rstrip(), prefix + mid.rstrip(), pad + bottom.rstrip()]
        if any(waits):
            lines.append(
                pad + "  ".join(w.ljust(n) for w, n in zip(waits, widths, strict=True)).rstrip()
            )
    lines.append("")
    lines.append("? optional (may be skipped)   ▲ waits for (every one COMPLETED or SKIPPED)")
    return "\n".join(lines)
