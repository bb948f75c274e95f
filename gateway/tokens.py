"""Short-lived internal tokens the gateway mints for each upstream server.

The user's token never leaves the gateway. For an upstream call it mints a JWT for that
server's audience carrying the subject, the tenant, the granted scopes and an RFC 8693
actor claim (the gateway acting for the user), signed ES256 with the key store's active
key. Signing costs far more than a dictionary lookup, so a token is reused for the same
(audience, subject, tenant, scopes, actor, client, ttl) until only ``refresh_fraction`` of
its lifetime remains; the receiving server therefore sees the same ``jti`` on several calls
(it identifies the token, not the call).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from joserfc import jwt

from kontor.gateway.keys import ALGORITHM, KeyStore
from kontor.tenancy import validate_tenant

#: RFC 9068 media type of JWT access tokens; verifiers check it so no other JWT type can be replayed.
TOKEN_TYPE = "at+jwt"

_CacheKey = tuple[str, str, str, frozenset[str], str | None, str | None, int]


class TokenMinter:
    """Mints (and caches) internal access tokens signed by ``keystore``'s active key."""

    def __init__(
        self,
        keystore: KeyStore,
        issuer: str,
        *,
        refresh_fraction: float = 1 / 3,
        max_cached: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise ValueError("issuer must not be empty")
        if not 0 <= refresh_fraction < 1:
            raise ValueError("refresh_fraction must be in [0, 1)")
        self.keystore = keystore
        self.issuer = issuer
        self.refresh_fraction = refresh_fraction
        self.max_cached = max_cached
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (token, reuse-until); LRU order, most recently used last
        self._cache: OrderedDict[_CacheKey, tuple[str, float]] = OrderedDict()

    def mint(
        self,
        audience: str,
        subject: str,
        tenant: str,
        scopes: Iterable[str],
        actor: str | None = None,
        client_id: str | None = None,
        ttl_s: int = 60,
    ) -> str:
        """A JWT for ``audience``; a cached one while more than ``refresh_fraction`` of its life is left."""
        if isinstance(scopes, str):
            raise TypeError("scopes must be a list of scope strings, not one string")
        # Validation happens when signing; a hit means this exact scope set was validated then.
        key: _CacheKey = (audience, subject, tenant, frozenset(scopes), actor, client_id, ttl_s)
        now = self._clock()
        hit = self._cache.get(key)  # lock-free read: single dict operations are atomic
        if hit is not None and now < hit[1]:
            with contextlib.suppress(KeyError):  # evicted by another thread meanwhile: still valid
                self._cache.move_to_end(key)
            return hit[0]
        token, exp = self._sign(audience, subject, tenant, _normalise_scopes(key[3]), actor, client_id, ttl_s, now)
        reuse_until = exp - ttl_s * self.refresh_fraction
        with self._lock:
            self._cache[key] = (token, reuse_until)
            self._cache.move_to_end(key)
            if len(self._cache) > self.max_cached:
                self._evict(now)
        return token

    def mint_uncached(
        self,
        audience: str,
        subject: str,
        tenant: str,
        scopes: Iterable[str],
        actor: str | None = None,
        client_id: str | None = None,
        ttl_s: int = 60,
    ) -> str:
        """Always sign a fresh token (for benchmarks and one-off tokens)."""
        scope_list = _normalise_scopes(scopes)
        return self._sign(audience, subject, tenant, scope_list, actor, client_id, ttl_s, self._clock())[0]

    def clear(self) -> None:
        """Forget cached tokens (e.g. after an emergency rotation, so no older key is used again)."""
        with self._lock:
            self._cache.clear()

    def _sign(
        self,
        audience: str,
        subject: str,
        tenant: str,
        scopes: tuple[str, ...],
        actor: str | None,
        client_id: str | None,
        ttl_s: int,
        now: float,
    ) -> tuple[str, int]:
        if not audience or not isinstance(audience, str):
            raise ValueError("audience must be a non-empty string")
        if not subject or not isinstance(subject, str):
            raise ValueError("subject must be a non-empty string")
        validate_tenant(tenant)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 < ttl_s <= self.keystore.max_token_lifetime_s:
            raise ValueError(f"ttl_s must be an integer in 1..{self.keystore.max_token_lifetime_s}")
        signing_key = self.keystore.current()
        iat = int(now)
        exp = iat + ttl_s
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "tenant": tenant,
            "scope": " ".join(scopes),
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": secrets.token_urlsafe(16),
        }
        if actor is not None:
            claims["act"] = {"sub": actor}
        if client_id is not None:
            claims["client_id"] = client_id
        header = {"alg": ALGORITHM, "kid": signing_key.kid, "typ": TOKEN_TYPE}
        token = jwt.encode(header, claims, signing_key.key, algorithms=[ALGORITHM])
        return token, exp

    def _evict(self, now: float) -> None:
        for k in [k for k, (_, until) in self._cache.items() if until <= now]:
            del self._cache[k]
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)


def _normalise_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated scopes (the cache key and the ``scope`` claim)."""
    if isinstance(scopes, str):
        raise TypeError("scopes must be a list of scope strings, not one string")
    out = tuple(sorted(set(scopes)))
    for s in out:
        if not isinstance(s, str) or s.split() != [s]:  # empty or containing whitespace
            raise ValueError("each scope must be a non-empty string without whitespace")
    return out
