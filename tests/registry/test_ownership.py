"""Namespace ownership proofs (review check 2) against a local HTTPS server and a local DNS server.

The HTTPS well-known proof is fetched through the real SSRF-safe client, trusting a CA made
here; loopback is reachable only through the test client (see fixture_net). The DNS proof is
queried with dnspython from a UDP server on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from kontor.gateway.safehttp import SafeHttpClient, StaticResolver
from kontor.registry.ownership import (
    ChallengeIssuer,
    DnsTxtVerifier,
    HttpWellKnownVerifier,
    OwnershipChecker,
    OwnershipProof,
    RecordError,
    domain_for_namespace,
    grants_for,
    key_record,
    namespace_covered,
    parse_key_record,
    sign_challenge,
    timestamp_challenge,
)
from tests.registry.fixture_net import DnsServer, ThreadServer, Tls, loopback_client, make_tls

KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_KEY = ed25519.Ed25519PrivateKey.generate()
P384_KEY = ec.generate_private_key(ec.SECP384R1())
RECORD = key_record(KEY.public_key())

# What each test domain publishes, both at /.well-known/mcp-registry-auth and as TXT records.
PUBLISHED: dict[str, list[str]] = {
    "example.test": [RECORD],
    "wrongkey.test": [key_record(OTHER_KEY.public_key())],
    "rotated.test": [key_record(OTHER_KEY.public_key()), RECORD],
    "malformed.test": ["v=MCPv1; k=ed25519; p=!!!not-base64!!!"],
    "shortkey.test": ["v=MCPv1; k=ed25519; p=AAAA"],
    "partly.test": ["v=MCPv1; k=rsa; p=AAAA", RECORD],
    "p384.test": [key_record(P384_KEY.public_key())],
    "spf.test": ["v=spf1 -all"],
}
NAMES = [*PUBLISHED, "missing.test", "redirect.test"]


@dataclass
class Net:
    tls: Tls
    https: ThreadServer
    dns: DnsServer

    def http_verifier(self) -> HttpWellKnownVerifier:
        client = loopback_client(NAMES, tls=self.tls, max_bytes=4096, max_redirects=0, timeout_s=5)
        return HttpWellKnownVerifier(client, url_template=f"https://{{domain}}:{self.https.port}"
                                                          "/.well-known/mcp-registry-auth")

    def dns_verifier(self) -> DnsTxtVerifier:
        return DnsTxtVerifier(nameservers=["127.0.0.1"], port=self.dns.port, timeout_s=3)

    def checker(self, **options: object) -> OwnershipChecker:
        return OwnershipChecker([self.http_verifier(), self.dns_verifier()], **options)  # type: ignore[arg-type]


async def well_known(request: Request) -> Response:
    host = request.headers["host"].rsplit(":", 1)[0]
    if host == "redirect.test":
        return RedirectResponse("https://example.test/.well-known/mcp-registry-auth", status_code=302)
    if host not in PUBLISHED:
        return PlainTextResponse("not found", status_code=404)
    return PlainTextResponse("\n".join(PUBLISHED[host]) + "\n")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tls = make_tls(tmp_path_factory.mktemp("tls"), ["*.test", *NAMES])
    https = ThreadServer(Starlette(routes=[Route("/.well-known/mcp-registry-auth", well_known)]), tls=tls)
    dns_server = DnsServer(PUBLISHED)
    yield Net(tls, https, dns_server)
    https.stop()
    dns_server.stop()


def proof(method: str, domain: str = "example.test", *, key: object = KEY,
          challenge: str | None = None) -> OwnershipProof:
    challenge = challenge if challenge is not None else timestamp_challenge()
    return OwnershipProof(method, domain, challenge, sign_challenge(key, challenge))  # type: ignore[arg-type]


METHODS = ["http", "dns"]


# --------------------------------------------------------------------------- valid proofs


@pytest.mark.parametrize("method", METHODS)
async def test_valid_timestamp_proof(net: Net, method: str) -> None:
    result = await net.checker().check("test.example/weather", proof(method))
    assert result.passed, result.findings
    assert result.check == "namespace"
    ev = result.evidence
    assert ev["namespace"] == "test.example" and ev["domain"] == "example.test"
    assert ev["matched_key"].startswith("ed25519:")
    assert ev["challenge"]["kind"] == "timestamp" and abs(ev["challenge"]["age_s"]) <= 15
    assert ev["timings"]["lookup_ms"] >= 0
    if method == "http":
        assert ev["grants"] == ["test.example/*"]
        assert ev["lookup"]["status"] == 200 and ev["lookup"]["url"].startswith("https://example.test:")
    else:
        assert ev["grants"] == ["test.example/*", "test.example.*/*"]
        assert ev["lookup"]["rcode"] == "NOERROR" and ev["lookup"]["nameservers"] == ["127.0.0.1"]


@pytest.mark.parametrize("method", METHODS)
async def test_valid_issued_challenge_proof(net: Net, method: str) -> None:
    issuer = ChallengeIssuer()
    challenge = issuer.issue("example.test")
    result = await net.checker(issuer=issuer).check("test.example", proof(method, challenge=challenge.text))
    assert result.passed, result.findings
    assert result.evidence["challenge"]["kind"] == "issued"
    assert result.evidence["challenge"]["nonce"] == challenge.nonce


@pytest.mark.parametrize("method", METHODS)
async def test_rotated_keys_and_p384(net: Net, method: str) -> None:
    rotated = await net.checker().check("test.rotated", proof(method, "rotated.test"))
    assert rotated.passed, rotated.findings
    p384 = await net.checker().check("test.p384", proof(method, "p384.test", key=P384_KEY))
    assert p384.passed, p384.findings
    assert p384.evidence["matched_key"].startswith("ecdsap384:")


async def test_one_malformed_record_beside_a_valid_one_is_a_low_finding(net: Net) -> None:
    result = await net.checker().check("test.partly", proof("dns", "partly.test"))
    assert result.passed
    assert [(f.rule, f.severity) for f in result.findings] == [("namespace.record-malformed", "low")]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("method", METHODS)
async def test_wrong_key(net: Net, method: str) -> None:
    result = await net.checker().check("test.wrongkey", proof(method, "wrongkey.test"))
    assert not result.passed
    assert result.rules() == ["namespace.signature-mismatch"]
    assert "ed25519:" in result.findings[0].message  # names the published key's fingerprint
    # the right domain signed with a key that is not published there
    other = await net.checker().check("test.example", proof(method, key=OTHER_KEY))
    assert other.rules() == ["namespace.signature-mismatch"]


@pytest.mark.parametrize("method", METHODS)
async def test_expired_challenge(net: Net, method: str) -> None:
    stale = timestamp_challenge(time.time() - 60)
    result = await net.checker().check("test.example", proof(method, challenge=stale))
    assert result.rules() == ["namespace.challenge-expired"]
    assert "s old" in result.findings[0].message
    future = timestamp_challenge(time.time() + 120)
    assert (await net.checker().check("test.example", proof(method, challenge=future))).rules() == [
        "namespace.challenge-expired"]
    # an issued challenge past its lifetime
    clock = [time.time()]
    issuer = ChallengeIssuer(ttl_s=60, clock=lambda: clock[0])
    issued = issuer.issue("example.test")
    clock[0] += 120
    checker = net.checker(issuer=issuer, clock=lambda: clock[0])
    late = await checker.check("test.example", proof(method, challenge=issued.text))
    assert late.rules() == ["namespace.challenge-expired"]


@pytest.mark.parametrize("method", METHODS)
async def test_replayed_challenge(net: Net, method: str) -> None:
    checker = net.checker(issuer=ChallengeIssuer())
    first = proof(method)
    assert (await checker.check("test.example", first)).passed
    again = await checker.check("test.example", first)
    assert again.rules() == ["namespace.challenge-replayed"]
    issued = proof(method, challenge=checker.issuer.issue("example.test").text)  # type: ignore[union-attr]
    assert (await checker.check("test.example", issued)).passed
    assert (await checker.check("test.example", issued)).rules() == ["namespace.challenge-replayed"]


@pytest.mark.parametrize(("method", "domain"), [("http", "missing.test"), ("dns", "missing.test"),
                                                ("dns", "spf.test"), ("http", "spf.test")])
async def test_missing_record(net: Net, method: str, domain: str) -> None:
    namespace = domain_for_namespace(domain)  # the reversal is its own inverse
    result = await net.checker().check(namespace, proof(method, domain))
    assert result.rules() == ["namespace.record-missing"]
    assert "v=MCPv1" in result.findings[0].message


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("domain", ["malformed.test", "shortkey.test"])
async def test_malformed_record(net: Net, method: str, domain: str) -> None:
    result = await net.checker().check(domain_for_namespace(domain), proof(method, domain))
    assert result.rules() == ["namespace.record-malformed"]
    assert result.evidence["malformed"]


@pytest.mark.parametrize("method", METHODS)
async def test_domain_namespace_mismatch_is_refused_without_a_lookup(net: Net, method: str) -> None:
    before = len(net.dns.queries)
    result = await net.checker().check("com.other/weather", proof(method))
    assert result.rules() == ["namespace.mismatch"]
    assert "example.test" in result.findings[0].message
    assert "lookup" not in result.evidence and len(net.dns.queries) == before


async def test_subdomain_namespaces_follow_the_official_rules(net: Net) -> None:
    # DNS proves the domain and everything below it; HTTP only the exact namespace (as ACME HTTP-01).
    assert (await net.checker().check("test.example.api/server", proof("dns"))).passed
    http = await net.checker().check("test.example.api/server", proof("http"))
    assert http.rules() == ["namespace.mismatch"]
    assert "exact namespace only" in http.findings[0].message
    # a look-alike prefix is not a subdomain
    assert (await net.checker().check("test.examplefoo", proof("dns"))).rules() == ["namespace.mismatch"]


async def test_malformed_challenges_and_signatures(net: Net) -> None:
    checker = net.checker(issuer=ChallengeIssuer())
    assert (await checker.check("test.example", proof("dns", challenge="yesterday"))).rules() == [
        "namespace.challenge-malformed"]
    assert (await checker.check("test.example", proof("dns", challenge="2025-12-11T10:00:00"))).rules() == [
        "namespace.challenge-malformed"]  # no time zone
    bad_sig = OwnershipProof("dns", "example.test", timestamp_challenge(), "zz")
    assert (await checker.check("test.example", bad_sig)).rules() == ["namespace.signature-malformed"]
    foreign = ChallengeIssuer().issue("example.test").text  # another registry's secret
    assert (await checker.check("test.example", proof("dns", challenge=foreign))).rules() == [
        "namespace.challenge-foreign"]
    other_domain = checker.issuer.issue("wrongkey.test").text  # type: ignore[union-attr]
    assert (await checker.check("test.example", proof("dns", challenge=other_domain))).rules() == [
        "namespace.challenge-foreign"]
    assert (await checker.check("test.example", proof("ftp"))).rules() == ["namespace.unknown-method"]
    assert (await checker.check("test.example", proof("dns", "127.0.0.1"))).rules() == ["namespace.bad-domain"]


async def test_http_proof_does_not_follow_redirects(net: Net) -> None:
    result = await net.checker().check("test.redirect", proof("http", "redirect.test"))
    assert result.rules() == ["namespace.record-unreachable"]
    assert "redirect" in result.findings[0].message


async def test_real_safe_client_refuses_loopback_and_private_targets() -> None:
    # The production configuration: no loopback option, so a domain resolving to 127.0.0.1 or a
    # private address is refused before any connection (nothing listens there anyway).
    resolver = StaticResolver({"example.test": "127.0.0.1", "inside.test": "10.1.2.3"})
    verifier = HttpWellKnownVerifier(SafeHttpClient(resolver=resolver, max_bytes=4096, max_redirects=0))
    checker = OwnershipChecker([verifier])
    result = await checker.check("test.example", proof("http"))
    assert result.rules() == ["namespace.record-unreachable"]
    assert "loopback" in result.findings[0].message and result.evidence["lookup"]["refused"]
    inside = await checker.check("test.inside", proof("http", "inside.test"))
    assert "private address 10.1.2.3" in inside.findings[0].message


async def test_dns_server_down_is_unreachable() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never answers
        verifier = DnsTxtVerifier(nameservers=["127.0.0.1"], port=sock.getsockname()[1], timeout_s=0.5)
        result = await OwnershipChecker([verifier]).check("test.example", proof("dns"))
    assert result.rules() == ["namespace.record-unreachable"]
    assert "DNS lookup" in result.findings[0].message


# --------------------------------------------------------------------------- units


def test_record_parsing() -> None:
    key = parse_key_record(RECORD)
    assert key.algorithm == "ed25519" and len(key.raw) == 32
    assert parse_key_record(RECORD.replace("; ", ";")).raw == key.raw  # whitespace is optional
    for bad in ["v=MCPv1; k=ed25519", "v=MCPv1; k=ed25519; p=", "v=MCPv2; k=ed25519; p=AAAA",
                "v=MCPv1; k=ed25519; p=AAAA", "v=MCPv1; k=dsa; p=AAAA", "v=MCPv1; k=ecdsap384; p=" + "A" * 64]:
        with pytest.raises(RecordError):
            parse_key_record(bad)


def test_namespace_mapping() -> None:
    assert domain_for_namespace("com.example/weather") == "example.com"
    assert namespace_covered("com.example", "example.com", subdomains=False)
    assert namespace_covered("COM.Example/x", "Example.COM.", subdomains=False)
    assert not namespace_covered("com.example.api", "example.com", subdomains=False)
    assert namespace_covered("com.example.api", "example.com", subdomains=True)
    assert not namespace_covered("com.examplex", "example.com", subdomains=True)
    assert not namespace_covered("com", "example.com", subdomains=True)
    assert grants_for("example.com", subdomains=True) == ["com.example/*", "com.example.*/*"]


def test_official_field_names() -> None:
    p = OwnershipProof.from_dict({"method": "dns", "domain": "example.com", "timestamp": "2025-01-01T00:00:00Z",
                                  "signed_timestamp": "ab"})
    assert (p.challenge, p.signature) == ("2025-01-01T00:00:00Z", "ab")
