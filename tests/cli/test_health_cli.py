"""``flowstate health``: the probe the container image's HEALTHCHECK and systemd use."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket

from flowstate.cli.main import main
from flowstate.testing import RunningServer

from .conftest import CliResult


def health(*argv: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["health", *argv])
    return CliResult(code, out.getvalue(), err.getvalue())


async def test_a_serving_server_answers_serving_without_a_token(cli_server: RunningServer) -> None:
    whole = await asyncio.to_thread(health, "--address", cli_server.address)
    service = await asyncio.to_thread(
        health, "--address", cli_server.address, "--service", "flowstate.v1.FlowStateService"
    )

    assert (whole.code, whole.out, whole.err) == (0, "SERVING\n", "")
    assert (service.code, service.out, service.err) == (0, "SERVING\n", "")


async def test_an_unknown_service_and_an_unreachable_server_exit_1(
    cli_server: RunningServer,
) -> None:
    unknown = await asyncio.to_thread(
        health, "--address", cli_server.address, "--service", "nope.v1.Nothing"
    )
    unreachable = await asyncio.to_thread(health, "--address", "127.0.0.1:1", "--timeout", "2")

    assert (unknown.code, unknown.out) == (1, "")
    assert (
        unknown.err == "flowstate: error: NOT_FOUND: the server has no service 'nope.v1.Nothing'\n"
    )
    assert (unreachable.code, unreachable.out) == (1, "")
    assert unreachable.err.startswith("flowstate: error: UNAVAILABLE: cannot reach 127.0.0.1:1 (")


async def test_a_port_that_never_answers_is_a_deadline_naming_the_address() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"

        result = await asyncio.to_thread(health, "--address", address, "--timeout", "1")

    assert (result.code, result.out) == (1, "")
    assert (
        result.err == f"flowstate: error: DEADLINE_EXCEEDED: no answer from {address} within 1s\n"
    )
