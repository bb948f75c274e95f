"""RFC 7591 dynamic registration: redirect-URI rules, public and confidential clients, limits."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.oauth.conftest import REDIRECT, TENANT


async def post(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post(f"/t/{TENANT}/oauth/register", json=body)


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1/cb", "http://127.0.0.1:8080/cb", "http://localhost:3000/callback", "http://[::1]:9/cb",
    "https://app.example/oauth/callback", "https://app.example:8443/cb?x=1",
])
async def test_accepted_redirect_uris(client: httpx.AsyncClient, uri: str) -> None:
    response = await post(client, redirect_uris=[uri], token_endpoint_auth_method="none")
    assert response.status_code == 201, response.text
    assert response.json()["redirect_uris"] == [uri]


@pytest.mark.parametrize("uri", [
    "http://app.example/cb", "http://localhost.evil.example/cb", "http://10.0.0.1/cb", "cursor://callback",
    "javascript:alert(1)", "https://app.example/cb#frag", "https://user:pw@app.example/cb", "https:///cb",
    "https://app.example/c b", "/relative", "",
])
async def test_refused_redirect_uris(client: httpx.AsyncClient, uri: str) -> None:
    response = await post(client, redirect_uris=[uri], token_endpoint_auth_method="none")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_redirect_uri"


async def test_redirect_uris_are_required(client: httpx.AsyncClient) -> None:
    for body in ({"client_name": "x"}, {"redirect_uris": []}, {"redirect_uris": "https://a.example/cb"},
                 {"redirect_uris": [REDIRECT] * 11}):
        response = await post(client, **body)
        assert response.status_code == 400, body


async def test_public_and_confidential_clients(client: httpx.AsyncClient) -> None:
    public = (await post(client, redirect_uris=[REDIRECT], token_endpoint_auth_method="none")).json()
    assert "client_secret" not in public and public["token_endpoint_auth_method"] == "none"
    assert public["grant_types"] == ["authorization_code"]  # RFC 7591 default
    confidential = (await post(client, redirect_uris=[REDIRECT])).json()
    assert confidential["token_endpoint_auth_method"] == "client_secret_basic"
    assert len(confidential["client_secret"]) >= 32 and confidential["client_secret_expires_at"] == 0


@pytest.mark.parametrize("db_engine", ["sqlite", "postgresql"])  # NULs: PostgreSQL cannot store them
async def test_unsupported_metadata_is_refused(client: httpx.AsyncClient) -> None:
    for body in ({"token_endpoint_auth_method": "private_key_jwt"}, {"grant_types": ["client_credentials"]},
                 {"response_types": ["token"]}, {"client_name": "x" * 201}, {"scope": "bad\"scope"},
                 {"client_name": "nul\u0000name"}, {"contacts": ["a@b.example\u0000"]}):
        response = await post(client, redirect_uris=[REDIRECT], **body)
        assert response.status_code == 400, body
        assert response.json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")


async def test_malformed_and_oversized_bodies(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"/t/{TENANT}/oauth/register", content=b"[1]",
                              headers={"content-type": "application/json"})).status_code == 400
    assert (await client.post(f"/t/{TENANT}/oauth/register", content=b"{",
                              headers={"content-type": "application/json"})).status_code == 400
    assert (await client.post(f"/t/{TENANT}/oauth/register", data={"redirect_uris": REDIRECT})).status_code == 415
    big = await post(client, redirect_uris=[REDIRECT], client_uri="https://a.example/" + "x" * 40000)
    assert big.status_code == 413


async def test_registration_is_rate_limited_per_client_address(client: httpx.AsyncClient) -> None:
    statuses = [(await post(client, redirect_uris=[REDIRECT], token_endpoint_auth_method="none")).status_code
                for _ in range(21)]
    assert statuses[:20] == [201] * 20  # the burst
    assert statuses[20] == 429
    refused = await post(client, redirect_uris=[REDIRECT], token_endpoint_auth_method="none")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "too many client registrations" in refused.json()["error_description"]
