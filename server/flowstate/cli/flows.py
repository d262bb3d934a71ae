"""``flowstate flows``: inspect and repair flows on a running server, through the Python SDK.

Every command talks to the server with `flowstate.client.FlowstateClient`. Connection settings
come from flags or the environment:

- ``--address`` / ``FLOWSTATE_ADDRESS`` (default ``127.0.0.1:50051``);
- ``--token`` / ``FLOWSTATE_TOKEN``: a bearer JWT (``flowstate token`` mints one in dev mode);
- ``--tls`` (system roots), ``--tls-ca-file`` / ``FLOWSTATE_TLS_CA_FILE``, and for mTLS
  ``--tls-cert-file`` / ``FLOWSTATE_TLS_CERT_FILE`` with ``--tls-key-file`` /
  ``FLOWSTATE_TLS_KEY_FILE``.

Output is a readable table, or with ``--json`` the canonical proto3 JSON of the response
(lowerCamelCase field names, enum value names, 64-bit integers as strings: what ``buf curl``
prints); ``watch`` and ``watch-all`` print one line (or one JSON object) per event as it
arrives. A refused request prints the structured error (code, message, details) on stderr and
exits with status 1, never a traceback; a server that cannot be reached is ``UNAVAILABLE:
cannot reach HOST:PORT``; ``validate`` also exits 1 when the transition is not allowed. Usage
errors (a state, status or error code that does not exist, a move to FAILED without
``--error-code``) exit with status 2 and list the valid values.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from flowstate.client import (
    DEFAULT_ADDRESS,
    ApprovalDecision,
    ErrorCode,
    Flow,
    FlowDefinition,
    FlowEvent,
    FlowEventKind,
    FlowstateClient,
    FlowstateError,
    FlowStatus,
    HistoryEntry,
    MutationResult,
    Phase,
    PhaseState,
    RecoveryOptions,
    RetryPolicy,
    ValidationResult,
)
from flowstate.v1 import flow_service_pb2

__all__ = ["main", "register"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_Handler = Callable[[FlowstateClient, argparse.Namespace, "_Output"], int]


# --- parser ----------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``flows`` command group to the ``flowstate`` command line.

    Each leaf command sets ``run`` (``run(args) -> int``, the exit status) on the namespace, as
    every command group of `flowstate.cli.main` does.
    """
    flows = subparsers.add_parser(
        "flows",
        help="inspect and repair flows on a running server",
        description="Inspect and repair flows on a running server (through the Python SDK).",
    )
    commands = flows.add_subparsers(
        dest="flows_command", metavar="COMMAND", required=True, help="what to do"
    )
    common = _common_options()

    def command(
        name: str, handler: _Handler, help_text: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=description or help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(run=lambda args: _run(handler, args))
        return parser

    parser = command("list", _list, "list flows, least recently changed first (stuck flows first)")
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        type=_enum_name(FlowStatus),
        metavar="STATUS",
        help=f"only flows in this status (repeatable): {_names(FlowStatus)}",
    )
    parser.add_argument(
        "--phase-state",
        action="append",
        default=[],
        metavar="PHASE=STATE[,STATE]",
        help=f"only flows whose phase is in one of the states (repeatable); states: "
        f"{_names(PhaseState)}",
    )
    parser.add_argument(
        "--stuck",
        type=_duration,
        metavar="DURATION",
        help="only flows unchanged for this long, e.g. 30m, 2h, 1d",
    )
    parser.add_argument("--definition", metavar="NAME", help="only flows of this definition")
    _filter_argument(parser)
    parser.add_argument(
        "--alerting",
        action="store_true",
        help="only flows with an alert in force (deadline passed, stuck, approval overdue)",
    )
    parser.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N flows (0: all; default 50)"
    )

    parser = command(
        "count",
        _count,
        "count flows matching a filter, per status, definition or phase state",
        "Count the tenant's flows matching --filter, in all and per group (--by).\n\n"
        "examples:\n"
        "  flowstate flows count --by status\n"
        "  flowstate flows count --filter 'labels.team = \"core\"' --by phase.data_import",
    )
    _filter_argument(parser)
    parser.add_argument(
        "--by",
        default="",
        metavar="GROUP",
        help="status, definition or phase.<name> (default: the total only)",
    )

    parser = command("get", _get, "show a flow and its phases")
    _flow_id_argument(parser)

    parser = command(
        "tree",
        _tree,
        "show a flow and its child flows as a tree (docs/child_flows.md)",
        "Show a flow and its child flows, level by level: each line a flow (status, progress)\n"
        "under the phase of its parent it follows.",
    )
    _flow_id_argument(parser)
    parser.add_argument(
        "--depth", type=int, default=5, metavar="N", help="levels of children (1-5; default 5)"
    )

    parser = command("history", _history, "show a flow's history (oldest first)")
    _flow_id_argument(parser)
    parser.add_argument(
        "--after-version",
        type=int,
        default=0,
        metavar="N",
        help="only entries after flow version N (default 0: all)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, metavar="N", help="at most N entries (default 0: all)"
    )

    parser = command("watch", _watch, "follow a flow's changes as they commit, until it ends")
    _flow_id_argument(parser)
    parser.add_argument(
        "--after-version",
        type=int,
        metavar="N",
        help="first replay the changes after version N (default: start with a snapshot)",
    )
    parser.add_argument(
        "--keep-open", action="store_true", help="keep following after the flow has ended"
    )
    parser.add_argument(
        "--children-depth",
        type=int,
        default=0,
        metavar="N",
        help="also follow the flow's child flows down to N levels (1-5; each line names its "
        "flow; resume with --cursor)",
    )
    parser.add_argument(
        "--dependencies",
        action="store_true",
        help="also follow the phases of other flows that its external dependencies wait for",
    )
    parser.add_argument(
        "--cursor",
        metavar="CURSOR",
        help="with --children-depth or --dependencies: resume after this cursor",
    )

    parser = command(
        "watch-all",
        _watch_all,
        "follow every flow of the tenant (WatchFlows), until interrupted",
        "Follow every matching flow of the token's tenant: a snapshot of each, then every "
        "change as it\ncommits, one line (or, with --json, one JSON object) per event. Each event "
        "carries a cursor;\npass the last one to --cursor to resume where a previous run "
        "stopped.",
    )
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        type=_enum_name(FlowStatus),
        metavar="STATUS",
        help=f"only flows in this status (repeatable): {_names(FlowStatus)}",
    )
    parser.add_argument("--definition", metavar="NAME", help="only flows of this definition")
    parser.add_argument(
        "--flow-id",
        dest="flow_ids",
        action="append",
        default=[],
        metavar="FLOW_ID",
        help="only this flow (repeatable)",
    )
    parser.add_argument(
        "--cursor", help="resume after this event's cursor (default: start with snapshots)"
    )
    parser.add_argument(
        "--limit", type=int, default=0, metavar="N", help="stop after N events (default 0: never)"
    )

    parser = command(
        "transition",
        _transition,
        "move a phase to a state",
        "Move a phase to a state. A move to FAILED or RETRY_NEEDED reports why: --error-code "
        "(required)\nand optionally --error-message and --error-details.\n\n"
        + _listing("States", PhaseState),
    )
    _flow_id_argument(parser)
    _phase_argument(parser)
    parser.add_argument(
        "state",
        type=_enum_name(PhaseState),
        metavar="STATE",
        help="target phase state, e.g. IN_PROGRESS (any case)",
    )
    parser.add_argument(
        "--error-code",
        type=_failure_code,
        metavar="CODE",
        help="why the phase failed (required for FAILED / RETRY_NEEDED): " + _PHASE_FAILURE_HELP,
    )
    parser.add_argument(
        "--error-message", default="", metavar="TEXT", help="what failed, for people"
    )
    parser.add_argument(
        "--error-details",
        type=_json_object,
        metavar="JSON",
        help="failure details as a JSON object, e.g. '{\"rows\": 3}'",
    )
    parser.add_argument(
        "--metadata", type=_json_object, metavar="JSON", help="history metadata (a JSON object)"
    )
    _mutation_options(parser)

    parser = command("progress", _progress, "report in-phase progress (0..1) of a running phase")
    _flow_id_argument(parser)
    _phase_argument(parser)
    parser.add_argument(
        "progress", type=float, metavar="FRACTION", help="how far the phase is, 0.0 to 1.0"
    )
    _mutation_options(parser)

    parser = command(
        "heartbeat",
        _heartbeat,
        "a worker's sign of life for a running phase (pushes its heartbeat timeout back)",
        "A worker's sign of life for a running phase: pushes its heartbeat timeout back\n"
        "(docs/timers.md). Writes no history. Fails with INVALID_PHASE_TRANSITION when the\n"
        "phase is not running (e.g. the server timed it out).",
    )
    _flow_id_argument(parser)
    _phase_argument(parser)

    parser = command(
        "retry",
        _retry,
        "retry a failed phase (FAILED -> RETRY_NEEDED; again: -> IN_PROGRESS)",
        "Retry a phase. A retry is two steps, each its own transition and history entry:\n"
        "  FAILED -> RETRY_NEEDED        (the flow is RETRY_PENDING; nothing runs yet)\n"
        "  RETRY_NEEDED -> IN_PROGRESS   (counts one attempt against the phase's max_retries)\n"
        "so a FAILED phase needs two calls, or one with --restart, which makes both.",
    )
    _flow_id_argument(parser)
    _phase_argument(parser)
    parser.add_argument(
        "--restart",
        action="store_true",
        help="from FAILED, go straight back to IN_PROGRESS (both steps, two history entries)",
    )
    parser.add_argument(
        "--force", action="store_true", help="retry a non-retryable failure (flows:admin scope)"
    )
    _mutation_options(parser)

    parser = command("rollback", _rollback, "roll a phase back (and its dependents)")
    _flow_id_argument(parser)
    _phase_argument(parser)
    parser.add_argument(
        "--no-cascade",
        dest="cascade",
        action="store_false",
        help="refuse instead of rolling back started dependents",
    )
    _mutation_options(parser)

    parser = command(
        "decide",
        _decide,
        "approve, reject or send back a phase waiting for approval (flows:approve scope)",
        "Decide on a phase in WAITING_APPROVAL (needs the flows:approve scope, and whatever the\n"
        "phase's approval policy asks of the token):\n"
        "  APPROVE          -> COMPLETED\n"
        "  REQUEST_CHANGES  -> IN_PROGRESS (back to its worker)\n"
        "  REJECT           -> FAILED (APPROVAL_REJECTED, not retryable without admin force)\n"
        "The approver (the token's subject), decision and --comment are recorded in history\n"
        "and on the phase.",
    )
    _flow_id_argument(parser)
    _phase_argument(parser)
    parser.add_argument(
        "decision",
        type=_enum_name(ApprovalDecision),
        metavar="DECISION",
        help="APPROVE, REJECT or REQUEST_CHANGES (any case)",
    )
    parser.add_argument("--comment", default="", metavar="TEXT", help="why; recorded in history")
    _mutation_options(parser, reason=False)

    parser = command("skip", _skip, "skip an optional phase (it counts as done)")
    parser.add_argument("flow_id", help="the flow's id (a UUID)")
    parser.add_argument("phase", help="an optional phase of the flow's definition")
    _mutation_options(parser)

    for name, handler, help_text in (
        ("pause", _pause, "pause a flow: no phase may start"),
        ("resume", _resume, "resume a paused flow"),
        ("cancel", _cancel, "cancel a flow (terminal)"),
    ):
        parser = command(name, handler, help_text)
        _flow_id_argument(parser)
        _mutation_options(parser)

    parser = command("recovery", _recovery, "list (or execute) a flow's recovery options")
    _flow_id_argument(parser)
    parser.add_argument(
        "--execute", type=int, metavar="N", help="execute option number N of the list"
    )
    parser.add_argument(
        "--request-id", metavar="ID", help="idempotency key for --execute (default: generated)"
    )

    parser = command("create", _create, "create a flow")
    parser.add_argument(
        "--definition", default="", metavar="NAME", help='definition name (default "discovery")'
    )
    parser.add_argument(
        "--definition-version",
        type=int,
        default=0,
        metavar="N",
        help="definition version (default 0: the latest)",
    )
    parser.add_argument("--display-name", default="", metavar="TEXT", help="a name for people")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label to filter by later (repeatable)",
    )
    parser.add_argument("--flow-id", metavar="UUID", help="client-chosen id (default: generated)")
    parser.add_argument(
        "--deadline",
        type=_duration,
        metavar="DURATION",
        help="the flow should be finished within this long, e.g. 4h, 2d (else an alert)",
    )
    parser.add_argument("--request-id", metavar="ID", help="idempotency key (default: generated)")

    parser = command(
        "validate",
        _validate,
        "check a transition without applying it (exit 0: allowed, 1: not)",
        "Check a transition without applying it; exit 0 when allowed, 1 when not.\n"
        "A phase transition: --phase and --to (with FLOW_ID, or --from for the tables alone).\n"
        "A flow transition: --to-status (with FLOW_ID, or --from-status).\n\n"
        + _listing("States", PhaseState)
        + "\n"
        + _listing("Statuses", FlowStatus),
    )
    parser.add_argument(
        "flow_id",
        nargs="?",
        metavar="FLOW_ID",
        help="check against this flow's actual state (default: the tables alone)",
    )
    parser.add_argument(
        "--definition",
        metavar="NAME",
        help="definition whose tables to check without a flow (default discovery)",
    )
    parser.add_argument("--phase", metavar="PHASE", help="phase transition: the phase")
    parser.add_argument(
        "--from",
        dest="from_state",
        type=_enum_name(PhaseState),
        metavar="STATE",
        help="phase transition: current state",
    )
    parser.add_argument(
        "--to",
        dest="to_state",
        type=_enum_name(PhaseState),
        metavar="STATE",
        help="phase transition: target state",
    )
    parser.add_argument(
        "--from-status",
        type=_enum_name(FlowStatus),
        metavar="STATUS",
        help="flow transition: current status",
    )
    parser.add_argument(
        "--to-status",
        type=_enum_name(FlowStatus),
        metavar="STATUS",
        help="flow transition: target status",
    )


