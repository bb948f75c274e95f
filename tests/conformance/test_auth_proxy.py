"""The bearer-token proxy is transparent: the whole suite gives the same verdicts through it.

The fixture server here requires a bearer token (``--bearer-token``), as the gateway does; the
conformance CLI cannot send one, so it can only reach the server through ``auth_proxy``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from tests.conformance import runner
from tests.conformance.auth_proxy import auth_proxy
from tests.conformance.conftest import everything_server


def test_suite_through_auth_proxy(tmp_path: Path, server_scenarios: list[str],
                                  expected_failures: dict[str, str]) -> None:
    token = secrets.token_urlsafe(24)
    with everything_server(tmp_path, f"--bearer-token={token}") as url:  # a token may start with "-"
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"accept": "application/json, text/event-stream"}
        assert httpx.post(url, headers=accept, json=ping).status_code == 401  # the server really wants the token

        with auth_proxy(url, token) as proxy_url:
            assert proxy_url.endswith("/mcp") and proxy_url != url
            # Not a session-less ping but an initialize: the proxy adds the token, the server answers.
            init = httpx.post(proxy_url, headers=accept, json={
                "jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}})
            assert init.status_code == 200 and init.headers.get("mcp-session-id"), init.text
            results = runner.run_scenarios(proxy_url, server_scenarios)

    unexpected = [f"{r.name}: {r.detail}" for r in results.values() if not r.passed and r.name not in expected_failures]
    stale = [r.name for r in results.values() if r.passed and r.name in expected_failures]
    assert not unexpected and not stale, "\n".join(unexpected + [f"now passes: {n}" for n in stale]) + \
        "\n\n" + runner.summary(results)
    # Through the proxy the rebinding checks must still pass on the forged Origin alone.
    assert results["dns-rebinding-protection"].passed
