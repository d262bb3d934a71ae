"""The SDK fakes' error fixtures (tests/fixtures/errors) are what a real server sends today.

Records every error again from real servers (`error_fixtures.record`) and compares the
normalised result with the checked-in files: a change to the server's errors (a message, a
detail, a RetryInfo delay, a trailer) fails here until the fixtures are recorded again
(``make record-error-fixtures``, which runs this test with ``FLOWSTATE_RECORD_ERROR_FIXTURES=1``)
and the TypeScript and Go SDK tests pass with them.
"""

from __future__ import annotations

import base64
import difflib
import json
import os

import pytest
from google.rpc import status_pb2

from flowstate.testing import RunningServer

from .error_fixtures import FIXTURES_DIR, load_fixtures, record, write_fixtures

RECORD = os.environ.get("FLOWSTATE_RECORD_ERROR_FIXTURES") == "1"

# The errors the TypeScript and Go fakes replay (clients/*/...fake...): each must have a file.
NEEDED = {
    "invalid_phase",
    "invalid_phase_transition",
    "malformed_request",
    "max_retries_exceeded",
    "permission_denied",
    "phase_order_violation",
    "rate_limited",
    "server_shutting_down",
    "subscriber_too_slow",
    "temporary_resource_unavailable",
    "flow_not_found",
    "unauthenticated",
    "unknown_reason",
    "version_conflict",
}


@pytest.mark.timeout(180)
async def test_the_fixtures_are_what_the_server_sends(
    database_url: str, server: RunningServer
) -> None:
    recorded = await record(database_url, server)
    missing = NEEDED - set(recorded)
    assert missing <= {"temporary_resource_unavailable"}, missing
    if RECORD:
        assert not missing, f"cannot record {missing} (needs the embedded PostgreSQL)"
        write_fixtures(recorded)
    checked_in = load_fixtures()
    drifted = []
    for name in sorted((set(recorded) | set(checked_in)) - missing):
        want = json.dumps(recorded.get(name), indent=2, sort_keys=True).splitlines()
        have = json.dumps(checked_in.get(name), indent=2, sort_keys=True).splitlines()
        if want != have:
            diff = difflib.unified_diff(have, want, f"checked in {name}", f"recorded {name}", n=2)
            drifted.append("\n".join(diff))
    assert not drifted, (
        f"the server's errors differ from {FIXTURES_DIR} (run `make record-error-fixtures`, "
        "then the TypeScript and Go SDK tests):\n" + "\n".join(drifted)
    )
    if missing:  # every other fixture was checked above
        pytest.skip(f"not re-recorded: {sorted(missing)} (needs the embedded PostgreSQL)")


def test_each_fixture_is_self_consistent() -> None:
    """The bytes a fake replays decode to the file's own readable form and status line."""
    fixtures = load_fixtures()
    assert set(fixtures) == NEEDED
    for name, fixture in fixtures.items():
        status = status_pb2.Status.FromString(base64.b64decode(fixture["grpc-status-details-bin"]))
        assert status.code == fixture["grpc-status"], name
        assert status.message == fixture["grpc-message"], name
        assert fixture["decoded"]["code"] == status.code, name
        assert fixture["trailers"]["x-correlation-id"] == "fixture-correlation-id", name
        assert fixture["name"] == name
