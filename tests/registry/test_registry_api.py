"""The registry's JSON API and the official read API, in process (ASGI), with the real review.

Hostile submissions go through the real automated review: the fixture MCP servers of
``test_review_pipeline`` are served over TLS on 127.0.0.1 under ``mcp.fixture.test``, reached
through the SSRF-safe test client (``fixture_net.loopback_client``: exactly 127.0.0.1 is allowed,
every other address — a redirect to the metadata service, a name resolving to 10.x — gets the
production rules). Tokens are the gateway's own access tokens (built-in issuer, audience the
tenant's MCP endpoint), verified by the gateway's ``UserTokenVerifier``.

Also here: ``Harness`` (used by the fuzz and CLI tests) and the gateway's mounts of the registry.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric import ed25519
from joserfc import jwt
from starlette.applications import Starlette
from starlette.routing import Mount

from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB, Role
from kontor.gateway.keys import KeyStore
from kontor.gateway.resource_server import TenantAuth, UserTokenVerifier
from kontor.registry.app import PlatformAdmins, RegistryContext, build_read_api_app, build_registry_app
from kontor.registry.migrations import upgrade_async
from kontor.registry.ownership import DnsTxtVerifier, OwnershipChecker, key_record, sign_challenge, timestamp_challenge
from kontor.registry.review import ReviewConfig
from kontor.registry.server_json import SCHEMA_URL
from kontor.registry.service import seed_first_party
from kontor.registry.store import SecretBox
from tests.registry.fixture_net import DnsServer, ThreadServer, Tls, loopback_client, make_tls
from tests.registry.test_review_pipeline import HOST, TAGS
from tests.registry.test_review_pipeline import build_app as build_fixture_app

PASSWORD = "correct horse battery staple"
REVIEWER = "reviewer@ops.example"
SECOND_REVIEWER = "second@ops.example"
PUBLISHER = "dev@acme.example"
ACME_ADMIN = "admin@acme.example"
ACME_MEMBER = "member@acme.example"
BETA_ADMIN = "admin@beta.example"
ADMINS = {("ops", REVIEWER), ("ops", SECOND_REVIEWER)}
NS = "test.fixture"
KEY = ed25519.Ed25519PrivateKey.generate()
ZONE = {"fixture.test": [key_record(KEY.public_key())]}
# Names whose answers point inward: the test client resolves them, its policy refuses everything but 127.0.0.1.
INWARD = {"private.evil.example": "10.0.0.8", "metadata.evil.example": "169.254.169.254"}


# --------------------------------------------------------------------------- the harness


@dataclass
class Net:
    server: ThreadServer | None
    tls: Tls | None
    dns: DnsServer | None

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"https://{HOST}:{self.server.port}{path}"

    def config(self) -> ReviewConfig:
        if self.server is None or self.tls is None or self.dns is None:  # no network at all: everything refused
            client = loopback_client([], timeout_s=2)
            return ReviewConfig(endpoint_client=client, snapshot_client=client, snapshot_timeout_s=2,
                                download_packages=False)
        client = loopback_client([HOST], tls=self.tls, timeout_s=5, resolve=INWARD)
        checker = OwnershipChecker([DnsTxtVerifier(nameservers=["127.0.0.1"], port=self.dns.port, timeout_s=3)])
        return ReviewConfig(endpoint_client=client, snapshot_client=client,
                            snapshot_ssl_context=self.tls.client_context(), snapshot_timeout_s=10,
                            ownership_checker=checker, download_packages=False)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tls = make_tls(tmp_path_factory.mktemp("tls"), [HOST])
    server = ThreadServer(build_fixture_app(), tls=tls, lifespan="on")
    dns_server = DnsServer(ZONE)
    yield Net(server, tls, dns_server)
    server.stop()
    dns_server.stop()


@dataclass
class Harness:
    """The registry app and the read API in process over a fresh database, with tokens of the gateway's kind."""

    settings: GatewaySettings
    db: GatewayDB
    keys: KeyStore
    ctx: RegistryContext
    client: httpx.AsyncClient
    publisher_id: str = ""
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    version_ids: list[str] = field(default_factory=list)

    def token(self, tenant: str, email: str, scopes: Sequence[str] = (), *, roles: Sequence[str] = ("member",),
              **overrides: Any) -> str:
        key = self.keys.current()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.issuer(tenant), "sub": f"user-{email}", "aud": self.settings.resource_uri(tenant),
            "exp": now + 600, "iat": now, "nbf": now, "jti": uuid.uuid4().hex, "tenant": tenant,
            "client_id": "test-client", "scope": " ".join(scopes), "roles": list(roles), "email": email}
        claims.update(overrides)
        return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"},
                          {k: v for k, v in claims.items() if v is not None}, key.key)

    def auth(self, who: str) -> dict[str, str]:
        """Headers for a named actor of the scenario."""
        tenant, email, scopes, roles = {
            "publisher": ("acme", PUBLISHER, (), ("member",)),
            "reviewer": ("ops", REVIEWER, (), ("member",)),
            "second": ("ops", SECOND_REVIEWER, (), ("member",)),
            "acme-admin": ("acme", ACME_ADMIN, ("tenant:admin",), ("admin",)),
            "acme-member": ("acme", ACME_MEMBER, (), ("member",)),
            "beta-admin": ("beta", BETA_ADMIN, ("tenant:admin",), ("admin",)),
        }[who]
        if (who, "") not in self.tokens:
            self.tokens[(who, "")] = self.token(tenant, email, scopes, roles=roles)
        return {"Authorization": f"Bearer {self.tokens[(who, '')]}"}

    async def submit(self, doc: dict[str, Any] | bytes, who: str = "publisher", *, publisher: str | None = None,
                     **params: str) -> httpx.Response:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return await self.client.post(f"/registry/api/publishers/{publisher or self.publisher_id}/versions",
                                      content=body, headers={**self.auth(who), "content-type": "application/json"},
                                      params=params)

    async def decide(self, version_id: str, decision: str = "approve", who: str = "reviewer",
                     reason: str | None = "checked the evidence") -> httpx.Response:
        body = {"decision": decision} if reason is None else {"decision": decision, "reason": reason}
        return await self.client.post(f"/registry/api/versions/{version_id}/decisions", json=body,
                                      headers=self.auth(who))

    async def approved(self, doc: dict[str, Any], **params: str) -> dict[str, Any]:
        submitted = await self.submit(doc, **params)
        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["state"] == "in_review", submitted.json()["review"]
        decided = await self.decide(submitted.json()["id"])
        assert decided.status_code == 200, decided.text
        return decided.json()


