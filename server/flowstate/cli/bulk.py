"""``flowstate bulk ...``: bulk actions over a filter, with a progress bar and a summary table.

::

    flowstate bulk retry --filter 'error = EXTERNAL_SERVICE_ERROR AND updated > -1h' --dry-run
    flowstate bulk retry --filter 'error = EXTERNAL_SERVICE_ERROR AND updated > -1h'
    flowstate bulk rollback --phase data_import --ids ID [ID ...]
    flowstate bulk status ID       # progress and the refused flows with their errors
    flowstate bulk cancel ID       # stop a running bulk action
    flowstate bulk list

``retry|cancel|pause|resume|rollback|skip`` start an action (scope ``flows:admin``) and follow
it to the end: a progress bar on a terminal (one line per change otherwise), then a summary of
the outcomes and a table of the refused flows with their error codes. ``--no-wait`` returns
once started. ``--dry-run`` only counts the matching flows and shows a sample (CountFlows and
ListFlows: nothing is started). ``bulk cancel`` takes either a bulk action's id (stop it) or
``--filter``/``--ids`` (start cancelling flows). Uses the Python SDK, like ``flowstate flows``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from flowstate.cli.flows import (
    EXIT_OK,
    _common_options,
    _Output,
    _proto_json,
    _run,
    _table,
    _time,
)
from flowstate.client import BulkAction, FlowstateClient

__all__ = ["register"]

_ACTIONS = ("retry", "cancel", "pause", "resume", "rollback", "skip")
_SAMPLE = 10
_BAR_WIDTH = 30
_Handler = Callable[[FlowstateClient, argparse.Namespace, _Output], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bulk`` command group to the ``flowstate`` command line."""
    bulk = subparsers.add_parser(
        "bulk",
        help="act on many flows at once (retry, cancel, ...) and follow the progress",
        description=(__doc__ or "").split("\n\n", 1)[0],
    )
    commands = bulk.add_subparsers(
        dest="bulk_command", metavar="COMMAND", required=True, help="what to do"
    )
    common = _common_options()

    def command(name: str, handler: _Handler, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        parser.set_defaults(run=lambda args: _run(handler, args))
        return parser

    for action in _ACTIONS:
        parser = command(action, _start, f"start a bulk {action} of flows (scope flows:admin)")
        parser.set_defaults(action=action)
        if action == "cancel":
            parser.add_argument(
                "bulk_action_id",
                nargs="?",
                metavar="ID",
                help="a bulk action to stop (instead of --filter/--ids: cancel flows)",
            )
        if action in ("rollback", "skip"):
            parser.add_argument("--phase", required=True, help="the phase to " + action)
        selection = parser.add_mutually_exclusive_group()
        selection.add_argument(
            "--filter", default="", help="the flows: a filter as for `flows list --filter`"
        )
        selection.add_argument("--ids", nargs="+", default=[], metavar="FLOW_ID", help="the flows")
        parser.add_argument("--reason", default="", help="recorded in each flow's history")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=f"only show how many flows match and a sample of {_SAMPLE}",
        )
        parser.add_argument(
            "--no-wait", action="store_true", help="return once started (print its id)"
        )

    parser = command("status", _status, "show a bulk action's progress and its refused flows")
    parser.add_argument("bulk_action_id", metavar="ID", help="the bulk action's id")
    parser.add_argument(
        "--watch", action="store_true", help="follow it to the end with a progress bar"
    )
    command("list", _list, "list the tenant's bulk actions, newest first")


