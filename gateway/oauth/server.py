"""authlib's generic OAuth 2 server, bound to one tenant and to Starlette.

authlib is synchronous; the gateway's database is async. Each OAuth operation therefore runs
authlib in a worker thread (:class:`ThreadBridge`), and the hooks authlib calls (look up a
client, store a code, consume a refresh token …) hop back onto the event loop with
:func:`anyio.from_thread.run`. A :class:`TenantAuthorizationServer` is built per request: it
is cheap, and it carries the tenant, its issuer and its enabled servers.

What authlib does here: request parsing and validation of the authorization and token
endpoints, client authentication (``none``, ``client_secret_basic``, ``client_secret_post``),
the authorization-code and refresh-token grants, PKCE (RFC 7636, restricted to ``S256`` and
required), dynamic registration (RFC 7591), revocation (RFC 7009) and the RFC 9207 ``iss``
parameter. What is added: RFC 8707 ``resource`` checks, single-use codes whose replay
revokes the grant, refresh-token rotation with family revocation, and the adapter classes.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import anyio
import anyio.from_thread
import anyio.to_thread
from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    InvalidRequestError,
    InvalidScopeError,
    JsonPayload,
    JsonRequest,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientMetadataClaims, ClientRegistrationEndpoint
from authlib.oauth2.rfc7591.errors import InvalidClientMetadataError, InvalidRedirectURIError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from authlib.oauth2.rfc9207 import IssuerParameter

from kontor.gateway.config import GatewaySettings
from kontor.gateway.keys import KeyStore
from kontor.gateway.oauth.clients import (
    MAX_CLIENT_NAME,
    MAX_REDIRECT_URIS,
    ClientResolver,
    OAuthClient,
    redirect_uri_problem,
    scope_problem,
)
from kontor.gateway.oauth.store import ClientRecord, CodeRecord, IssuedTokens, OAuthStore, RefreshRecord, secret_hash
from kontor.gateway.oauth.tokens import AccessTokenGenerator, DecodedAccessToken, Principal, decode_access_token

log = logging.getLogger(__name__)

__all__ = [
    "AuthlibResponse",
    "InvalidTargetError",
    "KontorJsonRequest",
    "KontorOAuth2Request",
    "ParamError",
    "TenantAuthorizationServer",
    "TenantContext",
    "ThreadBridge",
    "parse_params",
]

T = TypeVar("T")

MAX_PARAMS = 50
MAX_PARAM_CHARS = 4096
MAX_QUERY_BYTES = 16 * 1024


class _DropTokenRecords(logging.Filter):
    """authlib logs issued tokens at debug level ("Issue token …"); tokens are never logged here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Issue token")


for _name in ("authlib.oauth2.rfc6749.grants.authorization_code", "authlib.oauth2.rfc6749.grants.refresh_token"):
    logging.getLogger(_name).addFilter(_DropTokenRecords())


class InvalidTargetError(OAuth2Error):
    """RFC 8707: the requested resource is invalid, unknown or malformed."""

    error = "invalid_target"


# --- parameters -------------------------------------------------------------------------------


class ParamError(ValueError):
    """Parameters over the limits or malformed; the message is safe to show."""


