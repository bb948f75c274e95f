"""The web chat over HTTP: the real gateway process (with the chat mounted at /chat), its real
authorization server for the sign-in (sign-in and consent pages driven over HTTP), a fixture
upstream shaped like the lakehouse and ingest servers (tests/browser/upstream.py), and a fake
OpenAI-compatible model server (tests/host/fakes.py) scripted per test.

A second group runs the chat app in-process (httpx's ASGI transport) on a database seeded
directly, for what needs no gateway: CSRF, cross-user isolation of every endpoint, escaping.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB
from kontor.host.store import HostStore, TokenSet, default_url
from kontor.host.web import HostRuntime, HostSettings, build_host_app, dumps
from tests.gateway.mesh import PASSWORD, Mesh, mesh
from tests.gateway.oauth_browser import browser_authorize
from tests.host.fakes import FakeServer, Reply, openai_turn, sse_reply
from tests.servers_util import free_port, wait_healthy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

UPSTREAM = Path(__file__).resolve().parents[1] / "browser" / "upstream.py"
TENANT = "acme"
PLAIN = "plain"  # a tenant without a model: retrieval-only answers
ADA, BOB, BOSS = "ada@acme.example", "bob@acme.example", "boss@acme.example"
PLAIN_USER = "pia@plain.example"
MAX_UPLOAD = 200_000


# --- a fake model server in its own thread (the gateway process and the browser reach it) --------


class ThreadedFake:
    """:class:`FakeServer` on its own event loop in a thread, so it serves while tests block."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FakeServer()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake-model")

    def start(self) -> ThreadedFake:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self.loop).result(10)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.__aexit__(None, None, None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return self.server.url

    def script(self, *replies: Reply) -> None:
        self.loop.call_soon_threadsafe(self.server.script, *replies)
        time.sleep(0.01)

    def reset(self) -> None:
        self.loop.call_soon_threadsafe(self.server.replies.clear)
        time.sleep(0.01)
        self.server.requests.clear()

    @property
    def requests(self) -> list[Any]:
        return list(self.server.requests)


def tool_calls(*calls: tuple[str, str, dict[str, Any]]) -> Reply:
    """The model calls tools (OpenAI-compatible stream, arguments cut into fragments)."""
    tools = []
    for call_id, name, arguments in calls:
        text = json.dumps(arguments)
        tools.append((call_id, name, [text[: len(text) // 2], text[len(text) // 2:]]))
    return sse_reply(openai_turn(tools=tools, finish_reason="tool_calls",
                                 usage={"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}))


def answer(*texts: str, delay: float = 0.0) -> Reply:
    return sse_reply(openai_turn(texts=list(texts),
                                 usage={"prompt_tokens": 60, "completion_tokens": 12, "total_tokens": 72}),
                     delay=delay)


# --- the mesh: gateway (+ chat) and the fixture upstream ------------------------------------------


@dataclass
class ChatEnv:
    gw: Mesh
    fake: ThreadedFake
    root: Path

    @property
    def origin(self) -> str:
        return self.gw.origin

    def host_store(self) -> HostStore:
        return HostStore(default_url(self.root), key_path=self.root / "keys" / "host" / "tokens.key")


def start_fixture(m: Mesh) -> str:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(UPSTREAM), "--port", str(port), "--name", "fixture"], env=m.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/mcp"
    m.upstreams["fixture"] = (url, proc)
    wait_healthy(f"http://127.0.0.1:{port}/health", proc, 60)
    return url


async def create_tenants(m: Mesh, fake_url: str, upstream: str) -> None:
    db = m.db()
    await db.init()
    try:
        model = {"provider": "openai", "base_url": f"{fake_url}/v1", "model": "kontor-test-model", "max_retries": 0,
                 "read_timeout_s": 20}
        if await db.get_tenant(TENANT) is None:
            await db.create_tenant(TENANT, "ACME GmbH", settings={"model": model})
        if await db.get_tenant(PLAIN) is None:
            await db.create_tenant(PLAIN, "Plain AG")
    finally:
        await db.close()
    servers = {"lakehouse": upstream, "ingest": upstream}
    await m.setup_tenant(TENANT, servers, users=[(ADA, "member"), (BOB, "member"), (BOSS, "admin")])
    await m.setup_tenant(PLAIN, servers, users=[(PLAIN_USER, "member")])


@contextlib.contextmanager
def chat_env(root: Path, **gateway_env: str) -> Iterator[ChatEnv]:
    fake = ThreadedFake().start()
    try:
        with mesh(root, KONTOR_HOST_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), **gateway_env) as m:
            upstream = start_fixture(m)
            m.run(create_tenants(m, fake.url, upstream))
            m.start_gateway()
            yield ChatEnv(m, fake, root)
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatEnv]:
    with chat_env(tmp_path_factory.mktemp("web-chat")) as e:
        yield e


@pytest.fixture
def fake(env: ChatEnv) -> Iterator[ThreadedFake]:
    env.fake.reset()
    yield env.fake
    env.fake.reset()


# --- a browser made of httpx ------------------------------------------------------------------------


@dataclass
class Seen:
    """Everything the browser received: to prove what never reached it."""

    texts: list[str] = field(default_factory=list)

    def add(self, response: httpx.Response, body: str | None = None) -> None:
        self.texts.append("\n".join(f"{k}: {v}" for k, v in response.headers.multi_items()))
        self.texts.append(body if body is not None else response.text)

    def contains(self, needle: str) -> bool:
        return any(needle in t for t in self.texts)


class Browser:
    """An httpx client with a cookie jar, signed in to the chat through the gateway's real pages."""

    def __init__(self, origin: str, **kwargs: Any) -> None:
        self.origin = origin
        self.client = httpx.AsyncClient(base_url=origin, follow_redirects=False, timeout=60, **kwargs)
        self.seen = Seen()
        self.csrf = ""
        self.authorize_url = ""
        self.callback_url = ""

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, path, **kwargs)
        self.seen.add(response)
        return response

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, data: Any = None, *, csrf: str | None = None, origin: str | None = "",
                   **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        token = self.csrf if csrf is None else csrf
        if token:
            headers["X-CSRF-Token"] = token
        if origin == "":
            headers["Origin"] = self.origin
        elif origin is not None:
            headers["Origin"] = origin
        if data is not None:
            kwargs["json"] = data
        return await self.request("POST", path, headers=headers, **kwargs)

    async def login(self, tenant: str, email: str) -> str:
        """The whole sign-in; returns the session cookie's value."""
        start = await self.get("/chat/login", params={"tenant": tenant})
        assert start.status_code == 303, start.text
        self.authorize_url = start.headers["location"]
        async with httpx.AsyncClient(cookies=self.client.cookies) as gateway_pages:
            self.callback_url = await browser_authorize(gateway_pages, self.authorize_url, email, PASSWORD)
        back = await self.get(self.callback_url)
        assert back.status_code == 303, back.text
        assert back.headers["location"] == "/chat/"
        me = await self.get("/chat/api/me")
        assert me.status_code == 200, me.text
        self.csrf = me.json()["csrf_token"]
        return self.client.cookies["kontor_chat_session"]

    async def new_conversation(self, title: str = "") -> str:
        r = await self.post("/chat/api/conversations", {"title": title})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    async def ask(self, cid: str, text: str, on_event: Callable[[Browser, str, dict[str, Any]], Any] | None = None,
                  *, limit_s: float = 60) -> list[tuple[int, str, dict[str, Any]]]:
        r = await self.post(f"/chat/api/conversations/{cid}/messages", {"text": text})
        assert r.status_code == 202, r.text
        return await self.events(r.json()["turn_id"], on_event, limit_s=limit_s)

    async def events(self, turn_id: str, on_event: Callable[[Browser, str, dict[str, Any]], Any] | None = None, *,
                     last_event_id: int | None = None, limit_s: float = 60) -> list[tuple[int, str, dict[str, Any]]]:
        """The turn's events (seq, type, data) until answer_complete, as the page's EventSource sees them."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        out: list[tuple[int, str, dict[str, Any]]] = []
        raw: list[str] = []
        async with asyncio.timeout(limit_s):
            async with self.client.stream("GET", f"/chat/api/turns/{turn_id}/events", headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                seq, kind, data = 0, "", ""
                async for line in response.aiter_lines():
                    raw.append(line)
                    if line.startswith("id: "):
                        seq = int(line[4:])
                    elif line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and kind:
                        event = json.loads(data)
                        assert event["type"] == kind
                        out.append((seq, kind, event))
                        kind, data = "", ""
                        if on_event is not None:
                            result = on_event(self, out[-1][1], event)
                            if asyncio.iscoroutine(result):
                                await result
                        if out[-1][1] == "answer_complete":
                            break
                self.seen.add(response, "\n".join(raw))
        return out


def kinds(events: list[tuple[int, str, dict[str, Any]]]) -> list[str]:
    return [k for _, k, _ in events]


def of(events: list[tuple[int, str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [d for _, k, d in events if k == kind]


async def open_upstream_session(browser: Browser) -> None:
    """Make the gateway open its session with the upstream for this user before a test relies on a
    server-to-client request (elicitation, sampling). Known gateway race, not the chat's: a request the
    upstream sends during the very first call of a fresh upstream session can be lost (the gateway
    starts its standalone GET stream only after that call went out), and the call then hangs until
    its timeout. Any earlier call of the same user avoids it."""
    r = await browser.get("/chat/api/passage", params={"document_id": "doc-preisliste", "start": 0, "end": 5})
    assert r.status_code == 200, r.text


@contextlib.asynccontextmanager
async def signed_in(env: ChatEnv, email: str = ADA, tenant: str = TENANT) -> AsyncIterator[Browser]:
    async with Browser(env.origin) as browser:
        await browser.login(tenant, email)
        yield browser


# --- sign-in ---------------------------------------------------------------------------------------


async def test_client_metadata_document_names_the_callback_and_pages_carry_strict_headers(env: ChatEnv):
    async with Browser(env.origin) as browser:
        doc = await browser.get("/chat/oauth/client.json")
        assert doc.status_code == 200
        data = doc.json()
        assert data["client_id"] == f"{env.origin}/chat/oauth/client.json"
        assert data["redirect_uris"] == [f"{env.origin}/chat/oauth/callback"]
        assert data["token_endpoint_auth_method"] == "none" and "client_secret" not in data
        assert set(data["grant_types"]) == {"authorization_code", "refresh_token"}

        bare = await browser.get("/chat")
        assert bare.status_code in (307, 308) and bare.headers["location"].endswith("/chat/")
        page = await browser.get("/chat/")
        assert page.status_code == 200 and "Sign in" in page.text and 'value="acme"' not in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text  # no inline script anywhere

        # DNS rebinding: a request naming another host is refused; a loopback alias goes to the canonical origin
        assert (await browser.get("/chat/", headers={"host": "evil.example"})).status_code == 421
        alias = await browser.get("/chat/", headers={"host": f"localhost:{env.gw.settings.port}"})
        assert alias.status_code == 307 and alias.headers["location"] == f"{env.origin}/chat/"
        assert (await browser.get("/chat/static/chat.js")).headers["content-type"].startswith("text/javascript")


async def test_sign_in_through_the_gateways_authorization_server(env: ChatEnv):
    async with Browser(env.origin) as browser:
        start = await browser.get("/chat/login", params={"tenant": TENANT})
        assert start.status_code == 303
        binding = start.headers["set-cookie"]
        assert "kontor_chat_login=" in binding and "HttpOnly" in binding and "SameSite=lax" in binding.replace(
            "samesite", "SameSite")
        url = start.headers["location"]
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{env.origin}/t/{TENANT}/oauth/authorize"
        assert query["client_id"] == f"{env.origin}/chat/oauth/client.json"
        assert query["redirect_uri"] == f"{env.origin}/chat/oauth/callback"
        assert query["response_type"] == "code" and query["code_challenge_method"] == "S256"
        assert len(query["code_challenge"]) == 43 and len(query["state"]) >= 40
        assert query["resource"] == env.gw.url(TENANT)
        assert "scope" not in query  # the gateway grants what the user's role allows

        async with httpx.AsyncClient(cookies=browser.client.cookies) as pages:
            callback = await browser_authorize(pages, url, ADA, PASSWORD)
        back_query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        assert back_query["iss"] == env.gw.settings.issuer(TENANT) and back_query["state"] == query["state"]

        # the callback from another browser (without the binding cookie) is refused
        async with Browser(env.origin) as other:
            stolen = await other.get(callback)
            assert stolen.status_code == 400 and "not started in this browser" in stolen.text
        # (the state is used up by that attempt; a fresh sign-in in the right browser works)
        session = await browser.login(TENANT, ADA)
        set_cookie = [t for t in browser.seen.texts if "kontor_chat_session=" in t]
        assert set_cookie, "the callback sets the session cookie"
        header = next(line for line in set_cookie[-1].splitlines() if "kontor_chat_session=" in line)
        assert "HttpOnly" in header and "Path=/chat" in header and "secure" not in header.lower()
        assert re.search(r"samesite=lax", header, re.I)
        assert len(session) >= 40

        page = await browser.get("/chat/")
        assert page.status_code == 200 and ADA in page.text and 'name="csrf-token"' in page.text
        me = (await browser.get("/chat/api/me")).json()
        assert me["tenant"] == TENANT and me["email"] == ADA
        assert set(me["scope"].split()) >= {"lakehouse:read", "lakehouse:write", "ingest:read", "ingest:write"}
        assert "tenant:admin" not in me["scope"].split()  # a member
        assert me["model"] == "kontor-test-model (openai)"

        # a replayed callback (same state, same browser) is refused: states are single-use
        replay = await browser.get(browser.callback_url)
        assert replay.status_code == 400


async def test_sign_in_with_an_unknown_workspace_or_a_bad_iss_is_refused(env: ChatEnv):
    async with Browser(env.origin) as browser:
        r = await browser.get("/chat/login", params={"tenant": "no-such-tenant"})
        assert r.status_code == 400 and "does not exist" in r.text
        r = await browser.get("/chat/login", params={"tenant": "Not A Slug"})
        assert r.status_code == 400
        start = await browser.get("/chat/login", params={"tenant": TENANT})
        async with httpx.AsyncClient(cookies=browser.client.cookies) as pages:
            callback = await browser_authorize(pages, start.headers["location"], ADA, PASSWORD)
        forged = callback.replace("iss=", "iss=https%3A%2F%2Fevil.example%2F&was=")
        r = await browser.get(forged)
        assert r.status_code == 400 and "another issuer" in r.text
        assert "kontor_chat_session" not in browser.client.cookies


# --- a question, answered through the real gateway --------------------------------------------------


async def test_question_answered_with_a_tool_through_the_gateway_events_in_order(env: ChatEnv, fake: ThreadedFake):
    fake.script(tool_calls(("c1", "lakehouse__search", {"query": "Lieferfrist M8"})),
                answer("Die Lieferung ", "erfolgt innerhalb von ", "14 Werktagen [1].", delay=0.05))
    async with signed_in(env) as browser:
        cid = await browser.new_conversation()
        events = await browser.ask(cid, "Wie lange dauert die Lieferung der Schrauben M8?")
        names = kinds(events)
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))  # ids in order, none missing
        assert names[-1] == "answer_complete"
        assert names.index("tool_call_started") < names.index("citation") < names.index("tool_call_finished") \
            < names.index("text_delta")
        finished = of(events, "tool_call_finished")[0]
        assert finished["tool"] == "lakehouse__search" and finished["status"] == "ok"
        assert "14 Werktagen" in finished["preview"]
        citations = of(events, "citation")
        assert [c["citation"]["title"] for c in citations] == ["Rahmenvertrag Schraubenlieferung", "Preisliste 2025"]
        assert citations[0]["citation"]["section"] == "§ 4 Lieferfristen" and citations[0]["citation"]["number"] == 1
        deltas = "".join(d["text"] for d in of(events, "text_delta"))
        done = of(events, "answer_complete")[0]
        assert deltas == done["text"] == "Die Lieferung erfolgt innerhalb von 14 Werktagen [1]."
        assert len(of(events, "text_delta")) >= 3  # streamed in pieces, not at once
        assert not done["partial"] and done["stop_reason"] == "end_turn" and len(done["citations"]) == 2
        assert "messages" not in done

        # what the model got back is the real gateway's answer from the upstream
        second = fake.requests[1].json["messages"]
        tool_message = next(m for m in second if m["role"] == "tool")
        assert "14 Werktagen" in tool_message["content"] and "[1]" in tool_message["content"]

        stored = (await browser.get(f"/chat/api/conversations/{cid}")).json()
        assert stored["title"].startswith("Wie lange dauert")
        user, assistant = stored["messages"]
        assert user["role"] == "user" and assistant["text"] == done["text"] and not assistant["partial"]
        assert [c["status"] for c in assistant["tool_calls"]] == ["ok"]
        assert assistant["tool_calls"][0]["arguments"] == {"query": "Lieferfrist M8"}
        assert [c["number"] for c in assistant["citations"]] == [1, 2]
        page = await browser.get(f"/chat/c/{cid}")
        assert "Rahmenvertrag Schraubenlieferung" in page.text and "lakehouse__search" in page.text
        assert 'class="chip"' in page.text

        # the next turn sends the history: the earlier question, tool call, result and answer
        fake.script(answer("Ja."))
        await browser.ask(cid, "Und ohne Abzug?")
        roles = [m["role"] for m in fake.requests[2].json["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]


async def test_the_event_stream_resumes_after_the_last_event_id(env: ChatEnv, fake: ThreadedFake):
    fake.script(answer("eins ", "zwei ", "drei"))
    async with signed_in(env) as browser:
        cid = await browser.new_conversation()
        r = await browser.post(f"/chat/api/conversations/{cid}/messages", {"text": "Zähle"})
        turn_id = r.json()["turn_id"]
        everything = await browser.events(turn_id)
        rest = await browser.events(turn_id, last_event_id=2)
        assert [seq for seq, _, _ in rest] == [seq for seq, _, _ in everything if seq > 2]
        assert rest[-1][1] == "answer_complete"


async def test_a_write_tool_waits_for_approval_and_runs_after_it(env: ChatEnv, fake: ThreadedFake):
    note = f"note-{uuid.uuid4().hex[:8]}"
    fake.script(tool_calls(("w1", "lakehouse__write_note", {"text": note})), answer("Gespeichert."),
                tool_calls(("w2", "lakehouse__write_note", {"text": note + "-2"})), answer("Wieder gespeichert."),
                tool_calls(("w3", "lakehouse__write_note", {"text": note + "-3"})), answer("Nicht gespeichert."))
    async with signed_in(env) as browser:
        cid = await browser.new_conversation()
        asked: list[dict[str, Any]] = []

        async def approve(b: Browser, kind: str, data: dict[str, Any], decision: str = "always") -> None:
            if kind == "approval_needed":
                asked.append(data)
                assert (await b.post(f"/chat/api/turns/{turn_of(b)}/approvals/zzz", {"decision": decision})
                        ).status_code == 409  # nothing pending under that id
                r = await b.post(f"/chat/api/turns/{turn_of(b)}/approvals/{data['call_id']}", {"decision": decision})
                assert r.status_code == 200, r.text

        events = await ask_tracking(browser, cid, "Speichere eine Notiz", approve)
        names = kinds(events)
        assert names.index("tool_call_started") < names.index("approval_needed") < names.index("approval_decided") \
            < names.index("tool_call_finished")
        needed = asked[0]
        assert needed["tool"] == "lakehouse__write_note" and needed["arguments"] == {"text": note}
        assert needed["destructive"] and needed["can_remember"]
        finished = of(events, "tool_call_finished")[0]
        assert finished["status"] == "ok" and finished["preview"] == f"stored: {note}"
        stored = (await browser.get(f"/chat/api/conversations/{cid}")).json()["messages"][1]["tool_calls"][0]
        assert stored["approval"] == "always" and stored["status"] == "ok"
        settings = (await browser.get("/chat/api/settings")).json()
        assert settings["approvals"] == ["lakehouse__write_note"]

        # remembered: the next call runs without asking
        events = await browser.ask(cid, "Noch eine")
        assert "approval_needed" not in kinds(events) and of(events, "tool_call_finished")[0]["status"] == "ok"

        # forgotten in the settings panel: asked again, and this time denied
        assert (await browser.post("/chat/api/settings/approvals/forget", {"tool": "lakehouse__write_note"})
                ).status_code == 200
        assert (await browser.get("/chat/api/settings")).json()["approvals"] == []

        async def deny(b: Browser, kind: str, data: dict[str, Any]) -> None:
            await approve(b, kind, data, "deny")

        events = await ask_tracking(browser, cid, "Und noch eine", deny)
        assert of(events, "approval_decided")[0]["decision"] == "deny"
        assert of(events, "tool_call_finished")[0]["status"] == "denied"
        results = [m for m in fake.requests[-1].json["messages"] if m["role"] == "tool"]
        assert "denied" in results[-1]["content"]


_turns: dict[int, str] = {}


def wait_until(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def turn_of(browser: Browser) -> str:
    return _turns[id(browser)]


async def ask_tracking(browser: Browser, cid: str, text: str, on_event: Any) -> list[tuple[int, str, dict[str, Any]]]:
    """Like :meth:`Browser.ask`, remembering the turn id for the event handler."""
    r = await browser.post(f"/chat/api/conversations/{cid}/messages", {"text": text})
    assert r.status_code == 202, r.text
    _turns[id(browser)] = r.json()["turn_id"]
    return await browser.events(r.json()["turn_id"], on_event)


async def test_stop_cancels_the_turn_and_keeps_the_partial_answer(env: ChatEnv, fake: ThreadedFake):
    fake.script(sse_reply(openai_turn(texts=["Erster Teil, ", "zweiter Teil"], finish_reason=None, done=False),
                          hang=True))
    async with signed_in(env) as browser:
        cid = await browser.new_conversation()

        async def stop_after_text(b: Browser, kind: str, data: dict[str, Any]) -> None:
            if kind == "text_delta" and "zweiter" in data["text"]:
                assert (await b.post(f"/chat/api/turns/{turn_of(b)}/stop", {})).status_code == 200

        started = time.monotonic()
        events = await ask_tracking(browser, cid, "Erzähl mir alles", stop_after_text)
        assert time.monotonic() - started < 20
        done = of(events, "answer_complete")[0]
        assert done["partial"] and done["stop_reason"] == "cancelled"
        assert done["text"] == "Erster Teil, zweiter Teil"
        assert any(d["kind"] == "cancelled" for d in of(events, "notice"))
        stored = (await browser.get(f"/chat/api/conversations/{cid}")).json()["messages"][1]
        assert stored["partial"] and stored["stop_reason"] == "cancelled" and stored["text"] == done["text"]
        page = await browser.get(f"/chat/c/{cid}")
        assert "is-partial" in page.text
        # the model stream was closed (the fake server saw the client go away)
        assert await asyncio.to_thread(wait_until, fake.server.disconnected.is_set, 5.0)


async def test_stop_during_a_pending_approval_withdraws_it(env: ChatEnv, fake: ThreadedFake):
    fake.script(tool_calls(("w9", "lakehouse__write_note", {"text": "never"})))
    async with signed_in(env, BOB) as browser:
        cid = await browser.new_conversation()

        async def stop_when_asked(b: Browser, kind: str, data: dict[str, Any]) -> None:
            if kind == "approval_needed":
                assert (await b.post(f"/chat/api/turns/{turn_of(b)}/stop", {})).status_code == 200

        events = await ask_tracking(browser, cid, "Schreib", stop_when_asked)
        assert of(events, "tool_call_finished")[0]["status"] in ("cancelled", "denied")
        assert of(events, "answer_complete")[0]["stop_reason"] == "cancelled"
        late = await browser.post(f"/chat/api/turns/{turn_of(browser)}/approvals/w9", {"decision": "allow_once"})
        assert late.status_code == 409


async def test_an_elicitation_form_answer_reaches_the_server(env: ChatEnv, fake: ThreadedFake):
    fake.script(tool_calls(("e1", "lakehouse__confirm", {})), answer("Erledigt."))
    async with signed_in(env) as browser:
        await open_upstream_session(browser)
        cid = await browser.new_conversation()

        async def fill(b: Browser, kind: str, data: dict[str, Any]) -> None:
            if kind == "elicitation":
                assert data["message"] == "Which colour should the screws have?"
                assert data["schema"]["properties"]["colour"]["enum"] == ["silber", "schwarz"]
                url = f"/chat/api/turns/{turn_of(b)}/elicitations/{data['id']}"
                bad = await b.post(url, {"action": "accept", "content": {"colour": "rot", "count": "2"}})
                assert bad.status_code == 400  # not one of the offered values
                missing = await b.post(url, {"action": "accept", "content": {"colour": "silber"}})
                assert missing.status_code == 400  # count is required
                ok = await b.post(url, {"action": "accept", "content": {"colour": "schwarz", "count": "3",
                                                                        "urgent": True}})
                assert ok.status_code == 200, ok.text

        events = await ask_tracking(browser, cid, "Bestell Schrauben", fill)
        names = kinds(events)
        assert names.index("elicitation") < names.index("elicitation_closed") < names.index("tool_call_finished")
        preview = of(events, "tool_call_finished")[0]["preview"]
        assert preview == "user answered accept {'colour': 'schwarz', 'count': 3, 'urgent': True}"


async def test_a_sampling_request_of_a_server_is_answered_after_the_users_approval(env: ChatEnv,
                                                                                   fake: ThreadedFake):
    fake.script(tool_calls(("m1", "lakehouse__ask_model", {"question": "Farbe der Schrauben?"})),
                answer("Silber"),  # the sampling request, answered by the tenant's model
                answer("Der Server meint: Silber."),
                tool_calls(("m2", "lakehouse__ask_model", {"question": "Nochmal?"})),
                answer("Abgelehnt."))
    async with signed_in(env) as browser:
        await open_upstream_session(browser)
        cid = await browser.new_conversation()

        def answering(approve: bool) -> Any:
            async def handler(b: Browser, kind: str, data: dict[str, Any]) -> None:
                if kind == "sampling_request":
                    assert data["messages"] == [{"role": "user", "text": data["messages"][0]["text"]}]
                    assert data["system_prompt"] == "Answer in one word." and data["max_tokens"] == 50
                    r = await b.post(f"/chat/api/turns/{turn_of(b)}/sampling/{data['id']}", {"approve": approve})
                    assert r.status_code == 200, r.text
            return handler

        events = await ask_tracking(browser, cid, "Frag den Server", answering(True))
        names = kinds(events)
        assert names.index("sampling_request") < names.index("sampling_closed") < names.index("tool_call_finished")
        assert of(events, "tool_call_finished")[0]["preview"] == "model said: Silber"
        assert any(u["source"] == "sampling" for u in of(events, "usage"))
        sampling_call = fake.requests[1].json
        assert sampling_call["messages"][0] == {"role": "system", "content": "Answer in one word."}
        assert "tools" not in sampling_call

        events = await ask_tracking(browser, cid, "Nochmal", answering(False))
        finished = of(events, "tool_call_finished")[0]
        assert finished["status"] == "error" and "declined" in (finished["error"] or finished["preview"])


async def test_progress_of_a_tool_call_is_streamed(env: ChatEnv, fake: ThreadedFake):
    fake.script(tool_calls(("p1", "lakehouse__slow", {"steps": 3, "delay_s": 0.1})), answer("Fertig."))
    async with signed_in(env) as browser:
        cid = await browser.new_conversation()
        events = await browser.ask(cid, "Langsam bitte")
        progress = of(events, "tool_progress")
        assert [p["progress"] for p in progress] == [1, 2, 3] and all(p["total"] == 3 for p in progress)
        assert progress[0]["message"] == "step 1"


async def test_without_a_model_the_chat_answers_with_retrieved_passages(env: ChatEnv, fake: ThreadedFake):
    async with signed_in(env, PLAIN_USER, PLAIN) as browser:
        assert (await browser.get("/chat/api/me")).json()["model"] == "No model: retrieved passages only"
        cid = await browser.new_conversation()
        events = await browser.ask(cid, "Lieferfrist der Schrauben")
        assert of(events, "notice")[0]["kind"] == "no_model"
        assert {c["label"] for c in of(events, "citation")} == {"retrieved passage"}
        done = of(events, "answer_complete")[0]
        assert done["mode"] == "retrieval" and done["stop_reason"] == "no_model" and "14 Werktagen" in done["text"]
        page = await browser.get(f"/chat/c/{cid}")
        assert "Retrieved passages · not a generated answer" in page.text
    assert not fake.requests  # no model was asked


async def test_the_cited_passage_opens_in_its_document(env: ChatEnv):
    async with signed_in(env) as browser:
        store_text = "Die Lieferung der Sechskantschrauben M8 erfolgt innerhalb von 14 Werktagen nach Bestellung."
        start = upstream_documents()["doc-rahmenvertrag"]["text"].index(store_text)
        r = await browser.get("/chat/api/passage", params={"document_id": "doc-rahmenvertrag", "start": start,
                                                          "end": start + len(store_text)})
        assert r.status_code == 200, r.text
        passage = r.json()
        assert passage["passage"] == store_text and passage["title"] == "Rahmenvertrag Schraubenlieferung"
        assert passage["before"].endswith("§ 4 Lieferfristen. ") and passage["after"].startswith(" Bei Verzug")
        missing = await browser.get("/chat/api/passage", params={"document_id": "doc-nope", "start": 0, "end": 5})
        assert missing.status_code == 404


async def test_upload_goes_to_the_ingest_server_with_progress(env: ChatEnv):
    async with signed_in(env) as browser:
        content = "Ein kleines Dokument über Schrauben.\n".encode() * 20
        r = await browser.post("/chat/api/upload", content=content,
                               headers={"X-File-Name": "notiz%20%C3%BCber%20schrauben.txt",
                                        "Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        assert lines[0] == {"received": len(content), "name": "notiz über schrauben.txt"}
        assert [p["progress"] for p in lines if "progress" in p] == [1, 2, 3]
        done = lines[-1]
        assert done["done"] and done["ok"] and done["result"]["files"] == [
            {"name": "notiz über schrauben.txt", "bytes": len(content), "status": "ok"}]

        too_big = await browser.post("/chat/api/upload", content=b"x" * (MAX_UPLOAD + 1),
                                     headers={"X-File-Name": "big.bin"})
        assert too_big.status_code == 413
        no_name = await browser.post("/chat/api/upload", content=b"abc")
        assert no_name.status_code == 400
        no_csrf = await browser.post("/chat/api/upload", content=b"abc", csrf="", headers={"X-File-Name": "a.txt"})
        assert no_csrf.status_code == 403


async def test_an_admin_can_block_a_tool_for_everybody(env: ChatEnv, fake: ThreadedFake):
    async with signed_in(env, BOSS) as boss, signed_in(env, BOB) as bob:
        assert (await bob.post("/chat/api/admin/rules", {"key": "ingest__*", "rule": "blocked"})).status_code == 403
        r = await boss.post("/chat/api/admin/rules", {"key": "ingest__*", "rule": "blocked"})
        assert r.status_code == 200 and r.json()["rules"] == {"ingest__*": "blocked"}
        try:
            refused = await bob.post("/chat/api/upload", content=b"abc", headers={"X-File-Name": "a.txt"})
            assert refused.status_code == 403 and "blocked" in refused.text
            fake.script(answer("Ok."))
            cid = await bob.new_conversation()
            await bob.ask(cid, "Welche Werkzeuge gibt es?")
            offered = {t["function"]["name"] for t in fake.requests[-1].json["tools"]}
            assert "lakehouse__search" in offered and not any(n.startswith("ingest__") for n in offered)
        finally:
            await boss.post("/chat/api/admin/rules", {"key": "ingest__*", "rule": None})


# --- resources and prompts ("+" in the composer) -------------------------------------------------------


def upstream_module() -> Any:
    spec = importlib.util.spec_from_file_location("web_chat_upstream", UPSTREAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_content(request: Any) -> str:
    """The text of the last user message the model got in a request."""
    return [m for m in request.json["messages"] if m["role"] == "user"][-1]["content"]


async def test_resources_are_listed_and_read_through_the_gateway(env: ChatEnv):
    terms = upstream_module().LIEFERBEDINGUNGEN
    logo = upstream_module().LOGO
    async with signed_in(env, BOB) as browser:
        listed = await browser.get("/chat/api/resources")
        assert listed.status_code == 200, listed.text
        data = listed.json()
        by_uri = {r["uri"]: r for r in data["resources"]}
        assert set(by_uri) == {"docs://lieferbedingungen", "docs://logo.png", "docs://evil"}
        assert by_uri["docs://lieferbedingungen"] == {
            "name": "lieferbedingungen", "title": "Lieferbedingungen 2025", "uri": "docs://lieferbedingungen",
            "description": "The delivery terms every order follows.", "mimeType": "text/plain", "size": None}
        # the same template from two installations (lakehouse and ingest) is listed once
        assert [t["uriTemplate"] for t in data["templates"]] == ["docs://documents/{document_id}"]
        assert data["templates"][0]["title"] == "A document by its id" and data["truncated"] is False
        only = (await browser.get("/chat/api/resources", params={"q": "DELIVERY"})).json()
        assert [r["uri"] for r in only["resources"]] == ["docs://lieferbedingungen"] and only["templates"] == []

        read = await browser.get("/chat/api/resources/read", params={"uri": "docs://lieferbedingungen"})
        assert read.status_code == 200, read.text
        assert read.json() == {"uri": "docs://lieferbedingungen", "truncated": False, "contents": [
            {"uri": "docs://lieferbedingungen", "mimeType": "text/plain", "text": terms, "chars": len(terms),
             "truncated": False}]}
        document = (await browser.get("/chat/api/resources/read",
                                      params={"uri": "docs://documents/doc-preisliste"})).json()
        assert document["contents"][0]["text"] == upstream_documents()["doc-preisliste"]["text"]
        binary = (await browser.get("/chat/api/resources/read", params={"uri": "docs://logo.png"})).json()
        assert binary["contents"] == [{"uri": "docs://logo.png", "mimeType": "image/png", "binary": True,
                                       "size": len(logo)}]  # described, not inlined

        unknown = await browser.get("/chat/api/resources/read", params={"uri": "docs://nope"})
        assert unknown.status_code == 404 and "could not be read" in unknown.json()["error"]
        missing = await browser.get("/chat/api/resources/read", params={"uri": "docs://documents/doc-nope"})
        assert missing.status_code == 404
        assert (await browser.get("/chat/api/resources/read")).status_code == 400
        assert (await browser.get("/chat/api/resources/read", params={"uri": "x" * 3000})).status_code == 400
    async with Browser(env.origin) as anonymous:
        assert (await anonymous.get("/chat/api/resources")).status_code == 401
        assert (await anonymous.get("/chat/api/resources/read", params={"uri": "docs://evil"})).status_code == 401


async def test_an_attached_resource_reaches_the_model_and_is_shown_after_reload(env: ChatEnv, fake: ThreadedFake):
    terms = upstream_module().LIEFERBEDINGUNGEN
    question = "Was gilt für die Lieferung?"
    fake.script(answer("Frei Haus ab 500 EUR."), answer("Ja."))
    async with signed_in(env, BOB) as browser:
        cid = await browser.new_conversation()
        r = await browser.post(f"/chat/api/conversations/{cid}/messages", {
            "text": question, "attachments": ["docs://lieferbedingungen", "docs://documents/doc-preisliste",
                                              "docs://lieferbedingungen"]})
        assert r.status_code == 202, r.text
        events = await browser.events(r.json()["turn_id"])
        assert of(events, "answer_complete")[0]["text"] == "Frei Haus ab 500 EUR."

        # the model got the question, then each resource's text, clearly delimited
        seen = user_content(fake.requests[0])
        assert seen.startswith(question + "\n\n---\nAttached resource docs://lieferbedingungen:\n" + terms)
        price = upstream_documents()["doc-preisliste"]["text"]
        assert f"Attached resource docs://documents/doc-preisliste:\n{price}\n--- end of" in seen
        assert seen.count("Attached resource") == 2  # the duplicate was attached once

        # stored with the message: shown with it after a reload, the question text unchanged
        stored = (await browser.get(f"/chat/api/conversations/{cid}")).json()["messages"]
        assert stored[0]["text"] == question and stored[1]["attachments"] == []
        assert stored[0]["attachments"] == [
            {"uri": "docs://lieferbedingungen", "name": "Lieferbedingungen 2025", "mime_type": "text/plain",
             "chars": len(terms), "truncated": False},
            {"uri": "docs://documents/doc-preisliste", "name": "docs://documents/doc-preisliste",
             "mime_type": "text/plain", "chars": len(price), "truncated": False}]
        page = await browser.get(f"/chat/c/{cid}")
        assert 'class="msg user has-attachments"' in page.text and "Lieferbedingungen 2025" in page.text
        assert 'title="docs://documents/doc-preisliste"' in page.text
        # what the lakehouse recorded is the question, not the attached text
        recorded = (await browser.get("/chat/api/recorded")).json()["interactions"]
        assert any(i["question"] == question for i in recorded) and all(terms not in i["question"] for i in recorded)

        # the next turn's history still has the attached text (and nothing else from the attachment list)
        await browser.ask(cid, "Und Teillieferungen?")
        history = fake.requests[1].json["messages"]
        assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
        assert terms in history[1]["content"] and history[-1]["content"] == "Und Teillieferungen?"


async def test_attachments_that_cannot_be_read_or_too_many_are_refused(env: ChatEnv, fake: ThreadedFake):
    async with signed_in(env, BOB) as browser:
        cid = await browser.new_conversation()
        url = f"/chat/api/conversations/{cid}/messages"
        unknown = await browser.post(url, {"text": "Frage", "attachments": ["docs://nope"]})
        assert unknown.status_code == 400 and "docs://nope" in unknown.json()["error"]
        assert unknown.json()["uri"] == "docs://nope"
        binary = await browser.post(url, {"text": "Frage", "attachments": ["docs://logo.png"]})
        assert binary.status_code == 400 and "no text" in binary.json()["error"]
        many = await browser.post(url, {"text": "Frage", "attachments": [f"docs://documents/d{i}" for i in range(6)]})
        assert many.status_code == 400 and "at most 5" in many.json()["error"]
        for bad in ("docs://evil", [1], [""], ["x" * 3000], {"uri": "docs://evil"}):
            r = await browser.post(url, {"text": "Frage", "attachments": bad})
            assert r.status_code == 400 and "list of resource URIs" in r.json()["error"], bad
        nothing = (await browser.get(f"/chat/api/conversations/{cid}")).json()["messages"]
        assert nothing == []  # nothing was stored, no turn started
        assert (await browser.post(url, {"text": "Frage", "attachments": ["docs://evil"]}, csrf="")).status_code == 403
    assert not fake.requests  # the model was never asked


async def test_without_a_model_a_question_with_an_attachment_searches_the_question(env: ChatEnv, fake: ThreadedFake):
    question = "Lieferfrist der Schrauben"
    async with signed_in(env, PLAIN_USER, PLAIN) as browser:
        cid = await browser.new_conversation()
        r = await browser.post(f"/chat/api/conversations/{cid}/messages",
                               {"text": question, "attachments": ["docs://lieferbedingungen"]})
        assert r.status_code == 202, r.text
        events = await browser.events(r.json()["turn_id"])
        done = of(events, "answer_complete")[0]
        assert done["mode"] == "retrieval" and "14 Werktagen" in done["text"]
        assert of(events, "tool_call_started")[0]["arguments"]["query"] == question
        stored = (await browser.get(f"/chat/api/conversations/{cid}")).json()["messages"]
        assert [a["uri"] for a in stored[0]["attachments"]] == ["docs://lieferbedingungen"]
    assert not fake.requests


async def test_prompts_are_listed_and_filled_with_their_arguments(env: ChatEnv):
    async with signed_in(env, BOB) as browser:
        listed = await browser.get("/chat/api/prompts")
        assert listed.status_code == 200, listed.text
        prompts = {p["name"]: p for p in listed.json()["prompts"]}
        assert {"lakehouse__summarize", "ingest__summarize"} <= set(prompts)
        summarize = prompts["lakehouse__summarize"]
        assert summarize["title"] == "Summarize a topic"
        assert [(a["name"], a["required"], a["description"]) for a in summarize["arguments"]] == [
            ("topic", True, "What the summary is about"), ("style", False, "bullets or prose")]

        url = "/chat/api/prompts/get"
        missing = await browser.post(url, {"name": "lakehouse__summarize", "arguments": {"style": "prose"}})
        assert missing.status_code == 400 and missing.json()["missing"] == ["topic"]
        assert "topic" in missing.json()["error"]
        blank = await browser.post(url, {"name": "lakehouse__summarize", "arguments": {"topic": "  "}})
        assert blank.status_code == 400 and blank.json()["missing"] == ["topic"]
        filled = await browser.post(url, {"name": "lakehouse__summarize", "arguments": {"topic": "Lieferfristen"}})
        assert filled.status_code == 200, filled.text
        assert filled.json()["text"] == ("Summarize what our documents say about Lieferfristen. Answer as bullets, "
                                         "and cite your sources.")
        assert filled.json()["messages"] == [{"role": "user", "text": filled.json()["text"]}]
        styled = await browser.post(url, {"name": "lakehouse__summarize",
                                          "arguments": {"topic": "Preise", "style": "prose"}})
        assert "Answer as prose" in styled.json()["text"]

        unknown_arg = await browser.post(url, {"name": "lakehouse__summarize", "arguments": {"topic": "x", "y": "z"}})
        assert unknown_arg.status_code == 400 and unknown_arg.json()["unknown"] == ["y"]
        assert (await browser.post(url, {"name": "nope__prompt", "arguments": {}})).status_code == 404
        assert (await browser.post(url, {"arguments": {}})).status_code == 400
        assert (await browser.post(url, {"name": "lakehouse__summarize", "arguments": {"topic": 3}})).status_code == 400
        no_csrf = await browser.post(url, {"name": "lakehouse__summarize", "arguments": {"topic": "x"}}, csrf="")
        assert no_csrf.status_code == 403
    async with Browser(env.origin) as anonymous:
        assert (await anonymous.get("/chat/api/prompts")).status_code == 401


async def test_markup_in_resources_and_prompts_is_data_not_markup(env: ChatEnv, fake: ThreadedFake):
    evil_title = "<img src=x onerror=alert('resource')>Evil resource"
    async with signed_in(env, BOB) as browser:
        listed = await browser.get("/chat/api/resources")
        assert "<" not in listed.text and ">" not in listed.text  # JSON with markup escaped
        evil = next(r for r in listed.json()["resources"] if r["uri"] == "docs://evil")
        assert evil["title"] == evil_title and evil["description"] == "<script>alert('description')</script>"
        read = await browser.get("/chat/api/resources/read", params={"uri": "docs://evil"})
        assert "<" not in read.text and read.json()["contents"][0]["text"].startswith("<script>alert('resource')")
        filled = await browser.post("/chat/api/prompts/get", {"name": "lakehouse__summarize",
                                                               "arguments": {"topic": "<script>alert(1)</script>"}})
        assert "<" not in filled.text and "<script>alert(1)</script>" in filled.json()["text"]

        fake.script(answer("Ok."))
        cid = await browser.new_conversation()
        r = await browser.post(f"/chat/api/conversations/{cid}/messages",
                               {"text": "<b>Was steht da?</b>", "attachments": ["docs://evil"]})
        assert r.status_code == 202, r.text
        await browser.events(r.json()["turn_id"])
        assert "<script>alert('resource')</script>" in user_content(fake.requests[0])  # the model gets the text
        page = await browser.get(f"/chat/c/{cid}")
        scripts = re.findall(r"<script[^>]*>", page.text)
        assert scripts == [f'<script src="/chat/static/chat.js?v={static_version(page.text)}" defer>'], scripts
        assert "<img" not in page.text and "<b>Was" not in page.text
        assert "&lt;img src=x onerror=alert(&#39;resource&#39;)&gt;Evil resource" in page.text  # the chip
        assert "&lt;b&gt;Was steht da?&lt;/b&gt;" in page.text
        api = await browser.get(f"/chat/api/conversations/{cid}")
        assert "<" not in api.text and api.json()["messages"][0]["attachments"][0]["name"] == evil_title


# --- security ----------------------------------------------------------------------------------------


async def test_another_users_conversation_is_not_found(env: ChatEnv, fake: ThreadedFake):
    fake.script(answer("Geheime Antwort von Ada."))
    async with signed_in(env, ADA) as ada, signed_in(env, BOB) as bob:
        cid = await ada.new_conversation("Adas Geheimnis")
        r = await ada.post(f"/chat/api/conversations/{cid}/messages", {"text": "Adas private Frage"})
        turn_id = r.json()["turn_id"]
        events = await ada.events(turn_id)
        message_id = of(events, "answer_complete")[0]["message_id"]

        assert (await bob.get(f"/chat/c/{cid}")).status_code == 404
        for method, path, body in [
            ("GET", f"/chat/api/conversations/{cid}", None),
            ("POST", f"/chat/api/conversations/{cid}/rename", {"title": "mine now"}),
            ("POST", f"/chat/api/conversations/{cid}/messages", {"text": "hello"}),
            ("POST", f"/chat/api/conversations/{cid}/delete", {}),
            ("POST", f"/chat/api/messages/{message_id}/feedback", {"rating": -1}),
            ("GET", f"/chat/api/turns/{turn_id}/events", None),
            ("POST", f"/chat/api/turns/{turn_id}/stop", {}),
        ]:
            response = await (bob.get(path) if method == "GET" else bob.post(path, body))
            assert response.status_code == 404, (method, path, response.status_code)
        listed = (await bob.get("/chat/api/conversations")).json()["conversations"]
        assert cid not in {c["id"] for c in listed}
        assert (await bob.get("/chat/api/conversations", params={"q": "Geheim"})).json()["conversations"] == []
        # still all there for Ada
        mine = (await ada.get(f"/chat/api/conversations/{cid}")).json()
        assert mine["title"] == "Adas Geheimnis" and len(mine["messages"]) == 2


async def test_markup_in_model_output_and_tool_results_is_escaped_everywhere(env: ChatEnv, fake: ThreadedFake):
    evil_text = "<script>alert('model')</script> **fett** <img src=x onerror=alert(1)> [1]"
    fake.script(tool_calls(("h1", "lakehouse__html", {}), ("h2", "lakehouse__search", {"query": "evil"})),
                answer(evil_text))
    async with signed_in(env) as browser:
        cid = await browser.new_conversation("<b>title</b><script>alert('title')</script>")
        events = await browser.ask(cid, "<script>alert('question')</script>")
        stream = browser.seen.texts[-1]
        assert "<script" not in stream and "<img" not in stream and "onerror=alert" in stream
        assert of(events, "answer_complete")[0]["text"] == evil_text  # the text itself is unchanged
        html_result = next(d for d in of(events, "tool_call_finished") if d["tool"] == "lakehouse__html")
        assert html_result["preview"].startswith("<script>alert('tool')</script>")

        pages = [await browser.get(f"/chat/c/{cid}"), await browser.get("/chat/"),
                 await browser.get("/chat/", params={"q": "<script>"})]
        for page in pages:
            assert page.status_code == 200
            scripts = re.findall(r"<script[^>]*>", page.text)
            assert scripts == [f'<script src="/chat/static/chat.js?v={static_version(page.text)}" defer>'], scripts
            assert "<img" not in page.text and "<b>title" not in page.text
        conversation = pages[0].text
        assert "&lt;script&gt;alert(&#39;model&#39;)&lt;/script&gt;" in conversation
        assert "&lt;script&gt;alert(&#39;tool&#39;)&lt;/script&gt;" in conversation
        assert "&lt;script&gt;alert(&#39;question&#39;)&lt;/script&gt;" in conversation
        assert "&lt;b&gt;title&lt;/b&gt;" in conversation
        assert "&lt;img src=x onerror=alert(&#39;title&#39;)&gt;Evil" in conversation  # a citation's title
        api = await browser.get(f"/chat/api/conversations/{cid}")
        assert "<" not in api.text and api.json()["messages"][1]["text"] == evil_text


def upstream_documents() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("web_chat_upstream", UPSTREAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DOCUMENTS


def static_version(page: str) -> str:
    match = re.search(r"chat\.js\?v=([0-9a-f]+)", page)
    assert match
    return match.group(1)


async def test_csrf_token_and_same_origin_are_required_for_every_post(env: ChatEnv):
    async with signed_in(env, BOB) as browser:
        assert (await browser.post("/chat/api/conversations", {}, csrf="")).status_code == 403
        assert (await browser.post("/chat/api/conversations", {}, csrf="forged")).status_code == 403
        foreign = await browser.post("/chat/api/conversations", {}, origin="https://evil.example")
        assert foreign.status_code == 403 and "cross-origin" in foreign.text
        sibling = await browser.post("/chat/api/conversations", {}, origin=f"http://localhost:{env.gw.settings.port}")
        assert sibling.status_code == 403
        cross_site = await browser.post("/chat/api/conversations", {}, origin=None,
                                        headers={"Sec-Fetch-Site": "cross-site"})
        assert cross_site.status_code == 403
        assert (await browser.post("/chat/api/conversations", {})).status_code == 201
        logout = await browser.post("/chat/logout", csrf="", data=None, content=b"csrf_token=wrong",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert logout.status_code == 403
        assert (await browser.get("/chat/api/me")).status_code == 200  # still signed in


async def test_the_users_tokens_never_reach_the_browser_or_the_model(env: ChatEnv, fake: ThreadedFake):
    fake.script(tool_calls(("t1", "lakehouse__search", {"query": "Lieferfrist"})), answer("Antwort [1]."))
    async with signed_in(env, BOB) as browser:
        session_id = browser.client.cookies["kontor_chat_session"]
        cid = await browser.new_conversation()
        await browser.ask(cid, "Lieferfrist?")
        for path in (f"/chat/c/{cid}", "/chat/", "/chat/api/me", "/chat/api/settings",
                     f"/chat/api/conversations/{cid}", "/chat/api/conversations"):
            assert (await browser.get(path)).status_code == 200
        await browser.post("/chat/api/upload", content=b"hello", headers={"X-File-Name": "hello.txt"})
        async with env.host_store() as store:
            record = await store.get_tokens(session_id)
        assert record is not None
        access, refresh = record.tokens.access_token, record.tokens.refresh_token
        assert access.count(".") == 2 and refresh
        secrets_ = [access, refresh, access.split(".")[2]]
        for secret in secrets_:
            assert not browser.seen.contains(secret)
            assert secret not in str(dict(browser.client.cookies))
            for request in fake.requests:  # the model server never sees them either
                assert secret.encode() not in request.body and secret not in json.dumps(request.headers)
        # at rest the tokens are encrypted: neither appears in the database files
        for path in (env.root / "host").glob("host.db*"):
            data = path.read_bytes()
            assert access.encode() not in data and refresh.encode() not in data
        assert session_id.encode() not in (env.root / "host" / "host.db").read_bytes()


async def test_logout_revokes_the_tokens_at_the_gateway(env: ChatEnv):
    async with Browser(env.origin) as browser:
        session_id = await browser.login(TENANT, BOB)
        async with env.host_store() as store:
            record = await store.get_tokens(session_id)
        assert record is not None
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        headers = {"Authorization": f"Bearer {record.tokens.access_token}",
                   "Accept": "application/json, text/event-stream"}
        gateway = browser.client
        assert (await gateway.post(env.gw.url(TENANT), json=init, headers=headers)).status_code == 200

        out = await browser.post("/chat/logout", csrf="", content=f"csrf_token={browser.csrf}".encode(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert out.status_code == 303 and out.headers["location"] == "/chat/"
        assert "kontor_chat_session" not in browser.client.cookies
        assert (await browser.get("/chat/api/me")).status_code == 401
        async with env.host_store() as store:
            assert await store.get_tokens(session_id) is None
        deadline = time.monotonic() + 5
        while (await gateway.post(env.gw.url(TENANT), json=init, headers=headers)).status_code != 401:
            assert time.monotonic() < deadline, "the revoked access token still works"
            await asyncio.sleep(0.2)
        refreshed = await gateway.post(f"{env.gw.settings.issuer(TENANT)}/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": record.tokens.refresh_token,
            "client_id": f"{env.origin}/chat/oauth/client.json"})
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


async def test_an_expiring_access_token_is_refreshed_before_use(env: ChatEnv):
    async with signed_in(env, BOB) as browser:
        session_id = browser.client.cookies["kontor_chat_session"]
        async with env.host_store() as store:
            before = await store.get_tokens(session_id)
            assert before is not None
            await store.update_tokens(session_id, TokenSet(before.tokens.access_token,
                                                           datetime.now(UTC) + timedelta(seconds=5)))
        r = await browser.get("/chat/api/passage", params={"document_id": "doc-preisliste", "start": 0, "end": 10})
        assert r.status_code == 200, r.text
        async with env.host_store() as store:
            after = await store.get_tokens(session_id)
        assert after is not None and after.tokens.access_token != before.tokens.access_token
        assert after.tokens.refresh_token != before.tokens.refresh_token  # rotated
        assert after.tokens.expires_at > datetime.now(UTC) + timedelta(minutes=5)


async def test_a_session_whose_refresh_fails_has_to_sign_in_again(env: ChatEnv):
    async with signed_in(env, BOB) as browser:
        session_id = browser.client.cookies["kontor_chat_session"]
        async with env.host_store() as store:
            before = await store.get_tokens(session_id)
            assert before is not None
            await store.update_tokens(session_id, TokenSet(before.tokens.access_token, datetime.now(UTC),
                                                           "not-a-refresh-token"))
        r = await browser.get("/chat/api/passage", params={"document_id": "doc-preisliste", "start": 0, "end": 5})
        assert r.status_code == 401 and r.json()["login"] == "/chat/" and "refreshed" in r.json()["error"]
        assert (await browser.get("/chat/api/me")).status_code == 200  # the session itself is still there
        await browser.post("/chat/logout", csrf="", content=f"csrf_token={browser.csrf}".encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})


async def test_conversations_rename_delete_search_and_feedback(env: ChatEnv, fake: ThreadedFake):
    fake.script(answer("Die Zahlungsfrist beträgt 30 Tage."))
    async with signed_in(env, BOB) as browser:
        cid = await browser.new_conversation()
        events = await browser.ask(cid, "Wie lange ist die Zahlungsfrist?")
        message_id = of(events, "answer_complete")[0]["message_id"]
        other = await browser.new_conversation("Etwas anderes")
        assert (await browser.post(f"/chat/api/conversations/{cid}/rename", {"title": "Zahlung"})).json()[
            "title"] == "Zahlung"
        assert (await browser.post(f"/chat/api/conversations/{cid}/rename", {"title": "  "})).status_code == 400

        def titles(r: httpx.Response) -> list[str]:
            return [c["title"] for c in r.json()["conversations"]]

        assert titles(await browser.get("/chat/api/conversations", params={"q": "zahl"})) == ["Zahlung"]
        assert titles(await browser.get("/chat/api/conversations", params={"q": "30 TAGE"})) == ["Zahlung"]
        assert titles(await browser.get("/chat/api/conversations", params={"q": "anderes"})) == ["Etwas anderes"]
        assert titles(await browser.get("/chat/api/conversations", params={"q": "%"})) == []
        page = await browser.get("/chat/", params={"q": "zahl"})
        assert "Zahlung" in page.text and "Etwas anderes" not in page.text

        assert (await browser.post(f"/chat/api/messages/{message_id}/feedback", {"rating": 5})).status_code == 400
        fb = await browser.post(f"/chat/api/messages/{message_id}/feedback", {"rating": -1, "comment": "zu kurz"})
        assert fb.json() == {"rating": -1, "comment": "zu kurz", "recorded": True}  # also in the lakehouse
        fb = await browser.post(f"/chat/api/messages/{message_id}/feedback", {"rating": 1})
        stored = (await browser.get(f"/chat/api/conversations/{cid}")).json()["messages"][1]["feedback"]
        assert stored == {"rating": 1, "comment": ""}
        page = await browser.get(f"/chat/c/{cid}")
        assert 'aria-label="Good answer" aria-pressed="true"' in page.text

        # what the lakehouse recorded about this user: visible to them, and deletable
        recorded = (await browser.get("/chat/api/recorded")).json()["interactions"]
        mine = [r for r in recorded if r["question"] == "Wie lange ist die Zahlungsfrist?"]
        assert mine and mine[0]["answer"] == "Die Zahlungsfrist beträgt 30 Tage." and mine[0]["feedback"] == 1
        async with signed_in(env, ADA) as ada:  # another user sees none of it
            assert all(r["question"] != "Wie lange ist die Zahlungsfrist?"
                       for r in (await ada.get("/chat/api/recorded")).json()["interactions"])
        assert (await browser.post("/chat/api/recorded/delete", {"ids": "x"})).status_code == 400
        assert (await browser.post("/chat/api/recorded/delete", {"ids": ["i"] * 501})).status_code == 400
        assert (await browser.post("/chat/api/recorded/delete", {"all": True})).json()["deleted"] >= 1
        assert (await browser.get("/chat/api/recorded")).json()["interactions"] == []

        assert (await browser.post(f"/chat/api/conversations/{other}/delete", {})).status_code == 200
        assert (await browser.get(f"/chat/api/conversations/{other}")).status_code == 404
        assert (await browser.get(f"/chat/c/{other}")).status_code == 404
        assert (await browser.get("/chat/c/not-a-uuid")).status_code == 404


async def test_a_second_question_while_one_is_running_is_refused(env: ChatEnv, fake: ThreadedFake):
    fake.script(sse_reply(openai_turn(texts=["langsam"], finish_reason=None, done=False), hang=True))
    async with signed_in(env, BOB) as browser:
        cid = await browser.new_conversation()
        r = await browser.post(f"/chat/api/conversations/{cid}/messages", {"text": "eins"})
        turn_id = r.json()["turn_id"]
        again = await browser.post(f"/chat/api/conversations/{cid}/messages", {"text": "zwei"})
        assert again.status_code == 409
        page = await browser.get(f"/chat/c/{cid}")
        assert f'data-turn-id="{turn_id}"' in page.text  # the page follows the running answer
        assert (await browser.post(f"/chat/api/turns/{turn_id}/stop", {})).status_code == 200
        events = await browser.events(turn_id)
        assert events[-1][2]["stop_reason"] == "cancelled"


# --- in-process: the chat app alone on a seeded database ---------------------------------------------


@dataclass
class Local:
    client: httpx.AsyncClient
    store: HostStore
    sessions: dict[str, tuple[str, str]]  # name -> (cookie value, csrf token)
    owners: dict[str, Any]
    origin: str


@pytest.fixture
async def local(tmp_path: Path, data_root: Path) -> AsyncIterator[Local]:
    settings = GatewaySettings(port=free_port())  # nothing listens there: no gateway in this group
    async with GatewayDB(settings.database_url) as gwdb:
        await gwdb.create_tenant(TENANT, settings={"model": {"provider": "openai", "model": "m",
                                                             "base_url": "http://127.0.0.1:9/v1"}})
    store = HostStore(default_url(data_root), key_path=data_root / "keys" / "host" / "tokens.key")
    await store.init()
    runtime = HostRuntime(settings, HostSettings(), store=store)
    app = Starlette(routes=[Mount("/chat", app=build_host_app(settings, runtime=runtime))])
    sessions, owners = {}, {}
    for name in ("ada", "bob"):
        user = await store.upsert_user(TENANT, f"sub-{name}", f"{name}@acme.example")
        tokens = TokenSet(f"access-token-of-{name}", datetime.now(UTC) + timedelta(hours=1), f"refresh-of-{name}")
        session_id = await store.create_session(user, tokens, settings.issuer(TENANT))
        web = await store.get_session(session_id)
        assert web is not None
        sessions[name] = (session_id, web.csrf_token)
        owners[name] = user.owner
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=settings.origin) as client:
        yield Local(client, store, sessions, owners, settings.origin)
    await runtime.aclose()
    await store.close()


def as_user(local: Local, name: str, *, csrf: bool = True, origin: str | None = "") -> dict[str, Any]:
    session_id, token = local.sessions[name]
    headers = {"Cookie": f"kontor_chat_session={session_id}"}
    if csrf:
        headers["X-CSRF-Token"] = token
    if origin == "":
        headers["Origin"] = local.origin
    elif origin is not None:
        headers["Origin"] = origin
    return headers


async def test_in_process_every_endpoint_hides_other_users_data(local: Local):
    store, ada = local.store, local.owners["ada"]
    conversation = await store.create_conversation(ada, "Ada only")
    await store.add_message(ada, conversation.id, "user", "frage")
    answer_ = await store.add_message(ada, conversation.id, "assistant", "antwort")
    cid, mid = conversation.id, answer_.id
    c = local.client
    bob = as_user(local, "bob")
    checks = [
        await c.get(f"/chat/c/{cid}", headers=bob),
        await c.get(f"/chat/api/conversations/{cid}", headers=bob),
        await c.post(f"/chat/api/conversations/{cid}/rename", json={"title": "x"}, headers=bob),
        await c.post(f"/chat/api/conversations/{cid}/delete", json={}, headers=bob),
        await c.post(f"/chat/api/conversations/{cid}/messages", json={"text": "x"}, headers=bob),
        await c.post(f"/chat/api/messages/{mid}/feedback", json={"rating": 1}, headers=bob),
        await c.get("/chat/api/turns/0123/events", headers=bob),
    ]
    assert [r.status_code for r in checks] == [404] * len(checks)
    assert (await c.get(f"/chat/api/conversations/{cid}", headers=as_user(local, "ada"))).status_code == 200
    assert (await c.get("/chat/api/conversations", headers=bob)).json() == {"conversations": []}
    # without a session: 401 for the API, the sign-in page for pages
    assert (await c.get(f"/chat/api/conversations/{cid}")).status_code == 401
    page = await c.get(f"/chat/c/{cid}")
    assert page.status_code == 200 and "Sign in" in page.text and "Ada only" not in page.text


async def test_in_process_csrf_matrix(local: Local):
    c = local.client
    cases = {
        "no token": as_user(local, "ada", csrf=False),
        "other user's token": {**as_user(local, "ada"), "X-CSRF-Token": local.sessions["bob"][1]},
        "foreign origin": as_user(local, "ada", origin="https://evil.example"),
        "null origin": as_user(local, "ada", origin="null"),
    }
    for name, headers in cases.items():
        r = await c.post("/chat/api/conversations", json={}, headers=headers)
        assert r.status_code == 403, name
    assert (await c.post("/chat/api/conversations", json={}, headers=as_user(local, "ada", origin=None))
            ).status_code == 201  # no Origin header (not a browser): the token alone
    assert (await c.post("/chat/api/conversations", json={}, headers=as_user(local, "ada"))).status_code == 201


async def test_in_process_pages_escape_stored_markup_and_show_no_token(local: Local):
    store, ada = local.store, local.owners["ada"]
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    conversation = await store.create_conversation(ada, evil)
    await store.add_message(ada, conversation.id, "user", evil)
    answer_ = await store.add_message(
        ada, conversation.id, "assistant", evil + " [1]", citations=[{
            "document_id": "d1", "title": evil, "text": evil, "number": 1, "page": 3, "section": evil,
            "char_start": 0, "char_end": 5}])
    await store.record_tool_call(ada, answer_.id, "c1", "fix__html", arguments={"html": evil}, status="ok",
                                 duration_s=0.1, preview=evil, error=evil)
    await store.set_feedback(ada, answer_.id, -1, evil)
    headers = as_user(local, "ada")
    for path in (f"/chat/c/{conversation.id}", "/chat/", f"/chat/?q={evil}"):
        page = await local.client.get(path, headers=headers)
        assert page.status_code == 200
        assert len(re.findall(r"<script", page.text)) == 1  # only chat.js
        assert "<img" not in page.text and "onerror=alert(2)>" not in page.text
        assert "access-token-of-ada" not in page.text and "refresh-of-ada" not in page.text
        assert local.sessions["ada"][0] not in page.text
    page = await local.client.get(f"/chat/c/{conversation.id}", headers=headers)
    assert page.text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5  # title, question, answer, preview, chip
    assert "data-citation=\"{&#34;document_id&#34;: &#34;d1&#34;" in page.text
    api = await local.client.get(f"/chat/api/conversations/{conversation.id}", headers=headers)
    assert "<" not in api.text and ">" not in api.text and api.json()["messages"][1]["tool_calls"][0]["preview"] == evil


def test_json_for_pages_and_events_escapes_markup():
    text = dumps({"t": "</script><script>alert(1)</script>&amp;"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": "</script><script>alert(1)</script>&amp;"}