_PHASE_FAILURE_CODES = (
    ErrorCode.PHASE_EXECUTION_FAILED,
    ErrorCode.AGENT_TIMEOUT,
    ErrorCode.EXTERNAL_SERVICE_ERROR,
    ErrorCode.DATA_VALIDATION_FAILED,
)
"""The codes a worker reports a phase failure with (DESIGN.md section 2, "Failure reports")."""
_PHASE_FAILURE_HELP = (
    "PHASE_EXECUTION_FAILED, AGENT_TIMEOUT, EXTERNAL_SERVICE_ERROR (retryable) or "
    "DATA_VALIDATION_FAILED (not retryable)"
)


def _listing(label: str, enum: type[PhaseState] | type[FlowStatus]) -> str:
    """``States: A, B, ...`` wrapped for a help description."""
    return textwrap.fill(f"{label}: {_names(enum)}", width=90, subsequent_indent="  ")


def _names(enum: type[PhaseState] | type[FlowStatus]) -> str:
    """The member names a user may type, in the API's order."""
    return ", ".join(member.name for member in enum if member.value != 0)


_Enum = PhaseState | FlowStatus | ErrorCode | ApprovalDecision


def _enum_name(enum: type[_Enum]) -> Callable[[str], str]:
    """An argparse type: a member name in any case, checked here so usage errors list the
    valid names; the SDK receives the canonical name."""

    def parse(text: str) -> str:
        try:
            return enum.parse(text).name
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = enum.__name__  # argparse names the type in its message
    return parse


