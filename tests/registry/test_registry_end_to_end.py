"""End to end: publish a third-party server, review, approve, install, serve it through the real gateway, drift.

The gateway is the real application (``kontor.gateway.app.build_app``: the registry API on its
origin, the MCP endpoint, the catalog with tool pinning) served by uvicorn on 127.0.0.1. The
third-party server is a real MCP server (the SDK's ``MCPServer``) served over TLS on 127.0.0.1 as
``https://mcp.fixture.test:<port>/e2e/mcp``; the test changes its tools while it runs.

The only test-specific wiring is the network, exactly as in the review pipeline's tests: the
SSRF-safe client of the review *and* of the gateway's upstream connections is the test client of
``fixture_net`` (``mcp.fixture.test`` resolves to 127.0.0.1, only 127.0.0.1 is allowed, every
other address gets the production rules) and TLS trusts the test's CA. Production defaults are
not changed: three names are swapped in this process for the duration of the test.

The story: a publisher submits → the checks pass → a platform admin approves → the tenant admin
of ``acme`` installs → the tools appear through the gateway for ``acme`` only (``beta`` sees
nothing) → the server changes one tool's description → that tool is withheld (calls are refused
saying it awaits re-approval), the installation is ``needs_reapproval`` with an event, the other
tools are still served → the publisher submits the new definition as a new version, the admin
approves it, the tenant admin upgrades (seeing the diff) → the tool is back → the server renames
a tool → the same again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
import uvicorn
from argon2 import PasswordHasher
from joserfc import jwt
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette

import kontor.gateway.app as gateway_app
import kontor.gateway.proxy as gateway_proxy
import kontor.registry.app as registry_app
from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB, Role
from kontor.gateway.keys import KeyStore
from kontor.gateway.safehttp import pinned_pool
from kontor.registry.migrations import upgrade_async
from kontor.registry.review import ReviewConfig
from kontor.registry.server_json import SCHEMA_URL
from kontor.registry.store import RegistryStore
from tests.registry.fixture_net import ThreadServer, Tls, loopback_client, make_tls

pytestmark = pytest.mark.slow

HOST = "mcp.fixture.test"
NAME = "test.fixture/wholesale"
PUBLISHER, REVIEWER = "dev@fixture.example", "reviewer@ops.example"
ACME_ADMIN, ACME_USER, BETA_USER = "admin@acme.example", "user@acme.example", "user@beta.example"
PASSWORD = "correct horse battery staple"


# --------------------------------------------------------------------------- the third-party server


class ThirdParty:
    """A real MCP server whose tools the test changes while it runs."""

    def __init__(self) -> None:
        self.server = MCPServer("wholesale", instructions="Product data of a fictional wholesaler.")
        self._add("lookup_product", "Look up a product", "Find a product by its SKU and return its name.")
        self._add("create_quote", "Create a quote", "Create a quote for a customer with the given SKUs.",
                  read_only=False)
        self._add("check_stock", "Check stock", "Return how many units of a product are in stock.")

    def _add(self, name: str, title: str, description: str, *, read_only: bool = True) -> None:
        def tool(sku: str) -> str:
            return f"{name}({sku}) ok"

        hints = {"readOnlyHint": True} if read_only else {"readOnlyHint": False, "destructiveHint": False}
        self.server.add_tool(tool, name=name, title=title, description=description,
                             annotations=types.ToolAnnotations(**hints))

    def describe(self, name: str, description: str) -> None:
        tool = self.server._tool_manager.get_tool(name)
        assert tool is not None
        tool.description = description

    def rename(self, old: str, new: str) -> None:
        tool = self.server._tool_manager.get_tool(old)
        assert tool is not None
        title, description = tool.title, tool.description
        self.server.remove_tool(old)
        self._add(new, title or new, description or "")

    def app(self) -> Starlette:
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        sub = self.server.streamable_http_app(streamable_http_path="/e2e/mcp", transport_security=security)

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with sub.router.lifespan_context(sub):
                yield

        return Starlette(routes=list(sub.routes), lifespan=lifespan)


# --------------------------------------------------------------------------- the gateway


@dataclass
class World:
    settings: GatewaySettings
    tls: Tls
    fixture: ThirdParty
    fixture_port: int
    http: httpx.AsyncClient

    @property
    def remote(self) -> str:
        return f"https://{HOST}:{self.fixture_port}/e2e/mcp"

    def token(self, tenant: str, email: str, scopes: str = "", roles: tuple[str, ...] = ("member",)) -> str:
        key = KeyStore(self.settings.data_dir / "keys" / "oauth").current()
        now = int(time.time())
        return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, {
            "iss": self.settings.issuer(tenant), "sub": email, "aud": self.settings.resource_uri(tenant),
            "exp": now + 900, "iat": now, "jti": uuid.uuid4().hex, "tenant": tenant, "client_id": "e2e",
            "scope": scopes, "roles": list(roles), "email": email}, key.key)

    def auth(self, tenant: str, email: str, scopes: str = "", roles: tuple[str, ...] = ("member",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, email, scopes, roles)}"}

    @asynccontextmanager
    async def mcp(self, tenant: str, email: str) -> AsyncIterator[Client]:
        http = httpx2.AsyncClient(headers=self.auth(tenant, email, "wholesale:read wholesale:write"),
                                  timeout=httpx2.Timeout(30.0))
        async with http, Client(streamable_http_client(self.settings.resource_uri(tenant), http_client=http),
                                mode="legacy") as client:
            yield client


class GatewayThread:
    """The gateway app served by uvicorn on 127.0.0.1 in a thread (its port fixed before the app is built)."""

    def __init__(self, build: Callable[[int], Any]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(build(self.port), log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def _setup_database(url: str) -> None:
    await upgrade_async(url)
    async with GatewayDB(url, hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)) as db:
        for tenant in ("acme", "beta", "ops", "devs"):
            await db.create_tenant(tenant)
        for tenant, email, role in (("acme", ACME_ADMIN, Role.admin), ("acme", ACME_USER, Role.member),
                                    ("beta", BETA_USER, Role.member), ("ops", REVIEWER, Role.member),
                                    ("devs", PUBLISHER, Role.member)):
            await db.add_user(tenant, email, PASSWORD, role)


@pytest.fixture
def world(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    (tmp_path / "tls").mkdir()
    tls = make_tls(tmp_path / "tls", [HOST])
    fixture = ThirdParty()
    upstream = ThreadServer(fixture.app(), tls=tls, lifespan="on")

    def test_client(*_args: Any, **_kwargs: Any) -> Any:
        return loopback_client([HOST], tls=tls, timeout_s=10)

    # The test's network (see the module docstring): the gateway's and the review's SSRF-safe clients.
    monkeypatch.setattr(gateway_app, "SafeHttpClient", test_client)
    monkeypatch.setattr(gateway_proxy, "pinned_pool", functools.partial(pinned_pool, ssl_context=tls.client_context()))
    monkeypatch.setattr(registry_app, "ReviewConfig", lambda: ReviewConfig(
        endpoint_client=test_client(), snapshot_client=test_client(), snapshot_ssl_context=tls.client_context(),
        snapshot_timeout_s=10, download_packages=False))
    monkeypatch.setenv("KONTOR_GATEWAY_CHAT", "false")

    holder: dict[str, GatewaySettings] = {}

    def build(port: int) -> Any:
        settings = GatewaySettings(port=port, catalog_ttl_s=0.2, platform_admins=f"ops:{REVIEWER}")
        holder["settings"] = settings
        asyncio.run(_setup_database(settings.database_url))
        return gateway_app.build_app(settings)

    gateway = GatewayThread(build)
    settings = holder["settings"]
    http = httpx.AsyncClient(base_url=settings.origin, timeout=60)
    try:
        yield World(settings, tls, fixture, upstream.port, http)
    finally:
        gateway.stop()
        upstream.stop()


# --------------------------------------------------------------------------- helpers


async def until(what: str, check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def tool_names(world: World, tenant: str, email: str) -> list[str]:
    async with world.mcp(tenant, email) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)


async def call(world: World, name: str) -> str:
    async with world.mcp("acme", ACME_USER) as client:
        result = await client.call_tool(name, {"sku": "A-1"})
        assert not result.is_error, result.content
        return result.content[0].text  # type: ignore[union-attr]


async def refused(world: World, name: str) -> str:
    async with world.mcp("acme", ACME_USER) as client:
        with pytest.raises(MCPError) as error:
            await client.call_tool(name, {"sku": "A-1"})
        return str(error.value)


def server_json(remote: str, version: str) -> bytes:
    return json.dumps({"$schema": SCHEMA_URL, "name": NAME, "version": version, "title": "Wholesale",
                       "description": "Product lookup and quotes for a fictional wholesaler.",
                       "remotes": [{"type": "streamable-http", "url": remote}]}).encode()


# --------------------------------------------------------------------------- the story


async def test_publish_approve_install_serve_drift_and_reapprove(world: World) -> None:
    started = time.monotonic()
    phases: dict[str, float] = {}
    http = world.http
    publisher = world.auth("devs", PUBLISHER)
    reviewer = world.auth("ops", REVIEWER)
    admin = world.auth("acme", ACME_ADMIN, "tenant:admin", ("admin",))
    base = "/registry/api/tenants/acme/installations/wholesale"

    # 1. A publisher (on the gateway's origin, with the gateway's token) creates a publisher; the platform
    #    admin grants the namespace; the publisher submits; the automated checks pass.
    created = await http.post("/registry/api/publishers", json={"display_name": "Fixture GmbH"}, headers=publisher)
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    granted = await http.post(f"/registry/api/publishers/{pid}/namespaces", headers=reviewer,
                              json={"namespace": "test.fixture", "method": "admin", "reason": "verified by phone"})
    assert granted.status_code == 201, granted.text

    async def publish(version: str) -> str:
        submitted = await http.post(f"/registry/api/publishers/{pid}/versions", headers=publisher,
                                    content=server_json(world.remote, version))
        assert submitted.status_code == 201, submitted.text
        body = submitted.json()
        assert body["state"] == "in_review" and body["review"]["passed"], body["review"]
        self_approval = await http.post(f"/registry/api/versions/{body['id']}/decisions", headers=publisher,
                                        json={"decision": "approve", "reason": "looks fine to me"})
        assert self_approval.status_code == 403
        approved = await http.post(f"/registry/api/versions/{body['id']}/decisions", headers=reviewer,
                                   json={"decision": "approve", "reason": "evidence reviewed"})
        assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text
        return body["id"]

    await publish("1.0.0")
    phases["approved"] = time.monotonic() - started

    # 2. The tenant admin of acme installs it; its tools appear through the gateway for acme only.
    installed = await http.post("/registry/api/tenants/acme/installations", json={"server": NAME}, headers=admin)
    assert installed.status_code == 201, installed.text
    assert installed.json()["state"] == "enabled" and installed.json()["upstream_url"] == world.remote
    expected = ["wholesale__check_stock", "wholesale__create_quote", "wholesale__lookup_product"]
    assert await tool_names(world, "acme", ACME_USER) == expected
    assert await tool_names(world, "beta", BETA_USER) == []  # another tenant sees none of it
    assert await call(world, "wholesale__check_stock") == "check_stock(A-1) ok"
    phases["served"] = time.monotonic() - started

    # 3. The server changes one tool's description: that tool is withheld, the rest still served.
    world.fixture.describe("check_stock", "Return how many units of a product are in stock, per warehouse.")
    await until("check_stock withheld", lambda: _without(world, "wholesale__check_stock"))
    assert await tool_names(world, "acme", ACME_USER) == ["wholesale__create_quote", "wholesale__lookup_product"]
    message = await refused(world, "wholesale__check_stock")
    assert "withheld" in message and "re-approval" in message and "description changed" in message, message
    assert await call(world, "wholesale__lookup_product") == "lookup_product(A-1) ok"
    detail = await until("needs_reapproval", lambda: _state(world, admin, "needs_reapproval"))
    assert [w["tool"] for w in detail["withheld"]] == ["check_stock"]
    withheld = detail["withheld"][0]
    assert withheld["reason"] == "description changed"
    assert withheld["live"]["description"].endswith("per warehouse.") and not withheld[
        "approved"]["description"].endswith("per warehouse.")  # the admin sees the diff
    event = detail["events"][-1]
    assert (event["from_state"], event["to_state"], event["actor"]) == ("enabled", "needs_reapproval", "gateway")
    assert event["detail"]["drifted"] == [{"tool": "check_stock", "reason": "description changed"}]
    phases["withheld"] = time.monotonic() - started

    # 4. Re-approval: the new definition as a new version, approved; the tenant admin upgrades seeing the diff.
    await publish("1.0.1")
    preview = (await http.get(f"{base}/upgrade", headers=admin)).json()
    assert [c["name"] for c in preview["tools"]["changed"]] == ["check_stock"]
    assert preview["tools"]["changed"][0]["fields"] == ["description"]
    upgraded = await http.post(f"{base}/upgrade", json={"expected": preview["fingerprint"]}, headers=admin)
    assert upgraded.status_code == 200, upgraded.text
    assert (upgraded.json()["state"], upgraded.json()["version"]) == ("enabled", "1.0.1")
    await until("check_stock served again", lambda: _with(world, "wholesale__check_stock"))
    assert await call(world, "wholesale__check_stock") == "check_stock(A-1) ok"
    phases["reapproved"] = time.monotonic() - started

    # 5. The server renames a tool: the new name is withheld until re-approval, the old one is gone.
    world.fixture.rename("check_stock", "check_inventory")
    await until("check_stock gone", lambda: _without(world, "wholesale__check_stock"))
    assert await tool_names(world, "acme", ACME_USER) == ["wholesale__create_quote", "wholesale__lookup_product"]
    message = await refused(world, "wholesale__check_inventory")
    assert "withheld" in message and "re-approval" in message and "new tool" in message, message
    detail = await until("needs_reapproval again", lambda: _state(world, admin, "needs_reapproval"))
    assert [(w["tool"], w["reason"]) for w in detail["withheld"]] == [("check_inventory", "not approved (new tool)")]
    assert detail["events"][-1]["detail"]["drifted"] == [{"tool": "check_inventory",
                                                          "reason": "not approved (new tool)"}]
    await publish("1.0.2")
    preview = (await http.get(f"{base}/upgrade", headers=admin)).json()
    assert ([c["name"] for c in preview["tools"]["added"]], [c["name"] for c in preview["tools"]["removed"]]) == (
        ["check_inventory"], ["check_stock"])
    upgraded = await http.post(f"{base}/upgrade", json={"expected": preview["fingerprint"]}, headers=admin)
    assert upgraded.status_code == 200 and upgraded.json()["state"] == "enabled", upgraded.text
    await until("check_inventory served", lambda: _with(world, "wholesale__check_inventory"))
    assert await call(world, "wholesale__check_inventory") == "check_inventory(A-1) ok"
    assert await tool_names(world, "beta", BETA_USER) == []
    phases["renamed and reapproved"] = time.monotonic() - started

    # The registry's record of it all: every transition with its actor and reason.
    async with GatewayDB(world.settings.database_url) as db:
        store = RegistryStore(db)
        inst = await store.get_installation("acme", "wholesale")
        assert inst is not None
        events = await store.list_events(subject_type="installation", subject_id=inst.id)
    assert [(e.from_state, e.to_state) for e in events if e.from_state != e.to_state] == [
        (None, "requested"), ("requested", "enabled"), ("enabled", "needs_reapproval"),
        ("needs_reapproval", "enabled"), ("enabled", "needs_reapproval"), ("needs_reapproval", "enabled")]
    took = time.monotonic() - started
    print(f"registry end to end: {took:.1f} s; phases {({k: round(v, 1) for k, v in phases.items()})}")
    assert took < 90


async def _without(world: World, name: str) -> bool:
    return name not in await tool_names(world, "acme", ACME_USER)


async def _with(world: World, name: str) -> bool:
    return name in await tool_names(world, "acme", ACME_USER)


async def _state(world: World, admin: dict[str, str], state: str) -> dict[str, Any] | None:
    detail = (await world.http.get("/registry/api/tenants/acme/installations/wholesale", headers=admin)).json()
    return detail if detail.get("state") == state else None
