"""server.json validation: the bundled schema, every problem at once with its JSON path, the semantic rules."""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from kontor.registry.server_json import (
    MAX_DOCUMENT_BYTES,
    MAX_STRING_CHARS,
    SCHEMA_URL,
    format_path,
    load_schema,
    namespace_allowed,
    validate_server_json,
    version_problem,
)

EXAMPLES = ("minimal.json", "with-package.json", "with-remote.json")


def doc(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "name": "io.github.alice/weather",
        "description": "Weather forecasts for German cities.",
        "version": "1.0.2",
    }
    base.update(changes)
    return base


def rules(result: Any) -> dict[str, str]:
    """path → rule of every problem (one problem per path in these tests)."""
    return {p.path: p.rule for p in result.problems}


def npm(**changes: Any) -> dict[str, Any]:
    pkg: dict[str, Any] = {"registryType": "npm", "identifier": "@alice/weather-mcp", "version": "1.0.2",
                           "transport": {"type": "stdio"}}
    pkg.update(changes)
    return pkg


def remote(url: str, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "streamable-http", "url": url}
    entry.update(changes)
    return entry


# ------------------------------------------------------------------------------- bundled schema


def test_bundled_schema_is_the_verbatim_upstream_copy(shared_data: Path) -> None:
    upstream = (shared_data / "registry" / "server.schema.2025-12-11.json").read_bytes()
    bundled = resources.files("kontor.registry.schema").joinpath("server.schema.2025-12-11.json").read_bytes()
    assert hashlib.sha256(bundled).hexdigest() == hashlib.sha256(upstream).hexdigest()
    assert load_schema()["$id"] == SCHEMA_URL
    notice = resources.files("kontor.registry.schema").joinpath("NOTICE.md").read_text(encoding="utf-8")
    assert "MIT" in notice and "modelcontextprotocol/registry" in notice
    assert "e361b5ff5a925b36a38eda0544bca8230a84558b" in notice


@pytest.mark.parametrize("name", EXAMPLES)
def test_official_examples_validate(shared_data: Path, name: str) -> None:
    raw = (shared_data / "registry" / "examples" / name).read_bytes()
    result = validate_server_json(raw, namespaces=["io.github.user"])
    assert result.ok, [str(p) for p in result.problems]
    assert result.document == json.loads(raw)
    # The same document as text and as a parsed mapping gives the same answer.
    assert validate_server_json(raw.decode(), namespaces=["io.github.user"]).ok
    assert validate_server_json(json.loads(raw), namespaces=["io.github.user"]).ok


def test_input_mapping_is_not_modified() -> None:
    original = doc(packages=[npm(version="^1.0")])
    before = copy.deepcopy(original)
    validate_server_json(original)
    assert original == before


# --------------------------------------------------------------------------- all problems at once


def test_a_document_with_many_problems_reports_all_of_them_with_paths() -> None:
    bad = {
        "$schema": SCHEMA_URL,
        "name": "io.github.alice/weather",
        "description": "x" * 101,
        "version": "^1.2",
        "websiteUrl": "not a uri",
        "packages": [
            {"registryType": "npm", "identifier": "weather", "transport": {"type": "stdio"}, "version": "~1"},
            {"identifier": "weather", "transport": {"type": "carrier-pigeon"}},
            {"registryType": "pypi", "identifier": "weather", "version": "1.0",
             "transport": {"type": "stdio"}, "fileSha256": "XYZ",
             "environmentVariables": [{"isSecret": "yes"}]},
        ],
        "remotes": [
            {"type": "sse", "url": "ftp://example.com/sse"},
            {"type": "streamable-http"},
        ],
        "icons": [{"src": "https://example.com/i.png", "mimeType": "image/gif"}],
    }
    result = validate_server_json(bad)
    assert not result.ok
    found = {(p.path, p.rule) for p in result.problems}
    expected = {
        ("$.description", "schema.maxLength"),
        ("$.version", "version-range"),
        ("$.websiteUrl", "schema.format"),
        ("$.packages[0].version", "version-range"),
        ("$.packages[1].registryType", "schema.required"),
        ("$.packages[1].transport.type", "schema.anyOf"),
        ("$.packages[2].fileSha256", "schema.pattern"),
        ("$.packages[2].environmentVariables[0].isSecret", "schema.type"),
        ("$.packages[2].environmentVariables[0].name", "schema.required"),
        ("$.remotes[0].url", "schema.pattern"),
        ("$.remotes[1].url", "schema.required"),
        ("$.icons[0].mimeType", "schema.enum"),
    }
    assert expected <= found, sorted(found)
    by_path = {p.path: p for p in result.problems}
    assert "carrier-pigeon" in by_path["$.packages[1].transport.type"].message
    assert "stdio" in by_path["$.packages[1].transport.type"].message
    assert "101" not in by_path["$.description"].message and "100" in by_path["$.description"].message
    assert all(p.path.startswith("$") for p in result.problems)


