"""Review check 3: remote endpoint safety.

Like checks 2, 4 and 8 it returns a :class:`~kontor.registry.checks.findings.CheckResult`:
the check id (``namespace``, ``endpoints``, ``snapshot``,
``packages`` — the names :mod:`kontor.registry.checks.report` groups by), ``passed`` (no ``high``
or ``critical`` finding), JSON-serialisable ``evidence`` (what was requested, what came back,
timings) and the findings, which are the shared :class:`kontor.registry.checks.findings.Finding`
(rule ``<check>.<rule-name>``, severity, tool, field = a JSON path into server.json, message).

For each ``remotes[]`` entry of a submitted ``server.json`` the endpoint is fetched through the
gateway's SSRF-safe helper (:class:`kontor.gateway.safehttp.SafeHttpClient`), which enforces the
rules on the first request *and* on every redirect hop: ``https`` only, the host resolved once
and refused if any address is private, loopback, link-local, a cloud metadata address (and their
IPv6-embedded forms), the connection pinned to the vetted address, a size and a time limit.

What is recorded per endpoint (the evidence): the URL template and the URL it expands to, the
vetted host, port and addresses, the HTTP status, the final URL after redirects, TLS (the final
URL is https and its certificate chain was verified against the name — the helper refuses
anything else), and whether the endpoint speaks MCP:

* an ``initialize`` request over Streamable HTTP answered with an ``InitializeResult`` (JSON or
  an SSE stream) — ``speaks_mcp: true, mcp.kind: "initialize"``; the session it opened is
  closed again with ``DELETE``;
* or ``401`` with ``WWW-Authenticate: Bearer resource_metadata="…"`` (RFC 9728), the way an
  OAuth-protected MCP server answers an anonymous client — ``speaks_mcp: true, mcp.kind: "oauth"``;
* a ``401``/``403`` without that pointer when the remote declares a required header (an API key
  the reviewer does not have) — ``speaks_mcp: null`` and an ``info`` finding.

Legacy SSE remotes (``type: "sse"``) are vetted but not probed: their GET stream never ends.

Finding rules (severity): ``endpoints.not-https`` (high), ``endpoints.unsafe-target`` (high;
critical for a cloud metadata address), ``endpoints.unsafe-redirect`` (high; critical for
metadata), ``endpoints.unreachable`` (high), ``endpoints.not-mcp`` (high),
``endpoints.invalid`` (high), ``endpoints.template-unresolved`` (medium),
``endpoints.auth-without-metadata`` (medium), ``endpoints.auth-required`` (info),
``endpoints.legacy-sse`` (low), ``endpoints.none`` (info).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from kontor.gateway.safehttp import FetchFailed, SafeHttpClient, SafeResponse, UnsafeUrl
from kontor.registry.checks.findings import FAILING_SEVERITIES, CheckResult, Finding, finding

__all__ = [
    "CHECK_ID",
    "FAILING_SEVERITIES",
    "CheckResult",
    "Finding",
    "check_endpoints",
    "check_remote",
    "default_endpoint_client",
    "expand_url_template",
    "finding",
]

CHECK_ID = "endpoints"
MCP_PROTOCOL_VERSION = "2025-11-25"


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


# --------------------------------------------------------------------------- URL templates

_VARIABLE = re.compile(r"\{([^{}]+)\}")


def expand_url_template(template: str, variables: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    """Substitute ``{name}`` with each variable's ``default`` (or ``value``, or first ``choices`` entry).

    Returns the URL and the names that had no value (left in place).
    """
    missing: list[str] = []

    def value_of(match: re.Match[str]) -> str:
        name = match.group(1)
        spec = (variables or {}).get(name)
        if isinstance(spec, Mapping):
            for key in ("default", "value"):
                if isinstance(spec.get(key), str) and spec[key]:
                    return spec[key]
            choices = spec.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], str):
                return choices[0]
        missing.append(name)
        return match.group(0)

    return _VARIABLE.sub(value_of, template), missing


# --------------------------------------------------------------------------- the check


def default_endpoint_client() -> SafeHttpClient:
    """The production client for endpoint probes: https only, public addresses only, 256 KiB, 10 s."""
    return SafeHttpClient(max_bytes=256 * 1024, timeout_s=10.0, max_redirects=3)


async def check_endpoints(
    server: Mapping[str, Any],
    *,
    client: SafeHttpClient | None = None,
    headers: Mapping[str, str] | None = None,
    probe: bool = True,
) -> CheckResult:
    """Check every ``remotes[]`` entry of ``server`` (a parsed server.json). ``headers`` go with each probe."""
    client = client or default_endpoint_client()
    started = time.monotonic()
    remotes = server.get("remotes") or []
    findings: list[Finding] = []
    reports: list[dict[str, Any]] = []
    if not isinstance(remotes, list):
        findings.append(finding("endpoints.invalid", "high", "remotes must be a list", field="$.remotes"))
        remotes = []
    if not remotes:
        findings.append(finding("endpoints.none", "info", "no remotes[] entries: nothing to check", field="$.remotes"))
    for index, remote in enumerate(remotes):
        report, found = await check_remote(remote, index=index, client=client, headers=headers, probe=probe)
        reports.append(report)
        findings.extend(found)
    evidence = {"remotes": reports, "limits": {"max_bytes": client.max_bytes, "timeout_s": client.timeout_s,
                                               "max_redirects": client.max_redirects},
                "timings": {"total_ms": _ms(started)}}
    return CheckResult.of(CHECK_ID, evidence, findings)


async def check_remote(
    remote: Any,
    *,
    index: int = 0,
    client: SafeHttpClient,
    headers: Mapping[str, str] | None = None,
    probe: bool = True,
) -> tuple[dict[str, Any], list[Finding]]:
    """Evidence and findings for one ``remotes[index]`` entry."""
    path = f"$.remotes[{index}]"
    report: dict[str, Any] = {"index": index}
    findings: list[Finding] = []
    if not isinstance(remote, Mapping) or not isinstance(remote.get("url"), str):
        findings.append(finding("endpoints.invalid", "high", "remote has no url", field=path))
        return report, findings
    kind = remote.get("type")
    template = remote["url"]
    url, missing = expand_url_template(template, remote.get("variables"))
    report.update({"type": kind, "url_template": template, "url": url})
    if missing:
        findings.append(finding(
            "endpoints.template-unresolved", "medium",
            f"URL template variables without a default: {', '.join(missing)}; the endpoint could not be checked "
            "(the gateway vets the URL again when a tenant's values are filled in)", field=f"{path}.url"))
        return report, findings
    scheme = urlsplit(url).scheme.lower()
    if scheme != "https":
        report["refused"] = f"scheme {scheme or '(none)'}:// refused: remote endpoints must use https"
        findings.append(finding("endpoints.not-https", "high", f"{url}: {report['refused']}", field=f"{path}.url"))
        return report, findings

    started = time.monotonic()
    try:
        target = await client.vet(url)
    except UnsafeUrl as exc:
        report["refused"] = exc.reason
        findings.append(_unsafe("endpoints.unsafe-target", url, exc.reason, f"{path}.url"))
        return report, findings
    except FetchFailed as exc:
        report["error"] = exc.reason
        findings.append(finding("endpoints.unreachable", "high", f"{url}: {exc.reason}", field=f"{path}.url"))
        return report, findings
    report["vetted"] = {"host": target.host, "port": target.port, "addresses": [str(a) for a in target.addresses]}
    report["timings"] = {"vet_ms": _ms(started)}
    if kind == "sse":
        findings.append(finding("endpoints.legacy-sse", "low",
                                f"{url}: legacy SSE transport; the address was vetted but the stream not probed",
                                field=f"{path}.type"))
        report["speaks_mcp"] = None
        return report, findings
    if not probe:
        return report, findings

    probe_started = time.monotonic()
    request_id = next(_ids)
    body = {"jsonrpc": "2.0", "id": request_id, "method": "initialize",
            "params": {"protocolVersion": MCP_PROTOCOL_VERSION, "capabilities": {},
                       "clientInfo": {"name": "kontor-registry-review", "version": "1"}}}
    request_headers = {**dict(headers or {}), "accept": "application/json, text/event-stream"}
    try:
        response = await client.post(url, headers=request_headers, json=body)
    except UnsafeUrl as exc:
        report["refused"] = exc.reason
        rule = "endpoints.unsafe-redirect" if exc.reason.startswith("redirect") else "endpoints.unsafe-target"
        findings.append(_unsafe(rule, url, exc.reason, f"{path}.url"))
        report["timings"]["probe_ms"] = _ms(probe_started)
        return report, findings
    except FetchFailed as exc:
        report["error"] = exc.reason
        report["timings"]["probe_ms"] = _ms(probe_started)
        findings.append(finding("endpoints.unreachable", "high", f"{url}: {exc.reason}", field=f"{path}.url"))
        return report, findings
    report["timings"]["probe_ms"] = _ms(probe_started)
    report.update({"status": response.status, "final_url": response.url,
                   "content_type": response.headers.get("content-type"),
                   "bytes": len(response.content),
                   "tls": {"https": response.url.startswith("https://"), "certificate_verified": True}})
    findings.extend(await _judge(report, response, request_id, remote, url, path, client, request_headers))
    return report, findings


_ids = itertools.count(1)


def _unsafe(rule: str, url: str, reason: str, path: str) -> Finding:
    severity = "critical" if "metadata" in reason else "high"
    return finding(rule, severity, f"{url}: {reason}", field=path)


_RESOURCE_METADATA = re.compile(r'resource_metadata\s*=\s*"([^"]*)"|resource_metadata\s*=\s*([^\s,]+)', re.I)


async def _judge(report: dict[str, Any], response: SafeResponse, request_id: int, remote: Mapping[str, Any],
                 url: str, path: str, client: SafeHttpClient, headers: Mapping[str, str]) -> list[Finding]:
    status = response.status
    if status == 401:
        challenge = response.headers.get("www-authenticate", "")
        match = _RESOURCE_METADATA.search(challenge)
        if match:
            report["speaks_mcp"] = True
            report["mcp"] = {"kind": "oauth", "www_authenticate": challenge[:500],
                             "resource_metadata": match.group(1) or match.group(2)}
            return []
    if status in (401, 403):
        report["speaks_mcp"] = None
        required = [h.get("name") for h in remote.get("headers") or []
                    if isinstance(h, Mapping) and h.get("isRequired")]
        if required:
            names = ", ".join(map(str, required))
            return [finding("endpoints.auth-required", "info",
                            f"{url} answered {status}: it needs the declared header(s) {names}; "
                            "the MCP handshake was not verified", field=f"{path}.headers")]
        return [finding("endpoints.auth-without-metadata", "medium",
                        f"{url} answered {status} without a WWW-Authenticate resource_metadata pointer (RFC 9728): "
                        "MCP clients cannot discover how to authorize", field=f"{path}.url")]
    message = _initialize_answer(response, request_id)
    if isinstance(message, dict) and isinstance(message.get("result"), dict):
        result = message["result"]
        if isinstance(result.get("protocolVersion"), str) and isinstance(result.get("capabilities"), dict):
            report["speaks_mcp"] = True
            report["mcp"] = {"kind": "initialize", "protocolVersion": result["protocolVersion"],
                             "serverInfo": result.get("serverInfo"),
                             "capabilities": sorted(result["capabilities"]),
                             "session": bool(response.headers.get("mcp-session-id"))}
            await _close_session(client, response, url, headers)
            return []
    report["speaks_mcp"] = False
    if isinstance(message, dict) and isinstance(message.get("error"), dict):
        detail = f"JSON-RPC error {message['error'].get('code')}: {str(message['error'].get('message'))[:200]}"
    else:
        detail = f"HTTP {status}, content-type {response.headers.get('content-type') or '(none)'}"
    report["not_mcp"] = detail
    return [finding("endpoints.not-mcp", "high",
                    f"{url} did not answer an MCP initialize over Streamable HTTP ({detail})", field=f"{path}.url")]


def _initialize_answer(response: SafeResponse, request_id: int) -> Any:
    """The JSON-RPC message answering ``request_id`` in a JSON or SSE body, if any."""
    if not response.ok:
        return None
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    candidates: list[Any] = []
    if content_type == "text/event-stream":
        for event in re.split(r"\r\n\r\n|\n\n|\r\r", response.text):
            data = [line[5:].removeprefix(" ") for line in event.splitlines() if line.startswith("data:")]
            if data:
                try:
                    candidates.append(json.loads("\n".join(data)))
                except ValueError:
                    continue
    else:
        try:
            candidates.append(response.json())
        except ValueError:
            return None
    for item in candidates:
        for message in item if isinstance(item, list) else [item]:
            if isinstance(message, dict) and message.get("id") == request_id:
                return message
    return None


async def _close_session(client: SafeHttpClient, response: SafeResponse, url: str, headers: Mapping[str, str]) -> None:
    session = response.headers.get("mcp-session-id")
    if not session:
        return
    try:
        await client.request("DELETE", response.url or url, headers={**headers, "mcp-session-id": session,
                                                                     "mcp-protocol-version": MCP_PROTOCOL_VERSION})
    except (UnsafeUrl, FetchFailed):
        pass  # closing the review's session is a courtesy; the server expires it anyway
