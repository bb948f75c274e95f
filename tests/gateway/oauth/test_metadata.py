"""RFC 8414 metadata, and 404 for an unknown tenant on every endpoint."""

from __future__ import annotations

import httpx
import pytest
from authlib.oauth2 import rfc8414, rfc9207

from tests.gateway.oauth.conftest import ISSUER, ORIGIN, TENANT


async def test_metadata_document(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/.well-known/oauth-authorization-server/t/{TENANT}")
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == ISSUER
    assert doc["authorization_endpoint"] == f"{ISSUER}/oauth/authorize"
    assert doc["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert doc["registration_endpoint"] == f"{ISSUER}/oauth/register"
    assert doc["revocation_endpoint"] == f"{ISSUER}/oauth/revoke"
    assert doc["jwks_uri"] == f"{ISSUER}/oauth/jwks"
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_methods_supported"] == ["none", "client_secret_basic", "client_secret_post"]
    assert doc["scopes_supported"] == ["crm:read", "crm:write", "files:read", "files:write", "tenant:admin"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["client_id_metadata_document_supported"] is True
    rfc8414.AuthorizationServerMetadata(doc).validate(metadata_classes=[rfc9207.AuthorizationServerMetadata])


async def test_metadata_urls_ignore_the_host_header(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/.well-known/oauth-authorization-server/t/{TENANT}",
                                headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
    assert "evil" not in response.text


async def test_metadata_of_other_tenant_has_its_own_issuer(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/.well-known/oauth-authorization-server/t/beta")).json()
    assert doc["issuer"] == f"{ORIGIN}/t/beta"
    assert doc["scopes_supported"] == ["tenant:admin"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/.well-known/oauth-authorization-server/t/{t}"),
    ("GET", "/t/{t}/oauth/authorize"),
    ("POST", "/t/{t}/oauth/authorize"),
    ("POST", "/t/{t}/oauth/token"),
    ("POST", "/t/{t}/oauth/register"),
    ("POST", "/t/{t}/oauth/revoke"),
    ("GET", "/t/{t}/oauth/jwks"),
    ("GET", "/t/{t}/oauth/static/kontor.css"),
    ("OPTIONS", "/t/{t}/oauth/token"),
])
@pytest.mark.parametrize("tenant", ["nosuch", "Bad_Tenant"])
async def test_unknown_tenant_is_404_json_on_every_endpoint(client: httpx.AsyncClient, method: str, path: str,
                                                            tenant: str) -> None:
    response = await client.request(method, path.format(t=tenant))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "not_found"
