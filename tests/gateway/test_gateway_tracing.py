"""OpenTelemetry: one trace from the client through the gateway to the upstream server, no token in it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

from tests.gateway.mesh import mesh

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _spans(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_trace_runs_client_gateway_upstream_with_tenant_and_tool(tmp_path: Path) -> None:
    gateway_spans, upstream_spans = tmp_path / "gateway-spans.jsonl", tmp_path / "upstream-spans.jsonl"
    with mesh(tmp_path / "mesh", KONTOR_OTEL_EXPORTER=f"file:{gateway_spans}") as m:
        upstream_env = dict(m.env, KONTOR_OTEL_EXPORTER=f"file:{upstream_spans}")
        gateway_env, m.env = m.env, upstream_env
        fix = m.start_upstream("fix")
        m.env = gateway_env
        await m.setup_tenant("acme", {"fix": fix})
        m.start_gateway()
        canary = m.token("acme", "canary", ["fix:read", "fix:write"])
        tracer = TracerProvider().get_tracer("test-client")
        with tracer.start_as_current_span("client call") as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            client_trace = format(span.get_span_context().trace_id, "032x")
            async with m.client("acme", canary) as client:
                result = await client.call_tool("fix__echo", {"text": "traced"}, meta=carrier)
        assert result.content[0].text == "traced"
        deadline = time.monotonic() + 10
        while not any(s["trace_id"] == client_trace for s in _spans(upstream_spans)):
            assert time.monotonic() < deadline, "no upstream span in the client's trace"
            await asyncio.sleep(0.2)
    ours = [s for s in _spans(gateway_spans) if s["trace_id"] == client_trace]
    server_span = next(s for s in ours if s["attributes"].get("mcp.method.name") == "tools/call")
    assert server_span["attributes"]["kontor.tenant"] == "acme"
    assert server_span["attributes"]["kontor.tool"] == "fix__echo"
    client_span = next(s for s in ours if s["name"].startswith("upstream tools/call"))
    assert client_span["parent_id"] == server_span["span_id"]
    upstream = next(s for s in _spans(upstream_spans) if s["trace_id"] == client_trace)
    assert upstream["parent_id"] == client_span["span_id"]
    for path in (gateway_spans, upstream_spans):
        assert canary not in path.read_text()