def _failure_code(text: str) -> str:
    """--error-code: any ErrorCode name; a wrong one is answered with the phase failure codes."""
    try:
        return ErrorCode.parse(text).name
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown error code {text!r}: a phase failure is {_PHASE_FAILURE_HELP}"
        ) from None


def _flow_id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow_id", metavar="FLOW_ID", help="the flow's id (a UUID)")


def _phase_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "phase",
        metavar="PHASE",
        help="phase name, e.g. data_import (`flowstate flows get FLOW_ID` lists them)",
    )


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=os.environ.get("FLOWSTATE_ADDRESS", DEFAULT_ADDRESS),
        metavar="HOST:PORT",
        help="server host:port (FLOWSTATE_ADDRESS; default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("FLOWSTATE_TOKEN"),
        metavar="JWT",
        help="bearer token (FLOWSTATE_TOKEN; `flowstate token` mints one in dev mode)",
    )
    group.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext to a host that is not loopback (the token travels unencrypted)",
    )
    group.add_argument(
        "--tls-ca-file",
        type=Path,
        default=_env_path("FLOWSTATE_TLS_CA_FILE"),
        metavar="PEM",
        help="PEM roots of the server certificate (FLOWSTATE_TLS_CA_FILE)",
    )
    group.add_argument(
        "--tls-cert-file",
        type=Path,
        default=_env_path("FLOWSTATE_TLS_CERT_FILE"),
        metavar="PEM",
        help="client certificate for mTLS (FLOWSTATE_TLS_CERT_FILE)",
    )
    group.add_argument(
        "--tls-key-file",
        type=Path,
        default=_env_path("FLOWSTATE_TLS_KEY_FILE"),
        metavar="PEM",
        help="client key for mTLS (FLOWSTATE_TLS_KEY_FILE)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="per call, retries included (default %(default)s)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print the response as canonical proto3 JSON (camelCase names, as buf curl does)",
    )
    return common


