"""The automated review of a submitted server version (issue 4, section 3): all eight checks, one outcome.

:func:`run_review` runs the checks in this order, each one *guarded* — an exception in a check
(or a check running past its time limit) becomes a finding of that check
(``<check>.check-error`` / ``<check>.check-timeout``, both ``high``) instead of ending the
review, so a reviewer always gets a report and never an approval on missing evidence:

1. ``server_json`` — schema and semantic validation (:func:`kontor.registry.server_json.validate_server_json`);
   every problem becomes a ``server_json.<rule>`` finding with its JSON path as the field. When the
   document has any problem the review **stops here**: nothing is fetched or run for a document
   that cannot be published as it is, and the other checks are reported as ``skipped``.
2. ``namespace`` — ownership of the name's namespace. Already proven (the name lies in one of
   ``publisher_namespaces``, ``com.example.*`` patterns included) → one ``namespace.already-proven``
   info finding and no lookup. Otherwise each supplied proof is verified
   (:class:`kontor.registry.ownership.OwnershipChecker`); the first that verifies proves the
   namespace (:attr:`ReviewOutcome.proven_namespace`, for the registry to record *how*). None
   verifies, or none was supplied → ``namespace.not-owned`` (critical), with the failed proofs'
   own findings beside it.
3. ``endpoints`` — every remote through the SSRF-safe client (:func:`kontor.registry.endpoints.check_endpoints`).
4. ``snapshot`` — the live ``initialize``/``tools/list``/``prompts/list``/``resources/list`` of the
   first Streamable HTTP remote (through :func:`kontor.registry.snapshot.safe_streamable_http`:
   vetted and pinned by the SSRF-safe client) or of a package run in the sandbox via the injectable
   ``package_command``. A remote the endpoint check refused as unsafe is not connected to again
   (``snapshot.not-attempted``).
5. ``poisoning`` — every text of every snapshot tool (title, description, schema texts), the
   server's instructions, prompts, resources and resource templates, and the ``server.json``
   title and description.
6. ``shadowing`` — the snapshot's tool names and the server name against the first-party tools
   and servers and the other catalog entries.
7. ``annotations`` — the annotation policy; the scope each tool needs follows from its
   annotations exactly as the gateway derives it (:attr:`ReviewOutcome.required_scopes`).
8. ``packages`` — exact versions, and the MCPB ``fileSha256`` when the file is reachable.

**Pass/fail rule** (:data:`PASS_RULE`): a review *passes* when no finding of any check is
``high`` or ``critical`` **and** the live snapshot succeeded (the tool listing completed, so
there is an approved set of tool definitions to pin). Everything else fails — including a
server whose tools could not be listed at all, whatever else it looks like. The **risk label** is
:func:`kontor.registry.checks.report.risk_label` over all findings (see :data:`RISK_RULE`).
Whether a failed review means ``checks_failed`` is the lifecycle's decision; this module stores
nothing.

Inject clients, transports and limits through :class:`ReviewConfig`; its defaults are the
production ones (SSRF-safe clients with public addresses only, the sandbox policy's limits).
"""

from __future__ import annotations

import hashlib
import ssl
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import anyio

from kontor.gateway.pinning import canonical_json
from kontor.gateway.safehttp import SafeHttpClient
from kontor.registry.checks.annotations import check_annotations, tool_policies
from kontor.registry.checks.findings import FAILING_SEVERITIES, CheckResult, Finding, finding
from kontor.registry.checks.poisoning import scan_server, scan_server_metadata, tool_texts
from kontor.registry.checks.report import CHECK_ORDER, RISK_RULE, build_report, problem_findings
from kontor.registry.checks.shadowing import check_shadowing
from kontor.registry.endpoints import check_endpoints, default_endpoint_client, expand_url_template
from kontor.registry.ownership import OwnershipChecker, OwnershipProof
from kontor.registry.packages import DEFAULT_MAX_BUNDLE_BYTES, Fetch, check_packages
from kontor.registry.sandbox import SandboxPolicy
from kontor.registry.server_json import MAX_DOCUMENT_BYTES, namespace_allowed, validate_server_json
from kontor.registry.snapshot import TransportFactory, check_snapshot, safe_streamable_http

__all__ = [
    "CHECKS",
    "PASS_RULE",
    "RISK_RULE",
    "SNAPSHOT_FORMAT",
    "PackageCommand",
    "ReviewConfig",
    "ReviewOutcome",
    "gateway_name_for",
    "run_review",
    "snapshot_from_evidence",
]

