"""User-token verification rules: built-in issuer, external OIDC issuers with claim mapping, forgeries."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from kontor.gateway.config import GatewaySettings
from kontor.gateway.resource_server import TenantAuth, TokenRejected, UserTokenVerifier, protected_resource_metadata

SETTINGS = GatewaySettings(public_origin="https://kontor.example")
BUILTIN = ECKey.generate_key("P-256", parameters={"kid": "builtin"})
IDP = ECKey.generate_key("P-256", parameters={"kid": "idp"})
IDP_ISSUER = "https://idp.example/realms/acme"
OIDC = {"issuer": IDP_ISSUER, "jwks_uri": "https://idp.example/certs", "tenant_claim": "org",
        "roles_claim": "groups", "role_map": {"kontor-admins": "admin"}}


class FakeJwks:
    async def get_key(self, kid: str) -> Any:
        return IDP if kid == "idp" else None


def verifier(tenants: dict[str, TenantAuth], revoked: set[str] = frozenset()) -> UserTokenVerifier:  # type: ignore[assignment]
    async def tenant_auth(tenant: str) -> TenantAuth:
        return tenants.get(tenant, TenantAuth(exists=False))

    async def builtin(kid: str) -> Any:
        return BUILTIN if kid == "builtin" else None

    async def is_revoked(jti: str) -> bool:
        return jti in revoked

    v = UserTokenVerifier(SETTINGS, tenant_auth, builtin, is_revoked=is_revoked)
    v._jwks[OIDC["jwks_uri"]] = FakeJwks()  # type: ignore[assignment]
    return v


def sign(key: ECKey, **claims: Any) -> str:
    now = int(time.time())
    base = {"sub": "u1", "exp": now + 300, "iat": now, "aud": SETTINGS.resource_uri("acme")}
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, {**base, **claims}, key)


PLAIN = {"acme": TenantAuth(exists=True)}
FEDERATED = {"acme": TenantAuth(exists=True, oidc=OIDC, allowed_issuers=(IDP_ISSUER,))}


async def test_builtin_token_for_the_tenant_is_accepted() -> None:
    p = await verifier(PLAIN).verify(sign(BUILTIN, iss=SETTINGS.issuer("acme"), tenant="acme", scope="a:read",
                                          roles=["admin"]), "acme")
    assert (p.tenant, p.subject, p.scopes, p.role) == ("acme", "u1", frozenset({"a:read"}), "admin")


async def test_external_issuer_maps_tenant_and_roles() -> None:
    token = sign(IDP, iss=IDP_ISSUER, org="acme", groups=["kontor-admins"], scope="a:read a:write", azp="app")
    p = await verifier(FEDERATED).verify(token, "acme")
    assert p.issuer == IDP_ISSUER and p.role == "admin" and p.client_id == "app"


async def test_external_token_for_another_org_is_refused() -> None:
    with pytest.raises(TokenRejected, match="another tenant"):
        await verifier(FEDERATED).verify(sign(IDP, iss=IDP_ISSUER, org="globex"), "acme")


async def test_external_issuer_replaces_the_builtin_one() -> None:
    token = sign(BUILTIN, iss=SETTINGS.issuer("acme"), tenant="acme")
    with pytest.raises(TokenRejected, match="identity provider"):
        await verifier(FEDERATED).verify(token, "acme")
    meta = protected_resource_metadata(SETTINGS, "acme", [], external_issuer=IDP_ISSUER)
    assert meta["authorization_servers"] == [IDP_ISSUER]


async def test_token_signed_by_an_unknown_key_is_refused() -> None:
    rogue = ECKey.generate_key("P-256", parameters={"kid": "builtin"})  # same kid, other key
    with pytest.raises(TokenRejected, match="bad signature"):
        await verifier(PLAIN).verify(sign(rogue, iss=SETTINGS.issuer("acme"), tenant="acme"), "acme")


async def test_hmac_and_none_algorithms_are_refused() -> None:
    secret = OctKey.import_key(json.dumps(BUILTIN.as_dict(private=False)).encode())
    hs = jwt.encode({"alg": "HS256", "kid": "builtin", "typ": "at+jwt"},
                    {"iss": SETTINGS.issuer("acme"), "tenant": "acme", "sub": "x", "aud": SETTINGS.resource_uri("acme"),
                     "exp": int(time.time()) + 60}, secret, algorithms=["HS256"])
    with pytest.raises(TokenRejected, match="algorithm"):
        await verifier(PLAIN).verify(hs, "acme")
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"builtin"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps({"iss": SETTINGS.issuer("acme"), "tenant": "acme"}).encode())
    with pytest.raises(TokenRejected):
        await verifier(PLAIN).verify(f"{header}.{payload.rstrip(b'=').decode()}.", "acme")


async def test_revoked_token_is_refused_even_when_cached() -> None:
    revoked: set[str] = set()
    v = verifier(PLAIN, revoked)
    token = sign(BUILTIN, iss=SETTINGS.issuer("acme"), tenant="acme", jti="j1")
    await v.verify(token, "acme")
    revoked.add("j1")
    with pytest.raises(TokenRejected, match="revoked"):
        await v.verify(token, "acme")
    with pytest.raises(TokenRejected, match="revoked"):  # and on first sight
        await verifier(PLAIN, revoked).verify(token, "acme")


async def test_unknown_tenant_is_refused() -> None:
    with pytest.raises(TokenRejected, match="unknown tenant"):
        await verifier(PLAIN).verify(sign(BUILTIN, iss=SETTINGS.issuer("nope"), tenant="nope"), "nope")


async def test_non_finite_expiry_is_refused() -> None:
    token = sign(BUILTIN, iss=SETTINGS.issuer("acme"), tenant="acme", exp=float("nan"))  # would never expire
    with pytest.raises(TokenRejected):
        await verifier(PLAIN).verify(token, "acme")
