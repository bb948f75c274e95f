"""Refusals at the authorization endpoint: bad clients and redirect URIs get an error page (never a
redirect); everything else is redirected back with ``error``, ``state`` and ``iss``."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest

from tests.gateway.oauth.conftest import (
    ISSUER,
    ORIGIN,
    REDIRECT,
    RESOURCE,
    TENANT,
    authorize_url,
    pkce,
    query,
    register,
)


def assert_error_redirect(response: httpx.Response, error: str) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    params = query(location)
    assert params["error"] == error, params
    assert params["state"] == "st-123" and params["iss"] == ISSUER
    assert "code" not in params
    return params


async def test_redirect_uri_mismatch_shows_error_page(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    _, challenge = pkce()
    for other in (REDIRECT + "/", REDIRECT + "x", REDIRECT.replace("127.0.0.1", "localhost"),
                  REDIRECT + "?a=1", "https://evil.example/callback", REDIRECT.upper()):
        response = await client.get(authorize_url(registered["client_id"], challenge, redirect_uri=other))
        assert response.status_code == 400, other
        assert "location" not in response.headers
        assert "text/html" in response.headers["content-type"]
        assert "not valid" in response.text


async def test_missing_redirect_uri_shows_error_page(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    _, challenge = pkce()
    params = {"response_type": "code", "client_id": registered["client_id"], "code_challenge": challenge,
              "code_challenge_method": "S256", "state": "st-123"}
    response = await client.get(f"/t/{TENANT}/oauth/authorize?{urlencode(params)}")
    assert response.status_code == 400 and "location" not in response.headers


async def test_unknown_client_shows_error_page(client: httpx.AsyncClient) -> None:
    _, challenge = pkce()
    response = await client.get(authorize_url("no-such-client", challenge))
    assert response.status_code == 400 and "location" not in response.headers
    assert "does not exist" in response.text


async def test_client_of_another_tenant_is_unknown_here(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    _, challenge = pkce()
    response = await client.get(authorize_url(registered["client_id"], challenge, tenant="beta"))
    assert response.status_code == 400 and "location" not in response.headers


async def test_missing_pkce_challenge_is_refused(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    params = assert_error_redirect(await client.get(authorize_url(registered["client_id"], None)), "invalid_request")
    assert "code_challenge" in params["error_description"]
    # a method without a challenge is refused too
    response = await client.get(authorize_url(registered["client_id"], None, code_challenge_method="S256"))
    assert_error_redirect(response, "invalid_request")


@pytest.mark.parametrize("method", ["plain", None, "s256", "S512"])
async def test_pkce_methods_other_than_s256_are_refused(client: httpx.AsyncClient, method: str | None) -> None:
    registered = await register(client)
    _, challenge = pkce()
    url = authorize_url(registered["client_id"], None, code_challenge=challenge)
    if method is not None:
        url += "&" + urlencode({"code_challenge_method": method})
    params = assert_error_redirect(await client.get(url), "invalid_request")
    assert "S256" in params["error_description"]


async def test_resource_other_than_the_tenants_mcp_endpoint_is_refused(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    _, challenge = pkce()
    for resource in (f"{ORIGIN}/t/beta/mcp", f"{ORIGIN}/t/{TENANT}/mcp/", "https://evil.example/mcp"):
        response = await client.get(authorize_url(registered["client_id"], challenge, resource=resource))
        assert_error_redirect(response, "invalid_target")
    twice = authorize_url(registered["client_id"], challenge) + "&" + urlencode({"resource": RESOURCE})
    assert_error_redirect(await client.get(twice), "invalid_target")


async def test_unsupported_response_type_is_refused(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    _, challenge = pkce()
    response = await client.get(authorize_url(registered["client_id"], challenge, response_type="token"))
    assert_error_redirect(response, "unsupported_response_type")


async def test_overlong_parameter_gets_error_page(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    _, challenge = pkce()
    response = await client.get(authorize_url(registered["client_id"], challenge, state="x" * 5000))
    assert response.status_code == 400 and "location" not in response.headers
    many = authorize_url(registered["client_id"], challenge) + "".join(f"&p{i}=1" for i in range(60))
    assert (await client.get(many)).status_code == 400
