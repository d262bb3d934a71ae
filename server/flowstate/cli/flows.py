"""``flowstate flows``: inspect and repair flows on a running server, through the Python SDK.

Every command talks to the server with `flowstate.client.FlowstateClient`. Connection settings
come from flags or the environment:

- ``--address`` / ``FLOWSTATE_ADDRESS`` (default ``127.0.0.1:50051``);
- ``--token`` / ``FLOWSTATE_TOKEN``: a bearer JWT (``flowstate token`` mints one in dev mode);
- ``--tls`` (system roots), ``--tls-ca-file`` / ``FLOWSTATE_TLS_CA_FILE``, and for mTLS
  ``--tls-cert-file`` / ``FLOWSTATE_TLS_CERT_FILE`` with ``--tls-key-file`` /
  ``FLOWSTATE_TLS_KEY_FILE``.

Output is a readable table, or with ``--json`` the proto3 JSON of the response (field names as in
the protos); ``watch`` prints one line (or one JSON object) per event as it arrives. A refused
request prints the structured error (code, message, details) on stderr and exits with status 1,
never a traceback; ``validate`` also exits 1 when the transition is not allowed. Usage errors
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from flowstate.client import (
    DEFAULT_ADDRESS,
    ErrorCode,
    Flow,
    FlowEvent,
    FlowEventKind,
    FlowstateClient,
    FlowstateError,
    FlowStatus,
    HistoryEntry,
    MutationResult,
    PhaseState,
    RecoveryOptions,
    RetryPolicy,
    ValidationResult,
)

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
    commands = flows.add_subparsers(dest="flows_command", metavar="COMMAND", required=True)
    common = _common_options()

    def command(name: str, handler: _Handler, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        parser.set_defaults(run=lambda args: _run(handler, args))
        return parser

    parser = command("list", _list, "list flows, least recently changed first (stuck flows first)")
    parser.add_argument(
        "--status", action="append", default=[], metavar="STATUS", help="repeatable"
    )
    parser.add_argument(
        "--phase-state",
        action="append",
        default=[],
        metavar="PHASE=STATE[,STATE]",
        help="only flows whose phase is in one of the states (repeatable)",
    )
    parser.add_argument(
        "--stuck",
        type=_duration,
        metavar="DURATION",
        help="only flows unchanged for this long, e.g. 30m, 2h, 1d",
    )
    parser.add_argument("--definition", help="only flows of this definition")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")

    parser = command("get", _get, "show a flow and its phases")
    parser.add_argument("flow_id")

    parser = command("history", _history, "show a flow's history")
    parser.add_argument("flow_id")
    parser.add_argument("--after-version", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")

    parser = command("watch", _watch, "follow a flow's changes as they commit, until it ends")
    parser.add_argument("flow_id")
    parser.add_argument(
        "--after-version",
        type=int,
        help="first replay the changes after this version (default: start with a snapshot)",
    )
    parser.add_argument(
        "--keep-open", action="store_true", help="keep following after the flow has ended"
    )

    parser = command("transition", _transition, "move a phase to a state")
    parser.add_argument("flow_id")
    parser.add_argument("phase")
    parser.add_argument("state", help="target phase state, e.g. IN_PROGRESS")
    parser.add_argument("--error-code", help="failure code (to FAILED / RETRY_NEEDED)")
    parser.add_argument("--error-message", default="", help="failure message")
    parser.add_argument("--error-details", type=_json_object, help="failure details (JSON)")
    parser.add_argument("--metadata", type=_json_object, help="history metadata (JSON)")
    _mutation_options(parser)

    parser = command("progress", _progress, "report in-phase progress (0..1) of a running phase")
    parser.add_argument("flow_id")
    parser.add_argument("phase")
    parser.add_argument("progress", type=float)
    _mutation_options(parser)

    parser = command("retry", _retry, "retry a failed phase")
    parser.add_argument("flow_id")
    parser.add_argument("phase")
    parser.add_argument("--force", action="store_true", help="non-retryable failure (admin)")
    _mutation_options(parser)

    parser = command("rollback", _rollback, "roll a phase back (and its dependents)")
    parser.add_argument("flow_id")
    parser.add_argument("phase")
    parser.add_argument(
        "--no-cascade",
        dest="cascade",
        action="store_false",
        help="refuse instead of rolling back started dependents",
    )
    _mutation_options(parser)

    parser = command("skip", _skip, "skip an optional phase (it counts as done)")
    parser.add_argument("flow_id")
    parser.add_argument("phase")
    _mutation_options(parser)

    for name, handler, help_text in (
        ("pause", _pause, "pause a flow: no phase may start"),
        ("resume", _resume, "resume a paused flow"),
        ("cancel", _cancel, "cancel a flow (terminal)"),
    ):
        parser = command(name, handler, help_text)
        parser.add_argument("flow_id")
        _mutation_options(parser)

    parser = command("recovery", _recovery, "list (or execute) a flow's recovery options")
    parser.add_argument("flow_id")
    parser.add_argument(
        "--execute", type=int, metavar="N", help="execute option number N of the list"
    )
    parser.add_argument("--request-id", help="idempotency key for --execute")

    parser = command("create", _create, "create a flow")
    parser.add_argument("--definition", default="", help='definition name (default "discovery")')
    parser.add_argument("--definition-version", type=int, default=0)
    parser.add_argument("--display-name", default="")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--flow-id", help="client-chosen UUID")
    parser.add_argument("--request-id", help="idempotency key (generated when omitted)")

    parser = command("validate", _validate, "check a transition without applying it")
    parser.add_argument("flow_id", nargs="?", help="check against this flow's actual state")
    parser.add_argument("--definition", help="definition whose tables to check (no flow id)")
    parser.add_argument("--phase", help="phase transition: the phase")
    parser.add_argument("--from", dest="from_state", help="phase transition: current state")
    parser.add_argument("--to", dest="to_state", help="phase transition: target state")
    parser.add_argument("--from-status", help="flow transition: current status")
    parser.add_argument("--to-status", help="flow transition: target status")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=os.environ.get("FLOWSTATE_ADDRESS", DEFAULT_ADDRESS),
        help="server host:port (FLOWSTATE_ADDRESS; default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("FLOWSTATE_TOKEN"),
        help="bearer token (FLOWSTATE_TOKEN)",
    )
    group.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    group.add_argument(
        "--tls-ca-file",
        type=Path,
        default=_env_path("FLOWSTATE_TLS_CA_FILE"),
        help="PEM roots of the server certificate (FLOWSTATE_TLS_CA_FILE)",
    )
    group.add_argument(
        "--tls-cert-file",
        type=Path,
        default=_env_path("FLOWSTATE_TLS_CERT_FILE"),
        help="client certificate for mTLS (FLOWSTATE_TLS_CERT_FILE)",
    )
    group.add_argument(
        "--tls-key-file",
        type=Path,
        default=_env_path("FLOWSTATE_TLS_KEY_FILE"),
        help="client key for mTLS (FLOWSTATE_TLS_KEY_FILE)",
    )
    group.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per call (default %(default)s)"
    )
    common.add_argument("--json", action="store_true", help="print proto3 JSON")
    return common


def _mutation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="recorded in history")
    parser.add_argument(
        "--expected-version", type=int, help="apply only if the flow is at this version"
    )
    parser.add_argument("--request-id", help="idempotency key (generated when omitted)")


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
        _print_error(error, output)
        return EXIT_ERROR
    except ValueError as exc:  # a bad enum name or a missing argument combination
        print(f"flowstate: error: INVALID_ARGUMENT: {exc}", file=output.err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def _print_error(error: FlowstateError, output: _Output) -> None:
    """The structured error, in the format every `flowstate` command uses."""
    if output.as_json:
        print(json.dumps({"error": error.to_dict()}, indent=2), file=output.err)
        return
    code = error.code.name if error.code != ErrorCode.UNSPECIFIED else error.grpc_code.name
    print(f"flowstate: error: {code}: {error.message}", file=output.err)
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


def _get(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    flow = client.get_flow(args.flow_id)
    if output.as_json:
        output.json(_proto_json(flow.raw))
    else:
        _print_flow(flow, output)
    return EXIT_OK


def _history(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    entries: list[HistoryEntry] = []
    for entry in client.iter_flow_history(args.flow_id, after_version=args.after_version):
        entries.append(entry)
        if args.limit and len(entries) >= args.limit:
            break
    if output.as_json:
        output.json({"history_entries": [_proto_json(entry.raw) for entry in entries]})
    else:
        output.line(_history_table(entries) if entries else "no history entries")
    return EXIT_OK


def _watch(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    events = client.watch(args.flow_id, after_version=args.after_version, keep_open=args.keep_open)
    for event in events:
        if output.as_json:
            output.event(json.dumps(_proto_json(event.raw), separators=(",", ":")))
        else:
            output.event(_event_line(event))
    return EXIT_OK


def _event_line(event: FlowEvent) -> str:
    """``v3  TRANSITION data_import IN_PROGRESS -> COMPLETED  DATA_GATHERING  20.0%  alice``."""
    head = f"v{event.flow_version}"
    state = f"{event.status.name}  {event.progress:.1f}%"
    change = event.change
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
    result = client.transition_phase(
        args.flow_id,
        args.phase,
        PhaseState.parse(args.state),
        reason=args.reason,
        error_code=args.error_code,
        error_message=args.error_message,
        error_details=args.error_details,
        metadata=args.metadata,
        request_id=args.request_id,
        expected_version=args.expected_version,
    )
    return _print_mutation(result, output)


def _progress(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.update_phase_progress(
        args.flow_id,
        args.phase,
        args.progress,
        reason=args.reason,
        request_id=args.request_id,
        expected_version=args.expected_version,
    )
    return _print_mutation(result, output)


def _retry(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.retry(
        args.flow_id,
        args.phase,
        force=args.force,
        reason=args.reason,
        request_id=args.request_id,
        expected_version=args.expected_version,
    )
    return _print_mutation(result, output)


def _rollback(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.rollback(
        args.flow_id,
        args.phase,
        cascade=args.cascade,
        reason=args.reason,
        request_id=args.request_id,
        expected_version=args.expected_version,
    )
    return _print_mutation(result, output)


def _skip(client: FlowstateClient, args: argparse.Namespace, output: _Output) -> int:
    result = client.skip_phase(
        args.flow_id,
        args.phase,
        reason=args.reason,
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
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


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


def _print_flow(flow: Flow, output: _Output) -> None:
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
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        if value:
            output.line(f"{name.ljust(width)}  {value}")
    output.line()
    output.line(
        _table(
            ["PHASE", "STATE", "IN-PHASE", "RETRIES", "WEIGHT", "SINCE", "ERROR"],
            [
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
                ]
                for phase in flow.phases
            ],
        )
    )


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