def server_json(url: str | None, name: str = f"{NS}/wholesale", version: str = "1.0.0", **changes: Any
                ) -> dict[str, Any]:
    doc: dict[str, Any] = {"$schema": SCHEMA_URL, "name": name, "version": version,
                           "description": "Product lookup and quotes for a fictional wholesaler."}
    if url is not None:
        doc["remotes"] = [{"type": "streamable-http", "url": url}]
    doc.update(changes)
    return doc


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


async def make_harness(root: Path, url: str, review_config: ReviewConfig, *, seed: bool = False
                       ) -> AsyncIterator[Harness]:
    settings = GatewaySettings(port=8799)
    await upgrade_async(url)
    db = GatewayDB(url, hasher=fast_hasher())
    await db.init()
    for tenant in ("acme", "beta", "ops"):
        await db.create_tenant(tenant)
    for tenant, email, role in (("acme", ACME_ADMIN, Role.admin), ("acme", ACME_MEMBER, Role.member),
                                ("acme", PUBLISHER, Role.member), ("beta", BETA_ADMIN, Role.admin),
                                ("ops", REVIEWER, Role.member), ("ops", SECOND_REVIEWER, Role.member)):
        await db.add_user(tenant, email, PASSWORD, role)
    keys = KeyStore(root / "keys")

    async def tenant_auth(tenant: str) -> TenantAuth:
        return TenantAuth(exists=await db.get_tenant(tenant) is not None)

    async def lookup(kid: str) -> Any:
        return next((k.key for k in keys.keys() if k.kid == kid), None)

    verifier = UserTokenVerifier(settings, tenant_auth, lookup)
    ctx = RegistryContext.build(settings, db, verifier, review_config=review_config, secret_box=SecretBox.generate(),
                                local_urls={}, platform_admins=PlatformAdmins(ADMINS))
    if seed:  # the first-party catalog entries, with a fixed snapshot (no in-process listing)
        await seed_first_party(ctx.store, snapshots=FIRST_PARTY_SNAPSHOTS)
    app = Starlette(routes=[Mount("/registry", app=build_registry_app(lambda: ctx)),
                            Mount("/v0.1", app=build_read_api_app(lambda: ctx))])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test")
    harness = Harness(settings, db, keys, ctx, client)
    created = await client.post("/registry/api/publishers", json={"display_name": "Fixture Inc."},
                                headers=harness.auth("publisher"))
    assert created.status_code == 201, created.text
    harness.publisher_id = created.json()["id"]
    granted = await client.post(f"/registry/api/publishers/{harness.publisher_id}/namespaces",
                                json={"namespace": NS, "method": "admin", "reason": "verified by hand"},
                                headers=harness.auth("reviewer"))
    assert granted.status_code == 201, granted.text
    try:
        yield harness
    finally:
        await client.aclose()
        await db.close()


def _tool(name: str, description: str, read_only: bool = True) -> dict[str, Any]:
    return {"name": name, "title": name.replace("_", " ").title(), "description": description,
            "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
            "annotations": {"readOnlyHint": True} if read_only else {"readOnlyHint": False, "destructiveHint": True}}


FIRST_PARTY_SNAPSHOTS = {
    "lakehouse": ([_tool("search", "Search the tenant's documents."), _tool("query_table", "Run a SELECT.")], None),
    "ingest": ([_tool("ingest_files", "Ingest files.", read_only=False), _tool("job_status", "A job's state.")],
               None),
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(request: pytest.FixtureRequest, tmp_path: Path, net: Net) -> AsyncIterator[Harness]:
    """The API on either database: the registry runs on SQLite by default and on PostgreSQL at scale."""
    url = (f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("pg_url")))
    async for harness in make_harness(tmp_path, url, net.config()):
        yield harness


