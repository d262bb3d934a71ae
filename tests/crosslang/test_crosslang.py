"""The Go, TypeScript and Python clients agree on one server.

- A flow driven by the Go client (``clients/go/cmd/flowstate-crosslang``) is watched at the same
  time by the TypeScript client (``clients/typescript/test/crosslang/cli.ts``) and the Python SDK
  (``flowstate.client``): both see the snapshot and then every version, in the same order, with
  the same status and progress as the Go client's responses.
- The same bad requests made from each language yield the same error: code, gRPC code,
  message, details and what each client's typed accessors decode (valid transitions, blocking
  phases, current version, field violations).

Every subprocess runs under a timeout and is killed if the test fails early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2

from flowstate.client import (
    AsyncFlowstateClient,
    FlowstateError,
    InvalidPhaseTransition,
    PhaseOrderViolation,
    RetryPolicy,
    VersionConflict,
)

from .conftest import TS_PACKAGE, CrossLangServer

pytestmark = pytest.mark.timeout(240)

PROGRESS = [6.0, 20.0, 26.0, 40.0, 46.0, 60.0, 66.0, 80.0, 86.0, 100.0]
STEP_TIMEOUT = 90.0

# case -> (code, gRPC code) every language must report.
EXPECTED = {
    "invalid_phase_transition": ("INVALID_PHASE_TRANSITION", "FAILED_PRECONDITION"),
    "phase_order_violation": ("PHASE_ORDER_VIOLATION", "FAILED_PRECONDITION"),
    "version_conflict": ("VERSION_CONFLICT", "ABORTED"),
    "invalid_phase": ("INVALID_PHASE", "INVALID_ARGUMENT"),
    "flow_not_found": ("FLOW_NOT_FOUND", "NOT_FOUND"),
    "malformed_request": ("MALFORMED_REQUEST", "INVALID_ARGUMENT"),
    "other_tenant": ("FLOW_NOT_FOUND", "NOT_FOUND"),
    "unauthenticated": ("UNAUTHENTICATED", "UNAUTHENTICATED"),
    "permission_denied": ("PERMISSION_DENIED", "PERMISSION_DENIED"),
}


@contextlib.asynccontextmanager
async def spawn(
    command: Sequence[str], env: dict[str, str], cwd: Path | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a process (stdout and stderr piped); kill it on the way out if still running."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run(command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> str:
    """Run a process to completion (bounded); its stdout, or a test failure with its stderr."""
    async with spawn(command, env, cwd) as process:
        out, err = await asyncio.wait_for(process.communicate(), STEP_TIMEOUT)
    if process.returncode != 0:
        pytest.fail(f"{command[-2:]} exited with {process.returncode}:\n{err.decode()}")
    return out.decode()


def python_client(token: str, server: CrossLangServer) -> AsyncFlowstateClient:
    """A Python SDK client without retries (nothing here is retryable)."""
    return AsyncFlowstateClient(
        address=server.address, token=token, retry=RetryPolicy.disabled(), timeout=30.0
    )


async def test_go_drives_typescript_and_python_watch_the_same_versions(
    crosslang_server: CrossLangServer, go_program: Path, ts_program: list[str]
) -> None:
    env = crosslang_server.env()
    flow_id = json.loads(await run([str(go_program), "create"], env))["flowId"]

    async with (
        spawn([*ts_program, "watch", flow_id], env, cwd=TS_PACKAGE) as ts_watch,
        python_client(crosslang_server.readonly_token, crosslang_server) as py_client,
    ):
        assert ts_watch.stdout is not None
        ts_first = await asyncio.wait_for(ts_watch.stdout.readline(), STEP_TIMEOUT)
        assert ts_first, "the TypeScript watch ended before its snapshot"

        py_events: list[dict[str, Any]] = []
        py_started = asyncio.Event()

        async def python_watch() -> None:
            async for event in py_client.watch(flow_id):
                py_events.append(
                    {
                        "version": event.flow_version,
                        "kind": event.kind.value,
                        "status": event.status.name,
                        "progress": event.progress,
                    }
                )
                py_started.set()

        py_task = asyncio.create_task(python_watch())
        try:
            await asyncio.wait_for(py_started.wait(), STEP_TIMEOUT)
            # Both watchers hold their snapshot: now the Go client drives the flow to the end.
            go_steps = [
                json.loads(line)
                for line in (await run([str(go_program), "drive", flow_id], env)).splitlines()
            ]
            await asyncio.wait_for(py_task, STEP_TIMEOUT)
        finally:
            py_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await py_task
        rest, err = await asyncio.wait_for(ts_watch.communicate(), STEP_TIMEOUT)
        assert ts_watch.returncode == 0, err.decode()

    ts_events = [json.loads(ts_first), *(json.loads(line) for line in rest.decode().splitlines())]

    assert [step["version"] for step in go_steps] == list(range(2, 12))
    assert [step["progress"] for step in go_steps] == PROGRESS
    assert go_steps[-1]["status"] == "COMPLETED"

    expected = [{"version": 1, "kind": "snapshot", "status": "INITIALIZED", "progress": 0.0}]
    expected += [{"kind": "change", **step} for step in go_steps]
    assert ts_events == expected, "TypeScript saw something else than Go did"
    assert py_events == expected, "Python saw something else than Go did"


def python_error_view(error: FlowstateError | None) -> dict[str, Any] | None:
    """A Python SDK error in the shape the Go and TypeScript programs print."""
    if error is None:
        return None
    violations: list[list[str]] = []
    for detail in error.status.details if error.status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations += [[v.field, v.description] for v in bad_request.field_violations]
    return {
        "code": error.code.name,
        "grpcCode": error.grpc_code.name,
        "message": error.message,
        "details": error.details,
        "retryAllowed": error.retry_allowed,
        "correlationId": error.correlation_id,
        "phase": error.phase,
        "validTransitions": (
            [state.name for state in error.valid_transitions]
            if isinstance(error, InvalidPhaseTransition)
            else []
        ),
        "blockingPhases": (
            list(error.blocking_phases) if isinstance(error, PhaseOrderViolation) else []
        ),
        "currentVersion": error.current_version if isinstance(error, VersionConflict) else None,
        "fieldViolations": violations,
    }


async def python_bad_requests(server: CrossLangServer, flow_id: str) -> dict[str, Any]:
    """The bad requests of the Go and TypeScript programs, made with the Python SDK."""
    results: dict[str, Any] = {}

    async def attempt(name: str, token: str, call: Any) -> None:
        async with python_client(token, server) as client:
            try:
                await call(client)
            except FlowstateError as error:
                results[name] = python_error_view(error)
            else:
                results[name] = None

    writer = server.token
    await attempt(
        "invalid_phase_transition",
        writer,
        lambda c: c.transition_phase(flow_id, "data_import", "COMPLETED"),
    )
    await attempt(
        "phase_order_violation",
        writer,
        lambda c: c.transition_phase(flow_id, "field_mapping", "IN_PROGRESS"),
    )
    await attempt(
        "version_conflict",
        writer,
        lambda c: c.transition_phase(flow_id, "data_import", "IN_PROGRESS", expected_version=99),
    )
    await attempt(
        "invalid_phase",
        writer,
        lambda c: c.transition_phase(flow_id, "no_such_phase", "IN_PROGRESS"),
    )
    await attempt(
        "flow_not_found", writer, lambda c: c.get_flow("00000000-0000-4000-8000-000000000000")
    )
    await attempt("malformed_request", writer, lambda c: c.get_flow("not-a-uuid"))
    await attempt("other_tenant", server.other_tenant_token, lambda c: c.get_flow(flow_id))
    await attempt("unauthenticated", "", lambda c: c.get_flow_definition("discovery"))
    await attempt("permission_denied", server.readonly_token, lambda c: c.create_flow("discovery"))
    return results


def comparable(view: Any) -> Any:
    """An error view without what legitimately differs per call (the correlation id)."""
    if not isinstance(view, dict):
        return view
    view = {key: value for key, value in view.items() if key != "correlationId"}
    view["phase"] = view.get("phase") or ""
    # JSON round trip: 1 and 1.0 compare equal, tuples become lists.
    return json.loads(json.dumps(view, sort_keys=True))


async def test_the_same_bad_request_fails_the_same_way_in_every_language(
    crosslang_server: CrossLangServer, go_program: Path, ts_program: list[str]
) -> None:
    env = crosslang_server.env()
    flow_id = json.loads(await run([str(go_program), "create"], env))["flowId"]
    go_errors, ts_errors, py_errors = await asyncio.gather(
        run([str(go_program), "errors", flow_id], env),
        run([*ts_program, "errors", flow_id], env, cwd=TS_PACKAGE),
        python_bad_requests(crosslang_server, flow_id),
    )
    views = {"go": json.loads(go_errors), "typescript": json.loads(ts_errors), "python": py_errors}

    for language, errors in views.items():
        assert set(errors) == set(EXPECTED), language
        for case, (code, grpc_code) in EXPECTED.items():
            view = errors[case]
            assert view is not None, f"{language}: {case} was not refused"
            assert (view["code"], view["grpcCode"]) == (code, grpc_code), (language, case, view)
            assert view["correlationId"], f"{language}: {case} has no correlation id"
    for case in EXPECTED:
        go, ts, py = (comparable(views[language][case]) for language in views)
        assert go == ts, f"{case}: Go and TypeScript differ"
        assert go == py, f"{case}: Go and Python differ"

    go = views["go"]
    assert go["invalid_phase_transition"]["validTransitions"] == ["IN_PROGRESS"]
    assert go["invalid_phase_transition"]["phase"] == "data_import"
    assert go["phase_order_violation"]["blockingPhases"] == ["data_import"]
    assert go["version_conflict"]["currentVersion"] == 1
    assert [v[0] for v in go["malformed_request"]["fieldViolations"]] == ["flow_id"]
