"""The token endpoint's refusals: PKCE, single-use codes, refresh-token rotation, resource, revocation."""

from __future__ import annotations

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet

from kontor.gateway.oauth import AuthServer
from tests.gateway.oauth.conftest import (
    ORIGIN,
    REDIRECT,
    TENANT,
    Clock,
    exchange,
    obtain_code,
    refresh,
    register,
)


def jti_of(auth: AuthServer, token: str) -> str:
    return jwt.decode(token, KeySet.import_key_set(auth.jwks()), algorithms=["ES256"]).claims["jti"]


async def test_wrong_code_verifier_is_refused(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    grant = await obtain_code(client, registered["client_id"])
    other = "A" * 43
    response = await exchange(client, grant, code_verifier=other)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    missing = await client.post(f"/t/{TENANT}/oauth/token", data={
        "grant_type": "authorization_code", "code": grant.code, "redirect_uri": REDIRECT,
        "client_id": grant.client_id})
    assert missing.status_code == 400
    # the code is spent by the failed attempt
    assert (await exchange(client, grant)).json()["error"] == "invalid_grant"


async def test_reused_code_fails_and_revokes_tokens_issued_from_it(client: httpx.AsyncClient,
                                                                   auth: AuthServer) -> None:
    registered = await register(client)
    grant = await obtain_code(client, registered["client_id"])
    first = await exchange(client, grant)
    assert first.status_code == 200
    tokens = first.json()
    jti = jti_of(auth, tokens["access_token"])
    assert not await auth.is_revoked(jti)

    second = await exchange(client, grant)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    assert await auth.is_revoked(jti)
    refreshed = await refresh(client, registered["client_id"], tokens["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


async def test_code_is_bound_to_client_and_redirect_uri(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    other = await register(client)
    grant = await obtain_code(client, registered["client_id"])
    wrong_client = await exchange(client, grant, client_id=other["client_id"])
    assert wrong_client.json()["error"] == "invalid_grant"
    wrong_redirect = await exchange(client, grant, redirect_uri=REDIRECT + "/other")
    assert wrong_redirect.json()["error"] == "invalid_grant"


async def test_expired_code_is_refused(client: httpx.AsyncClient, auth: AuthServer, clock: Clock) -> None:
    registered = await register(client)
    grant = await obtain_code(client, registered["client_id"])
    clock.advance(auth.settings.auth_code_ttl_s + 1)
    response = await exchange(client, grant)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_resource_mismatch_at_token_endpoint_is_refused(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    grant = await obtain_code(client, registered["client_id"])
    response = await exchange(client, grant, resource=f"{ORIGIN}/t/beta/mcp")
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"
    ok = await exchange(client, grant)  # not consumed by the refused request
    assert ok.status_code == 200
    bad_refresh = await refresh(client, registered["client_id"], ok.json()["refresh_token"],
                                resource="https://evil.example/mcp")
    assert bad_refresh.json()["error"] == "invalid_target"


async def test_reused_refresh_token_revokes_the_family(client: httpx.AsyncClient, auth: AuthServer) -> None:
    registered = await register(client)
    tokens = (await exchange(client, await obtain_code(client, registered["client_id"]))).json()
    rotated = (await refresh(client, registered["client_id"], tokens["refresh_token"])).json()
    newest = (await refresh(client, registered["client_id"], rotated["refresh_token"])).json()
    jtis = [jti_of(auth, t["access_token"]) for t in (tokens, rotated, newest)]

    replay = await refresh(client, registered["client_id"], tokens["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    for jti in jtis:
        assert await auth.is_revoked(jti)
    after = await refresh(client, registered["client_id"], newest["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


async def test_refresh_token_is_bound_to_its_client(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    other = await register(client)
    tokens = (await exchange(client, await obtain_code(client, registered["client_id"]))).json()
    stolen = await refresh(client, other["client_id"], tokens["refresh_token"])
    assert stolen.json()["error"] == "invalid_grant"
    assert (await refresh(client, registered["client_id"], tokens["refresh_token"])).status_code == 200


async def test_refresh_cannot_widen_scope(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    grant = await obtain_code(client, registered["client_id"], scope="files:read")
    tokens = (await exchange(client, grant)).json()
    assert tokens["scope"] == "files:read"
    wider = await refresh(client, registered["client_id"], tokens["refresh_token"], scope="files:read files:write")
    assert wider.json()["error"] == "invalid_scope"


async def test_revocation_endpoint_revokes_access_and_refresh_tokens(client: httpx.AsyncClient,
                                                                      auth: AuthServer) -> None:
    registered = await register(client)
    cid = registered["client_id"]
    tokens = (await exchange(client, await obtain_code(client, cid))).json()
    jti = jti_of(auth, tokens["access_token"])
    response = await client.post(f"/t/{TENANT}/oauth/revoke", data={"token": tokens["access_token"], "client_id": cid})
    assert response.status_code == 200
    assert await auth.is_revoked(jti)

    other = (await exchange(client, await obtain_code(client, cid))).json()
    other_jti = jti_of(auth, other["access_token"])
    response = await client.post(f"/t/{TENANT}/oauth/revoke", data={
        "token": other["refresh_token"], "token_type_hint": "refresh_token", "client_id": cid})
    assert response.status_code == 200
    assert await auth.is_revoked(other_jti)  # the grant's access token ends with its refresh token
    assert (await refresh(client, cid, other["refresh_token"])).json()["error"] == "invalid_grant"

    unknown = await client.post(f"/t/{TENANT}/oauth/revoke", data={"token": "nonsense", "client_id": cid})
    assert unknown.status_code == 200  # RFC 7009: unknown tokens are not an error


async def test_revocation_is_seen_by_another_server_instance(client: httpx.AsyncClient, auth: AuthServer) -> None:
    registered = await register(client)
    tokens = (await exchange(client, await obtain_code(client, registered["client_id"]))).json()
    jti = jti_of(auth, tokens["access_token"])
    replica = AuthServer(auth.settings, auth.db, keystore=auth.keystore)
    assert not await replica.is_revoked(jti)
    await client.post(f"/t/{TENANT}/oauth/revoke", data={"token": tokens["access_token"],
                                                         "client_id": registered["client_id"]})
    replica.store._synced_at = float("-inf")  # its next periodic sync is due
    assert await replica.is_revoked(jti)


async def test_unsupported_grant_types_and_oversized_bodies(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    for grant_type in ("password", "client_credentials", "implicit"):
        response = await client.post(f"/t/{TENANT}/oauth/token",
                                     data={"grant_type": grant_type, "client_id": registered["client_id"]})
        assert response.json()["error"] == "unsupported_grant_type"
    big = await client.post(f"/t/{TENANT}/oauth/token", data={"grant_type": "refresh_token", "x": "y" * 20000})
    assert big.status_code == 413
    as_json = await client.post(f"/t/{TENANT}/oauth/token", json={"grant_type": "refresh_token"})
    assert as_json.status_code == 415
