"""The gateway as OAuth resource server: who is calling a tenant's endpoint, and may they?

A user's access token is accepted at ``/t/<tenant>/mcp`` only when

* it came in the ``Authorization: Bearer`` header (a token in the query string is refused);
* its signature checks out against the issuer's keys (ES256/RS256 only), and it is not expired,
  not yet valid, or revoked;
* its issuer is the tenant's built-in authorization server (``<origin>/t/<tenant>``) or one of
  the tenant's configured external OpenID Connect issuers;
* its audience is exactly the canonical URI of this tenant's endpoint (so a token for another
  tenant, or for a backend server, is useless here);
* for an external issuer, the mapped tenant claim (when configured) names this tenant.

External issuers are configured per tenant in the tenant's settings::

    {"oidc": {"issuer": "https://idp.example/realms/acme", "jwks_uri": "https://idp.example/.../certs",
              "tenant_claim": "tenant", "roles_claim": "roles", "scope_claim": "scope",
              "role_map": {"kontor-admin": "admin"}}}

An external issuer replaces the built-in server for that tenant (its tokens are refused) unless
the configuration says ``"keep_builtin": true``.

Verified tokens are cached until they expire, so the hot path costs a dictionary lookup.
Reasons for refusals are fixed phrases; a token never appears in a message or a log record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import Key

from kontor.auth import is_time, key_fits, no_constants, parse_jwks
from kontor.gateway.config import GatewaySettings
from kontor.gateway.safehttp import FetchFailed, SafeHttpClient, UnsafeUrl

log = logging.getLogger(__name__)

ALGORITHMS = ("ES256", "RS256")
MAX_TOKEN_BYTES = 8192
_ALLOWED_TYPES = {"at+jwt", "application/at+jwt", "jwt"}


class TokenRejected(Exception):
    """401: no usable token. ``reason`` is safe to show and log."""

    def __init__(self, reason: str, *, malformed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed  # 400 rather than 401 (a request the server cannot parse)


@dataclass(frozen=True)
class Principal:
    """A verified caller at one tenant's endpoint."""

    tenant: str
    subject: str
    issuer: str
    client_id: str
    scopes: frozenset[str]
    roles: tuple[str, ...]
    email: str | None
    expires_at: float
    jti: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def role(self) -> str:
        return "admin" if "admin" in self.roles else (self.roles[0] if self.roles else "member")


@dataclass(frozen=True)
class TenantAuth:
    """What the resource server needs to know about a tenant (cached briefly)."""

    exists: bool
    oidc: Mapping[str, Any] | None = None
    allowed_issuers: tuple[str, ...] = ()


KeyLookup = Callable[[str], Awaitable[Key | None]]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without one; TokenRejected when malformed."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise TokenRejected("malformed Authorization header (expected: Bearer <token>)", malformed=True)
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected("token too long", malformed=True)
    return token


async def decode_jwt(token: str, lookup: KeyLookup) -> dict[str, Any]:
    """Check a compact JWS against ``lookup``'s key and return its claims (no claim checks)."""
    registry = jws.JWSRegistry(algorithms=list(ALGORITHMS))
    try:
        obj = jws.extract_compact(token.encode("ascii"), registry=registry)
        header = obj.headers()
    except (JoseError, ValueError, TypeError, UnicodeError):
        raise TokenRejected("malformed token") from None
    alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ", "JWT")
    if alg not in ALGORITHMS:
        raise TokenRejected("algorithm not allowed")
    if not isinstance(typ, str) or typ.lower() not in _ALLOWED_TYPES:
        raise TokenRejected("wrong token type")
    if not isinstance(kid, str) or not kid:
        raise TokenRejected("missing kid")
    key = await lookup(kid)
    if key is None:
        raise TokenRejected("unknown signing key")
    if not key_fits(key, alg):
        raise TokenRejected("key does not match algorithm")
    try:
        ok = jws.validate_compact(obj, key, registry=registry)
    except (JoseError, ValueError, TypeError):
        ok = False
    if not ok:
        raise TokenRejected("bad signature")
    try:
        claims = json.loads(obj.payload or b"", parse_constant=no_constants)  # no NaN/Infinity exp
    except ValueError:
        raise TokenRejected("malformed claims") from None
    if not isinstance(claims, dict):
        raise TokenRejected("malformed claims")
    return claims