def parse_params(raw: str | bytes, *, secret_fields: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` pairs, with limits on count and length.

    Values may not contain control characters (except in ``secret_fields``, e.g. a password).
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ParamError("parameters must be percent-encoded ASCII") from None
    if len(raw) > MAX_QUERY_BYTES:
        raise ParamError("too many parameter bytes")
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, max_num_fields=MAX_PARAMS, encoding="utf-8", errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise ParamError("malformed or too many parameters") from None
    for key, value in pairs:
        if len(key) > 64 or len(value) > MAX_PARAM_CHARS:
            raise ParamError(f"parameter {key[:64]!r} too long")
        if any(ord(c) < 0x20 or c == "\x7f" for c in key) or (
                key not in secret_fields and any(ord(c) < 0x20 or c == "\x7f" for c in value)):
            raise ParamError("control characters in parameters")
    return pairs


class _Payload(OAuth2Payload):
    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            datalist[key].append(value)
        self._datalist = datalist
        self._data = {key: values[0] for key, values in datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class KontorOAuth2Request(OAuth2Request):
    """An authlib request built from an already read (and size-checked) Starlette request.

    ``uri`` is built from the settings, never from the ``Host`` header. OAuth parameters come
    from the query (authorization endpoint) or from the form body (token, revocation).
    """

    def __init__(self, method: str, uri: str, headers: Mapping[str, str], *, query: Sequence[tuple[str, str]] = (),
                 form: Sequence[tuple[str, str]] = (), params_from: str = "query", allow_http: bool = False) -> None:
        # authlib refuses plain-http URIs except on loopback; dev mode serves http elsewhere too.
        checked = "https://" + uri.removeprefix("http://") if allow_http and uri.startswith("http://") else uri
        super().__init__(method, checked, headers=headers)
        self.uri = uri
        self._args = {k: v for k, v in reversed(query)}
        self._form = {k: v for k, v in reversed(form)}
        self.payload = _Payload(query if params_from == "query" else form)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _JsonPayload(JsonPayload):
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        return self._data


class KontorJsonRequest(JsonRequest):
    def __init__(self, method: str, uri: str, headers: Mapping[str, str], data: dict[str, Any]) -> None:
        super().__init__(method, uri, headers)
        self.payload = _JsonPayload(data)


@dataclass
class AuthlibResponse:
    """authlib's ``(status, body, headers)``; ``location`` is what the RFC 9207 extension edits."""

    status: int
    body: Any
    headers: list[tuple[str, str]]

    @property
    def location(self) -> str | None:
        for key, value in self.headers:
            if key.lower() == "location":
                return value
        return None

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"] + [("Location", value)]


# --- threads ----------------------------------------------------------------------------------


class ThreadBridge:
    """Runs authlib (sync) in worker threads of its own limiter; hooks call back into the loop."""

    def __init__(self, max_threads: int = 16) -> None:
        self.max_threads = max_threads
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_threads)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    @staticmethod
    def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """From a worker thread: run the coroutine function on the event loop and wait for it."""
        return anyio.from_thread.run(fn, *args)


# --- per-request context ------------------------------------------------------------------------


@dataclass
class TenantContext:
    settings: GatewaySettings
    store: OAuthStore
    clients: ClientResolver
    keystore: KeyStore
    tenant: str
    installations: list[tuple[str, dict[str, Any]]]
    scopes_supported: list[str]
    load_principal: Callable[[uuid.UUID, str], Awaitable[Principal | None]]
    #: scopes the user approved on the consent page (set before the code is issued)
    granted: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return self.settings.issuer(self.tenant)

    @property
    def resource(self) -> str:
        return self.settings.resource_uri(self.tenant)

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata of the tenant's issuer."""
        issuer = self.issuer
        methods = ["none", "client_secret_basic", "client_secret_post"]
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/oauth/authorize",
            "token_endpoint": f"{issuer}/oauth/token",
            "registration_endpoint": f"{issuer}/oauth/register",
            "revocation_endpoint": f"{issuer}/oauth/revoke",
            "jwks_uri": f"{issuer}/oauth/jwks",
            "scopes_supported": list(self.scopes_supported),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": methods,
            "revocation_endpoint_auth_methods_supported": methods,
            "authorization_response_iss_parameter_supported": True,
            "client_id_metadata_document_supported": True,
        }


def _call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return ThreadBridge.call(fn, *args)


# --- grants and extensions --------------------------------------------------------------------


_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


class S256CodeChallenge(CodeChallenge):
    """PKCE required for every client, ``S256`` only (no default to ``plain``)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}

    def validate_code_challenge(self, grant: grants.AuthorizationCodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE 'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


def _check_resource(payload: OAuth2Payload, expected: str) -> str | None:
    values = payload.datalist.get("resource", [])
    if len(values) > 1:
        raise InvalidTargetError("only one 'resource' is supported")
    if values and values[0] != expected:
        raise InvalidTargetError("unknown 'resource': use this tenant's MCP endpoint")
    return values[0] if values else None


class ResourceIndicator:
    """RFC 8707 at the authorization endpoint: ``resource``, if given, must be the tenant's MCP URI."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def __call__(self, grant: grants.AuthorizationCodeGrant) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: grants.AuthorizationCodeGrant, result: Any) -> None:
        _check_resource(grant.request.payload, self.expected)


class TenantIssuer(IssuerParameter):
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


@dataclass(frozen=True)
class _Code(AuthorizationCodeMixin):
    record: CodeRecord
    code_challenge: str
    code_challenge_method: str

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return " ".join(self.record.scope)


@dataclass(frozen=True)
class _Refresh(TokenMixin):
    record: RefreshRecord

    def check_client(self, client: Any) -> bool:
        return self.record.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return " ".join(self.record.scope)


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS
    server: TenantAuthorizationServer

    def validate_token_request(self) -> None:
        _check_resource(self.request.payload, self.server.ctx.resource)
        super().validate_token_request()

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        ctx = self.server.ctx
        data = request.payload.data
        principal: Principal = request.user
        record = CodeRecord(
            code_hash=secret_hash(code), tenant=ctx.tenant, client_id=request.client.get_client_id(),
            user_id=principal.user.id, email=principal.user.email, redirect_uri=request.payload.redirect_uri,
            scope=tuple(ctx.granted), resource=data.get("resource"), code_challenge=data["code_challenge"],
            code_challenge_method=data.get("code_challenge_method", "S256"), family_id=uuid.uuid4(),
            expires_at=ctx.store.now() + timedelta(seconds=ctx.settings.auth_code_ttl_s))
        _call(ctx.store.save_code, code, record)

    def query_authorization_code(self, code: str, client: OAuthClient) -> _Code | None:
        if not isinstance(code, str) or not code or len(code) > 256:
            return None
        ctx = self.server.ctx
        record = _call(ctx.store.consume_code, ctx.tenant, code, client.get_client_id())
        if record is None:
            return None
        return _Code(record, record.code_challenge, record.code_challenge_method)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        """Nothing to do: the code was marked used (atomically) when it was presented."""

    def authenticate_user(self, authorization_code: _Code) -> Principal | None:
        record = authorization_code.record
        return _call(self.server.ctx.load_principal, record.user_id, record.email)


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation
    server: TenantAuthorizationServer

    def validate_token_request(self) -> None:
        _check_resource(self.request.payload, self.server.ctx.resource)
        super().validate_token_request()

    def authenticate_refresh_token(self, refresh_token: str) -> _Refresh | None:
        if not isinstance(refresh_token, str) or not refresh_token or len(refresh_token) > 256:
            return None
        ctx = self.server.ctx
        record = _call(ctx.store.consume_refresh, ctx.tenant, refresh_token, self.request.client.get_client_id())
        return _Refresh(record) if record is not None else None

    def authenticate_user(self, refresh_token: _Refresh) -> Principal | None:
        record = refresh_token.record
        return _call(self.server.ctx.load_principal, record.user_id, record.email)

    def revoke_old_credential(self, refresh_token: _Refresh) -> None:
        """Nothing to do: the old refresh token was marked used (atomically) when it was presented."""


# --- endpoints --------------------------------------------------------------------------------


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = _AUTH_METHODS
    server: TenantAuthorizationServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Refresh | DecodedAccessToken | None:
        ctx = self.server.ctx
        if not isinstance(token_string, str) or not token_string or len(token_string) > 8192:
            return None
        if token_string.count(".") == 2:
            decoded = decode_access_token(ctx.keystore, token_string, ctx.issuer)
            if decoded is not None:
                return decoded
        if len(token_string) <= 256:
            record = _call(ctx.store.find_refresh, ctx.tenant, token_string)
            if record is not None:
                return _Refresh(record)
        return None

    def revoke_token(self, token: _Refresh | DecodedAccessToken, request: OAuth2Request) -> None:
        ctx = self.server.ctx
        if isinstance(token, _Refresh):
            # RFC 7009 2.1: revoking a refresh token also ends the access tokens of the same grant.
            _call(ctx.store.revoke_family, ctx.tenant, token.record.family_id)
        else:
            expires_at = datetime.fromtimestamp(token.expires_at, UTC)
            if expires_at > ctx.store.now():
                _call(ctx.store.revoke_jti, ctx.tenant, token.jti, expires_at)


class KontorClientMetadataClaims(ClientMetadataClaims):
    """RFC 7591 metadata with the gateway's rules for redirect URIs, names and scopes."""

    def validate_redirect_uris(self) -> None:
        uris = self.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise InvalidRedirectURIError(f"redirect_uris must list 1-{MAX_REDIRECT_URIS} redirect URIs")
        for uri in uris:
            problem = redirect_uri_problem(uri)
            if problem is not None:
                raise InvalidRedirectURIError(problem)

    def validate_client_name(self) -> None:
        name = self.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_CLIENT_NAME):
            raise InvalidClientMetadataError(f"client_name must be a string of at most {MAX_CLIENT_NAME} characters")

    def validate_scope(self) -> None:
        problem = scope_problem(self.get("scope"))
        if problem is not None:
            raise InvalidClientMetadataError(problem)

    def validate_grant_types(self) -> None:
        value = self.get("grant_types")
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise InvalidClientMetadataError("grant_types must be a list of strings")

    def validate_response_types(self) -> None:
        value = self.get("response_types")
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise InvalidClientMetadataError("response_types must be a list of strings")


class Registration(ClientRegistrationEndpoint):
    """Open dynamic registration (MCP clients register themselves); clients belong to the tenant."""

    server: TenantAuthorizationServer

    def authenticate_token(self, request: JsonRequest) -> bool:
        return True

    def get_server_metadata(self) -> dict[str, Any]:
        metadata = self.server.ctx.metadata()
        # Scopes are granted by role at consent; a client may register any well-formed scope.
        metadata.pop("scopes_supported", None)
        return metadata

    def _auth_method(self, request: JsonRequest) -> str:
        method = request.payload.data.get("token_endpoint_auth_method") or "client_secret_basic"
        return method if isinstance(method, str) else "client_secret_basic"

    def generate_client_id(self, request: JsonRequest) -> str:
        return secrets.token_urlsafe(24)

    def generate_client_secret(self, request: JsonRequest) -> str | None:
        return None if self._auth_method(request) == "none" else secrets.token_urlsafe(32)

    def create_registration_response(self, request: JsonRequest) -> tuple[int, dict[str, Any], list]:
        status, body, headers = super().create_registration_response(request)
        if body.get("client_secret") is None:
            body.pop("client_secret", None)
            body.pop("client_secret_expires_at", None)
        body.setdefault("grant_types", ["authorization_code"])
        body.setdefault("response_types", ["code"])
        return status, body, headers

    def save_client(self, client_info: dict[str, Any], client_metadata: dict[str, Any],
                    request: JsonRequest) -> ClientRecord:
        ctx = self.server.ctx
        secret = client_info.get("client_secret")
        record = ClientRecord(
            client_id=client_info["client_id"],
            redirect_uris=tuple(client_metadata["redirect_uris"]),
            grant_types=tuple(client_metadata.get("grant_types") or ["authorization_code"]),
            response_types=tuple(client_metadata.get("response_types") or ["code"]),
            token_endpoint_auth_method=client_metadata["token_endpoint_auth_method"],
            client_name=client_metadata.get("client_name"),
            scope=client_metadata.get("scope"),
            client_secret_hash=secret_hash(secret) if secret else None,
        )
        _call(ctx.store.add_client, ctx.tenant, record, dict(client_metadata))
        return record


# --- the server -------------------------------------------------------------------------------


class TenantAuthorizationServer(AuthorizationServer):
    """authlib's AuthorizationServer for one tenant's issuer, built per request."""

    def __init__(self, ctx: TenantContext) -> None:
        super().__init__(scopes_supported=ctx.scopes_supported)
        self.ctx = ctx
        self.generator = AccessTokenGenerator(
            ctx.keystore, issuer=ctx.issuer, audience=ctx.resource, tenant=ctx.tenant,
            ttl_s=ctx.settings.access_token_ttl_s, installations=ctx.installations)
        self.issuer_parameter = TenantIssuer(ctx.issuer)
        self.register_token_generator("default", self.generator)
        self.register_grant(CodeGrant, [S256CodeChallenge(required=True), ResourceIndicator(ctx.resource)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Revocation(self))
        self.register_endpoint(Registration(self, claims_classes=[KontorClientMetadataClaims]))
        self.register_extension(self.issuer_parameter)

    # authlib hooks

    def query_client(self, client_id: str) -> OAuthClient | None:
        if not isinstance(client_id, str) or not client_id or len(client_id) > 2048:
            return None
        return _call(self.ctx.clients.get, self.ctx.tenant, client_id)

    def validate_requested_scope(self, scope: str | None) -> None:
        # Unknown scopes are not an error: the token carries what the user's role allows of them.
        if scope_problem(scope) is not None:
            raise InvalidScopeError()

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        ctx = self.ctx
        jti, exp = self.generator.issued[-1]
        grant_record: CodeRecord | RefreshRecord
        if request.authorization_code is not None:
            grant_record = request.authorization_code.record
            code_hash: str | None = grant_record.code_hash
        else:
            grant_record = request.refresh_token.record
            code_hash = None
        refresh = token.get("refresh_token")
        now = ctx.store.now()
        _call(ctx.store.record_issued, IssuedTokens(
            tenant=ctx.tenant, family_id=grant_record.family_id, client_id=request.client.get_client_id(),
            user_id=grant_record.user_id, email=grant_record.email, scope=grant_record.scope,
            resource=grant_record.resource, access_jti=jti, access_expires_at=datetime.fromtimestamp(exp, UTC),
            refresh_token=refresh,
            refresh_expires_at=now + timedelta(seconds=ctx.settings.refresh_token_ttl_s) if refresh else None,
            code_hash=code_hash))

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request  # already adapted by the Starlette handler

    def create_json_request(self, request: JsonRequest) -> JsonRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> AuthlibResponse:
        return AuthlibResponse(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    # helpers for the Starlette handlers

    def error_redirect(self, request: OAuth2Request, error: OAuth2Error) -> AuthlibResponse:
        """An authorization error response sent to the (validated) redirect URI, with ``state`` and ``iss``."""
        if error.state is None:
            error.state = request.payload.state
        response = self.handle_error_response(request, error)
        self.issuer_parameter.add_issuer_parameter(self, response)
        return response

    def redirect_with_error(self, redirect_uri: str, request: OAuth2Request, error: str,
                            description: str) -> AuthlibResponse:
        params = [("error", error), ("error_description", description)]
        if request.payload.state:
            params.append(("state", request.payload.state))
        response = AuthlibResponse(302, "", [("Location", add_params_to_uri(redirect_uri, params))])
        self.issuer_parameter.add_issuer_parameter(self, response)
        return response
