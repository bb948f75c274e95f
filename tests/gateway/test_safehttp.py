"""The SSRF-safe HTTP helper.

Refusal rules run with an injected resolver and never connect anywhere. Fetch behaviour runs
in dev mode (allow_private, allow_http) against real servers on 127.0.0.1 started here; the
resolver maps made-up ``.test`` names to 127.0.0.1, so a successful fetch of such a name also
proves the connection went to the vetted address and not through the system resolver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from kontor.gateway.safehttp import (
    FetchFailed,
    SafeHttpClient,
    StaticResolver,
    UnsafeUrl,
    _PinnedBackend,
    address_refusal,
)

# --------------------------------------------------------------------------- refusal rules, no network


class NoDns:
    """A resolver for the refusal tests: known names only, and it records every lookup."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, f"no such test host {host}")
        return self.table[host]


STRICT_TABLE = {
    "internal.example.com": ["10.0.0.1"],  # a public-looking name pointing inside
    "mixed.example.com": ["93.184.216.34", "127.0.0.1"],  # one bad address is enough
    "v6.example.com": ["2606:4700::1111", "fd12:3456::1"],
    "public.example.com": ["93.184.216.34", "2606:4700::1111"],
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://127.0.0.1/", "a loopback address 127.0.0.1"),
        ("https://127.0.0.1./", "a loopback address 127.0.0.1"),
        ("https://localhost/", "loopback name"),
        ("https://LocalHost:8443/x", "loopback name"),
        ("https://api.localhost/", "loopback name"),
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("https://metadata.google.internal/computeMetadata/v1/", "cloud metadata name"),
        ("https://100.100.100.200/", "cloud metadata address"),
        ("https://[fd00:ec2::254]/", "cloud metadata address"),
        ("https://10.1.2.3/", "a private address 10.1.2.3"),
        ("https://192.168.1.1/", "a private address 192.168.1.1"),
        ("https://172.16.5.4/", "a private address 172.16.5.4"),
        ("https://172.31.255.255/", "a private address"),
        ("https://100.64.0.1/", "CGNAT"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://224.0.0.1/", "multicast"),
        ("https://255.255.255.255/", "reserved"),
        ("https://169.254.10.10/", "link-local"),
        ("https://[::1]/", "a loopback address ::1"),
        ("https://[::]/", "unspecified"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[fc00::5]/", "private (unique local)"),
        ("https://[ff02::1]/", "multicast"),
        ("https://[::ffff:127.0.0.1]/", "IPv4-mapped form"),
        ("https://[::ffff:10.0.0.1]/", "IPv4-mapped form"),
        ("https://[64:ff9b::a00:1]/", "NAT64 form"),
        ("https://[64:ff9b::a9fe:a9fe]/", "NAT64 form (64:ff9b::a9fe:a9fe) of a cloud metadata address"),
        ("https://[2002:7f00:1::]/", "6to4 form"),
        ("https://[::127.0.0.1]/", "IPv4-compatible form"),
        ("https://[fe80::1%25eth0]/", "zone identifier"),
        ("https://2130706433/", "non-canonical IPv4 literal '2130706433' refused (C resolvers read it as 127.0.0.1)"),
        ("https://0177.0.0.1/", "non-canonical IPv4 literal '0177.0.0.1' refused (C resolvers read it as 127.0.0.1)"),
        ("https://0x7f.0.0.1/", "non-canonical IPv4 literal"),
        ("https://127.1/", "non-canonical IPv4 literal"),
        ("https://010.0.0.1/", "non-canonical IPv4 literal"),
        ("https://example.com@127.0.0.1/", "userinfo"),
        ("https://user:secret@example.com/", "userinfo"),
        ("https://127.0.0.1\\@example.com/", "backslash"),
        ("https://example.com\\@127.0.0.1/", "backslash"),
        ("https://internal.example.com/", "internal.example.com resolves to a private address 10.0.0.1"),
        ("https://mixed.example.com/", "mixed.example.com resolves to a loopback address 127.0.0.1"),
        ("https://v6.example.com/", "resolves to a private (unique local) address fd12:3456::1"),
        ("http://public.example.com/", "http:// refused"),
        ("file:///etc/passwd", "scheme file:// refused"),
        ("gopher://public.example.com/", "scheme gopher:// refused"),
        ("//public.example.com/", "scheme (none) refused"),
        ("https:///path-only", "no host"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/\r\nX-Injected: 1", "control characters"),
        ("https://ex%61mple.com/", "invalid host name"),
        ("https://-bad-.example.com/", "invalid host name"),
    ],
)
async def test_refused(url: str, expected: str) -> None:
    resolver = NoDns(STRICT_TABLE)
    client = SafeHttpClient(resolver=resolver)
    with pytest.raises(UnsafeUrl) as info:
        await client.get(url)
    assert expected in info.value.reason, info.value.reason
    if "example.com" not in url or "@" in url or "\\" in url:
        assert resolver.calls == []  # refused from the URL alone


async def test_public_addresses_pass_the_check_without_connecting() -> None:
    client = SafeHttpClient(resolver=NoDns(STRICT_TABLE))
    vetted = await client.vet("https://Public.Example.COM./a/b?c=d#frag")
    assert vetted.host == "public.example.com" and vetted.port == 443 and vetted.target == b"/a/b?c=d"
    assert [str(a) for a in vetted.addresses] == ["93.184.216.34", "2606:4700::1111"]
    literal = await client.vet("https://[2606:4700::1111]:8443/")
    assert literal.port == 8443 and str(literal.addresses[0]) == "2606:4700::1111"
    idn = SafeHttpClient(resolver=NoDns({"xn--bcher-kva.de": ["93.184.216.34"]}))
    assert (await idn.vet("https://bücher.de/")).host == "xn--bcher-kva.de"


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_allowed(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize("address", ["192.0.0.192", "168.63.129.16", "198.18.0.1", "192.0.2.7", "240.0.0.1",
                                     "2001:db8::1", "2001::1", "fec0::1", "64:ff9b:1::1", "100::1"])
def test_special_purpose_addresses_refused(address: str) -> None:
    assert address_refusal(address) is not None


async def test_resolution_failures_are_fetch_failures() -> None:
    client = SafeHttpClient(resolver=NoDns({"empty.example.com": []}))
    with pytest.raises(FetchFailed, match="cannot resolve unknown.example.com"):
        await client.get("https://unknown.example.com/")
    with pytest.raises(FetchFailed, match="no addresses"):
        await client.get("https://empty.example.com/")


async def test_slow_resolver_hits_the_total_time_limit() -> None:
    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return ["93.184.216.34"]

    client = SafeHttpClient(resolver=hanging, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="timed out"):
        await client.get("https://slow-dns.example.com/")
    assert time.monotonic() - started < 2


async def test_pinned_backend_refuses_other_hosts() -> None:
    backend = _PinnedBackend("a.test", 443, (ipaddress.ip_address("127.0.0.1"),))
    with pytest.raises(Exception, match="unvetted"):
        await backend.connect_tcp("b.test", 443)
    with pytest.raises(Exception, match="unvetted"):
        await backend.connect_tcp("a.test", 8443)


# --------------------------------------------------------------------------- real servers on loopback


@dataclass
class Seen:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (host header, method, path)
    headers: list[dict[str, str]] = field(default_factory=list)


def make_app(seen: Seen) -> Starlette:
    async def record(request: Request) -> None:
        seen.requests.append((request.headers.get("host", ""), request.method, request.url.path))
        seen.headers.append(dict(request.headers))

    async def ok(request: Request) -> Response:
        await record(request)
        return JSONResponse({"ok": True, "host": request.headers.get("host")})

    async def echo(request: Request) -> Response:
        await record(request)
        body = await request.body()
        return JSONResponse({"method": request.method, "body": body.decode(),
                             "content_type": request.headers.get("content-type")})

    async def headers(request: Request) -> Response:
        await record(request)
        return JSONResponse(dict(request.headers))

    async def redirect(request: Request) -> Response:
        await record(request)
        return RedirectResponse(request.query_params["to"], status_code=int(request.query_params.get("status", 302)))

    async def chain(request: Request) -> Response:
        await record(request)
        n = int(request.path_params["n"])
        return RedirectResponse("/ok" if n == 0 else f"/chain/{n - 1}", status_code=302)

    async def big(request: Request) -> Response:
        await record(request)
        size = int(request.query_params["size"])

        async def body() -> object:
            sent = 0
            while sent < size:
                chunk = min(65536, size - sent)
                sent += chunk
                yield b"x" * chunk

        return StreamingResponse(body(), media_type="application/octet-stream")  # no Content-Length

    async def big_declared(request: Request) -> Response:
        await record(request)
        return Response(b"y" * 200_000, media_type="application/octet-stream")

    async def gzipped(request: Request) -> Response:
        await record(request)
        return Response(b"\x1f\x8b...", headers={"content-encoding": "gzip"})

    async def slow(request: Request) -> Response:
        await record(request)
        await asyncio.sleep(3)
        return JSONResponse({"late": True})

    async def drip(request: Request) -> Response:
        await record(request)

        async def body() -> object:
            for _ in range(60):  # every read arrives quickly; only the total limit stops it
                yield b"."
                await asyncio.sleep(0.05)

        return StreamingResponse(body())

    return Starlette(routes=[
        Route("/ok", ok), Route("/echo", echo, methods=["GET", "POST"]), Route("/headers", headers),
        Route("/redirect", redirect, methods=["GET", "POST"]), Route("/chain/{n:int}", chain),
        Route("/big", big), Route("/big-declared", big_declared), Route("/gzip", gzipped),
        Route("/slow", slow), Route("/drip", drip),
    ])


@dataclass
class LocalServer:
    port: int
    seen: Seen
    tls_port: int
    ca_pem: bytes

    def hosts_seen(self) -> set[str]:
        return {host.rsplit(":", 1)[0] for host, _, _ in self.seen.requests}


def _make_certs(directory: Path) -> tuple[Path, Path, bytes]:
    """A throwaway CA and a server certificate for ``safe.test`` (name only: no IP in it)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kontor test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "safe.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("safe.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM)


def _serve(app: Starlette, **ssl_options: object) -> tuple[uvicorn.Server, threading.Thread, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1, **ssl_options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    seen = Seen()
    app = make_app(seen)
    cert_file, key_file, ca_pem = _make_certs(tmp_path_factory.mktemp("tls"))
    plain, plain_thread, port = _serve(app)
    tls, tls_thread, tls_port = _serve(app, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file))
    yield LocalServer(port, seen, tls_port, ca_pem)
    for server in (plain, tls):
        server.should_exit = True
    for thread in (plain_thread, tls_thread):
        thread.join(timeout=5)


@pytest.fixture
def seen(local: LocalServer) -> Seen:
    local.seen.requests.clear()
    local.seen.headers.clear()
    return local.seen


NAMES = ["a.test", "b.test", "c.test", "evil.test", "pinned.test", "safe.test", "other.test"]


def dev_client(**options: object) -> SafeHttpClient:
    options.setdefault("resolver", StaticResolver({name: "127.0.0.1" for name in NAMES}))
    return SafeHttpClient(allow_http=True, allow_private=True, **options)


def forbid_evil(host: str, address: object) -> str | None:
    return "evil.test is forbidden in this test" if host == "evil.test" else None


async def test_normal_fetch_connects_to_the_vetted_address(local: LocalServer, seen: Seen) -> None:
    resolver = StaticResolver({"pinned.test": "127.0.0.1"})
    client = dev_client(resolver=resolver)
    response = await client.get(f"http://pinned.test:{local.port}/ok", headers={"Accept": "application/json"})
    assert response.status == 200 and response.ok
    assert response.json() == {"ok": True, "host": f"pinned.test:{local.port}"}  # Host keeps the name
    assert response.headers["content-type"] == "application/json"
    assert response.url == f"http://pinned.test:{local.port}/ok"
    assert resolver.calls == ["pinned.test"]  # resolved once, by us; the connection used that answer
    assert seen.headers[0]["accept"] == "application/json"
    assert seen.headers[0]["accept-encoding"] == "identity"


async def test_loopback_literal_in_dev_mode(local: LocalServer, seen: Seen) -> None:
    response = await dev_client().get(f"http://127.0.0.1:{local.port}/ok")
    assert response.json()["host"] == f"127.0.0.1:{local.port}"


async def test_dev_mode_still_refuses_by_default(local: LocalServer, seen: Seen) -> None:
    strict = SafeHttpClient(resolver=StaticResolver({"a.test": "127.0.0.1"}))
    with pytest.raises(UnsafeUrl, match="http:// refused"):
        await strict.get(f"http://a.test:{local.port}/ok")
    https_only = SafeHttpClient(allow_http=True, resolver=StaticResolver({"a.test": "127.0.0.1"}))
    with pytest.raises(UnsafeUrl, match="a.test resolves to a loopback address 127.0.0.1"):
        await https_only.get(f"http://a.test:{local.port}/ok")
    assert seen.requests == []


async def test_post_json_and_form(local: LocalServer, seen: Seen) -> None:
    client = dev_client()
    response = await client.post(f"http://a.test:{local.port}/echo", json={"grant_type": "x", "ü": 1})
    assert response.json() == {"method": "POST", "body": '{"grant_type":"x","ü":1}',
                               "content_type": "application/json"}
    form = await client.post(f"http://a.test:{local.port}/echo", data={"a": "1 2", "b": "&"})
    assert form.json()["body"] == "a=1+2&b=%26"
    assert form.json()["content_type"] == "application/x-www-form-urlencoded"


async def test_redirect_chain_ending_at_a_forbidden_host_is_refused(local: LocalServer, seen: Seen) -> None:
    client = dev_client(policy=forbid_evil)
    last = f"http://evil.test:{local.port}/ok"
    middle = f"http://b.test:{local.port}/redirect?to={last}"
    first = f"http://a.test:{local.port}/redirect?to={middle.replace('?', '%3F').replace('=', '%3D')}"
    with pytest.raises(UnsafeUrl) as info:
        await client.get(first)
    assert info.value.reason.startswith(f"redirect 2 to {last} refused")
    assert "evil.test is forbidden in this test" in info.value.reason
    assert local.hosts_seen() == {"a.test", "b.test"}  # the forbidden hop was never contacted
    # The same final hop, fetched directly, is refused too; without the policy the chain completes.
    with pytest.raises(UnsafeUrl):
        await client.get(last)
    response = await dev_client().get(first)
    assert response.json()["host"] == f"evil.test:{local.port}" and response.url == last


async def test_redirect_to_numeric_or_userinfo_url_is_refused(local: LocalServer, seen: Seen) -> None:
    client = dev_client()
    for location, rule in [(f"http://2130706433:{local.port}/ok", "non-canonical IPv4"),
                           (f"http://a.test@127.0.0.1:{local.port}/ok", "userinfo"),
                           ("file:///etc/passwd", "scheme file://")]:
        with pytest.raises(UnsafeUrl, match=rule):
            await client.get(f"http://a.test:{local.port}/redirect?to={location}")


async def test_redirect_downgrade_to_http_is_refused(local: LocalServer, seen: Seen) -> None:
    ctx = ssl.create_default_context(cadata=local.ca_pem.decode())
    client = SafeHttpClient(allow_private=True, ssl_context=ctx,
                            resolver=StaticResolver({"safe.test": "127.0.0.1", "b.test": "127.0.0.1"}))
    ok = await client.get(f"https://safe.test:{local.tls_port}/ok")  # TLS to the pinned IP, SNI and cert by name
    assert ok.json() == {"ok": True, "host": f"safe.test:{local.tls_port}"}
    with pytest.raises(UnsafeUrl, match=r"redirect 1 to http://b\.test:\d+/ok refused: http:// refused"):
        await client.get(f"https://safe.test:{local.tls_port}/redirect?to=http://b.test:{local.port}/ok")
    assert "b.test" not in local.hosts_seen()


async def test_tls_certificate_is_checked_against_the_name(local: LocalServer, seen: Seen) -> None:
    ctx = ssl.create_default_context(cadata=local.ca_pem.decode())
    client = dev_client(ssl_context=ctx)
    with pytest.raises(FetchFailed, match="cannot connect"):
        await client.get(f"https://other.test:{local.tls_port}/ok")  # same IP, certificate is for safe.test
    with pytest.raises(FetchFailed, match="cannot connect"):
        await dev_client().get(f"https://safe.test:{local.tls_port}/ok")  # default trust store: unknown CA


async def test_credentials_are_dropped_on_cross_origin_redirects(local: LocalServer, seen: Seen) -> None:
    client = dev_client()
    auth = {"Authorization": "Bearer canary-token", "Cookie": "s=1", "X-Trace": "t"}
    same = await client.get(f"http://a.test:{local.port}/redirect?to=/headers", headers=auth)
    assert same.json()["authorization"] == "Bearer canary-token"
    other = await client.get(f"http://a.test:{local.port}/redirect?to=http://b.test:{local.port}/headers",
                             headers=auth)
    assert "authorization" not in other.json() and "cookie" not in other.json()
    assert other.json()["x-trace"] == "t"


async def test_redirect_methods(local: LocalServer, seen: Seen) -> None:
    client = dev_client()
    see_other = await client.post(f"http://a.test:{local.port}/redirect?to=/echo&status=303", json={"a": 1})
    assert see_other.json() == {"method": "GET", "body": "", "content_type": None}
    temporary = await client.post(f"http://a.test:{local.port}/redirect?to=/echo&status=307", json={"a": 1})
    assert temporary.json() == {"method": "POST", "body": '{"a":1}', "content_type": "application/json"}


async def test_too_many_redirects(local: LocalServer, seen: Seen) -> None:
    client = dev_client(max_redirects=3)
    # /chain/n redirects n + 1 times before /ok.
    assert (await client.get(f"http://a.test:{local.port}/chain/2")).json()["ok"] is True
    seen.requests.clear()
    with pytest.raises(FetchFailed, match=r"too many redirects \(more than 3\)"):
        await client.get(f"http://a.test:{local.port}/chain/3")
    assert [path for _, _, path in seen.requests] == ["/chain/3", "/chain/2", "/chain/1", "/chain/0"]  # no /ok
    with pytest.raises(FetchFailed, match="too many redirects"):
        await dev_client(max_redirects=0).get(f"http://a.test:{local.port}/chain/0")


async def test_body_over_max_bytes_is_cut_off(local: LocalServer, seen: Seen) -> None:
    client = dev_client(max_bytes=100_000)
    exact = await client.get(f"http://a.test:{local.port}/big?size=100000")
    assert len(exact.content) == 100_000
    with pytest.raises(FetchFailed, match="exceeds max_bytes 100000"):
        await client.get(f"http://a.test:{local.port}/big?size=5000000")
    with pytest.raises(FetchFailed, match="declares 200000 bytes"):
        await client.get(f"http://a.test:{local.port}/big-declared")


async def test_compressed_body_is_refused(local: LocalServer, seen: Seen) -> None:
    with pytest.raises(FetchFailed, match="content-encoding 'gzip'"):
        await dev_client().get(f"http://a.test:{local.port}/gzip")


async def test_slow_endpoint_times_out(local: LocalServer, seen: Seen) -> None:
    client = dev_client(timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="timed out"):
        await client.get(f"http://a.test:{local.port}/slow")
    assert time.monotonic() - started < 1.5


async def test_trickling_body_hits_the_total_time_limit(local: LocalServer, seen: Seen) -> None:
    client = dev_client(timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="timed out after 0.5 s"):
        await client.get(f"http://a.test:{local.port}/drip")
    assert time.monotonic() - started < 1.5


async def test_connection_refused_is_a_fetch_failure() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchFailed, match="cannot connect to a.test"):
        await dev_client().get(f"http://a.test:{port}/")


async def test_system_resolver_for_localhost_in_dev_mode(local: LocalServer, seen: Seen) -> None:
    # The real getaddrinfo (localhost comes from /etc/hosts); if it lists ::1 first, the connect falls back.
    client = SafeHttpClient(allow_http=True, allow_private=True)
    response = await client.get(f"http://localhost:{local.port}/ok")
    assert response.json()["host"] == f"localhost:{local.port}"