def test_problem_paths_use_brackets_for_keys_that_are_not_identifiers() -> None:
    assert format_path(["packages", 0, "version"]) == "$.packages[0].version"
    assert format_path(["$schema"]) == "$.$schema"
    assert format_path(["_meta", "io.modelcontextprotocol.registry/publisher-provided"]) == \
        "$._meta['io.modelcontextprotocol.registry/publisher-provided']"
    assert format_path(["a'b"]) == "$['a\\'b']"


def test_invalid_json_is_reported_with_line_and_column() -> None:
    result = validate_server_json(b'{\n  "name": "io.github.alice/weather",\n  "version": 1.0.0\n}')
    assert result.document is None
    [problem] = result.problems
    assert problem.rule == "invalid-json" and problem.path == "$"
    assert "line 3, column" in problem.message


@pytest.mark.parametrize(("raw", "rule"), [
    (b"\xff\xfe{}", "invalid-encoding"),
    (b'{"version": NaN}', "invalid-json"),
    (b'{"n": ' + b"1" * 5000 + b"}", "invalid-json"),
    (b"[" * 20000 + b"]" * 20000, "too-deep"),
])
def test_malformed_input_is_refused_with_a_clear_problem(raw: bytes, rule: str) -> None:
    result = validate_server_json(raw)
    assert [p.rule for p in result.problems] == [rule]


def test_a_leading_byte_order_mark_is_tolerated() -> None:
    raw = "\ufeff".encode() + json.dumps(doc()).encode()
    assert validate_server_json(raw).ok


def test_duplicate_keys_are_problems() -> None:
    raw = b'{"$schema": "%s", "name": "io.github.alice/weather", "name": "io.github.mallory/weather", ' \
          b'"description": "d", "version": "1.0.0"}' % SCHEMA_URL.encode()
    result = validate_server_json(raw)
    assert rules(result) == {"$.name": "duplicate-key"}


def test_oversized_document_is_refused_unread() -> None:
    big = json.dumps(doc(description="x", _meta={"io.modelcontextprotocol.registry/publisher-provided":
                                                 {"blob": "y" * MAX_DOCUMENT_BYTES}})).encode()
    result = validate_server_json(big)
    assert result.document is None
    assert [p.rule for p in result.problems] == ["document-too-large"]
    assert str(len(big)) in result.problems[0].message


def test_overlong_strings_and_publisher_meta_are_limited() -> None:
    result = validate_server_json(doc(
        packages=[npm(environmentVariables=[{"name": "X", "description": "d" * (MAX_STRING_CHARS + 1)}])],
        _meta={"io.modelcontextprotocol.registry/publisher-provided": {"k": "v" * 5000}},
    ))
    found = rules(result)
    assert found["$.packages[0].environmentVariables[0].description"] == "string-too-long"
    assert found["$._meta['io.modelcontextprotocol.registry/publisher-provided']"] == "publisher-meta-too-large"


# ---------------------------------------------------------------------------------- semantic rules


@pytest.mark.parametrize("version", ["^1.2", "~1", ">=1.0.0", "<2", "=1.0.0", "1.0.0 - 2.0.0", "1.2 || 1.3",
                                     "*", "x", "X", "1.x", "1.2.*", "1.2.X", "latest", "LATEST", "", "  "])
def test_version_ranges_and_reserved_words_are_refused(version: str) -> None:
    assert version_problem(version) is not None
    result = validate_server_json(doc(version=version))
    assert not result.ok
    assert {p.path for p in result.problems} == {"$.version"}