CHECKS = CHECK_ORDER  # server_json, namespace, endpoints, snapshot, poisoning, shadowing, annotations, packages
PASS_RULE = ("A review passes when no finding of any check is high or critical and the live snapshot succeeded "
             "(the tools could be listed). Anything else fails, including a server whose tools could not be listed.")
SNAPSHOT_FORMAT = "kontor.registry.tool-snapshot/1"
MiB = 1024 * 1024
CONTEXT_CHARS = 80  # characters of the field's text shown before and after a finding's span
MAX_MATCH_CHARS = 400

#: ``package -> command`` that runs an already installed package's server, or None when it cannot.
PackageCommand = Callable[[Mapping[str, Any]], Sequence[str] | None]
# Endpoint findings after which the snapshot does not connect to that remote again.
_REFUSED_ENDPOINT_RULES = frozenset({"endpoints.unsafe-target", "endpoints.unsafe-redirect", "endpoints.not-https"})


@dataclass(frozen=True)
class ReviewConfig:
    """What :func:`run_review` talks to, and its limits. The defaults are production's.

    * ``endpoint_client`` — the SSRF-safe client of check 3 (default
      :func:`kontor.registry.endpoints.default_endpoint_client`: https, public addresses, 256 KiB, 10 s);
    * ``snapshot_client`` — the SSRF-safe client that vets and pins the remote of check 4 (default: the
      production rules with ``snapshot_timeout_s``); ``snapshot_ssl_context`` the TLS trust of that
      connection (default certifi); ``transport_factory`` replaces the whole transport (tests);
    * ``package_command``/``package_env``/``sandbox_policy`` — how a package's server is run in the sandbox;
    * ``ownership_checker`` — verifies namespace proofs. Keep **one** instance for the registry (it holds
      the replay guard); the default builds one per review with the production verifiers;
    * ``package_fetch`` — downloads MCPB bundles (default: the SSRF-safe client, ``max_bundle_bytes``, 60 s);
    * ``check_timeout_s`` — the guard around every check but the snapshot, whose guard is its own
      limit plus ``sandbox_policy.wall_clock_s`` plus a margin.
    """

    endpoint_client: SafeHttpClient | None = None
    endpoint_headers: Mapping[str, str] | None = None
    probe_endpoints: bool = True
    snapshot_client: SafeHttpClient | None = None
    snapshot_ssl_context: ssl.SSLContext | None = None
    snapshot_headers: Mapping[str, str] | None = None
    transport_factory: TransportFactory | None = None
    snapshot_timeout_s: float = 30.0
    snapshot_max_response_bytes: int = 8 * MiB
    package_command: PackageCommand | None = None
    package_env: Mapping[str, str] | None = None
    sandbox_policy: SandboxPolicy = field(default_factory=SandboxPolicy)
    ownership_checker: OwnershipChecker | None = None
    package_fetch: Fetch | None = None
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    download_packages: bool = True
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    check_timeout_s: float = 60.0

    def with_(self, **changes: Any) -> ReviewConfig:
        """A copy with ``changes`` (the config is frozen)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class ReviewOutcome:
    """The result of one review run (frozen; the dicts inside are the caller's to store, not to mutate).

    ``passed`` follows :data:`PASS_RULE`; ``risk_label`` is ``low`` | ``medium`` | ``high`` | ``critical``;
    ``report`` is the JSON evidence report (:func:`kontor.registry.checks.report.build_report` plus every
    check's evidence, duration and status, a ``review`` block with the verdict and rules, and a ``snapshot``
    summary); ``snapshot`` the live snapshot to store (see :func:`snapshot_from_evidence`), None when the
    tools could not be listed; ``required_scopes`` tool name → the scope a call needs; ``proven_namespace``
    the proof that verified in this run (None when already proven or not proven).
    """

    passed: bool
    risk_label: str
    report: dict[str, Any]
    snapshot: dict[str, Any] | None
    required_scopes: dict[str, str]
    findings: tuple[Finding, ...] = ()
    results: tuple[CheckResult, ...] = ()
    document: dict[str, Any] | None = None
    server_name: str | None = None
    version: str | None = None
    gateway_name: str | None = None
    proven_namespace: dict[str, Any] | None = None
    snapshot_succeeded: bool = False
    stopped_after: str | None = None

    @property
    def risk(self) -> str:
        """The same as :attr:`risk_label` (the name the store reads)."""
        return self.risk_label

    @property
    def tools(self) -> dict[str, dict[str, Any]]:
        """Tool name → ``{"name", "hash", "definition"}`` of the snapshot (empty without one)."""
        return {t["name"]: t for t in (self.snapshot or {}).get("tools") or ()}

    def rules(self) -> list[str]:
        """Every finding's rule, check by check (in the order the checks ran)."""
        return [f.rule for f in self.findings]

    def failing_rules(self) -> list[str]:
        """The rules of the high and critical findings (the reasons a review fails), without repeats."""
        return list(dict.fromkeys(f.rule for f in self.findings if f.severity in FAILING_SEVERITIES))

    def result(self, check: str) -> CheckResult | None:
        return next((r for r in self.results if r.check == check), None)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "risk": self.risk_label, "server": self.server_name,
                "version": self.version, "gateway_name": self.gateway_name,
                "required_scopes": dict(self.required_scopes), "proven_namespace": self.proven_namespace,
                "snapshot": self.snapshot, "report": self.report}


