"""The registry's server-rendered pages under ``/registry/…`` (Starlette + Jinja2, no build step).

Who sees what (the same rules as the JSON API, through its helpers in :mod:`kontor.registry.api`):

* everybody signed in: the tenant's catalog (``/registry/catalog``, ``/registry/catalog/<server name>``),
  the connector (``/registry/connect``) and their own publishers (``/registry/publish``): create a
  publisher, submit a version (``/registry/publishers/<id>/submit``: textarea or file upload; every
  problem with its JSON path, or the new version's state and check results), see check results and
  decisions (``/registry/versions/<id>``), run the review again, deprecate;
* platform admins: the review queue (``/registry/review``), every version's page with the diff of its
  tool definitions against the previously approved version, the evidence report
  (``/registry/versions/<id>/report``), approve / reject / request changes / revoke with a reason;
* tenant admins: installations (``/registry/installations``, ``…/<gateway name>``): install (choosing
  scopes), upgrade after seeing the diff (``…/upgrade``), enable, disable and uninstall (a confirm page
  each for the last two), granted scopes, write-only secrets.

A page a role may not use answers with a 403 page; another tenant's private server is a 404, like
any server that does not exist.

**Sign-in.** The authorization server's browser session cookie is scoped to ``/t/<tenant>/``, so
``/registry`` cannot read it. The pages therefore have their own small sign-in (tenant, e-mail,
password) that calls :meth:`GatewayDB.authenticate` exactly like the authorization server's sign-in
page (argon2, the same failure message, lockout after repeated failures, login events), and keep
their sessions in the same server-side table (:class:`~kontor.gateway.oauth.store.OAuthStore`'s
browser sessions: only a hash of the id is stored, each session has its own CSRF token, a fresh id is
issued at sign-in, sessions expire after eight hours). The cookie ``kontor_registry_session``
(``<tenant>.<session id>``; the tenant only selects the record) is ``HttpOnly``, ``SameSite=Lax``,
``Secure`` on an https origin, and scoped to ``/registry/``. The user is re-read on every request: a
disabled or deleted user is signed out, a role change applies at once.

**Forms.** Every POST form carries the session's CSRF token (compared in constant time); the sign-in
form, which has no session yet, carries a token sealed with the registry's secret key (AES-GCM) and
bound to a random pre-sign-in cookie (``SameSite=Strict``). A POST whose ``Origin`` is another origin
(or ``null``), or whose ``Sec-Fetch-Site`` says cross-site or same-site, is refused. Bodies are read
up to a limit (a submitted ``server.json``: the context's ``max_submission_bytes``).

**Output.** Autoescaping is on, and every interpolated string also goes through
:func:`kontor.registry.report_page.reveal` (hidden and bidirectional characters become visible
badges); values in attributes and text areas are escaped without badges. Every page has
``Content-Security-Policy`` with ``script-src 'self'`` (the one script is ``/registry/static/pages.js``),
``style-src 'self'`` (``/registry/static/pages.css``: the evidence report's styles plus the pages'
own) and ``frame-ancestors 'none'``, and ``X-Frame-Options: DENY``. The evidence report is the
self-contained page of :func:`~kontor.registry.report_page.render_report_page`; its one inline style
block is allowed by its hash. Secrets are write-only: no page ever contains a secret's value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment
from markupsafe import Markup, escape
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from kontor.gateway.db import AccountLocked, AuthenticationFailed, InstallationState, NotFound, PinState, Role
from kontor.gateway.oauth.endpoints import LOGIN_FAILED_MESSAGE
from kontor.gateway.oauth.pages import LOCKED_MESSAGE, html_headers
from kontor.gateway.oauth.store import OAuthStore, SessionRecord
from kontor.gateway.scopes import ADMIN_SCOPE, tool_scope
from kontor.registry import api
from kontor.registry.app import Caller, ContextProvider, RegistryContext, context_of
from kontor.registry.lifecycle import RERUN_FROM, Decision, VersionState, Visibility
from kontor.registry.report_page import (
    CHECK_TITLES,
    environment,
    render_report_page,
    render_tool_diff,
    render_tool_diff_html,
)
from kontor.registry.server_json import Problem
from kontor.registry.service import InvalidSubmission, declared_secrets, needed_scopes
from kontor.registry.store import SecretsUnavailable, Server, Version, latest_version, normalise_actor

__all__ = ["LOGIN_COOKIE", "PAGE_CSP", "SESSION_COOKIE", "page_routes"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "kontor_registry_session"
LOGIN_COOKIE = "kontor_registry_login"
SESSION_TTL = timedelta(hours=8)
LOGIN_FORM_TTL_S = 30 * 60
LOGIN_CONTEXT = "kontor-registry-pages/sign-in-form/v1"
PRUNE_INTERVAL_S = 600.0
MAX_FORM_BYTES = 64 * 1024
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

#: ``?msg=`` of a redirect after a successful action → what the page says (never text from the request).
FLASH = {
    "signed_out": "You are signed out.",
    "publisher_created": "The publisher was created.",
    "submitted": "The version was submitted and the automated review ran; its state and checks are below.",
    "reviewed": "The automated review ran again.",
    "decided": "The decision was recorded.",
    "installed": "Installed.",
    "upgraded": "Upgraded; the new version's approved tool definitions are pinned.",
    "enabled": "Enabled.",
    "disabled": "Disabled: the gateway no longer serves this server's tools.",
    "uninstalled": "Uninstalled: the pins and the stored secrets of this server are deleted.",
    "scopes": "The granted scopes were saved.",
    "secret_saved": "The secret was saved. It is stored encrypted and is never shown again.",
    "secret_deleted": "The secret was deleted.",
}
DECISION_LABELS = {Decision.approve: "Approve", Decision.reject: "Reject",
                   Decision.request_changes: "Request changes", Decision.revoke: "Revoke",
                   Decision.deprecate: "Deprecate"}
STATUS_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Not possible right now",
                 413: "Too large", 415: "Unsupported form", 422: "Not accepted", 503: "Unavailable"}


# --- errors --------------------------------------------------------------------------------------------


class PageError(Exception):
    """Answer with the error page: ``status`` and a message for the person in front of it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _SignInFirst(Exception):
    """No signed-in session: send the browser to the sign-in page."""


def error_of(exc: BaseException) -> tuple[int, str]:
    """Status and message of an exception, as the JSON API would answer it (:func:`api.error_response`)."""
    if isinstance(exc, PageError):
        return exc.status, exc.message
    if isinstance(exc, api.ApiError):
        return exc.status, exc.message
    if isinstance(exc, InvalidSubmission):
        return 422, str(exc)
    response = api.error_response(exc)  # logs an unexpected error; 500 without detail
    try:
        message = json.loads(bytes(response.body)).get("error", "error")
    except ValueError:
        message = "error"
    return response.status_code, str(message)