@pytest.mark.parametrize("version", ["1.0.2", "2.1.0-alpha", "1.0.0-beta.2+build.5", "v3", "2024.06.1", "1",
                                     "1.0.0-x.7"])
def test_exact_versions_are_accepted(version: str) -> None:
    assert version_problem(version) is None
    assert validate_server_json(doc(version=version)).ok


def test_package_versions_must_be_exact_and_present() -> None:
    result = validate_server_json(doc(packages=[
        npm(version="^1.0.0"),
        npm(version="latest"),
        {k: v for k, v in npm().items() if k != "version"},
        npm(version="1.0.0"),
    ]))
    found = rules(result)
    assert found == {
        "$.packages[0].version": "version-range",
        "$.packages[1].version": "schema.not",
        "$.packages[2].version": "package-version-missing",
    }


def test_package_pinning_by_registry_type() -> None:
    sha = "fe333e598595000ae021bd27117db32ec69af6987f507ba7a63c90638ff633ce"
    result = validate_server_json(doc(packages=[
        {"registryType": "oci", "identifier": "ghcr.io/alice/weather", "transport": {"type": "stdio"}},
        {"registryType": "oci", "identifier": "ghcr.io/alice/weather:latest", "transport": {"type": "stdio"}},
        {"registryType": "oci", "identifier": "ghcr.io/alice/weather:1.0.2", "transport": {"type": "stdio"}},
        {"registryType": "oci", "identifier": f"ghcr.io/alice/weather@sha256:{sha}", "transport": {"type": "stdio"}},
        {"registryType": "mcpb", "identifier": "https://example.com/w.mcpb", "transport": {"type": "stdio"}},
        {"registryType": "mcpb", "identifier": "http://example.com/w.mcpb", "fileSha256": sha,
         "transport": {"type": "stdio"}},
        {"registryType": "cargo", "identifier": "weather", "version": "1.0.0", "transport": {"type": "stdio"}},
        npm(identifier="weather mcp"),
        npm(registryBaseUrl="http://registry.npmjs.org"),
    ]))
    assert rules(result) == {
        "$.packages[0].identifier": "package-oci-unpinned",
        "$.packages[1].identifier": "package-oci-unpinned",
        "$.packages[4].fileSha256": "package-mcpb-sha256-missing",
        "$.packages[5].identifier": "package-mcpb-url-invalid",
        "$.packages[6].registryType": "package-registry-type-unsupported",
        "$.packages[7].identifier": "package-identifier-invalid",
        "$.packages[8].registryBaseUrl": "package-registry-url-invalid",
    }


def test_package_arguments_and_transport_urls() -> None:
    result = validate_server_json(doc(packages=[npm(
        packageArguments=[
            {"type": "named", "name": "--port <port>"},
            {"type": "named", "name": "--mode", "value": "--mode=fast"},
            {"type": "positional", "valueHint": "config_path"},
        ],
        transport={"type": "streamable-http", "url": "http://localhost:{port}/mcp"},
    ), npm(transport={"type": "stdio", "url": "http://localhost/mcp"})]))
    assert rules(result) == {
        "$.packages[0].packageArguments[0].name": "argument-name-invalid",
        "$.packages[0].packageArguments[1].value": "argument-value-starts-with-name",
        "$.packages[0].transport.url": "package-transport-url-invalid",
        "$.packages[1].transport.url": "package-transport-url-unexpected",
    }
    ok = validate_server_json(doc(packages=[npm(
        packageArguments=[{"type": "named", "name": "--port", "value": "8080"}],
        environmentVariables=[{"name": "PORT"}],
        transport={"type": "streamable-http", "url": "http://localhost:{PORT}/mcp"},
    )]))
    assert ok.ok, [str(p) for p in ok.problems]


