"""Validation of a submitted ``server.json`` (the official MCP registry format), with every problem at once.

:func:`validate_server_json` takes the document as bytes, text or an already parsed mapping and
returns a :class:`ValidationResult` whose ``problems`` list *everything* wrong with it, each with a
JSON path (``$.packages[0].version``) and a message, in four stages:

1. **Limits** (before parsing): the whole document at most :data:`MAX_DOCUMENT_BYTES` (64 KiB) of
   UTF-8. A larger document is refused unread; nothing else is reported for it.
2. **JSON**: UTF-8 (a leading byte-order mark is tolerated), valid JSON (the message gives line and
   column), no ``NaN``/``Infinity``, no key repeated within one object (a reviewer and a client
   could otherwise read different values), nesting at most :data:`MAX_DEPTH` levels, every string
   (keys included) at most :data:`MAX_STRING_CHARS` characters, and the publisher-provided
   ``_meta`` extension at most 4 KiB as in the official registry.
3. **Schema**: the bundled 2025-12-11 schema (JSON Schema draft-07, ``jsonschema``'s
   ``Draft7Validator`` with a format checker; ``uri`` is checked as an absolute RFC 3986 URI).
   ``anyOf`` failures (transports, arguments) are reported for the alternative the document meant
   (the one whose ``type`` matches), not as one opaque "not valid under any of the given schemas".
4. **Semantics** (the official registry's publish-time rules plus Kontor's own, see
   :data:`SEMANTIC_RULES`): ``$schema`` is the 2025-12-11 URL; versions are exact, never ranges or
   ``latest``; the server name is well-formed and lies in one of the publisher's verified
   namespaces; remote URLs are https, not local, carry no credentials and use only declared
   ``{variables}``; packages come from a supported registry and pin what they run (an exact
   ``version`` for npm/PyPI/NuGet, a tag other than ``latest`` or a digest for OCI, ``fileSha256``
   for MCPB); website, icon and repository URLs are https.

A semantic rule that restates a schema constraint (name shape, ``latest``, URL syntax) is not
reported again at a path where the schema already objected.
Network facts (the remote is reachable, resolves to a public address, the MCPB file hash
matches, the namespace proof) are other checks of the review.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit

from jsonschema import Draft7Validator, FormatChecker
from jsonschema.exceptions import ValidationError

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_PUBLISHER_META_BYTES",
    "MAX_STRING_CHARS",
    "SCHEMA_FILE",
    "SCHEMA_URL",
    "SEMANTIC_RULES",
    "SUPPORTED_REGISTRY_TYPES",
    "Problem",
    "ValidationResult",
    "format_path",
    "load_schema",
    "namespace_allowed",
    "parse_server_json",
    "schema_problems",
    "semantic_problems",
    "validate_server_json",
    "version_problem",
]

SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
SCHEMA_FILE = "server.schema.2025-12-11.json"
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_STRING_CHARS = 4096
MAX_DEPTH = 32
MAX_PUBLISHER_META_BYTES = 4 * 1024
PUBLISHER_META_KEY = "io.modelcontextprotocol.registry/publisher-provided"
# The registry types the official registry accepts at publish time (internal/validators, model constants).
SUPPORTED_REGISTRY_TYPES = ("npm", "pypi", "nuget", "oci", "mcpb")
_VERSIONED_REGISTRY_TYPES = frozenset({"npm", "pypi", "nuget"})

Stage = Literal["limits", "json", "schema", "semantic"]

SEMANTIC_RULES: dict[str, str] = {
    "schema-missing": "$schema is required and must name the 2025-12-11 schema",
    "schema-unsupported": "$schema names a schema other than 2025-12-11",
    "invalid-server-name": "namespace and name must start and end with a letter or digit",
    "namespace-not-owned": "the server name lies outside the publisher's verified namespaces",
    "version-empty": "a version must not be empty",
    "version-reserved": "'latest' is reserved and cannot be a version",
    "version-range": "a version must be one exact version, not a range or wildcard",
    "title-blank": "a title must not be only whitespace",
    "website-url-invalid": "websiteUrl must be an absolute https URL",
    "icon-src-invalid": "icon src must be an absolute https URL",
    "repository-url-invalid": "repository url must be an https URL of the named forge",
    "repository-subfolder-invalid": "repository subfolder must be a clean relative path",
    "package-registry-type-unsupported": "registryType must be one of " + ", ".join(SUPPORTED_REGISTRY_TYPES),
    "package-identifier-invalid": "package identifier must not contain whitespace",
    "package-version-missing": "npm, pypi and nuget packages must pin an exact version",
    "package-oci-unpinned": "an OCI identifier must carry a tag other than 'latest' or a digest",
    "package-mcpb-sha256-missing": "an MCPB package must give fileSha256",
    "package-mcpb-url-invalid": "an MCPB identifier must be an https download URL",
    "package-registry-url-invalid": "registryBaseUrl must be an https URL",
    "package-transport-url-invalid": "a package's HTTP transport URL must be http(s) and use only declared variables",
    "package-transport-url-unexpected": "a stdio transport has no url",
    "argument-name-invalid": "a named argument's name must be a bare flag (no spaces, <, >, $)",
    "argument-value-starts-with-name": "a named argument's value/default must not repeat the flag",
    "remote-url-invalid": "a remote URL must be an absolute URL with a host",
    "remote-url-not-https": "a remote URL must use https",
    "remote-url-local": "a remote URL must not point at localhost, loopback, private or link-local addresses",
    "remote-url-credentials": "a remote URL must not embed user name or password",
    "remote-url-undefined-variable": "every {variable} in a remote URL must be declared in 'variables'",
    "publisher-meta-too-large": "the publisher-provided _meta extension is limited to 4 KiB",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (JSON path), what (message), which rule, found in which stage."""

    path: str
    message: str
    rule: str
    stage: Stage

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "rule": self.rule, "stage": self.stage}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class ValidationResult:
    """The parsed document (None when it could not be parsed) and every problem found."""

    document: dict[str, Any] | None
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_dict() for p in self.problems]}