# --- templates and responses ----------------------------------------------------------------------------


def _plain(value: Any) -> Markup:
    """Escaped without the hidden-character badges: for attribute values and text areas (round-trips exactly)."""
    return Markup(escape("" if value is None else str(value)))


def _urlq(value: Any) -> Markup:
    """A path segment (a server name keeps its ``/``), percent-encoded and escaped."""
    return Markup(escape(quote("" if value is None else str(value), safe="/")))


def _when(value: Any) -> str:
    text = api.iso(value) if value is not None and not isinstance(value, str) else (value or "")
    return text.replace("T", " ")[:19] + (" UTC" if text else "")


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@cache
def _env() -> Environment:
    """The review pages' environment settings (autoescape, every output revealed), plus the pages' filters."""
    base = environment()
    env = Environment(loader=base.loader, autoescape=base.autoescape, finalize=base.finalize,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(base.filters)
    env.filters.update({"plain": _plain, "urlq": _urlq, "when": _when, "json": _pretty_json})
    return env


def page_headers(csp: str = PAGE_CSP) -> dict[str, str]:
    """The authorization server's HTML headers (no-store, nosniff, DENY) with the pages' CSP.

    ``Referrer-Policy: same-origin`` (not ``no-referrer``): with ``no-referrer`` browsers send
    ``Origin: null`` on a same-origin form POST, and the origin check needs the real one.
    """
    headers = html_headers()
    headers["Content-Security-Policy"] = csp
    headers["Referrer-Policy"] = "same-origin"
    return headers


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _render(request: Request, template: str, *, visitor: Visitor | None, status: int = 200,
            error: str | None = None, **context: Any) -> HTMLResponse:
    msg = request.query_params.get("msg")
    caller = visitor.caller if visitor is not None else None
    html = _env().get_template(f"pages/{template}").render({
        "root": _root(request), "caller": caller, "csrf_token": visitor.session.csrf_token if visitor else "",
        "flash": FLASH.get(msg) if msg else None, "error": error, **context})
    return HTMLResponse(html, status_code=status, headers=page_headers())


def _error_page(request: Request, visitor: Visitor | None, status: int, message: str) -> HTMLResponse:
    return _render(request, "error.html", visitor=visitor, status=status,
                   title=STATUS_TITLES.get(status, "Something went wrong"), message=message, code=status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=page_headers())


# --- sessions --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visitor:
    """A signed-in person: their :class:`~kontor.registry.app.Caller` and the server-side session."""

    caller: Caller
    session: SessionRecord
    session_id: str


class _PagesState:
    """Per registry context: the session store and the sign-in form's sealing."""

    def __init__(self, ctx: RegistryContext) -> None:
        self.sessions = OAuthStore(ctx.store.gateway)
        self.box = ctx.store.secret_box
        self._fallback_key = secrets.token_bytes(32)  # only without a secret box (then: this process only)
        self._last_prune = -PRUNE_INTERVAL_S

    async def maybe_prune(self) -> None:
        """Delete expired browser sessions (and the rest of the authorization server's expired state), at most
        every ten minutes; housekeeping never fails a request."""
        now = time.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL_S:
            return
        self._last_prune = now
        try:
            await self.sessions.prune()
        except Exception as exc:  # noqa: BLE001
            log.warning("pruning expired sessions failed: %s", type(exc).__name__)

    def seal(self, nonce: str, expires: int) -> str:
        payload = f"{nonce}:{expires}"
        if self.box is not None:
            return self.box.encrypt(payload, LOGIN_CONTEXT)
        mac = hmac.new(self._fallback_key, payload.encode(), hashlib.sha256).hexdigest()
        return base64.urlsafe_b64encode(f"{payload}:{mac}".encode()).decode()

    def unseal(self, token: str) -> tuple[str, int] | None:
        try:
            if self.box is not None:
                payload = self.box.decrypt(token, LOGIN_CONTEXT)
            else:
                text = base64.urlsafe_b64decode(token.encode()).decode()
                payload, _, mac = text.rpartition(":")
                good = hmac.new(self._fallback_key, payload.encode(), hashlib.sha256).hexdigest()
                if not hmac.compare_digest(mac, good):
                    return None
            nonce, _, expires = payload.rpartition(":")
            return nonce, int(expires)
        except (SecretsUnavailable, ValueError, UnicodeDecodeError):
            return None


_STATES: weakref.WeakKeyDictionary[RegistryContext, _PagesState] = weakref.WeakKeyDictionary()


def _state(ctx: RegistryContext) -> _PagesState:
    state = _STATES.get(ctx)
    if state is None:
        state = _STATES[ctx] = _PagesState(ctx)
    return state


def _cookie_path(request: Request) -> str:
    return f"{_root(request)}/"


def _secure(ctx: RegistryContext) -> bool:
    return ctx.settings.origin.startswith("https://")


def _session_cookie(request: Request) -> tuple[str, str] | None:
    raw = request.cookies.get(SESSION_COOKIE, "")
    tenant, sep, session_id = raw.partition(".")
    if not sep or not tenant or not session_id or len(raw) > 256:
        return None
    return tenant, session_id


async def current_visitor(request: Request, ctx: RegistryContext) -> Visitor | None:
    """The signed-in visitor of this request, or None (no, an expired or a foreign session; a disabled user)."""
    parsed = _session_cookie(request)
    if parsed is None:
        return None
    tenant, session_id = parsed
    try:
        record = await _state(ctx).sessions.get_session(tenant, session_id)
    except Exception:  # noqa: BLE001 - a malformed cookie is no session
        return None
    if record is None or record.user_id is None or record.email is None:
        return None
    user = await ctx.store.gateway.get_user(tenant, record.email)
    if user is None or user.id != record.user_id or user.disabled:
        return None
    email = normalise_actor(user.email)
    caller = Caller(tenant=tenant, email=email, subject=str(user.id), roles=(user.role.value,),
                    scopes=frozenset({ADMIN_SCOPE}) if user.role == Role.admin else frozenset(),
                    platform_admin=ctx.is_platform_admin(tenant, email))
    return Visitor(caller, record, session_id)


async def _signed_in(request: Request, ctx: RegistryContext) -> Visitor:
    visitor = await current_visitor(request, ctx)
    if visitor is None:
        raise _SignInFirst()
    return visitor


# --- reading forms ----------------------------------------------------------------------------------------


def _origin_problem(request: Request, ctx: RegistryContext) -> str | None:
    """Why this POST is not from one of the registry's own pages, or None."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"the form was sent from another site ({fetch_site})"
    origin = request.headers.get("origin")
    if origin is None:
        return None
    own = {ctx.settings.origin.rstrip("/")}
    host = request.headers.get("host")
    if host:
        own.add(f"{request.url.scheme}://{host}")
    if origin.rstrip("/") not in own:
        return "the form was sent from another origin"
    return None


async def _read_form(request: Request, limit: int = MAX_FORM_BYTES) -> FormData:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise PageError(415, "expected a form (application/x-www-form-urlencoded or multipart/form-data)")
    try:
        body = await api.read_body(request, limit)
    except api.ApiError as exc:
        raise PageError(exc.status, f"the form is larger than {limit} bytes") from None
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=2, max_fields=200, max_part_size=limit)
    except Exception as exc:  # noqa: BLE001 - a form that cannot be parsed
        raise PageError(400, f"the form cannot be read: {type(exc).__name__}") from None


async def _post_form(request: Request, ctx: RegistryContext, visitor: Visitor,
                     limit: int = MAX_FORM_BYTES) -> FormData:
    """The body of a POST from a signed-in page: same origin and the session's CSRF token (else 403)."""
    problem = _origin_problem(request, ctx)
    if problem is not None:
        raise PageError(403, f"Refused: {problem}. Open the page again and send the form from there.")
    form = await _read_form(request, limit)
    sent = form.get("csrf_token")
    expected = visitor.session.csrf_token
    if not isinstance(sent, str) or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PageError(403, "This form has expired or was not sent from this page (missing or wrong CSRF "
                             "token). Open the page again and send the form from there.")
    return form


def _text(form: FormData, key: str, *, max_len: int = 2000, required: bool = False) -> str:
    value = form.get(key)
    if value is None or isinstance(value, UploadFile):
        value = ""
    if len(value) > max_len:
        raise PageError(422, f"the field {key!r} is longer than {max_len} characters")
    if "\x00" in value:
        raise PageError(422, f"the field {key!r} contains a NUL character")
    if required and not value.strip():
        raise PageError(422, f"the field {key!r} is required")
    return value


def _texts(form: FormData, key: str, *, max_items: int = 200) -> list[str]:
    values = [v for v in form.getlist(key) if isinstance(v, str)]
    if len(values) > max_items or any(len(v) > 255 or "\x00" in v for v in values):
        raise PageError(422, f"the field {key!r} has invalid values")
    return values


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise PageError(404, f"no {what} {value[:80]!r}") from None


# --- the handler wrapper -------------------------------------------------------------------------------------

PageHandler = Callable[[Request, RegistryContext], Awaitable[Response]]


def _page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        ctx = context_of(request)
        try:
            return await handler(request, ctx)
        except _SignInFirst:
            target = request.url.path if request.method == "GET" else f"{_root(request)}/"
            if request.url.query and request.method == "GET":
                target += f"?{request.url.query}"
            return _redirect(f"{_root(request)}/login?next={quote(target, safe='')}")
        except ClientDisconnect:
            return Response(status_code=400)
        except Exception as exc:  # noqa: BLE001 - every error becomes an error page
            status, message = error_of(exc)
            visitor = None
            try:
                visitor = await current_visitor(request, ctx)
            except Exception:  # noqa: BLE001 - the error page must render
                visitor = None
            return _error_page(request, visitor, status, message)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _require_installation_admin(ctx: RegistryContext, caller: Caller) -> None:
    """The API's rule (:func:`api.require_installation_admin`), with a message for a person."""
    try:
        await api.require_installation_admin(ctx, caller, caller.tenant)
    except api.ApiError as exc:
        raise PageError(403, f"Only an admin of tenant {caller.tenant!r} can manage its installations "
                             f"({caller.email} is not one).") from exc


async def _is_installation_admin(ctx: RegistryContext, caller: Caller) -> bool:
    try:
        await api.require_installation_admin(ctx, caller, caller.tenant)
    except api.ApiError:
        return False
    return True


# --- sign-in and sign-out ---------------------------------------------------------------------------------------


def _safe_next(request: Request, value: str | None) -> str:
    home = f"{_root(request)}/"
    if not value or len(value) > 2000:
        return home
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith(home) or value.startswith("//") or "\\" in value:
        return home
    if parts.path.rstrip("/") in (f"{_root(request)}/login", f"{_root(request)}/logout"):
        return home
    return value


def _login_form(request: Request, ctx: RegistryContext, *, status: int = 200, error: str | None = None,
                tenant: str = "", email: str = "", next_url: str | None = None,
                nonce: str | None = None) -> HTMLResponse:
    new_nonce = nonce is None
    nonce = nonce or secrets.token_urlsafe(24)
    token = _state(ctx).seal(nonce, int(time.time()) + LOGIN_FORM_TTL_S)
    response = _render(request, "login.html", visitor=None, status=status, error=error, title="Sign in",
                       login_token=token, tenant=tenant, email=email,
                       next_url=_safe_next(request, next_url or request.query_params.get("next")))
    if new_nonce:
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_FORM_TTL_S, path=_cookie_path(request),
                            secure=_secure(ctx), httponly=True, samesite="strict")
    return response