# --------------------------------------------------------------------------- helpers


def gateway_name_for(server_name: str | None) -> str:
    """The gateway's short server name derived from a ``server.json`` name (``io.github.alice/Weather_MCP`` →
    ``weather-mcp``): the name part, lower case, runs of other characters as ``-``, starting with a letter,
    at most 24 characters (:func:`kontor.gateway.naming.validate_server_name`). The scopes in the report use
    it; an installation under another name derives its scopes the same way."""
    part = (server_name or "").rsplit("/", 1)[-1].lower()
    slug = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "-") else "-" for ch in part)
    while "--" in slug:
        slug = slug.replace("--", "-")
    slug = slug.lstrip("-0123456789")[:24].rstrip("-")
    return slug or "server"


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _error_result(check: str, rule: str, message: str, **evidence: Any) -> CheckResult:
    return CheckResult.of(check, {"error": message, **evidence}, [finding(f"{check}.{rule}", "high", message)])


async def _guarded(check: str, timeout_s: float,
                   run: Callable[[], Awaitable[CheckResult]]) -> tuple[CheckResult, float]:
    """Run one check; an exception or a timeout becomes a ``high`` finding of that check."""
    started = time.monotonic()
    try:
        with anyio.move_on_after(timeout_s) as scope:
            result = await run()
        if scope.cancelled_caught:
            result = _error_result(check, "check-timeout",
                                   f"the {check} check did not finish within {timeout_s:g} s; the review is incomplete")
    except Exception as exc:  # noqa: BLE001 - a crashing check must not end the review
        frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
        result = _error_result(check, "check-error",
                               f"the {check} check failed with {type(exc).__name__}: {str(exc)[:300]}; "
                               "the review is incomplete", exception=type(exc).__name__,
                               traceback="".join(frames)[-4000:])
    return result, _ms(started)


async def _in_thread(fn: Callable[[], CheckResult]) -> CheckResult:
    """CPU-bound checks (regexes over every text) off the event loop."""
    return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)


def _as_proof(proof: OwnershipProof | Mapping[str, Any]) -> OwnershipProof:
    return proof if isinstance(proof, OwnershipProof) else OwnershipProof.from_dict(proof)


def _matching_namespace(name: str, namespaces: Iterable[str]) -> str | None:
    for ns in namespaces:
        if namespace_allowed(name, [ns]):
            return ns
    return None


def snapshot_from_evidence(evidence: Mapping[str, Any], *, gateway_name: str | None = None) -> dict[str, Any]:
    """The storable snapshot from a snapshot check's evidence.

    ``{"format", "source", "target", "protocolVersion", "serverInfo", "instructions", "instructions_hash",
    "tools": [{"name", "hash": <pinning.definition_hash>, "definition": <as the server sent it>}, …],
    "tool_hashes": {name: hash}, "prompts", "resources", "resourceTemplates", "gateway_name",
    "snapshot_hash"}`` — ``tools`` in the server's order and in the snapshot check's own entry shape (what the
    store reads); ``snapshot_hash`` is the sha256 of the canonical JSON of the tool hashes and the instructions
    hash, so two snapshots with the same pins have the same hash.
    """
    tools = [{"name": t["name"], "hash": t["hash"], "definition": t["definition"]}
             for t in evidence.get("tools") or [] if isinstance(t, Mapping)]
    hashes = {entry["name"]: entry["hash"] for entry in tools}
    ihash = evidence.get("instructions_hash")
    return {
        "format": SNAPSHOT_FORMAT,
        "source": evidence.get("source"),
        "target": evidence.get("target"),
        "protocolVersion": evidence.get("protocolVersion"),
        "serverInfo": evidence.get("serverInfo"),
        "instructions": evidence.get("instructions"),
        "instructions_hash": ihash,
        "tools": tools,
        "tool_hashes": hashes,
        "prompts": evidence.get("prompts"),
        "resources": evidence.get("resources"),
        "resourceTemplates": evidence.get("resourceTemplates"),
        "gateway_name": gateway_name,
        "snapshot_hash": hashlib.sha256(canonical_json({"tools": hashes, "instructions": ihash})).hexdigest(),
    }


