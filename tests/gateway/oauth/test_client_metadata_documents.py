"""Client ID Metadata Documents: a client identified by the URL of its metadata document.

The documents are served by a real HTTP server on 127.0.0.1 and fetched with the server's
default dev-mode fetcher (SSRF-safe; http and loopback only allowed because of dev mode).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from kontor.gateway.config import GatewaySettings
from kontor.gateway.oauth import AuthServer
from kontor.gateway.oauth.clients import ClientResolver, default_http_client
from tests.gateway.oauth.conftest import (
    MEMBER,
    PASSWORD,
    REDIRECT,
    TENANT,
    Grant,
    authorize_url,
    exchange,
    pkce,
    query,
)
from tests.gateway.oauth_browser import browser_authorize


@dataclass
class DocumentServer:
    port: int
    hits: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def _app(hits: list[str]) -> Starlette:
    def document(request: Request, client_id: str, **extra: object) -> dict[str, object]:
        return {"client_id": client_id, "client_name": "Metadata Client", "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "token_endpoint_auth_method": "none", **extra}

    async def good(request: Request) -> Response:
        hits.append("good")
        return JSONResponse(document(request, str(request.url)))

    async def mismatch(request: Request) -> Response:
        hits.append("mismatch")
        return JSONResponse(document(request, str(request.url).replace("mismatch", "good")))

    async def secret(request: Request) -> Response:
        return JSONResponse(document(request, str(request.url), token_endpoint_auth_method="client_secret_basic"))

    async def moved(request: Request) -> Response:
        return RedirectResponse(str(request.url).replace("moved", "good"))

    async def big(request: Request) -> Response:
        return JSONResponse(document(request, str(request.url), padding="x" * 100_000))

    return Starlette(routes=[Route("/good.json", good), Route("/mismatch.json", mismatch),
                             Route("/secret.json", secret), Route("/moved.json", moved), Route("/big.json", big)])


@pytest.fixture(scope="module")
def documents() -> Iterator[DocumentServer]:
    hits: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_app(hits), log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("document server did not start")
        time.sleep(0.01)
    yield DocumentServer(sock.getsockname()[1], hits)
    server.should_exit = True
    thread.join(timeout=5)


async def test_metadata_document_client_happy_path(client: httpx.AsyncClient, auth: AuthServer,
                                                   documents: DocumentServer) -> None:
    client_id = documents.url("good.json")
    verifier, challenge = pkce()
    url = authorize_url(client_id, challenge)
    page = await client.get(url)
    assert page.status_code == 200 and "Metadata Client" in page.text
    location = await browser_authorize(client, url, MEMBER, PASSWORD)
    params = query(location)
    assert location.startswith(REDIRECT + "?") and params["state"] == "st-123"
    response = await exchange(client, Grant(client_id, verifier, params["code"]))
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], KeySet.import_key_set(auth.jwks())).claims
    assert claims["client_id"] == client_id
    # fetched once, then served from the cache
    assert documents.hits.count("good") == 1


async def test_metadata_document_with_other_client_id_is_refused(client: httpx.AsyncClient,
                                                                 documents: DocumentServer) -> None:
    _, challenge = pkce()
    response = await client.get(authorize_url(documents.url("mismatch.json"), challenge))
    assert response.status_code == 400 and "location" not in response.headers
    assert "mismatch" in documents.hits


@pytest.mark.parametrize("name", ["secret.json", "moved.json", "big.json", "missing.json"])
async def test_unacceptable_metadata_documents_are_refused(client: httpx.AsyncClient, documents: DocumentServer,
                                                           name: str) -> None:
    _, challenge = pkce()
    response = await client.get(authorize_url(documents.url(name), challenge))
    assert response.status_code == 400 and "location" not in response.headers


async def test_redirect_uri_must_be_listed_in_the_document(client: httpx.AsyncClient,
                                                           documents: DocumentServer) -> None:
    _, challenge = pkce()
    response = await client.get(authorize_url(documents.url("good.json"), challenge,
                                              redirect_uri="http://127.0.0.1:1/other"))
    assert response.status_code == 400 and "location" not in response.headers


async def test_http_metadata_urls_only_on_loopback_in_dev_mode(auth: AuthServer, documents: DocumentServer) -> None:
    dev = auth.clients
    assert dev.metadata_url_problem(documents.url("good.json")) is None
    assert dev.metadata_url_problem("http://app.example/client.json") is not None
    assert dev.metadata_url_problem("https://app.example/") is not None  # needs a path
    assert dev.metadata_url_problem("https://app.example/a/../client.json") is not None
    production = GatewaySettings(public_origin="https://gw.example", dev_mode=False)
    strict = ClientResolver(auth.store, production, default_http_client(production))
    assert strict.metadata_url_problem(documents.url("good.json")) is not None
    assert strict.is_metadata_url("https://app.example/client.json")
    assert not strict.is_metadata_url(documents.url("good.json"))
    # and the production fetcher refuses loopback addresses even for https
    assert await strict.get(TENANT, f"https://127.0.0.1:{documents.port}/good.json") is None