async def login_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/login``: the sign-in form (tenant, e-mail, password)."""
    if await current_visitor(request, ctx) is not None:
        return _redirect(_safe_next(request, request.query_params.get("next")))
    return _login_form(request, ctx)


async def login(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/login``: :meth:`GatewayDB.authenticate` (argon2, lockout), then a fresh session."""
    problem = _origin_problem(request, ctx)
    if problem is not None:
        raise PageError(403, f"Refused: {problem}. Open the sign-in page and sign in there.")
    form = await _read_form(request, 16 * 1024)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    sealed = _state(ctx).unseal(_text(form, "login_token", max_len=1000))
    if (not nonce or sealed is None or not hmac.compare_digest(sealed[0].encode(), nonce.encode())
            or sealed[1] < time.time()):
        return _login_form(request, ctx, status=403, error="The sign-in form has expired or was not sent from "
                                                           "this page. Please sign in again.")
    tenant = _text(form, "tenant", max_len=63).strip().lower()
    email = _text(form, "email", max_len=320).strip()
    password = _text(form, "password", max_len=1024)
    next_url = _text(form, "next", max_len=2000)
    context = {"via": "registry-pages", "remote": request.client.host if request.client else None}
    try:
        user = await ctx.store.gateway.authenticate(tenant, email, password, context=context)
    except AccountLocked:
        return _login_form(request, ctx, status=401, error=LOCKED_MESSAGE, tenant=tenant, email=email,
                           next_url=next_url, nonce=nonce)
    except AuthenticationFailed:
        return _login_form(request, ctx, status=401, error=LOGIN_FAILED_MESSAGE, tenant=tenant, email=email,
                           next_url=next_url, nonce=nonce)
    state = _state(ctx)
    await state.maybe_prune()
    sessions = state.sessions
    old = _session_cookie(request)
    if old is not None:  # a session id planted before the sign-in is worth nothing after it
        await sessions.delete_session(old[1])
    session_id, _ = await sessions.create_session(user.tenant_id, SESSION_TTL, user_id=user.id, email=user.email)
    response = _redirect(_safe_next(request, next_url))
    response.set_cookie(SESSION_COOKIE, f"{user.tenant_id}.{session_id}", max_age=int(SESSION_TTL.total_seconds()),
                        path=_cookie_path(request), secure=_secure(ctx), httponly=True, samesite="lax")
    response.delete_cookie(LOGIN_COOKIE, path=_cookie_path(request), secure=_secure(ctx), httponly=True,
                           samesite="strict")
    return response


