"""The bundled web chat: a Starlette app the gateway mounts at ``/chat`` on its own origin.

Pages (server-rendered, Jinja2 with autoescape, one small script and one stylesheet):

* ``GET  /chat/``                      the chat (signed in) or the sign-in page
* ``GET  /chat/c/<conversation>``      one conversation
* ``GET  /chat/login?tenant=T``        starts the OAuth sign-in (:mod:`kontor.host.login`)
* ``GET  /chat/oauth/client.json``     the host's Client ID Metadata Document
* ``GET  /chat/oauth/callback``        the OAuth redirect URI
* ``POST /chat/logout``                revokes the tokens and ends the session

JSON API (signed-in; every POST needs the CSRF token and a same-origin ``Origin``):

* ``GET  /chat/api/me``                                 user, tenant, CSRF token, model
* ``GET  /chat/api/conversations?q=``                   list / search (titles and message text)
* ``POST /chat/api/conversations``                      new ``{"title"}``
* ``GET  /chat/api/conversations/<id>``                 messages with tool calls, citations, feedback
* ``POST /chat/api/conversations/<id>/rename``          ``{"title"}``
* ``POST /chat/api/conversations/<id>/delete``
* ``POST /chat/api/conversations/<id>/messages``        ``{"text", "attachments": [uri, ...]}`` → ``{"turn_id", ...}``:
  starts a turn; each attached resource is read through the gateway and its text added to what the model sees
* ``GET  /chat/api/turns/<turn>/events``                the turn's events as Server-Sent Events
* ``POST /chat/api/turns/<turn>/stop``                  Stop
* ``POST /chat/api/turns/<turn>/approvals/<call>``      ``{"decision": "allow_once"|"always"|"deny"}``
* ``POST /chat/api/turns/<turn>/elicitations/<id>``     ``{"action": "accept"|"decline"|"cancel", "content"}``
* ``POST /chat/api/turns/<turn>/sampling/<id>``         ``{"approve": true|false}``
* ``POST /chat/api/messages/<id>/feedback``             ``{"rating": 1|-1, "comment"}``
* ``GET  /chat/api/passage?document_id=&start=&end=``   the cited passage in its document (``lakehouse__get_document``)
* ``GET  /chat/api/resources?q=``                      the resources and resource templates the user can read
* ``GET  /chat/api/resources/read?uri=``               a resource's text (binary parts described, not inlined)
* ``GET  /chat/api/prompts``                            the prompts with their arguments
* ``POST /chat/api/prompts/get``                        ``{"name", "arguments"}`` → the prompt as text for the composer
* ``GET  /chat/api/settings``, ``POST /chat/api/settings``, ``POST /chat/api/settings/approvals/forget``
* ``POST /chat/api/admin/rules``                        ``{"key", "rule"}`` (``tenant:admin`` only)
* ``POST /chat/api/upload``                             the file as the body, ``X-File-Name``; NDJSON progress

Security: the user's tokens stay server-side (:mod:`kontor.host.store`); the browser holds a
random session cookie (HttpOnly, SameSite=Lax, Secure on https, path ``/chat``). Every
response carries a Content-Security-Policy without inline scripts or styles, anti-framing and
no-store headers. Requests must name one of the gateway's own hosts (DNS rebinding). All text
from models and tools reaches the page as text: Jinja autoescapes it, JSON (API and events) is
written with ``<``, ``>`` and ``&`` escaped, and the script builds the DOM with ``textContent``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import mcp_types as types
from jinja2 import Environment, FileSystemLoader, select_autoescape
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kontor.gateway.config import GatewaySettings, get_gateway_settings
from kontor.host.agent import Agent, AgentConfig, AnswerComplete, ElicitationAnswer
from kontor.host.approvals import ApprovalPolicy, Verdict
from kontor.host.interaction import AnswerRefused, Turn, WebInteraction
from kontor.host.login import GatewayOAuth, LoginError, TokenSource, new_browser_binding
from kontor.host.mcp_session import GatewayAuthError, McpSession, McpSessionError, ToolInfo
from kontor.host.providers import (
    AssistantMessage,
    ModelSettings,
    Provider,
    ProviderConfigError,
    SystemMessage,
    ToolResultMessage,
    UserMessage,
    provider_from_settings,
)
from kontor.host.providers import (
    Message as ProviderMessage,
)
from kontor.host.recording import (
    RecordingError,
    RecordingUnavailable,
    delete_recorded,
    list_recorded,
    record_feedback,
    record_turn,
)
from kontor.host.store import HostStore, NotFound, Owner, StoredMessage, TokensUnavailable, WebSession, default_url
from kontor.settings import get_limits, get_settings
from kontor.tenancy import InvalidTenant, validate_tenant

#: Key under an answer's ``usage`` holding the id of its record in the lakehouse ``interactions``.
INTERACTION_KEY = "interaction_id"
MAX_RECORDED_IDS = 500  # ids per delete request
log = logging.getLogger(__name__)

__all__ = ["HostRuntime", "HostSettings", "build_host_app", "chat_enabled", "dumps"]

PREFIX = "/chat"
SESSION_COOKIE = "kontor_chat_session"
LOGIN_COOKIE = "kontor_chat_login"
UPLOAD_TOOL = "ingest__ingest_upload"
DOCUMENT_TOOL = "lakehouse__get_document"
MAX_JSON_BYTES = 256 * 1024
#: Resources, resource templates and prompts listed at most (``truncated`` says when there were more).
MAX_LISTED = 200
#: Characters of a resource's text the read endpoint returns (more is cut and marked ``truncated``).
MAX_RESOURCE_TEXT = 200_000
#: Resources one message may attach, and the characters of each that the model gets.
MAX_ATTACHMENTS = 5
MAX_ATTACHMENT_CHARS = 50_000
MAX_URI_CHARS = 2048
MAX_PROMPT_ARGUMENTS = 32
MAX_PROMPT_ARGUMENT_CHARS = 10_000
#: How long reading a resource or getting a prompt through the gateway may take.
RESOURCE_TIMEOUT_S = 30.0
HEARTBEAT_S = 15.0
HERE = Path(__file__).parent
ROLE_MESSAGES: dict[str, type[Any]] = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage,
                                       "tool": ToolResultMessage}

#: Line icons (24x24, stroked), shared by the templates and chat.js: no icon font, no emoji font needed.
ICONS = {
    "plus": "M12 5v14M5 12h14",
    "pencil": "M4 20h4L19 9l-4-4L4 16v4zM13.5 6.5l4 4",
    "trash": "M4 7h16M10 11v6M14 11v6M9 7V4h6v3M6 7l1 13h10l1-13",
    "clip": "M20.5 11.5l-8.2 8.2a5 5 0 0 1-7-7l8.5-8.5a3.3 3.3 0 0 1 4.7 4.7l-8.5 8.5a1.7 1.7 0 0 1-2.4-2.4l7.8-7.8",
    "up": "M7 10v11H3V10h4zM7 10l4-8c1.4 0 2.5 1.1 2.5 2.5L13 9h6a2 2 0 0 1 2 2.3l-1.4 8A2 2 0 0 1 17.6 21H7",
    "down": "M17 14V3h4v11h-4zM17 14l-4 8c-1.4 0-2.5-1.1-2.5-2.5L11 15H5a2 2 0 0 1-2-2.3l1.4-8A2 2 0 0 1 6.4 3H17",
    "gear": "M4 6h9M17 6h3M4 12h3M11 12h9M4 18h11M19 18h1M15 4v4M9 10v4M17 16v4",  # sliders
    "menu": "M4 6h16M4 12h16M4 18h16",
    "close": "M6 6l12 12M18 6L6 18",
    "send": "M5 12h14M13 6l6 6-6 6",
    "doc": "M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8l-5-5zM14 3v5h5M9 13h6M9 17h6",
    "prompt": "M4 5h16v11H9l-5 4V5zM8 9h8M8 12h5",
    "back": "M19 12H5M11 6l-6 6 6 6",
}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def chat_enabled() -> bool:
    """``KONTOR_GATEWAY_CHAT`` (default true): whether the gateway serves the web chat at ``/chat``."""
    return os.environ.get("KONTOR_GATEWAY_CHAT", "true").strip().lower() not in ("0", "false", "no", "off")


class HostSettings(BaseSettings):
    """Settings of the web chat (``KONTOR_HOST_*``)."""

    model_config = SettingsConfigDict(env_prefix="KONTOR_HOST_", extra="ignore")

    #: SQLAlchemy async URL of the host's database; default SQLite at <data root>/host/host.db.
    db_url: str = ""
    session_ttl_s: int = 12 * 3600
    #: How long a finished turn's events stay available to late event streams.
    turn_keep_s: float = 300.0
    max_message_chars: int = 20_000
    #: Upload limit in bytes; 0: the ingest server's (KONTOR_LIMIT_MAX_UPLOAD_BYTES).
    max_upload_bytes: int = 0
    #: The workspace the sign-in page suggests ("" : the only tenant, or "demo").
    default_tenant: str = ""
    tenant_settings_ttl_s: float = 5.0


def dumps(data: Any) -> str:
    """JSON for pages and event streams: ``<``, ``>`` and ``&`` escaped, so no markup survives in any form."""
    text = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def _error(status: int, message: str, **extra: Any) -> JSON:
    return JSON({"error": message, **extra}, status_code=status)


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class _Guard:
    """ASGI wrapper: known Host only (DNS rebinding), the canonical origin for pages, security headers."""

    def __init__(self, app: ASGIApp, gateway: GatewaySettings) -> None:
        self.app = app
        origin = urlsplit(gateway.origin)
        self.canonical = origin.netloc.lower()
        self.origin = gateway.origin
        self.hosts = {self.canonical}
        if gateway.dev_mode:
            for name in ("127.0.0.1", "localhost", "[::1]"):
                self.hosts.add(f"{name}:{gateway.port}")
                if origin.port is None:
                    self.hosts.add(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1").lower() for k, v in scope["headers"] if k == b"host"), "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in {k for k, _ in
                                                                                          SECURITY_HEADERS}]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        if host not in self.hosts:
            await Response("unknown host", status_code=421, media_type="text/plain")(scope, receive, with_headers)
            return
        path = scope.get("path", "")  # the full path (Starlette keeps the mount prefix in it)
        if host != self.canonical and scope["method"] == "GET" and "/api/" not in path:
            query = scope.get("query_string", b"").decode("latin-1")
            target = f"{self.origin}{quote(path)}{'?' + query if query else ''}"
            await RedirectResponse(target, status_code=307)(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)


class UserApprovalPolicy(ApprovalPolicy):
    """The approval rules plus the user's own choice to approve every call, also of read-only tools."""

    def __init__(self, *args: Any, ask_all: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ask_all = ask_all

    async def check(self, tool: ToolInfo) -> Verdict:
        verdict = await super().check(tool)
        if self.ask_all and verdict.action == "allow" and tool.read_only:
            return Verdict("ask", "you asked to approve every tool call (settings)")
        return verdict


def _message(data: Mapping[str, Any]) -> ProviderMessage | None:
    kind = ROLE_MESSAGES.get(str(data.get("role")))
    if kind is None:
        return None
    try:
        return kind.model_validate(dict(data))
    except ValidationError:
        return None


def _safe_next(value: str | None) -> str:
    if not value or not value.startswith(f"{PREFIX}/") or value.startswith("//") or "\\" in value \
            or any(ord(c) < 32 for c in value):
        return f"{PREFIX}/"
    return value


#: Key of the entry in a user message's stored ``data`` that lists the resources attached to it (an
#: entry without a ``role``, so the model's history leaves it out).
ATTACHMENTS_KEY = "attachments"


@dataclass(frozen=True)
class Attachment:
    """A resource attached to a question, as read through the gateway when the question was sent."""

    uri: str
    name: str
    mime_type: str | None
    text: str  # what the model gets (at most MAX_ATTACHMENT_CHARS)
    chars: int  # the length of the resource's whole text
    truncated: bool

    def record(self) -> dict[str, Any]:
        """What is stored with the message and shown with it."""
        return {"uri": self.uri, "name": self.name, "mime_type": self.mime_type, "chars": self.chars,
                "truncated": self.truncated}


def _with_attachments(question: str, attachments: list[Attachment]) -> str:
    """The question followed by each attached resource's text, clearly delimited (what the model sees)."""
    blocks = [question]
    for a in attachments:
        cut = f"\n[… cut here: {len(a.text):,} of {a.chars:,} characters attached]" if a.truncated else ""
        blocks.append(f"---\nAttached resource {a.uri}:\n{a.text}{cut}\n--- end of {a.uri}")
    return "\n\n".join(blocks)


def _attachments_of(m: StoredMessage | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The attachment list stored with a user message (``[]`` for none)."""
    data = m.get("data") if isinstance(m, Mapping) else m.data
    for entry in data or []:
        if isinstance(entry, dict) and "role" not in entry and isinstance(entry.get(ATTACHMENTS_KEY), list):
            return [a for a in entry[ATTACHMENTS_KEY] if isinstance(a, dict) and isinstance(a.get("uri"), str)]
    return []


def _blob_size(blob: str) -> int:
    """Bytes of base64 data (without decoding it)."""
    blob = blob.strip()
    return max(0, len(blob) * 3 // 4 - (len(blob) - len(blob.rstrip("="))))


def _resource_parts(result: types.ReadResourceResult, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """A read resource's parts: text parts with their text (at most ``limit`` characters in all, the rest
    cut and marked), binary parts by MIME type and size only."""
    parts: list[dict[str, Any]] = []
    budget, truncated = limit, False
    for content in result.contents:
        uri, mime = str(content.uri), content.mime_type
        if isinstance(content, types.TextResourceContents):
            text = content.text
            cut = len(text) > budget
            if cut:
                text, truncated = text[:budget], True
            budget -= len(text)
            parts.append({"uri": uri, "mimeType": mime, "text": text, "chars": len(content.text), "truncated": cut})
        else:
            parts.append({"uri": uri, "mimeType": mime, "binary": True, "size": _blob_size(content.blob)})
    return parts, truncated


def _resource_json(r: types.Resource) -> dict[str, Any]:
    return {"name": r.name, "title": r.title, "uri": str(r.uri), "description": r.description,
            "mimeType": r.mime_type, "size": r.size}


def _template_json(t: types.ResourceTemplate) -> dict[str, Any]:
    return {"name": t.name, "title": t.title, "uriTemplate": t.uri_template, "description": t.description,
            "mimeType": t.mime_type}


def _prompt_json(p: types.Prompt) -> dict[str, Any]:
    return {"name": p.name, "title": p.title, "description": p.description,
            "arguments": [{"name": a.name, "title": getattr(a, "title", None), "description": a.description,
                           "required": bool(a.required)} for a in p.arguments or []]}


def _content_text(content: Any) -> str:
    """One prompt message's content as text (what is not text is named, not inlined)."""
    if isinstance(content, types.TextContent):
        return content.text
    if isinstance(content, types.EmbeddedResource):
        resource = content.resource
        if isinstance(resource, types.TextResourceContents):
            return f"Resource {resource.uri}:\n{resource.text}"
        return f"[binary resource {resource.uri} ({resource.mime_type or 'unknown type'}) left out]"
    if isinstance(content, types.ResourceLink):
        return f"[resource {content.uri}{': ' + content.name if content.name else ''}]"
    kind = getattr(content, "type", "content")
    mime = getattr(content, "mime_type", None)
    return f"[{kind}{f' ({mime})' if mime else ''} left out]"


def _prompt_text(result: types.GetPromptResult) -> tuple[str, list[dict[str, str]]]:
    """A prompt's messages as one text for the composer: their texts, each labelled with its role when the
    prompt has more than the user's part."""
    messages = [{"role": m.role, "text": _content_text(m.content)} for m in result.messages]
    if all(m["role"] == "user" for m in messages):
        return "\n\n".join(m["text"] for m in messages), messages
    return "\n\n".join(f"{m['role'].capitalize()}: {m['text']}" for m in messages), messages


def _cap(value: Any, limit: int = 16_000) -> Any:
    """``value`` when its JSON is at most ``limit`` characters, else None (structured output in events)."""
    try:
        return value if len(json.dumps(value, default=str)) <= limit else None
    except (TypeError, ValueError):
        return None


class HostRuntime:
    """What the web chat holds while it runs: database, OAuth client, running turns, providers."""

    def __init__(self, gateway: GatewaySettings, settings: HostSettings | None = None, *,
                 store: HostStore | None = None, agent_config: AgentConfig | None = None,
                 session_factory: Callable[..., McpSession] = McpSession) -> None:
        self.gateway = gateway
        self.settings = settings or HostSettings()
        self.data_root = Path(get_settings().data_root)
        self._store = store
        self._own_store = store is None
        self._oauth: GatewayOAuth | None = None
        self._gwdb: Any = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self.agent_config = agent_config or AgentConfig()
        self.session_factory = session_factory
        self.turns: dict[str, Turn] = {}
        self.running: dict[uuid.UUID, Turn] = {}  # conversation id -> its running turn
        self._providers: dict[str, tuple[str, Provider | None, ModelSettings | None]] = {}
        self._retired: list[Provider] = []
        self._tenant_settings: dict[str, tuple[float, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_prune = 0.0
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
        self.env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False, default=str)
        self.env.filters["attachments"] = _attachments_of
        self.static: dict[str, tuple[bytes, str]] = {}
        for name, media in (("chat.js", "text/javascript; charset=utf-8"), ("chat.css", "text/css; charset=utf-8"),
                            ("icon.svg", "image/svg+xml")):
            path = HERE / "static" / name
            if path.exists():
                self.static[name] = (path.read_bytes(), media)
        digest = hashlib.sha256(b"".join(body for body, _ in self.static.values())).hexdigest()[:12]
        self.env.globals.update(prefix=PREFIX, static_version=digest, ICONS=ICONS)

    # -- lifecycle

    @property
    def store(self) -> HostStore:
        assert self._store is not None, "HostRuntime.ready() first"
        return self._store

    @property
    def oauth(self) -> GatewayOAuth:
        assert self._oauth is not None, "HostRuntime.ready() first"
        return self._oauth

    async def ready(self) -> None:
        """Open the database (created on first use); idempotent and safe to call from every request."""
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            if self._store is None:
                url = self.settings.db_url or default_url(self.data_root)
                self._store = HostStore(url, key_path=self.data_root / "keys" / "host" / "tokens.key")
            await self._store.init()
            self._oauth = GatewayOAuth(self.gateway, self._store)
            self._ready = True

    async def aclose(self) -> None:
        for turn in list(self.turns.values()):
            turn.stop.set()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for _, provider, _ in self._providers.values():
            if provider is not None:
                with contextlib.suppress(Exception):
                    await provider.aclose()
        for provider in self._retired:
            with contextlib.suppress(Exception):
                await provider.aclose()
        if self._oauth is not None:
            await self._oauth.aclose()
        if self._gwdb is not None:
            await self._gwdb.close()
        if self._store is not None and self._own_store:
            await self._store.close()
        self._ready = False

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < 600:
            return
        self._last_prune = now
        try:
            await self.store.prune()
        except Exception as exc:  # housekeeping never fails a request
            log.warning("pruning the host's sessions failed: %s", type(exc).__name__)
        for key, turn in list(self.turns.items()):
            if turn.done and turn.finished_at is not None and now - turn.finished_at > self.settings.turn_keep_s:
                self.turns.pop(key, None)

    # -- tenant settings and models

    async def tenant_settings(self, tenant: str) -> dict[str, Any]:
        """The tenant's settings from the gateway's database (cached briefly); {} when unreadable."""
        now = time.monotonic()
        hit = self._tenant_settings.get(tenant)
        if hit is not None and now - hit[0] < self.settings.tenant_settings_ttl_s:
            return hit[1]
        values: dict[str, Any] = {}
        try:
            if self._gwdb is None:
                from kontor.gateway.db import GatewayDB

                self._gwdb = GatewayDB(self.gateway.database_url)
            row = await self._gwdb.get_tenant(tenant)
            values = dict(row.settings or {}) if row is not None else {}
        except Exception as exc:
            log.warning("reading the settings of tenant %s failed: %s", tenant, type(exc).__name__)
        self._tenant_settings[tenant] = (now, values)
        return values

    async def tenant_names(self) -> list[str]:
        try:
            if self._gwdb is None:
                from kontor.gateway.db import GatewayDB

                self._gwdb = GatewayDB(self.gateway.database_url)
            return [t.id for t in await self._gwdb.list_tenants()]
        except Exception:
            return []

    async def model_for(self, tenant: str) -> tuple[Provider | None, ModelSettings | None, str | None]:
        """The tenant's provider (None: no model), its settings, and a problem to show (or None)."""
        raw = (await self.tenant_settings(tenant)).get("model")
        if not raw:
            return None, None, None
        key = json.dumps(raw, sort_keys=True, default=str)
        cached = self._providers.get(tenant)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2], None
        try:
            settings = ModelSettings.model_validate(raw)
            provider = provider_from_settings(settings)
        except (ValidationError, ProviderConfigError, TypeError, ValueError) as exc:
            log.warning("the model settings of tenant %s are not usable: %s", tenant, type(exc).__name__)
            return None, None, ("The model settings of this workspace are not usable, so this is answered with "
                                "retrieved passages only. Ask your administrator to check them.")
        if cached is not None and cached[1] is not None:
            self._retired.append(cached[1])  # turns may still use it; closed at shutdown
        self._providers[tenant] = (key, provider, settings)
        return provider, settings, None

    async def model_label(self, tenant: str) -> str:
        provider, settings, problem = await self.model_for(tenant)
        if problem:
            return "Model settings not usable: retrieved passages only"
        if provider is None or settings is None:
            return "No model: retrieved passages only"
        return f"{settings.effective_model} ({settings.provider})"

    # -- sessions

    async def web_session(self, request: Request) -> tuple[WebSession, str] | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        session = await self.store.get_session(session_id)
        return (session, session_id) if session is not None else None

    def token_source(self, session_id: str, tenant: str) -> TokenSource:
        return TokenSource(self.oauth, session_id, tenant)

    @contextlib.asynccontextmanager
    async def mcp(self, session_id: str, tenant: str, **kwargs: Any) -> AsyncIterator[McpSession]:
        """The user's MCP session with the tenant's gateway endpoint (a refreshed token on a 401)."""
        source = self.token_source(session_id, tenant)
        endpoint = self.gateway.resource_uri(tenant)
        await source.current()  # refreshed now if due: a failed refresh is a LoginError, not a transport error
        try:
            session = self.session_factory(endpoint, source, gateway_origin=self.gateway.origin, **kwargs)
            await session.connect()
        except GatewayAuthError:
            await source.current(force_refresh=True)
            session = self.session_factory(endpoint, source, gateway_origin=self.gateway.origin, **kwargs)
            await session.connect()
        try:
            yield session
        finally:
            await session.close()

    # -- turns

    def ensure_idle(self, conversation_id: uuid.UUID) -> None:
        """Refuse (409) while an answer is still being written in the conversation."""
        current = self.running.get(conversation_id)
        if current is not None and not current.done and not current.answered:
            raise _Refused(_error(409, "an answer is still being written in this conversation; stop it first"))

    async def start_turn(self, web: WebSession, session_id: str, conversation_id: uuid.UUID, text: str,
                         attachments: list[Attachment] | None = None) -> tuple[Turn, StoredMessage]:
        """Store the question and start answering it. ``attachments``: resources already read; their text
        is part of what the model sees (and, through the stored history, of later turns), while the
        message shows the question with the list of attachments."""
        owner = web.owner
        self.ensure_idle(conversation_id)
        history = [m for m in (_message(d) for d in await self.store.history(owner, conversation_id)) if m]
        attachments = attachments or []
        user_message = UserMessage(text=_with_attachments(text, attachments))
        data: list[Any] = [user_message.model_dump(mode="json")]
        if attachments:
            data.append({ATTACHMENTS_KEY: [a.record() for a in attachments]})
        stored = await self.store.add_message(owner, conversation_id, "user", text, data=data, title_if_empty=text)
        answer = await self.store.add_message(owner, conversation_id, "assistant", "", partial=True,
                                              stop_reason="running")
        turn = Turn(owner, conversation_id, answer.id)
        self.turns[turn.id] = turn
        self.running[conversation_id] = turn
        ask_all = bool(web.user.settings.get("ask_every_tool"))
        turn.task = self.spawn(self._drive(turn, web, session_id, history, user_message, ask_all, question=text),
                               f"kontor-chat-turn-{turn.id}")
        return turn, stored

    async def _drive(self, turn: Turn, web: WebSession, session_id: str, history: list[ProviderMessage],
                     user_message: UserMessage, ask_all: bool, *, question: str | None = None) -> None:
        tenant = web.user.tenant
        answered = False
        texts: list[str] = []
        failure: str | None = None
        try:
            provider, _, problem = await self.model_for(tenant)
            if problem:
                turn.emit("notice", {"kind": "model_settings", "message": problem})
            question = user_message.text if question is None else question
            if provider is None:  # retrieval only: the question is what is searched, not the attachments
                user_message = UserMessage(text=question)
            policy = UserApprovalPolicy(self.store.approvals, tenant, web.user.subject, ask_all=ask_all)
            async with self.mcp(session_id, tenant, default_timeout_s=self.agent_config.tool_timeout_s) as mcp:
                agent = Agent(provider, mcp, policy, WebInteraction(turn), self.agent_config)
                finished: list[Any] = []
                final: AnswerComplete | None = None
                async for event in agent.run(history, user_message, stop=turn.stop):
                    if event.type == "text_delta":
                        texts.append(event.text)  # type: ignore[union-attr]
                    elif event.type == "tool_call_finished":
                        finished.append(event)
                    elif isinstance(event, AnswerComplete):
                        final = event
                    await self._record(turn, event)
                    data = event.to_dict()
                    data.pop("type", None)
                    if isinstance(event, AnswerComplete):
                        answered = turn.answered = True
                        data.pop("messages", None)
                        data["message_id"] = str(turn.message_id)
                    elif event.type == "tool_call_finished":
                        data["structured_content"] = _cap(data.get("structured_content"))
                    turn.emit(event.type, data)
                if final is not None and not final.partial and final.text:
                    await self._record_interaction(turn, mcp, question, final, finished)
        except asyncio.CancelledError:
            failure = "The answer was interrupted (the server is shutting down)."
            raise
        except LoginError as exc:
            failure = f"{exc}".capitalize()
            turn.emit("error", {"message": failure, "kind": "auth", "retryable": False})
        except (McpSessionError, OSError) as exc:
            failure = f"The gateway could not be used: {exc}"
            turn.emit("error", {"message": failure, "kind": "gateway", "retryable": True})
        except Exception as exc:
            log.exception("a chat turn failed")
            failure = f"The answer failed unexpectedly ({type(exc).__name__})."
            turn.emit("error", {"message": failure, "kind": "internal", "retryable": False})
        finally:
            if not answered:
                text = "".join(texts)
                stop_reason = "cancelled" if turn.stop.is_set() and failure is None else "error"
                with contextlib.suppress(Exception):
                    await self.store.update_message(
                        turn.owner, turn.message_id, text=text, partial=True, stop_reason=stop_reason,
                        notice=failure, data=[AssistantMessage(text=text or "(no answer)").model_dump(mode="json")])
                turn.answered = True
                turn.emit("answer_complete", {"text": text, "citations": [], "partial": True,
                                              "stop_reason": stop_reason, "mode": "generated", "notice": failure,
                                              "message_id": str(turn.message_id)})
            turn.finish()
            if self.running.get(turn.conversation_id) is turn:
                self.running.pop(turn.conversation_id, None)

    async def _record(self, turn: Turn, event: Any) -> None:
        """Persist what a turn event changes (tool calls, the answer); never fails the turn."""
        store, owner, mid = self.store, turn.owner, turn.message_id
        try:
            kind = event.type
            if kind == "tool_call_started":
                await store.record_tool_call(owner, mid, event.call_id, event.tool, arguments=dict(event.arguments),
                                             status="running")
            elif kind == "approval_decided":
                await store.record_tool_call(owner, mid, event.call_id, event.tool, status="running",
                                             approval=event.decision)
            elif kind == "tool_call_finished":
                await store.record_tool_call(owner, mid, event.call_id, event.tool, status=event.status,
                                             duration_s=round(event.duration_s, 3), preview=event.preview,
                                             error=event.error)
            elif kind == "answer_complete":
                data = event.to_dict()
                await store.update_message(
                    owner, mid, text=event.text, data=[m.model_dump(mode="json") for m in event.messages[1:]],
                    citations=data["citations"], partial=event.partial, stop_reason=event.stop_reason,
                    mode=event.mode, notice=event.notice or "",
                    usage={"input_tokens": event.input_tokens, "output_tokens": event.output_tokens,
                           "steps": event.steps})
        except NotFound:
            pass  # the conversation was deleted meanwhile
        except Exception:
            log.exception("recording a turn event failed")

    async def _record_interaction(self, turn: Turn, mcp: McpSession, question: str, final: AnswerComplete,
                                  finished: list[Any]) -> None:
        """The question, answer and tools in the tenant's lakehouse ``interactions`` (through the gateway,
        with the user's own ``lakehouse:interactions`` scope); its id is kept with the answer for feedback."""
        interaction_id = await record_turn(mcp, question=question, answer_event=final, tool_events=finished,
                                           conversation_id=turn.conversation_id, message_id=turn.message_id)
        if interaction_id is None:
            return
        with contextlib.suppress(Exception):
            await self.store.update_message(turn.owner, turn.message_id, usage={
                "input_tokens": final.input_tokens, "output_tokens": final.output_tokens, "steps": final.steps,
                INTERACTION_KEY: interaction_id})

    def turn_for(self, turn_id: str, owner: Owner) -> Turn:
        turn = self.turns.get(turn_id)
        if turn is None or turn.owner != owner:
            raise NotFound("no such turn")
        return turn


# --- request helpers -----------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _Refused(_error(413, f"the request is larger than {limit:,} bytes"))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _Refused(_error(413, f"the request is larger than {limit:,} bytes"))
    return bytes(body)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await _read_body(request, MAX_JSON_BYTES)
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Refused(_error(400, "the body must be JSON")) from None
    if not isinstance(data, dict):
        raise _Refused(_error(400, "the body must be a JSON object"))
    return data


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("not found") from None


def _message_json(m: StoredMessage) -> dict[str, Any]:
    return {
        "id": str(m.id), "role": m.role, "text": m.text, "citations": m.citations, "partial": m.partial,
        "stop_reason": m.stop_reason, "mode": m.mode, "notice": m.notice, "usage": m.usage,
        "created_at": m.created_at.isoformat(),
        "tool_calls": [{"call_id": c.call_id, "tool": c.tool, "arguments": c.arguments, "status": c.status,
                        "duration_s": c.duration_s, "preview": c.preview, "error": c.error, "approval": c.approval}
                       for c in m.tool_calls],
        "feedback": ({"rating": m.feedback.rating, "comment": m.feedback.comment} if m.feedback else None),
        "attachments": _attachments_of(m),
    }


def _coerce(schema: Mapping[str, Any], content: Any) -> dict[str, Any]:
    """The form's values checked against the flat elicitation schema (types, enums, required)."""
    if not isinstance(content, dict):
        raise ValueError("content must be an object")
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    out: dict[str, Any] = {}
    for name, spec in properties.items():
        if name not in content or content[name] in (None, ""):
            continue
        value, kind = content[name], (spec or {}).get("type")
        if kind == "boolean":
            value = value if isinstance(value, bool) else str(value).lower() in ("true", "1", "on", "yes")
        elif kind == "integer":
            value = int(value)
        elif kind == "number":
            value = float(value)
        else:
            value = str(value)
        enum = (spec or {}).get("enum")
        if isinstance(enum, list) and value not in enum:
            raise ValueError(f"{name}: choose one of the offered values")
        out[name] = value
    for name in schema.get("required") or []:
        if name not in out and (properties.get(name) or {}).get("type") != "boolean":
            raise ValueError(f"{name} is required")
        if name not in out:
            out[name] = False
    return out


# --- the app ---------------------------------------------------------------------------------------


class HostApp:
    """Routes and handlers (see the module docstring)."""

    def __init__(self, rt: HostRuntime) -> None:
        self.rt = rt
        self.secure = rt.gateway.origin.startswith("https://")
        limit = rt.settings.max_upload_bytes or get_limits().max_upload_bytes
        self.max_upload = limit

    # -- plumbing

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.rt.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def error_page(self, title: str, message: str, status: int = 400) -> HTMLResponse:
        return self.page("error.html", status, title=title, message=message)

    def _origin_ok(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is not None:
            return origin == self.rt.gateway.origin
        site = request.headers.get("sec-fetch-site")
        return site in (None, "same-origin", "none")

    async def _csrf(self, request: Request, web: WebSession, form: Mapping[str, str] | None = None) -> None:
        if not self._origin_ok(request):
            raise _Refused(_error(403, "cross-origin request refused"))
        sent = request.headers.get("x-csrf-token") or (form or {}).get("csrf_token", "")
        if not sent or not hmac.compare_digest(sent.encode(), web.csrf_token.encode()):
            raise _Refused(_error(403, "missing or invalid CSRF token"))

    def handler(self, fn: Callable[..., Awaitable[Response]], *, auth: str = "api",
                csrf: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler: database ready, signed-in session (``auth``: api → 401, page → sign-in,
        none), CSRF on POSTs, errors as responses."""

        async def endpoint(request: Request) -> Response:
            rt = self.rt
            try:
                await rt.ready()
                await rt.maybe_prune()
                if auth == "none":
                    return await fn(request)
                found = await rt.web_session(request)
                if found is None:
                    if auth == "page":
                        return await self.signin(request)
                    return _error(401, "not signed in", login=f"{PREFIX}/")
                web, session_id = found
                if csrf:
                    await self._csrf(request, web)
                return await fn(request, web, session_id)
            except _Refused as refused:
                return refused.response
            except NotFound:
                if auth == "page":
                    return self.error_page("Not found", "There is no such conversation.", 404)
                return _error(404, "not found")
            except (TokensUnavailable, LoginError) as exc:  # the tokens are gone or can no longer be refreshed
                if auth == "page":
                    return await self.signin(request, "Your sign-in has ended; please sign in again.", 401)
                message = str(exc) if isinstance(exc, LoginError) else "your sign-in cannot be read any more"
                return _error(401, message, login=f"{PREFIX}/")

        return endpoint

    def routes(self) -> list[Route]:
        h = self.handler
        return [
            Route("/", h(self.index, auth="page"), methods=["GET"]),
            Route("/c/{cid}", h(self.conversation_page, auth="page"), methods=["GET"]),
            Route("/login", h(self.login, auth="none"), methods=["GET"]),
            Route("/logout", h(self.logout, auth="none"), methods=["POST"]),
            Route("/oauth/client.json", h(self.client_metadata, auth="none"), methods=["GET"]),
            Route("/oauth/callback", h(self.callback, auth="none"), methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
            Route("/api/me", h(self.me), methods=["GET"]),
            Route("/api/conversations", h(self.list_conversations), methods=["GET"]),
            Route("/api/conversations", h(self.create_conversation, csrf=True), methods=["POST"]),
            Route("/api/conversations/{cid}", h(self.get_conversation), methods=["GET"]),
            Route("/api/conversations/{cid}/rename", h(self.rename_conversation, csrf=True), methods=["POST"]),
            Route("/api/conversations/{cid}/delete", h(self.delete_conversation, csrf=True), methods=["POST"]),
            Route("/api/conversations/{cid}/messages", h(self.post_message, csrf=True), methods=["POST"]),
            Route("/api/turns/{tid}/events", h(self.events), methods=["GET"]),
            Route("/api/turns/{tid}/stop", h(self.stop, csrf=True), methods=["POST"]),
            Route("/api/turns/{tid}/approvals/{call_id}", h(self.approve, csrf=True), methods=["POST"]),
            Route("/api/turns/{tid}/elicitations/{eid}", h(self.elicitation, csrf=True), methods=["POST"]),
            Route("/api/turns/{tid}/sampling/{sid}", h(self.sampling, csrf=True), methods=["POST"]),
            Route("/api/messages/{mid}/feedback", h(self.feedback, csrf=True), methods=["POST"]),
            Route("/api/passage", h(self.passage), methods=["GET"]),
            Route("/api/resources", h(self.list_resources), methods=["GET"]),
            Route("/api/resources/read", h(self.read_resource), methods=["GET"]),
            Route("/api/prompts", h(self.list_prompts), methods=["GET"]),
            Route("/api/prompts/get", h(self.get_prompt, csrf=True), methods=["POST"]),
            Route("/api/recorded", h(self.list_recorded_interactions), methods=["GET"]),
            Route("/api/recorded/delete", h(self.delete_recorded_interactions, csrf=True), methods=["POST"]),
            Route("/api/settings", h(self.get_settings), methods=["GET"]),
            Route("/api/settings", h(self.update_settings, csrf=True), methods=["POST"]),
            Route("/api/settings/approvals/forget", h(self.forget_approval, csrf=True), methods=["POST"]),
            Route("/api/admin/rules", h(self.admin_rule, csrf=True), methods=["POST"]),
            Route("/api/upload", h(self.upload, csrf=True), methods=["POST"]),
        ]

    async def static(self, request: Request) -> Response:
        hit = self.rt.static.get(request.path_params["name"])
        if hit is None:
            return Response("not found", status_code=404, media_type="text/plain")
        body, media = hit
        cache = "public, max-age=31536000, immutable" if request.query_params.get("v") else "no-cache"
        return Response(body, media_type=media, headers={"Cache-Control": cache})

    # -- sign-in

    async def signin(self, request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
        tenant = self.rt.settings.default_tenant
        if not tenant:
            names = await self.rt.tenant_names()
            tenant = names[0] if len(names) == 1 else ("demo" if "demo" in names else "")
        next_path = _safe_next(request.url.path if request.url.path.startswith(f"{PREFIX}/c/") else None)
        return self.page("signin.html", status, tenant=tenant, error=error, next=next_path)

    async def login(self, request: Request) -> Response:
        tenant = (request.query_params.get("tenant") or "").strip().lower()
        try:
            validate_tenant(tenant)
        except InvalidTenant:
            return await self.signin(request, "Enter the name of your workspace (lowercase letters, digits, "
                                              "hyphens).", 400)
        binding = new_browser_binding()
        try:
            url = await self.rt.oauth.start(tenant, binding, _safe_next(request.query_params.get("next")))
        except LoginError as exc:
            return await self.signin(request, str(exc).capitalize() + ".", 400)
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(LOGIN_COOKIE, binding, max_age=600, path=f"{PREFIX}/oauth/", httponly=True,
                            samesite="lax", secure=self.secure)
        return response

    async def client_metadata(self, request: Request) -> Response:
        return JSON(self.rt.oauth.client_metadata(), headers={"Cache-Control": "public, max-age=300"})

    async def callback(self, request: Request) -> Response:
        params = dict(request.query_params)
        binding = request.cookies.get(LOGIN_COOKIE, "")
        try:
            signed_in = await self.rt.oauth.finish(params, binding,
                                                   session_ttl=timedelta(seconds=self.rt.settings.session_ttl_s))
        except LoginError as exc:
            response = self.error_page("Sign-in failed", str(exc).capitalize() + ".", 400)
            response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/oauth/")
            return response
        old = request.cookies.get(SESSION_COOKIE)
        if old:  # a session from before this sign-in is over
            with contextlib.suppress(Exception):
                await self._end_session(old)
        response = RedirectResponse(signed_in.return_to, status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/oauth/")
        response.set_cookie(SESSION_COOKIE, signed_in.session_id, max_age=self.rt.settings.session_ttl_s,
                            path=PREFIX, httponly=True, samesite="lax", secure=self.secure)
        return response

    async def _end_session(self, session_id: str) -> None:
        record = await self.rt.store.delete_session(session_id)
        if record is not None:
            await self.rt.oauth.revoke(record.tenant, record.tokens)

    async def logout(self, request: Request) -> Response:
        found = await self.rt.web_session(request)
        if found is not None:
            web, session_id = found
            form: dict[str, str] = {}
            if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                body = await _read_body(request, 4096)
                form = dict(parse_qsl(body.decode("utf-8", "replace")))
            await self._csrf(request, web, form)
            await self._end_session(session_id)
        wants_json = "application/json" in request.headers.get("accept", "")
        response: Response = JSON({"ok": True}) if wants_json else RedirectResponse(f"{PREFIX}/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # -- pages

    async def _page_context(self, web: WebSession, q: str = "") -> dict[str, Any]:
        conversations = await self.rt.store.list_conversations(web.owner, q or None)
        return {"user": web.user, "csrf": web.csrf_token, "conversations": conversations, "q": q,
                "model": await self.rt.model_label(web.user.tenant), "tenant": web.user.tenant,
                "max_upload": self.max_upload}

    async def index(self, request: Request, web: WebSession, session_id: str) -> Response:
        q = (request.query_params.get("q") or "")[:200]
        return self.page("chat.html", **await self._page_context(web, q), conversation=None, messages=[],
                         turn=None)

    async def conversation_page(self, request: Request, web: WebSession, session_id: str) -> Response:
        cid = _uuid(request.path_params["cid"])
        conversation = await self.rt.store.get_conversation(web.owner, cid)
        messages = await self.rt.store.list_messages(web.owner, cid)
        turn = self.rt.running.get(cid)
        if turn is not None and (turn.done or turn.answered):
            turn = None
        if turn is not None:  # the running answer is replayed from its events by the script
            messages = [m for m in messages if m.id != turn.message_id]
        return self.page("chat.html", **await self._page_context(web), conversation=conversation, messages=messages,
                         turn=turn)

    # -- API: conversations

    async def me(self, request: Request, web: WebSession, session_id: str) -> Response:
        return JSON({"email": web.user.email, "subject": web.user.subject, "tenant": web.user.tenant,
                     "csrf_token": web.csrf_token, "scope": web.scope,
                     "model": await self.rt.model_label(web.user.tenant)})

    async def list_conversations(self, request: Request, web: WebSession, session_id: str) -> Response:
        q = (request.query_params.get("q") or "")[:200]
        items = await self.rt.store.list_conversations(web.owner, q or None)
        return JSON({"conversations": [{"id": str(c.id), "title": c.title, "updated_at": c.updated_at.isoformat()}
                                       for c in items]})

    async def create_conversation(self, request: Request, web: WebSession, session_id: str) -> Response:
        data = await _json_body(request)
        title = data.get("title") if isinstance(data.get("title"), str) else ""
        c = await self.rt.store.create_conversation(web.owner, title)
        return JSON({"id": str(c.id), "title": c.title, "url": f"{PREFIX}/c/{c.id}"}, status_code=201)

    async def get_conversation(self, request: Request, web: WebSession, session_id: str) -> Response:
        cid = _uuid(request.path_params["cid"])
        c = await self.rt.store.get_conversation(web.owner, cid)
        messages = await self.rt.store.list_messages(web.owner, cid)
        turn = self.rt.running.get(cid)
        return JSON({"id": str(c.id), "title": c.title, "messages": [_message_json(m) for m in messages],
                     "running_turn": turn.id if turn is not None and not (turn.done or turn.answered) else None})

    async def rename_conversation(self, request: Request, web: WebSession, session_id: str) -> Response:
        data = await _json_body(request)
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            return _error(400, "a title is required")
        c = await self.rt.store.rename_conversation(web.owner, _uuid(request.path_params["cid"]), title)
        return JSON({"id": str(c.id), "title": c.title})

    async def delete_conversation(self, request: Request, web: WebSession, session_id: str) -> Response:
        cid = _uuid(request.path_params["cid"])
        await self.rt.store.get_conversation(web.owner, cid)  # not found for anybody else
        turn = self.rt.running.get(cid)
        if turn is not None:
            turn.stop.set()
        await self.rt.store.delete_conversation(web.owner, cid)
        return JSON({"ok": True})

    async def post_message(self, request: Request, web: WebSession, session_id: str) -> Response:
        cid = _uuid(request.path_params["cid"])
        data = await _json_body(request)
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "the message is empty")
        if len(text) > self.rt.settings.max_message_chars:
            return _error(413, f"the message is longer than {self.rt.settings.max_message_chars:,} characters")
        raw = data.get("attachments")
        if raw is None:
            raw = []
        if not isinstance(raw, list) or not all(isinstance(u, str) and u.strip() and len(u) <= MAX_URI_CHARS
                                                and not any(ord(c) < 32 for c in u) for u in raw):
            return _error(400, "attachments must be a list of resource URIs")
        uris = list(dict.fromkeys(u.strip() for u in raw))
        if len(uris) > MAX_ATTACHMENTS:
            return _error(400, f"at most {MAX_ATTACHMENTS} resources can be attached to a message")
        await self.rt.store.get_conversation(web.owner, cid)
        self.rt.ensure_idle(cid)
        attachments = await self._read_attachments(web, session_id, uris) if uris else []
        turn, stored = await self.rt.start_turn(web, session_id, cid, text.strip(), attachments)
        return JSON({"turn_id": turn.id, "events": f"{PREFIX}/api/turns/{turn.id}/events",
                     "user_message_id": str(stored.id), "message_id": str(turn.message_id)}, status_code=202)

    # -- API: a running turn

    async def events(self, request: Request, web: WebSession, session_id: str) -> Response:
        turn = self.rt.turn_for(request.path_params["tid"], web.owner)
        start = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        after = int(start) if start.isdigit() else 0

        async def stream() -> AsyncIterator[bytes]:
            nonlocal after
            yield b"retry: 2000\n\n"
            while True:
                events = await turn.wait_events(after, HEARTBEAT_S)
                if not events:
                    if turn.done and len(turn.events) <= after:
                        return
                    yield b": keep-alive\n\n"
                    continue
                chunk = []
                for event in events:
                    chunk.append(f"id: {event.seq}\nevent: {event.type}\ndata: {dumps(event.data)}\n\n")
                    after = event.seq
                yield "".join(chunk).encode("utf-8")
                if turn.done and len(turn.events) <= after:
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def stop(self, request: Request, web: WebSession, session_id: str) -> Response:
        turn = self.rt.turn_for(request.path_params["tid"], web.owner)
        turn.stop.set()
        return JSON({"ok": True, "done": turn.done})

    async def approve(self, request: Request, web: WebSession, session_id: str) -> Response:
        turn = self.rt.turn_for(request.path_params["tid"], web.owner)
        decision = (await _json_body(request)).get("decision")
        if decision not in ("allow_once", "always", "deny"):
            return _error(400, "decision must be allow_once, always or deny")
        try:
            turn.answer("approval", request.path_params["call_id"], decision)
        except AnswerRefused as exc:
            return _error(409, str(exc))
        return JSON({"ok": True})

    async def elicitation(self, request: Request, web: WebSession, session_id: str) -> Response:
        turn = self.rt.turn_for(request.path_params["tid"], web.owner)
        key = request.path_params["eid"]
        data = await _json_body(request)
        action = data.get("action")
        if action == "accept":
            schema = next((e.data.get("schema") for e in turn.events
                           if e.type == "elicitation" and e.data.get("id") == key), None)
            try:
                answer = ElicitationAnswer.accept(_coerce(schema or {}, data.get("content")))
            except (ValueError, TypeError) as exc:
                return _error(400, f"the form is not valid: {exc}")
        elif action == "decline":
            answer = ElicitationAnswer.decline()
        elif action == "cancel":
            answer = ElicitationAnswer.cancel()
        else:
            return _error(400, "action must be accept, decline or cancel")
        try:
            turn.answer("elicitation", key, answer)
        except AnswerRefused as exc:
            return _error(409, str(exc))
        return JSON({"ok": True})

    async def sampling(self, request: Request, web: WebSession, session_id: str) -> Response:
        turn = self.rt.turn_for(request.path_params["tid"], web.owner)
        approve = (await _json_body(request)).get("approve")
        if not isinstance(approve, bool):
            return _error(400, "approve must be true or false")
        try:
            turn.answer("sampling", request.path_params["sid"], approve)
        except AnswerRefused as exc:
            return _error(409, str(exc))
        return JSON({"ok": True})

    # -- API: feedback, passages, settings

    async def feedback(self, request: Request, web: WebSession, session_id: str) -> Response:
        data = await _json_body(request)
        rating = data.get("rating")
        comment = data.get("comment") if isinstance(data.get("comment"), str) else ""
        if rating not in (1, -1) or isinstance(rating, bool):
            return _error(400, "rating must be 1 (thumbs up) or -1 (thumbs down)")
        mid = _uuid(request.path_params["mid"])
        try:
            fb = await self.rt.store.set_feedback(web.owner, mid, rating, comment)
        except ValueError as exc:
            return _error(400, str(exc))
        interaction_id = (await self.rt.store.get_message(web.owner, mid)).usage.get(INTERACTION_KEY)
        recorded = False
        if isinstance(interaction_id, str):  # the training data gets the rating too
            with contextlib.suppress(McpSessionError, OSError):
                async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                    recorded = await record_feedback(mcp, interaction_id, rating, comment or None)
        return JSON({"rating": fb.rating, "comment": fb.comment, "recorded": recorded})

    async def list_recorded_interactions(self, request: Request, web: WebSession, session_id: str) -> Response:
        """What the tenant's lakehouse recorded about this user (questions, answers, tools, feedback)."""
        cursor = request.query_params.get("cursor") or None
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                page = await list_recorded(mcp, limit=50, cursor=cursor)
        except RecordingUnavailable as exc:
            return _error(404, str(exc))
        except (RecordingError, McpSessionError, OSError) as exc:
            return _error(502, f"the recorded interactions could not be read: {exc}")
        return JSON({"interactions": [dict(i) for i in page.interactions], "total": page.total,
                     "next_cursor": page.next_cursor})

    async def delete_recorded_interactions(self, request: Request, web: WebSession, session_id: str) -> Response:
        """Delete what was recorded about this user: ``{"ids": [...]}`` or ``{"all": true}``."""
        data = await _json_body(request)
        ids = data.get("ids")
        which: Any = "all" if data.get("all") is True else ids
        if which != "all" and (not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids)):
            return _error(400, 'send {"ids": [...]} or {"all": true}')
        if which != "all" and (len(ids) > MAX_RECORDED_IDS or any(len(i) > 128 for i in ids)):
            return _error(400, f"at most {MAX_RECORDED_IDS} ids of at most 128 characters each")
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                deleted = await delete_recorded(mcp, which)
        except RecordingUnavailable as exc:
            return _error(404, str(exc))
        except (RecordingError, McpSessionError, OSError) as exc:
            return _error(502, f"the recorded interactions could not be deleted: {exc}")
        return JSON({"deleted": deleted})

    async def passage(self, request: Request, web: WebSession, session_id: str) -> Response:
        """The cited passage with some text around it, read through the gateway like any tool call."""
        params = request.query_params
        document_id = params.get("document_id") or ""
        try:
            start = max(0, int(params.get("start") or 0))
            end = max(start, int(params.get("end") or start))
        except ValueError:
            return _error(400, "start and end must be numbers")
        if not document_id or len(document_id) > 256:
            return _error(400, "document_id is required")
        end = min(end, start + 20_000)
        offset = max(0, start - 400)
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                if await mcp.tool(DOCUMENT_TOOL) is None:
                    return _error(404, "the document reader is not available to you")
                result = await mcp.call_tool(DOCUMENT_TOOL, {"document_id": document_id, "text_offset": offset,
                                                             "max_chars": (end - offset) + 400}, timeout_s=30)
        except (McpSessionError, OSError) as exc:
            return _error(502, f"the document could not be read: {exc}")
        doc = result.structured_content if isinstance(result.structured_content, dict) else None
        if result.is_error or doc is None or not isinstance(doc.get("text"), str):
            return _error(404, "the document could not be read")
        text = doc["text"]
        base = int(doc.get("text_offset") or offset)
        a, b = max(0, start - base), max(0, end - base)
        return JSON({"document_id": document_id, "title": doc.get("title"), "source": doc.get("source"),
                     "before": text[:a], "passage": text[a:b], "after": text[b:],
                     "truncated_before": base > 0, "truncated_after": doc.get("next_text_offset") is not None})

    # -- API: resources and prompts (read through the gateway with the user's session)

    async def _read_attachments(self, web: WebSession, session_id: str, uris: list[str]) -> list[Attachment]:
        """Read the resources attached to a message; refuses the message (400) when one cannot be read
        or has no text."""
        out: list[Attachment] = []
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                names: dict[str, str] = {}
                with contextlib.suppress(MCPError):
                    async with asyncio.timeout(RESOURCE_TIMEOUT_S):
                        names = {str(r.uri): r.title or r.name for r in await mcp.list_resources()}
                for uri in uris:
                    try:
                        async with asyncio.timeout(RESOURCE_TIMEOUT_S):
                            result = await mcp.read_resource(uri)
                    except MCPError as exc:
                        raise _Refused(_error(400, f"the resource {uri} could not be attached: {exc.message}",
                                              uri=uri)) from None
                    parts, truncated = _resource_parts(result, MAX_ATTACHMENT_CHARS)
                    texts = [p for p in parts if "text" in p]
                    if not texts:
                        raise _Refused(_error(400, f"the resource {uri} has no text that could be attached",
                                              uri=uri))
                    binary = [f"[binary part {p['uri']} ({p['mimeType'] or 'unknown type'}, {p['size']:,} bytes) "
                              "left out]" for p in parts if p.get("binary")]
                    out.append(Attachment(uri=uri, name=names.get(uri) or uri, mime_type=texts[0]["mimeType"],
                                          text="\n\n".join([*(p["text"] for p in texts), *binary]),
                                          chars=sum(p["chars"] for p in texts), truncated=truncated))
        except TimeoutError:
            raise _Refused(_error(504, "reading the attached resources took too long")) from None
        except (McpSessionError, OSError) as exc:
            raise _Refused(_error(502, f"the attached resources could not be read: {exc}")) from None
        return out

    async def list_resources(self, request: Request, web: WebSession, session_id: str) -> Response:
        """The resources and resource templates this user can read (``q`` filters by name, title, URI and
        description; at most MAX_LISTED of each)."""
        q = (request.query_params.get("q") or "").strip().lower()[:200]
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                async with asyncio.timeout(RESOURCE_TIMEOUT_S):
                    resources = await mcp.list_resources()
                    templates = await mcp.list_resource_templates()
        except TimeoutError:
            return _error(504, "listing the resources took too long")
        except MCPError as exc:
            return _error(502, f"the resources could not be listed: {exc.message}")
        except (McpSessionError, OSError) as exc:
            return _error(502, f"the resources could not be listed: {exc}")

        def matches(item: dict[str, Any]) -> bool:
            return not q or any(q in str(item.get(k) or "").lower()
                                for k in ("name", "title", "uri", "uriTemplate", "description"))

        found = [r for r in dict((str(r.uri), _resource_json(r)) for r in resources).values() if matches(r)]
        shapes = [t for t in dict((t.uri_template, _template_json(t)) for t in templates).values() if matches(t)]
        return JSON({"resources": found[:MAX_LISTED], "templates": shapes[:MAX_LISTED],
                     "truncated": len(found) > MAX_LISTED or len(shapes) > MAX_LISTED})

    async def read_resource(self, request: Request, web: WebSession, session_id: str) -> Response:
        """A resource's text parts (at most MAX_RESOURCE_TEXT characters, marked when cut); binary parts
        are described by MIME type and size."""
        uri = (request.query_params.get("uri") or "").strip()
        if not uri or len(uri) > MAX_URI_CHARS or any(ord(c) < 32 for c in uri):
            return _error(400, "uri is required (a resource URI)")
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                async with asyncio.timeout(RESOURCE_TIMEOUT_S):
                    result = await mcp.read_resource(uri)
        except TimeoutError:
            return _error(504, "reading the resource took too long")
        except MCPError as exc:
            return _error(404, f"the resource could not be read: {exc.message}", uri=uri)
        except (McpSessionError, OSError) as exc:
            return _error(502, f"the resource could not be read: {exc}")
        parts, truncated = _resource_parts(result, MAX_RESOURCE_TEXT)
        return JSON({"uri": uri, "contents": parts, "truncated": truncated})

    async def list_prompts(self, request: Request, web: WebSession, session_id: str) -> Response:
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                async with asyncio.timeout(RESOURCE_TIMEOUT_S):
                    prompts = await mcp.list_prompts()
        except TimeoutError:
            return _error(504, "listing the prompts took too long")
        except MCPError as exc:
            return _error(502, f"the prompts could not be listed: {exc.message}")
        except (McpSessionError, OSError) as exc:
            return _error(502, f"the prompts could not be listed: {exc}")
        return JSON({"prompts": [_prompt_json(p) for p in prompts[:MAX_LISTED]],
                     "truncated": len(prompts) > MAX_LISTED})

    async def get_prompt(self, request: Request, web: WebSession, session_id: str) -> Response:
        """``{"name", "arguments"}`` → the prompt's messages as text for the composer. The arguments are
        checked against the prompt's own list first: unknown ones and missing required ones are a 400."""
        data = await _json_body(request)
        name = data.get("name")
        arguments = data.get("arguments") if data.get("arguments") is not None else {}
        if not isinstance(name, str) or not name or len(name) > 200:
            return _error(400, "name is required (a prompt's name)")
        if not isinstance(arguments, dict) or len(arguments) > MAX_PROMPT_ARGUMENTS or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in arguments.items()):
            return _error(400, "arguments must be an object of strings")
        too_long = sorted(k for k, v in arguments.items() if len(v) > MAX_PROMPT_ARGUMENT_CHARS)
        if too_long:
            return _error(400, f"longer than {MAX_PROMPT_ARGUMENT_CHARS:,} characters: {', '.join(too_long)}")
        values = {k: v for k, v in arguments.items() if v.strip()}
        try:
            async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                async with asyncio.timeout(RESOURCE_TIMEOUT_S):
                    prompt = next((p for p in await mcp.list_prompts() if p.name == name), None)
                    if prompt is None:
                        return _error(404, f"there is no prompt {name!r} for you")
                    declared = [a.name for a in prompt.arguments or []]
                    unknown = sorted(set(values) - set(declared))
                    if unknown:
                        return _error(400, f"the prompt has no argument {', '.join(unknown)}", unknown=unknown)
                    missing = [a.name for a in prompt.arguments or [] if a.required and a.name not in values]
                    if missing:
                        return _error(400, f"required: {', '.join(missing)}", missing=missing)
                    result = await mcp.get_prompt(name, values)
        except TimeoutError:
            return _error(504, "getting the prompt took too long")
        except MCPError as exc:
            return _error(400, f"the prompt could not be used: {exc.message}")
        except (McpSessionError, OSError) as exc:
            return _error(502, f"the prompt could not be used: {exc}")
        text, messages = _prompt_text(result)
        limit = self.rt.settings.max_message_chars
        return JSON({"name": name, "description": result.description or prompt.description, "text": text[:limit],
                     "truncated": len(text) > limit, "messages": messages})

    async def get_settings(self, request: Request, web: WebSession, session_id: str) -> Response:
        approvals = await self.rt.store.approvals.list_user_decisions(web.user.tenant, web.user.subject)
        admin = "tenant:admin" in web.scope.split()
        rules = await self.rt.store.approvals.list_admin_rules(web.user.tenant)
        return JSON({"model": await self.rt.model_label(web.user.tenant), "tenant": web.user.tenant,
                     "email": web.user.email, "approvals": sorted(approvals),
                     "ask_every_tool": bool(web.user.settings.get("ask_every_tool")),
                     "admin": admin, "admin_rules": rules})

    async def update_settings(self, request: Request, web: WebSession, session_id: str) -> Response:
        data = await _json_body(request)
        values: dict[str, Any] = {}
        if "ask_every_tool" in data:
            if not isinstance(data["ask_every_tool"], bool):
                return _error(400, "ask_every_tool must be true or false")
            values["ask_every_tool"] = data["ask_every_tool"] or None
        settings = await self.rt.store.update_user_settings(web.owner, values)
        return JSON({"ask_every_tool": bool(settings.get("ask_every_tool"))})

    async def forget_approval(self, request: Request, web: WebSession, session_id: str) -> Response:
        tool = (await _json_body(request)).get("tool")
        if not isinstance(tool, str) or not tool:
            return _error(400, "tool is required")
        await self.rt.store.approvals.set_user_decision(web.user.tenant, web.user.subject, tool[:200], None)
        return JSON({"ok": True})

    async def admin_rule(self, request: Request, web: WebSession, session_id: str) -> Response:
        if "tenant:admin" not in web.scope.split():
            return _error(403, "only an administrator of this workspace may set tool rules")
        data = await _json_body(request)
        key, rule = data.get("key"), data.get("rule")
        if not isinstance(key, str) or not key or len(key) > 200:
            return _error(400, "key must be a tool name or <server>__*")
        if rule not in (None, "always_ask", "blocked"):
            return _error(400, "rule must be always_ask, blocked or null")
        await self.rt.store.approvals.set_admin_rule(web.user.tenant, key, rule)
        return JSON({"ok": True, "rules": await self.rt.store.approvals.list_admin_rules(web.user.tenant)})

    # -- API: upload

    async def upload(self, request: Request, web: WebSession, session_id: str) -> Response:
        """The body is the file; it goes to the tenant's ingest server through the gateway, with the
        user's token, as a call of its upload tool. The answer streams progress as NDJSON lines."""
        from kontor.paths import safe_name

        raw_name = unquote(request.headers.get("x-file-name") or "")
        name = safe_name(raw_name) if raw_name else ""
        if not name or name == "unnamed":
            return _error(400, "X-File-Name is required")
        policy = ApprovalPolicy(self.rt.store.approvals, web.user.tenant, web.user.subject)
        if await policy.admin_rule(UPLOAD_TOOL) == "blocked":
            return _error(403, "your administrator has blocked uploads")
        data = await _read_body(request, self.max_upload)
        if not data:
            return _error(400, "the file is empty")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def work() -> None:
            try:
                async with self.rt.mcp(session_id, web.user.tenant) as mcp:
                    if await mcp.tool(UPLOAD_TOOL) is None:
                        queue.put_nowait({"done": True, "ok": False,
                                          "error": "uploading is not available to you in this workspace"})
                        return

                    async def progress(value: float, total: float | None, message: str | None) -> None:
                        queue.put_nowait({"progress": value, "total": total, "message": message})

                    result = await mcp.call_tool(UPLOAD_TOOL, {"name": name, "content_base64":
                                                               base64.b64encode(data).decode("ascii"), "wait": True},
                                                 timeout_s=600, on_progress=progress,
                                                 meta={"io.kontor/approval": {"decision": "allow_once",
                                                                              "reason": "the user uploaded the file"}})
                texts = [getattr(b, "text", "") for b in result.content]
                summary = result.structured_content if isinstance(result.structured_content, dict) else None
                queue.put_nowait({"done": True, "ok": not result.is_error, "name": name,
                                  "result": _cap(summary, 8000), "message": " ".join(t for t in texts if t)[:2000]})
            except (McpSessionError, LoginError, OSError) as exc:
                queue.put_nowait({"done": True, "ok": False, "error": f"the upload failed: {exc}"})
            except Exception as exc:
                log.exception("upload failed")
                queue.put_nowait({"done": True, "ok": False, "error": f"the upload failed ({type(exc).__name__})"})
            finally:
                queue.put_nowait(None)

        task = self.rt.spawn(work(), "kontor-chat-upload")

        async def stream() -> AsyncIterator[bytes]:
            yield (dumps({"received": len(data), "name": name}) + "\n").encode()
            try:
                while (item := await queue.get()) is not None:
                    yield (dumps(item) + "\n").encode()
            finally:
                if not task.done():
                    task.cancel()

        return StreamingResponse(stream(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})


def build_host_app(gateway: GatewaySettings | None = None, settings: HostSettings | None = None, *,
                   runtime: HostRuntime | None = None) -> ASGIApp:
    """The web chat as an ASGI app to mount at ``/chat`` on the gateway's origin.

    Mounted apps get no lifespan of their own: the database opens on the first request. When the
    app runs on its own (tests), its lifespan closes everything at the end.
    """
    gateway = gateway or get_gateway_settings()
    rt = runtime or HostRuntime(gateway, settings)
    app = HostApp(rt)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await rt.ready()
        try:
            yield
        finally:
            await rt.aclose()

    starlette = Starlette(routes=app.routes(), lifespan=lifespan)
    starlette.state.runtime = rt
    guarded = _Guard(starlette, gateway)
    guarded.runtime = rt  # type: ignore[attr-defined]
    return guarded
