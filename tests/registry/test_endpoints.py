"""Remote endpoint safety (review check 3).

Refusals run with the production client rules and an injected resolver (nothing is connected
to). The probes run against a local HTTPS server (a CA made here) reached through the test
client, which allows exactly 127.0.0.1 and applies the built-in rules to every other address —
so a redirect from the local server to a private or metadata address is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from kontor.gateway.safehttp import SafeHttpClient, StaticResolver
from kontor.registry.checks.findings import Finding
from kontor.registry.endpoints import CheckResult, check_endpoints, expand_url_template
from tests.registry.fixture_net import ThreadServer, Tls, loopback_client, make_tls

NAMES = ["mcp.kontor.test"]


@dataclass
class Seen:
    deletes: list[str] = field(default_factory=list)


def _init_result(body: bytes) -> dict[str, object]:
    request = json.loads(body)
    return {"jsonrpc": "2.0", "id": request["id"], "result": {
        "protocolVersion": request["params"]["protocolVersion"], "capabilities": {"tools": {}},
        "serverInfo": {"name": "fake-mcp", "version": "1"}}}


def make_app(seen: Seen, port_box: list[int]) -> Starlette:
    async def mcp(request: Request) -> Response:
        if request.method == "DELETE":
            seen.deletes.append(request.headers.get("mcp-session-id", ""))
            return Response(status_code=200)
        return JSONResponse(_init_result(await request.body()), headers={"mcp-session-id": "s-123"})

    async def mcp_sse(request: Request) -> Response:
        payload = json.dumps(_init_result(await request.body()))
        return Response(f"event: message\ndata: {payload}\n\n", media_type="text/event-stream")

    async def oauth(request: Request) -> Response:
        meta = f"https://mcp.kontor.test:{port_box[0]}/.well-known/oauth-protected-resource/oauth"
        return Response(status_code=401, headers={"www-authenticate": f'Bearer resource_metadata="{meta}"'})

    async def apikey(request: Request) -> Response:
        return PlainTextResponse("missing key", status_code=401)

    async def html(request: Request) -> Response:
        return PlainTextResponse("<html>hello</html>", media_type="text/html")

    async def rpc_error(request: Request) -> Response:
        rid = json.loads(await request.body())["id"]
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "bad version"}})

    def redirect(location: str):  # type: ignore[no-untyped-def]
        async def handler(request: Request) -> Response:
            return RedirectResponse(location, status_code=307)
        return handler

    return Starlette(routes=[
        Route("/mcp", mcp, methods=["POST", "DELETE"]),
        Route("/mcp-sse", mcp_sse, methods=["POST"]),
        Route("/oauth", oauth, methods=["POST"]),
        Route("/apikey", apikey, methods=["POST"]),
        Route("/html", html, methods=["POST"]),
        Route("/rpc-error", rpc_error, methods=["POST"]),
        Route("/to-private", redirect("https://10.0.0.5/mcp"), methods=["POST"]),
        Route("/to-metadata", redirect("https://169.254.169.254/latest/meta-data/"), methods=["POST"]),
        Route("/to-internal-name", redirect("https://internal.kontor.test/mcp"), methods=["POST"]),
        Route("/same-origin", redirect("/mcp"), methods=["POST"]),
    ])


@dataclass
class Local:
    server: ThreadServer
    tls: Tls
    seen: Seen

    def url(self, path: str) -> str:
        return f"https://mcp.kontor.test:{self.server.port}{path}"

    def client(self) -> SafeHttpClient:
        return loopback_client(NAMES, tls=self.tls, timeout_s=5, resolve={"internal.kontor.test": "192.168.7.7"})


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    seen, port_box = Seen(), [0]
    tls = make_tls(tmp_path_factory.mktemp("tls"), NAMES)
    server = ThreadServer(make_app(seen, port_box), tls=tls)
    port_box[0] = server.port
    yield Local(server, tls, seen)
    server.stop()


def remote(url: str, **more: object) -> dict[str, object]:
    return {"name": "test.kontor/x", "remotes": [{"type": "streamable-http", "url": url, **more}]}


def only(result: CheckResult) -> Finding:
    assert len(result.findings) == 1, result.findings
    return result.findings[0]


# --------------------------------------------------------------------------- refusals (no connection)

STRICT = StaticResolver({"internal.example.com": "10.0.0.8", "meta.example.com": "169.254.169.254",
                         "v6.example.com": ["2606:4700::1111", "fd00::1"]})


@pytest.mark.parametrize(("url", "rule", "severity", "text"), [
    ("http://api.example.com/mcp", "endpoints.not-https", "high", "must use https"),
    ("ftp://api.example.com/mcp", "endpoints.not-https", "high", "scheme ftp://"),
    ("https://127.0.0.1/mcp", "endpoints.unsafe-target", "high", "loopback address 127.0.0.1"),
    ("https://localhost:8443/mcp", "endpoints.unsafe-target", "high", "loopback name"),
    ("https://[::1]/mcp", "endpoints.unsafe-target", "high", "loopback"),
    ("https://169.254.169.254/latest/meta-data/", "endpoints.unsafe-target", "critical", "cloud metadata"),
    ("https://10.1.2.3/mcp", "endpoints.unsafe-target", "high", "private address 10.1.2.3"),
    ("https://internal.example.com/mcp", "endpoints.unsafe-target", "high",
     "internal.example.com resolves to a private address 10.0.0.8"),
    ("https://meta.example.com/mcp", "endpoints.unsafe-target", "critical", "cloud metadata"),
    ("https://v6.example.com/mcp", "endpoints.unsafe-target", "high", "fd00::1"),
    ("https://2130706433/mcp", "endpoints.unsafe-target", "high", "non-canonical IPv4"),
    ("https://nowhere.example.com/mcp", "endpoints.unreachable", "high", "cannot resolve"),
])
async def test_refused_targets(url: str, rule: str, severity: str, text: str) -> None:
    result = await check_endpoints(remote(url), client=SafeHttpClient(resolver=STRICT, timeout_s=2))
    finding = only(result)
    assert (finding.rule, finding.severity) == (rule, severity)
    assert text in finding.message
    assert finding.field == "$.remotes[0].url"
    assert not result.passed
    assert "status" not in result.evidence["remotes"][0]  # nothing was fetched


async def test_template_variables_are_expanded_before_the_check() -> None:
    doc = remote("https://{host}/mcp", variables={"host": {"default": "10.9.9.9"}})
    result = await check_endpoints(doc, client=SafeHttpClient(resolver=STRICT))
    assert only(result).rule == "endpoints.unsafe-target"
    assert result.evidence["remotes"][0]["url"] == "https://10.9.9.9/mcp"
    unresolved = await check_endpoints(remote("https://{tenant}.example.com/mcp"),
                                       client=SafeHttpClient(resolver=STRICT))
    assert (only(unresolved).rule, only(unresolved).severity) == ("endpoints.template-unresolved", "medium")
    assert unresolved.passed  # cannot be judged yet; the gateway vets the filled-in URL
    assert expand_url_template("https://{a}/{b}", {"a": {"value": "x.io"}, "b": {"choices": ["v1"]}}) == (
        "https://x.io/v1", [])


async def test_no_remotes_is_informational() -> None:
    result = await check_endpoints({"name": "a/b"})
    assert result.passed and only(result).rule == "endpoints.none"


# --------------------------------------------------------------------------- probes against a local server


async def test_mcp_endpoint_is_recognised_and_session_closed(local: Local) -> None:
    result = await check_endpoints(remote(local.url("/mcp")), client=local.client())
    assert result.passed and result.findings == ()
    ev = result.evidence["remotes"][0]
    assert ev["status"] == 200 and ev["final_url"] == local.url("/mcp")
    assert ev["speaks_mcp"] is True and ev["mcp"]["kind"] == "initialize"
    assert ev["mcp"]["serverInfo"] == {"name": "fake-mcp", "version": "1"}
    assert ev["tls"] == {"https": True, "certificate_verified": True}
    assert ev["vetted"] == {"host": "mcp.kontor.test", "port": local.server.port, "addresses": ["127.0.0.1"]}
    assert ev["timings"]["probe_ms"] > 0
    assert "s-123" in local.seen.deletes
    json.dumps(result.to_dict())  # evidence is JSON-serialisable


async def test_sse_answer_and_same_origin_redirect(local: Local) -> None:
    sse = await check_endpoints(remote(local.url("/mcp-sse")), client=local.client())
    assert sse.passed and sse.evidence["remotes"][0]["speaks_mcp"] is True
    moved = await check_endpoints(remote(local.url("/same-origin")), client=local.client())
    assert moved.passed and moved.evidence["remotes"][0]["final_url"] == local.url("/mcp")


async def test_oauth_protected_mcp_server(local: Local) -> None:
    result = await check_endpoints(remote(local.url("/oauth")), client=local.client())
    assert result.passed and result.findings == ()
    ev = result.evidence["remotes"][0]
    assert ev["status"] == 401 and ev["speaks_mcp"] is True and ev["mcp"]["kind"] == "oauth"
    assert ev["mcp"]["resource_metadata"].endswith("/.well-known/oauth-protected-resource/oauth")


async def test_api_key_servers_and_non_mcp_endpoints(local: Local) -> None:
    keyed = await check_endpoints(remote(local.url("/apikey"), headers=[{"name": "X-Api-Key", "isRequired": True}]),
                                  client=local.client())
    assert keyed.passed and (only(keyed).rule, only(keyed).severity) == ("endpoints.auth-required", "info")
    bare = await check_endpoints(remote(local.url("/apikey")), client=local.client())
    assert only(bare).rule == "endpoints.auth-without-metadata"
    page = await check_endpoints(remote(local.url("/html")), client=local.client())
    assert not page.passed and only(page).rule == "endpoints.not-mcp" and "text/html" in only(page).message
    rpc = await check_endpoints(remote(local.url("/rpc-error")), client=local.client())
    assert only(rpc).rule == "endpoints.not-mcp" and "-32602" in only(rpc).message


@pytest.mark.parametrize(("path", "severity", "text"), [
    ("/to-private", "high", "a private address 10.0.0.5"),
    ("/to-metadata", "critical", "cloud metadata address"),
    ("/to-internal-name", "high", "a private address 192.168.7.7"),
])
async def test_redirect_to_private_targets_is_refused(local: Local, path: str, severity: str, text: str) -> None:
    result = await check_endpoints(remote(local.url(path)), client=local.client())
    finding = only(result)
    assert (finding.rule, finding.severity) == ("endpoints.unsafe-redirect", severity)
    assert "redirect 1" in finding.message and text in finding.message
    assert not result.passed


async def test_legacy_sse_is_vetted_but_not_probed(local: Local) -> None:
    doc = {"remotes": [{"type": "sse", "url": local.url("/sse")}]}
    result = await check_endpoints(doc, client=local.client())
    assert (only(result).rule, only(result).severity) == ("endpoints.legacy-sse", "low")
    assert result.evidence["remotes"][0]["vetted"]["addresses"] == ["127.0.0.1"]


async def test_unreachable_endpoint(local: Local) -> None:
    client = loopback_client(["down.kontor.test"], tls=local.tls, timeout_s=2)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        result = await check_endpoints(remote(f"https://down.kontor.test:{port}/mcp"), client=client)
    assert only(result).rule == "endpoints.unreachable" and not result.passed