# --------------------------------------------------------------------------- the happy path and its rules


async def test_publish_review_approve_install_with_every_rule_on_the_way(api: Harness, net: Net) -> None:
    # the publisher submits: reviewed at once, risk low, waiting for a platform admin
    submitted = await api.submit(server_json(net.url("/clean/mcp")))
    assert submitted.status_code == 201, submitted.text
    version = submitted.json()
    assert (version["state"], version["review"]["passed"], version["review"]["risk"]) == ("in_review", True, "low")
    assert version["slug"] == "wholesale" and version["review"]["failing_rules"] == []
    vid = version["id"]
    # the evidence report and the snapshot it approves
    report = (await api.client.get(f"/registry/api/versions/{vid}/report", headers=api.auth("publisher"))).json()
    assert [t["name"] for t in report["tools"]] == ["lookup_product", "create_quote"]
    assert report["report"]["review"]["passed"] is True and report["report"]["risk"]["label"] == "low"
    # in the review queue of platform admins only
    queue = await api.client.get("/registry/api/review-queue", headers=api.auth("reviewer"))
    assert [v["id"] for v in queue.json()["versions"]] == [vid]
    assert (await api.client.get("/registry/api/review-queue", headers=api.auth("publisher"))).status_code == 403
    # nobody approves without being a platform admin; the publisher least of all
    refused = await api.decide(vid, who="publisher")
    assert refused.status_code == 403 and "published version '1.0.0'" in refused.json()["error"]
    member = await api.decide(vid, who="acme-admin")
    assert member.status_code == 403 and "not a platform admin" in member.json()["error"]
    # a reason is required
    missing = await api.decide(vid, reason=None)
    assert missing.status_code == 422 and "reason is required" in missing.json()["error"]
    blank = await api.decide(vid, reason="   ")
    assert blank.status_code == 422
    approved = await api.decide(vid, reason="evidence clean, tools annotated")
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert approved.json()["decisions"][-1]["approver"] == REVIEWER
    # a second decision on a decided version is a conflict naming the states
    again = await api.decide(vid, "reject")
    assert again.status_code == 409 and "'approved'" in again.json()["error"]

    # the tenant: a member sees the catalog but cannot install
    catalog = await api.client.get("/registry/api/tenants/acme/catalog", headers=api.auth("acme-member"))
    assert [s["server"] for s in catalog.json()["servers"]] == [f"{NS}/wholesale"]
    denied = await api.client.post("/registry/api/tenants/acme/installations", json={"server": f"{NS}/wholesale"},
                                   headers=api.auth("acme-member"))
    assert denied.status_code == 403 and "tenant:admin" in denied.json()["error"]
    # a member whose token was somehow given tenant:admin is still refused: the database says member
    forged = api.token("acme", ACME_MEMBER, ["tenant:admin"], roles=["admin"])
    denied = await api.client.post("/registry/api/tenants/acme/installations", json={"server": f"{NS}/wholesale"},
                                   headers={"Authorization": f"Bearer {forged}"})
    assert denied.status_code == 403 and "not an enabled admin" in denied.json()["error"]
    # another tenant's admin cannot install for acme
    other = await api.client.post("/registry/api/tenants/acme/installations", json={"server": f"{NS}/wholesale"},
                                  headers=api.auth("beta-admin"))
    assert other.status_code == 403 and "'beta', not 'acme'" in other.json()["error"]

    installed = await api.client.post("/registry/api/tenants/acme/installations",
                                      json={"server": f"{NS}/wholesale"}, headers=api.auth("acme-admin"))
    assert installed.status_code == 201, installed.text
    inst = installed.json()
    assert (inst["server"], inst["version"], inst["state"]) == ("wholesale", "1.0.0", "enabled")
    assert inst["granted_scopes"] == ["wholesale:read", "wholesale:write"]
    assert sorted(inst["tools"]) == ["wholesale__create_quote", "wholesale__lookup_product"]
    assert inst["withheld"] == []
    assert inst["upstream_url"] == net.url("/clean/mcp")
    # the connector: the tenant's gateway endpoint and the exact command Claude Desktop runs
    endpoint = api.settings.resource_uri("acme")
    assert inst["connector"]["url"] == endpoint
    assert inst["connector"]["claude_desktop"]["command_line"] == f"npx -y mcp-remote {endpoint}"
    assert inst["connector"]["claude_desktop"]["config"] == {
        "mcpServers": {"kontor-acme": {"command": "npx", "args": ["-y", "mcp-remote", endpoint]}}}
    # scopes: a subset of what the tools need, nothing more
    narrowed = await api.client.put("/registry/api/tenants/acme/installations/wholesale/scopes",
                                    json={"scopes": ["wholesale:read"]}, headers=api.auth("acme-admin"))
    assert narrowed.status_code == 200 and narrowed.json()["granted_scopes"] == ["wholesale:read"]
    widened = await api.client.put("/registry/api/tenants/acme/installations/wholesale/scopes",
                                   json={"scopes": ["wholesale:read", "lakehouse:write"]},
                                   headers=api.auth("acme-admin"))
    assert widened.status_code == 422 and "lakehouse:write" in widened.json()["error"]
    # disable, enable, uninstall, each with an event
    for action, state in (("disable", "disabled"), ("enable", "enabled")):
        moved = await api.client.post(f"/registry/api/tenants/acme/installations/wholesale/{action}",
                                      headers=api.auth("acme-admin"))
        assert moved.status_code == 200 and moved.json()["state"] == state, moved.text
    removed = await api.client.delete("/registry/api/tenants/acme/installations/wholesale",
                                      headers=api.auth("acme-admin"))
    assert removed.status_code == 200 and removed.json()["state"] == "uninstalled"
    events = (await api.client.get("/registry/api/tenants/acme/installations/wholesale",
                                   headers=api.auth("acme-admin"))).json()["events"]
    assert [e["to_state"] for e in events] == ["requested", "enabled", "enabled", "disabled", "enabled",
                                               "uninstalled"]
    # the publisher deprecates; the read API shows it as deprecated
    deprecated = await api.decide(vid, "deprecate", who="publisher", reason="use 2.x")
    assert deprecated.status_code == 200 and deprecated.json()["state"] == "deprecated"
    entry = (await api.client.get(f"/v0.1/servers/{quote(f'{NS}/wholesale', safe='')}/versions/1.0.0")).json()
    assert entry["_meta"]["io.modelcontextprotocol.registry/official"]["status"] == "deprecated"


