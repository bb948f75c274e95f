"""The Starlette side of the authorization server: routes, limits, browser sessions, CSRF.

Every endpoint first checks that the tenant exists (404 JSON otherwise), reads at most a small
body, and builds every URL from :class:`~kontor.gateway.config.GatewaySettings`. The OAuth
work itself is done by authlib (see :mod:`kontor.gateway.oauth.server`).

Browser flow on ``/t/<tenant>/oauth/authorize``: the request is validated by authlib first
(an unknown client or a redirect URI that is not registered gives an error page, never a
redirect); then a sign-in form is shown unless the browser has a signed-in session for the
tenant, then a consent page. Forms post back to the same URL (same query) with the session's
CSRF token; a POST without the token of *its* session is refused with 400. The session cookie
is ``HttpOnly``, ``SameSite=Lax``, ``Secure`` on an https origin, and scoped to ``/t/<tenant>/``;
the session itself (and its CSRF token) is stored server-side, and a new session id is issued
at sign-in.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc6749 import OAuth2Error
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import (
    AccountLocked,
    AuthenticationFailed,
    GatewayDB,
    InvalidValue,
    NotFound,
    Tenant,
    contains_nul,
)
from kontor.gateway.keys import KeyStore
from kontor.gateway.oauth import pages
from kontor.gateway.oauth.clients import ClientResolver, OAuthClient, default_http_client
from kontor.gateway.oauth.server import (
    AuthlibResponse,
    KontorJsonRequest,
    KontorOAuth2Request,
    ParamError,
    TenantAuthorizationServer,
    TenantContext,
    ThreadBridge,
    parse_params,
)
from kontor.gateway.oauth.store import OAuthStore, SessionRecord
from kontor.gateway.oauth.tokens import AccessTokenGenerator, Principal
from kontor.gateway.ratelimit import InMemoryBucketStorage, RateLimiter, allow_all
from kontor.gateway.safehttp import SafeHttpClient
from kontor.gateway.scopes import grant, role_scopes, supported_scopes
from kontor.tenancy import InvalidTenant

log = logging.getLogger(__name__)

__all__ = ["AuthServer"]

MAX_FORM_BYTES = 16 * 1024
MAX_JSON_BYTES = 32 * 1024
SESSION_COOKIE = "kontor_oauth_session"
LOGIN_FAILED_MESSAGE = "The e-mail address or password is not correct."
CORS_HEADERS = {"Access-Control-Allow-Origin": "*"}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
    "Access-Control-Max-Age": "600",
}


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BodyError(413, f"request body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyError(413, f"request body larger than {limit} bytes")
    return bytes(body)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_form(request: Request, secret_fields: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    if _media_type(request) != "application/x-www-form-urlencoded":
        raise _BodyError(415, "expected an application/x-www-form-urlencoded body")
    body = await _read_body(request, MAX_FORM_BYTES)
    try:
        return parse_params(body, secret_fields=secret_fields)
    except ParamError as exc:
        raise _BodyError(400, str(exc)) from None


def _oauth_error(status: int, error: str, description: str, extra: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache", **(extra or {})})


def _not_found() -> JSONResponse:
    return _oauth_error(404, "not_found", "unknown tenant", CORS_HEADERS)


def _json(response: AuthlibResponse, extra: dict[str, str] | None = None) -> Response:
    headers = {k: v for k, v in response.headers if k.lower() != "content-type"}
    return JSONResponse(response.body, status_code=response.status, headers={**headers, **(extra or {})})


class _StaticClient:
    """The client of a token minted outside the OAuth flow (``kontor token``)."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""


