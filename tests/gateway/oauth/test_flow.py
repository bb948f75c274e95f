"""The happy path: register → sign in and consent → code → tokens → refresh, and the token's claims."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from kontor.gateway.oauth import AuthServer
from tests.gateway.oauth.conftest import (
    ADMIN,
    ISSUER,
    MEMBER,
    PASSWORD,
    REDIRECT,
    RESOURCE,
    TENANT,
    authorize_url,
    exchange,
    obtain_code,
    pkce,
    query,
    refresh,
    register,
)
from tests.gateway.oauth_browser import browser_authorize


async def test_register_authorize_token_refresh(client: httpx.AsyncClient, auth: AuthServer) -> None:
    registered = await register(client)
    assert "client_secret" not in registered  # a public client gets no secret
    assert registered["redirect_uris"] == [REDIRECT]
    grant = await obtain_code(client, registered["client_id"])

    response = await exchange(client, grant)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == auth.settings.access_token_ttl_s
    assert tokens["scope"] == "crm:read files:read files:write"  # a member may not write to crm
    assert tokens["refresh_token"]

    refreshed = await refresh(client, registered["client_id"], tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["refresh_token"] != tokens["refresh_token"]  # rotated
    assert second["access_token"] != tokens["access_token"]
    assert second["scope"] == tokens["scope"]

    narrower = await refresh(client, registered["client_id"], second["refresh_token"], scope="files:read")
    assert narrower.status_code == 200, narrower.text
    assert narrower.json()["scope"] == "files:read"


async def test_access_token_claims_verify_against_jwks(client: httpx.AsyncClient, auth: AuthServer) -> None:
    registered = await register(client)
    grant = await obtain_code(client, registered["client_id"], email=ADMIN, scope="crm:write files:read other:read")
    tokens = (await exchange(client, grant)).json()

    keys = KeySet.import_key_set(auth.jwks())
    assert all("d" not in k for k in auth.jwks()["keys"])
    decoded = jwt.decode(tokens["access_token"], keys, algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt" and decoded.header["alg"] == "ES256" and decoded.header["kid"]
    claims = decoded.claims
    admin = await auth.db.get_user(TENANT, ADMIN)
    assert admin is not None
    now = time.time()
    assert claims["iss"] == ISSUER
    assert claims["sub"] == str(admin.id)
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == registered["client_id"]
    assert claims["scope"] == "crm:write files:read"  # unknown scopes are not granted
    assert claims["tenant"] == TENANT and claims["roles"] == ["admin"] and claims["email"] == ADMIN
    assert claims["iat"] == claims["nbf"] and abs(claims["iat"] - now) < 5
    assert claims["exp"] == claims["iat"] + auth.settings.access_token_ttl_s
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert not await auth.is_revoked(claims["jti"])

    # the JWKS endpoint publishes the same keys, from the OAuth key directory (not the internal one)
    published = (await client.get(f"/t/{TENANT}/oauth/jwks")).json()
    assert published == auth.jwks()
    assert auth.keystore.directory == auth.settings.data_dir / "keys" / "oauth"


async def test_confidential_client_authenticates_with_its_secret(client: httpx.AsyncClient) -> None:
    registered = await register(client, token_endpoint_auth_method="client_secret_basic")
    secret = registered["client_secret"]
    grant = await obtain_code(client, registered["client_id"])
    data = {"grant_type": "authorization_code", "code": grant.code, "redirect_uri": REDIRECT,
            "code_verifier": grant.verifier}
    refused = await client.post(f"/t/{TENANT}/oauth/token", data={**data, "client_id": registered["client_id"]})
    assert refused.status_code in (400, 401) and refused.json()["error"] == "invalid_client"
    wrong = await client.post(f"/t/{TENANT}/oauth/token", data=data, auth=(registered["client_id"], "nope"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    ok = await client.post(f"/t/{TENANT}/oauth/token", data=data, auth=(registered["client_id"], secret))
    assert ok.status_code == 200, ok.text


async def test_deny_redirects_with_access_denied_state_and_iss(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    _, challenge = pkce()
    location = await browser_authorize(client, authorize_url(registered["client_id"], challenge), MEMBER, PASSWORD,
                                       approve=False)
    params = query(location)
    assert location.startswith(REDIRECT + "?")
    assert params == {"error": "access_denied", "error_description": params["error_description"],
                      "state": "st-123", "iss": ISSUER}


async def test_signed_in_session_skips_the_login_form(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    await obtain_code(client, registered["client_id"])
    _, challenge = pkce()
    page = await client.get(authorize_url(registered["client_id"], challenge))
    assert page.status_code == 200
    assert 'name="password"' not in page.text and 'value="consent"' in page.text
    assert MEMBER in page.text and REDIRECT in page.text and "files:write" in page.text


async def test_tokens_and_codes_are_never_logged(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registered = await register(client, token_endpoint_auth_method="client_secret_post")
    grant = await obtain_code(client, registered["client_id"])
    tokens = (await exchange(client, grant, client_secret=registered["client_secret"])).json()
    refreshed = (await refresh(client, registered["client_id"], tokens["refresh_token"],
                               client_secret=registered["client_secret"])).json()
    secrets = [grant.code, grant.verifier, registered["client_secret"], tokens["access_token"],
               tokens["refresh_token"], refreshed["access_token"], refreshed["refresh_token"]]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records  # debug logging was on
    for secret in secrets:
        assert secret not in logged