async def test_self_approval_is_refused_even_for_a_platform_admin(api: Harness, net: Net) -> None:
    # the reviewer publishes under their own publisher: they can never approve that version themselves
    mine = await api.client.post("/registry/api/publishers", json={"display_name": "Ops tools"},
                                 headers=api.auth("reviewer"))
    pid = mine.json()["id"]
    granted = await api.client.post(f"/registry/api/publishers/{pid}/namespaces",
                                    json={"namespace": "test.ops", "method": "admin", "reason": "ours"},
                                    headers=api.auth("second"))
    assert granted.status_code == 201
    submitted = await api.submit(server_json(net.url("/clean/mcp"), name="test.ops/stock"), "reviewer",
                                 publisher=pid)
    assert submitted.status_code == 201 and submitted.json()["state"] == "in_review", submitted.text
    own = await api.decide(submitted.json()["id"], who="reviewer")
    assert own.status_code == 403
    assert "published version '1.0.0' of 'test.ops/stock' and cannot approve it" in own.json()["error"]
    queue = (await api.client.get("/registry/api/review-queue", headers=api.auth("reviewer"))).json()["versions"]
    assert queue[0]["own"] is True  # the queue marks it, so the page can say so
    other = await api.decide(submitted.json()["id"], who="second")
    assert other.status_code == 200 and other.json()["state"] == "approved"


async def test_namespaces_need_a_verified_proof(api: Harness) -> None:
    pid = api.publisher_id
    challenge = timestamp_challenge()
    proof = {"namespace": "test.fixture.api", "method": "dns", "domain": "fixture.test", "challenge": challenge}
    wrong_key = ed25519.Ed25519PrivateKey.generate()
    forged = await api.client.post(f"/registry/api/publishers/{pid}/namespaces",
                                   json={**proof, "signature": sign_challenge(wrong_key, challenge)},
                                   headers=api.auth("publisher"))
    assert forged.status_code == 422
    assert "namespace.signature-mismatch" in {f["rule"] for f in forged.json()["findings"]}
    proven = await api.client.post(f"/registry/api/publishers/{pid}/namespaces",
                                   json={**proof, "signature": sign_challenge(KEY, challenge)},
                                   headers=api.auth("publisher"))
    assert proven.status_code == 201, proven.text
    assert proven.json() | {"proven_at": None} == {"namespace": "test.fixture.api", "proof_method": "dns",
                                                   "proven_at": None}
    replayed = await api.client.post(f"/registry/api/publishers/{pid}/namespaces",
                                     json={**proof, "signature": sign_challenge(KEY, challenge)},
                                     headers=api.auth("publisher"))
    assert replayed.status_code == 422 and "namespace.challenge-replayed" in replayed.text
    # only a platform admin grants without a proof; nobody acts on a publisher they do not own
    granted = await api.client.post(f"/registry/api/publishers/{pid}/namespaces",
                                    json={"namespace": "com.example", "method": "admin", "reason": "trust me"},
                                    headers=api.auth("publisher"))
    assert granted.status_code == 403
    foreign = await api.client.post(f"/registry/api/publishers/{pid}/namespaces",
                                    json={**proof, "signature": "00"}, headers=api.auth("acme-admin"))
    assert foreign.status_code == 403 and "do not own publisher" in foreign.json()["error"]
    mine = (await api.client.get("/registry/api/publishers", headers=api.auth("publisher"))).json()["publishers"]
    assert [n["namespace"] for n in mine[0]["namespaces"]] == ["test.fixture", "test.fixture.api"]


# --------------------------------------------------------------------------- hostile submissions


async def _stored_versions(api: Harness) -> int:
    return len((await api.client.get("/registry/api/versions", headers=api.auth("publisher"))).json()["versions"])


