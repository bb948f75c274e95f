"""Package facts (review check 8): exact versions, and MCPB bundles checked against fileSha256."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from kontor.gateway.safehttp import FetchFailed, SafeHttpClient, SafeResponse, UnsafeUrl
from kontor.registry.packages import check_packages, version_problem

BUNDLE = b"PK\x03\x04 a pretend MCPB bundle " * 100
BUNDLE_SHA = hashlib.sha256(BUNDLE).hexdigest()
URL = "https://github.com/example/releases/download/v1.0.0/server.mcpb"


def npm(version: object = "1.2.3", **more: object) -> dict[str, object]:
    pkg: dict[str, object] = {"registryType": "npm", "identifier": "@example/server", "transport": {"type": "stdio"},
                              **more}
    if version is not None:
        pkg["version"] = version
    return pkg


def mcpb(sha: object = BUNDLE_SHA, identifier: str = URL) -> dict[str, object]:
    pkg: dict[str, object] = {"registryType": "mcpb", "identifier": identifier, "version": "1.0.0",
                              "transport": {"type": "stdio"}}
    if sha is not None:
        pkg["fileSha256"] = sha
    return pkg


class Fetcher:
    """An injected fetch: fixed answers per URL, recording what was asked."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers, self.calls = answers, []

    async def __call__(self, url: str) -> SafeResponse:
        self.calls.append(url)
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return SafeResponse(status, httpx.Headers({"content-type": "application/octet-stream"}), body, url)


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["1.2.3", "2.1.0-alpha.1", "1.0.0+build.5", "v3.4.5", "2024.06.01", "0.1"])
def test_exact_versions(version: str) -> None:
    assert version_problem(version) is None


@pytest.mark.parametrize("version", ["^1.2.3", "~1.2.3", ">=1.2.3", "<2", "1.x", "1.*", "1.2.X", "*", "latest",
                                     "next", "1.0.0 - 2.0.0", "1.0 || 2.0", "==1.0", "1.0,2.0", "", "  ", "beta"])
def test_ranges_and_tags(version: str) -> None:
    assert version_problem(version) is not None


async def test_version_findings() -> None:
    doc = {"packages": [npm("1.2.3"), npm("^1.2.3"), npm(None), npm("latest"),
                        {"registryType": "pypi", "identifier": "weather-mcp", "version": "~=1.0",
                         "transport": {"type": "stdio"}}]}
    result = await check_packages(doc, fetch=Fetcher({}))
    assert not result.passed
    got = [(f.rule, f.field) for f in result.findings]
    assert got == [("packages.version-not-pinned", "$.packages[1].version"),
                   ("packages.version-missing", "$.packages[2].version"),
                   ("packages.version-not-pinned", "$.packages[3].version"),
                   ("packages.version-not-pinned", "$.packages[4].version")]
    assert [p["version_pinned"] for p in result.evidence["packages"]] == [True, False, False, False, False]


@pytest.mark.parametrize(("identifier", "version", "pinned"), [
    ("ghcr.io/example/server:1.2.3", None, True),
    ("ghcr.io/example/server@sha256:" + "a" * 64, None, True),
    ("docker.io/example/server", "1.0.0", True),
    ("docker.io/example/server", None, False),
    ("ghcr.io/example/server:latest", None, False),
    ("localhost:5000/server", None, False),  # the registry port is not a tag
])
async def test_oci_references(identifier: str, version: str | None, pinned: bool) -> None:
    pkg: dict[str, object] = {"registryType": "oci", "identifier": identifier, "transport": {"type": "stdio"}}
    if version:
        pkg["version"] = version
    result = await check_packages({"packages": [pkg]}, fetch=Fetcher({}))
    assert result.evidence["packages"][0]["version_pinned"] is pinned
    assert result.passed is pinned


# --------------------------------------------------------------------------- MCPB


async def test_mcpb_hash_verified() -> None:
    fetch = Fetcher({URL: BUNDLE})
    result = await check_packages({"packages": [mcpb()]}, fetch=fetch)
    assert result.passed and result.findings == ()
    ev = result.evidence["packages"][0]
    assert ev["reachable"] is True and ev["hash_matches"] is True and ev["bytes"] == len(BUNDLE)
    assert ev["actualSha256"] == BUNDLE_SHA and fetch.calls == [URL]


