"""Verification of the gateway's internal tokens by first-party servers (kontor.auth).

Tokens are minted by the real gateway minter (kontor.gateway.tokens) and, for the attacks,
forged by hand. HttpJwks and the MCP adapter run against real HTTP servers on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kontor.auth import (
    HttpJwks,
    InternalTokenVerifier,
    JwksUnavailable,
    McpTokenVerifier,
    NoVerifiedToken,
    StaticJwks,
    TokenInvalid,
    VerifiedToken,
    mcp_auth,
    tenant_from_request,
    verified_token_from_request,
)
from kontor.gateway.keys import KeyStore
from kontor.gateway.tokens import TokenMinter
from kontor.tenancy import NoTenant
from tests.servers_util import free_port

ISSUER = "http://127.0.0.1:8700"
AUDIENCE = "http://127.0.0.1:9001/mcp"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    store: KeyStore
    minter: TokenMinter
    clock: Clock

    def verifier(self, audience: str = AUDIENCE, issuer: str = ISSUER, **kw: Any) -> InternalTokenVerifier:
        return InternalTokenVerifier(StaticJwks(self.store.jwks()), issuer, audience, clock=self.clock, **kw)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock.now)
        base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme", "scope": "lakehouse:read",
                "iat": now, "nbf": now, "exp": now + 60, "jti": "j1"}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        key = self.store.current()
        return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt", **header}, claims, key.key,
                          algorithms=["ES256"])


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    clock = Clock()
    store = KeyStore(tmp_path / "gateway" / "keys", max_token_lifetime_s=300, grace_s=60, clock=clock)
    store.current()
    return Gateway(store, TokenMinter(store, ISSUER, clock=clock), clock)


def _b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def _refused(verifier: InternalTokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(TokenInvalid) as err:
        await verifier.verify(token)
    assert err.value.reason == reason
    assert token not in str(err.value) and token.split(".")[1] not in str(err.value)


# -- the happy path ---------------------------------------------------------------------------


async def test_round_trip(gw: Gateway):
    token = gw.minter.mint(AUDIENCE, "alice", "acme", ["lakehouse:read", "lakehouse:write"],
                           actor=ISSUER, client_id="claude-desktop")
    v = await gw.verifier().verify(token)
    assert isinstance(v, VerifiedToken)
    assert (v.subject, v.tenant, v.client_id, v.actor) == ("alice", "acme", "claude-desktop", ISSUER)
    assert v.scopes == frozenset({"lakehouse:read", "lakehouse:write"})
    assert v.expires_at == int(gw.clock.now) + 60 and v.raw_claims["aud"] == AUDIENCE
    with pytest.raises(TypeError):
        v.raw_claims["tenant"] = "other"  # type: ignore[index]


# -- refused tokens ---------------------------------------------------------------------------


async def test_wrong_audience_and_another_tenants_audience(gw: Gateway):
    verifier = gw.verifier()
    await _refused(verifier, gw.minter.mint("http://127.0.0.1:9002/mcp", "alice", "acme", []), "wrong audience")
    # The gateway's endpoint of another tenant is another audience: its token is useless here.
    other = gw.minter.mint("http://127.0.0.1:8700/t/globex/mcp", "alice", "globex", ["lakehouse:read"])
    await _refused(gw.verifier("http://127.0.0.1:8700/t/acme/mcp"), other, "wrong audience")
    # A token for several audiences is not a token for this one alone.
    await _refused(verifier, gw.sign(gw.claims(aud=[AUDIENCE, "http://evil/mcp"])), "wrong audience")
    assert (await verifier.verify(gw.sign(gw.claims(aud=[AUDIENCE])))).tenant == "acme"


async def test_time_claims(gw: Gateway):
    verifier = gw.verifier(leeway_s=5)
    token = gw.minter.mint(AUDIENCE, "alice", "acme", [], ttl_s=60)
    gw.clock.now += 64  # within the leeway
    assert (await verifier.verify(token)).subject == "alice"
    gw.clock.now += 1
    await _refused(verifier, token, "token expired")  # also when the first check was cached

    now = int(gw.clock.now)
    fresh = gw.verifier(leeway_s=5)
    await _refused(fresh, token, "token expired")
    await _refused(fresh, gw.sign(gw.claims(nbf=now + 30, iat=now, exp=now + 60)), "token not yet valid")
    await _refused(fresh, gw.sign(gw.claims(iat=now + 30, nbf=now, exp=now + 90)), "token issued in the future")
    await _refused(fresh, gw.sign(gw.claims(exp=None)), "missing or malformed exp")
    await _refused(fresh, gw.sign(gw.claims(exp=float("nan"))), "malformed claims")  # NaN is not JSON
    await _refused(fresh, gw.sign(gw.claims(exp=True)), "missing or malformed exp")
    await _refused(fresh, gw.sign(gw.claims(iat=None)), "missing or malformed iat")
    await _refused(fresh, gw.sign(gw.claims(exp=now + 7200)), "token lifetime too long")
    assert (await fresh.verify(gw.sign(gw.claims(nbf=now + 4)))).tenant == "acme"  # leeway


async def test_wrong_issuer(gw: Gateway):
    token = gw.minter.mint(AUDIENCE, "alice", "acme", [])
    await _refused(gw.verifier(issuer="http://127.0.0.1:8700/"), token, "wrong issuer")
    other = TokenMinter(gw.store, "http://evil.example", clock=gw.clock).mint(AUDIENCE, "alice", "acme", [])
    await _refused(gw.verifier(), other, "wrong issuer")


async def test_tampered_payload(gw: Gateway):
    token = gw.minter.mint(AUDIENCE, "alice", "acme", ["lakehouse:read"])
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tenant"] = "globex"
    await _refused(gw.verifier(), f"{header}.{_b64(claims)}.{signature}", "bad signature")
    claims["tenant"], claims["scope"] = "acme", "lakehouse:read lakehouse:admin"
    await _refused(gw.verifier(), f"{header}.{_b64(claims)}.{signature}", "bad signature")
    await _refused(gw.verifier(), f"{header}.{payload}.{signature[:-4]}AAAA", "bad signature")


async def test_signature_by_an_unknown_key(gw: Gateway, tmp_path: Path):
    rogue = KeyStore(tmp_path / "rogue", clock=gw.clock)
    token = TokenMinter(rogue, ISSUER, clock=gw.clock).mint(AUDIENCE, "alice", "acme", [])
    await _refused(gw.verifier(), token, "unknown signing key")
    # Same kid as the real key, but signed by the rogue key.
    claims = gw.claims()
    forged = jwt.encode({"alg": "ES256", "kid": gw.store.current().kid, "typ": "at+jwt"}, claims,
                        rogue.current().key, algorithms=["ES256"])
    await _refused(gw.verifier(), forged, "bad signature")


async def test_alg_none_and_hmac_with_the_public_key_are_refused(gw: Gateway):
    key = gw.store.current()
    body = _b64(gw.claims())
    none_token = f"{_b64({'alg': 'none', 'kid': key.kid, 'typ': 'at+jwt'})}.{body}."
    await _refused(gw.verifier(), none_token, "algorithm not allowed")

    public_pem = key.key.as_pem(private=False)
    public_jwk = json.dumps(key.public_jwk()).encode()
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        for secret in (public_pem, public_jwk):
            head = _b64({"alg": alg, "kid": key.kid, "typ": "at+jwt"})
            sig = _b64(hmac.new(secret, f"{head}.{body}".encode(), digest).digest())
            await _refused(gw.verifier(), f"{head}.{body}.{sig}", "algorithm not allowed")

    # RS256 named with the EC key's kid: the key's type (and its alg) must fit the algorithm.
    head = _b64({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"})
    await _refused(gw.verifier(), f"{head}.{body}.{_b64(b'x' * 256)}", "key does not match algorithm")

    # A symmetric key slipped into the JWKS is never used.
    oct_jwks = {"keys": [{"kty": "oct", "kid": "sym", "k": _b64(b"secret" * 6), "alg": "HS256"}]}
    head = _b64({"alg": "HS256", "kid": "sym", "typ": "at+jwt"})
    sig = _b64(hmac.new(b"secret" * 6, f"{head}.{body}".encode(), hashlib.sha256).digest())
    verifier = InternalTokenVerifier(StaticJwks(oct_jwks), ISSUER, AUDIENCE, clock=gw.clock)
    await _refused(verifier, f"{head}.{body}.{sig}", "algorithm not allowed")


async def test_rs256_is_accepted_with_an_rsa_key(gw: Gateway):
    rsa = RSAKey.generate_key(2048, parameters={"kid": "r1", "alg": "RS256", "use": "sig"}, private=True)
    token = jwt.encode({"alg": "RS256", "kid": "r1", "typ": "at+jwt"}, gw.claims(), rsa, algorithms=["RS256"])
    verifier = InternalTokenVerifier(StaticJwks({"keys": [rsa.as_dict(private=False)]}), ISSUER, AUDIENCE,
                                     clock=gw.clock)
    assert (await verifier.verify(token)).tenant == "acme"
    # ES256 named with the RSA key's kid is refused before any signature check.
    head = _b64({"alg": "ES256", "kid": "r1", "typ": "at+jwt"})
    await _refused(verifier, f"{head}.{_b64(gw.claims())}.{_b64(b'x' * 64)}", "key does not match algorithm")


async def test_tenant_and_subject_claims(gw: Gateway):
    verifier = gw.verifier()
    await _refused(verifier, gw.sign(gw.claims(tenant=None)), "missing tenant")
    for bad in ("../x", "ACME", "", "a/b", "a" * 64, 7, ["acme"]):
        await _refused(verifier, gw.sign(gw.claims(tenant=bad)), "invalid tenant")
    await _refused(verifier, gw.sign(gw.claims(sub=None)), "missing subject")
    await _refused(verifier, gw.sign(gw.claims(sub="")), "missing subject")
    await _refused(verifier, gw.sign(gw.claims(scope=["a"])), "malformed scope")
    await _refused(verifier, gw.sign(gw.claims(act="gateway")), "malformed act")


async def test_header_rules_and_malformed_tokens(gw: Gateway):
    verifier = gw.verifier()
    await _refused(verifier, gw.sign(gw.claims(), typ="JWT"), "wrong token type")
    await _refused(verifier, gw.sign(gw.claims(), jku="http://evil/jwks"), "unsupported header parameter")
    key = gw.store.current()
    no_kid = jwt.encode({"alg": "ES256", "typ": "at+jwt"}, gw.claims(), key.key, algorithms=["ES256"])
    await _refused(verifier, no_kid, "missing kid")
    for junk in ("", "abc", "a.b", "a.b.c.d", "é.é.é", "x" * 9000, f"{_b64(b'[1]')}.{_b64(b'{}')}.AA"):
        with pytest.raises(TokenInvalid):
            await verifier.verify(junk)


async def test_key_rotation_and_pruning(gw: Gateway):
    old_token = gw.minter.mint(AUDIENCE, "alice", "acme", [], ttl_s=300)
    old_kid = gw.store.current().kid
    gw.clock.now += 10
    gw.store.rotate()
    gw.minter.clear()
    new_token = gw.minter.mint(AUDIENCE, "alice", "acme", [], ttl_s=60)
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["kid"] != old_kid
    verifier = gw.verifier()  # built from the JWKS published after the rotation
    assert (await verifier.verify(old_token)).subject == "alice"
    assert (await verifier.verify(new_token)).subject == "alice"

    gw.clock.now += 300 + 60  # the old key's last token has expired, plus the grace period
    assert gw.store.prune() == [old_kid]
    assert old_kid not in {k["kid"] for k in gw.store.jwks()["keys"]}
    # Even a token with a lifetime not yet over (clock set back) no longer verifies: its key is gone.
    gw.clock.now -= 300
    await _refused(gw.verifier(), old_token, "unknown signing key")


def test_jwks_has_no_private_parts(gw: Gateway):
    gw.store.current()
    gw.store.rotate()
    text = json.dumps(gw.store.jwks())
    assert '"d"' not in text
    for key in gw.store.keys():
        assert key.key.as_dict(private=True)["d"] not in text
    # A JWKS handed to StaticJwks with private parts in it is reduced to the public key.
    private = gw.store.current().key.as_dict(private=True, kid="k", alg="ES256")
    source = StaticJwks({"keys": [private]})
    assert asyncio.run(source.get_key("k")).is_private is False


async def test_successful_verifications_are_cached_until_expiry(gw: Gateway):
    class Counting(StaticJwks):
        calls = 0

        async def get_key(self, kid: str):  # type: ignore[override]
            Counting.calls += 1
            return await super().get_key(kid)

    verifier = InternalTokenVerifier(Counting(gw.store.jwks()), ISSUER, AUDIENCE, clock=gw.clock, cache_size=2)
    tokens = [gw.minter.mint(AUDIENCE, f"u{i}", "acme", []) for i in range(3)]
    await verifier.verify(tokens[0])
    await verifier.verify(tokens[0])
    assert Counting.calls == 1
    await verifier.verify(tokens[1])
    await verifier.verify(tokens[2])  # evicts tokens[0]
    await verifier.verify(tokens[0])
    assert Counting.calls == 4
    bad = gw.minter.mint("http://other/mcp", "u", "acme", [])
    for _ in range(2):  # failures are not cached as successes
        await _refused(verifier, bad, "wrong audience")


async def test_verify_cost_with_and_without_cache(gw: Gateway):
    """Figures printed with -s; the cached path must be much cheaper than a signature check."""
    token = gw.minter.mint(AUDIENCE, "alice", "acme", ["lakehouse:read"])
    uncached, cached = gw.verifier(cache_size=0), gw.verifier()
    await cached.verify(token)

    async def median_us(v: InternalTokenVerifier, n: int) -> float:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await v.verify(token)
            samples.append(time.perf_counter_ns() - t0)
        return statistics.median(samples) / 1000

    full = await median_us(uncached, 200)
    hit = await median_us(cached, 2000)
    print(f"\nverify (signature) {full:.1f} us, verify (cached) {hit:.2f} us")
    assert hit * 10 < full


# -- HttpJwks against a real HTTP server ------------------------------------------------------


@contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a loopback port in a thread; yield its origin."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def jwks_server(store: KeyStore) -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"hits": 0, "fail": False}

    async def jwks(request: Request) -> Response:
        state["hits"] += 1
        if state["fail"]:
            return Response("down", status_code=503)
        return JSONResponse(store.jwks())

    with serve(Starlette(routes=[Route("/.well-known/jwks.json", jwks)])) as origin:
        yield f"{origin}/.well-known/jwks.json", state


async def test_http_jwks_refetches_on_rotation_and_rate_limits_unknown_kids(gw: Gateway, tmp_path: Path):
    gw.store.current()
    mono = Clock(1000.0)
    with jwks_server(gw.store) as (url, state):
        async with httpx.AsyncClient() as client:
            source = HttpJwks(url, ttl_s=300, client=client, refetch_interval_s=10, clock=mono)
            verifier = InternalTokenVerifier(source, ISSUER, AUDIENCE, clock=gw.clock, cache_size=0)

            def token(subject: str = "alice") -> str:
                return gw.minter.mint_uncached(AUDIENCE, subject, "acme", [])

            assert (await verifier.verify(token())).tenant == "acme"
            assert (await verifier.verify(token())).tenant == "acme"
            assert state["hits"] == 1  # keys cached

            gw.store.rotate()  # a token with the new kid arrives: one refetch picks it up
            mono.now += 10
            assert (await verifier.verify(token())).tenant == "acme"
            assert state["hits"] == 2

            rogue = TokenMinter(KeyStore(tmp_path / "rogue"), ISSUER, clock=gw.clock)
            bogus = [rogue.mint_uncached(AUDIENCE, f"x{i}", "acme", []) for i in range(3)]
            # A burst of unknown kids right after a fetch: no fetch at all.
            for t in bogus:
                await _refused(verifier, t, "unknown signing key")
            assert state["hits"] == 2
            # Interval over: 50 concurrent unknown-kid tokens share a single fetch.
            mono.now += 10
            results = await asyncio.gather(*(verifier.verify(bogus[i % 3]) for i in range(50)),
                                           return_exceptions=True)
            assert all(isinstance(r, TokenInvalid) and r.reason == "unknown signing key" for r in results)
            assert state["hits"] == 3
            for t in bogus:
                await _refused(verifier, t, "unknown signing key")
            assert state["hits"] == 3

            # The endpoint goes down after the keys' TTL: the cached keys stay in use.
            state["fail"] = True
            mono.now += 301
            assert (await verifier.verify(token())).tenant == "acme"
            assert state["hits"] == 4
            assert (await verifier.verify(token())).tenant == "acme"
            assert state["hits"] == 4  # and the failing endpoint is not hammered either

            # A source that never got keys refuses every token, with a clear reason.
            cold = InternalTokenVerifier(HttpJwks(url, client=client, clock=mono), ISSUER, AUDIENCE, clock=gw.clock)
            with pytest.raises(JwksUnavailable):
                await cold.verify(token())


async def test_http_jwks_rejects_oversized_documents(gw: Gateway):
    gw.store.current()

    async def huge(request: Request) -> Response:
        keys = gw.store.jwks()["keys"] * 5000
        return JSONResponse({"keys": keys})

    with serve(Starlette(routes=[Route("/jwks", huge)])) as origin:
        source = HttpJwks(f"{origin}/jwks", max_bytes=64 * 1024)
        try:
            with pytest.raises(JwksUnavailable):
                await source.get_key(gw.store.current().kid)
        finally:
            await source.aclose()


# -- an MCP server protected by the adapter ---------------------------------------------------


def test_tenant_from_request_outside_a_request():
    with pytest.raises(NoVerifiedToken) as err:
        tenant_from_request()
    assert isinstance(err.value, NoTenant) and "verif" in str(err.value)


async def test_mcp_server_behind_the_adapter(tmp_path: Path):
    store = KeyStore(tmp_path / "gateway" / "keys")
    minter = TokenMinter(store, ISSUER)
    store.current()
    port = free_port()
    audience = f"http://127.0.0.1:{port}/mcp"
    with jwks_server(store) as (jwks_url, _):
        verifier = InternalTokenVerifier(HttpJwks(jwks_url), ISSUER, audience)
        token_verifier, auth = mcp_auth(verifier)
        assert isinstance(token_verifier, McpTokenVerifier)
        server = MCPServer("probe", token_verifier=token_verifier, auth=auth)

        @server.tool(structured_output=True)
        async def whoami() -> dict[str, Any]:
            v = verified_token_from_request()
            return {"tenant": tenant_from_request(), "subject": v.subject, "scopes": sorted(v.scopes)}

        @server.tool(structured_output=True)
        def tenant_in_thread() -> dict[str, str]:  # a sync tool runs in a worker thread
            return {"tenant": tenant_from_request()}

        with serve(server.streamable_http_app(), port):
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                               "clientInfo": {"name": "t", "version": "0"}}}
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            async with httpx.AsyncClient() as raw:
                resp = await raw.post(audience, json=init, headers=headers)
                assert resp.status_code == 401
                assert "resource_metadata=" in resp.headers["www-authenticate"]
                for bad in (minter.mint("http://127.0.0.1:1/mcp", "alice", "acme", []),  # other audience
                            TokenMinter(KeyStore(tmp_path / "rogue"), ISSUER).mint(audience, "alice", "acme", []),
                            "not-a-token"):
                    resp = await raw.post(audience, json=init, headers={**headers, "Authorization": f"Bearer {bad}"})
                    assert resp.status_code == 401

            acme = minter.mint(audience, "alice", "acme", ["probe:read"], actor=ISSUER, client_id="c1")
            async with create_mcp_http_client(headers={"Authorization": f"Bearer {acme}"}) as http:
                async with Client(streamable_http_client(audience, http_client=http)) as client:
                    result = await client.call_tool("whoami", {})
                    assert not result.is_error, result.content
                    assert result.structured_content == {"tenant": "acme", "subject": "alice",
                                                         "scopes": ["probe:read"]}
                    result = await client.call_tool("tenant_in_thread", {})
                    assert result.structured_content == {"tenant": "acme"}
                    # The tenant is read from each request's token, not remembered from the session.
                    globex = minter.mint(audience, "alice", "globex", ["probe:read"], actor=ISSUER, client_id="c1")
                    http.headers["Authorization"] = f"Bearer {globex}"
                    result = await client.call_tool("whoami", {})
                    assert result.structured_content["tenant"] == "globex"