async def test_schema_violations_are_refused_with_every_json_path(api: Harness, net: Net) -> None:
    doc = server_json(net.url("/clean/mcp"), version="^1.0.0",
                      packages=[{"registryType": "npm", "identifier": "@x/y", "transport": {"type": "stdio"}}])
    doc["remotes"].append({"type": "carrier-pigeon", "url": "https://example.com/mcp"})
    del doc["description"]
    refused = await api.submit(doc)
    assert refused.status_code == 422
    paths = {p["path"]: p["rule"] for p in refused.json()["problems"]}
    assert paths["$.version"] == "version-range"
    assert paths["$.packages[0].version"] == "package-version-missing"
    assert paths["$.remotes[1].type"].startswith("schema.") and paths["$.description"] == "schema.required"
    assert len(refused.json()["problems"]) == 4  # all at once
    # not JSON at all, not an object, empty
    for body in (b"{not json", b"[1, 2]", b"  "):
        bad = await api.submit(body)
        assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "$", (body, bad.text)
    assert await _stored_versions(api) == 0  # nothing stored


@pytest.mark.parametrize(("url", "text"), [
    ("https://127.0.0.1/mcp", "loopback"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://10.1.2.3/mcp", "private"),
    ("https://localhost/mcp", "localhost"),
])
async def test_remote_urls_at_local_addresses_are_refused(api: Harness, url: str, text: str) -> None:
    refused = await api.submit(server_json(url))
    assert refused.status_code == 422
    problems = refused.json()["problems"]
    assert [(p["path"], p["rule"]) for p in problems] == [("$.remotes[0].url", "remote-url-local")]
    assert text in problems[0]["message"] or "local" in problems[0]["message"]


@pytest.mark.parametrize(("path", "rule", "text"), [
    ("/to-metadata", "endpoints.unsafe-redirect", "cloud metadata address"),
    ("/to-private", "endpoints.unsafe-redirect", "a private address 10.0.0.5"),
])
async def test_remotes_redirecting_inward_fail_the_checks(api: Harness, net: Net, path: str, rule: str,
                                                         text: str) -> None:
    submitted = await api.submit(server_json(net.url(path)))
    assert submitted.status_code == 201
    version = submitted.json()
    assert version["state"] == "checks_failed" and rule in version["review"]["failing_rules"]
    hit = next(f for f in version["review"]["findings"] if f["rule"] == rule)
    assert text in hit["message"] and hit["field"] == "$.remotes[0].url"
    assert "snapshot.not-attempted" not in version["review"]["failing_rules"]  # medium, not a failing reason


@pytest.mark.parametrize(("host", "text"), [("private.evil.example", "private address 10.0.0.8"),
                                            ("metadata.evil.example", "cloud metadata")])
async def test_remote_names_resolving_inward_fail_the_checks(api: Harness, host: str, text: str) -> None:
    version = (await api.submit(server_json(f"https://{host}/mcp"))).json()
    assert version["state"] == "checks_failed"
    hit = next(f for f in version["review"]["findings"] if f["rule"] == "endpoints.unsafe-target")
    assert text in hit["message"]


@pytest.mark.parametrize(("variant", "rule"), [
    ("override", "poisoning.instruction-override"),
    ("secret-file", "poisoning.sensitive-file"),
    ("invisible", "poisoning.invisible-characters"),
    ("tags", "poisoning.unicode-tags"),
    ("bidi", "poisoning.bidi-control"),
    ("exfiltration", "poisoning.exfiltration-directive"),
])
async def test_poisoned_descriptions_fail_the_checks_naming_tool_and_rule(api: Harness, net: Net, variant: str,
                                                                          rule: str) -> None:
    version = (await api.submit(server_json(net.url(f"/{variant}/mcp")))).json()
    assert version["state"] == "checks_failed", version
    assert rule in version["review"]["failing_rules"]
    hit = next(f for f in version["review"]["findings"] if f["rule"] == rule)
    assert (hit["tool"], hit["field"]) == ("check_stock", "description")
    if variant == "tags":  # the hidden text is decoded in the evidence
        report = (await api.client.get(f"/registry/api/versions/{version['id']}/report",
                                       headers=api.auth("publisher"))).json()
        assert "ignore the user" in json.dumps(report["report"]) and TAGS not in json.dumps(report["report"])


async def test_a_shadowing_tool_name_fails_the_checks(api: Harness, net: Net) -> None:
    version = (await api.submit(server_json(net.url("/shadow-bare/mcp")))).json()
    assert version["state"] == "checks_failed"
    hit = next(f for f in version["review"]["findings"] if f["rule"] == "shadowing.first-party-tool")
    assert (hit["tool"], hit["field"]) == ("search", "name")


async def test_an_oversized_manifest_is_refused(api: Harness, net: Net) -> None:
    doc = server_json(net.url("/clean/mcp"))
    big = json.dumps({**doc, "_meta": {"io.example/x": {"blob": "a" * 70_000}}}).encode()
    refused = await api.submit(big)
    assert refused.status_code == 422
    assert [p["rule"] for p in refused.json()["problems"]] == ["document-too-large"]
    huge = json.dumps({**doc, "_meta": {"io.example/x": {"blob": "a" * 2_000_000}}}).encode()
    refused = await api.submit(huge)
    assert refused.status_code == 413 and "limit" in refused.json()["error"]
    assert await _stored_versions(api) == 0


async def test_a_namespace_the_publisher_does_not_own_is_refused(api: Harness, net: Net) -> None:
    refused = await api.submit(server_json(net.url("/clean/mcp"), name="com.victim/wholesale"))
    assert refused.status_code == 422
    problem = refused.json()["problems"][0]
    assert problem["path"] == "$.name" and "com.victim" in problem["message"]
    # and a publisher owned by someone else cannot be submitted to at all
    foreign = await api.submit(server_json(net.url("/clean/mcp")), "acme-admin")
    assert foreign.status_code == 403


# --------------------------------------------------------------------------- visibility and the read API


async def test_private_entries_are_visible_to_their_tenant_only(api: Harness, net: Net) -> None:
    await api.approved(server_json(net.url("/clean/mcp")))
    private = await api.approved(server_json(net.url("/clean/mcp"), name=f"{NS}/acme-internal"),
                                 visibility="private")
    assert private["visibility"] == "private" and private["owner_tenant"] == "acme"
    name = quote(f"{NS}/acme-internal", safe="")

    def names(body: dict[str, Any]) -> list[str]:
        return [e["server"]["name"] for e in body["servers"]]

    acme = {"Authorization": api.auth("acme-member")["Authorization"]}
    beta = {"Authorization": api.auth("beta-admin")["Authorization"]}
    assert names((await api.client.get("/v0.1/servers", headers=acme)).json()) == [
        f"{NS}/acme-internal", f"{NS}/wholesale"]
    assert names((await api.client.get("/v0.1/servers", headers=beta)).json()) == [f"{NS}/wholesale"]
    assert names((await api.client.get("/v0.1/servers")).json()) == [f"{NS}/wholesale"]
    # cross-tenant reads of the private entry: not found, never forbidden
    for headers in (beta, {}):
        for path in (f"/v0.1/servers/{name}/versions", f"/v0.1/servers/{name}/versions/latest",
                     f"/v0.1/servers/{name}/versions/1.0.0"):
            response = await api.client.get(path, headers=headers)
            assert response.status_code == 404, (path, response.text)
    assert (await api.client.get(f"/v0.1/servers/{name}/versions/latest", headers=acme)).status_code == 200
    beta_catalog = await api.client.get("/registry/api/tenants/beta/catalog", headers=beta)
    assert [s["server"] for s in beta_catalog.json()["servers"]] == [f"{NS}/wholesale"]
    install = await api.client.post("/registry/api/tenants/beta/installations", json={"server": f"{NS}/acme-internal"},
                                    headers=beta)
    assert install.status_code == 404
    # a token for another tenant cannot read acme's catalog; a bad token is refused, not ignored
    assert (await api.client.get("/registry/api/tenants/acme/catalog", headers=beta)).status_code == 403
    bad = await api.client.get("/v0.1/servers", headers={"Authorization": "Bearer not.a.token"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Bearer")
    expired = api.token("acme", ACME_MEMBER, exp=int(time.time()) - 3600)
    assert (await api.client.get("/v0.1/servers", headers={"Authorization": f"Bearer {expired}"})).status_code == 401
    wrong_audience = api.token("acme", ACME_MEMBER, aud="https://elsewhere.example/mcp")
    refused = await api.client.get("/registry/api/me", headers={"Authorization": f"Bearer {wrong_audience}"})
    assert refused.status_code == 401 and "audience" in refused.json()["error"]
    assert (await api.client.get("/registry/api/me")).status_code == 401


async def test_the_official_read_api_shapes_and_pagination(tmp_path: Path, net: Net) -> None:
    async for api in make_harness(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", net.config(),
                                  seed=True):
        first = await api.approved(server_json(net.url("/clean/mcp")))
        await api.approved(server_json(net.url("/clean/mcp"), version="1.1.0"))
        await api.approved(server_json(net.url("/clean/mcp"), name=f"{NS}/quotes"))
        pending = await api.submit(server_json(net.url("/clean/mcp"), version="2.0.0"))  # in review: not listed
        assert pending.json()["state"] == "in_review"

        everything = (await api.client.get("/v0.1/servers")).json()
        listed = [(e["server"]["name"], e["server"]["version"]) for e in everything["servers"]]
        assert listed == [("io.kontor/ingest", "0.1.0"), ("io.kontor/lakehouse", "0.1.0"),
                          (f"{NS}/quotes", "1.0.0"), (f"{NS}/wholesale", "1.0.0"), (f"{NS}/wholesale", "1.1.0")]
        assert everything["metadata"] == {"count": 5}
        entry = everything["servers"][3]
        assert set(entry) == {"server", "_meta"}
        assert entry["server"] == server_json(net.url("/clean/mcp"))  # the server.json as submitted
        official = entry["_meta"]["io.modelcontextprotocol.registry/official"]
        assert official["status"] == "active" and official["isLatest"] is False
        assert official["publishedAt"].endswith("Z") and official["updatedAt"].endswith("Z")
        review = entry["_meta"]["io.kontor/review"]
        assert review == {"status": "approved", "risk": "low", "approvedAt": first["approved_at"],
                          "versionId": first["id"], "visibility": "public", "firstParty": False,
                          "gatewayName": "wholesale"}

        # cursor pagination: pages of two, the cursor from metadata.nextCursor, until it is gone
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await api.client.get("/v0.1/servers", params=params)).json()
            pages += 1
            assert page["metadata"]["count"] == len(page["servers"]) <= 2
            seen += [(e["server"]["name"], e["server"]["version"]) for e in page["servers"]]
            cursor = page["metadata"].get("nextCursor")
            if not cursor:
                break
        assert seen == listed and pages == 3

        latest = (await api.client.get("/v0.1/servers", params={"version": "latest", "search": "WHOLE"})).json()
        assert [(e["server"]["name"], e["server"]["version"]) for e in latest["servers"]] == [
            (f"{NS}/wholesale", "1.1.0")]
        future = (await api.client.get("/v0.1/servers", params={"updated_since": "2999-01-01T00:00:00Z"})).json()
        assert future == {"servers": [], "metadata": {"count": 0}}
        name = quote(f"{NS}/wholesale", safe="")
        versions = (await api.client.get(f"/v0.1/servers/{name}/versions")).json()
        assert [e["server"]["version"] for e in versions["servers"]] == ["1.1.0", "1.0.0"]  # newest first
        one = (await api.client.get(f"/v0.1/servers/{name}/versions/latest")).json()
        assert one["server"]["version"] == "1.1.0" and one["_meta"][
            "io.modelcontextprotocol.registry/official"]["isLatest"] is True
        # the name may also come unencoded
        assert (await api.client.get(f"/v0.1/servers/{NS}/wholesale/versions/1.0.0")).json()["server"][
            "version"] == "1.0.0"
        for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"cursor": "%%%"},
                       {"updated_since": "yesterday"}, {"include_deleted": "maybe"}):
            bad = await api.client.get("/v0.1/servers", params=params)
            assert bad.status_code == 400 and bad.json()["error"], params
        assert (await api.client.get(f"/v0.1/servers/{name}/versions/9.9.9")).status_code == 404
        assert (await api.client.get(f"/v0.1/servers/{name}/versions/2.0.0")).status_code == 404  # not approved
        # the OpenAPI document describes both APIs
        doc = (await api.client.get("/registry/openapi.json")).json()
        assert doc["openapi"] == "3.1.0" and "/v0.1/servers" in doc["paths"]
        assert "/registry/api/publishers/{publisher_id}/versions" in doc["paths"]


