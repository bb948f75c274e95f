"""The registry's API fuzzed from its own OpenAPI document (schemathesis): no 5xx, answers as documented.

Every operation of ``/registry/openapi.json`` gets requests generated from its parameters and
body schemas, sent to the in-process app (the JSON API and the read API, on SQLite) with the
token of a user who is a tenant admin and a platform admin at once (so the requests get past the
door and reach the operations), and a share of anonymous requests. Each answer is checked:
``not_a_server_error``, ``status_code_conformance`` (only documented statuses),
``content_type_conformance`` and ``response_schema_conformance`` (the body matches its schema).
The review has no network at all here (every remote is refused), so a submission that happens to
validate is reviewed in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from kontor.registry.app import PlatformAdmins, RegistryContext, build_read_api_app, build_registry_app
from kontor.registry.openapi import openapi
from tests.registry.test_registry_api import ACME_ADMIN, ADMINS, Harness, Net, make_harness, server_json

BASE = "http://registry.test"
MAX_EXAMPLES = 25  # per operation (32 operations)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Harness]]:
    """The app in one event loop (the TestClient's portal) for the whole module; its database set up there."""
    root = tmp_path_factory.mktemp("fuzz")
    holder: dict[str, Any] = {}

    def provider() -> RegistryContext:
        return holder["harness"].ctx

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        harnesses = make_harness(root, f"sqlite+aiosqlite:///{root / 'gateway.db'}", Net(None, None, None).config(),
                                 seed=True)
        harness = await harnesses.__anext__()
        # one caller who may do everything, so generated requests reach the operations behind the door
        harness.ctx.platform_admins = PlatformAdmins({*ADMINS, ("acme", ACME_ADMIN)})
        holder["harness"] = harness
        # something to find: a version in review, and the approved first-party servers (seeded)
        submitted = await harness.submit(server_json("https://remote.example.com/mcp"))
        harness.version_ids = [submitted.json()["id"], *[str(v.id) for v in await harness.ctx.store.list_versions()
                                                          if v.server_name.startswith("io.kontor/")]]
        try:
            yield
        finally:
            await harnesses.aclose()

    app = Starlette(routes=[Mount("/registry", app=build_registry_app(provider)),
                            Mount("/v0.1", app=build_read_api_app(provider))], lifespan=lifespan)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as client:
        yield client, holder["harness"]


def test_the_api_answers_every_generated_request_as_its_openapi_document_says(
        fuzz: tuple[TestClient, Harness]) -> None:
    client, harness = fuzz
    token = harness.token("acme", ACME_ADMIN, ["tenant:admin"], roles=["admin"])
    schema = schemathesis.openapi.from_dict(focused(openapi(BASE), harness))
    started = time.monotonic()
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    def runner(operation: Any) -> Any:
        label = operation.label

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            anonymous = counts.get(label, 0) % 4 == 3  # a quarter of the requests without a token
            headers = {} if anonymous else {"Authorization": f"Bearer {token}"}
            kwargs = case.as_transport_kwargs(base_url=BASE, headers=headers)
            response = client.request(**_httpx_kwargs(kwargs))
            counts[label] = counts.get(label, 0) + 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=CHECKS)

        return run

    for operation in operations:
        runner(operation)()
    took = time.monotonic() - started
    print(f"fuzzed {len(operations)} operations, {sum(counts.values())} requests in {took:.1f} s; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert sum(counts.values()) >= len(operations) * 3
    assert not any(code >= 500 for code in statuses)
    assert statuses.get(200, 0) + statuses.get(201, 0) > 0  # some requests got through, not only refusals


def focused(doc: dict[str, Any], harness: Harness) -> dict[str, Any]:
    """The document with its path parameters drawn from what exists (and one thing that does not), so the
    generated requests reach the operations instead of stopping at 404 — the response schemas are untouched."""
    known = {
        "tenant": ["acme", "beta", "nope"],
        "server": ["wholesale", "lakehouse", "ingest", "nope"],
        "publisher_id": [harness.publisher_id, "00000000-0000-4000-8000-000000000000"],
        "version_id": [*harness.version_ids, "00000000-0000-4000-8000-000000000000"],
        "serverName": ["test.fixture%2Fwholesale", "io.kontor%2Flakehouse", "io.kontor/ingest", "nope"],
        "version": ["latest", "1.0.0", "0.1.0", "9"],
    }
    for operations in doc["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in known:
                    parameter["schema"] = {"type": "string", "enum": known[parameter["name"]]}
    return doc


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis' transport arguments (requests-style) as httpx's ``request`` takes them."""
    out = dict(kwargs)
    if "data" in out and not isinstance(out["data"], dict):
        out["content"] = out.pop("data")
    out.pop("allow_redirects", None)
    out.pop("timeout", None)
    out.pop("verify", None)
    return out


def test_the_document_names_every_route_of_the_apps() -> None:
    """Each route of the two apps appears in the document (and nothing the apps do not serve)."""
    doc = openapi()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served: set[tuple[str, str]] = set()
    for prefix, app in (("/registry", build_registry_app(lambda: None)),  # type: ignore[arg-type,return-value]
                        ("/v0.1", build_read_api_app(lambda: None))):  # type: ignore[arg-type,return-value]
        for route in app.routes:
            for method in sorted(getattr(route, "methods", None) or ()):
                if method != "HEAD":
                    served.add((prefix + route.path, method))
    served.discard(("/v0.1/servers/{rest:path}", "GET"))
    served |= {("/v0.1/servers/{serverName}/versions", "GET"), ("/v0.1/servers/{serverName}/versions/{version}",
                                                                  "GET")}
    assert served == documented
