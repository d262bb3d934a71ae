"""The `flowstate` console script: one argparse parser, a sub-command per group.

Commands: ``serve``, ``token``, ``health`` (their own modules), ``migrate`` and
``import-legacy`` (`flowstate.cli.storage_commands`), ``flows ...`` (`flowstate.cli.flows`),
``definitions ...`` (`flowstate.cli.definitions`), ``webhooks ...``
(`flowstate.cli.webhooks`). A group whose module is not part of this build is simply absent.

Failures print a structured error (``flowstate: error: CODE: message`` and the details) on
stderr and exit non-zero: 1 for a refused or failed operation, 2 for bad usage or settings.
Tracebacks are shown only with ``FLOWSTATE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

import grpc

from flowstate.cli import console, health, serve, token
from flowstate.cli._common import print_error, print_flow_state_error, print_rpc_error
from flowstate.core.errors import FlowStateError
from flowstate.server.config import ConfigError
from flowstate.storage.errors import DatabaseSetupError

__all__ = ["build_parser", "main", "version_text"]

_OPTIONAL_GROUPS = (
    "flowstate.cli.storage_commands",
    "flowstate.cli.flows",
    "flowstate.cli.bulk",
    "flowstate.cli.definitions",
    "flowstate.cli.archive",
    "flowstate.cli.webhooks",
)
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command group of this build registered."""
    parser = argparse.ArgumentParser(
        prog="flowstate",
        description="Flowstate: the state of long, multi-phase workflows, over gRPC.",
        epilog="`flowstate COMMAND --help` describes each command. Errors print "
        "`flowstate: error: CODE: message` on stderr; the exit status is 1 for a refused or "
        "failed operation, 2 for bad usage or settings.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", help="what to do")
    serve.register(subparsers)
    console.register(subparsers)
    token.register(subparsers)
    health.register(subparsers)
    for name in _OPTIONAL_GROUPS:
        # find_spec, not try/except ImportError: a broken module must fail loudly.
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(subparsers)
    return parser


def version_text() -> str:
    """``flowstate 0.1.0 (client 0.1.0, API flowstate.v1, Python 3.11.7)``."""

    def installed(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    python = ".".join(str(part) for part in sys.version_info[:3])
    return (
        f"flowstate {installed('flowstate')} (client {installed('flowstate-client')}, "
        f"API flowstate.v1, Python {python})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except ConfigError as exc:
        print_error("INVALID_CONFIGURATION", str(exc))
        return EXIT_USAGE
    except DatabaseSetupError as exc:
        # Not a refused request: the database needs an operator first; the message says how.
        print_error("FAILED_PRECONDITION", exc.message)
        return EXIT_FAILURE
    except FlowStateError as exc:
        print_flow_state_error(exc)
        return EXIT_FAILURE
    except grpc.RpcError as exc:
        print_rpc_error(exc)
        return EXIT_FAILURE
    except Exception as exc:
        if os.environ.get("FLOWSTATE_DEBUG"):
            logging.getLogger("flowstate.cli").exception("unexpected error")
        print_error("INTERNAL", f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE


def _reader_went_away() -> int:
    """stdout's reader closed the pipe (``flowstate flows list | head``): stop quietly.

    Python's recipe: point stdout at /dev/null so the interpreter's final flush does not fail
    again; exit as a process killed by SIGPIPE would (128 + 13), which shells ignore in pipes.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