def _mutation_options(parser: argparse.ArgumentParser, *, reason: bool = True) -> None:
    if reason:
        parser.add_argument("--reason", default="", metavar="TEXT", help="recorded in the history")
    parser.add_argument(
        "--expected-version",
        type=int,
        metavar="N",
        help="apply only if the flow is at version N (else VERSION_CONFLICT)",
    )
    parser.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key: the same ID again replays the first result (default: generated)",
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration like 30m, 2h or 1d: {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


# --- running ---------------------------------------------------------------------------------


class _Output:
    """Where and how a command prints."""

    def __init__(self, *, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, sort_keys=False), file=self.out)

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def event(self, text: str) -> None:
        """One line of a stream, flushed at once (the reader may be a pipe)."""
        print(text, file=self.out, flush=True)


def _run(handler: _Handler, args: argparse.Namespace) -> int:
    output = _Output(as_json=args.json, out=sys.stdout, err=sys.stderr)
    try:
        client = FlowstateClient(
            address=args.address,
            token=args.token,
            secure=args.tls,
            root_certificates=_read(args.tls_ca_file),
            certificate_chain=_read(args.tls_cert_file),
            private_key=_read(args.tls_key_file),
            allow_insecure=args.insecure,
            timeout=args.timeout,
            retry=RetryPolicy(max_attempts=3, deadline=max(args.timeout, 1.0)),
        )
    except (OSError, ValueError) as exc:
        print(f"flowstate: error: INVALID_ARGUMENT: {exc}", file=output.err)
        return EXIT_USAGE
    try:
        with client:
            return handler(client, args, output)
    except FlowstateError as error:
        _print_error(error, output, address=args.address, timeout=args.timeout)
        return EXIT_ERROR
    except ValueError as exc:  # a bad enum name or a missing argument combination
        print(f"flowstate: error: INVALID_ARGUMENT: {exc}", file=output.err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def _print_error(error: FlowstateError, output: _Output, *, address: str, timeout: float) -> None:
    """The structured error, in the format every `flowstate` command uses.

    A call that got no answer from a Flowstate server (UNAVAILABLE or DEADLINE_EXCEEDED
    without the server's FlowError) says so and names the address, rather than the SDK's
    TEMPORARY_RESOURCE_UNAVAILABLE, which is also what a server says when its database is down.
    """
    code = error.code.name if error.code != ErrorCode.UNSPECIFIED else error.grpc_code.name
    message = error.message
    if error.flow_error is None and error.grpc_code is grpc.StatusCode.UNAVAILABLE:
        code = error.grpc_code.name
        message = f"cannot reach {address} ({error.message})"
    elif error.flow_error is None and error.grpc_code is grpc.StatusCode.DEADLINE_EXCEEDED:
        code = error.grpc_code.name
        message = f"no answer from {address} within {timeout:g}s ({error.message})"
    if output.as_json:
        fields = {**error.to_dict(), "code": code, "message": message}
        print(json.dumps({"error": fields}, indent=2), file=output.err)
        return
    print(f"flowstate: error: {code}: {message}", file=output.err)
    if error.details:
        details = json.dumps(error.details, sort_keys=True, default=str)
        print(f"  details: {details}", file=output.err)
    print(f"  grpc_status: {error.grpc_code.name}", file=output.err)
    if error.correlation_id:
        print(f"  correlation_id: {error.correlation_id}", file=output.err)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flows`` alone (``python -m flowstate.cli.flows ...``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="flowstate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


def _filter_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--filter",
        default="",
        metavar="FILTER",
        help="only flows matching this filter (docs/filters.md), e.g. "
        "'status = FAILED AND labels.team = \"core\"', 'error = EXTERNAL_SERVICE_ERROR AND "
        "updated > -1h', 'stuck'",
    )


# --- commands --------------------------------------------------------------------------------


def _list(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    phase_states: dict[str, list[str]] = {}
    for item in args.phase_state:
        phase, separator, states = item.partition("=")
        if not separator or not phase or not states:
            raise ValueError(f"--phase-state expects PHASE=STATE[,STATE], got {item!r}")
        phase_states.setdefault(phase, []).extend(states.split(","))
    flows: list[Flow] = []
    for flow in client.iter_flows(
        statuses=args.status,
        phase_states=phase_states,
        updated_before=args.stuck,
        definition_name=args.definition,
        filter=args.filter,
        alerting=args.alerting,
        page_size=min(args.limit, 500) if args.limit > 0 else 0,
    ):
        flows.append(flow)
        if args.limit and len(flows) >= args.limit:
            break
    if output.as_json:
        output.json({"flows": [_proto_json(flow.raw) for flow in flows]})
        return EXIT_OK
    output.line(
        _table(
            ["FLOW ID", "DEFINITION", "STATUS", "PROGRESS", "VERSION", "UPDATED", "NAME"],
            [
                [
                    flow.flow_id,
                    flow.definition_name,
                    flow.status.name,
                    f"{flow.progress:.1f}%",
                    str(flow.version),
                    _time(flow.update_time),
                    flow.display_name,
                ]
                for flow in flows
            ],
        )
        if flows
        else "no flows"
    )
    return EXIT_OK


def _count(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    counted = client.count_flows(args.filter, group_by=args.by)
    if output.as_json:
        output.json(_proto_json(counted.raw))
        return EXIT_OK
    rows = [[key or "(none)", str(count)] for key, count in counted.groups.items()]
    rows.append(["TOTAL", str(counted.total)])
    output.line(_table([args.by.upper() or "FLOWS", "COUNT"], rows))
    return EXIT_OK


def _get(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    flow = client.get_flow(args.flow_id)
    if output.as_json:
        output.json(_proto_json(flow.raw))
        return EXIT_OK
    definition = None
    if any(p.state == PhaseState.IN_PROGRESS for p in flow.phases):
        # The phases' timeouts are in the definition (docs/timers.md).
        definition = client.get_flow_definition(
            flow.definition_name, version=flow.definition_version
        )
    _print_flow(flow, output, definition)
    return EXIT_OK


def _tree(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    tree = client.get_flow_tree(args.flow_id, depth=args.depth)
    if output.as_json:
        output.json(_proto_json(tree.raw))
        return EXIT_OK

    def describe(flow: Flow) -> str:
        return (
            f"{flow.flow_id}  {flow.definition_name} v{flow.definition_version}  "
            f"{flow.status.name}  {flow.progress:g}%"
        )

    def walk(flow: Flow, indent: str) -> None:
        for child in tree.children(flow.flow_id):
            phase = flow.phase(child.parent_phase) if child.parent_phase else None
            current = phase is not None and phase.child_flow_id == child.flow_id
            label = (
                f"{child.parent_phase} ({phase.state.name})"
                if current and phase
                else (f"{child.parent_phase} (earlier attempt)")
            )
            output.line(f"{indent}└─ {label}: {describe(child)}")
            walk(child, indent + "   ")

    output.line(describe(tree.flow))
    walk(tree.flow, "")
    if tree.truncated:
        output.line("(cut at the server's limit of flows per tree)")
    return EXIT_OK


def _timers(phase: Phase, definition: FlowDefinition | None) -> str:
    """The phase's pending timers, for a person: automatic retry, timeout, heartbeat."""
    timers = []
    if phase.next_attempt_time is not None and phase.state == PhaseState.FAILED:
        timers.append(f"retry at {_time(phase.next_attempt_time)}")
    if definition is not None and phase.state == PhaseState.IN_PROGRESS:
        policy = definition.phase(phase.name).raw.policy
        if policy.HasField("timeout") and phase.state_enter_time is not None:
            due = phase.state_enter_time + policy.timeout.ToTimedelta()
            timers.append(f"timeout at {_time(due)}")
        if policy.HasField("heartbeat_timeout"):
            seconds = policy.heartbeat_timeout.ToTimedelta().total_seconds()
            timers.append(f"heartbeat within {seconds:g}s")
    return "; ".join(timers)


def _history(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    entries: list[HistoryEntry] = []
    for entry in client.iter_flow_history(args.flow_id, after_version=args.after_version):
        entries.append(entry)
        if args.limit and len(entries) >= args.limit:
            break
    if output.as_json:
        output.json({"historyEntries": [_proto_json(entry.raw) for entry in entries]})
    else:
        output.line(_history_table(entries) if entries else "no history entries")
    return EXIT_OK


def _watch_all(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    events = client.watch_flows(
        statuses=args.status,
        definition_name=args.definition,
        flow_ids=args.flow_ids,
        cursor=args.cursor,
    )
    for count, event in enumerate(events, start=1):
        if output.as_json:  # the response as WatchFlows sends it: {"event": ..., "cursor": ...}
            response = flow_service_pb2.WatchFlowsResponse(
                event=event.raw, cursor=event.cursor or ""
            )
            output.event(json.dumps(_proto_json(response), separators=(",", ":")))
        else:
            cursor = f"  cursor={event.cursor}" if event.cursor else ""
            output.event(f"{event.flow_id}  {_event_line(event)}{cursor}")
        if count == args.limit:
            break
    return EXIT_OK


def _watch(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    tree = bool(args.children_depth or args.dependencies)
    events = client.watch(
        args.flow_id,
        after_version=args.after_version,
        keep_open=args.keep_open,
        children_depth=args.children_depth,
        include_dependencies=args.dependencies,
        cursor=args.cursor,
    )
    for event in events:
        if output.as_json and tree:  # the response as WatchFlow sends it, cursor included
            response = flow_service_pb2.WatchFlowResponse(
                event=event.raw,
                cursor=event.cursor or "",
                relation=flow_service_pb2.WatchRelation.ValueType(event.relation),
                parent_flow_id=event.parent_flow_id or "",
                waiting=[
                    flow_service_pb2.WaitingPhase(
                        flow_id=w.flow_id, phase=w.phase, flow_phase=w.flow_phase
                    )
                    for w in event.waiting
                ],
            )
            output.event(json.dumps(_proto_json(response), separators=(",", ":")))
        elif output.as_json:
            output.event(json.dumps(_proto_json(event.raw), separators=(",", ":")))
        elif tree:
            cursor = f"  cursor={event.cursor}" if event.cursor else ""
            output.event(f"{event.flow_id}  {event.relation.name}  {_event_line(event)}{cursor}")
        else:
            output.event(_event_line(event))
    return EXIT_OK


def _event_line(event: FlowEvent) -> str:
    """``v3  TRANSITION data_import IN_PROGRESS -> COMPLETED  DATA_GATHERING  20.0%  alice``."""
    head = f"v{event.flow_version}"
    state = f"{event.status.name}  {event.progress:.1f}%"
    change = event.change
    if event.alert is not None:
        alert = event.alert
        when = _time(alert.raise_time)
        return f"{head}  {when}  ALERT {alert.kind.name}  {state}  {alert.message}"
    if event.kind is not FlowEventKind.CHANGE or change is None:
        return f"{head}  {event.kind.name}  {state}"
    what = change.kind.name
    if change.phase:
        what += f" {change.phase}"
    if change.from_state is not None and change.to_state is not None:
        what += f" {change.from_state.name} -> {change.to_state.name}"
    who = "  ".join(part for part in (change.user_id, change.reason) if part)
    return f"{head}  {_time(change.occur_time)}  {what}  {state}" + (f"  {who}" if who else "")


def _transition(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    state = PhaseState.parse(args.state)
    if state in (PhaseState.FAILED, PhaseState.RETRY_NEEDED) and not args.error_code:
        raise ValueError(
            f"a move to {state.name} reports why: add --error-code CODE, one of "
            f"{_PHASE_FAILURE_HELP} (and --error-message TEXT)"
        )
    result = client.transition_phase(
        args.flow_id,
        args.phase,
        state,
        error_code=args.error_code,
        error_message=args.error_message,
        error_details=args.error_details,
        metadata=args.metadata,
        **_flow_mutation(args),
    )
    return _print_mutation(result, output)


def _progress(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.update_phase_progress(
        args.flow_id,
        args.phase,
        args.progress,
        **_flow_mutation(args),
    )
    return _print_mutation(result, output)


def _heartbeat(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    beat = client.heartbeat(args.flow_id, args.phase)
    if output.as_json:
        output.json(_proto_json(beat.raw))
    elif beat.heartbeat_deadline_time is not None:
        output.line(f"alive; times out at {_time(beat.heartbeat_deadline_time)} without another")
    else:
        output.line("alive (the phase has no heartbeat timeout)")
    return EXIT_OK


def _retry(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.retry(
        args.flow_id,
        args.phase,
        force=args.force,
        **_flow_mutation(args),
    )
    if args.restart and _phase_state(result.flow, args.phase) is PhaseState.RETRY_NEEDED:
        # The second step: RETRY_NEEDED -> IN_PROGRESS, at the version the first one made (a
        # change in between is a VERSION_CONFLICT, not a silent restart of something else).
        first = result
        result = client.retry(
            args.flow_id,
            args.phase,
            force=args.force,
            reason=args.reason,
            request_id=f"{args.request_id}:restart" if args.request_id else None,
            expected_version=first.flow.version,
        )
        # One response with both entries, so --json has the same shape as a single retry.
        raw = flow_service_pb2.RetryResponse(
            flow=result.raw.flow,
            history_entries=[*first.raw.history_entries, *result.raw.history_entries],
        )
        result = MutationResult._from_proto(raw)
    return _print_mutation(result, output)


def _phase_state(flow: Flow, phase: str) -> PhaseState | None:
    return next((p.state for p in flow.phases if p.name == phase), None)


def _rollback(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.rollback(
        args.flow_id,
        args.phase,
        cascade=args.cascade,
        **_flow_mutation(args),
    )
    return _print_mutation(result, output)


def _skip(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.skip_phase(
        args.flow_id,
        args.phase,
        **_flow_mutation(args),
    )
    return _print_mutation(result, output)


def _decide(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.decide_phase(
        args.flow_id,
        args.phase,
        args.decision,
        comment=args.comment,
        request_id=args.request_id,
        expected_version=args.expected_version,
    )
    return _print_mutation(result, output)


def _pause(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    return _print_mutation(client.pause_flow(args.flow_id, **_flow_mutation(args)), output)


def _resume(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    return _print_mutation(client.resume_flow(args.flow_id, **_flow_mutation(args)), output)


def _cancel(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    return _print_mutation(client.cancel_flow(args.flow_id, **_flow_mutation(args)), output)


def _flow_mutation(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every mutation command shares."""
    return {
        "reason": args.reason,
        "request_id": args.request_id,
        "expected_version": args.expected_version,
    }


def _recovery(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    options = client.get_recovery_options(args.flow_id)
    if args.execute is not None:
        if not 1 <= args.execute <= len(options.options):
            raise ValueError(f"--execute expects 1..{len(options.options)}, got {args.execute}")
        option = options.options[args.execute - 1]
        return _print_mutation(option.execute(client, request_id=args.request_id), output)
    if output.as_json:
        output.json(_proto_json(options.raw))
    else:
        _print_recovery(options, output)
    return EXIT_OK


def _create(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    labels: dict[str, str] = {}
    for item in args.label:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--label expects KEY=VALUE, got {item!r}")
        labels[key] = value
    result = client.create_flow(
        args.definition,
        definition_version=args.definition_version,
        flow_id=args.flow_id,
        display_name=args.display_name,
        labels=labels,
        request_id=args.request_id,
        deadline=None if args.deadline is None else datetime.now().astimezone() + args.deadline,
    )
    return _print_mutation(result, output)


def _validate(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.validate_transition(
        flow_id=args.flow_id,
        definition_name=args.definition,
        phase=args.phase,
        from_state=args.from_state,
        to_state=args.to_state,
        from_status=args.from_status,
        to_status=args.to_status,
    )
    if output.as_json:
        output.json(_proto_json(result.raw))
    else:
        _print_validation(result, output)
    return EXIT_OK if result.allowed else EXIT_ERROR


# --- rendering -------------------------------------------------------------------------------


def _proto_json(message: Message) -> dict[str, Any]:
    """The canonical proto3 JSON mapping (lowerCamelCase names, enum names, int64 as strings)."""
    return json_format.MessageToDict(message)


def _print_mutation(result: MutationResult, output: _Output) -> int:
    if output.as_json:
        output.json(_proto_json(result.raw))
        return EXIT_OK
    _print_flow(result.flow, output)
    if result.history_entries:
        output.line()
        output.line("appended:")
        output.line(_history_table(result.history_entries))
    return EXIT_OK


def _print_flow(flow: Flow, output: _Output, definition: FlowDefinition | None = None) -> None:
    status = flow.status.name
    if flow.status_before_pause is not None:
        status += f" (was {flow.status_before_pause.name})"
    fields = [
        ("flow", flow.flow_id),
        ("name", flow.display_name),
        ("definition", f"{flow.definition_name} v{flow.definition_version}"),
        ("status", status),
        ("progress", f"{flow.progress:.1f}%"),
        ("version", str(flow.version)),
        ("tenant", f"{flow.client_account_id} / {flow.engagement_id}"),
        ("created", _time(flow.create_time)),
        ("updated", _time(flow.update_time)),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(flow.labels.items()))),
        ("deadline", _time(flow.deadline) if flow.deadline else ""),
        (
            "alerts",
            "; ".join(
                f"{a.kind.name}{' ' + a.phase if a.phase else ''} since {_time(a.raise_time)}"
                for a in flow.alerts
            ),
        ),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        if value:
            output.line(f"{name.ljust(width)}  {value}")
    output.line()
    rows = [
        [
            phase.name,
            phase.state.name,
            f"{phase.progress * 100:.0f}%" if phase.state == PhaseState.IN_PROGRESS else "",
            f"{phase.retry_count}/{phase.max_retries}",
            str(phase.weight),
            _time(phase.state_enter_time),
            (
                f"{phase.error_context.error_code.name}: {phase.error_context.message}"
                if phase.error_context is not None
                else ""
            ),
            _timers(phase, definition),
        ]
        for phase in flow.phases
    ]
    headers = ["PHASE", "STATE", "IN-PHASE", "RETRIES", "WEIGHT", "SINCE", "ERROR", "TIMERS"]
    if not any(row[-1] for row in rows):  # no timer anywhere: the column says nothing
        headers.pop()
        rows = [row[:-1] for row in rows]
    output.line(_table(headers, rows))


def _history_table(entries: Iterable[HistoryEntry]) -> str:
    return _table(
        ["VERSION", "TIME", "KIND", "PHASE", "FROM", "TO", "STATUS", "PROGRESS", "USER", "REASON"],
        [
            [
                str(entry.flow_version),
                _time(entry.occur_time),
                entry.kind.name,
                entry.phase or "",
                entry.from_state.name if entry.from_state is not None else "",
                entry.to_state.name if entry.to_state is not None else "",
                _status_change(entry.status_before, entry.status_after),
                f"{entry.progress_after:.1f}%",
                entry.user_id,
                entry.reason,
            ]
            for entry in entries
        ],
    )


def _status_change(before: FlowStatus, after: FlowStatus) -> str:
    return after.name if before == after else f"{before.name} -> {after.name}"


def _print_recovery(options: RecoveryOptions, output: _Output) -> None:
    flow = options.flow
    output.line(f"flow {flow.flow_id}: {flow.status.name}, {flow.progress:.1f}%, v{flow.version}")
    if not options.options:
        output.line("no recovery options")
        return
    output.line(
        _table(
            ["#", "ACTION", "PHASE", "TARGET", "ALLOWED", "ATTEMPTS LEFT", "WHY"],
            [
                [
                    str(number),
                    option.action.name,
                    option.phase or "",
                    (
                        option.target_state.name
                        if option.target_state is not None
                        else option.target_status.name
                        if option.target_status is not None
                        else ""
                    ),
                    "yes" if option.allowed else f"no ({_blocked(option.blocked_by)})",
                    str(option.attempts_remaining) if option.attempts_remaining is not None else "",
                    option.reason if option.allowed else option.blocking_detail or option.reason,
                ]
                for number, option in enumerate(options.options, start=1)
            ],
        )
    )
    output.line()
    output.line("execute one with: flowstate flows recovery FLOW_ID --execute N")


def _blocked(code: ErrorCode | None) -> str:
    return code.name if code is not None else "blocked"


def _print_validation(result: ValidationResult, output: _Output) -> None:
    if result.allowed:
        line = "allowed"
        if result.resulting_status is not None:
            line += f": the flow would be {result.resulting_status.name}"
            if result.resulting_progress is not None:
                line += f" at {result.resulting_progress:.1f}%"
        output.line(line)
    else:
        error = result.error
        output.line(
            f"not allowed: {error.code.name}: {error.message}"
            if error is not None
            else "not allowed"
        )
    if result.valid_transitions:
        output.line("valid transitions: " + ", ".join(s.name for s in result.valid_transitions))
    if result.valid_flow_transitions:
        output.line(
            "valid flow transitions: " + ", ".join(s.name for s in result.valid_flow_transitions)
        )
    if result.blocking_phases:
        output.line("blocking phases: " + ", ".join(result.blocking_phases))
    if result.attempts_remaining is not None:
        output.line(f"attempts remaining: {result.attempts_remaining}")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


if __name__ == "__main__":
    sys.exit(main())