class AuthServer:
    """The gateway's built-in OAuth 2.1 authorization server: one issuer per tenant.

    ``keystore``: the access-token signing keys (default ``<data_dir>/keys/oauth``, apart from
    the internal-token keys). ``http``: the SSRF-safe fetcher for client ID metadata documents
    (default: see :func:`~kontor.gateway.oauth.clients.default_http_client`).
    """

    session_ttl = timedelta(hours=8)
    anonymous_session_ttl = timedelta(minutes=30)
    prune_interval_s = 600.0

    def __init__(self, settings: GatewaySettings, db: GatewayDB, *, keystore: KeyStore | None = None,
                 http: SafeHttpClient | None = None) -> None:
        self.settings = settings
        self.db = db
        self.keystore = keystore if keystore is not None else KeyStore(
            settings.data_dir / "keys" / "oauth", max_token_lifetime_s=max(settings.access_token_ttl_s, 1))
        self.http = http if http is not None else default_http_client(settings)
        self.store = OAuthStore(db)
        # Registration is anonymous by design (RFC 7591): bounded per client address and per tenant,
        # so nobody can fill the client table.
        buckets = InMemoryBucketStorage()
        self.register_limits = (
            RateLimiter(buckets, settings.rate_register_per_s, settings.rate_register_burst),
            RateLimiter(buckets, settings.rate_register_tenant_per_s, settings.rate_register_tenant_burst))
        self.clients = ClientResolver(self.store, settings, self.http)
        self.bridge = ThreadBridge()
        self._last_prune = -math.inf

    # -- public API -----------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """All endpoints, with absolute paths (mount them at the root of the gateway's app)."""
        return [
            Route("/.well-known/oauth-authorization-server/t/{tenant}", self._metadata, methods=["GET", "OPTIONS"]),
            Route("/t/{tenant}/oauth/authorize", self._authorize, methods=["GET", "POST"]),
            Route("/t/{tenant}/oauth/token", self._token, methods=["POST", "OPTIONS"]),
            Route("/t/{tenant}/oauth/register", self._register, methods=["POST", "OPTIONS"]),
            Route("/t/{tenant}/oauth/revoke", self._revoke, methods=["POST", "OPTIONS"]),
            Route("/t/{tenant}/oauth/jwks", self._jwks, methods=["GET", "OPTIONS"]),
            Route("/t/{tenant}/oauth/static/kontor.css", self._stylesheet, methods=["GET"]),
        ]

    async def issue_access_token(self, tenant: str, email: str, scopes: list[str] | None = None,
                                 client_id: str = "kontor-cli") -> str:
        """An access token for ``email`` without the browser flow (``kontor token``); no refresh token.

        ``scopes`` (None: all) are cut down to what the user's role allows. Raises
        :class:`~kontor.gateway.db.NotFound` for an unknown tenant or user and
        :class:`~kontor.gateway.db.InvalidValue` for a disabled user or when no scope remains.
        """
        if await self.db.get_tenant(tenant) is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        user = await self.db.get_user(tenant, email)
        if user is None:
            raise NotFound(f"no user {email!r} in tenant {tenant!r}")
        if user.disabled:
            raise InvalidValue(f"user {user.email!r} is disabled")
        ctx = await self._context(tenant)
        granted = grant(scopes, role_scopes(user.role.value, ctx.installations))
        if not granted:
            raise InvalidValue(f"none of the requested scopes is available to {user.email!r} "
                               f"(role {user.role.value}) in tenant {tenant!r}")
        generator = AccessTokenGenerator(self.keystore, issuer=ctx.issuer, audience=ctx.resource, tenant=tenant,
                                         ttl_s=self.settings.access_token_ttl_s, installations=ctx.installations)
        token = generator.generate("urn:kontor:cli", _StaticClient(client_id), Principal(user), " ".join(granted),
                                   include_refresh_token=False)
        return str(token["access_token"])

    async def is_revoked(self, jti: str) -> bool:
        """Whether the access token with this ``jti`` was revoked (cheap: an in-memory lookup)."""
        return await self.store.is_revoked(jti)

    def jwks(self) -> dict[str, Any]:
        """Public keys that verify this server's access tokens (the same for every tenant); never empty."""
        self.keystore.current()  # creates the first key, so verifiers can fetch it before any token exists
        return self.keystore.jwks()

    # -- helpers --------------------------------------------------------------------------

    async def _tenant(self, request: Request) -> Tenant | None:
        try:
            return await self.db.get_tenant(request.path_params["tenant"])
        except InvalidTenant:
            return None

    def _principal_loader(self, tenant: str) -> Callable[[uuid.UUID, str], Any]:
        async def load(user_id: uuid.UUID, email: str) -> Principal | None:
            user = await self.db.get_user(tenant, email)
            if user is None or user.id != user_id or user.disabled:
                return None
            return Principal(user)

        return load

    async def _context(self, tenant: str) -> TenantContext:
        installations = await self.db.list_enabled(tenant)
        return TenantContext(
            settings=self.settings, store=self.store, clients=self.clients, keystore=self.keystore, tenant=tenant,
            installations=[(i.server, dict(i.config)) for i in installations],
            scopes_supported=supported_scopes(i.server for i in installations),
            load_principal=self._principal_loader(tenant))

    def _request(self, request: Request, ctx: TenantContext, endpoint: str, *,
                 query: list[tuple[str, str]] | None = None,
                 form: list[tuple[str, str]] | None = None) -> KontorOAuth2Request:
        return KontorOAuth2Request(request.method, f"{ctx.issuer}/oauth/{endpoint}", request.headers,
                                   query=query or [], form=form or [],
                                   params_from="query" if endpoint == "authorize" else "form",
                                   allow_http=self.settings.dev_mode)

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < self.prune_interval_s:
            return
        self._last_prune = now
        try:
            await self.store.prune()
        except Exception as exc:  # housekeeping must never fail a request
            log.warning("pruning expired OAuth state failed: %s", type(exc).__name__)

    def _stylesheet_url(self, tenant: str) -> str:
        return f"/t/{tenant}/oauth/static/kontor.css"

    def _error_page(self, tenant: str, title: str, message: str, status: int = 400) -> Response:
        return pages.error_page(stylesheet=self._stylesheet_url(tenant), title=title, message=message, status=status)

    def _set_session_cookie(self, response: Response, tenant: str, session_id: str, ttl: timedelta) -> None:
        response.set_cookie(SESSION_COOKIE, session_id, max_age=int(ttl.total_seconds()), path=f"/t/{tenant}/",
                            secure=self.settings.origin.startswith("https://"), httponly=True, samesite="lax")

    async def _session(self, request: Request, tenant: str) -> SessionRecord | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        return await self.store.get_session(tenant, session_id)

    async def _signed_in(self, tenant: str, session: SessionRecord | None) -> Principal | None:
        if session is None or session.user_id is None or session.email is None:
            return None
        return await self._principal_loader(tenant)(session.user_id, session.email)

    # -- metadata, keys, stylesheet ---------------------------------------------------------

    async def _metadata(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        if tenant is None:
            return _not_found()
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=PREFLIGHT_HEADERS)
        ctx = await self._context(tenant.id)
        return JSONResponse(ctx.metadata(), headers={**CORS_HEADERS, "Cache-Control": "no-cache"})

    async def _jwks(self, request: Request) -> Response:
        if await self._tenant(request) is None:
            return _not_found()
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=PREFLIGHT_HEADERS)
        return JSONResponse(self.jwks(), headers={**CORS_HEADERS, "Cache-Control": "public, max-age=300"})

    async def _stylesheet(self, request: Request) -> Response:
        if await self._tenant(request) is None:
            return _not_found()
        return pages.stylesheet_response()

    # -- authorization endpoint -------------------------------------------------------------

    async def _authorize(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        if tenant is None:
            return _not_found()
        t = tenant.id
        try:
            query = parse_params(request.url.query)
        except ParamError as exc:
            return self._error_page(t, "Invalid request", f"The authorization request is malformed: {exc}.")
        form: dict[str, str] = {}
        session: SessionRecord | None = None
        if request.method == "POST":
            try:
                form = dict(reversed(await _read_form(request, frozenset({"password"}))))
            except _BodyError as exc:
                return self._error_page(t, "Invalid request", exc.message, exc.status)
            session = await self._session(request, t)
            sent = form.get("csrf_token", "")
            if session is None or not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                return self._error_page(t, "This form has expired",
                                        "The form was not sent from this sign-in page or your session has ended.")
        ctx = await self._context(t)
        server = TenantAuthorizationServer(ctx)
        oreq = self._request(request, ctx, "authorize", query=query)
        outcome = await self.bridge.run(_validate_authorization, server, oreq)
        if isinstance(outcome, AuthlibResponse):
            return _redirect(outcome, request.method)
        if isinstance(outcome, str):
            return self._error_page(t, "This sign-in link is not valid", outcome)
        client: OAuthClient = oreq.client
        action = f"/t/{t}/oauth/authorize?{urlencode(query)}"
        await self._maybe_prune()
        if request.method == "GET":
            return await self._show(request, tenant, ctx, oreq, client, action)
        step = form.get("step")
        if step == "login":
            return await self._login(request, tenant, ctx, client, action, form, session)
        if session is None:  # unreachable: the CSRF check needs a session
            return self._error_page(t, "This form has expired", "Your session has ended.")
        if step == "logout":
            await self.store.delete_session(request.cookies[SESSION_COOKIE])
            return await self._show(request, tenant, ctx, oreq, client, action, fresh_session=True)
        if step == "consent":
            return await self._consent(tenant, ctx, server, oreq, outcome, form, session)
        return self._error_page(t, "Invalid request", "Unknown form step.")

    def _scopes_for(self, ctx: TenantContext, oreq: KontorOAuth2Request, principal: Principal
                    ) -> tuple[list[str], list[str]]:
        requested = (oreq.payload.scope or "").split()
        allowed = role_scopes(principal.user.role.value, ctx.installations)
        granted = grant(requested, allowed)
        return granted, sorted(set(requested) - allowed)

    async def _show(self, request: Request, tenant: Tenant, ctx: TenantContext, oreq: KontorOAuth2Request,
                    client: OAuthClient, action: str, *, fresh_session: bool = False,
                    error: str | None = None, email: str = "", status: int = 200) -> Response:
        session = None if fresh_session else await self._session(request, tenant.id)
        principal = await self._signed_in(tenant.id, session)
        if principal is not None and session is not None:
            granted, unavailable = self._scopes_for(ctx, oreq, principal)
            return pages.consent_page(
                stylesheet=self._stylesheet_url(tenant.id), action=action, csrf_token=session.csrf_token,
                tenant_name=tenant.name, client_name=client.client_name, client_id=client.client_id,
                metadata_document=client.record.metadata_document, redirect_uri=oreq.payload.redirect_uri,
                user_email=principal.user.email, scopes=granted, unavailable=unavailable)
        new_id = None
        if session is None or session.user_id is not None:  # none yet, or a sign-in no longer valid
            if session is not None:
                await self.store.delete_session(request.cookies[SESSION_COOKIE])
            new_id, session = await self.store.create_session(tenant.id, self.anonymous_session_ttl)
        response = pages.login_page(
            stylesheet=self._stylesheet_url(tenant.id), action=action, csrf_token=session.csrf_token,
            tenant_name=tenant.name, client_name=client.client_name, client_id=client.client_id, email=email,
            error=error, status=status)
        if new_id is not None:
            self._set_session_cookie(response, tenant.id, new_id, self.anonymous_session_ttl)
        return response

    async def _login(self, request: Request, tenant: Tenant, ctx: TenantContext, client: OAuthClient, action: str,
                     form: dict[str, str], session: SessionRecord) -> Response:
        email = form.get("email", "")[:320]
        password = form.get("password", "")[:1024]
        context = {"via": "oauth", "client_id": client.client_id[:200],
                   "remote": request.client.host if request.client else None}
        error: str | None = None
        try:
            user = await self.db.authenticate(tenant.id, email, password, context=context)
        except AccountLocked:
            error = pages.LOCKED_MESSAGE
        except AuthenticationFailed:
            error = LOGIN_FAILED_MESSAGE
        if error is not None:
            response = pages.login_page(
                stylesheet=self._stylesheet_url(tenant.id), action=action, csrf_token=session.csrf_token,
                tenant_name=tenant.name, client_name=client.client_name, client_id=client.client_id,
                email=email, error=error, status=401)
            return response
        # A new session id at sign-in: a session id planted before sign-in is worth nothing after it.
        await self.store.delete_session(request.cookies[SESSION_COOKIE])
        new_id, _ = await self.store.create_session(tenant.id, self.session_ttl, user_id=user.id, email=user.email)
        response = RedirectResponse(f"{ctx.issuer}{action.removeprefix(f'/t/{tenant.id}')}", status_code=303,
                                    headers=pages.html_headers())
        self._set_session_cookie(response, tenant.id, new_id, self.session_ttl)
        return response

    async def _consent(self, tenant: Tenant, ctx: TenantContext, server: TenantAuthorizationServer,
                       oreq: KontorOAuth2Request, grant_: Any, form: dict[str, str],
                       session: SessionRecord) -> Response:
        principal = await self._signed_in(tenant.id, session)
        if principal is None:
            return self._error_page(tenant.id, "Your sign-in has ended",
                                    "Return to the application and start again.")
        decision = form.get("decision")
        if decision == "deny":
            result = await self.bridge.run(_authorization_response, server, oreq, None, grant_)
        elif decision == "approve":
            granted, _ = self._scopes_for(ctx, oreq, principal)
            if not granted:
                result = server.redirect_with_error(oreq.payload.redirect_uri, oreq, "invalid_scope",
                                                    "none of the requested scopes is available to this user")
            else:
                ctx.granted = granted
                result = await self.bridge.run(_authorization_response, server, oreq, principal, grant_)
        else:
            return self._error_page(tenant.id, "Invalid request", "Choose Allow or Deny.")
        if isinstance(result, str):
            return self._error_page(tenant.id, "This sign-in link is not valid", result)
        return _redirect(result, "POST")

    # -- token, registration, revocation ---------------------------------------------------

    async def _token(self, request: Request) -> Response:
        return await self._form_endpoint(request, "token", lambda server, oreq: server.create_token_response(oreq))

    async def _revoke(self, request: Request) -> Response:
        return await self._form_endpoint(
            request, "revoke", lambda server, oreq: server.create_endpoint_response("revocation", oreq))

    async def _form_endpoint(self, request: Request, endpoint: str,
                             call: Callable[[TenantAuthorizationServer, KontorOAuth2Request], AuthlibResponse]
                             ) -> Response:
        tenant = await self._tenant(request)
        if tenant is None:
            return _not_found()
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=PREFLIGHT_HEADERS)
        if request.url.query:
            return _oauth_error(400, "invalid_request", "parameters belong in the request body", CORS_HEADERS)
        try:
            form = await _read_form(request)
        except _BodyError as exc:
            return _oauth_error(exc.status, "invalid_request", exc.message, CORS_HEADERS)
        ctx = await self._context(tenant.id)
        server = TenantAuthorizationServer(ctx)
        oreq = self._request(request, ctx, endpoint, form=form)
        result = await self.bridge.run(_guarded, call, server, oreq)
        await self._maybe_prune()
        return _json(result, CORS_HEADERS)

    async def _register(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        if tenant is None:
            return _not_found()
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=PREFLIGHT_HEADERS)
        by_address, by_tenant = self.register_limits
        address = request.client.host if request.client else "unknown"
        decision = await allow_all([(by_address, f"register:{tenant.id}:{address}"),
                                    (by_tenant, f"register:{tenant.id}")])
        if not decision.allowed:
            retry = str(max(1, math.ceil(decision.retry_after_s)))
            return _oauth_error(429, "invalid_request", "too many client registrations; retry later",
                                {**CORS_HEADERS, "Retry-After": retry})
        if _media_type(request) != "application/json":
            return _oauth_error(415, "invalid_request", "expected an application/json body", CORS_HEADERS)
        try:
            body = await _read_body(request, MAX_JSON_BYTES)
        except _BodyError as exc:
            return _oauth_error(exc.status, "invalid_request", exc.message, CORS_HEADERS)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            return _oauth_error(400, "invalid_client_metadata", "the body must be a JSON object", CORS_HEADERS)
        if contains_nul(data):  # PostgreSQL can store U+0000 neither in text nor in JSONB
            return _oauth_error(400, "invalid_client_metadata", "NUL characters are not allowed", CORS_HEADERS)
        ctx = await self._context(tenant.id)
        server = TenantAuthorizationServer(ctx)
        jreq = KontorJsonRequest("POST", f"{ctx.issuer}/oauth/register", request.headers, data)
        result = await self.bridge.run(
            _guarded, lambda s, r: s.create_endpoint_response("client_registration", r), server, jreq)
        return _json(result, CORS_HEADERS)


