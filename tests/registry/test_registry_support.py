"""Fixtures and helpers shared by the registry's database tests (this module holds no tests itself).

Every fixture that opens a database runs twice: on SQLite (a file under the test's tmp_path) and on
a fresh database of the throwaway PostgreSQL server from ``tests/conftest.py`` (skipped where
PostgreSQL is not installed, unless ``KONTOR_REQUIRE_PG=1``). The schema is ``metadata.create_all``
of every table (``GatewayDB.init``), which ``test_registry_migrations`` proves equal to the migrated one.

The automated review is a small real function (:class:`LiveServers.review`): it looks up what the
"running" server of a ``server.json`` serves — set by the test — and runs the real poisoning and
annotation checks and the report builder on it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from kontor.gateway.db import GatewayDB, Role
from kontor.gateway.pinning import definition_hash
from kontor.registry.checks.annotations import check_annotations, tool_policies
from kontor.registry.checks.poisoning import scan_server
from kontor.registry.checks.report import build_report
from kontor.registry.lifecycle import ProofMethod, VersionState
from kontor.registry.migrations import target_metadata
from kontor.registry.server_json import SCHEMA_URL
from kontor.registry.service import RegistryService
from kontor.registry.store import Publisher, RegistryStore, SecretBox, Version, derive_slug

PASSWORD = "correct horse battery staple"
PUBLISHER = "dev@weather.example"
REVIEWER = "reviewer@kontor.example"
SECOND_REVIEWER = "second@kontor.example"
ACME_ADMIN = "admin@acme.example"
ACME_MEMBER = "member@acme.example"
BETA_ADMIN = "admin@beta.example"
NAME = "com.example/weather"


def tool(name: str, description: str = "Get the weather forecast for a city.", *, read_only: bool = True,
         title: str | None = None, **extra: Any) -> dict[str, Any]:
    annotations = {"readOnlyHint": True} if read_only else {"readOnlyHint": False, "destructiveHint": False}
    return {
        "name": name,
        "title": title or name.replace("_", " ").title(),
        "description": description,
        "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "annotations": annotations,
        **extra,
    }


WEATHER_TOOLS = [
    tool("get_forecast"),
    tool("get_alerts", "List the active weather alerts for a region."),
    tool("set_alert", "Subscribe to weather alerts for a city.", read_only=False),
]


def server_json(name: str = NAME, version: str = "1.0.0", *, remote: bool = True, secret_header: bool = False,
                **extra: Any) -> bytes:
    doc: dict[str, Any] = {"$schema": SCHEMA_URL, "name": name, "description": "Weather forecasts and alerts.",
                           "version": version}
    if remote:
        transport: dict[str, Any] = {"type": "streamable-http", "url": "https://weather.example.com/mcp"}
        if secret_header:
            transport["headers"] = [{"name": "X-Api-Key", "isSecret": True, "isRequired": True}]
        doc["remotes"] = [transport]
    doc.update(extra)
    return json.dumps(doc, indent=2).encode()


class LiveServers:
    """What each (server name, version) serves "live"; :meth:`review` is the injected review function."""

    def __init__(self) -> None:
        self.tools: dict[tuple[str, str], tuple[list[dict[str, Any]], str | None]] = {}
        self.calls: list[tuple[str, str, list[str]]] = []
        self.fail: BaseException | None = None

    def serve(self, name: str, version: str, tools: Sequence[dict[str, Any]], instructions: str | None = None) -> None:
        self.tools[(name, version)] = ([dict(t) for t in tools], instructions)

    async def review(self, document: dict[str, Any], namespaces: list[str]) -> dict[str, Any]:
        self.calls.append((document["name"], document["version"], list(namespaces)))
        if self.fail is not None:
            raise self.fail
        tools, instructions = self.tools.get((document["name"], document["version"]), ([], None))
        slug = derive_slug(document["name"])
        findings = [*scan_server(tools, instructions=instructions), *check_annotations(slug, tools)]
        report = build_report(findings, policies=tool_policies(slug, tools), server=document["name"],
                              version=document["version"], checks_run=["server_json", "poisoning", "annotations"])
        return {"passed": not report["summary"]["failed_checks"], "risk": report["risk"]["label"], "report": report,
                "snapshot": {"tools": [{"name": t["name"], "hash": definition_hash(t), "definition": t}
                                       for t in tools], "instructions": instructions}}


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'gateway' / 'gateway.db'}"
    return str(request.getfixturevalue("pg_url"))  # the PostgreSQL server starts only when this variant runs


@pytest.fixture
async def gateway(db_url: str) -> AsyncIterator[GatewayDB]:
    # create_all of the full metadata: the same schema as the migrations (test_registry_migrations
    # proves it), at a third of the time on SQLite, where every DDL statement of a migration commits alone.
    target_metadata()
    gdb = GatewayDB(db_url, hasher=fast_hasher())
    await gdb.init()
    yield gdb
    await gdb.close()


@pytest.fixture
def store(gateway: GatewayDB) -> RegistryStore:
    return RegistryStore(gateway, secret_box=SecretBox.generate())


@dataclass
class World:
    gateway: GatewayDB
    store: RegistryStore
    service: RegistryService
    live: LiveServers
    publisher: Publisher

    async def submit(self, version: str = "1.0.0", tools: Sequence[dict[str, Any]] = WEATHER_TOOLS, *,
                     name: str = NAME, tenant: str | None = None, **doc: Any) -> Version:
        self.live.serve(name, version, tools)
        return await self.service.submit(self.publisher.id, server_json(name, version, **doc), PUBLISHER,
                                         tenant=tenant)

    async def approved(self, version: str = "1.0.0", tools: Sequence[dict[str, Any]] = WEATHER_TOOLS,
                       **kwargs: Any) -> Version:
        submitted = await self.submit(version, tools, **kwargs)
        assert submitted.state == VersionState.in_review, submitted
        return await self.service.approve(submitted.id, REVIEWER, "reviewed the evidence: low risk")


@pytest.fixture
async def world(gateway: GatewayDB, store: RegistryStore) -> World:
    """Tenants acme (an admin and a member) and beta (an admin), a publisher owning com.example."""
    for tenant, users in {"acme": [(ACME_ADMIN, Role.admin), (ACME_MEMBER, Role.member)],
                          "beta": [(BETA_ADMIN, Role.admin)]}.items():
        await gateway.create_tenant(tenant)
        for email, role in users:
            await gateway.add_user(tenant, email, PASSWORD, role)
    publisher = await store.create_publisher("Weather Inc.", PUBLISHER)
    await store.add_namespace(publisher.id, "com.example.*", ProofMethod.dns, evidence={"domain": "example.com"},
                              actor=PUBLISHER)
    live = LiveServers()
    service = RegistryService(store, live.review, local_urls={"lakehouse": "http://127.0.0.1:8711/mcp",
                                                              "ingest": "http://127.0.0.1:8712/mcp"},
                              platform_admins=[REVIEWER, SECOND_REVIEWER])
    return World(gateway, store, service, live, publisher)
