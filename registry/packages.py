"""Review check 8: package facts.

For each ``packages[]`` entry of a submitted ``server.json``:

* the version is pinned exactly: present, not ``latest`` or another dist-tag, not a range
  (``^1.2``, ``~1``, ``>=1``, ``1.x``, ``1.*``, ``1 - 2``, ``a || b``); for OCI images the tag
  in the identifier (or a ``@sha256:`` digest) counts, ``:latest`` does not;
* for ``registryType: "mcpb"`` the bundle (``identifier`` is its URL) is downloaded through the
  SSRF-safe client under a size limit and its SHA-256 compared with ``fileSha256``. A mismatch
  is critical: the file served is not the file that was reviewed. An unreachable file is
  recorded (``reachable: false``) but does not fail the check — the hash is verified again
  wherever the bundle is installed.

The download goes through an injectable ``fetch`` (``async (url) -> SafeResponse``), the
production one being :meth:`SafeHttpClient.get` with ``max_bytes`` = 64 MiB and 60 s.

Finding rules (severity): ``packages.version-missing`` (high), ``packages.version-not-pinned``
(high), ``packages.mcpb-hash-missing`` (high), ``packages.mcpb-hash-invalid`` (high),
``packages.mcpb-hash-mismatch`` (critical), ``packages.mcpb-unsafe-url`` (high),
``packages.mcpb-unreachable`` (medium), ``packages.mcpb-too-large`` (medium),
``packages.hash-not-verified`` (info: a non-MCPB package with ``fileSha256``),
``packages.invalid`` (high), ``packages.none`` (info).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kontor.gateway.safehttp import FetchFailed, SafeHttpClient, SafeResponse, UnsafeUrl
from kontor.registry.checks.findings import CheckResult, Finding, finding

__all__ = ["CHECK_ID", "DEFAULT_MAX_BUNDLE_BYTES", "Fetch", "check_packages", "version_problem"]

CHECK_ID = "packages"
DEFAULT_MAX_BUNDLE_BYTES = 64 * 1024 * 1024
Fetch = Callable[[str], Awaitable[SafeResponse]]

_RANGE_CHARS = re.compile(r"[\^~<>=*|,\s]")
_WILDCARD_PART = re.compile(r"(^|[.\-+])[xX*](?=$|[.\-+])")
_SHA256 = re.compile(r"^[a-f0-9]{64}$")


def version_problem(version: Any) -> str | None:
    """Why ``version`` is not one exact version, or None. (Non-semver exact versions are accepted.)"""
    if not isinstance(version, str) or not version.strip():
        return "no version"
    text = version.strip()
    if text.lower() in ("latest", "next", "stable", "current", "newest", "*", "x"):
        return f"{text!r} is a moving tag, not a version"
    if " - " in text or "||" in text:
        return f"{text!r} is a version range"
    if _RANGE_CHARS.search(text):
        return f"{text!r} is a version range or constraint"
    if _WILDCARD_PART.search(text):
        return f"{text!r} contains a wildcard component"
    if not any(ch.isdigit() for ch in text):
        return f"{text!r} looks like a dist-tag, not a version"
    return None


def _oci_reference(identifier: str) -> tuple[str | None, str | None]:
    """(tag, digest) of an OCI image reference."""
    name, _, digest = identifier.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    return tag, digest or None


def default_fetch(max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES, timeout_s: float = 60.0) -> tuple[Fetch, SafeHttpClient]:
    client = SafeHttpClient(max_bytes=max_bytes, timeout_s=timeout_s, max_redirects=5)
    return client.get, client


async def check_packages(
    server: Mapping[str, Any],
    *,
    fetch: Fetch | None = None,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    download: bool = True,
) -> CheckResult:
    """Check every ``packages[]`` entry of ``server`` (a parsed server.json)."""
    started = time.monotonic()
    if fetch is None:
        fetch, _ = default_fetch(max_bytes)
    packages = server.get("packages") or []
    findings: list[Finding] = []
    reports: list[dict[str, Any]] = []
    if not isinstance(packages, list):
        findings.append(finding("packages.invalid", "high", "packages must be a list", field="$.packages"))
        packages = []
    if not packages:
        findings.append(finding("packages.none", "info", "no packages[] entries: nothing to check",
                                field="$.packages"))
    for index, package in enumerate(packages):
        report, found = await _check_package(package, index, fetch, max_bytes, download)
        reports.append(report)
        findings.extend(found)
    evidence = {"packages": reports, "limits": {"max_bytes": max_bytes}, "timings": {"total_ms": _ms(started)}}
    return CheckResult.of(CHECK_ID, evidence, findings)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


async def _check_package(package: Any, index: int, fetch: Fetch, max_bytes: int,
                         download: bool) -> tuple[dict[str, Any], list[Finding]]:
    path = f"$.packages[{index}]"
    report: dict[str, Any] = {"index": index}
    findings: list[Finding] = []
    if not isinstance(package, Mapping) or not isinstance(package.get("identifier"), str):
        findings.append(finding("packages.invalid", "high", "package has no identifier", field=path))
        return report, findings
    registry = str(package.get("registryType", "")).lower()
    identifier = package["identifier"]
    version = package.get("version")
    report.update({"registryType": registry, "identifier": identifier, "version": version})

    # Exact version.
    if registry == "mcpb":
        # The bundle URL and its hash pin it; a version is informative only.
        problem = version_problem(version) if version is not None else None
        report["pinned_by"] = "fileSha256"
    elif registry == "oci":
        tag, digest = _oci_reference(identifier)
        report.update({"tag": tag, "digest": digest})
        if digest:
            problem, report["pinned_by"] = None, "digest"
        elif version is not None:
            problem, report["pinned_by"] = version_problem(version), "version"
        elif tag is not None:
            problem, report["pinned_by"] = version_problem(tag), "tag"
        else:
            problem = "no version, tag or digest (an untagged image means :latest)"
    else:
        problem = version_problem(version)
        report["pinned_by"] = "version"
    report["version_pinned"] = problem is None
    if problem is not None:
        rule = "packages.version-missing" if problem.startswith("no version") else "packages.version-not-pinned"
        findings.append(finding(rule, "high", f"{registry or 'package'} {identifier}: {problem}; "
                                "pin one exact version", field=f"{path}.version"))

    expected = package.get("fileSha256")
    if registry != "mcpb":
        if expected is not None:
            findings.append(finding("packages.hash-not-verified", "info",
                                    f"fileSha256 of {registry} package {identifier} is not verified by the review "
                                    "(only MCPB bundles are downloaded)", field=f"{path}.fileSha256"))
        return report, findings

    # MCPB: download and hash.
    report["fileSha256"] = expected
    if not isinstance(expected, str) or not expected:
        findings.append(finding("packages.mcpb-hash-missing", "high",
                                f"MCPB bundle {identifier} has no fileSha256", field=f"{path}.fileSha256"))
        return report, findings
    expected = expected.strip().lower()
    if not _SHA256.match(expected):
        findings.append(finding("packages.mcpb-hash-invalid", "high",
                                "fileSha256 must be 64 lower-case hex digits", field=f"{path}.fileSha256"))
        return report, findings
    if not download:
        report["reachable"] = None
        return report, findings
    started = time.monotonic()
    try:
        response = await fetch(identifier)
    except UnsafeUrl as exc:
        report.update({"reachable": False, "refused": exc.reason, "download_ms": _ms(started)})
        findings.append(finding("packages.mcpb-unsafe-url", "high", f"{identifier}: {exc.reason}",
                                field=f"{path}.identifier"))
        return report, findings
    except FetchFailed as exc:
        report.update({"reachable": False, "error": exc.reason, "download_ms": _ms(started)})
        too_large = "max_bytes" in exc.reason
        findings.append(finding("packages.mcpb-too-large" if too_large else "packages.mcpb-unreachable", "medium",
                                f"{identifier}: {exc.reason}; fileSha256 not verified", field=f"{path}.identifier"))
        return report, findings
    report.update({"download_ms": _ms(started), "status": response.status, "final_url": response.url})
    if not response.ok:
        report["reachable"] = False
        findings.append(finding("packages.mcpb-unreachable", "medium",
                                f"{identifier}: HTTP {response.status}; fileSha256 not verified",
                                field=f"{path}.identifier"))
        return report, findings
    if len(response.content) > max_bytes:  # an injected fetch may not enforce the limit itself
        report["reachable"] = False
        findings.append(finding("packages.mcpb-too-large", "medium",
                                f"{identifier}: {len(response.content)} bytes, more than {max_bytes}; "
                                "fileSha256 not verified", field=f"{path}.identifier"))
        return report, findings
    actual = hashlib.sha256(response.content).hexdigest()
    report.update({"reachable": True, "bytes": len(response.content), "actualSha256": actual,
                   "hash_matches": actual == expected})
    if actual != expected:
        findings.append(finding("packages.mcpb-hash-mismatch", "critical",
                                f"{identifier}: SHA-256 of the downloaded file is {actual}, "
                                f"server.json declares {expected}", field=f"{path}.fileSha256"))
    return report, findings