def _start(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    if args.action == "cancel" and args.bulk_action_id:
        if args.filter or args.ids:
            raise ValueError("give a bulk action ID to stop it, or --filter/--ids, not both")
        action = client.cancel_bulk_action(args.bulk_action_id)
        return _print_action(client, action, output)
    if not args.filter and not args.ids:
        raise ValueError("--filter or --ids is required")
    if args.dry_run:
        return _dry_run(client, args, output)
    action = client.start_bulk_action(
        args.action.upper(),
        filter=args.filter,
        flow_ids=args.ids,
        phase=getattr(args, "phase", "") or "",
        reason=args.reason,
    )
    if args.no_wait:
        if output.as_json:
            output.json(_proto_json(action.raw))
        else:
            output.line(f"started bulk {args.action} {action.bulk_action_id}: {action.total} flows")
        return EXIT_OK
    return _follow(client, action, output)


def _dry_run(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    if args.ids:
        flows = [client.get_flow(flow_id) for flow_id in args.ids[:_SAMPLE]]
        total = len(args.ids)
    else:
        total = client.count_flows(args.filter).total
        flows = list(client.list_flows(filter=args.filter, page_size=_SAMPLE).flows)
    if output.as_json:
        output.json({"matching": total, "sample": [_proto_json(f.raw) for f in flows]})
        return EXIT_OK
    output.line(f"dry run: bulk {args.action} would take {total} flows; nothing was started")
    if flows:
        output.line(
            _table(
                ["FLOW ID", "DEFINITION", "STATUS", "UPDATED"],
                [
                    [f.flow_id, f.definition_name, f.status.name, _time(f.update_time)]
                    for f in flows
                ],
            )
        )
    return EXIT_OK


def _follow(client: FlowstateClient, action: BulkAction, output: _Output) -> int:
    bar = sys.stdout.isatty() and not output.as_json and output.out is sys.stdout
    last = action
    if not output.as_json:
        output.event(
            f"bulk {action.action.name.lower()} {action.bulk_action_id}: {action.total} flows"
        )
    for update in client.watch_bulk_action(action.bulk_action_id):
        last = update
        if output.as_json:
            continue
        if bar:
            print("\r" + _progress(update), end="", file=output.out, flush=True)
        else:
            output.event(_progress(update))
    if bar:
        print(file=output.out)
    return _print_action(client, last, output)


def _progress(action: BulkAction) -> str:
    total = max(action.total, 1)
    filled = round(_BAR_WIDTH * action.done / total)
    percent = 100.0 * action.done / total if action.total else 100.0
    return (
        f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {action.done}/{action.total}"
        f" ({percent:.0f}%) applied {action.applied}, refused {action.refused},"
        f" skipped {action.skipped}"
    )


def _print_action(client: FlowstateClient, action: BulkAction, output: _Output) -> int:
    refused = list(client.iter_bulk_action_results(action.bulk_action_id, outcome="REFUSED"))
    if output.as_json:
        output.json(
            {
                "bulkAction": _proto_json(action.raw),
                "refused": [_proto_json(r.raw) for r in refused],
            }
        )
        return EXIT_OK
    pending = action.total - action.done
    output.line(
        _table(
            ["BULK ACTION", action.bulk_action_id],
            [
                ["action", action.action.name + (f" {action.phase}" if action.phase else "")],
                ["selection", action.filter or "(flow ids)"],
                ["state", action.state.name],
                ["started", _time(action.create_time)],
                ["ended", _time(action.end_time)],
            ],
        )
    )
    output.line()
    output.line(
        _table(
            ["OUTCOME", "FLOWS"],
            [
                ["applied", str(action.applied)],
                ["refused", str(action.refused)],
                ["skipped", str(action.skipped)],
                ["not taken", str(pending)],
                ["total", str(action.total)],
            ],
        )
    )
    if refused:
        output.line()
        output.line(
            _table(
                ["REFUSED FLOW", "PHASE", "ERROR", "MESSAGE"],
                [
                    [r.flow_id, r.phase or "", r.error_code.name if r.error_code else "", r.message]
                    for r in refused
                ],
            )
        )
    return EXIT_OK


def _status(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    action = client.get_bulk_action(args.bulk_action_id)
    if args.watch and not action.finished:
        return _follow(client, action, output)
    return _print_action(client, action, output)


def _list(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    actions, _ = client.list_bulk_actions(page_size=50)
    if output.as_json:
        output.json({"bulkActions": [_proto_json(a.raw) for a in actions]})
        return EXIT_OK
    if not actions:
        output.line("no bulk actions")
        return EXIT_OK
    output.line(
        _table(
            ["ID", "ACTION", "STATE", "DONE", "APPLIED", "REFUSED", "SKIPPED", "STARTED"],
            [
                [
                    a.bulk_action_id,
                    a.action.name,
                    a.state.name,
                    f"{a.done}/{a.total}",
                    str(a.applied),
                    str(a.refused),
                    str(a.skipped),
                    _time(a.create_time),
                ]
                for a in actions
            ],
        )
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bulk`` alone (``python -m flowstate.cli.bulk ...``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="flowstate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status
