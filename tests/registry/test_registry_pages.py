"""The registry's pages (``/registry/…``), in process over ASGI, on a fresh SQLite database per test.

Every HTML answer of every test passes :meth:`Site.inspect`: anti-framing headers, a CSP without
inline scripts, no ``<script>`` element other than the one static script, and none of the hostile
markup the fixtures put into titles and tool descriptions ever appears unescaped.

The automated review is :class:`~tests.registry.test_registry_support.LiveServers` (the real poisoning
and annotation checks over tools the test sets), so no network is needed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from markupsafe import escape
from starlette.applications import Starlette
from starlette.routing import Mount

from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB, InstallationState, Role
from kontor.gateway.oauth.endpoints import LOGIN_FAILED_MESSAGE
from kontor.gateway.oauth.pages import LOCKED_MESSAGE
from kontor.registry.app import PlatformAdmins, RegistryContext, build_registry_app
from kontor.registry.lifecycle import ProofMethod, VersionState
from kontor.registry.migrations import target_metadata
from kontor.registry.pages import LOGIN_COOKIE, SESSION_COOKIE, page_routes
from kontor.registry.service import RegistryService
from kontor.registry.store import RegistryStore, SecretBox, Version
from tests.registry.test_registry_support import (
    ACME_ADMIN,
    ACME_MEMBER,
    BETA_ADMIN,
    NAME,
    PASSWORD,
    PUBLISHER,
    REVIEWER,
    SECOND_REVIEWER,
    WEATHER_TOOLS,
    LiveServers,
    fast_hasher,
    server_json,
    tool,
)

BASE = "http://registry.test"
EVIL = "https://evil.example"
USERS = {"acme-admin": ("acme", ACME_ADMIN), "acme-member": ("acme", ACME_MEMBER), "publisher": ("acme", PUBLISHER),
         "beta-admin": ("beta", BETA_ADMIN), "reviewer": ("ops", REVIEWER), "second": ("ops", SECOND_REVIEWER)}
HOSTILE_TITLE = '<script>alert("title")</script>'
HOSTILE_TOOL = 'Get the forecast. <img src=x onerror=alert(1)><script>alert("tool")</script>'
SECRET = "s3cr3t-VALUE-never-shown-7f3a"
V2_TOOLS = [dict(WEATHER_TOOLS[0], description="Get the 14-day weather forecast for a city."), WEATHER_TOOLS[1],
            tool("get_radar", "Get the rain radar image for a region.")]


def esc(text: str) -> str:
    """As the pages escape (MarkupSafe: ``"`` becomes ``&#34;``)."""
    return str(escape(text))


def field_value(page: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', page)
    assert match, f"no field {name!r} on the page"
    return html.unescape(match.group(1))


@dataclass
class Site:
    db: GatewayDB
    ctx: RegistryContext
    live: LiveServers
    app: Starlette
    publisher_id: Any
    seen: list[str] = field(default_factory=list)

    async def inspect(self, response: httpx.Response) -> None:
        await response.aread()
        text = response.text
        self.seen.append(text)
        if not response.headers.get("content-type", "").startswith("text/html"):
            return
        csp = response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "default-src 'none'" in csp
        for tag in re.findall(r"<script\b[^>]*>", text, flags=re.I):
            assert re.fullmatch(r'<script src="/registry/static/pages\.js" defer>', tag), tag
        lowered = text.lower()
        assert "<script>alert" not in lowered and "<img src=x" not in lowered

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE,
                                 event_hooks={"response": [self.inspect]})

    async def sign_in(self, who: str) -> httpx.AsyncClient:
        tenant, email = USERS[who]
        client = self.client()
        page = await client.get("/registry/login")
        signed = await client.post("/registry/login", data={
            "tenant": tenant, "email": email, "password": PASSWORD, "next": "/registry/",
            "login_token": field_value(page.text, "login_token")})
        assert signed.status_code == 303, signed.text
        return client

    async def submit(self, version: str = "1.0.0", tools: Sequence[dict[str, Any]] = WEATHER_TOOLS, *,
                     name: str = NAME, tenant: str | None = None, **doc: Any) -> Version:
        self.live.serve(name, version, tools)
        return await self.ctx.service.submit(self.publisher_id, server_json(name, version, **doc), PUBLISHER,
                                             tenant=tenant)

    async def approved(self, version: str = "1.0.0", tools: Sequence[dict[str, Any]] = WEATHER_TOOLS,
                       **kwargs: Any) -> Version:
        submitted = await self.submit(version, tools, **kwargs)
        assert submitted.state == VersionState.in_review
        return await self.ctx.service.approve(submitted.id, REVIEWER, "reviewed the evidence")


async def post(client: httpx.AsyncClient, path: str, data: dict[str, Any] | None = None, *,
               csrf_from: str | None = None, token: str | None = None, origin: str | None = BASE,
               **kwargs: Any) -> httpx.Response:
    """A form POST as the page sends it: the CSRF token from ``csrf_from`` (a page path) or ``token``."""
    body = dict(data or {})
    if token is None and csrf_from is not None:
        token = field_value((await client.get(csrf_from)).text, "csrf_token")
    if token is not None:
        body["csrf_token"] = token
    headers = {"origin": origin} if origin else {}
    return await client.post(path, data=body, headers=headers, **kwargs)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    target_metadata()
    db = GatewayDB(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", hasher=fast_hasher(), max_failed_logins=3)
    await db.init()
    for tenant in ("acme", "beta", "ops"):
        await db.create_tenant(tenant)
    for who, (tenant, email) in USERS.items():
        await db.add_user(tenant, email, PASSWORD, Role.admin if who.endswith("-admin") else Role.member)
    store = RegistryStore(db, secret_box=SecretBox.generate())
    live = LiveServers()
    ctx = RegistryContext(settings=GatewaySettings(port=8799), store=store,
                          service=RegistryService(store, live.review, local_urls={}), verifier=None,
                          platform_admins=PlatformAdmins({("ops", REVIEWER), ("ops", SECOND_REVIEWER)}))
    publisher = await store.create_publisher("Weather Inc.", PUBLISHER, owner_tenant="acme")
    await store.add_namespace(publisher.id, "com.example.*", ProofMethod.dns, evidence={"domain": "example.com"},
                              actor=PUBLISHER)
    app = Starlette(routes=[Mount("/registry", app=build_registry_app(lambda: ctx, extra_routes=page_routes()))])
    yield Site(db, ctx, live, app, publisher.id)
    await db.close()


# --------------------------------------------------------------------------- sign-in, sessions, CSRF, headers


async def test_sign_in_refuses_a_wrong_password_honours_the_lockout_and_signs_out(site: Site) -> None:
    async with site.client() as browser:
        away = await browser.get("/registry/catalog?x=1")
        assert away.status_code == 303
        assert away.headers["location"] == "/registry/login?next=%2Fregistry%2Fcatalog%3Fx%3D1"
        page = await browser.get("/registry/login")
        assert page.status_code == 200 and 'name="password" type="password"' in page.text
        pre = page.headers["set-cookie"].lower()
        assert LOGIN_COOKIE in pre and "httponly" in pre and "samesite=strict" in pre and "path=/registry/" in pre
        token = field_value(page.text, "login_token")
        form = {"tenant": "acme", "email": ACME_MEMBER, "login_token": token}

        wrong = await browser.post("/registry/login", data={**form, "password": "not the password"})
        assert wrong.status_code == 401 and esc(LOGIN_FAILED_MESSAGE) in wrong.text
        assert SESSION_COOKIE not in browser.cookies
        unknown = await browser.post("/registry/login", data={**form, "tenant": "nope", "password": PASSWORD})
        assert unknown.status_code == 401 and esc(LOGIN_FAILED_MESSAGE) in unknown.text
        # the sign-in form itself is protected: no sealed token, a token of another browser, a foreign origin
        assert (await browser.post("/registry/login", data={**form, "login_token": "", "password": PASSWORD})
                ).status_code == 403
        async with site.client() as other:
            foreign = field_value((await other.get("/registry/login")).text, "login_token")
        assert (await browser.post("/registry/login", data={**form, "login_token": foreign, "password": PASSWORD})
                ).status_code == 403
        assert (await browser.post("/registry/login", data={**form, "password": PASSWORD},
                                   headers={"origin": EVIL})).status_code == 403
        # a refused form comes back with a fresh token (and pre-sign-in cookie); the page has the current one
        token = field_value((await browser.get("/registry/login")).text, "login_token")
        form["login_token"] = token
        # two more failures lock the account (GatewayDB: 3 here); then even the right password is refused
        for _ in range(2):
            assert (await browser.post("/registry/login", data={**form, "password": "nope"})).status_code == 401
        locked = await browser.post("/registry/login", data={**form, "password": PASSWORD})
        assert locked.status_code == 401 and esc(LOCKED_MESSAGE) in locked.text
        assert SESSION_COOKIE not in browser.cookies

        # the admin signs in and lands where they were going
        admin = {"tenant": "acme", "email": ACME_ADMIN, "password": PASSWORD, "login_token": token,
                 "next": "/registry/catalog?x=1"}
        signed = await browser.post("/registry/login", data=admin, headers={"origin": BASE})
        assert signed.status_code == 303 and signed.headers["location"] == "/registry/catalog?x=1"
        cookie = signed.headers["set-cookie"].lower()
        assert SESSION_COOKIE in cookie and "httponly" in cookie and "samesite=lax" in cookie
        assert "path=/registry/" in cookie
        home = await browser.get("/registry/")
        assert home.status_code == 200 and ACME_ADMIN in home.text and "Installations" in home.text
        # an off-site "next" is never followed
        assert (await browser.get("/registry/login?next=https://evil.example/")).headers["location"] == "/registry/"

        session = browser.cookies[SESSION_COOKIE]
        out = await post(browser, "/registry/logout", csrf_from="/registry/")
        assert out.status_code == 303 and out.headers["location"] == "/registry/login?msg=signed_out"
    async with site.client() as replay:  # the old cookie is worth nothing: the session is gone server-side
        replay.cookies.set(SESSION_COOKIE, session, domain="registry.test", path="/registry/")
        assert (await replay.get("/registry/")).status_code == 303
    # a user disabled after signing in is signed out at the next request
    browser = await site.sign_in("acme-admin")
    assert (await browser.get("/registry/")).status_code == 200
    await site.db.set_disabled("acme", ACME_ADMIN, True)
    assert (await browser.get("/registry/")).status_code == 303
    await browser.aclose()


async def test_forms_need_the_sessions_csrf_token_and_the_own_origin(site: Site) -> None:
    await site.approved("1.0.0")
    admin = await site.sign_in("acme-admin")
    member = await site.sign_in("acme-member")
    detail = f"/registry/catalog/{NAME}"
    install = {"server": NAME, "version": "1.0.0", "scopes": ["weather:read"], "enable": "on"}
    missing = await post(admin, "/registry/install", install)
    assert missing.status_code == 403 and "CSRF" in missing.text
    wrong = await post(admin, "/registry/install", install, token="not-the-token")
    assert wrong.status_code == 403 and "CSRF" in wrong.text
    others = field_value((await member.get("/registry/catalog")).text, "csrf_token")  # another session's token
    assert (await post(admin, "/registry/install", install, token=others)).status_code == 403
    foreign = await post(admin, "/registry/install", install, csrf_from=detail, origin=EVIL)
    assert foreign.status_code == 403 and "another origin" in foreign.text
    null = await post(admin, "/registry/install", install, csrf_from=detail, origin="null")
    assert null.status_code == 403
    token = field_value((await admin.get(detail)).text, "csrf_token")
    cross = await admin.post("/registry/install", data={**install, "csrf_token": token},
                             headers={"sec-fetch-site": "cross-site"})
    assert cross.status_code == 403
    assert await site.ctx.store.get_installation("acme", "weather") is None
    done = await post(admin, "/registry/install", install, token=token)  # the right token from the own origin
    assert done.status_code == 303 and done.headers["location"] == "/registry/installations/weather?msg=installed"
    installed = await site.ctx.store.get_installation("acme", "weather")
    assert installed is not None and installed.granted_scopes == ["weather:read"]
    assert (await post(admin, "/registry/install", install)).status_code == 403  # no token, no second try
    # the static script and stylesheet: same origin, nosniff
    script = await admin.get("/registry/static/pages.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    css = await admin.get("/registry/static/pages.css")
    assert css.headers["content-type"].startswith("text/css") and ".badge" in css.text and "header.site" in css.text
    assert (await admin.get("/registry/static/other.js")).status_code == 404
    for client in (admin, member):
        await client.aclose()


# --------------------------------------------------------------------------- publisher and platform admin


async def test_publisher_submits_sees_every_problem_with_its_path_then_the_checks(site: Site) -> None:
    publisher = await site.sign_in("publisher")
    mine = await publisher.get("/registry/publish")
    assert mine.status_code == 200 and "Weather Inc." in mine.text and "com.example.*" in mine.text
    form = f"/registry/publishers/{site.publisher_id}/submit"
    bad = ('{"$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json", '
           '"name": "org.other/x", "version": "^1.0"}')
    refused = await post(publisher, form, {"server_json": bad, "visibility": "public"}, csrf_from=form)
    assert refused.status_code == 422
    for path in ("$.description", "$.name", "$.version"):
        assert f'<code class="path">{path}</code>' in refused.text
    assert "looks like a version range" in refused.text and "org.other" in refused.text
    assert esc(bad) in refused.text  # the text comes back for fixing
    # the same as a file upload; a broken file names the place it breaks
    uploaded = await post(publisher, form, {"visibility": "public"}, csrf_from=form,
                          files={"file": ("server.json", b'{"name": ', "application/json")})
    assert uploaded.status_code == 422 and '<code class="path">$</code>' in uploaded.text
    assert "invalid JSON at line 1" in uploaded.text and "server.json" in uploaded.text
    assert not await site.ctx.store.list_versions()

    site.live.serve(NAME, "1.0.0", [dict(WEATHER_TOOLS[0], description=HOSTILE_TOOL), *WEATHER_TOOLS[1:]])
    good = server_json(NAME, "1.0.0", title=HOSTILE_TITLE)
    submitted = await post(publisher, form, {"visibility": "public"}, csrf_from=form,
                           files={"file": ("server.json", good, "application/json")})
    assert submitted.status_code == 303, submitted.text
    (version,) = await site.ctx.store.list_versions()
    assert submitted.headers["location"] == f"/registry/versions/{version.id}?msg=submitted"
    assert version.server_json_bytes == good  # stored verbatim
    page = await publisher.get(submitted.headers["location"])
    assert page.status_code == 200 and "in review" in page.text and "Tool poisoning" in page.text
    assert "Annotation policy" in page.text and "get_forecast" in page.text
    assert esc(HOSTILE_TITLE) in page.text and esc(HOSTILE_TOOL) in page.text
    # the publisher neither sees the review queue nor decides on their own version
    assert (await publisher.get("/registry/review")).status_code == 403
    assert 'name="decision"' not in page.text
    forged = await post(publisher, f"/registry/versions/{version.id}/decide",
                        {"decision": "approve", "reason": "looks great"}, token=field_value(page.text, "csrf_token"))
    assert forged.status_code == 403 and "published version" in forged.text
    assert (await site.ctx.store.get_version(version.id)).state == VersionState.in_review
    # nobody else reads the version
    member = await site.sign_in("acme-member")
    assert (await member.get(f"/registry/versions/{version.id}")).status_code == 404
    # approved, the publisher deprecates it with a reason
    await site.ctx.service.approve(version.id, REVIEWER, "fine")
    again = await post(publisher, f"/registry/versions/{version.id}/decide", {"decision": "deprecate", "reason": ""},
                       csrf_from=f"/registry/versions/{version.id}")
    assert again.status_code == 422 and "a reason is required" in again.text
    deprecated = await post(publisher, f"/registry/versions/{version.id}/decide",
                            {"decision": "deprecate", "reason": "use 2.x"},
                            csrf_from=f"/registry/versions/{version.id}")
    assert deprecated.status_code == 303
    assert (await site.ctx.store.get_version(version.id)).state == VersionState.deprecated
    for client in (publisher, member):
        await client.aclose()


async def test_platform_admin_reviews_the_evidence_and_the_diff_and_decides_with_a_reason(site: Site) -> None:
    v1 = await site.approved("1.0.0")
    v2 = await site.submit("2.0.0", V2_TOOLS, title=HOSTILE_TITLE)
    reviewer = await site.sign_in("reviewer")
    member = await site.sign_in("acme-member")
    assert (await member.get("/registry/review")).status_code == 403
    queue = await reviewer.get("/registry/review")
    assert queue.status_code == 200 and f"/registry/versions/{v2.id}" in queue.text
    assert esc(HOSTILE_TITLE) in queue.text and "risk low" in queue.text
    page = await reviewer.get(f"/registry/versions/{v2.id}")
    assert "Tool definitions against the previously approved version" in page.text
    assert f'href="/registry/versions/{v1.id}"' in page.text  # the version it is compared with
    diff = page.text.split('id="tool-diff"', 1)[1]
    assert "get_radar" in diff and "set_alert" in diff and "14-day" in diff and "1 changed" in diff
    assert "− weather:write" in diff
    # the evidence report: its one inline style allowed by hash, no script
    report = await reviewer.get(f"/registry/versions/{v2.id}/report")
    assert report.status_code == 200 and "automated review" in report.text and "get_radar" in report.text
    style = re.search(r"<style>(.*?)</style>", report.text, flags=re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in report.headers["content-security-policy"]

    decide = f"/registry/versions/{v2.id}/decide"
    empty = await post(reviewer, decide, {"decision": "approve", "reason": "  "},
                       csrf_from=f"/registry/versions/{v2.id}")
    assert empty.status_code == 422 and "a reason is required" in empty.text and 'role="alert"' in empty.text
    assert (await site.ctx.store.get_version(v2.id)).state == VersionState.in_review
    approved = await post(reviewer, decide, {"decision": "approve", "reason": "evidence <b>clean</b>, scopes fine"},
                          csrf_from=f"/registry/versions/{v2.id}")
    assert approved.status_code == 303 and approved.headers["location"].endswith("?msg=decided")
    shown = await reviewer.get(approved.headers["location"])
    assert "The decision was recorded." in shown.text and "evidence &lt;b&gt;clean&lt;/b&gt;, scopes fine" in shown.text
    assert (await site.ctx.store.get_version(v2.id)).state == VersionState.approved
    # a second decision on a decided version is refused on the page
    late = await post(reviewer, decide, {"decision": "reject", "reason": "too late"},
                      csrf_from=f"/registry/versions/{v2.id}")
    assert late.status_code == 409 and "from &#39;approved&#39; to &#39;rejected&#39;" in late.text
    # revoke the old version
    revoked = await post(reviewer, f"/registry/versions/{v1.id}/decide", {"decision": "revoke", "reason": "CVE"},
                         csrf_from=f"/registry/versions/{v1.id}")
    assert revoked.status_code == 303 and (await site.ctx.store.get_version(v1.id)).state == VersionState.revoked

    # a platform admin who publishes may not approve their own version
    created = await post(reviewer, "/registry/publishers", {"display_name": "Ops Tools"}, csrf_from="/registry/publish")
    assert created.status_code == 303
    (own,) = [p for p in await site.ctx.store.list_publishers(owner=REVIEWER)]
    await site.ctx.store.add_namespace(own.id, "org.ops", ProofMethod.admin, evidence={}, actor=SECOND_REVIEWER)
    site.live.serve("org.ops/tools", "1.0.0", [tool("ops_status", "The status of the operations team.")])
    form = f"/registry/publishers/{own.id}/submit"
    sent = await post(reviewer, form, {"server_json": server_json("org.ops/tools", "1.0.0").decode(),
                                       "visibility": "public"}, csrf_from=form)
    assert sent.status_code == 303
    mine = await reviewer.get(sent.headers["location"])
    assert "You published this version" in mine.text and 'name="decision"' not in mine.text
    own_id = sent.headers["location"].split("/")[-1].split("?")[0]
    refused = await post(reviewer, f"/registry/versions/{own_id}/decide", {"decision": "approve", "reason": "ok"},
                         token=field_value(mine.text, "csrf_token"))
    assert refused.status_code == 403 and "published version" in refused.text
    assert (await site.ctx.store.get_version(own_id)).state == VersionState.in_review
    second = await site.sign_in("second")
    ok = await post(second, f"/registry/versions/{own_id}/decide", {"decision": "approve", "reason": "checked"},
                    csrf_from=f"/registry/versions/{own_id}")
    assert ok.status_code == 303 and (await site.ctx.store.get_version(own_id)).state == VersionState.approved
    for client in (reviewer, member, second):
        await client.aclose()


# --------------------------------------------------------------------------- tenant admin


async def test_tenant_admin_installs_upgrades_after_the_diff_and_secrets_never_show_again(site: Site) -> None:
    await site.approved("1.0.0", [dict(WEATHER_TOOLS[0], description=HOSTILE_TOOL), *WEATHER_TOOLS[1:]],
                        secret_header=True, title=HOSTILE_TITLE)
    member = await site.sign_in("acme-member")
    admin = await site.sign_in("acme-admin")
    # a member sees the catalog, but installs nothing and manages nothing
    catalog = await member.get("/registry/catalog")
    assert catalog.status_code == 200 and esc(HOSTILE_TITLE) in catalog.text
    detail = await member.get(f"/registry/catalog/{NAME}")
    assert "Only an admin of tenant acme can install" in detail.text and 'action="/registry/install"' not in detail.text
    denied = await post(member, "/registry/install", {"server": NAME, "scopes": ["weather:read"]},
                        token=field_value(detail.text, "csrf_token"))
    assert denied.status_code == 403 and "Only an admin of tenant" in denied.text
    assert (await member.get("/registry/installations")).status_code == 403
    assert await site.ctx.store.get_installation("acme", "weather") is None

    detail = await admin.get(f"/registry/catalog/{NAME}")
    assert esc(HOSTILE_TOOL) in detail.text and "X-Api-Key" in detail.text
    assert 'value="weather:read" checked' in detail.text and 'value="weather:write" checked' in detail.text
    installed = await post(admin, "/registry/install", {"server": NAME, "version": "1.0.0", "scopes": ["weather:read"],
                                                        "enable": "on"}, token=field_value(detail.text, "csrf_token"))
    assert installed.status_code == 303
    page = await admin.get("/registry/installations/weather")
    assert "requested" in page.text and "not set" in page.text  # waiting for its secret
    inst = await site.ctx.store.get_installation("acme", "weather")
    assert inst is not None and inst.state == InstallationState.requested and inst.granted_scopes == ["weather:read"]
    # the connector and the exact command, before anything runs
    endpoint = site.ctx.settings.resource_uri("acme")
    assert f"npx -y mcp-remote {endpoint}" in page.text
    connect = await admin.get("/registry/connect")
    assert f"<pre id=\"connector-url\">{endpoint}</pre>" in connect.text
    assert f"npx -y mcp-remote {endpoint}" in connect.text and "&#34;mcp-remote&#34;" in connect.text

    # the secret: write-only
    saved = await post(admin, "/registry/installations/weather/secrets", {"name": "X-Api-Key", "value": SECRET,
                                                                         "action": "set"},
                       csrf_from="/registry/installations/weather")
    assert saved.status_code == 303 and saved.headers["location"].endswith("msg=secret_saved")
    page = await admin.get(saved.headers["location"])
    assert "never shown again" in page.text and "Set " in page.text
    assert await site.ctx.store.secret_value("acme", (await site.ctx.store.find_server(NAME)).id,
                                             "X-Api-Key") == SECRET
    undeclared = await post(admin, "/registry/installations/weather/secrets",
                            {"name": "Other", "value": SECRET, "action": "set"},
                            csrf_from="/registry/installations/weather")
    assert undeclared.status_code == 422 and "declares no secret" in undeclared.text
    enabled = await post(admin, "/registry/installations/weather/enable", csrf_from="/registry/installations/weather")
    assert enabled.status_code == 303
    assert (await site.ctx.store.get_installation("acme", "weather")).state == InstallationState.enabled

    # a new approved version never replaces the installed one: the admin looks at the diff first
    await site.approved("2.0.0", V2_TOOLS, secret_header=True)
    page = await admin.get("/registry/installations/weather")
    assert "Version 2.0.0 is approved" in page.text
    assert "2.0.0 available" in (await admin.get("/registry/catalog")).text
    preview = await admin.get("/registry/installations/weather/upgrade")
    assert preview.status_code == 200 and "1.0.0 → 2.0.0" in preview.text
    facts = preview.text.split('id="tool-diff"', 1)[0]
    assert "<code>get_radar</code>" in facts and "<code>set_alert</code>" in facts
    assert "<code>get_forecast</code> (description)" in facts and "− weather:write" in facts
    assert "14-day" in preview.text
    stale = await post(admin, "/registry/installations/weather/upgrade",
                       {"to_version": "2.0.0", "expected": "0" * 64, "scopes": ["weather:read"]},
                       token=field_value(preview.text, "csrf_token"))
    assert stale.status_code == 409 and "changed since" in stale.text and "1.0.0 → 2.0.0" in stale.text
    assert (await site.ctx.store.get_installation("acme", "weather")).version == "1.0.0"
    upgraded = await post(admin, "/registry/installations/weather/upgrade",
                          {"to_version": "2.0.0", "expected": field_value(preview.text, "expected"),
                           "scopes": ["weather:read"]}, token=field_value(preview.text, "csrf_token"))
    assert upgraded.status_code == 303 and upgraded.headers["location"].endswith("msg=upgraded")
    inst = await site.ctx.store.get_installation("acme", "weather")
    assert (inst.version, inst.state, inst.granted_scopes) == ("2.0.0", InstallationState.enabled, ["weather:read"])

    # scopes: only what the version's tools need
    wider = await post(admin, "/registry/installations/weather/scopes", {"scopes": ["weather:write"]},
                       csrf_from="/registry/installations/weather")
    assert wider.status_code == 422 and "not needed" in wider.text
    none = await post(admin, "/registry/installations/weather/scopes", {}, csrf_from="/registry/installations/weather")
    assert none.status_code == 303
    assert (await site.ctx.store.get_installation("acme", "weather")).granted_scopes == []

    # disable and uninstall, each after a confirm page
    confirm = await admin.get("/registry/installations/weather/disable")
    assert confirm.status_code == 200 and "Disable weather?" in confirm.text
    assert (await post(admin, "/registry/installations/weather/disable", {"reason": "holiday"},
                       token=field_value(confirm.text, "csrf_token"))).status_code == 303
    assert (await site.ctx.store.get_installation("acme", "weather")).state == InstallationState.disabled
    confirm = await admin.get("/registry/installations/weather/uninstall")
    assert "every secret stored for it" in confirm.text
    assert (await post(admin, "/registry/installations/weather/uninstall",
                       token=field_value(confirm.text, "csrf_token"))).status_code == 303
    assert (await site.ctx.store.get_installation("acme", "weather")).state == InstallationState.uninstalled
    assert await site.ctx.store.list_secrets("acme") == []
    listing = await admin.get("/registry/installations")
    assert "uninstalled" in listing.text

    assert site.seen and not any(SECRET in text for text in site.seen)  # never in any answer
    for client in (member, admin):
        await client.aclose()


async def test_another_tenants_private_server_is_not_found(site: Site) -> None:
    private = "com.example/beta-internal"
    await site.approved("1.0.0", name=private, tenant="beta")
    await site.approved("1.0.0")
    acme = await site.sign_in("acme-admin")
    beta = await site.sign_in("beta-admin")
    listed = await acme.get("/registry/catalog")
    assert NAME in listed.text and private not in listed.text
    assert (await acme.get(f"/registry/catalog/{private}")).status_code == 404
    assert (await acme.get("/registry/catalog/beta-internal")).status_code == 404
    refused = await post(acme, "/registry/install", {"server": private, "scopes": []}, csrf_from="/registry/catalog")
    assert refused.status_code == 404 and await site.ctx.store.get_installation("acme", "beta-internal") is None
    assert (await acme.get("/registry/installations/beta-internal")).status_code == 404
    assert (await acme.get("/registry/installations/beta-internal/upgrade")).status_code == 404
    # its own tenant sees and installs it
    assert private in (await beta.get("/registry/catalog")).text
    own = await post(beta, "/registry/install", {"server": private, "scopes": ["beta-internal:read"], "enable": "on"},
                     csrf_from=f"/registry/catalog/{private}")
    assert own.status_code == 303
    # and an acme admin cannot reach beta's installation pages either: the tenant is the session's
    assert (await acme.get("/registry/installations/beta-internal")).status_code == 404
    assert (await acme.get("/registry/versions/not-a-uuid")).status_code == 404
    for client in (acme, beta):
        await client.aclose()


# --------------------------------------------------------------------------- on the gateway


def test_the_gateway_serves_the_pages_behind_its_own_sign_in(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_app`` mounts the pages on its origin: the dev admin signs in with the gateway's password."""
    from starlette.testclient import TestClient

    from kontor.gateway.app import build_app
    from kontor.gateway.bootstrap import run_bootstrap
    from tests.registry.test_registry_api import FIRST_PARTY_SNAPSHOTS

    monkeypatch.setenv("KONTOR_GATEWAY_CHAT", "false")
    settings = GatewaySettings(port=8797, audit=False, platform_admins="demo:admin@demo.local")
    login = run_bootstrap(settings, snapshots=FIRST_PARTY_SNAPSHOTS).login
    assert login is not None and login.password
    with TestClient(build_app(settings), base_url=settings.origin, follow_redirects=False) as client:
        page = client.get("/registry/login")
        assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
        form = {"tenant": "demo", "email": login.email, "login_token": field_value(page.text, "login_token")}
        assert client.post("/registry/login", data={**form, "password": "wrong"}).status_code == 401
        signed = client.post("/registry/login", data={**form, "password": login.password},
                             headers={"origin": settings.origin})
        assert signed.status_code == 303, signed.text
        catalog = client.get("/registry/catalog")
        assert catalog.status_code == 200 and "io.kontor/lakehouse" in catalog.text and "enabled" in catalog.text
        assert client.get("/registry/review").status_code == 200  # a platform admin by configuration
        assert client.get("/registry/installations/lakehouse").status_code == 200
        assert client.get("/registry/openapi.json").json()["openapi"] == "3.1.0"  # the API is still there