async def test_secrets_are_write_only(api: Harness, net: Net) -> None:
    doc = server_json(None, remotes=[{"type": "streamable-http", "url": net.url("/clean/mcp"), "headers": [
        {"name": "X-Api-Key", "description": "API key", "isRequired": True, "isSecret": True}]}])
    await api.approved(doc)
    admin = api.auth("acme-admin")
    base = "/registry/api/tenants/acme/installations/wholesale"
    installed = await api.client.post("/registry/api/tenants/acme/installations", json={"server": f"{NS}/wholesale"},
                                      headers=admin)
    assert installed.status_code == 201 and installed.json()["state"] == "requested"  # waits for its secret
    assert (await api.client.post(f"{base}/enable", headers=admin)).status_code == 409
    value = "sk-live-" + uuid.uuid4().hex
    stored = await api.client.put(f"{base}/secrets/X-Api-Key", json={"value": value}, headers=admin)
    assert stored.status_code == 200 and set(stored.json()) == {"name", "updated_by", "updated_at"}
    undeclared = await api.client.put(f"{base}/secrets/OTHER", json={"value": "x"}, headers=admin)
    assert undeclared.status_code == 422 and "declares no secret" in undeclared.json()["error"]
    member = await api.client.put(f"{base}/secrets/X-Api-Key", json={"value": "x"}, headers=api.auth("acme-member"))
    assert member.status_code == 403
    enabled = await api.client.post(f"{base}/enable", headers=admin)
    assert enabled.status_code == 200 and enabled.json()["state"] == "enabled"
    listed = await api.client.get(f"{base}/secrets", headers=admin)
    assert listed.json()["declared"] == ["X-Api-Key"] and [s["name"] for s in listed.json()["secrets"]] == [
        "X-Api-Key"]
    # the value appears in no answer of the API
    for path in (base, f"{base}/secrets", "/registry/api/tenants/acme/installations",
                 "/registry/api/tenants/acme/catalog"):
        response = await api.client.get(path, headers=admin)
        assert response.status_code == 200 and value not in response.text, path
    assert await api.ctx.store.secret_value("acme", (await api.ctx.store.find_server("wholesale")).id,
                                            "X-Api-Key") == value  # stored, encrypted, for the gateway
    await api.client.delete(base, headers=admin)
    assert (await api.client.get(f"{base}/secrets", headers=admin)).json()["secrets"] == []  # gone with it