@pytest.mark.parametrize(("url", "rule"), [
    ("http://api.example.com/mcp", "remote-url-not-https"),
    ("https://localhost/mcp", "remote-url-local"),
    ("https://mcp.localhost/mcp", "remote-url-local"),
    ("https://127.0.0.1/mcp", "remote-url-local"),
    ("https://[::1]/mcp", "remote-url-local"),
    ("https://10.1.2.3/mcp", "remote-url-local"),
    ("https://192.168.0.10/mcp", "remote-url-local"),
    ("https://169.254.169.254/latest/meta-data", "remote-url-local"),
    ("https://user:secret@api.example.com/mcp", "remote-url-credentials"),
    ("https://{tenant}.example.com/mcp", "remote-url-undefined-variable"),
])
def test_remote_urls(url: str, rule: str) -> None:
    result = validate_server_json(doc(remotes=[remote(url)]))
    assert rule in {p.rule for p in result.problems}, [str(p) for p in result.problems]
    assert all(p.path == "$.remotes[0].url" for p in result.problems)


def test_remote_with_declared_variables_and_https_is_fine() -> None:
    entry = remote("https://{tenant}.example.com/mcp",
                   variables={"tenant": {"description": "your tenant", "isRequired": True}},
                   headers=[{"name": "Authorization", "isSecret": True}])
    assert validate_server_json(doc(remotes=[entry])).ok


def test_remote_type_must_be_a_remote_transport() -> None:
    result = validate_server_json(doc(remotes=[{"type": "stdio", "url": "https://api.example.com/mcp"}]))
    assert rules(result) == {"$.remotes[0].type": "schema.anyOf"}


def test_schema_url_is_required_and_must_be_2025_12_11() -> None:
    missing = {k: v for k, v in doc().items() if k != "$schema"}
    assert rules(validate_server_json(missing)) == {"$.$schema": "schema-missing"}
    older = doc(**{"$schema": "https://static.modelcontextprotocol.io/schemas/2025-10-17/server.schema.json"})
    assert rules(validate_server_json(older)) == {"$.$schema": "schema-unsupported"}


def test_urls_of_website_icons_and_repository_must_be_https() -> None:
    result = validate_server_json(doc(
        websiteUrl="http://example.com",
        icons=[{"src": "http://example.com/icon.png"}],
        repository={"url": "https://github.com/alice", "source": "github", "subfolder": "../up"},
        title="   ",
    ))
    assert rules(result) == {
        "$.websiteUrl": "website-url-invalid",
        "$.icons[0].src": "icon-src-invalid",
        "$.repository.url": "repository-url-invalid",
        "$.repository.subfolder": "repository-subfolder-invalid",
        "$.title": "title-blank",
    }


@pytest.mark.parametrize(("name", "namespaces", "allowed"), [
    ("io.github.alice/weather", ["io.github.alice"], True),
    ("io.github.Alice/weather", ["io.github.alice"], True),
    ("io.github.alice/weather", ["io.github.bob"], False),
    ("io.github.alicex/weather", ["io.github.alice"], False),
    ("io.github.alice.evil/weather", ["io.github.alice"], False),
    ("com.example/weather", ["com.example"], True),
    ("com.example.api/weather", ["com.example"], False),
    ("com.example.api/weather", ["com.example.*"], True),
    ("com.example/weather", ["com.example.*"], True),
    ("com.examplex/weather", ["com.example.*"], False),
    ("com.example/weather", [], False),
])
def test_namespace_ownership(name: str, namespaces: list[str], allowed: bool) -> None:
    assert namespace_allowed(name, namespaces) is allowed
    result = validate_server_json(doc(name=name), namespaces=namespaces)
    assert result.ok is allowed
    if not allowed:
        assert rules(result) == {"$.name": "namespace-not-owned"}


def test_namespace_is_not_checked_without_a_publisher() -> None:
    assert validate_server_json(doc(name="com.anyone/weather")).ok


def test_server_name_parts_must_start_and_end_alphanumeric() -> None:
    result = validate_server_json(doc(name="io.github.alice/weather-"))
    assert rules(result) == {"$.name": "invalid-server-name"}
    result = validate_server_json(doc(name="io.github.alice/two/slashes"))
    assert rules(result) == {"$.name": "schema.pattern"}  # the schema's message, not a second one


def test_problems_serialise() -> None:
    result = validate_server_json(doc(version="^1"))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ok"] is False
    assert data["problems"] == [{"path": "$.version", "rule": "version-range", "stage": "semantic",
                                 "message": result.problems[0].message}]