def _snapshot_ok(result: CheckResult | None) -> bool:
    return result is not None and result.passed and "tools" in result.evidence


def _chosen_remote(doc: Mapping[str, Any]) -> int | None:
    """The ``remotes[]`` index :func:`check_snapshot` connects to (first Streamable HTTP with a concrete URL)."""
    for index, remote in enumerate(doc.get("remotes") or []):
        if isinstance(remote, Mapping) and remote.get("type") == "streamable-http" and isinstance(remote.get("url"),
                                                                                                  str):
            _, missing = expand_url_template(remote["url"], remote.get("variables"))
            if not missing:
                return index
    return None


def _texts(doc: Mapping[str, Any] | None, tools: list[dict[str, Any]], evidence: Mapping[str, Any]
           ) -> dict[tuple[str | None, str], str]:
    """(tool, field) → the original text, for every field a finding can point into (the report's context)."""
    texts: dict[tuple[str | None, str], str] = {}
    for tool in tools:
        name = tool.get("name") if isinstance(tool.get("name"), str) else None
        if name is None:
            continue
        texts[(name, "name")] = name
        for fld, text in tool_texts(tool):
            texts[(name, fld)] = text
    if isinstance(evidence.get("instructions"), str):
        texts[(None, "instructions")] = evidence["instructions"]
    for group in ("prompts", "resources", "resourceTemplates"):
        for item in evidence.get(group) or ():
            if not isinstance(item, Mapping):
                continue
            label = item.get("name") or item.get("uri") or item.get("uriTemplate") or "?"
            for key in ("title", "description"):
                if isinstance(item.get(key), str):
                    texts[(None, f"{group}[{label}].{key}")] = item[key]
            for i, arg in enumerate(item.get("arguments") or ()):
                if isinstance(arg, Mapping) and isinstance(arg.get("description"), str):
                    texts[(None, f"{group}[{label}].arguments[{i}].description")] = arg["description"]
    if isinstance(doc, Mapping):
        for key in ("title", "description", "name"):
            if isinstance(doc.get(key), str):
                texts[(None, f"server.{key}")] = doc[key]
    return texts


def _context(text: str, start: int, end: int) -> dict[str, Any]:
    lo, hi = max(0, start - CONTEXT_CHARS), min(len(text), end + CONTEXT_CHARS)
    match = text[start:end]
    return {"before": text[lo:start], "match": match[:MAX_MATCH_CHARS], "after": text[end:hi],
            "cut_before": lo > 0, "cut_match": len(match) > MAX_MATCH_CHARS, "cut_after": hi < len(text)}


# --------------------------------------------------------------------------- the checks


def _validate(server_json: Mapping[str, Any] | bytes | bytearray | str, config: ReviewConfig) -> CheckResult:
    validation = validate_server_json(server_json, namespaces=None, max_bytes=config.max_document_bytes)
    evidence: dict[str, Any] = {"valid": validation.ok, "problems": [p.to_dict() for p in validation.problems],
                                "max_document_bytes": config.max_document_bytes,
                                "document": validation.document}
    if isinstance(server_json, bytes | bytearray | str):
        evidence["bytes"] = len(server_json if isinstance(server_json, bytes | bytearray)
                                else server_json.encode("utf-8", "surrogatepass"))
    return CheckResult.of("server_json", evidence, problem_findings(validation.problems))


