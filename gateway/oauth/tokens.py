"""Access tokens of the built-in authorization server: RFC 9068 JWTs signed ES256.

authlib's :class:`~authlib.oauth2.rfc6750.BearerTokenGenerator` assembles the token response
(``token_type``, ``expires_in``, ``scope``, the opaque refresh token); the JWT itself is made
here so that its claims are exactly the gateway's:

``iss`` (the tenant's issuer), ``sub`` (the user's id), ``aud`` (the tenant's MCP resource
URI), ``exp``/``iat``/``nbf``, ``jti``, ``client_id``, ``scope`` (space-separated),
``tenant``, ``roles`` (``[role]``) and ``email``; header ``typ: at+jwt`` and the ``kid`` of
the signing key. Scopes are always intersected with what the user's role allows *now*, so a
refresh after a demotion yields fewer scopes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import InvalidScopeError
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from kontor.gateway.db import User
from kontor.gateway.keys import ALGORITHM, KeyStore
from kontor.gateway.scopes import role_scopes
from kontor.gateway.tokens import TOKEN_TYPE

__all__ = ["AccessTokenGenerator", "DecodedAccessToken", "Principal", "decode_access_token"]


@dataclass(frozen=True)
class Principal:
    """The signed-in user as authlib sees it (``get_user_id``)."""

    user: User

    def get_user_id(self) -> str:
        return str(self.user.id)


@dataclass(frozen=True)
class DecodedAccessToken:
    jti: str
    client_id: str | None
    expires_at: int

    def check_client(self, client: Any) -> bool:
        return self.client_id == client.get_client_id()


class AccessTokenGenerator(BearerTokenGenerator):
    """One tenant's access tokens. ``installations`` are ``(server, config)`` of its enabled servers."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        issuer: str,
        audience: str,
        tenant: str,
        ttl_s: int,
        installations: Iterable[tuple[str, Mapping[str, Any]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(self._access_token, self._refresh_token, ttl_s)
        self.keystore = keystore
        self.issuer = issuer
        self.audience = audience
        self.tenant = tenant
        self.ttl_s = ttl_s
        self.installations = list(installations)
        self._clock = clock
        #: (jti, exp) of the access tokens made by this generator, in order
        self.issued: list[tuple[str, int]] = []

    def allowed_scopes(self, user: User) -> set[str]:
        return role_scopes(user.role.value, self.installations)

    def generate(self, grant_type: str, client: Any, user: Principal | None = None, scope: str | None = None,
                 expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        if user is None:
            raise InvalidScopeError("tokens are only issued for a user")
        # Explicit intersection: an empty request here means "nothing", never "everything".
        wanted = set((scope or "").split())
        granted = sorted(wanted & self.allowed_scopes(user.user))
        if not granted:
            raise InvalidScopeError("none of the scopes of this grant is available to the user any more")
        return super().generate(grant_type, client, user, " ".join(granted), expires_in, include_refresh_token)

    def _refresh_token(self, **_: Any) -> str:
        return secrets.token_urlsafe(32)

    def _access_token(self, client: Any, grant_type: str, user: Principal, scope: str) -> str:
        now = int(self._clock())
        exp = now + self.ttl_s
        jti = secrets.token_urlsafe(16)
        claims = {
            "iss": self.issuer,
            "sub": user.get_user_id(),
            "aud": self.audience,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "jti": jti,
            "client_id": client.get_client_id(),
            "scope": scope,
            "tenant": self.tenant,
            "roles": [user.user.role.value],
            "email": user.user.email,
        }
        signing = self.keystore.current()
        header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": signing.kid}
        token = jwt.encode(header, claims, signing.key, algorithms=[ALGORITHM])
        self.issued.append((jti, exp))
        return token


def decode_access_token(keystore: KeyStore, token: str, issuer: str) -> DecodedAccessToken | None:
    """The ``jti``/``client_id``/``exp`` of one of our access tokens for ``issuer``, if the signature is ours.

    For revocation only: expiry is not checked here (the caller decides), the issuer is.
    """
    if not isinstance(token, str) or len(token) > 8192 or token.count(".") != 2:
        return None
    keys = KeySet([k.key for k in keystore.keys()])
    try:
        decoded = jwt.decode(token, keys, algorithms=[ALGORITHM])
    except (JoseError, ValueError, TypeError):
        return None
    claims = decoded.claims
    jti, exp, client_id = claims.get("jti"), claims.get("exp"), claims.get("client_id")
    if (decoded.header.get("typ") != TOKEN_TYPE or claims.get("iss") != issuer or not isinstance(jti, str)
            or not isinstance(exp, int) or isinstance(exp, bool) or len(jti) > 64):
        return None
    return DecodedAccessToken(jti=jti, client_id=client_id if isinstance(client_id, str) else None, expires_at=exp)
