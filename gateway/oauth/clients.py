"""OAuth clients: the authlib client model, redirect-URI rules, and client ID metadata documents.

A client is known in one of two ways:

* **Dynamic registration** (RFC 7591): stored per tenant in ``oauth_clients``.
* **Client ID Metadata Document** (draft-ietf-oauth-client-id-metadata-document): the
  ``client_id`` is an ``https`` URL; the document there is fetched through the SSRF-safe
  :class:`~kontor.gateway.safehttp.SafeHttpClient` (no redirects, size-limited), must name
  that very URL as its ``client_id``, and is cached briefly. In dev mode an ``http`` URL on
  a loopback host is accepted too.

Redirect URIs must be ``https``, or ``http`` on a loopback host (``127.0.0.1``,
``localhost``, ``[::1]``, any port), without a fragment or userinfo. A redirect URI in an
authorization request must equal a registered one character for character.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin

from kontor.gateway.config import GatewaySettings
from kontor.gateway.oauth.store import ClientRecord, OAuthStore, secret_hash
from kontor.gateway.safehttp import FetchFailed, SafeHttpClient, UnsafeUrl, address_refusal

log = logging.getLogger(__name__)

__all__ = [
    "ClientResolver",
    "OAuthClient",
    "default_http_client",
    "redirect_uri_problem",
    "scope_problem",
]

MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2048
MAX_CLIENT_NAME = 200
MAX_SCOPE_LENGTH = 4096
MAX_METADATA_DOCUMENT_BYTES = 64 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SUPPORTED_GRANT_TYPES = ("authorization_code", "refresh_token")
SUPPORTED_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 scope-token, bounded
_CONTROL = re.compile(r"[\x00-\x20\x7f\\]")


def redirect_uri_problem(uri: Any) -> str | None:
    """Why ``uri`` cannot be registered as a redirect URI, or None when it can."""
    if not isinstance(uri, str) or not uri:
        return "a redirect URI must be a non-empty string"
    if len(uri) > MAX_URI_LENGTH:
        return f"a redirect URI may have at most {MAX_URI_LENGTH} characters"
    if _CONTROL.search(uri) or not uri.isascii():
        return "a redirect URI must be ASCII without spaces, control characters or backslashes"
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "a redirect URI must be a valid URL"
    if parts.fragment or "#" in uri:
        return "a redirect URI must not contain a fragment"
    if parts.username is not None or parts.password is not None:
        return "a redirect URI must not contain userinfo"
    if not host:
        return "a redirect URI must have a host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return None
    return "a redirect URI must use https, or http on a loopback host (127.0.0.1, localhost, [::1])"


def scope_problem(scope: Any) -> str | None:
    """Why ``scope`` (a space-separated string) is malformed, or None."""
    if scope is None:
        return None
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH:
        return "scope must be a string of at most 4096 characters"
    if any(not _SCOPE_TOKEN.fullmatch(s) for s in scope.split(" ") if s):
        return "scope contains an invalid scope token"
    return None


class OAuthClient(ClientMixin):
    """authlib's view of a client (registered or metadata-document)."""

    def __init__(self, record: ClientRecord) -> None:
        self.record = record

    def __repr__(self) -> str:  # authlib logs clients at debug level: the id only, never the secret hash
        return f"OAuthClient({self.record.client_id!r})"

    @property
    def client_id(self) -> str:
        return self.record.client_id

    @property
    def client_name(self) -> str | None:
        return self.record.client_name

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # redirect_uri is required in every authorization request

    def get_allowed_scope(self, scope: str | None) -> str:
        # The scopes a token gets are decided by the user's role at consent (see scopes.grant);
        # here the request's scope only has to be well-formed.
        return " ".join(s for s in (scope or "").split(" ") if s)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record.redirect_uris  # exact string comparison

    def check_client_secret(self, client_secret: str) -> bool:
        stored = self.record.client_secret_hash
        if stored is None or not isinstance(client_secret, str):
            return False
        return hmac.compare_digest(stored, secret_hash(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.record.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.record.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


def _loopback_only(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address.is_loopback or address_refusal(address) is None:
        return None
    return "dev mode allows loopback, not other private addresses"


def default_http_client(settings: GatewaySettings) -> SafeHttpClient:
    """The fetcher for metadata documents: https only and public addresses; in dev mode also
    http and loopback addresses (but no other private ones). Redirects are not followed."""
    common: dict[str, Any] = {"max_bytes": MAX_METADATA_DOCUMENT_BYTES, "timeout_s": settings.discovery_timeout_s,
                              "max_redirects": 0}
    if settings.dev_mode:
        return SafeHttpClient(allow_http=True, allow_private=True, policy=_loopback_only, **common)
    return SafeHttpClient(**common)


def _strings(value: Any, default: Sequence[str]) -> tuple[str, ...] | None:
    if value is None:
        return tuple(default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


class ClientResolver:
    """Finds the client for a ``client_id``: registered in the tenant, or a metadata document URL."""

    def __init__(
        self,
        store: OAuthStore,
        settings: GatewaySettings,
        http: SafeHttpClient,
        *,
        cache_ttl_s: float = 300.0,
        failure_ttl_s: float = 10.0,
        max_cached: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.http = http
        self.cache_ttl_s = cache_ttl_s
        self.failure_ttl_s = failure_ttl_s
        self.max_cached = max_cached
        self._clock = clock
        self._cache: OrderedDict[str, tuple[OAuthClient | None, float]] = OrderedDict()
        #: documents fetched (tests and metrics)
        self.fetches = 0

    def is_metadata_url(self, client_id: str) -> bool:
        return client_id.startswith("https://") or (self.settings.dev_mode and client_id.startswith("http://"))

    async def get(self, tenant: str, client_id: str) -> OAuthClient | None:
        if not isinstance(client_id, str) or not client_id:
            return None
        if self.is_metadata_url(client_id):
            return await self._metadata_client(client_id)
        record = await self.store.get_client(tenant, client_id)
        return OAuthClient(record) if record is not None else None

    # -- client ID metadata documents -------------------------------------------------------

    def metadata_url_problem(self, url: str) -> str | None:
        if len(url) > MAX_URI_LENGTH or _CONTROL.search(url) or not url.isascii():
            return "client_id URL too long or with invalid characters"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            return "client_id is not a valid URL"
        if parts.scheme == "http" and not (self.settings.dev_mode and parts.hostname in LOOPBACK_HOSTS):
            return "an http client_id URL is allowed only on loopback in dev mode"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "client_id URL must be https with a host"
        if parts.username is not None or parts.password is not None or parts.fragment or "#" in url:
            return "client_id URL must not contain userinfo or a fragment"
        if not parts.path or parts.path == "/":
            return "client_id URL must have a path"
        if any(segment in (".", "..") for segment in parts.path.split("/")):
            return "client_id URL must not contain dot segments"
        return None

    async def _metadata_client(self, url: str) -> OAuthClient | None:
        now = self._clock()
        hit = self._cache.get(url)
        if hit is not None and now < hit[1]:
            self._cache.move_to_end(url)
            return hit[0]
        client = await self._fetch(url)
        ttl = self.cache_ttl_s if client is not None else self.failure_ttl_s
        self._cache[url] = (client, self._clock() + ttl)
        self._cache.move_to_end(url)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return client

    async def _fetch(self, url: str) -> OAuthClient | None:
        problem = self.metadata_url_problem(url)
        if problem is not None:
            log.info("refused client metadata URL %s: %s", url[:200], problem)
            return None
        self.fetches += 1
        try:
            response = await self.http.get(url, headers={"accept": "application/json"})
        except (UnsafeUrl, FetchFailed) as exc:
            log.info("client metadata document %s not fetched: %s", url, exc.reason)
            return None
        if response.status != 200 or response.url != url:
            log.info("client metadata document %s: HTTP %s (redirects are not followed)", url, response.status)
            return None
        if len(response.content) > MAX_METADATA_DOCUMENT_BYTES:
            log.info("client metadata document %s is larger than %d bytes", url, MAX_METADATA_DOCUMENT_BYTES)
            return None
        try:
            document = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            log.info("client metadata document %s is not JSON", url)
            return None
        record = self.record_from_document(url, document)
        return OAuthClient(record) if record is not None else None

    def record_from_document(self, url: str, document: Any) -> ClientRecord | None:
        """The client a metadata document describes, or None (logged) when it is not acceptable."""

        def refuse(why: str) -> None:
            log.info("client metadata document %s refused: %s", url, why)

        if not isinstance(document, dict):
            return refuse("not a JSON object")
        if document.get("client_id") != url:
            return refuse("its client_id is not the URL it was fetched from")
        if "client_secret" in document or "client_secret_expires_at" in document:
            return refuse("it contains a client secret")
        method = document.get("token_endpoint_auth_method", "none")
        if method != "none":
            return refuse("token_endpoint_auth_method must be 'none'")
        uris = document.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            return refuse(f"redirect_uris must list 1-{MAX_REDIRECT_URIS} URIs")
        for uri in uris:
            problem = redirect_uri_problem(uri)
            if problem is not None:
                return refuse(problem)
        grant_types = _strings(document.get("grant_types"), ["authorization_code"])
        if grant_types is None or not set(grant_types) <= set(SUPPORTED_GRANT_TYPES):
            return refuse("unsupported grant_types")
        response_types = _strings(document.get("response_types"), ["code"])
        if response_types is None or set(response_types) != {"code"}:
            return refuse("response_types must be ['code']")
        name = document.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_CLIENT_NAME):
            return refuse(f"client_name must be a string of at most {MAX_CLIENT_NAME} characters")
        scope = document.get("scope")
        if scope_problem(scope) is not None:
            return refuse("malformed scope")
        return ClientRecord(client_id=url, redirect_uris=tuple(uris), grant_types=grant_types,
                            response_types=response_types, token_endpoint_auth_method="none",
                            client_name=name or None, scope=scope, metadata_document=True)
