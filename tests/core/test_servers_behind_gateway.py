"""First-party servers behind the gateway: internal tokens only, tenant only from the token.

The lakehouse and ingest servers run as real processes (``kontor serve NAME --http``) with the
``KONTOR_AUTH_*`` environment pointing at a JWKS served on loopback from a gateway KeyStore;
tokens come from the gateway's TokenMinter. ``KONTOR_TENANT`` is set to a tenant on purpose: it
must be ignored.
"""

from __future__ import annotations

import base64
import contextvars
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from kontor.auth import AuthConfigError, ServerAuth, StaticJwks, server_auth
from kontor.gateway.keys import KeyStore
from kontor.gateway.tokens import TokenMinter
from kontor.paths import TenantPaths
from kontor.servers.lakehouse.embeddings import EmbeddingSpec
from kontor.servers.lakehouse.store import LakehouseStore
from kontor.serving import UnsafeBind, check_bind
from kontor.settings import Settings
from kontor.tenancy import NoTenant, tenant_context
from tests.lakehouse.conftest import make_document
from tests.servers_util import free_port, serve_command, server_env, stop, wait_healthy

GATEWAY = "http://127.0.0.1:8700"
ISSUER = f"{GATEWAY}/internal"
SPEC = EmbeddingSpec("all-MiniLM-L6-v2", 384)  # the server's default model; vectors here are random
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextmanager
def jwks_server(store: KeyStore) -> Iterator[str]:
    """The gateway's JWKS endpoint alone, on a loopback port in a thread; yields its URL."""

    async def jwks(_: Request) -> JSONResponse:
        return JSONResponse(store.jwks())

    port = free_port()
    app = Starlette(routes=[Route("/.well-known/jwks.json", jwks)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "JWKS server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Mesh:
    data_root: Path
    store: KeyStore
    minter: TokenMinter
    jwks_url: str

    def env(self, audience: str, **extra: str) -> dict[str, str]:
        # KONTOR_TENANT=acme on purpose: behind the gateway it must not matter.
        return server_env(self.data_root, "acme", KONTOR_AUTH_JWKS_URL=self.jwks_url, KONTOR_AUTH_ISSUER=ISSUER,
                          KONTOR_AUTH_AUDIENCE=audience, **extra)

    def token(self, audience: str, tenant: str, scopes: list[str], **kw: Any) -> str:
        return self.minter.mint(audience, "alice@example.com", tenant, scopes, actor=GATEWAY, client_id="c1", **kw)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("behind-gateway")
    data_root = root / "data"
    for tenant, names in {"acme": ["acme-vertrag", "acme-preise"], "globex": ["globex-handbuch"]}.items():
        store = LakehouseStore(TenantPaths(data_root, tenant), SPEC)
        store.write_documents([make_document(SPEC, name, [f"Dokument {name} von {tenant}: Schraubenlieferung."],
                                             title=name) for name in names])
        store.close()
    keys = KeyStore(data_root / "gateway" / "keys" / "internal")
    keys.current()
    with jwks_server(keys) as url:
        yield Mesh(data_root, keys, TokenMinter(keys, ISSUER), url)


@contextmanager
def server_process(name: str, mesh: Mesh, **extra: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    proc = subprocess.Popen(serve_command(name, "--http", f"127.0.0.1:{port}"), env=mesh.env(url, **extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, 120)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def lakehouse(mesh: Mesh) -> Iterator[str]:
    with server_process("lakehouse", mesh) as url:
        yield url


async def _initialize(url: str, token: str | None) -> httpx.Response:
    headers = dict(HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient() as raw:
        return await raw.post(url, json=INIT, headers=headers)


async def test_a_token_for_a_tenant_reads_only_that_tenants_data(mesh: Mesh, lakehouse: str):
    acme = mesh.token(lakehouse, "acme", ["lakehouse:read"])
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {acme}"}) as http:
        async with Client(streamable_http_client(lakehouse, http_client=http)) as client:
            listing = await client.call_tool("list_documents", {})
            assert not listing.is_error, listing.content
            assert {d["title"] for d in listing.structured_content["documents"]} == {"acme-vertrag", "acme-preise"}
            hits = await client.call_tool("search", {"query": "Schraubenlieferung", "mode": "keyword", "k": 10})
            assert not hits.is_error, hits.content
            sources = {h["citation"]["title"] for h in hits.structured_content["results"]}
            assert sources == {"acme-vertrag", "acme-preise"}
            stats = await client.call_tool("stats", {})
            assert stats.structured_content["tenant"] == "acme"

            # Same session, next request carries another tenant's token: the tenant follows the token.
            http.headers["Authorization"] = f"Bearer {mesh.token(lakehouse, 'globex', ['lakehouse:read'])}"
            listing = await client.call_tool("list_documents", {})
            assert [d["title"] for d in listing.structured_content["documents"]] == ["globex-handbuch"]
            hits = await client.call_tool("search", {"query": "acme Schraubenlieferung", "mode": "keyword"})
            assert {h["citation"]["title"] for h in hits.structured_content["results"]} == {"globex-handbuch"}


async def test_a_tenant_without_data_sees_nothing_even_though_KONTOR_TENANT_has_data(mesh: Mesh, lakehouse: str):
    token = mesh.token(lakehouse, "initech", ["lakehouse:read"])
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(lakehouse, http_client=http)) as client:
            listing = await client.call_tool("list_documents", {})
            assert listing.structured_content["total"] == 0


async def test_requests_without_a_valid_internal_token_are_refused(mesh: Mesh, lakehouse: str):
    other = mesh.token(lakehouse, "acme", [])  # sanity: the right token is accepted
    assert (await _initialize(lakehouse, other)).status_code == 200

    no_token = await _initialize(lakehouse, None)
    assert no_token.status_code == 401
    assert "resource_metadata=" in no_token.headers["www-authenticate"]

    refused = {
        "another server's audience": mesh.token("http://127.0.0.1:8712/mcp", "acme", ["ingest:read"]),
        "the gateway's own audience": mesh.token(f"{GATEWAY}/t/acme/mcp", "acme", []),
        "another issuer": TokenMinter(mesh.store, "http://127.0.0.1:9999/internal").mint(
            lakehouse, "alice", "acme", []),
        # What a user's access token looks like: issued by the tenant's authorization server for the
        # tenant's gateway endpoint. Never valid at a server, signed by the same keys or not.
        "a user token": TokenMinter(mesh.store, f"{GATEWAY}/t/acme").mint(
            f"{GATEWAY}/t/acme/mcp", "alice", "acme", ["lakehouse:read"]),
        "a user-issuer token for this audience": TokenMinter(mesh.store, f"{GATEWAY}/t/acme").mint(
            lakehouse, "alice", "acme", ["lakehouse:read"]),
        "a foreign signing key": TokenMinter(KeyStore(mesh.data_root / "rogue-keys"), ISSUER).mint(
            lakehouse, "alice", "acme", []),
        "garbage": "not-a-token",
    }
    for why, token in refused.items():
        resp = await _initialize(lakehouse, token)
        assert resp.status_code == 401, why

    # /health stays open (the supervisor and the gateway probe it without a token).
    async with httpx.AsyncClient() as raw:
        health = await raw.get(lakehouse.removesuffix("/mcp") + "/health")
    assert health.status_code == 200 and health.json()["server"] == "lakehouse"


async def test_ingest_behind_the_gateway_keeps_jobs_per_token_tenant(mesh: Mesh):
    content = base64.b64encode(b"# Notiz\n\nDie Lieferung kommt am Montag.\n").decode()
    with server_process("ingest", mesh) as url:
        assert (await _initialize(url, None)).status_code == 401
        assert (await _initialize(url, mesh.token("http://127.0.0.1:8711/mcp", "acme", []))).status_code == 401
        token = mesh.token(url, "globex", ["ingest:write", "ingest:read"])
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                result = await client.call_tool("ingest_upload", {"name": "notiz.md", "content_base64": content})
                assert not result.is_error, result.content
                job = result.structured_content["job_id"]
                assert result.structured_content["ok"] == 1
                assert (await client.call_tool("job_status", {"job_id": job})).structured_content["ok"] == 1

                http.headers["Authorization"] = f"Bearer {mesh.token(url, 'acme', ['ingest:write', 'ingest:read'])}"
                own = await client.call_tool("ingest_upload", {"name": "eigen.md", "content_base64": content})
                assert not own.is_error, own.content
                other = await client.call_tool("job_status", {"job_id": job})
                assert other.is_error and "no ingestion job" in other.content[0].text
    assert list((mesh.data_root / "tenants" / "globex" / "raw").glob("**/notiz.md"))
    assert not list((mesh.data_root / "tenants" / "acme" / "raw").glob("**/notiz.md"))


# -- the switch itself, in process -----------------------------------------------------------


def test_server_auth_standalone_uses_the_configured_tenant(tmp_path: Path):
    auth = server_auth(Settings(data_root=tmp_path))
    assert isinstance(auth, ServerAuth) and not auth.behind_gateway and auth.mcp_kwargs() == {}
    with pytest.raises(NoTenant):
        auth.tenant()
    with tenant_context("acme"):
        assert auth.tenant() == "acme"


def test_server_auth_behind_the_gateway_never_uses_the_configured_tenant(tmp_path: Path):
    keys = KeyStore(tmp_path / "keys")
    settings = Settings(data_root=tmp_path, tenant="acme", auth_jwks_url="http://127.0.0.1:1/jwks",
                        auth_issuer=ISSUER, auth_audience="http://127.0.0.1:8711/mcp")
    auth = server_auth(settings, StaticJwks(keys.jwks()))
    assert auth.behind_gateway and set(auth.mcp_kwargs()) == {"token_verifier", "auth"}
    assert str(auth.auth.resource_server_url) == "http://127.0.0.1:8711/mcp"  # type: ignore[union-attr]
    with tenant_context("acme"), pytest.raises(NoTenant, match="verified token"):
        auth.tenant()


@pytest.mark.parametrize(("env", "message"), [
    ({"auth_issuer": "", "auth_audience": "http://127.0.0.1:8711/mcp"}, "KONTOR_AUTH_ISSUER"),
    ({"auth_issuer": ISSUER, "auth_audience": ""}, "KONTOR_AUTH_AUDIENCE"),
    ({"auth_issuer": ISSUER, "auth_audience": "lakehouse"}, "KONTOR_AUTH_AUDIENCE"),
    ({"auth_jwks_url": "file:///etc/jwks.json", "auth_issuer": ISSUER,
      "auth_audience": "http://127.0.0.1:8711/mcp"}, "KONTOR_AUTH_JWKS_URL"),
])
def test_incomplete_auth_settings_are_refused(tmp_path: Path, env: dict[str, str], message: str):
    settings = Settings(data_root=tmp_path, **{"auth_jwks_url": "http://127.0.0.1:1/jwks", **env})
    with pytest.raises(AuthConfigError, match=message):
        server_auth(settings)


def test_a_server_without_token_verification_binds_loopback_only(tmp_path: Path):
    standalone = MCPServer("probe")
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(standalone, host)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(UnsafeBind, match="loopback"):
            check_bind(standalone, host)
    settings = Settings(data_root=tmp_path, auth_jwks_url="http://127.0.0.1:1/jwks", auth_issuer=ISSUER,
                        auth_audience="http://10.0.0.5:8711/mcp")
    protected = MCPServer("probe", **server_auth(settings, StaticJwks({"keys": []})).mcp_kwargs())
    check_bind(protected, "0.0.0.0")  # behind the gateway every request needs a token: any address is fine


def test_serve_refuses_unsafe_combinations(data_root: Path, monkeypatch: pytest.MonkeyPatch):
    from kontor.cli import app
    from kontor.settings import get_settings

    runner = CliRunner()
    open_bind = contextvars.copy_context().run(runner.invoke, app, ["serve", "lakehouse", "--http", "0.0.0.0:1"])
    assert open_bind.exit_code == 2 and "only listens on loopback" in open_bind.output

    monkeypatch.setenv("KONTOR_AUTH_JWKS_URL", "http://127.0.0.1:1/jwks")
    get_settings.cache_clear()
    stdio = runner.invoke(app, ["serve", "lakehouse"])
    assert stdio.exit_code == 2 and "--http" in stdio.output
    with_tenant = runner.invoke(app, ["serve", "lakehouse", "--http", "127.0.0.1:1", "--tenant", "acme"])
    assert with_tenant.exit_code == 2 and "token" in with_tenant.output
    no_issuer = runner.invoke(app, ["serve", "lakehouse", "--http", "127.0.0.1:1"])
    assert no_issuer.exit_code == 2 and "KONTOR_AUTH_ISSUER" in no_issuer.output
    get_settings.cache_clear()