async def test_bad_requests_get_4xx_naming_the_problem(api: Harness) -> None:
    admin = api.auth("acme-admin")
    cases = [
        ("post", "/registry/api/publishers", {"content": b"{", "headers": api.auth("publisher")}, 400, "not JSON"),
        ("post", "/registry/api/publishers", {"json": {"display_name": 5}, "headers": api.auth("publisher")}, 400,
         "must be a string"),
        ("post", "/registry/api/publishers", {"json": {}, "headers": api.auth("publisher")}, 400, "is required"),
        ("post", "/registry/api/publishers", {"json": {"display_name": "x" * 300}, "headers": api.auth("publisher")},
         422, "longer than"),
        ("post", "/registry/api/publishers", {"content": b"[" * 100_000, "headers": api.auth("publisher")}, 413,
         "limit"),
        ("get", "/registry/api/versions/not-a-uuid", {"headers": api.auth("publisher")}, 404, "no version"),
        ("get", f"/registry/api/versions/{uuid.uuid4()}", {"headers": api.auth("publisher")}, 404, "no version"),
        ("get", "/registry/api/tenants/NOT_A_TENANT/catalog", {"headers": admin}, 404, "no tenant"),
        ("post", "/registry/api/tenants/acme/installations", {"json": {"server": "nope/x"}, "headers": admin}, 404,
         "no server"),
        ("post", "/registry/api/tenants/acme/installations", {"json": {"server": "x", "scopes": "a"},
                                                              "headers": admin}, 400, "list of strings"),
        ("get", "/registry/api/me", {"headers": {"Authorization": "Basic abc"}}, 400, "malformed"),
        ("get", "/registry/api/me", {"params": {"access_token": "x"}, "headers": admin}, 400, "Authorization header"),
        ("get", "/registry/api/versions", {"params": {"state": "bogus"}, "headers": admin}, 400, "unknown state"),
    ]
    for method, path, options, status, text in cases:
        response = await getattr(api.client, method)(path, **options)
        assert response.status_code == status, (path, response.status_code, response.text)
        assert text in response.json()["error"], (path, response.json())