# --- authlib calls (run in worker threads) -------------------------------------------------------


def _guarded(call: Callable[[Any, Any], AuthlibResponse], server: TenantAuthorizationServer,
             request: Any) -> AuthlibResponse:
    try:
        return call(server, request)
    except ValueError:  # e.g. an error description authlib refuses to build from a hostile value
        return AuthlibResponse(400, {"error": "invalid_request", "error_description": "malformed request"},
                               [("Cache-Control", "no-store"), ("Pragma", "no-cache")])


def _validate_authorization(server: TenantAuthorizationServer, oreq: KontorOAuth2Request) -> Any:
    """The authlib grant for a valid request; an error redirect; or a message for an error page."""
    try:
        return server.get_consent_grant(oreq)
    except OAuth2Error as error:
        if error.redirect_uri:
            return server.error_redirect(oreq, error)
        return str(error.get_error_description() or error.error)
    except ValueError:
        return "The request contains characters that are not allowed."


def _authorization_response(server: TenantAuthorizationServer, oreq: KontorOAuth2Request,
                            principal: Principal | None, grant_: Any) -> AuthlibResponse | str:
    try:
        response = server.create_authorization_response(oreq, principal, grant_)
    except ValueError:
        return "The request contains characters that are not allowed."
    if not isinstance(response, AuthlibResponse) or response.location is None:
        body = response.body if isinstance(response, AuthlibResponse) else None
        return str(body.get("error_description", "invalid request")) if isinstance(body, dict) else "invalid request"
    return response


def _redirect(response: AuthlibResponse, method: str) -> Response:
    """An authorization response redirect (after a POST: 303, so the browser follows with GET)."""
    return RedirectResponse(response.location or "", status_code=303 if method == "POST" else 302,
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
