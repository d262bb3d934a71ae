"""What every `flowstate` command shares: printing structured errors, never a traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowstate.core.errors import FlowStateError
from flowstate.v1 import errors_pb2

__all__ = ["print_error", "print_flow_state_error", "print_rpc_error"]


def print_error(
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    stream: TextIO | None = None,
) -> None:
    """``flowstate: error: CODE: message`` and, when there are any, the details as JSON."""
    out = stream or sys.stderr
    print(f"flowstate: error: {code}: {message}", file=out)
    if details:
        print("  details: " + json.dumps(dict(details), sort_keys=True, default=str), file=out)


def print_flow_state_error(error: FlowStateError, *, stream: TextIO | None = None) -> None:
    """Print a domain error (code, message, details)."""
    print_error(error.code.value, error.message, error.details, stream=stream)


def print_rpc_error(error: grpc.RpcError, *, stream: TextIO | None = None) -> None:
    """Print a failed RPC: the FlowError / ErrorInfo of its rich status when present."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # works on AioRpcError too
    code = error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    details: dict[str, Any] = {}
    if status is not None:
        for packed in status.details:
            if packed.Is(errors_pb2.FlowError.DESCRIPTOR):
                flow_error = errors_pb2.FlowError()
                packed.Unpack(flow_error)
                code = errors_pb2.ErrorCode.Name(flow_error.error_code).removeprefix("ERROR_CODE_")
                details = json_format.MessageToDict(flow_error.details)
                if flow_error.correlation_id:
                    details["correlation_id"] = flow_error.correlation_id
            elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                packed.Unpack(bad_request)
                details["field_violations"] = [
                    {"field": v.field, "description": v.description}
                    for v in bad_request.field_violations
                ]
    print_error(code, message or "", details, stream=stream)
