"""The gateway's ASGI application: tenant endpoints, metadata documents, the authorization server.

Request path for ``/t/<tenant>/mcp`` (the :class:`McpEndpoint`):

1. the tenant slug is valid, ``Host``/``Origin`` are ours (DNS-rebinding protection);
2. no token in the query string; a Bearer token in the header, verified for this tenant
   (401 with ``WWW-Authenticate`` pointing at the RFC 9728 metadata otherwise, 400 if malformed);
3. rate limits per tenant and per user (429 with ``Retry-After``);
4. a ``tools/call`` for a tool the token's scopes do not cover: 403 ``insufficient_scope`` naming
   the scopes needed (step-up);
5. a session id is only accepted with the tenant and principal that opened it;
6. a ``tools/call`` on an open session is served by the lean path (:mod:`kontor.gateway.fastpath`);
   everything else by the MCP SDK's Streamable HTTP session manager; both use the handlers in
   :mod:`kontor.gateway.proxy`, which forward to upstreams.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Message, Receive, Scope, Send

from kontor.gateway.audit import AuditEvent, AuditLog
from kontor.gateway.config import GatewaySettings, get_gateway_settings
from kontor.gateway.db import GatewayDB
from kontor.gateway.fastpath import FastPath, SessionInfo, owner_of
from kontor.gateway.keys import KeyStore
from kontor.gateway.proxy import Gateway
from kontor.gateway.ratelimit import InMemoryBucketStorage, RateLimiter, allow_all
from kontor.gateway.resource_server import (
    Principal,
    TenantAuth,
    TokenRejected,
    UserTokenVerifier,
    bearer_token,
    protected_resource_metadata,
    www_authenticate,
)
from kontor.gateway.safehttp import SafeHttpClient
from kontor.gateway.scopes import ADMIN_SCOPE, supported_scopes
from kontor.gateway.tokens import TokenMinter
from kontor.tenancy import InvalidTenant, validate_tenant

log = logging.getLogger(__name__)

TENANT_CACHE_S = 5.0
MAX_SESSIONS = 20_000  # above the SDK's default limit of open sessions (10,000)


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Runtime:
    """Everything the gateway holds while it runs; built in the app's lifespan."""

    def __init__(self, settings: GatewaySettings, db: GatewayDB, *, audit: AuditLog | None = None,
                 http: SafeHttpClient | None = None) -> None:
        self.settings = settings
        self.db = db
        self.http = http or SafeHttpClient(allow_http=settings.dev_mode, allow_private=settings.dev_mode)
        keys_dir = settings.data_dir / "keys"
        self.internal_keys = KeyStore(keys_dir / "internal", rotate_after_s=24 * 3600,
                                      max_token_lifetime_s=max(settings.internal_token_ttl_s, 60))
        self.minter = TokenMinter(self.internal_keys, settings.internal_issuer)
        self.audit = audit
        self.auth_server: Any = None
        try:
            from kontor.gateway.oauth import AuthServer
        except ImportError:  # pragma: no cover - the package ships with the gateway
            AuthServer = None  # noqa: N806
        if AuthServer is not None:
            self.auth_server = AuthServer(settings, db, http=self.http)
        self.gateway = Gateway(settings, db, self.minter, audit, http=self.http)
        self.verifier = UserTokenVerifier(settings, self.tenant_auth, self._builtin_key,
                                          is_revoked=self.auth_server.is_revoked if self.auth_server else None,
                                          http=self.http)
        storage = InMemoryBucketStorage()
        self.tenant_limit = RateLimiter(storage, settings.rate_tenant_per_s, settings.rate_tenant_burst)
        self.user_limit = RateLimiter(storage, settings.rate_user_per_s, settings.rate_user_burst)
        self.session_manager = StreamableHTTPSessionManager(
            self.gateway.server, security_settings=transport_security(settings),
            max_request_body_size=settings.max_body_bytes)
        self.fast = FastPath(self.gateway, self.session_manager) if settings.fast_path else None
        self._tenants: dict[str, tuple[float, TenantAuth]] = {}
        self._session_tenants: dict[str, str] = {}
        self._scopes: dict[str, tuple[float, list[str]]] = {}

    def remember_session(self, session_id: str, tenant: str) -> None:
        """Bind a session id to its tenant; bounded (oldest forgotten), like the SDK's own session limit."""
        self._session_tenants.pop(session_id, None)
        self._session_tenants[session_id] = tenant
        while len(self._session_tenants) > MAX_SESSIONS:
            self._session_tenants.pop(next(iter(self._session_tenants)))

    def session_of_other_tenant(self, session_id: str | None, tenant: str) -> bool:
        return session_id is not None and self._session_tenants.get(session_id, tenant) != tenant

    def forget_session(self, session_id: str) -> None:
        self._session_tenants.pop(session_id, None)

    async def _builtin_key(self, kid: str) -> Any:
        if self.auth_server is None:
            return None
        for key in self.auth_server.keystore.keys():
            if key.kid == kid:
                return key.key
        return None

    async def tenant_auth(self, tenant: str) -> TenantAuth:
        now = time.monotonic()
        hit = self._tenants.get(tenant)
        if hit is not None and now - hit[0] < TENANT_CACHE_S:
            return hit[1]
        row = await self.db.get_tenant(tenant)
        info = TenantAuth(exists=False) if row is None else TenantAuth(
            exists=True, oidc=(row.settings or {}).get("oidc"), allowed_issuers=tuple(row.allowed_issuers or ()))
        self._tenants[tenant] = (now, info)
        return info

    async def scopes_for(self, tenant: str) -> list[str]:
        """The tenant's scopes, cached briefly: every unauthenticated request's 401 names them."""
        now = time.monotonic()
        hit = self._scopes.get(tenant)
        if hit is None or now - hit[0] >= TENANT_CACHE_S:
            if len(self._scopes) > 10_000:
                self._scopes.clear()
            hit = self._scopes[tenant] = (now, supported_scopes(i.server for i in await self.db.list_enabled(tenant)))
        return hit[1]


