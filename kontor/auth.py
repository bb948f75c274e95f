"""Verification of the gateway's internal tokens, for every first-party server.

The gateway calls a server with a short-lived JWT it minted for that server's audience
(never the user's token). A server verifies it against the gateway's JWKS and takes the
tenant only from it: :class:`InternalTokenVerifier` does the checks, :class:`McpTokenVerifier`
plugs them into the ``mcp`` SDK's bearer-auth middleware, and :func:`tenant_from_request`
reads the verified tenant inside a tool.

Only asymmetric signatures (ES256, RS256) are accepted, each only with a key of its own type,
so ``alg: none`` and HMAC forgeries with a public key as the secret fail. Reasons in
:class:`TokenInvalid` are short fixed phrases; the token itself never appears in a message
or log record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, RSAKey
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from kontor.tenancy import InvalidTenant, NoTenant, current_tenant, validate_tenant

if TYPE_CHECKING:
    from kontor.settings import Settings

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS: tuple[str, ...] = ("ES256", "RS256")
#: RFC 9068 ``typ`` of JWT access tokens (the minter sets ``at+jwt``).
ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
MAX_TOKEN_BYTES = 8192
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
_MIN_RSA_BITS = 2048


class TokenInvalid(Exception):
    """The token was refused; ``reason`` is a short phrase safe to log (never the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailable(TokenInvalid):
    """No signing keys could be obtained (the JWKS endpoint is down and nothing is cached)."""


class NoVerifiedToken(NoTenant):
    """A tool asked for the request's tenant, but the request carries no verified internal token."""


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    tenant: str
    scopes: frozenset[str]
    client_id: str | None
    actor: str | None
    expires_at: int
    raw_claims: Mapping[str, Any]


# -- JWKS sources -------------------------------------------------------------------------


class JwksSource(Protocol):
    async def get_key(self, kid: str) -> Key | None:
        """The public verification key with this ``kid``, or None when there is none."""
        ...


def parse_jwks(doc: Any) -> dict[str, Key]:
    """Public signature keys of a JWK Set by kid; keys that cannot be ours are left out.

    Left out: entries without ``kid``, key types other than EC P-256 and RSA (so a symmetric
    ``oct`` key can never verify anything), ``use`` other than ``sig``, RSA under 2048 bits,
    and duplicate kids. Private parts in the document are dropped.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK Set")
    out: dict[str, Key] = {}
    duplicates: set[str] = set()
    for entry in doc["keys"]:
        if not isinstance(entry, dict):
            continue
        kid, kty = entry.get("kid"), entry.get("kty")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        try:
            key: Key
            if kty == "EC":
                key = ECKey.import_key({k: v for k, v in entry.items() if k != "d"})
                if key.curve_name != "P-256":
                    continue
            elif kty == "RSA":
                public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
                key = RSAKey.import_key(public)
                if key.public_key.key_size < _MIN_RSA_BITS:
                    continue
            else:
                continue
        except (JoseError, ValueError, TypeError, KeyError):
            log.warning("ignoring malformed JWK kid=%s", kid[:64])
            continue
        if kid in out:
            duplicates.add(kid)
        out[kid] = key
    for kid in duplicates:  # ambiguous: which one signed? use neither
        del out[kid]
    return out


class StaticJwks:
    """A fixed JWK Set (tests, or a server configured with the gateway's public keys)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = parse_jwks(dict(jwks))

    async def get_key(self, kid: str) -> Key | None:
        return self._keys.get(kid)


class HttpJwks:
    """The gateway's JWKS fetched over HTTP, cached for ``ttl_s``.

    An unknown ``kid`` (the gateway rotated) triggers a refetch, but fetches happen at most
    once per ``refetch_interval_s`` whatever the reason, so a flood of tokens with made-up
    kids costs the JWKS endpoint one request per interval. Concurrent misses share one fetch.
    When a fetch fails the last good keys stay in use.
    """

    def __init__(
        self,
        url: str,
        ttl_s: float = 300.0,
        client: httpx.AsyncClient | None = None,
        *,
        refetch_interval_s: float = 10.0,
        timeout_s: float = 5.0,
        max_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or refetch_interval_s < 0:
            raise ValueError("ttl_s must be positive and refetch_interval_s not negative")
        self.url = url
        self.ttl_s = ttl_s
        self.refetch_interval_s = refetch_interval_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._client = client
        self._owns_client = client is None
        self._clock = clock
        self._keys: dict[str, Key] | None = None
        self._fetched_at = -math.inf
        self._last_attempt = -math.inf
        self._attempts = 0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        #: number of HTTP fetches made (for tests and metrics)
        self.fetches = 0

    async def get_key(self, kid: str) -> Key | None:
        keys = self._keys
        now = self._clock()
        if keys is not None and kid in keys and now - self._fetched_at < self.ttl_s:
            return keys[kid]
        if now - self._last_attempt >= self.refetch_interval_s:
            seen = self._attempts
            async with self._get_lock():
                # Another task may have fetched while this one waited: then use its result.
                if self._attempts == seen and self._clock() - self._last_attempt >= self.refetch_interval_s:
                    await self._fetch()
        keys = self._keys
        if keys is None:
            raise JwksUnavailable("signing keys unavailable")
        return keys.get(kid)

    async def refresh(self) -> None:
        """Fetch now (ignores the rate limit; for startup and tests)."""
        async with self._get_lock():
            await self._fetch()

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _fetch(self) -> None:
        self._attempts += 1
        self._last_attempt = self._clock()
        self.fetches += 1
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            async with self._client.stream("GET", self.url, timeout=self.timeout_s,
                                           headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise ValueError(f"HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise ValueError("JWKS document too large")
            keys = parse_jwks(json.loads(body))
        except (httpx.HTTPError, ValueError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
            kept = "keeping the cached keys" if self._keys is not None else "no keys yet"
            log.warning("JWKS fetch from %s failed (%s); %s", self.url, why, kept)
            return
        self._keys = keys
        self._fetched_at = self._clock()


# -- verification -------------------------------------------------------------------------


class InternalTokenVerifier:
    """Verifies the gateway's internal tokens for one server (its audience).

    Checks signature (ES256/RS256 only, key type matching the algorithm), ``typ``,
    ``exp``/``nbf``/``iat`` with ``leeway_s``, a lifetime of at most ``max_lifetime_s``,
    ``iss`` and ``aud`` equal to the configured values, ``sub`` and a valid ``tenant``.
    Successful results are cached by token until they expire (the gateway reuses a token
    for many calls, so most requests skip the signature check).
    """

    def __init__(
        self,
        jwks_source: JwksSource,
        issuer: str,
        audience: str,
        leeway_s: int = 5,
        *,
        max_lifetime_s: int = 3600,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience must not be empty")
        self.jwks_source = jwks_source
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._registry = jws.JWSRegistry(algorithms=list(ALLOWED_ALGORITHMS))

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token, or :class:`TokenInvalid` with a short reason."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise TokenInvalid("malformed token")
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            if now < cached.expires_at + self.leeway_s:
                self._cache.move_to_end(token)
                return cached
            self._cache.pop(token, None)
            raise TokenInvalid("token expired")
        verified = await self._verify_uncached(token, now)
        if self.cache_size > 0:
            self._cache[token] = verified
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return verified

    async def _verify_uncached(self, token: str, now: float) -> VerifiedToken:
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
        except (JoseError, ValueError, TypeError, UnicodeError):
            raise TokenInvalid("malformed token") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenInvalid("algorithm not allowed")
        if not set(header) <= _ALLOWED_HEADER:
            raise TokenInvalid("unsupported header parameter")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES:
            raise TokenInvalid("wrong token type")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenInvalid("missing kid")
        key = await self.jwks_source.get_key(kid)
        if key is None:
            raise TokenInvalid("unknown signing key")
        if not key_fits(key, alg):
            raise TokenInvalid("key does not match algorithm")
        try:
            ok = jws.validate_compact(obj, key, registry=self._registry)
        except (JoseError, ValueError, TypeError):
            ok = False
        if not ok:
            raise TokenInvalid("bad signature")
        try:
            claims = json.loads(obj.payload or b"", parse_constant=no_constants)
        except ValueError:
            raise TokenInvalid("malformed claims") from None
        if not isinstance(claims, dict):
            raise TokenInvalid("malformed claims")
        self._check_claims(claims, now)
        return token_from_claims(claims)

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        if claims.get("iss") != self.issuer:
            raise TokenInvalid("wrong issuer")
        aud = claims.get("aud")
        if aud != self.audience and aud != [self.audience]:
            raise TokenInvalid("wrong audience")
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not is_time(exp):
            raise TokenInvalid("missing or malformed exp")
        if not is_time(iat):
            raise TokenInvalid("missing or malformed iat")
        if nbf is not None and not is_time(nbf):
            raise TokenInvalid("malformed nbf")
        if now >= exp + self.leeway_s:
            raise TokenInvalid("token expired")
        if nbf is not None and nbf > now + self.leeway_s:
            raise TokenInvalid("token not yet valid")
        if iat > now + self.leeway_s:
            raise TokenInvalid("token issued in the future")
        if exp - iat > self.max_lifetime_s:
            raise TokenInvalid("token lifetime too long")


def token_from_claims(claims: Mapping[str, Any]) -> VerifiedToken:
    """Build a :class:`VerifiedToken` from already verified claims (checks their shapes)."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenInvalid("missing subject")
    tenant = claims.get("tenant")
    if tenant is None:
        raise TokenInvalid("missing tenant")
    try:
        validate_tenant(tenant)
    except InvalidTenant:
        raise TokenInvalid("invalid tenant") from None
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise TokenInvalid("malformed scope")
    client_id = claims.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        raise TokenInvalid("malformed client_id")
    act = claims.get("act")
    actor: str | None = None
    if act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
            raise TokenInvalid("malformed act")
        actor = act["sub"]
    exp = claims.get("exp")
    if not is_time(exp):
        raise TokenInvalid("missing or malformed exp")
    return VerifiedToken(subject=sub, tenant=tenant, scopes=frozenset(scope.split()), client_id=client_id,
                         actor=actor, expires_at=int(exp), raw_claims=MappingProxyType(dict(claims)))


def no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python accepts them, RFC 8259 does not


def is_time(value: Any) -> bool:
    return not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float)
                                                                        and math.isfinite(value)))


def key_fits(key: Key, alg: str) -> bool:
    """ES256 only with an EC P-256 key, RS256 only with an RSA key; a key's own ``alg`` must agree."""
    if key.alg is not None and key.alg != alg:
        return False
    if alg == "ES256":
        return isinstance(key, ECKey) and key.curve_name == "P-256"
    if alg == "RS256":
        return isinstance(key, RSAKey)
    return False


# -- mcp SDK integration ------------------------------------------------------------------


class McpTokenVerifier:
    """The ``mcp`` SDK's ``TokenVerifier`` protocol over :class:`InternalTokenVerifier`.

    ``AccessToken.resource`` is the token's audience, so ``AuthSettings(validate_token_resource=True)``
    with ``resource_server_url`` equal to the audience works as a second check; ``claims`` holds
    the verified claims that :func:`tenant_from_request` reads.
    """

    def __init__(self, verifier: InternalTokenVerifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            v = await self.verifier.verify(token)
        except TokenInvalid as exc:
            log.info("refused internal token: %s", exc.reason)
            return None
        return AccessToken(
            token=token,
            client_id=v.client_id or v.actor or v.subject,
            scopes=sorted(v.scopes),
            expires_at=v.expires_at,
            resource=self.verifier.audience,
            subject=v.subject,
            claims=dict(v.raw_claims),
        )


def mcp_auth(verifier: InternalTokenVerifier, required_scopes: list[str] | None = None
             ) -> tuple[McpTokenVerifier, AuthSettings]:
    """``token_verifier`` and ``auth`` arguments for ``MCPServer`` behind the gateway.

    The server's audience must be its canonical resource URL (``resource_server_url``).
    """
    settings = AuthSettings(issuer_url=verifier.issuer, resource_server_url=verifier.audience,
                            required_scopes=required_scopes, validate_token_resource=True)
    return McpTokenVerifier(verifier), settings


def verified_token_from_request() -> VerifiedToken:
    """The verified internal token of the current MCP request (raises :class:`NoVerifiedToken`)."""
    access = get_access_token()
    if access is None or not access.claims:
        raise NoVerifiedToken("no verified token in this request: the server must run with token "
                              "verification (behind the gateway) to know the tenant")
    try:
        return token_from_claims(access.claims)
    except TokenInvalid as exc:
        raise NoVerifiedToken(f"the request's token carries no usable tenant ({exc.reason})") from None


def tenant_from_request() -> str:
    """The tenant of the current MCP request, taken only from its verified token."""
    return verified_token_from_request().tenant


# -- first-party servers: standalone or behind the gateway ------------------------------------


@dataclass(frozen=True)
class ServerAuth:
    """How a first-party server authenticates HTTP requests and where its tools find the tenant.

    Standalone (no ``KONTOR_AUTH_JWKS_URL``): no token verification, and :meth:`tenant` is the
    configured tenant context (:func:`kontor.tenancy.current_tenant`). Behind the gateway: every
    HTTP request needs a valid internal token, and :meth:`tenant` is read only from that token
    (:func:`tenant_from_request`); the configured tenant is never consulted.
    """

    token_verifier: McpTokenVerifier | None = None
    auth: AuthSettings | None = None

    @property
    def behind_gateway(self) -> bool:
        return self.token_verifier is not None

    def mcp_kwargs(self) -> dict[str, Any]:
        """``token_verifier`` and ``auth`` for ``MCPServer(...)``; empty when standalone."""
        if self.token_verifier is None:
            return {}
        return {"token_verifier": self.token_verifier, "auth": self.auth}

    def tenant(self) -> str:
        """The tenant of the current request (raises :class:`~kontor.tenancy.NoTenant` when there is none)."""
        return tenant_from_request() if self.behind_gateway else current_tenant()


class AuthConfigError(ValueError):
    """The ``KONTOR_AUTH_*`` settings are incomplete or malformed."""


def _http_url(value: str, what: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
        raise AuthConfigError(f"{what} must be an http(s) URL with a host, got {value!r}")
    return value


def server_auth(settings: Settings, jwks: JwksSource | None = None) -> ServerAuth:
    """The :class:`ServerAuth` for ``settings`` (``KONTOR_AUTH_*``); ``jwks`` replaces the HTTP JWKS (tests).

    Raises :class:`AuthConfigError` with a clear message when the auth settings are incomplete.
    """
    if not settings.behind_gateway:
        return ServerAuth()
    url = _http_url(settings.auth_jwks_url, "KONTOR_AUTH_JWKS_URL")
    if not settings.auth_issuer.strip():
        raise AuthConfigError("KONTOR_AUTH_ISSUER (the gateway's internal issuer) must be set "
                              "with KONTOR_AUTH_JWKS_URL")
    if not settings.auth_audience.strip():
        raise AuthConfigError("KONTOR_AUTH_AUDIENCE (this server's URL, e.g. http://127.0.0.1:8711/mcp) must be set "
                         "with KONTOR_AUTH_JWKS_URL")
    audience = _http_url(settings.auth_audience, "KONTOR_AUTH_AUDIENCE")
    verifier = InternalTokenVerifier(jwks if jwks is not None else HttpJwks(url), settings.auth_issuer.strip(),
                                     audience)
    token_verifier, auth = mcp_auth(verifier)
    return ServerAuth(token_verifier, auth)
