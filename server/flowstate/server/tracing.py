"""Optional OpenTelemetry tracing, off by default (``FLOWSTATE_TRACING``).

``otlp``
    Spans go to an OpenTelemetry collector over OTLP/gRPC, configured by the standard
    ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, certificates), in batches.
``console``
    Spans are printed on stdout, one JSON object per line, as they end (debugging).

What is traced: every RPC (a server span from the OpenTelemetry grpc.aio interceptor, which
continues the caller's ``traceparent``), and under it every statement the store sends (client
spans from the asyncpg instrumentation; statement text, never parameters, though the BEGIN batch
that enters a tenant names the tenant's ids). The rpc wrapper adds
``flowstate.correlation_id`` and, for a refusal, ``flowstate.error_code`` to the RPC's span.
The service is named by ``OTEL_SERVICE_NAME`` (default ``flowstate``), with the other
``OTEL_RESOURCE_ATTRIBUTES``.

Off, nothing of this is loaded or called: no interceptor, no wrapped asyncpg methods. The
asyncpg instrumentation patches the asyncpg module of the process, so one process serves with
tracing on or off, not both (in-process test servers leave it off).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import grpc.aio
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

__all__ = ["TRACING_MODES", "Tracing", "start_tracing"]

TRACING_MODES: Final = ("off", "otlp", "console")
_DEFAULT_SERVICE_NAME: Final = "flowstate"


@dataclass(frozen=True)
class Tracing:
    """Tracing as started: the interceptor the gRPC server takes, and how to stop it."""

    provider: TracerProvider
    interceptor: grpc.aio.ServerInterceptor

    def shutdown(self) -> None:
        """Stop tracing statements and flush the spans not exported yet."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()
        self.provider.shutdown()


def _one_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)  # no indent: json.dumps writes one line
    return line + "\n"


def start_tracing(mode: str) -> Tracing | None:
    """Start tracing in `mode` (one of `TRACING_MODES`); None when it is ``off``."""
    if mode == "off":
        return None
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: _DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    processor: SpanProcessor
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    elif mode == "console":
        processor = SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line))
    else:
        raise ValueError(f"tracing mode must be one of {', '.join(TRACING_MODES)}, not {mode!r}")
    provider.add_span_processor(processor)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    return Tracing(provider, aio_server_interceptor(tracer_provider=provider))