def transport_security(settings: GatewaySettings) -> TransportSecuritySettings:
    """Host and Origin values the gateway accepts: its public origin, plus loopback names in dev mode."""
    origin = urlsplit(settings.origin)
    hosts = {origin.netloc}
    origins = {settings.origin}
    if settings.dev_mode:
        for name in ("127.0.0.1", "localhost", "[::1]"):
            hosts.add(f"{name}:{settings.port}")
            origins.update({f"http://{name}:{settings.port}", f"https://{name}:{settings.port}"})
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts),
                                     allowed_origins=sorted(origins))


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it exceeds ``limit``."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _parse(body: bytes) -> Any:
    """The POSTed JSON-RPC message(s); None when the body is not JSON (the SDK answers the parse error)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class McpEndpoint:
    """ASGI app for ``/t/<tenant>/mcp`` (see the module docstring for the order of checks)."""

    def __init__(self, runtime: Callable[[], Runtime], settings: GatewaySettings) -> None:
        self._runtime = runtime
        self.security = TransportSecurityMiddleware(transport_security(settings))

    @property
    def rt(self) -> Runtime:
        return self._runtime()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.rt
        tenant = scope.get("path_params", {}).get("tenant", "")
        try:
            validate_tenant(tenant)
        except InvalidTenant:
            await _json_error(404, "unknown tenant")(scope, receive, send)
            return
        request = Request(scope, receive)
        method = scope["method"]
        refusal = await self.security.validate_request(request, is_post=method == "POST")
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "access_token" in query:
            await _json_error(400, "access tokens are accepted only in the Authorization header, "
                                   "never in the query string")(scope, receive, send)
            return
        principal = await self._authenticate(request, tenant, scope, receive, send)
        if principal is None:
            return
        decision = await allow_all([(rt.tenant_limit, f"t:{tenant}"),
                                    (rt.user_limit, f"u:{tenant}:{principal.issuer}:{principal.subject}")])
        if not decision.allowed:
            retry = max(1, int(decision.retry_after_s + 0.999))
            await _json_error(429, "rate limit exceeded", {"Retry-After": str(retry)})(scope, receive, send)
            return
        session_id = request.headers.get("mcp-session-id")
        if rt.session_of_other_tenant(session_id, tenant):
            await _json_error(404, "Session not found")(scope, receive, send)
            return
        opening: SessionInfo | None = None
        if method == "POST":
            body = await _read_body(receive, rt.settings.max_body_bytes)
            if body is None:
                await _json_error(413, f"request body larger than {rt.settings.max_body_bytes} bytes")(
                    scope, receive, send)
                return
            message = _parse(body)
            needed = await self._missing_scopes(message, principal)
            if needed:
                await self._insufficient_scope(scope, receive, send, principal, needed)
                return
            fast = rt.fast
            if fast is not None and session_id is not None:
                if fast.take(scope, message, principal):
                    await Response(status_code=202)(scope, receive, send)
                    return
                eligible = fast.eligible(scope, message, principal)
                if eligible is not None:
                    await fast.serve(scope, receive, send, message, principal, *eligible)
                    return
            if fast is not None and isinstance(message, dict) and message.get("method") == "initialize":
                params = message.get("params")
                capabilities = params.get("capabilities") if isinstance(params, dict) else None
                opening = SessionInfo(tenant, owner_of(principal),
                                      capabilities if isinstance(capabilities, dict) else {})
            receive = _replay(body, receive)
        scope["kontor.principal"] = principal
        scope["user"] = AuthenticatedUser(AccessToken(
            token="", client_id=principal.client_id, scopes=sorted(principal.scopes),
            expires_at=int(principal.expires_at), resource=rt.settings.resource_uri(tenant),
            subject=principal.subject, claims={"iss": principal.issuer, "tenant": tenant}))

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", []):
                    if key.lower() == b"mcp-session-id":
                        opened = value.decode("latin-1")
                        rt.remember_session(opened, tenant)
                        if opening is not None and rt.fast is not None and message.get("status") == 200:
                            rt.fast.opened(opened, opening)
            await send(message)

        if method == "DELETE" and session_id is not None:
            rt.forget_session(session_id)
            if rt.fast is not None:
                rt.fast.closed(session_id)

        await rt.session_manager.handle_request(scope, receive, send_recording)

    async def _authenticate(self, request: Request, tenant: str, scope: Scope, receive: Receive,
                            send: Send) -> Principal | None:
        rt = self.rt
        try:
            token = bearer_token(request.headers.get("authorization"))
            if token is None:
                scopes = [s for s in await rt.scopes_for(tenant) if s != ADMIN_SCOPE]
                header = www_authenticate(rt.settings, tenant, scopes=scopes)
                await _json_error(401, "authorization required", {"WWW-Authenticate": header})(scope, receive, send)
                return None
            principal = await rt.verifier.verify(token, tenant)
        except TokenRejected as exc:
            status = 400 if exc.malformed else 401
            header = www_authenticate(rt.settings, tenant, error="invalid_request" if exc.malformed
                                      else "invalid_token", description=exc.reason)
            log.info("refused a token at tenant %s: %s", tenant, exc.reason)
            await _json_error(status, exc.reason, {"WWW-Authenticate": header})(scope, receive, send)
            return None
        return principal

    async def _missing_scopes(self, message: Any, principal: Principal) -> list[str]:
        """Scopes a ``tools/call`` in ``message`` needs that the token lacks (empty: nothing to step up)."""
        messages = message if isinstance(message, list) else [message]
        missing: set[str] = set()
        catalog = None
        for item in messages:
            if not isinstance(item, dict) or item.get("method") != "tools/call":
                continue
            name = (item.get("params") or {}).get("name") if isinstance(item.get("params"), dict) else None
            if catalog is None:
                catalog = await self.rt.gateway.catalogs.get(principal.tenant)
            entry = catalog.tools.get(name) if isinstance(name, str) else None
            if entry is not None and entry.scope not in principal.scopes:
                missing.add(entry.scope)
        return sorted(missing)

    async def _insufficient_scope(self, scope: Scope, receive: Receive, send: Send, principal: Principal,
                                  needed: list[str]) -> None:
        rt = self.rt
        wanted = sorted(set(needed) | set(principal.scopes))
        header = www_authenticate(rt.settings, principal.tenant, scopes=wanted, error="insufficient_scope",
                                  description=f"this call needs the scope {' '.join(needed)}")
        if rt.audit is not None:
            with contextlib.suppress(Exception):
                await rt.audit.append(AuditEvent(tenant=principal.tenant, decision="denied", subject=principal.subject,
                                                 client_id=principal.client_id, reason=f"missing scope {needed}"))
        await _json_error(403, f"insufficient_scope: needs {' '.join(needed)}",
                          {"WWW-Authenticate": header})(scope, receive, send)


def build_app(settings: GatewaySettings | None = None, *, db: GatewayDB | None = None) -> Starlette:
    """The gateway as a Starlette app; its lifespan opens the database, keys, audit log and sessions."""
    settings = settings or get_gateway_settings()
    state: dict[str, Runtime] = {}
    mounted: list[Any] = []  # mounted apps with a runtime to close at shutdown (they get no lifespan)

    def runtime() -> Runtime:
        return state["rt"]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        with contextlib.suppress(ImportError):
            import kontor.gateway.oauth  # noqa: F401 - registers its tables before init()
        database = db or GatewayDB(settings.database_url)
        await database.init()
        audit = None
        if settings.audit:
            (settings.data_dir / "audit").mkdir(parents=True, exist_ok=True)
            audit = AuditLog(settings.data_dir / "audit" / "audit.db", synchronous=settings.audit_synchronous)
            await audit.init()
        rt = state["rt"] = Runtime(settings, database, audit=audit)
        if rt.auth_server is not None:
            for route in rt.auth_server.routes():
                _app.router.routes.append(route)
        try:
            async with rt.session_manager.run():
                yield
        finally:
            for app in mounted:
                with contextlib.suppress(Exception):
                    await app.runtime.aclose()
            await rt.gateway.close()
            if audit is not None:
                await audit.close()
            if db is None:
                await database.close()

    async def health(_: Request) -> JSONResponse:
        return JSONResponse(await _health(runtime()))

    async def internal_jwks(_: Request) -> JSONResponse:
        return JSONResponse(runtime().internal_keys.jwks(), headers={"Cache-Control": "max-age=60"})

    async def resource_metadata(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        rt = runtime()
        try:
            validate_tenant(tenant)
        except InvalidTenant:
            return _json_error(404, "unknown tenant")
        info = await rt.tenant_auth(tenant)
        if not info.exists:
            return _json_error(404, "unknown tenant")
        oidc = info.oidc or {}
        return JSONResponse(protected_resource_metadata(rt.settings, tenant, await rt.scopes_for(tenant),
                                                        external_issuer=oidc.get("issuer"),
                                                        keep_builtin=bool(oidc.get("keep_builtin", False))))

    endpoint = McpEndpoint(runtime, settings)
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/.well-known/jwks.json", internal_jwks, methods=["GET"]),
        Route("/.well-known/oauth-protected-resource/t/{tenant}/mcp", resource_metadata, methods=["GET"]),
        Route("/t/{tenant}/mcp", endpoint, methods=["GET", "POST", "DELETE"]),
    ]
    # The bundled web chat (kontor.host.web) on the gateway's origin; KONTOR_GATEWAY_CHAT=false leaves it out.
    from kontor.host.web import build_host_app, chat_enabled

    if chat_enabled():
        chat = build_host_app(settings)
        mounted.append(chat)
        routes.append(Mount("/chat", app=chat))
    # The registry (kontor.registry.app): JSON API and pages under /registry, the official read API under /v0.1.
    from kontor.registry.app import gateway_mounts

    routes.extend(gateway_mounts(runtime))
    return Starlette(routes=routes, lifespan=lifespan)


async def _health(rt: Runtime) -> dict[str, Any]:
    """The gateway's own state and each first-party upstream's ``/health``."""
    servers: dict[str, str] = {}
    seen: set[str] = set()
    for tenant in await rt.db.list_tenants():
        for installation in await rt.db.list_enabled(tenant.id):
            url = installation.upstream_url
            if url in seen or not installation.config.get("first_party", False):
                continue
            seen.add(url)
            base = url.rsplit("/", 1)[0]
            try:
                response = await rt.http.get(f"{base}/health")
                servers[installation.server] = "ok" if response.status == 200 else f"http {response.status}"
            except Exception as exc:
                servers[installation.server] = f"down ({type(exc).__name__})"
    degraded = any(v != "ok" for v in servers.values())
    return {"status": "degraded" if degraded else "ok", "gateway": "ok", "servers": servers}
