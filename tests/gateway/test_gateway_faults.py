"""Isolation, faults and load through the gateway: backends that verify tokens, die, hang; many clients."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.gateway.mesh import Mesh, mesh
from tests.servers_util import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def blackhole() -> Iterator[str]:
    """A TCP listener that accepts connections and never answers: a hanging backend."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    sock.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, blackhole: str) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("faults")
    with mesh(root, KONTOR_GATEWAY_DISCOVERY_TIMEOUT_S="2", KONTOR_GATEWAY_TOOL_CALL_TIMEOUT_S="3",
              KONTOR_GATEWAY_RATE_USER_PER_S="10000", KONTOR_GATEWAY_RATE_USER_BURST="10000",
              KONTOR_GATEWAY_RATE_TENANT_PER_S="10000", KONTOR_GATEWAY_RATE_TENANT_BURST="10000") as m:
        fix = m.start_upstream("fix")
        crashy = m.start_upstream("crashy")
        secure = _start_secure(m)
        m.run(m.setup_tenant("acme", {"fix": fix, "crashy": crashy, "secure": secure, "hang": blackhole}))
        m.start_gateway()
        yield m


def _start_secure(m: Mesh) -> str:
    """An upstream that only accepts the gateway's internal tokens for its own audience."""
    port = free_port()
    audience = f"http://127.0.0.1:{port}/mcp"
    return m.start_upstream("secure", "--auth", f"{m.origin}/.well-known/jwks.json", m.settings.internal_issuer,
                            audience, port=port)


ALL = ("fix:read", "fix:write", "crashy:read", "crashy:write", "secure:read", "secure:write", "hang:read")


async def test_hanging_backend_does_not_block_tools_list(gw: Mesh) -> None:
    async with gw.client("acme", gw.token("acme", scopes=ALL)) as client:
        started = time.monotonic()
        names = [t.name for t in (await client.list_tools()).tools]
        elapsed = time.monotonic() - started
    assert "fix__echo" in names and "crashy__echo" in names
    assert not any(n.startswith("hang__") for n in names)
    assert elapsed < 15
    assert b"discovery of hang" in (gw.root / "gateway.log").read_bytes()


async def test_backend_verifies_internal_token_and_takes_tenant_from_it(gw: Mesh) -> None:
    async with gw.client("acme", gw.token("acme", "alice", ALL)) as client:
        result = await client.call_tool("secure__whoami", {})
    tenant, subject, actor = result.content[0].text.split("/", 2)
    assert (tenant, subject) == ("acme", "alice")
    assert actor == gw.settings.internal_issuer


def test_user_token_sent_straight_to_a_backend_is_refused(gw: Mesh) -> None:
    url = gw.upstreams["secure"][0]
    token = gw.token("acme", "alice", ALL)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "x", "version": "1"}}}
    r = httpx.post(url, json=init, headers={"authorization": f"Bearer {token}",
                                            "accept": "application/json, text/event-stream"})
    assert r.status_code == 401


async def test_backend_killed_mid_call_gives_an_error_and_others_keep_working(gw: Mesh) -> None:
    async with gw.client("acme", gw.token("acme", scopes=ALL)) as client:
        started = time.monotonic()
        with pytest.raises(MCPError) as info:
            await client.call_tool("crashy__crash", {})
        assert time.monotonic() - started < 10
        assert "crashy" in str(info.value)
        assert (await client.call_tool("fix__echo", {"text": "still here"})).content[0].text == "still here"
    # the backend comes back (here started by hand; `kontor up`'s supervisor does it in production)
    old_url, _ = gw.upstreams.pop("crashy")
    port = int(old_url.rsplit(":", 1)[1].split("/")[0])
    gw.start_upstream("crashy", port=port)
    async with gw.client("acme", gw.token("acme", scopes=ALL)) as client:
        assert (await client.call_tool("crashy__echo", {"text": "back"})).content[0].text == "back"


async def test_tool_call_timeout_gives_an_error_within_the_limit(gw: Mesh) -> None:
    async with gw.client("acme", gw.token("acme", scopes=ALL)) as client:
        started = time.monotonic()
        with pytest.raises(MCPError, match="did not answer"):
            await client.call_tool("fix__hang", {"seconds": 60})
        assert time.monotonic() - started < 10


async def test_32_concurrent_clients_without_errors(gw: Mesh) -> None:
    calls_per_client = 15

    async def one(i: int) -> int:
        async with gw.client("acme", gw.token("acme", f"load-{i}", ALL)) as client:
            for j in range(calls_per_client):
                result = await client.call_tool("fix__echo", {"text": f"{i}-{j}"})
                assert result.content[0].text == f"{i}-{j}"
        return calls_per_client

    done = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(32))), 240)
    assert sum(done) == 32 * calls_per_client