async def _namespace(name: str, publisher_namespaces: Sequence[str],
                     proofs: Sequence[OwnershipProof | Mapping[str, Any]], config: ReviewConfig
                     ) -> tuple[CheckResult, dict[str, Any] | None]:
    namespace = name.split("/", 1)[0]
    evidence: dict[str, Any] = {"namespace": namespace, "publisher_namespaces": list(publisher_namespaces)}
    matched = _matching_namespace(name, publisher_namespaces)
    if matched is not None:
        evidence.update({"status": "already-proven", "matched": matched})
        return CheckResult.of("namespace", evidence, [finding(
            "namespace.already-proven", "info",
            f"namespace {namespace} was already proven by this publisher ({matched}); no new proof needed",
            field="$.name")]), None
    attempts: list[dict[str, Any]] = []
    failed: list[Finding] = []
    checker = config.ownership_checker or OwnershipChecker()
    for proof in map(_as_proof, proofs):
        result = await checker.check(name, proof)
        attempts.append({"method": proof.method, "domain": proof.domain, "passed": result.passed,
                         "evidence": result.evidence, "findings": [f.to_dict() for f in result.findings]})
        if result.passed:
            proven = {"namespace": namespace, "method": proof.method, "domain": result.evidence.get("domain"),
                      "grants": result.evidence.get("grants"), "key": result.evidence.get("matched_key")}
            evidence.update({"status": "proven", "proof": proven, "attempts": attempts})
            return CheckResult.of("namespace", evidence, [
                *result.findings,
                finding("namespace.proven", "info", f"namespace {namespace} proven by a {proof.method} proof "
                        f"for {proven['domain']}", field="$.name")]), proven
        failed.extend(result.findings)
    evidence.update({"status": "not-owned", "attempts": attempts})
    why = (f"none of the {len(attempts)} proof(s) verified" if attempts else "no ownership proof was supplied")
    owned = ", ".join(publisher_namespaces) or "none"
    return CheckResult.of("namespace", evidence, [*failed, finding(
        "namespace.not-owned", "critical",
        f"namespace {namespace} is not one of the publisher's proven namespaces ({owned}) and {why}; prove it "
        "with an HTTPS (/.well-known/mcp-registry-auth) or DNS TXT proof", field="$.name")]), None


async def _snapshot(doc: Mapping[str, Any], endpoints: CheckResult | None, config: ReviewConfig) -> CheckResult:
    index = _chosen_remote(doc)
    if index is not None and endpoints is not None:
        prefix = f"$.remotes[{index}]"
        refused = [f for f in endpoints.findings if f.rule in _REFUSED_ENDPOINT_RULES and f.field.startswith(prefix)]
        if refused:
            return CheckResult.of("snapshot", {"target": None, "source": prefix, "skipped": "endpoint refused"}, [
                finding("snapshot.not-attempted", "medium",
                        f"not connected: the endpoint check refused {prefix} ({refused[0].rule}); "
                        "the tools could not be listed", field=f"{prefix}.url",
                        evidence={"endpoint_rule": refused[0].rule})])
    client = config.snapshot_client or SafeHttpClient(timeout_s=config.snapshot_timeout_s)
    factory = config.transport_factory
    if factory is None:
        factory = partial(_default_transport, client=client, config=config)
    return await check_snapshot(doc, client=client, transport_factory=factory,
                                package_command=config.package_command, package_env=config.package_env,
                                headers=config.snapshot_headers, policy=config.sandbox_policy,
                                timeout_s=config.snapshot_timeout_s)


async def _default_transport(url: str, headers: Mapping[str, str], *, client: SafeHttpClient,
                             config: ReviewConfig) -> Any:
    return await safe_streamable_http(url, headers, client=client, ssl_context=config.snapshot_ssl_context,
                                      max_response_bytes=config.snapshot_max_response_bytes,
                                      timeout_s=config.snapshot_timeout_s)


def _poisoning(doc: Mapping[str, Any], tools: list[dict[str, Any]], evidence: Mapping[str, Any],
               known_tools: set[str]) -> CheckResult:
    findings = scan_server(tools, instructions=evidence.get("instructions"), prompts=evidence.get("prompts") or (),
                           resources=evidence.get("resources") or (),
                           resource_templates=evidence.get("resourceTemplates") or (), known_tools=known_tools)
    findings += scan_server_metadata(doc)
    texts = sum(len(tool_texts(t)) for t in tools)
    return CheckResult.of("poisoning", {
        "tools_scanned": len(tools), "tool_texts_scanned": texts,
        "instructions_scanned": isinstance(evidence.get("instructions"), str),
        "prompts_scanned": len(evidence.get("prompts") or ()), "resources_scanned":
            len(evidence.get("resources") or ()) + len(evidence.get("resourceTemplates") or ()),
        "server_json_fields": [k for k in ("title", "description") if isinstance(doc.get(k), str)],
        "known_tools": len(known_tools), "snapshot_available": "tools" in evidence}, findings)