class RemoteJwks:
    """An external issuer's JWKS, fetched through the SSRF-safe client and cached."""

    def __init__(self, url: str, http: SafeHttpClient, ttl_s: float = 300.0, refetch_interval_s: float = 30.0) -> None:
        self.url, self.http, self.ttl_s, self.refetch_interval_s = url, http, ttl_s, refetch_interval_s
        self._keys: dict[str, Key] = {}
        self._fetched_at = float("-inf")

    async def get_key(self, kid: str) -> Key | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self.ttl_s
        if (kid not in self._keys or stale) and now - self._fetched_at > self.refetch_interval_s:
            self._fetched_at = now
            try:
                response = await self.http.get(self.url, headers={"accept": "application/json"})
                if response.ok:
                    self._keys = parse_jwks(response.json())
                else:
                    log.warning("JWKS %s answered HTTP %s", self.url, response.status)
            except (FetchFailed, UnsafeUrl, ValueError) as exc:
                log.warning("cannot fetch JWKS %s: %s", self.url, exc)
        return self._keys.get(kid)


class UserTokenVerifier:
    """Verifies users' access tokens for tenant endpoints (see the module docstring)."""

    def __init__(
        self,
        settings: GatewaySettings,
        tenant_auth: Callable[[str], Awaitable[TenantAuth]],
        builtin_keys: KeyLookup,
        *,
        is_revoked: Callable[[str], Awaitable[bool]] | None = None,
        http: SafeHttpClient | None = None,
        leeway_s: int = 5,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._tenant_auth = tenant_auth
        self._builtin_keys = builtin_keys
        self._is_revoked = is_revoked
        self._http = http or SafeHttpClient(allow_http=settings.dev_mode, allow_private=settings.dev_mode)
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], Principal] = OrderedDict()
        self._jwks: dict[str, RemoteJwks] = {}

    async def verify(self, token: str, tenant: str) -> Principal:
        key = (tenant, hashlib.sha256(token.encode()).hexdigest())
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None:
            if now >= cached.expires_at + self.leeway_s:
                self._cache.pop(key, None)
                raise TokenRejected("token expired")
            if cached.jti and self._is_revoked is not None and await self._is_revoked(cached.jti):
                self._cache.pop(key, None)
                raise TokenRejected("token revoked")
            return cached
        principal = await self._verify_uncached(token, tenant, now)
        if principal.jti and self._is_revoked is not None and await self._is_revoked(principal.jti):
            raise TokenRejected("token revoked")
        self._cache[key] = principal
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _verify_uncached(self, token: str, tenant: str, now: float) -> Principal:
        info = await self._tenant_auth(tenant)
        if not info.exists:
            raise TokenRejected("unknown tenant")
        builtin_issuer = self.settings.issuer(tenant)
        oidc = info.oidc or {}
        external_issuer = oidc.get("issuer")

        # Which issuer's keys? Peek at the unverified iss only to choose; everything is checked after.
        try:
            unverified = jws.extract_compact(token.encode("ascii")).payload
            iss = json.loads(unverified or b"{}").get("iss")
        except (JoseError, ValueError, TypeError, UnicodeError, AttributeError):
            raise TokenRejected("malformed token") from None
        if iss == builtin_issuer and external_issuer and not oidc.get("keep_builtin", False):
            raise TokenRejected("this tenant signs in through its own identity provider")
        if iss == builtin_issuer:
            claims = await decode_jwt(token, self._builtin_keys)
        elif iss and iss == external_issuer and iss in (info.allowed_issuers or (iss,)):
            jwks_uri = oidc.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise TokenRejected("issuer has no JWKS configured")
            source = self._jwks.get(jwks_uri)
            if source is None:
                source = self._jwks[jwks_uri] = RemoteJwks(jwks_uri, self._http)
            claims = await decode_jwt(token, source.get_key)
        else:
            raise TokenRejected("issuer not accepted for this tenant")
        if claims.get("iss") != iss:
            raise TokenRejected("issuer not accepted for this tenant")
        self._check_times(claims, now)
        aud = claims.get("aud")
        audience = self.settings.resource_uri(tenant)
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise TokenRejected("token audience is not this endpoint")
        if iss == builtin_issuer:
            return self._builtin_principal(claims, tenant, iss)
        return self._external_principal(claims, tenant, iss, oidc)

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not is_time(exp):
            raise TokenRejected("missing exp")
        if now >= exp + self.leeway_s:
            raise TokenRejected("token expired")
        if nbf is not None and (not is_time(nbf) or nbf > now + self.leeway_s):
            raise TokenRejected("token not yet valid")

    def _builtin_principal(self, claims: Mapping[str, Any], tenant: str, iss: str) -> Principal:
        if claims.get("tenant") != tenant:
            raise TokenRejected("token is for another tenant")
        return self._principal(claims, tenant, iss, scope_claim="scope", roles=claims.get("roles"))

    def _external_principal(self, claims: Mapping[str, Any], tenant: str, iss: str,
                            oidc: Mapping[str, Any]) -> Principal:
        tenant_claim = oidc.get("tenant_claim")
        if tenant_claim and claims.get(tenant_claim) != tenant:
            raise TokenRejected("token is for another tenant")
        raw_roles = claims.get(oidc.get("roles_claim") or "roles") or []
        role_map: Mapping[str, str] = oidc.get("role_map") or {}
        roles = [role_map.get(r, r) for r in raw_roles if isinstance(r, str)] if isinstance(raw_roles, list) else []
        return self._principal(claims, tenant, iss, scope_claim=oidc.get("scope_claim") or "scope", roles=roles)

    def _principal(self, claims: Mapping[str, Any], tenant: str, iss: str, *, scope_claim: str,
                   roles: Any) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenRejected("missing subject")
        raw_scope = claims.get(scope_claim, claims.get("scp", ""))
        if isinstance(raw_scope, str):
            scopes = frozenset(raw_scope.split())
        elif isinstance(raw_scope, list) and all(isinstance(s, str) for s in raw_scope):
            scopes = frozenset(raw_scope)
        else:
            raise TokenRejected("malformed scope")
        client_id = claims.get("client_id", claims.get("azp", ""))
        role_list = tuple(r for r in roles if isinstance(r, str) and r in ("admin", "member")) \
            if isinstance(roles, list) else ()
        email = claims.get("email")
        jti = claims.get("jti")
        return Principal(tenant=tenant, subject=sub, issuer=iss,
                         client_id=client_id if isinstance(client_id, str) else "",
                         scopes=scopes, roles=role_list or ("member",),
                         email=email if isinstance(email, str) else None, expires_at=float(claims["exp"]),
                         jti=jti if isinstance(jti, str) else None, claims=dict(claims))


def www_authenticate(settings: GatewaySettings, tenant: str, *, scopes: list[str] | None = None,
                     error: str | None = None, description: str | None = None) -> str:
    """``WWW-Authenticate: Bearer …`` pointing clients at the tenant endpoint's RFC 9728 metadata."""
    parts = [f'resource_metadata="{settings.resource_metadata_url(tenant)}"']
    if scopes:
        parts.append(f'scope="{" ".join(scopes)}"')
    if error:
        parts.append(f'error="{error}"')
    if description:
        safe = description.replace("\\", "").replace('"', "'")
        parts.append(f'error_description="{safe}"')
    return "Bearer " + ", ".join(parts)


def protected_resource_metadata(settings: GatewaySettings, tenant: str, scopes: list[str], *,
                                external_issuer: str | None = None, keep_builtin: bool = False) -> dict[str, Any]:
    """RFC 9728 metadata for ``/t/<tenant>/mcp``; built from configuration only."""
    servers = [external_issuer] if external_issuer else []
    if not external_issuer or keep_builtin:
        servers.append(settings.issuer(tenant))
    return {
        "resource": settings.resource_uri(tenant),
        "authorization_servers": servers,
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": f"Kontor MCP endpoint of tenant {tenant}",
    }
