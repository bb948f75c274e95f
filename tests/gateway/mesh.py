"""A running mesh for gateway tests: the gateway and fixture upstreams as real loopback processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from argon2 import PasswordHasher
from joserfc import jwt
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB
from kontor.gateway.keys import KeyStore
from tests.servers_util import free_port, stop, wait_healthy

FIXTURE = Path(__file__).with_name("upstream_fixture.py")
PASSWORD = "correct horse battery staple"


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@dataclass
class Mesh:
    root: Path
    settings: GatewaySettings
    env: dict[str, str]
    gateway: subprocess.Popen[bytes] | None = None
    upstreams: dict[str, tuple[str, subprocess.Popen[bytes]]] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def origin(self) -> str:
        return self.settings.origin

    def url(self, tenant: str) -> str:
        return self.settings.resource_uri(tenant)

    def token(self, tenant: str, subject: str = "user-1", scopes: Sequence[str] = (), *, email: str | None = None,
              roles: Sequence[str] = ("member",), ttl_s: int = 600, **overrides: Any) -> str:
        """An access token as the built-in authorization server issues them (same signing keys)."""
        keys = KeyStore(self.settings.data_dir / "keys" / "oauth")
        key = keys.current()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.issuer(tenant), "sub": subject, "aud": self.settings.resource_uri(tenant),
            "exp": now + ttl_s, "iat": now, "nbf": now, "jti": uuid.uuid4().hex, "tenant": tenant,
            "client_id": "test-client", "scope": " ".join(scopes), "roles": list(roles),
            "email": email or f"{subject}@example.com"}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key.key)

    def client(self, tenant: str, token: str | None, *, mode: str = "legacy", **kwargs: Any) -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=60.0))
        return Client(streamable_http_client(self.url(tenant), http_client=http), mode=mode, **kwargs)

    def start_upstream(self, name: str, *args: str, port: int | None = None) -> str:
        port = port or free_port()
        proc = subprocess.Popen([sys.executable, str(FIXTURE), "--port", str(port), "--name", name, *args],
                                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, 60)
        url = f"http://127.0.0.1:{port}/mcp"
        self.upstreams[name] = (url, proc)
        return url

    def start_gateway(self) -> None:
        assert self.log_path is not None
        log = self.log_path.open("ab")
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "kontor.gateway", "serve", "--port", str(self.settings.port)],
            env=self.env, stdout=log, stderr=log)
        wait_healthy(f"{self.origin}/health", self.gateway, 60)

    def stop(self) -> None:
        if self.gateway is not None:
            stop(self.gateway)
        for _, proc in self.upstreams.values():
            stop(proc)

    def db(self) -> GatewayDB:
        return GatewayDB(self.settings.database_url, hasher=fast_hasher())

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    async def setup_tenant(self, tenant: str, servers: dict[str, str], *, config: dict[str, Any] | None = None,
                           users: Sequence[tuple[str, str]] = ()) -> None:
        db = self.db()
        await db.init()
        try:
            if await db.get_tenant(tenant) is None:
                await db.create_tenant(tenant)
            for server, url in servers.items():
                await db.enable_server(tenant, server, url, [f"{server}:read", f"{server}:write"],
                                       config=config or {})
            for email, role in users:
                if await db.get_user(tenant, email) is None:
                    await db.add_user(tenant, email, PASSWORD, role)
        finally:
            await db.close()


@contextmanager
def mesh(root: Path, **gateway_env: str) -> Iterator[Mesh]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTOR_")}
    env.update({"KONTOR_DATA_ROOT": str(root), "KONTOR_GATEWAY_PORT": str(port), "KONTOR_LOG_LEVEL": "INFO",
                "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    env.update(gateway_env)
    settings = GatewaySettings(port=port, **{k.removeprefix("KONTOR_GATEWAY_").lower(): v
                                             for k, v in gateway_env.items() if k.startswith("KONTOR_GATEWAY_")})
    previous = os.environ.get("KONTOR_DATA_ROOT")
    os.environ["KONTOR_DATA_ROOT"] = str(root)  # GatewaySettings.data_dir reads the core settings
    from kontor.settings import get_settings

    get_settings.cache_clear()
    m = Mesh(root=root, settings=settings, env=env, log_path=root / "gateway.log")
    try:
        yield m
    finally:
        m.stop()
        # a mesh made inside another (a test beside a module-wide mesh) must not leave its data root behind
        if previous is None:
            os.environ.pop("KONTOR_DATA_ROOT", None)
        else:
            os.environ["KONTOR_DATA_ROOT"] = previous
        get_settings.cache_clear()
