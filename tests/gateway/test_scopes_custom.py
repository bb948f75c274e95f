"""Custom scopes: a tool that declares ``_meta["io.kontor/scope"]`` needs ``<server>:<name>``.

The rule itself (:func:`tool_scope`), which scopes exist and which a role may hold, the catalog's
use of it (a tool is listed only to tokens with its scope), and that the first-party table of
custom scopes says what the lakehouse's tools declare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import Tool, ToolAnnotations

from kontor.auth import StaticJwks
from kontor.gateway.catalog import CatalogBuilder
from kontor.gateway.db import GatewayDB
from kontor.gateway.scopes import (
    FIRST_PARTY_CUSTOM_SCOPES,
    SCOPE_META,
    custom_scopes,
    declared_scope,
    grant,
    role_scopes,
    supported_scopes,
    tool_scope,
)

RO = {"readOnlyHint": True}


def tool(name: str = "t", *, read_only: bool = False, scope: Any = None, meta: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "inputSchema": {"type": "object"}}
    if read_only:
        out["annotations"] = dict(RO)
    if scope is not None:
        out["_meta"] = {SCOPE_META: scope}
    if meta is not None:
        out["_meta"] = meta
    return out


@pytest.mark.parametrize(("definition", "scope"), [
    (tool(), "crm:write"),
    (tool(read_only=True), "crm:read"),
    (tool(scope="interactions"), "crm:interactions"),
    (tool(read_only=True, scope="interactions"), "crm:interactions"),  # the declaration wins over the annotation
    (tool(scope="Export-2"), "crm:Export-2"),
    (tool(meta={"other": 1}), "crm:write"),  # other _meta keys change nothing
    # invalid declarations fail closed: the tool needs write, never less
    (tool(read_only=True, scope="read"), "crm:write"),
    (tool(scope="write"), "crm:write"),
    (tool(read_only=True, scope=""), "crm:write"),
    (tool(read_only=True, scope="a b"), "crm:write"),
    (tool(read_only=True, scope="tenant:admin"), "crm:write"),
    (tool(read_only=True, scope="-x"), "crm:write"),
    (tool(read_only=True, scope="x" * 64), "crm:write"),
    (tool(read_only=True, scope=7), "crm:write"),
    (tool(read_only=True, scope=None, meta={SCOPE_META: None}), "crm:write"),
])
def test_tool_scope(definition: dict[str, Any], scope: str) -> None:
    assert tool_scope("crm", definition) == scope


def test_tool_scope_of_sdk_tool_objects() -> None:
    declared = Tool(name="t", input_schema={"type": "object"}, annotations=ToolAnnotations(read_only_hint=True),
                    _meta={SCOPE_META: "interactions"})
    assert declared_scope(declared) == "interactions" and tool_scope("lakehouse", declared) == "lakehouse:interactions"
    plain = Tool(name="t", input_schema={"type": "object"}, annotations=ToolAnnotations(read_only_hint=True))
    assert declared_scope(plain) is None and tool_scope("lakehouse", plain) == "lakehouse:read"


def test_which_custom_scopes_an_installation_has() -> None:
    assert custom_scopes("lakehouse") == ["lakehouse:interactions"]  # first party, before any discovery
    assert custom_scopes("lakehouse", {"first_party": True}) == ["lakehouse:interactions"]
    assert custom_scopes("lakehouse", {"custom_scopes": []}) == []  # a tenant switched recording off
    assert custom_scopes("crm") == []
    assert custom_scopes("crm", {"custom_scopes": ["export", "bad name", "read", "export"]}) == ["crm:export"]
    assert custom_scopes("crm", {"custom_scopes": "export"}) == []  # not a list: nothing


def test_supported_scopes_name_the_custom_ones() -> None:
    assert supported_scopes(["lakehouse", "ingest"]) == [
        "ingest:read", "ingest:write", "lakehouse:interactions", "lakehouse:read", "lakehouse:write", "tenant:admin"]
    assert supported_scopes([("crm", {"custom_scopes": ["export"]}), ("lakehouse", {"custom_scopes": []})]) == [
        "crm:export", "crm:read", "crm:write", "lakehouse:read", "lakehouse:write", "tenant:admin"]
    assert supported_scopes([]) == ["tenant:admin"]


def test_members_hold_custom_scopes_where_they_may_write() -> None:
    installations = [("lakehouse", {}), ("crm", {"custom_scopes": ["export"], "write_roles": ["admin"]})]
    member = role_scopes("member", installations)
    assert member == {"lakehouse:read", "lakehouse:write", "lakehouse:interactions", "crm:read"}
    admin = role_scopes("admin", installations)
    assert admin == member | {"crm:write", "crm:export", "tenant:admin"}
    # a client that asks for nothing gets everything the role allows, custom scopes included
    assert "lakehouse:interactions" in grant(None, member)
    assert grant(["lakehouse:read"], member) == ["lakehouse:read"]  # ... and only what it asks for otherwise
    assert grant(["crm:export"], member) == []


class FakeSession:
    server_capabilities = {"tools": {}}

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools = tools

    async def request(self, method: str, params: Any = None, *, timeout_s: float | None = None) -> dict[str, Any]:
        assert method == "tools/list"
        return {"tools": self.tools}


async def test_the_catalog_lists_a_tool_only_to_tokens_with_its_scope(tmp_path: Path) -> None:
    tools = [tool("search", read_only=True), tool("record", scope="interactions"),
             tool("mine", read_only=True, scope="interactions"), tool("forget", scope="bad scope")]
    db = GatewayDB(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    await db.init()
    try:
        await db.create_tenant("acme")
        await db.enable_server("acme", "lakehouse", "http://127.0.0.1:9/mcp", ["lakehouse:read", "lakehouse:write"])

        async def session_for(_installation: Any) -> FakeSession:
            return FakeSession(tools)

        catalog = await CatalogBuilder(db, session_for, timeout_s=5, ttl_s=60).get("acme")
    finally:
        await db.close()
    assert {name: entry.scope for name, entry in catalog.tools.items()} == {
        "lakehouse__search": "lakehouse:read", "lakehouse__record": "lakehouse:interactions",
        "lakehouse__mine": "lakehouse:interactions", "lakehouse__forget": "lakehouse:write"}

    def visible(*scopes: str) -> list[str]:
        return sorted(t.name for t in catalog.visible_tools(frozenset(scopes)))

    assert visible("lakehouse:read", "lakehouse:write") == ["lakehouse__forget", "lakehouse__search"]
    assert visible("lakehouse:interactions") == ["lakehouse__mine", "lakehouse__record"]
    assert catalog.tools["lakehouse__record"].definition["_meta"] == {SCOPE_META: "interactions"}


async def test_the_first_party_table_matches_what_the_lakehouse_declares(tmp_path: Path) -> None:
    from kontor.servers.lakehouse.server import build_server
    from kontor.settings import Settings

    settings = Settings(data_root=tmp_path, auth_jwks_url="http://127.0.0.1:9/jwks",
                        auth_issuer="http://127.0.0.1:9/internal", auth_audience="http://127.0.0.1:8711/mcp")
    async with Client(build_server(settings, jwks=StaticJwks({"keys": []}))) as client:
        listed = (await client.list_tools()).tools
    declared = {declared_scope(t) for t in listed} - {None}
    assert declared == set(FIRST_PARTY_CUSTOM_SCOPES["lakehouse"])