def _shadowing(name: str, tools: list[dict[str, Any]], first_party_tools: Mapping[str, list[str]],
               catalog_tools: Mapping[str, list[str]], catalog_servers: list[str]) -> CheckResult:
    findings = check_shadowing(tools=tools, server_name=name, first_party_tools=first_party_tools,
                               catalog_tools=catalog_tools, catalog_servers=catalog_servers)
    return CheckResult.of("shadowing", {
        "tools_compared": len(tools), "first_party_servers": sorted(first_party_tools),
        "first_party_tools": sum(len(v) for v in first_party_tools.values()),
        "catalog_entries": len(set(catalog_tools) | set(catalog_servers)),
        "catalog_tools": sum(len(v) for k, v in catalog_tools.items() if k != name)}, findings)


def _annotations(gateway_name: str, tools: list[dict[str, Any]]) -> CheckResult:
    policies = tool_policies(gateway_name, tools)
    return CheckResult.of("annotations", {"gateway_name": gateway_name, "policies": [p.to_dict() for p in policies],
                                          "scopes": sorted({p.scope for p in policies})},
                          check_annotations(gateway_name, tools))


# --------------------------------------------------------------------------- the pipeline


async def run_review(server_json: Mapping[str, Any] | bytes | bytearray | str, *,
                     publisher_namespaces: Iterable[str],
                     ownership_proofs: Sequence[OwnershipProof | Mapping[str, Any]] | None = None,
                     first_party_tools: Mapping[str, list[str]],
                     catalog_tools: Mapping[str, list[str]],
                     catalog_servers: Iterable[str] = (),
                     config: ReviewConfig | None = None,
                     gateway_name: str | None = None) -> ReviewOutcome:
    """Review one submitted ``server.json`` (see the module docstring for the checks and the pass rule).

    ``publisher_namespaces``: the namespaces the publisher has already proven (``com.example.*`` covers
    sub-namespaces); ``ownership_proofs``: new proofs (:class:`OwnershipProof` or their dict form) for the
    name's namespace; ``first_party_tools``: first-party server → its tool names; ``catalog_tools``: other
    catalog entry (``server.json`` name) → its tool names; ``catalog_servers``: further catalog entry names;
    ``gateway_name``: the short name the gateway will serve it under (default :func:`gateway_name_for`).
    """
    config = config or ReviewConfig()
    started = time.monotonic()
    publisher_namespaces = list(publisher_namespaces)
    catalog_servers = list(catalog_servers)
    results: dict[str, CheckResult] = {}
    durations: dict[str, float] = {}
    skipped: dict[str, str] = {}

    async def run(check: str, fn: Callable[[], Awaitable[CheckResult]], timeout_s: float | None = None) -> CheckResult:
        result, took = await _guarded(check, timeout_s or config.check_timeout_s, fn)
        results[check], durations[check] = result, took
        return result

    async def validate() -> CheckResult:
        return await _in_thread(lambda: _validate(server_json, config))

    first = await run("server_json", validate)
    document = first.evidence.get("document")
    doc: dict[str, Any] | None = document if isinstance(document, dict) else None
    name = doc.get("name") if doc and isinstance(doc.get("name"), str) else None
    version = doc.get("version") if doc and isinstance(doc.get("version"), str) else None
    gateway_name = gateway_name or gateway_name_for(name)
    proven: dict[str, Any] | None = None
    stopped_after: str | None = None
    snapshot_evidence: dict[str, Any] = {}
    tools: list[dict[str, Any]] = []

    if not first.passed or doc is None or name is None:
        stopped_after = "server_json"
        for check in CHECKS[1:]:
            skipped[check] = "not run: the server.json is invalid (fix the problems listed under server_json first)"
    else:
        async def namespace() -> CheckResult:
            nonlocal proven
            result, proven = await _namespace(name, publisher_namespaces, list(ownership_proofs or ()), config)
            return result

        await run("namespace", namespace)

        async def endpoints() -> CheckResult:
            return await check_endpoints(doc, client=config.endpoint_client or default_endpoint_client(),
                                         headers=config.endpoint_headers, probe=config.probe_endpoints)

        endpoint_result = await run("endpoints", endpoints)
        snapshot_limit = config.snapshot_timeout_s + config.sandbox_policy.wall_clock_s + 15.0
        snap = await run("snapshot", lambda: _snapshot(doc, endpoint_result, config), snapshot_limit)
        if "tools" in snap.evidence:
            snapshot_evidence = dict(snap.evidence)
            tools = [t["definition"] for t in snapshot_evidence.get("tools") or ()
                     if isinstance(t, Mapping) and isinstance(t.get("definition"), dict)]
        else:
            snapshot_evidence = {}

        known = {t for names in first_party_tools.values() for t in names}
        known |= {f"{server}__{t}" for server, names in first_party_tools.items() for t in names}
        known |= {t for server, names in catalog_tools.items() if server != name for t in names}
        await run("poisoning", lambda: _in_thread(lambda: _poisoning(doc, tools, snapshot_evidence, known)))
        await run("shadowing", lambda: _in_thread(lambda: _shadowing(
            name, tools, first_party_tools, catalog_tools, catalog_servers)))
        await run("annotations", lambda: _in_thread(lambda: _annotations(gateway_name, tools)))

        async def packages() -> CheckResult:
            return await check_packages(doc, fetch=config.package_fetch, max_bytes=config.max_bundle_bytes,
                                        download=config.download_packages)

        await run("packages", packages)

    ordered = [results[c] for c in CHECKS if c in results]
    findings = [f for r in ordered for f in r.findings]
    snapshot_ok = _snapshot_ok(results.get("snapshot"))
    passed = snapshot_ok and not any(f.severity in FAILING_SEVERITIES for f in findings)
    snapshot = snapshot_from_evidence(snapshot_evidence, gateway_name=gateway_name) if snapshot_ok else None
    policies = tool_policies(gateway_name, tools)  # whatever was listed, so the report shows each tool's scope
    scopes = {p.tool: p.scope for p in policies}

    report = build_report(findings, policies=policies, checks_run=list(results), server=name, version=version,
                          extra={"review": {
                              "passed": passed, "pass_rule": PASS_RULE, "snapshot_succeeded": snapshot_ok,
                              "stopped_after": stopped_after, "gateway_name": gateway_name,
                              "checks_run": list(results), "checks_skipped": dict(skipped),
                              "duration_ms": _ms(started), "timings_ms": dict(durations),
                              "failing_rules": list(dict.fromkeys(
                                  f.rule for f in findings if f.severity in FAILING_SEVERITIES))},
                              "snapshot": None if snapshot is None else {
                                  "snapshot_hash": snapshot["snapshot_hash"],
                                  "instructions_hash": snapshot["instructions_hash"],
                                  "tool_hashes": snapshot["tool_hashes"], "source": snapshot["source"]}})
    texts = _texts(doc, tools, snapshot_evidence)
    for check, entry in report["checks"].items():
        result = results.get(check)
        if result is not None:
            entry.update({"passed": result.passed, "duration_ms": durations.get(check),
                          "evidence": _public_evidence(check, result.evidence)})
        for item in entry["findings"]:
            span = item.get("span")
            text = texts.get((item.get("tool"), item.get("field")))
            if span and text is not None and 0 <= span["start"] <= span["end"] <= len(text):
                item["context"] = _context(text, span["start"], span["end"])
    for check in CHECKS:
        if check in skipped:
            report["checks"][check] = {"status": "skipped", "reason": skipped[check], "findings": []}
    report["checks"] = {c: report["checks"][c] for c in sorted(
        report["checks"], key=lambda c: CHECKS.index(c) if c in CHECKS else len(CHECKS))}

    return ReviewOutcome(
        passed=passed, risk_label=report["risk"]["label"], report=report, snapshot=snapshot,
        required_scopes=scopes, findings=tuple(findings), results=tuple(ordered), document=doc,
        server_name=name, version=version, gateway_name=gateway_name, proven_namespace=proven,
        snapshot_succeeded=snapshot_ok, stopped_after=stopped_after)


def _public_evidence(check: str, evidence: Mapping[str, Any]) -> dict[str, Any]:
    """A check's evidence for the report (the parsed document is stored with the version, not repeated)."""
    if check == "server_json":
        return {k: v for k, v in evidence.items() if k != "document"}
    return dict(evidence)