async def logout(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/logout``: the session is deleted server-side and the cookie cleared."""
    visitor = await _signed_in(request, ctx)
    await _post_form(request, ctx, visitor)
    await _state(ctx).sessions.delete_session(visitor.session_id)
    response = _redirect(f"{_root(request)}/login?msg=signed_out")
    response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request), secure=_secure(ctx), httponly=True,
                           samesite="lax")
    return response


# --- home -------------------------------------------------------------------------------------------------------


async def home(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/``: what the signed-in person can do here."""
    visitor = await _signed_in(request, ctx)
    caller = visitor.caller
    queue = len(await ctx.store.review_queue()) if caller.platform_admin else None
    return _render(request, "home.html", visitor=visitor, title="Registry", section="home",
                   queue_size=queue, tenant_admin=await _is_installation_admin(ctx, caller))


# --- versions: review and publishing ---------------------------------------------------------------------------


def _check_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    checks = report.get("checks") if isinstance(report, Mapping) else None
    rows = []
    for name, entry in (checks or {}).items():
        if not isinstance(entry, Mapping):
            continue
        findings = [f for f in entry.get("findings") or () if isinstance(f, Mapping)]
        rows.append({"name": name, "title": CHECK_TITLES.get(name, (name, ""))[0],
                     "status": entry.get("status") if entry.get("status") in ("pass", "warn", "fail", "skipped")
                     else "pass", "findings": len(findings)})
    order = list(CHECK_TITLES)
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    return rows


def _tool_rows(slug: str, definitions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for d in definitions:
        annotations = d.get("annotations") if isinstance(d.get("annotations"), Mapping) else {}
        rows.append({"name": d.get("name"), "title": d.get("title") or annotations.get("title"),
                     "description": d.get("description"), "scope": tool_scope(slug, d),
                     "read_only": annotations.get("readOnlyHint") is True})
    return rows


async def _previous_approved(ctx: RegistryContext, server: Server, version: Version) -> Version | None:
    """The latest approved (or deprecated) version of the server other than ``version`` (as the API's diff)."""
    approved = [v for v in await ctx.store.list_versions(server.id, states=[VersionState.approved,
                                                                            VersionState.deprecated])
                if v.id != version.id]
    return latest_version(approved) if approved else None


async def _version_diff(ctx: RegistryContext, server: Server, version: Version, new_tools: list[dict[str, Any]],
                        instructions: str | None) -> tuple[dict[str, Any], Version | None]:
    base = await _previous_approved(ctx, server, version)
    old = None
    if base is not None:
        old = {"tools": [t.definition for t in await ctx.store.approved_snapshot(base.id)]}
    return render_tool_diff(old, {"tools": new_tools, "instructions": instructions}, server=server.slug), base


async def _version_page(request: Request, ctx: RegistryContext, visitor: Visitor, version_id: uuid.UUID, *,
                        status: int = 200, error: str | None = None, reason: str = "",
                        chosen: str | None = None) -> HTMLResponse:
    caller = visitor.caller
    version, server, publisher = await api.readable_version(ctx, caller, version_id)
    run = await ctx.store.latest_review_run(version.id)
    tools = [t.definition for t in await ctx.store.snapshot(run.id)] if run is not None else []
    diff, base = await _version_diff(ctx, server, version, tools, run.instructions if run else None)
    own = api.owns(caller, publisher) or version.submitted_by.casefold() == caller.email.casefold()
    state = version.state
    decisions: list[Decision] = []
    if caller.platform_admin and not own and state == VersionState.in_review:
        decisions += [Decision.approve, Decision.request_changes, Decision.reject]
    if caller.platform_admin and state in (VersionState.approved, VersionState.deprecated):
        decisions.append(Decision.revoke)
    if (api.owns(caller, publisher) or caller.platform_admin) and state == VersionState.approved:
        decisions.append(Decision.deprecate)
    return _render(
        request, "version.html", visitor=visitor, status=status, error=error,
        title=f"{server.name} {version.version}", section="review" if caller.platform_admin and not own else "publish",
        version=version, server=server, publisher=publisher, run=run, review=api.review_json(run, findings=True),
        checks=_check_rows(run.report) if run is not None else [], tools=_tool_rows(server.slug, tools),
        diff_html=Markup(render_tool_diff_html(diff)) if run is not None else None, base=base,
        decisions=await ctx.store.list_decisions(version.id),
        events=await ctx.store.list_events(subject_type="version", subject_id=version.id, limit=100),
        own=own, allowed=[(d.value, DECISION_LABELS[d]) for d in decisions],
        can_rerun=state in RERUN_FROM, reason=reason, chosen=chosen,
        document=version.server_json_text, labels={d.value: DECISION_LABELS[d] for d in Decision})


async def version_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/versions/{id}``: state, check results, tools, the diff, decisions and the decision forms."""
    visitor = await _signed_in(request, ctx)
    return await _version_page(request, ctx, visitor, _uuid(request.path_params["version_id"], "version"))


async def decide(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/versions/{id}/decide``: approve / reject / request changes / revoke / deprecate, with a
    reason (the API's rule: :func:`api.authorize_decision`; the store refuses self-approval)."""
    visitor = await _signed_in(request, ctx)
    caller = visitor.caller
    version_id = _uuid(request.path_params["version_id"], "version")
    form = await _post_form(request, ctx, visitor)
    version, server, publisher = await api.readable_version(ctx, caller, version_id)
    text = _text(form, "decision", max_len=32)
    try:
        decision = Decision(text)
    except ValueError:
        raise PageError(422, f"unknown decision {text!r}") from None
    api.authorize_decision(caller, decision, version, server, publisher)
    reason = _text(form, "reason", max_len=2000)
    if not reason.strip():
        return await _version_page(request, ctx, visitor, version_id, status=422, chosen=decision.value,
                                   error=f"{DECISION_LABELS[decision]}: a reason is required — write what the "
                                         "publisher and the tenants will read.")
    try:
        await api.apply_decision(ctx, caller, decision, version.id, reason)
    except Exception as exc:  # noqa: BLE001 - shown on the version's page
        status, message = error_of(exc)
        return await _version_page(request, ctx, visitor, version_id, status=status, error=message, reason=reason,
                                   chosen=decision.value)
    return _redirect(f"{_root(request)}/versions/{version.id}?msg=decided")


async def rerun(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/versions/{id}/review``: run the automated review again (publisher or platform admin)."""
    visitor = await _signed_in(request, ctx)
    version_id = _uuid(request.path_params["version_id"], "version")
    await _post_form(request, ctx, visitor)
    version, _, _ = await api.readable_version(ctx, visitor.caller, version_id)
    try:
        await ctx.service.rerun_review(version.id, visitor.caller.actor)
    except Exception as exc:  # noqa: BLE001 - shown on the version's page
        status, message = error_of(exc)
        return await _version_page(request, ctx, visitor, version_id, status=status, error=message)
    return _redirect(f"{_root(request)}/versions/{version.id}?msg=reviewed")


def _style_hashes(html: str) -> list[str]:
    return ["'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode() + "'"
            for m in re.finditer(r"<style>(.*?)</style>", html, flags=re.DOTALL)]


async def report_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/versions/{id}/report``: the evidence report page of the latest finished review run."""
    visitor = await _signed_in(request, ctx)
    version, server, _ = await api.readable_version(ctx, visitor.caller,
                                                    _uuid(request.path_params["version_id"], "version"))
    run = await ctx.store.latest_review_run(version.id)
    if run is None:
        raise PageError(404, f"version {version.version} of {server.name} has no finished review run")
    tools = await ctx.store.snapshot(run.id)
    definitions = [t.definition for t in tools]
    diff, _ = await _version_diff(ctx, server, version, definitions, run.instructions)
    snapshot = {"tools": [{"name": t.tool_name, "hash": t.definition_hash, "definition": t.definition}
                          for t in tools], "instructions": run.instructions,
                "instructions_hash": run.instructions_hash}
    html = render_report_page(run.report, snapshot=snapshot, diff=diff,
                              title=f"Evidence: {server.name} {version.version} (review run {run.number})")
    back = (f'<p class="card"><a href="{escape(_root(request))}/versions/{version.id}">← Back to '
            f"{escape(server.name)} {escape(version.version)}: state, decisions and the decision form</a></p>")
    html = html.replace("<main>", "<main>" + back, 1)
    csp = PAGE_CSP.replace("style-src 'self'", "style-src 'self' " + " ".join(_style_hashes(html)))
    return HTMLResponse(html, headers=page_headers(csp))


async def review_queue(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/review``: versions waiting for a platform admin (platform admins only)."""
    visitor = await _signed_in(request, ctx)
    caller = visitor.caller
    api.require_platform_admin(caller, "see the review queue")
    rows = []
    for version in await ctx.store.review_queue():
        server = await ctx.store.get_server(version.server_id)
        publisher = await ctx.store.get_publisher(server.publisher_id)
        run = await ctx.store.latest_review_run(version.id)
        rows.append({"version": version, "server": server, "publisher": publisher,
                     "review": api.review_json(run), "title": version.server_json.get("title"),
                     "own": api.owns(caller, publisher)
                     or version.submitted_by.casefold() == caller.email.casefold()})
    return _render(request, "review_queue.html", visitor=visitor, title="Review queue", section="review", rows=rows)


async def my_servers(request: Request, ctx: RegistryContext, *, visitor: Visitor | None = None,
                     status: int = 200, error: str | None = None) -> Response:
    """``GET /registry/publish``: my publishers, their namespaces, servers and versions with state."""
    visitor = visitor or await _signed_in(request, ctx)
    caller = visitor.caller
    publishers = []
    for publisher in await ctx.store.list_publishers(owner=caller.email):
        if not api.owns(caller, publisher):
            continue
        servers = []
        for server in await ctx.store.list_servers(publisher_id=publisher.id):
            versions = []
            for version in await ctx.store.list_versions(server.id):
                versions.append({"version": version,
                                 "review": api.review_json(await ctx.store.latest_review_run(version.id))})
            servers.append({"server": server, "versions": versions})
        publishers.append({"publisher": publisher, "namespaces": await ctx.store.list_namespaces(publisher.id),
                           "servers": servers})
    return _render(request, "publish.html", visitor=visitor, status=status, error=error, title="My servers",
                   section="publish", publishers=publishers)


async def create_publisher(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/publishers``: a publisher owned by the signed-in person (as the API's)."""
    visitor = await _signed_in(request, ctx)
    form = await _post_form(request, ctx, visitor)
    caller = visitor.caller
    name = _text(form, "display_name", max_len=200)
    if not name.strip():
        return await my_servers(request, ctx, visitor=visitor, status=422, error="A publisher needs a name.")
    await ctx.store.create_publisher(name, caller.email, owner_tenant=caller.tenant, actor=caller.actor)
    return _redirect(f"{_root(request)}/publish?msg=publisher_created")


async def _submit_page(request: Request, ctx: RegistryContext, visitor: Visitor, publisher_id: uuid.UUID, *,
                       status: int = 200, error: str | None = None, problems: Sequence[Problem] = (),
                       text: str = "", visibility: str = "public", file_name: str | None = None) -> HTMLResponse:
    publisher = await api.owned_publisher(ctx, visitor.caller, publisher_id)
    return _render(request, "submit.html", visitor=visitor, status=status, error=error, section="publish",
                   title=f"Submit a version · {publisher.display_name}", publisher=publisher,
                   namespaces=await ctx.store.list_namespaces(publisher.id), problems=problems, text=text,
                   visibility=visibility, file_name=file_name, limit=ctx.max_submission_bytes)


async def submit_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/publishers/{id}/submit``: the form (paste or upload a server.json)."""
    visitor = await _signed_in(request, ctx)
    return await _submit_page(request, ctx, visitor, _uuid(request.path_params["publisher_id"], "publisher"))


async def submit(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/publishers/{id}/submit``: every problem with its JSON path, or the reviewed version."""
    visitor = await _signed_in(request, ctx)
    caller = visitor.caller
    publisher_id = _uuid(request.path_params["publisher_id"], "publisher")
    publisher = await api.owned_publisher(ctx, caller, publisher_id)
    form = await _post_form(request, ctx, visitor, limit=2 * ctx.max_submission_bytes + MAX_FORM_BYTES)
    try:
        visibility = _text(form, "visibility", max_len=16) or Visibility.public.value
        if visibility not in (Visibility.public.value, Visibility.private.value):
            raise PageError(422, "visibility must be public or private")
        upload = form.get("file")
        file_name: str | None = None
        raw = b""
        if isinstance(upload, UploadFile) and upload.filename:
            file_name = upload.filename[:200]
            raw = await upload.read(ctx.max_submission_bytes + 1)
        text = form.get("server_json")
        text = text if isinstance(text, str) else ""
        if not raw.strip():
            raw, file_name = text.encode("utf-8"), None
        if len(raw) > ctx.max_submission_bytes:
            raise PageError(413, f"the server.json is larger than {ctx.max_submission_bytes} bytes")
    finally:
        await form.close()
    shown = text if file_name is None else ""
    if not raw.strip():
        problems = [Problem("$", "paste the server.json document or choose its file", "empty", "json")]
        return await _submit_page(request, ctx, visitor, publisher_id, status=422, problems=problems,
                                  visibility=visibility, error="Nothing was submitted.")
    tenant = caller.tenant if visibility == Visibility.private.value else None
    try:
        version = await ctx.service.submit(publisher.id, raw, caller.actor, visibility=Visibility(visibility),
                                           tenant=tenant)
    except InvalidSubmission as exc:
        return await _submit_page(request, ctx, visitor, publisher_id, status=422, problems=exc.problems,
                                  text=shown, visibility=visibility, file_name=file_name,
                                  error=f"The server.json was refused with {len(exc.problems)} problem(s); "
                                        "nothing was stored.")
    except Exception as exc:  # noqa: BLE001 - shown on the form
        status, message = error_of(exc)
        return await _submit_page(request, ctx, visitor, publisher_id, status=status, error=message, text=shown,
                                  visibility=visibility, file_name=file_name)
    return _redirect(f"{_root(request)}/versions/{version.id}?msg=submitted")


# --- catalog and installations ------------------------------------------------------------------------------


async def catalog(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/catalog``: approved public servers and the tenant's own private ones."""
    visitor = await _signed_in(request, ctx)
    tenant = visitor.caller.tenant
    entries = [api.catalog_entry_json(e) for e in await ctx.service.catalog(tenant)]
    return _render(request, "catalog.html", visitor=visitor, title=f"Catalog · {tenant}", section="catalog",
                   entries=entries, tenant_admin=await _is_installation_admin(ctx, visitor.caller))


async def _server_page(request: Request, ctx: RegistryContext, visitor: Visitor, name: str, *,
                       version_text: str | None = None, status: int = 200, error: str | None = None,
                       chosen_scopes: Sequence[str] | None = None) -> HTMLResponse:
    tenant = visitor.caller.tenant
    server = await ctx.store.visible_server(tenant, name)  # another tenant's private server: 404
    entry = next((e for e in await ctx.service.catalog(tenant) if e.server.id == server.id), None)
    if entry is None:
        raise PageError(404, f"{server.name} has no approved version")
    wanted = version_text or entry.latest.version
    version = await ctx.store.find_version(server.name, wanted)
    if version is None or version.version not in entry.approved_versions:
        raise PageError(404, f"{server.name} has no approved version {wanted!r}")
    definitions = [t.definition for t in await ctx.store.approved_snapshot(version.id)]
    needed = needed_scopes(server.slug, definitions)
    doc = version.server_json
    return _render(
        request, "server.html", visitor=visitor, status=status, error=error, title=server.name, section="catalog",
        entry=api.catalog_entry_json(entry), server=server, version=version, doc=doc,
        tools=_tool_rows(server.slug, definitions), needed=needed,
        chosen_scopes=list(needed if chosen_scopes is None else chosen_scopes),
        secrets=declared_secrets(doc), remotes=[r for r in doc.get("remotes") or () if isinstance(r, Mapping)],
        installation=entry.installation, tenant_admin=await _is_installation_admin(ctx, visitor.caller))


async def server_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/catalog/{server name}[?version=V]``: the server, its tools and scopes, the install form."""
    visitor = await _signed_in(request, ctx)
    version = request.query_params.get("version") or None
    return await _server_page(request, ctx, visitor, request.path_params["name"][:255], version_text=version)


async def install(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/install``: tenant admins only; scopes chosen from what the version's tools need."""
    visitor = await _signed_in(request, ctx)
    form = await _post_form(request, ctx, visitor)
    caller = visitor.caller
    await _require_installation_admin(ctx, caller)
    name = _text(form, "server", max_len=255, required=True)
    version = _text(form, "version", max_len=255) or None
    scopes = _texts(form, "scopes")
    server = await ctx.store.visible_server(caller.tenant, name)  # 404 before anything else
    try:
        installed = await ctx.service.install(caller.tenant, server.name, caller.actor, version=version,
                                              scopes=scopes, enable=form.get("enable") == "on")
    except Exception as exc:  # noqa: BLE001 - shown on the server's page
        status, message = error_of(exc)
        if status == 404:
            raise
        return await _server_page(request, ctx, visitor, server.name, version_text=version, status=status,
                                  error=message, chosen_scopes=scopes)
    return _redirect(f"{_root(request)}/installations/{quote(installed.server, safe='')}?msg=installed")


async def installations(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/installations``: the tenant's installations (tenant admins)."""
    visitor = await _signed_in(request, ctx)
    await _require_installation_admin(ctx, visitor.caller)
    tenant = visitor.caller.tenant
    rows = [api.installation_json(i) for i in await ctx.store.list_installations(tenant)]
    latest = {e.server.slug: e.latest.version for e in await ctx.service.catalog(tenant)}
    return _render(request, "installations.html", visitor=visitor, title=f"Installations · {tenant}",
                   section="installations", rows=rows, latest=latest,
                   connector=api.connector_json(ctx, tenant))


async def _registry_server(ctx: RegistryContext, tenant: str, slug: str) -> Server | None:
    try:
        return await ctx.store.visible_server(tenant, slug)
    except NotFound:
        return None


async def _installation_page(request: Request, ctx: RegistryContext, visitor: Visitor, slug: str, *,
                             status: int = 200, error: str | None = None) -> HTMLResponse:
    tenant = visitor.caller.tenant
    installation = await ctx.store.get_installation(tenant, slug)
    if installation is None:
        raise PageError(404, f"{slug} is not installed for tenant {tenant!r}")
    server = await _registry_server(ctx, tenant, slug)
    pins = await ctx.store.gateway.list_pins(tenant, slug)
    body = api.installation_json(installation, pins=pins)
    needed: list[str] = []
    declared: set[str] = set()
    refs = []
    latest: Version | None = None
    if server is not None:
        if installation.version is not None:
            version = await ctx.store.find_version(server.name, installation.version)
            if version is not None:
                try:
                    needed = needed_scopes(slug, [t.definition for t in await ctx.store.approved_snapshot(version.id)])
                except NotFound:
                    needed = []
        for v in await ctx.store.list_versions(server.id, states=[VersionState.approved, VersionState.deprecated]):
            declared.update(declared_secrets(v.server_json))
        refs = await ctx.store.list_secrets(tenant, server.id)
        latest = await ctx.store.latest_approved(server.id)
    withheld = [p for p in pins if p.state == PinState.withheld]
    drift_html = None
    if withheld:
        drift = render_tool_diff({p.tool: p.definition for p in withheld if p.definition},
                                 {p.tool: p.live_definition for p in withheld if p.live_definition}, server=slug)
        drift_html = Markup(render_tool_diff_html(drift))
    state = installation.state
    S = InstallationState  # noqa: N806
    return _render(
        request, "installation.html", visitor=visitor, status=status, error=error, title=f"{slug} · {tenant}",
        section="installations", installation=installation, body=body, server=server, needed=needed,
        secrets=sorted(declared), refs={r.name: r for r in refs}, withheld=withheld, drift_html=drift_html,
        upgrade_to=latest.version if latest is not None and installation.version != latest.version
        and state != S.uninstalled else None,
        can_enable=state in (S.requested, S.disabled, S.needs_reapproval),
        can_disable=state in (S.enabled, S.needs_reapproval), can_uninstall=state != S.uninstalled,
        events=await ctx.store.list_events(subject_type="installation", subject_id=installation.id, limit=50),
        connector=api.connector_json(ctx, tenant))


def _slug_param(request: Request) -> str:
    slug = request.path_params["slug"]
    if not slug or len(slug) > 255 or "\x00" in slug or "/" in slug:
        raise PageError(404, f"no installation {slug[:80]!r}")
    return slug


async def installation_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/installations/{gateway name}``: state, tools, scopes, secrets, actions, connector, events."""
    visitor = await _signed_in(request, ctx)
    await _require_installation_admin(ctx, visitor.caller)
    return await _installation_page(request, ctx, visitor, _slug_param(request))


async def _installation_action(request: Request, ctx: RegistryContext,
                               act: Callable[[Visitor, FormData, str], Awaitable[str | None]],
                               done: str) -> Response:
    """A POST on an installation: CSRF, tenant admin, then ``act`` (its error shown on the installation's page);
    ``act`` may return another flash key than ``done``."""
    visitor = await _signed_in(request, ctx)
    form = await _post_form(request, ctx, visitor)
    await _require_installation_admin(ctx, visitor.caller)
    slug = _slug_param(request)
    if await ctx.store.get_installation(visitor.caller.tenant, slug) is None:
        raise PageError(404, f"{slug} is not installed for tenant {visitor.caller.tenant!r}")
    try:
        done = await act(visitor, form, slug) or done
    except PageError:
        raise
    except Exception as exc:  # noqa: BLE001 - shown on the installation's page
        status, message = error_of(exc)
        return await _installation_page(request, ctx, visitor, slug, status=status, error=message)
    return _redirect(f"{_root(request)}/installations/{quote(slug, safe='')}?msg={done}")


async def enable(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/installations/{gateway name}/enable``."""
    async def act(visitor: Visitor, form: FormData, slug: str) -> None:
        await ctx.service.enable(visitor.caller.tenant, slug, visitor.caller.actor,
                                 _text(form, "reason", max_len=2000) or None)
        return None

    return await _installation_action(request, ctx, act, "enabled")


CONFIRM = {
    "disable": ("Disable", "The gateway stops serving this server's tools to everyone in the tenant. The "
                "installation, its granted scopes and its secrets are kept; you can enable it again."),
    "uninstall": ("Uninstall", "The gateway stops serving this server, its pinned tool definitions are deleted, "
                  "and every secret stored for it in this tenant is deleted. Installing it again starts over."),
}


async def confirm_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/installations/{gateway name}/disable|uninstall``: the confirm step."""
    visitor = await _signed_in(request, ctx)
    await _require_installation_admin(ctx, visitor.caller)
    slug = _slug_param(request)
    action = request.path_params["action"]
    installation = await ctx.store.get_installation(visitor.caller.tenant, slug)
    if installation is None or action not in CONFIRM:
        raise PageError(404, f"{slug} is not installed for tenant {visitor.caller.tenant!r}")
    label, what = CONFIRM[action]
    return _render(request, "confirm.html", visitor=visitor, title=f"{label} {slug}?", section="installations",
                   installation=installation, action=action, label=label, what=what)


async def confirmed(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/installations/{gateway name}/disable|uninstall`` (after the confirm page)."""
    action = request.path_params["action"]
    if action not in CONFIRM:
        raise PageError(404, "no such action")

    async def act(visitor: Visitor, form: FormData, slug: str) -> None:
        operation = ctx.service.disable if action == "disable" else ctx.service.uninstall
        await operation(visitor.caller.tenant, slug, visitor.caller.actor, _text(form, "reason", max_len=2000) or None)

    return await _installation_action(request, ctx, act, "disabled" if action == "disable" else "uninstalled")


async def grant_scopes(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/installations/{gateway name}/scopes``: a subset of what the version's tools need."""
    async def act(visitor: Visitor, form: FormData, slug: str) -> None:
        await api.grant_installation_scopes(ctx, visitor.caller, visitor.caller.tenant, slug, _texts(form, "scopes"))

    return await _installation_action(request, ctx, act, "scopes")


async def secrets_action(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/installations/{gateway name}/secrets``: set (write-only) or delete one secret."""
    async def act(visitor: Visitor, form: FormData, slug: str) -> str | None:
        caller = visitor.caller
        name = _text(form, "name", max_len=255, required=True)
        if form.get("action") == "delete":
            server = await ctx.store.visible_server(caller.tenant, slug)
            if not await ctx.store.delete_secret(caller.tenant, server.id, name, actor=caller.actor):
                raise api.ApiError(404, f"no secret {name[:80]!r} is set for {server.name}")
            return "secret_deleted"
        value = form.get("value")
        if not isinstance(value, str) or not value:
            raise api.ApiError(422, f"enter a value for the secret {name!r}")
        if len(value) > 16384 or "\x00" in value:
            raise api.ApiError(422, f"the value of {name!r} must be at most 16384 characters, none of them NUL")
        await ctx.service.set_secret(caller.tenant, slug, name, value, caller.actor)
        return None

    return await _installation_action(request, ctx, act, "secret_saved")


async def _upgrade_page(request: Request, ctx: RegistryContext, visitor: Visitor, slug: str, to: str | None, *,
                        status: int = 200, error: str | None = None) -> HTMLResponse:
    tenant = visitor.caller.tenant
    diff = await ctx.service.preview_upgrade(tenant, slug, to)
    server = await ctx.store.visible_server(tenant, slug)
    installation = await ctx.store.get_installation(tenant, server.slug)
    before: list[dict[str, Any]] = []
    if diff.from_version is not None:
        current = await ctx.store.find_version(server.name, diff.from_version)
        if current is not None:
            try:
                before = [t.definition for t in await ctx.store.approved_snapshot(current.id)]
            except NotFound:
                before = []
    target = await ctx.store.find_version(server.name, diff.to_version)
    after = [t.definition for t in await ctx.store.approved_snapshot(target.id)] if target is not None else []
    detail = render_tool_diff({"tools": before}, {"tools": after}, server=server.slug)
    have = {r.name for r in await ctx.store.list_secrets(tenant, server.id)}
    granted = set(diff.scopes_granted)
    chosen = sorted((granted & set(diff.scopes_after)) | set(diff.scopes_added))
    return _render(
        request, "upgrade.html", visitor=visitor, status=status, error=error, section="installations",
        title=f"Upgrade {server.name} to {diff.to_version}", diff=diff, server=server, installation=installation,
        diff_html=Markup(render_tool_diff_html(detail)), chosen=chosen,
        missing_secrets=[s for s in diff.secrets_after if s not in have],
        same=diff.from_version == diff.to_version)


async def upgrade_page(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/installations/{gateway name}/upgrade[?to=V]``: the diff in tools and scopes, then confirm."""
    visitor = await _signed_in(request, ctx)
    await _require_installation_admin(ctx, visitor.caller)
    to = request.query_params.get("to") or None
    return await _upgrade_page(request, ctx, visitor, _slug_param(request), to[:255] if to else None)


async def upgrade(request: Request, ctx: RegistryContext) -> Response:
    """``POST /registry/installations/{gateway name}/upgrade``: applies exactly the diff that was shown
    (its fingerprint; a changed difference is refused and shown again)."""
    visitor = await _signed_in(request, ctx)
    form = await _post_form(request, ctx, visitor)
    caller = visitor.caller
    await _require_installation_admin(ctx, caller)
    slug = _slug_param(request)
    to = _text(form, "to_version", max_len=255, required=True)
    expected = _text(form, "expected", max_len=128, required=True)
    try:
        await ctx.service.upgrade(caller.tenant, slug, to, caller.actor, scopes=_texts(form, "scopes"),
                                  expected=expected)
    except Exception as exc:  # noqa: BLE001 - shown with the current difference
        status, message = error_of(exc)
        if status == 404:
            raise
        return await _upgrade_page(request, ctx, visitor, slug, to, status=status, error=message)
    return _redirect(f"{_root(request)}/installations/{quote(slug, safe='')}?msg=upgraded")


async def connect(request: Request, ctx: RegistryContext) -> Response:
    """``GET /registry/connect``: the tenant's connector URL and the client configuration snippets."""
    visitor = await _signed_in(request, ctx)
    tenant = visitor.caller.tenant
    return _render(request, "connect.html", visitor=visitor, title=f"Connect · {tenant}", section="connect",
                   connector=api.connector_json(ctx, tenant))


# --- static files ---------------------------------------------------------------------------------------------

STATIC_TYPES = {"pages.css": "text/css; charset=utf-8", "pages.js": "text/javascript; charset=utf-8"}


@cache
def static_file(name: str) -> bytes:
    """``pages.css`` (the review pages' ``_styles.html`` plus ``static/pages.css``) or ``pages.js``."""
    own = resources.files("kontor.registry").joinpath("static", name).read_text(encoding="utf-8")
    if name == "pages.css":
        shared = environment().get_template("_styles.html").render()
        return (shared.strip() + "\n\n" + own).encode("utf-8")
    return own.encode("utf-8")


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(static_file(name), media_type=STATIC_TYPES[name],
                    headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


# --- routes ------------------------------------------------------------------------------------------------------


def page_routes(provider: ContextProvider | None = None) -> list[BaseRoute]:
    """The pages' routes, relative to the ``/registry`` mount (the context comes from the app's state)."""
    p = _page
    inst = "/installations/{slug}"
    return [
        Route("/", p(home), methods=["GET"], name="registry_page_home"),
        Route("/static/{name}", static, methods=["GET"], name="registry_static"),
        Route("/login", p(login_page), methods=["GET"], name="registry_page_login"),
        Route("/login", p(login), methods=["POST"], name="registry_page_login_post"),
        Route("/logout", p(logout), methods=["POST"], name="registry_page_logout"),
        Route("/review", p(review_queue), methods=["GET"], name="registry_page_review"),
        Route("/versions/{version_id}", p(version_page), methods=["GET"], name="registry_page_version"),
        Route("/versions/{version_id}/report", p(report_page), methods=["GET"], name="registry_page_report"),
        Route("/versions/{version_id}/decide", p(decide), methods=["POST"], name="registry_page_decide"),
        Route("/versions/{version_id}/review", p(rerun), methods=["POST"], name="registry_page_rerun"),
        Route("/publish", p(my_servers), methods=["GET"], name="registry_page_publish"),
        Route("/publishers", p(create_publisher), methods=["POST"], name="registry_page_create_publisher"),
        Route("/publishers/{publisher_id}/submit", p(submit_page), methods=["GET"], name="registry_page_submit"),
        Route("/publishers/{publisher_id}/submit", p(submit), methods=["POST"], name="registry_page_submit_post"),
        Route("/catalog", p(catalog), methods=["GET"], name="registry_page_catalog"),
        Route("/catalog/{name:path}", p(server_page), methods=["GET"], name="registry_page_server"),
        Route("/install", p(install), methods=["POST"], name="registry_page_install"),
        Route("/installations", p(installations), methods=["GET"], name="registry_page_installations"),
        Route(inst, p(installation_page), methods=["GET"], name="registry_page_installation"),
        Route(inst + "/enable", p(enable), methods=["POST"], name="registry_page_enable"),
        Route(inst + "/scopes", p(grant_scopes), methods=["POST"], name="registry_page_scopes"),
        Route(inst + "/secrets", p(secrets_action), methods=["POST"], name="registry_page_secrets"),
        Route(inst + "/upgrade", p(upgrade_page), methods=["GET"], name="registry_page_upgrade"),
        Route(inst + "/upgrade", p(upgrade), methods=["POST"], name="registry_page_upgrade_post"),
        Route(inst + "/{action}", p(confirm_page), methods=["GET"], name="registry_page_confirm"),
        Route(inst + "/{action}", p(confirmed), methods=["POST"], name="registry_page_confirmed"),
        Route("/connect", p(connect), methods=["GET"], name="registry_page_connect"),
    ]