async def test_mcpb_hash_mismatch_is_critical() -> None:
    result = await check_packages({"packages": [mcpb()]}, fetch=Fetcher({URL: BUNDLE + b"tampered"}))
    assert not result.passed
    (finding,) = result.findings
    assert (finding.rule, finding.severity, finding.field) == ("packages.mcpb-hash-mismatch", "critical",
                                                               "$.packages[0].fileSha256")
    assert BUNDLE_SHA in finding.message
    assert result.evidence["packages"][0]["hash_matches"] is False


async def test_mcpb_without_or_with_a_malformed_hash() -> None:
    fetch = Fetcher({})
    missing = await check_packages({"packages": [mcpb(sha=None)]}, fetch=fetch)
    assert [f.rule for f in missing.findings] == ["packages.mcpb-hash-missing"] and not missing.passed
    bad = await check_packages({"packages": [mcpb(sha="XYZ")]}, fetch=fetch)
    assert [f.rule for f in bad.findings] == ["packages.mcpb-hash-invalid"]
    assert fetch.calls == []  # nothing to compare with: not downloaded


@pytest.mark.parametrize(("answer", "rule", "severity", "passed"), [
    (FetchFailed("cannot connect to github.com"), "packages.mcpb-unreachable", "medium", True),
    ((404, b"not found"), "packages.mcpb-unreachable", "medium", True),
    (FetchFailed("response exceeds max_bytes 1000"), "packages.mcpb-too-large", "medium", True),
    (UnsafeUrl("github.com resolves to a private address 10.0.0.1"), "packages.mcpb-unsafe-url", "high", False),
])
async def test_mcpb_unreachable_is_recorded(answer: object, rule: str, severity: str, passed: bool) -> None:
    result = await check_packages({"packages": [mcpb()]}, fetch=Fetcher({URL: answer}))
    (finding,) = result.findings
    assert (finding.rule, finding.severity) == (rule, severity)
    assert result.passed is passed
    assert result.evidence["packages"][0]["reachable"] is False


async def test_injected_fetch_still_gets_the_size_limit() -> None:
    result = await check_packages({"packages": [mcpb()]}, fetch=Fetcher({URL: BUNDLE}), max_bytes=100)
    assert [f.rule for f in result.findings] == ["packages.mcpb-too-large"]


async def test_default_fetch_refuses_loopback_bundles() -> None:
    result = await check_packages({"packages": [mcpb(identifier="https://127.0.0.1/server.mcpb")]})
    assert [f.rule for f in result.findings] == ["packages.mcpb-unsafe-url"]
    assert "loopback" in result.findings[0].message


# --------------------------------------------------------------------------- the real client's limits


class _Bundle(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's interface
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(len(BUNDLE)))
        self.end_headers()
        self.wfile.write(BUNDLE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def bundle_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bundle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join(timeout=5)


async def test_size_limit_of_the_safe_client(bundle_server: int) -> None:
    url = f"http://127.0.0.1:{bundle_server}/server.mcpb"
    roomy = SafeHttpClient(allow_http=True, allow_private=True, max_bytes=len(BUNDLE))
    ok = await check_packages({"packages": [mcpb(identifier=url)]}, fetch=roomy.get)
    assert ok.passed and ok.evidence["packages"][0]["hash_matches"] is True
    tight = SafeHttpClient(allow_http=True, allow_private=True, max_bytes=len(BUNDLE) - 1)
    cut = await check_packages({"packages": [mcpb(identifier=url)]}, fetch=tight.get)
    assert [f.rule for f in cut.findings] == ["packages.mcpb-too-large"]
    assert "max_bytes" in cut.evidence["packages"][0]["error"]


async def test_other_package_hashes_are_noted_not_verified() -> None:
    result = await check_packages({"packages": [npm(fileSha256=BUNDLE_SHA)]}, fetch=Fetcher({}))
    assert result.passed and [(f.rule, f.severity) for f in result.findings] == [("packages.hash-not-verified", "info")]
    none = await check_packages({"name": "a/b"})
    assert none.passed and [f.rule for f in none.findings] == ["packages.none"]
