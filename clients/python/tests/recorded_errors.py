"""The errors the scripted server answers with, recorded from a real server.

Each file of ``tests/fixtures/errors`` (at the repository's root) holds one error's
``grpc-status``, ``grpc-message``, ``grpc-status-details-bin`` and trailers as a real Flowstate
server sent them (``tests/server/recorded_errors.py`` records them;
``tests/server/test_recorded_errors.py`` fails when the server's errors drift from the files).
The scripted server replays them byte for byte: nothing here builds a detail by hand. Only the
SDK's tests read these files; the ``flowstate.client`` package never does (docs/testing.md,
"Error fixtures: recorded from the real server").
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "ERROR_FIXTURES",
    "FIXTURES_DIR",
    "ErrorFixture",
    "Recorded",
    "error_fixture",
    "recorded",
]

FIXTURES_DIR: Final = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "errors"
"""The recorded errors, one ``NAME.json`` each (shared with the TypeScript and Go tests)."""

ERROR_FIXTURES: Final = tuple(sorted(path.stem for path in FIXTURES_DIR.glob("*.json")))
"""The names of every recorded error."""


@dataclass(frozen=True)
class ErrorFixture:
    """One fixture file: an error as the real server sent it."""

    name: str
    how: str
    grpc_code: grpc.StatusCode
    message: str
    details_bin: bytes
    trailers: dict[str, str]
    decoded: dict[str, Any]

    def flow_error_details(self) -> dict[str, Any]:
        """``FlowError.details`` as the recording decoded it (JSON numbers are floats)."""
        for detail in self.decoded.get("details", []):
            if detail["@type"].endswith("/flowstate.v1.FlowError"):
                details: dict[str, Any] = detail.get("details", {})
                return details
        raise AssertionError(f"{self.name} has no FlowError")


_BY_NUMBER: Final = {code.value[0]: code for code in grpc.StatusCode}


@functools.cache
def error_fixture(name: str) -> ErrorFixture:
    """The fixture file `name` (a file name of `FIXTURES_DIR` without ``.json``)."""
    document = json.loads((FIXTURES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    fixture = ErrorFixture(
        name=document["name"],
        how=document["how"],
        grpc_code=_BY_NUMBER[document["grpc-status"]],
        message=document["grpc-message"],
        details_bin=base64.b64decode(document["grpc-status-details-bin"]),
        trailers=dict(document["trailers"]),
        decoded=document["decoded"],
    )
    status = status_pb2.Status.FromString(fixture.details_bin)
    if (status.code, status.message) != (fixture.grpc_code.value[0], fixture.message):
        raise AssertionError(f"error fixture {name}: its status line and its details disagree")
    return fixture


@dataclass(frozen=True)
class Recorded:
    """A scripted outcome: abort the call with the recorded error `name`, exactly as recorded.

    `error_info_domain` replaces the ErrorInfo's domain (everything else as recorded): what an
    error passed on from another service looks like (the SDK ignores an ErrorInfo not of
    ``flowstate.v1``).
    """

    name: str
    error_info_domain: str | None = None

    @property
    def fixture(self) -> ErrorFixture:
        """The fixture replayed."""
        return error_fixture(self.name)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        """The recorded gRPC status code."""
        return self.fixture.grpc_code

    def details_bin(self) -> bytes:
        """The ``grpc-status-details-bin`` sent: the recorded bytes (or the domain replaced)."""
        if self.error_info_domain is None:
            return self.fixture.details_bin
        status = status_pb2.Status.FromString(self.fixture.details_bin)
        for packed in status.details:
            info = error_details_pb2.ErrorInfo()
            if packed.Unpack(info):
                info.domain = self.error_info_domain
                packed.Pack(info, deterministic=True)
        return status.SerializeToString(deterministic=True)

    def status(self) -> grpc.Status:
        """The ``grpc.Status`` to abort with: recorded code, message, details and trailers."""
        fixture = self.fixture
        trailing: tuple[tuple[str, str | bytes], ...] = (
            ("grpc-status-details-bin", self.details_bin()),
            *fixture.trailers.items(),
        )
        return _Status(fixture.grpc_code, fixture.message, trailing)


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def recorded(name: str) -> Recorded:
    """The recorded error `name`, for a scripted server to answer with."""
    error_fixture(name)  # fail early on a name that was not recorded
    return Recorded(name)
