"""Sign-in of the web chat: the host is a regular OAuth client of the gateway's authorization server.

The flow, per tenant (the tenant's issuer is ``<gateway>/t/<tenant>``):

1. ``GET /chat/login?tenant=acme`` — the host reads the issuer's RFC 8414 metadata (and checks
   that its ``issuer`` is the expected one and every endpoint lies on the gateway's origin),
   makes a PKCE verifier (S256) and a random ``state``, stores both server-side
   (:meth:`HostStore.create_login_state`, the verifier encrypted) bound to a random
   browser-binding cookie, and redirects to the authorization endpoint with
   ``client_id`` = the host's Client ID Metadata Document URL (``<origin>/chat/oauth/client.json``,
   served by the host), ``redirect_uri`` = ``<origin>/chat/oauth/callback``, no ``scope`` (the
   gateway then grants what the user's role allows), and ``resource`` = the tenant's MCP endpoint
   (RFC 8707).
2. The user signs in and consents on the gateway's pages.
3. ``GET /chat/oauth/callback?code&state&iss`` — the state must be one this browser started (its
   binding cookie), unused and fresh; ``iss`` must be the issuer (RFC 9207: the server announces
   ``authorization_response_iss_parameter_supported``, so a missing ``iss`` is refused too); the
   code is exchanged with the verifier (authlib's ``AsyncOAuth2Client``) at the token endpoint;
   the access token's signature and claims are checked against the issuer's JWKS (issuer,
   audience = the tenant endpoint, tenant, expiry) to learn who signed in.
4. The tokens are stored server-side only (encrypted, :class:`~kontor.host.store.HostStore`);
   the browser gets a random session cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure`` on an
   https origin). :class:`TokenSource` hands the MCP session the current access token and
   refreshes it shortly before it expires (one refresh at a time per session: the gateway
   rotates refresh tokens and treats a reused one as theft). Logout revokes the refresh token
   (which ends the whole grant) and the access token.

Every request of this module goes to the gateway's origin only (:func:`same_origin`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from kontor.gateway.config import GatewaySettings
from kontor.host.mcp_session import origin_of
from kontor.host.store import HostStore, HostUser, TokenSet, TokensUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "CALLBACK_PATH",
    "CLIENT_METADATA_PATH",
    "GatewayOAuth",
    "IssuerMetadata",
    "LoginError",
    "SignedIn",
    "TokenSource",
    "same_origin",
]

CLIENT_METADATA_PATH = "/chat/oauth/client.json"
CALLBACK_PATH = "/chat/oauth/callback"
CLIENT_NAME = "Kontor web chat"
METADATA_TTL_S = 300.0
REFRESH_MARGIN_S = 60.0  # refresh an access token this long before it expires
ALGORITHMS = ["ES256", "RS256"]


class LoginError(Exception):
    """Sign-in failed; the message is safe to show to the user."""


def same_origin(url: str, origin: str) -> bool:
    try:
        return origin_of(url) == origin_of(origin)
    except ValueError:
        return False


@dataclass(frozen=True)
class IssuerMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None
    jwks_uri: str
    scopes_supported: tuple[str, ...]
    iss_parameter: bool
    fetched_at: float


@dataclass(frozen=True)
class SignedIn:
    """The outcome of a successful callback."""

    user: HostUser
    session_id: str
    return_to: str


class GatewayOAuth:
    """The host's OAuth client of the gateway's built-in authorization server (see the module docstring).

    ``gateway``: the gateway's settings (origin, issuers, resource URIs). ``http``: an
    ``httpx.AsyncClient`` for metadata and JWKS (default: a private one, no redirects).
    """

    def __init__(self, gateway: GatewaySettings, store: HostStore, *, http: httpx.AsyncClient | None = None,
                 timeout_s: float = 15.0) -> None:
        self.gateway = gateway
        self.store = store
        self.origin = gateway.origin
        self.timeout_s = timeout_s
        self._http = http
        self._own_http = http is None
        self._metadata: dict[str, IssuerMetadata] = {}
        self._jwks: dict[str, tuple[float, KeySet]] = {}

    @property
    def client_id(self) -> str:
        return f"{self.origin}{CLIENT_METADATA_PATH}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.origin}{CALLBACK_PATH}"

    def client_metadata(self) -> dict[str, Any]:
        """The host's Client ID Metadata Document (a public client: PKCE, no secret)."""
        return {
            "client_id": self.client_id,
            "client_name": CLIENT_NAME,
            "client_uri": f"{self.origin}/chat/",
            "redirect_uris": [self.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def _check(self, url: Any, what: str) -> str:
        if not isinstance(url, str) or not same_origin(url, self.origin):
            raise LoginError(f"the authorization server's {what} is not on the gateway's origin")
        return url

    async def _get_json(self, url: str) -> Any:
        self._check(url, "document")
        try:
            response = await self.http().get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise LoginError(f"the gateway could not be reached ({type(exc).__name__})") from None
        if response.status_code == 404:
            raise LoginError("this workspace does not exist")
        if response.status_code != 200:
            raise LoginError(f"the gateway answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise LoginError("the gateway sent a malformed document") from None

    async def metadata(self, tenant: str) -> IssuerMetadata:
        """The tenant issuer's RFC 8414 metadata (cached a few minutes), checked."""
        hit = self._metadata.get(tenant)
        if hit is not None and time.monotonic() - hit.fetched_at < METADATA_TTL_S:
            return hit
        expected = self.gateway.issuer(tenant)
        doc = await self._get_json(self.gateway.as_metadata_url(tenant))
        if not isinstance(doc, dict) or doc.get("issuer") != expected:
            raise LoginError("the authorization server's metadata names another issuer")
        if "S256" not in (doc.get("code_challenge_methods_supported") or []):
            raise LoginError("the authorization server does not support PKCE with S256")
        scopes = doc.get("scopes_supported") or []
        meta = IssuerMetadata(
            issuer=expected,
            authorization_endpoint=self._check(doc.get("authorization_endpoint"), "authorization endpoint"),
            token_endpoint=self._check(doc.get("token_endpoint"), "token endpoint"),
            revocation_endpoint=(self._check(doc["revocation_endpoint"], "revocation endpoint")
                                 if doc.get("revocation_endpoint") else None),
            jwks_uri=self._check(doc.get("jwks_uri"), "key set"),
            scopes_supported=tuple(s for s in scopes if isinstance(s, str)),
            iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True,
            fetched_at=time.monotonic())
        self._metadata[tenant] = meta
        return meta

    def _client(self, **kwargs: Any) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(client_id=self.client_id, token_endpoint_auth_method="none",
                                 revocation_endpoint_auth_method="none", code_challenge_method="S256",
                                 redirect_uri=self.redirect_uri, timeout=self.timeout_s, follow_redirects=False,
                                 **kwargs)

    # -- step 1: the authorization request

    async def start(self, tenant: str, browser_binding: str, return_to: str) -> str:
        """Remember a new sign-in and return the URL of the authorization request."""
        meta = await self.metadata(tenant)
        verifier = generate_token(64)
        state = await self.store.create_login_state(tenant, verifier, return_to, browser_binding)
        async with self._client() as client:
            # No scope: the gateway then grants what the user's role allows (and its consent page lists
            # exactly that, without "requested but not available" entries for ordinary members).
            url, _ = client.create_authorization_url(
                meta.authorization_endpoint, state=state, code_verifier=verifier,
                resource=self.gateway.resource_uri(tenant))
        if not same_origin(url, self.origin):  # pragma: no cover - checked in metadata() already
            raise LoginError("the authorization endpoint is not on the gateway's origin")
        return url

    # -- step 3: the callback

    async def finish(self, params: Mapping[str, str], browser_binding: str, *,
                     session_ttl: timedelta) -> SignedIn:
        """Check the authorization response, exchange the code, verify the token, store it server-side."""
        state = params.get("state") or ""
        pending = await self.store.take_login_state(state, browser_binding) if browser_binding else None
        if pending is None:
            raise LoginError("this sign-in was not started in this browser or has expired; please sign in again")
        tenant = pending.tenant
        meta = await self.metadata(tenant)
        issuer = params.get("iss")
        if issuer is None and meta.iss_parameter:
            raise LoginError("the authorization response does not name its issuer")
        if issuer is not None and issuer != meta.issuer:
            raise LoginError("the authorization response comes from another issuer")
        if params.get("error"):
            reason = params.get("error_description") or params["error"]
            if params["error"] == "access_denied":
                raise LoginError("sign-in was cancelled (access denied)")
            raise LoginError(f"the authorization server refused the sign-in: {reason[:300]}")
        code = params.get("code")
        if not code:
            raise LoginError("the authorization response carries no code")
        try:
            async with self._client() as client:
                token = await client.fetch_token(
                    meta.token_endpoint, grant_type="authorization_code", code=code,
                    code_verifier=pending.code_verifier, resource=self.gateway.resource_uri(tenant))
        except Exception as exc:  # authlib raises OAuthError for error responses, httpx errors for the network
            raise LoginError(f"the code could not be exchanged for a token: {_describe(exc)}") from None
        tokens = _token_set(token)
        claims = await self.verify(tenant, tokens.access_token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise LoginError("the access token names no user")
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        user = await self.store.upsert_user(tenant, subject, email)
        session_id = await self.store.create_session(user, tokens, meta.issuer, session_ttl)
        return SignedIn(user, session_id, pending.return_to)

    async def verify(self, tenant: str, access_token: str) -> dict[str, Any]:
        """The claims of an access token the issuer signed for this tenant's endpoint."""
        meta = await self.metadata(tenant)
        for attempt in range(2):
            keys = await self._keyset(meta, refresh=attempt > 0)
            try:
                token = jwt.decode(access_token, keys, algorithms=ALGORITHMS)
                break
            except JoseError as exc:
                if attempt == 0 and "key" in str(exc).lower():
                    continue  # a rotated key: fetch the key set once more
                raise LoginError("the access token's signature is not valid") from None
            except (ValueError, TypeError):
                raise LoginError("the access token is malformed") from None
        claims = dict(token.claims)
        registry = jwt.JWTClaimsRegistry(leeway=60, iss={"essential": True, "value": meta.issuer},
                                         aud={"essential": True, "value": self.gateway.resource_uri(tenant)},
                                         exp={"essential": True}, sub={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise LoginError(f"the access token is not valid here ({exc.error})") from None
        if claims.get("tenant") not in (None, tenant):
            raise LoginError("the access token is for another workspace")
        return claims

    async def _keyset(self, meta: IssuerMetadata, *, refresh: bool = False) -> KeySet:
        hit = self._jwks.get(meta.jwks_uri)
        if hit is not None and not refresh and time.monotonic() - hit[0] < METADATA_TTL_S:
            return hit[1]
        doc = await self._get_json(meta.jwks_uri)
        try:
            keys = KeySet.import_key_set(doc)
        except (JoseError, ValueError, TypeError, KeyError):
            raise LoginError("the authorization server's key set is malformed") from None
        self._jwks[meta.jwks_uri] = (time.monotonic(), keys)
        return keys

    # -- refresh and revocation

    async def refresh(self, tenant: str, refresh_token: str) -> TokenSet:
        meta = await self.metadata(tenant)
        try:
            async with self._client() as client:
                token = await client.refresh_token(meta.token_endpoint, refresh_token=refresh_token,
                                                   resource=self.gateway.resource_uri(tenant))
        except Exception as exc:
            raise LoginError(f"the access token could not be refreshed: {_describe(exc)}") from None
        return _token_set(token)

    async def revoke(self, tenant: str, tokens: TokenSet) -> None:
        """Revoke the refresh token (ending the grant) and the access token; failures are logged only."""
        try:
            meta = await self.metadata(tenant)
        except LoginError as exc:
            log.info("tokens not revoked: %s", exc)
            return
        if meta.revocation_endpoint is None:
            return
        async with self._client() as client:
            for value, hint in ((tokens.refresh_token, "refresh_token"), (tokens.access_token, "access_token")):
                if not value:
                    continue
                try:
                    await client.revoke_token(meta.revocation_endpoint, token=value, token_type_hint=hint)
                except Exception as exc:
                    log.info("revoking the %s failed: %s", hint, _describe(exc))


def _token_set(token: Mapping[str, Any]) -> TokenSet:
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise LoginError("the token response carries no access token")
    expires_at = token.get("expires_at")
    if not isinstance(expires_at, int | float):
        expires_in = token.get("expires_in")
        expires_at = time.time() + (float(expires_in) if isinstance(expires_in, int | float) else 300.0)
    refresh = token.get("refresh_token")
    scope = token.get("scope")
    return TokenSet(access, datetime.fromtimestamp(float(expires_at), UTC),
                    refresh if isinstance(refresh, str) and refresh else None,
                    scope if isinstance(scope, str) else "")


def _describe(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    description = getattr(exc, "description", None)
    if error:
        return f"{error}{': ' + str(description)[:300] if description else ''}"
    return type(exc).__name__


class TokenSource:
    """The current access token of one signed-in browser session, refreshed before it expires.

    Called by :class:`~kontor.host.mcp_session.McpSession` before every request to the gateway.
    Refreshes are serialised per session (``locks``: shared by all sources of the process).
    """

    locks: dict[str, asyncio.Lock] = {}

    def __init__(self, oauth: GatewayOAuth, session_id: str, tenant: str) -> None:
        self.oauth = oauth
        self.session_id = session_id
        self.tenant = tenant

    def _lock(self) -> asyncio.Lock:
        lock = self.locks.get(self.session_id)
        if lock is None:
            if len(self.locks) > 10_000:
                for key in [k for k, v in self.locks.items() if not v.locked()][:5_000]:
                    self.locks.pop(key, None)
            lock = self.locks[self.session_id] = asyncio.Lock()
        return lock

    async def __call__(self) -> str:
        return await self.current()

    async def current(self, *, force_refresh: bool = False) -> str:
        store = self.oauth.store
        try:
            record = await store.get_tokens(self.session_id)
        except TokensUnavailable as exc:
            raise LoginError("your sign-in cannot be read any more; please sign in again") from exc
        if record is None:
            raise LoginError("your session has ended; please sign in again")
        if not force_refresh and not _expiring(record.tokens):
            return record.tokens.access_token
        async with self._lock():
            record = await store.get_tokens(self.session_id)  # another request may have refreshed meanwhile
            if record is None:
                raise LoginError("your session has ended; please sign in again")
            if not _expiring(record.tokens) and not force_refresh:
                return record.tokens.access_token
            if not record.tokens.refresh_token:
                if _expiring(record.tokens, margin_s=0):
                    raise LoginError("your sign-in has expired; please sign in again")
                return record.tokens.access_token
            fresh = await self.oauth.refresh(self.tenant, record.tokens.refresh_token)
            await store.update_tokens(self.session_id, fresh)
            return fresh.access_token


def _expiring(tokens: TokenSet, margin_s: float = REFRESH_MARGIN_S) -> bool:
    return tokens.expires_at.timestamp() - time.time() <= margin_s


def new_browser_binding() -> str:
    return secrets.token_urlsafe(32)
