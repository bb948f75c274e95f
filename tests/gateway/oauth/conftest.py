"""Fixtures: a tenant with users and servers in a temp SQLite database, and the authorization
server as a Starlette app behind ``httpx.ASGITransport`` (cookies kept by the client).

``db_engine`` picks the database behind ``db``: SQLite here; a test module about storage
overrides it with ``params=["sqlite", "postgresql"]`` to run on a fresh database of the
throwaway PostgreSQL server (``tests/conftest.py``) as well."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import event
from starlette.applications import Starlette

import kontor.gateway.oauth  # noqa: F401 - registers the oauth_* tables before GatewayDB.init
from kontor.gateway.config import GatewaySettings, get_gateway_settings
from kontor.gateway.db import GatewayDB
from kontor.gateway.oauth import AuthServer
from tests.gateway.oauth_browser import browser_authorize

ORIGIN = "http://127.0.0.1:8700"
TENANT = "acme"
MEMBER = "member@acme.example"
ADMIN = "admin@acme.example"
PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:33418/callback"
ISSUER = f"{ORIGIN}/t/{TENANT}"
RESOURCE = f"{ORIGIN}/t/{TENANT}/mcp"


class Clock:
    """The database clock (codes, sessions, refresh tokens expire by it)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewaySettings]:
    monkeypatch.setenv("KONTOR_DATA_ROOT", str(tmp_path / "data"))
    from kontor.settings import get_settings

    get_settings.cache_clear()
    get_gateway_settings.cache_clear()
    yield GatewaySettings(public_origin=ORIGIN, dev_mode=True)
    get_settings.cache_clear()
    get_gateway_settings.cache_clear()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _open(location: Path | str, clock: Clock | None = None) -> GatewayDB:
    """The gateway database at a SQLite file path or an SQLAlchemy URL."""
    url = location if isinstance(location, str) else f"sqlite+aiosqlite:///{location}"
    database = GatewayDB(url, clock=clock or Clock(), max_failed_logins=3,
                         hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    if database.engine.dialect.name == "sqlite":

        @event.listens_for(database.engine.sync_engine, "connect")
        def _no_fsync(dbapi_connection: Any, _record: Any) -> None:  # tests only: a crash loses nothing of value
            dbapi_connection.execute("PRAGMA synchronous=OFF")

    return database


async def _seed(database: GatewayDB) -> None:
    """Two tenants, a member and an admin of ``acme``, and two enabled servers."""
    await database.init()
    await database.create_tenant(TENANT, "ACME GmbH")
    await database.create_tenant("beta", "Beta AG")
    await database.add_user(TENANT, MEMBER, PASSWORD, "member")
    await database.add_user(TENANT, ADMIN, PASSWORD, "admin")
    await database.enable_server(TENANT, "files", "http://127.0.0.1:9001/mcp", ["files:read"])
    await database.enable_server(TENANT, "crm", "http://127.0.0.1:9002/mcp", ["crm:read"],
                                 config={"write_roles": ["admin"]})


@pytest.fixture(scope="session")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded SQLite database (see :func:`_seed`), made once and copied for each test."""
    path = tmp_path_factory.mktemp("seed") / "gateway.db"

    async def seed() -> None:
        database = _open(path)
        await _seed(database)
        await database.close()

    asyncio.run(seed())
    return path


@pytest.fixture
def db_engine() -> str:
    """The engine behind ``db``; override it in a module (with params) to run on PostgreSQL too."""
    return "sqlite"


@pytest.fixture
async def db(request: pytest.FixtureRequest, db_engine: str, tmp_path: Path, clock: Clock,
             seeded_db: Path) -> AsyncIterator[GatewayDB]:
    if db_engine == "postgresql":  # a fresh database, seeded for this test
        database = _open(str(request.getfixturevalue("pg_url")), clock)
        await _seed(database)
    else:
        path = tmp_path / "gateway.db"
        shutil.copyfile(seeded_db, path)
        database = _open(path, clock)
        await database.init()  # idempotent; proves the oauth_* tables come with init
    yield database
    await database.close()


@pytest.fixture
def auth(settings: GatewaySettings, db: GatewayDB) -> AuthServer:
    return AuthServer(settings, db)


@pytest.fixture
async def client(auth: AuthServer) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=auth.routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as http:
        yield http


# --- helpers ------------------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


async def register(client: httpx.AsyncClient, **metadata: Any) -> dict[str, Any]:
    body = {"client_name": "Test Client", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"], **metadata}
    response = await client.post(f"/t/{TENANT}/oauth/register", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def authorize_url(client_id: str, challenge: str | None, *, tenant: str = TENANT, **extra: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "st-123",
              "resource": f"{ORIGIN}/t/{tenant}/mcp", **extra}
    if challenge is not None:
        params.setdefault("code_challenge", challenge)
        params.setdefault("code_challenge_method", "S256")
    return f"{ORIGIN}/t/{tenant}/oauth/authorize?{urlencode(params)}"


@dataclass
class Grant:
    client_id: str
    verifier: str
    code: str


async def obtain_code(client: httpx.AsyncClient, client_id: str, *, email: str = MEMBER, **extra: str) -> Grant:
    verifier, challenge = pkce()
    location = await browser_authorize(client, authorize_url(client_id, challenge, **extra), email, PASSWORD)
    params = query(location)
    assert location.startswith(REDIRECT + "?"), location
    assert params["state"] == "st-123" and params["iss"] == ISSUER, params
    return Grant(client_id, verifier, params["code"])


async def exchange(client: httpx.AsyncClient, grant: Grant, **extra: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": grant.code, "redirect_uri": REDIRECT,
            "client_id": grant.client_id, "code_verifier": grant.verifier, "resource": RESOURCE, **extra}
    return await client.post(f"/t/{TENANT}/oauth/token", data=data)


async def refresh(client: httpx.AsyncClient, client_id: str, refresh_token: str, **extra: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id,
            "resource": RESOURCE, **extra}
    return await client.post(f"/t/{TENANT}/oauth/token", data=data)
