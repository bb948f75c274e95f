"""The official MCP conformance suite's server scenarios, run directly against our fixture server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conformance import runner
from tests.conformance.conftest import everything_server

PINNED = json.loads((runner.HERE / "package.json").read_text())["devDependencies"][runner.PACKAGE]


def test_the_installed_suite_is_the_pinned_version(conformance_cli: Path) -> None:
    assert PINNED == "0.1.12"
    assert runner.installed_version() == PINNED
    lock = json.loads((runner.HERE / "package-lock.json").read_text())
    assert lock["packages"][f"node_modules/{runner.PACKAGE}"]["version"] == PINNED


def test_expected_failures_name_real_scenarios(server_scenarios: list[str], expected_failures: dict[str, str]) -> None:
    unknown = sorted(set(expected_failures) - set(server_scenarios))
    assert not unknown, f"expected_failures.json names scenarios the suite does not have: {unknown}"
    assert all(reason.strip() for reason in expected_failures.values()), "every expected failure needs a reason"


def test_all_server_scenarios_directly(tmp_path: Path, server_scenarios: list[str],
                                       expected_failures: dict[str, str]) -> None:
    assert len(server_scenarios) >= 30
    with everything_server(tmp_path) as url:
        started = time.monotonic()
        results = runner.run_scenarios(url, server_scenarios, timeout_s=45)
        elapsed = time.monotonic() - started
    assert set(results) == set(server_scenarios)

    unexpected = [r for r in results.values() if not r.passed and r.name not in expected_failures]
    stale = [r for r in results.values() if r.passed and r.name in expected_failures]
    problems = [f"UNEXPECTED FAILURE {r.name}: {r.detail}" for r in unexpected]
    problems += [f"NOW PASSES {r.name}: remove it from tests/conformance/expected_failures.json" for r in stale]
    assert not problems, "\n".join(problems) + f"\n\nall results ({elapsed:.1f} s):\n{runner.summary(results)}"


def test_fixture_resumes_sse_stream_at_2025_11_25(tmp_path: Path) -> None:
    """SEP-1699 as server-sse-polling would see it if it announced 2025-11-25 (why it is an expected failure).

    ``test_reconnection`` gets a priming event (id, empty data, retry), its stream is closed mid-call, and a
    GET with ``Last-Event-ID`` delivers the rest, including the tool result.
    """
    with everything_server(tmp_path) as url, httpx.Client(timeout=10) as client:
        accept = {"accept": "application/json, text/event-stream"}
        init = client.post(url, headers=accept, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}},
        })
        assert init.status_code == 200
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        client.post(url, headers=accept | session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

        post_events = _sse(client, "POST", url, headers=accept | session, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "test_reconnection", "arguments": {}},
        })
        assert post_events, "no SSE events on the POST stream"
        priming = post_events[0]
        assert priming.get("id") and priming.get("data") == "" and priming.get("retry") == "100", post_events
        assert not any('"result"' in e.get("data", "") for e in post_events), "stream was not closed mid-call"

        resumed = _sse(client, "GET", url, until='"id":1', headers={
            "accept": "text/event-stream", **session, "last-event-id": post_events[-1]["id"]})
        results = [json.loads(e["data"]) for e in resumed if '"result"' in e.get("data", "")]
        assert results and results[-1]["result"]["content"][0]["text"] == "Reconnection test completed", resumed


def _sse(client: httpx.Client, method: str, url: str, *, until: str | None = None,
         **kwargs: Any) -> list[dict[str, str]]:
    """Read SSE events (id/event/data/retry fields) until the stream ends or an event's data contains ``until``."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line == "":
                if current:
                    events.append(current)
                    if until and until in current.get("data", ""):
                        break
                current = {}
                continue
            key, _, value = line.partition(":")
            current[key] = value[1:] if value.startswith(" ") else value
    if current:
        events.append(current)
    return events
