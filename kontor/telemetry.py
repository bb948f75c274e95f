"""OpenTelemetry tracing for the gateway and the servers: off unless ``KONTOR_OTEL_EXPORTER`` is set.

``KONTOR_OTEL_EXPORTER``:

* unset or empty — no tracer provider is installed (the SDK's spans are no-ops);
* ``console``   — spans printed to stderr;
* ``otlp``      — OTLP over HTTP (package ``opentelemetry-exporter-otlp-proto-http``; endpoint and
  headers from the standard ``OTEL_EXPORTER_OTLP_*`` variables);
* ``file:PATH`` — one JSON object per finished span appended to PATH (tests, local debugging).

The MCP SDK already opens a server span per request and continues the caller's trace from
``_meta.traceparent``; the gateway adds tenant and tool attributes and passes the context on to
the upstream server, so one trace runs client → gateway → server.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace

_configured = False


def configure_tracing(service_name: str, exporter: str | None = None) -> bool:
    """Install a tracer provider for ``service_name`` if an exporter is configured; True if one was."""
    global _configured
    exporter = exporter if exporter is not None else os.environ.get("KONTOR_OTEL_EXPORTER", "")
    if _configured or not exporter:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise RuntimeError("KONTOR_OTEL_EXPORTER=otlp needs the package "
                               "opentelemetry-exporter-otlp-proto-http") from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter.startswith("file:"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(exporter[5:]))))
    else:
        raise RuntimeError(f"unknown KONTOR_OTEL_EXPORTER {exporter!r}: use console, otlp or file:PATH")
    trace.set_tracer_provider(provider)
    _configured = True
    return True


class JsonLinesExporter:
    """A span exporter appending one JSON object per span to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = []
        for span in spans:
            ctx = span.get_span_context()  # type: ignore[attr-defined]
            parent = span.parent  # type: ignore[attr-defined]
            lines.append(json.dumps({
                "name": span.name,  # type: ignore[attr-defined]
                "trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x"),
                "parent_id": format(parent.span_id, "016x") if parent else None,
                "service": span.resource.attributes.get("service.name"),  # type: ignore[attr-defined]
                "attributes": dict(span.attributes or {}),  # type: ignore[attr-defined]
            }, default=str))
        with self._lock, self.path.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