# --------------------------------------------------------------------------------------------- paths

_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def format_path(parts: Iterable[str | int]) -> str:
    """``["packages", 0, "version"]`` → ``$.packages[0].version``; other keys as ``['io.x/y']``."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN_KEY.fullmatch(part):
            out.append(f".{part}")
        else:
            out.append("['" + str(part).replace("\\", "\\\\").replace("'", "\\'") + "']")
    return "".join(out)


# ---------------------------------------------------------------------------------------- parsing


class _Dup(dict):
    """A JSON object that remembers keys given more than once."""

    duplicates: tuple[str, ...] = ()


def _pairs(pairs: list[tuple[str, Any]]) -> _Dup:
    obj = _Dup()
    seen: list[str] = []
    for key, value in pairs:
        if key in obj and key not in seen:
            seen.append(key)
        obj[key] = value
    if seen:
        obj.duplicates = tuple(seen)
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_server_json(data: bytes | bytearray | str | Mapping[str, Any], *,
                      max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[Any, list[Problem]]:
    """Parse ``data`` within the limits; returns ``(document or None, problems of stages limits/json)``."""
    problems: list[Problem] = []
    if isinstance(data, Mapping):
        try:
            size = len(json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        except (TypeError, ValueError) as exc:
            return None, [Problem("$", f"the document is not JSON-serialisable: {exc}", "invalid-json", "json")]
        except RecursionError:
            return None, [Problem("$", f"nested more than {MAX_DEPTH} levels deep", "too-deep", "limits")]
        if size > max_bytes:
            return None, [_too_large(size, max_bytes)]
        doc: Any = json.loads(json.dumps(data, ensure_ascii=False))  # a private, plain-JSON copy
    else:
        raw = bytes(data) if isinstance(data, bytes | bytearray) else None
        size = len(raw) if raw is not None else len(str(data).encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return None, [_too_large(size, max_bytes)]
        if raw is not None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return None, [Problem("$", f"the document is not UTF-8 (byte {exc.start}: {exc.reason})",
                                      "invalid-encoding", "json")]
        else:
            text = str(data)
        text = text.removeprefix("\ufeff")
        try:
            doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            return None, [Problem("$", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                  "invalid-json", "json")]
        except RecursionError:
            return None, [Problem("$", f"nested more than {MAX_DEPTH} levels deep", "too-deep", "limits")]
        except ValueError as exc:  # NaN/Infinity, integers beyond Python's digit limit
            return None, [Problem("$", f"invalid JSON: {exc}", "invalid-json", "json")]
    problems.extend(_walk_limits(doc))
    return doc, problems


def _too_large(size: int, limit: int) -> Problem:
    return Problem("$", f"the document has {size} bytes, more than the limit of {limit} bytes",
                   "document-too-large", "limits")


def _walk_limits(doc: Any) -> Iterator[Problem]:
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            yield Problem(format_path(path), f"nested more than {MAX_DEPTH} levels deep", "too-deep", "limits")
            continue
        if isinstance(node, dict):
            for key in getattr(node, "duplicates", ()):
                yield Problem(format_path((*path, key)), "key given more than once in the same object",
                              "duplicate-key", "json")
            for key, value in node.items():
                if len(key) > MAX_STRING_CHARS:
                    yield Problem(format_path(path), f"a key is longer than {MAX_STRING_CHARS} characters",
                                  "string-too-long", "limits")
                stack.append((value, (*path, key)))
        elif isinstance(node, list):
            stack.extend((value, (*path, i)) for i, value in enumerate(node))
        elif isinstance(node, str) and len(node) > MAX_STRING_CHARS:
            yield Problem(format_path(path), f"the string has {len(node)} characters, more than {MAX_STRING_CHARS}",
                          "string-too-long", "limits")


# ------------------------------------------------------------------------------------------ schema


@cache
def load_schema() -> dict[str, Any]:
    """The bundled 2025-12-11 ``server.json`` schema (see ``registry/schema/NOTICE.md``)."""
    text = resources.files("kontor.registry.schema").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _is_uri(value: object) -> bool:
    """An absolute URI in RFC 3986 syntax (ASCII only, no spaces, ``%`` only as an escape)."""
    if not isinstance(value, str):
        return True  # formats only constrain strings
    return bool(_URI.fullmatch(value)) and not _BAD_PERCENT.search(value)


@cache
def _validator() -> Draft7Validator:
    checker = FormatChecker(formats=Draft7Validator.FORMAT_CHECKER.checkers.keys())
    checker.checks("uri")(_is_uri)
    schema = load_schema()
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=checker)


def schema_problems(document: Any) -> list[Problem]:
    """Every violation of the bundled schema, one :class:`Problem` per offending place."""
    out: list[Problem] = []
    for error in _validator().iter_errors(document):
        out.extend(_explain(error))
    return _dedupe(out)


def _explain(error: ValidationError) -> Iterator[Problem]:
    if error.validator in ("anyOf", "oneOf") and error.context:
        branch = _meant_branch(error)
        if branch is not None:
            for sub in branch:
                yield from _explain(sub)
            return
    yield _problem_of(error)


def _meant_branch(error: ValidationError) -> list[ValidationError] | None:
    """The errors of the alternative the document meant: the one its ``type`` does not contradict."""
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)

    def discriminator_failed(errors: list[ValidationError]) -> bool:
        return any(e.validator in ("enum", "const") and list(e.relative_path)[-1:] == ["type"] for e in errors)

    if all(e.validator == "required" for e in error.context or ()):
        return None  # "one of these properties is required": reported as such by the caller
    candidates = [errs for _, errs in sorted(branches.items()) if not discriminator_failed(errs)]
    if candidates:
        return min(candidates, key=len)
    return None  # no alternative has a matching type: the caller reports the type itself


def _problem_of(error: ValidationError) -> Problem:
    path = list(error.absolute_path)
    validator, expected, instance = error.validator, error.validator_value, error.instance
    rule = f"schema.{validator}"
    if validator == "required":
        missing = [p for p in expected if isinstance(instance, dict) and p not in instance]
        name = missing[0] if missing else expected
        for key in missing:  # iter_errors reports one error per missing property; keep the one it named
            if repr(key) in error.message:
                name = key
                break
        return Problem(format_path([*path, name]), "required property is missing", rule, "schema")
    if validator == "type":
        msg = f"must be of type {expected if isinstance(expected, str) else ' or '.join(expected)}"
    elif validator == "enum":
        msg = "must be one of: " + ", ".join(json.dumps(v) for v in expected)
    elif validator in ("anyOf", "oneOf"):
        kinds = _branch_types(error)
        if kinds and isinstance(instance, dict) and "type" in instance:
            shown = json.dumps(instance["type"], ensure_ascii=False)
            return Problem(format_path([*path, "type"]), f"{shown} must be one of: {', '.join(kinds)}",
                           rule, "schema")
        alternatives = [e.validator_value for e in error.context or () if e.validator == "required"]
        if alternatives and len(alternatives) == len(error.context or ()):
            names = ", ".join(n for group in alternatives for n in group)
            msg = f"needs one of the properties: {names}"
        else:
            msg = "does not match any allowed form"
    elif validator == "pattern":
        msg = f"does not match the pattern {expected}"
    elif validator == "maxLength":
        msg = f"is longer than {expected} characters"
    elif validator == "minLength":
        msg = "must not be empty" if expected == 1 else f"is shorter than {expected} characters"
    elif validator == "format":
        msg = f"is not a valid {expected}"
    elif validator == "not" and expected == {"const": "latest"}:
        msg = "'latest' is reserved and cannot be a version"
    else:
        msg = error.message if len(error.message) <= 300 else error.message[:299] + "…"
    if isinstance(instance, str) and validator in ("pattern", "format", "enum"):
        shown = instance if len(instance) <= 80 else instance[:79] + "…"
        msg = f"{json.dumps(shown, ensure_ascii=False)} {msg}"
    return Problem(format_path(path), msg, rule, "schema")


def _branch_types(error: ValidationError) -> list[str]:
    kinds: list[str] = []
    for sub in error.context or ():
        if sub.validator == "enum" and list(sub.relative_path)[-1:] == ["type"]:
            kinds.extend(str(v) for v in sub.validator_value if str(v) not in kinds)
    return kinds


def _dedupe(problems: Iterable[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out: list[Problem] = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


# --------------------------------------------------------------------------------------- semantics

_NAMESPACE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_NAME_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_RANGE_MARK = re.compile(r"[\^~<>=*|,]|\s")
_WILDCARD_PART = frozenset({"x", "X", "*"})
_TEMPLATE_VAR = re.compile(r"\{([^{}]*)\}")
_GITHUB_REPO = re.compile(r"https://(?:www\.)?github\.com/[\w.-]+/[\w.-]+/?")
_GITLAB_REPO = re.compile(r"https://(?:www\.)?gitlab\.com/[\w.-]+(?:/[\w.-]+)+/?")
_SUBFOLDER = re.compile(r"[A-Za-z0-9._/-]+")
_SHA256_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")


def version_problem(version: object) -> tuple[str, str] | None:
    """``(rule, message)`` when ``version`` is not one exact version, else None.

    Refused: empty, ``latest`` (any case), anything with whitespace or a range operator
    (``^ ~ < > = * | ,``, so ``^1.2``, ``~1``, ``>=1.0``, ``1.0 - 2.0``, ``1 || 2``), and wildcard
    components (``x``, ``1.x``, ``1.2.X``, ``*``). Non-semver exact versions (``2024.06.1``,
    ``v3``, ``1.0.0-beta.2``) are accepted, as in the official registry.
    """
    if not isinstance(version, str):
        return None  # the schema reports the type
    text = version.strip()
    if not text:
        return "version-empty", "a version must not be empty"
    if text.lower() == "latest":
        return "version-reserved", "'latest' is reserved; give the exact version"
    if _RANGE_MARK.search(version):
        return "version-range", f"{json.dumps(version)} looks like a version range; give one exact version"
    core = re.split(r"[-+]", text, maxsplit=1)[0]
    if any(part in _WILDCARD_PART for part in core.split(".")):
        return "version-range", f"{json.dumps(version)} contains a wildcard; give one exact version"
    return None


def _namespace_patterns(namespaces: Iterable[str]) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for ns in namespaces:
        ns = ns.strip().lower()
        if ns.endswith(".*"):
            out.append((ns[:-2], True))
        elif ns.endswith("/*"):
            out.append((ns[:-2], False))
        elif ns:
            out.append((ns, False))
    return out


def namespace_allowed(server_name: str, namespaces: Iterable[str]) -> bool:
    """True when ``server_name``'s namespace (before ``/``) is one the publisher verified.

    ``namespaces`` are reverse-DNS namespaces as proven (``io.github.alice``, ``com.example``),
    compared case-insensitively. An entry ending in ``.*`` (``com.example.*``) also covers every
    sub-namespace (``com.example.api``), as a DNS proof does in the official registry; a plain
    entry covers exactly itself, as an HTTP or GitHub proof does.
    """
    namespace = server_name.split("/", 1)[0].lower()
    for ns, subs in _namespace_patterns(namespaces):
        if namespace == ns or (subs and namespace.startswith(ns + ".")):
            return True
    return False


def _https_url_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"{json.dumps(value)} is not a valid URL ({exc})"
    if parts.scheme.lower() != "https" or not parts.hostname:
        return f"{json.dumps(value)} must be an absolute https URL"
    return None


def _substitute(url: str) -> str:
    """``url`` with ``{variables}`` replaced by harmless placeholders (a port position gets a number)."""
    url = re.sub(r":\{[^{}]*\}(?=/|$)", ":8080", url)
    return _TEMPLATE_VAR.sub("placeholder", url)


_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def _is_local_host(host: str) -> bool:
    host = host.rstrip(".").lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return not addr.is_global or addr.is_multicast


class _Semantics:
    def __init__(self, namespaces: Iterable[str] | None) -> None:
        self.namespaces = None if namespaces is None else list(namespaces)
        self.problems: list[Problem] = []

    def add(self, path: Iterable[str | int], rule: str, message: str) -> None:
        self.problems.append(Problem(format_path(path), message, rule, "semantic"))

    def run(self, doc: Mapping[str, Any]) -> None:
        self.schema_url(doc.get("$schema"))
        self.name(doc.get("name"))
        self.version(("version",), doc.get("version"))
        title = doc.get("title")
        if isinstance(title, str) and title and not title.strip():
            self.add(("title",), "title-blank", "title must not be only whitespace")
        self.https(("websiteUrl",), doc.get("websiteUrl"), "website-url-invalid")
        for i, icon in _items(doc.get("icons")):
            if isinstance(icon, Mapping):
                self.https(("icons", i, "src"), icon.get("src"), "icon-src-invalid")
        if isinstance(doc.get("repository"), Mapping):
            self.repository(doc["repository"])
        for i, pkg in _items(doc.get("packages")):
            if isinstance(pkg, Mapping):
                self.package(("packages", i), pkg)
        for i, remote in _items(doc.get("remotes")):
            if isinstance(remote, Mapping):
                self.remote(("remotes", i), remote)
        meta = doc.get("_meta")
        if isinstance(meta, Mapping) and PUBLISHER_META_KEY in meta:
            size = len(json.dumps(meta[PUBLISHER_META_KEY], ensure_ascii=False, separators=(",", ":")).encode())
            if size > MAX_PUBLISHER_META_BYTES:
                self.add(("_meta", PUBLISHER_META_KEY), "publisher-meta-too-large",
                         f"has {size} bytes, more than the {MAX_PUBLISHER_META_BYTES} allowed")

    def schema_url(self, value: object) -> None:
        if value is None:
            self.add(("$schema",), "schema-missing", f"required; use {SCHEMA_URL}")
        elif isinstance(value, str) and value != SCHEMA_URL:
            self.add(("$schema",), "schema-unsupported",
                     f"{json.dumps(value)} is not supported; only {SCHEMA_URL} is accepted")

    def name(self, name: object) -> None:
        if not isinstance(name, str) or name.count("/") != 1:
            return  # missing, wrong type or wrong shape: the schema pattern reports it
        namespace, part = name.split("/")
        if not _NAMESPACE.fullmatch(namespace):
            self.add(("name",), "invalid-server-name",
                     f"namespace {json.dumps(namespace)} must start and end with a letter or digit "
                     "and contain only letters, digits, dots and hyphens")
        elif not _NAME_PART.fullmatch(part):
            self.add(("name",), "invalid-server-name",
                     f"name {json.dumps(part)} must start and end with a letter or digit "
                     "and contain only letters, digits, dots, underscores and hyphens")
        if self.namespaces is not None and not namespace_allowed(name, self.namespaces):
            owned = ", ".join(sorted(self.namespaces)) or "none"
            self.add(("name",), "namespace-not-owned",
                     f"namespace {json.dumps(namespace)} is not one of the publisher's verified namespaces ({owned})")

    def version(self, path: tuple[str | int, ...], value: object) -> None:
        if value is None:
            return  # a missing required version is the schema's (top level) or the package rule's to report
        found = version_problem(value)
        if found:
            self.add(path, *found)

    def https(self, path: tuple[str | int, ...], value: object, rule: str) -> None:
        msg = _https_url_problem(value)
        if msg:
            self.add(path, rule, msg)

    def repository(self, repo: Mapping[str, Any]) -> None:
        url, source, sub = repo.get("url"), repo.get("source"), repo.get("subfolder")
        if isinstance(url, str):
            pattern = {"github": _GITHUB_REPO, "gitlab": _GITLAB_REPO}.get(source if isinstance(source, str) else "")
            if pattern is not None and not pattern.fullmatch(url):
                self.add(("repository", "url"), "repository-url-invalid",
                         f"{json.dumps(url)} is not an https URL of a {source} repository")
            elif pattern is None:
                self.https(("repository", "url"), url, "repository-url-invalid")
        if isinstance(sub, str) and sub:
            segments = sub.split("/")
            if not _SUBFOLDER.fullmatch(sub) or any(s in ("", ".", "..") for s in segments):
                self.add(("repository", "subfolder"), "repository-subfolder-invalid",
                         f"{json.dumps(sub)} must be a clean relative path "
                         "(no leading or trailing '/', no '.' or '..')")

    def package(self, path: tuple[str | int, ...], pkg: Mapping[str, Any]) -> None:
        kind, ident, version = pkg.get("registryType"), pkg.get("identifier"), pkg.get("version")
        if isinstance(kind, str) and kind not in SUPPORTED_REGISTRY_TYPES:
            self.add((*path, "registryType"), "package-registry-type-unsupported",
                     f"{json.dumps(kind)} is not supported; use one of {', '.join(SUPPORTED_REGISTRY_TYPES)}")
        if isinstance(ident, str) and (not ident.strip() or re.search(r"\s", ident)):
            self.add((*path, "identifier"), "package-identifier-invalid", "must be non-empty and contain no whitespace")
        self.version((*path, "version"), version)
        if kind in _VERSIONED_REGISTRY_TYPES and version is None:
            self.add((*path, "version"), "package-version-missing",
                     f"{kind} packages must pin the exact version to run")
        if kind == "oci" and isinstance(ident, str) and not _oci_pinned(ident):
            self.add((*path, "identifier"), "package-oci-unpinned",
                     f"{json.dumps(ident)} must carry an exact tag (not 'latest') or an @sha256 digest")
        if kind == "mcpb":
            if "fileSha256" not in pkg:
                self.add((*path, "fileSha256"), "package-mcpb-sha256-missing",
                         "an MCPB package must give the SHA-256 of its file")
            msg = _https_url_problem(ident)
            if msg:
                self.add((*path, "identifier"), "package-mcpb-url-invalid", msg)
        self.https((*path, "registryBaseUrl"), pkg.get("registryBaseUrl"), "package-registry-url-invalid")
        for key in ("runtimeArguments", "packageArguments"):
            for i, arg in _items(pkg.get(key)):
                if isinstance(arg, Mapping):
                    self.argument((*path, key, i), arg)
        transport = pkg.get("transport")
        if isinstance(transport, Mapping):
            self.package_transport((*path, "transport"), transport, _package_variables(pkg))

    def argument(self, path: tuple[str | int, ...], arg: Mapping[str, Any]) -> None:
        if arg.get("type") != "named" or not isinstance(arg.get("name"), str):
            return
        name = arg["name"]
        if not name or any(c in name for c in "<> $") or re.search(r"\s", name):
            self.add((*path, "name"), "argument-name-invalid",
                     f"{json.dumps(name)} must be a bare flag such as --port (no spaces, '<', '>' or '$')")
            return
        for key in ("value", "default"):
            value = arg.get(key)
            if isinstance(value, str) and value.startswith(name):
                self.add((*path, key), "argument-value-starts-with-name",
                         f"must not start with the flag {json.dumps(name)}; give only the value")

    def package_transport(self, path: tuple[str | int, ...], transport: Mapping[str, Any],
                          variables: set[str]) -> None:
        url = transport.get("url")
        if transport.get("type") == "stdio":
            if url not in (None, ""):
                self.add((*path, "url"), "package-transport-url-unexpected", "a stdio transport must not have a url")
            return
        if not isinstance(url, str):
            return
        parts = urlsplit(_substitute(url))
        undefined = sorted(set(_TEMPLATE_VAR.findall(url)) - variables)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add((*path, "url"), "package-transport-url-invalid", f"{json.dumps(url)} is not an http(s) URL")
        elif undefined:
            self.add((*path, "url"), "package-transport-url-invalid",
                     f"uses undefined variables {', '.join(undefined)}; declare them as arguments or "
                     "environment variables of the package")

    def remote(self, path: tuple[str | int, ...], remote: Mapping[str, Any]) -> None:
        url = remote.get("url")
        if not isinstance(url, str):
            return
        variables = remote.get("variables")
        declared = set(variables) if isinstance(variables, Mapping) else set()
        undefined = sorted(set(_TEMPLATE_VAR.findall(url)) - declared)
        if undefined:
            self.add((*path, "url"), "remote-url-undefined-variable",
                     f"uses undefined variables {', '.join(undefined)}; declare them in 'variables'")
        try:
            parts = urlsplit(_substitute(url))
            host = parts.hostname
        except ValueError as exc:
            self.add((*path, "url"), "remote-url-invalid", f"{json.dumps(url)} is not a valid URL ({exc})")
            return
        if not parts.scheme or not host:
            self.add((*path, "url"), "remote-url-invalid", f"{json.dumps(url)} is not an absolute URL with a host")
            return
        if parts.scheme.lower() != "https":
            self.add((*path, "url"), "remote-url-not-https", f"{json.dumps(url)} must use https")
        if parts.username is not None or parts.password is not None:
            self.add((*path, "url"), "remote-url-credentials",
                     "must not embed credentials; declare a secret header instead")
        if _is_local_host(host):
            self.add((*path, "url"), "remote-url-local",
                     f"{json.dumps(url)} points at a local, private or link-local address")


def _items(value: object) -> Iterator[tuple[int, Any]]:
    return enumerate(value) if isinstance(value, list) else iter(())


def _package_variables(pkg: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for env in pkg.get("environmentVariables") or ():
        if isinstance(env, Mapping) and isinstance(env.get("name"), str):
            names.add(env["name"])
    for key in ("runtimeArguments", "packageArguments"):
        for arg in pkg.get(key) or ():
            if isinstance(arg, Mapping):
                names.update(v for v in (arg.get("name"), arg.get("valueHint")) if isinstance(v, str) and v)
    return names


def _oci_pinned(ref: str) -> bool:
    if _SHA256_DIGEST.search(ref):
        return True
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return bool(tag) and tag.lower() != "latest"


def semantic_problems(document: Any, namespaces: Iterable[str] | None = None) -> list[Problem]:
    """The semantic rules (:data:`SEMANTIC_RULES`) on a parsed document; parts of the wrong type are skipped.

    ``namespaces`` are the publisher's verified namespaces (see :func:`namespace_allowed`); None skips
    the ownership rule (linting without a publisher), an empty collection means the publisher owns none.
    """
    if not isinstance(document, Mapping):
        return []
    sem = _Semantics(namespaces)
    sem.run(document)
    return sem.problems


# -------------------------------------------------------------------------------------------- all


# Semantic rules that restate a schema constraint: not repeated where the schema already objected.
_SCHEMA_OVERLAP = frozenset({"invalid-server-name", "version-empty", "version-reserved", "version-range",
                             "icon-src-invalid", "website-url-invalid", "repository-url-invalid"})


def validate_server_json(data: bytes | bytearray | str | Mapping[str, Any], *,
                         namespaces: Iterable[str] | None = None,
                         max_bytes: int = MAX_DOCUMENT_BYTES) -> ValidationResult:
    """Validate a ``server.json`` (bytes, text or parsed) and return every problem at once (see module doc)."""
    doc, problems = parse_server_json(data, max_bytes=max_bytes)
    if doc is None or any(p.rule == "too-deep" for p in problems):
        return ValidationResult(None, tuple(problems))
    schema = schema_problems(doc)
    flagged = {p.path for p in schema}
    semantic = [p for p in semantic_problems(doc, namespaces)
                if not (p.rule in _SCHEMA_OVERLAP and p.path in flagged)]
    document = doc if isinstance(doc, dict) else None
    return ValidationResult(_plain(document), tuple(problems + schema + semantic))


def _plain(doc: Any) -> Any:
    """``doc`` with the parser's dict subclass replaced by plain dicts (so it compares and pickles plainly)."""
    if isinstance(doc, dict):
        return {k: _plain(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_plain(v) for v in doc]
    return doc
