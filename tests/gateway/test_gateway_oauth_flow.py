"""The whole OAuth flow with the mcp SDK's OAuth client against the gateway's built-in server.

discovery (401 → RFC 9728 → RFC 8414) → dynamic registration → PKCE authorization (sign-in and
consent driven like a browser) → token → tools/call; then the refreshed session keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from tests.gateway.mesh import PASSWORD, Mesh, mesh
from tests.gateway.oauth_browser import browser_authorize

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REDIRECT = "http://127.0.0.1:33418/callback"


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root: Path = tmp_path_factory.mktemp("oauth")
    with mesh(root) as m:
        fix = m.start_upstream("fix")
        m.run(m.setup_tenant("acme", {"fix": fix}, users=[("ada@acme.example", "member")]))
        m.start_gateway()
        yield m


async def test_sdk_oauth_client_discovers_registers_authorizes_and_calls(gw: Mesh) -> None:
    storage = MemoryStorage()
    location: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        async with httpx.AsyncClient() as browser:
            location["url"] = await browser_authorize(browser, url, "ada@acme.example", PASSWORD)

    async def callback_handler() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(location["url"]).query)
        assert query["iss"] == [gw.settings.issuer("acme")]  # RFC 9207; the SDK checks it as well
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0],
                                       iss=query["iss"][0])

    provider = OAuthClientProvider(
        gw.url("acme"),
        OAuthClientMetadata(client_name="SDK test client", redirect_uris=[REDIRECT],
                            grant_types=["authorization_code", "refresh_token"], response_types=["code"],
                            token_endpoint_auth_method="none", scope="fix:read fix:write"),
        storage, redirect_handler=redirect_handler, callback_handler=callback_handler)
    http = httpx2.AsyncClient(auth=provider, timeout=30)
    async with Client(streamable_http_client(gw.url("acme"), http_client=http), mode="legacy") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "fix__write_note" in names
        assert (await client.call_tool("fix__echo", {"text": "via oauth"})).content[0].text == "via oauth"
    assert storage.client is not None and storage.client.client_id
    assert storage.tokens is not None and storage.tokens.refresh_token
    assert set((storage.tokens.scope or "").split()) == {"fix:read", "fix:write"}


def test_authorization_server_metadata_is_linked_from_resource_metadata(gw: Mesh) -> None:
    prm = httpx.get(f"{gw.origin}/.well-known/oauth-protected-resource/t/acme/mcp").json()
    issuer = prm["authorization_servers"][0]
    meta = httpx.get(gw.settings.as_metadata_url("acme")).json()
    assert meta["issuer"] == issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