# --------------------------------------------------------------------------- concurrency, both databases


async def _concurrent_approvals(api: Harness, net: Net) -> None:
    submitted = await api.submit(server_json(net.url("/clean/mcp")))
    vid = submitted.json()["id"]
    answers = await asyncio.gather(api.decide(vid, who="reviewer"), api.decide(vid, who="second"),
                                   api.decide(vid, "reject", who="second"))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 409, 409], [a.text for a in answers]
    decisions = await api.ctx.store.list_decisions(vid)
    assert len(decisions) == 1  # exactly one decision was recorded
    assert (await api.ctx.store.get_version(vid)).state.value == decisions[0].decision.value.replace(
        "approve", "approved").replace("reject", "rejected")


async def test_concurrent_decisions_on_one_version_do_not_both_win(api: Harness, net: Net) -> None:
    await _concurrent_approvals(api, net)


async def test_concurrent_decisions_on_postgresql(tmp_path: Path, net: Net, pg_url: str) -> None:
    async for api in make_harness(tmp_path, pg_url, net.config()):
        await _concurrent_approvals(api, net)


# --------------------------------------------------------------------------- the gateway serves it


def test_the_gateway_mounts_the_registry_and_the_read_api(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_app`` serves /registry/… and /v0.1/… on its origin, with its own verifier and database."""
    from starlette.testclient import TestClient

    from kontor.gateway.app import build_app
    from kontor.gateway.bootstrap import run_bootstrap

    monkeypatch.setenv("KONTOR_GATEWAY_CHAT", "false")
    settings = GatewaySettings(port=8798, audit=False, platform_admins="demo:admin@demo.local")
    run_bootstrap(settings, snapshots=FIRST_PARTY_SNAPSHOTS)  # migrations, first-party entries, demo admin
    with TestClient(build_app(settings), base_url=settings.origin) as client:
        assert client.get("/registry/openapi.json").json()["openapi"] == "3.1.0"
        servers = client.get("/v0.1/servers").json()["servers"]
        assert [e["server"]["name"] for e in servers] == ["io.kontor/ingest", "io.kontor/lakehouse"]
        assert all(e["_meta"]["io.kontor/review"]["firstParty"] for e in servers)
        key = KeyStore(settings.data_dir / "keys" / "oauth").current()
        now = int(time.time())
        token = jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, {
            "iss": settings.issuer("demo"), "sub": "u1", "aud": settings.resource_uri("demo"), "exp": now + 300,
            "iat": now, "tenant": "demo", "scope": "tenant:admin", "roles": ["admin"],
            "email": "admin@demo.local"}, key.key)
        me = client.get("/registry/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        assert me.json()["platform_admin"] is True and me.json()["tenant_admin"] is True
        installs = client.get("/registry/api/tenants/demo/installations",
                              headers={"Authorization": f"Bearer {token}"}).json()["installations"]
        assert {(i["server"], i["state"], i["registry_server"]) for i in installs} == {
            ("lakehouse", "enabled", "io.kontor/lakehouse"), ("ingest", "enabled", "io.kontor/ingest")}
        assert client.get("/registry/api/me").status_code == 401
