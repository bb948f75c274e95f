"""The ``lakehouse`` MCP server in-process with the official client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from kontor.paths import TenantPaths
from kontor.servers.lakehouse.analysis import gtin_check_digit
from kontor.servers.lakehouse.embeddings import Embedder
from kontor.servers.lakehouse.server import build_server
from kontor.servers.lakehouse.store import LakehouseStore
from kontor.settings import Settings
from kontor.tenancy import tenant_context

from .conftest import doc_id, embed_batches, make_document

GTIN = "401234567890" + gtin_check_digit("401234567890")
TOOLS = {"search", "get_document", "list_documents", "query_table", "stats"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    root = tmp_path_factory.mktemp("lakehouse-server")
    store = LakehouseStore(TenantPaths(root, "acme"), embedder.spec)
    spec = embedder.spec
    store.write_documents(embed_batches(embedder, [
        make_document(spec, "datenblatt", [f"Motorschutzschalter 3RV2011-1AA10, GTIN {GTIN}."],
                      title="Datenblatt", domain="product", source="catalog/datenblatt.pdf",
                      products=[{"supplier_pid": "3RV2011-1AA10", "gtin": GTIN, "price": 49.9}]),
        make_document(spec, "vertrag", ["Der Kaufvertrag enthält einen Haftungsausschluss.",
                                        "Die Gewährleistungsfrist beträgt zwölf Monate."],
                      title="Kaufvertrag", domain="legal", source="contracts/kaufvertrag.pdf"),
        make_document(spec, "ust", ["Die Umsatzsteuer-Voranmeldung geht an das Finanzamt."],
                      title="Umsatzsteuer", domain="tax", source="tax/ust.pdf"),
    ]))
    store.close()
    return root


@pytest.fixture
def server(data_root: Path) -> MCPServer:
    settings = Settings(data_root=data_root, max_search_k=20, sql_max_rows=5, sql_timeout_seconds=2,
                        max_query_chars=200)
    return build_server(settings)


async def call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    return result.structured_content


async def error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text


async def test_tools_are_listed_with_annotations_and_schemas(server: MCPServer) -> None:
    with tenant_context("acme"):
        async with Client(server) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.title and tool.description
        assert tool.annotations.read_only_hint is True
        assert tool.annotations.destructive_hint is False
        assert tool.annotations.idempotent_hint is True
        assert tool.annotations.open_world_hint is False
        assert tool.output_schema and tool.output_schema["type"] == "object"
    search = tools["search"].input_schema["properties"]
    assert search["k"]["maximum"] == 20 and search["query"]["maxLength"] == 200
    assert search["mode"]["enum"] == ["hybrid", "vector", "keyword"]
    assert "tenant" not in str(tools["search"].input_schema)  # the tenant is never an argument
    assert "results" in tools["search"].output_schema["properties"]


async def test_search(server: MCPServer) -> None:
    with tenant_context("acme"):
        async with Client(server) as client:
            hybrid = await call(client, "search", {"query": f"Artikel mit EAN {GTIN}", "k": 3})
            keyword = await call(client, "search", {"query": "Gewährleistungsfristen", "mode": "keyword"})
            filtered = await call(client, "search", {"query": "Vertrag", "filters": {"domain": ["tax"]}})
    top = hybrid["results"][0]
    assert top["citation"]["document_id"] == doc_id("datenblatt")
    assert top["citation"]["source"] == "catalog/datenblatt.pdf" and top["citation"]["page"] == 1
    assert "identifier" in top["matched"] and GTIN in top["text"]
    assert hybrid["mode"] == "hybrid" and len(hybrid["results"]) == 3
    assert keyword["results"][0]["citation"]["title"] == "Kaufvertrag"
    assert {r["citation"]["document_id"] for r in filtered["results"]} == {doc_id("ust")}


@pytest.mark.parametrize(("args", "names"), [
    ({"query": "x", "k": 0}, "k"),
    ({"query": "x", "k": 21}, "k"),
    ({"query": "x", "mode": "fuzzy"}, "mode"),
    ({"query": ""}, "query"),
    ({"query": "x" * 201}, "query"),
    ({"query": "   "}, "query"),
    ({"query": "x", "filters": {"colour": "red"}}, "colour"),
    ({"query": "x", "filters": {"domain": "legal\x00"}}, "filters['domain']"),
])
async def test_bad_search_arguments_name_the_argument(server: MCPServer, args: dict[str, Any], names: str) -> None:
    with tenant_context("acme"):
        async with Client(server) as client:
            message = await error(client, "search", args)
    assert names in message


async def test_documents(server: MCPServer) -> None:
    with tenant_context("acme"):
        async with Client(server) as client:
            doc = await call(client, "get_document", {"document_id": doc_id("vertrag")})
            part = await call(client, "get_document", {"document_id": doc_id("vertrag"), "max_chars": 10})
            rest = await call(client, "get_document", {"document_id": doc_id("vertrag"),
                                                       "text_offset": part["next_text_offset"]})
            missing = await error(client, "get_document", {"document_id": doc_id("nope")})
            page = await call(client, "list_documents", {"limit": 2})
            page2 = await call(client, "list_documents", {"offset": page["next_offset"], "limit": 2})
            legal = await call(client, "list_documents", {"domain": "legal"})
            too_many = await error(client, "list_documents", {"limit": 500})
            resource = await client.read_resource(f"lakehouse://documents/{doc_id('vertrag')}")
            with pytest.raises(MCPError):
                await client.read_resource(f"lakehouse://documents/{doc_id('nope')}")
    assert doc["title"] == "Kaufvertrag" and doc["domain"] == "legal" and doc["children"] == []
    assert doc["text"].startswith("Der Kaufvertrag") and doc["next_text_offset"] is None
    assert part["text"] == doc["text"][:10] and part["text_chars"] == len(doc["text"])
    assert part["text"] + rest["text"] == doc["text"]
    assert "document_id" in missing and "not found" in missing
    assert page["total"] == 3 and len(page["documents"]) == 2 and page["next_offset"] == 2
    assert len(page2["documents"]) == 1 and page2["next_offset"] is None
    assert [d["document_id"] for d in legal["documents"]] == [doc_id("vertrag")]
    assert "limit" in too_many
    text = resource.contents[0].text
    assert "title: Kaufvertrag" in text and "Haftungsausschluss" in text


async def test_query_table_and_stats(server: MCPServer) -> None:
    with tenant_context("acme"):
        async with Client(server) as client:
            table = await call(client, "query_table", {"sql": "SELECT domain, count(*) AS n FROM documents "
                                                              "GROUP BY domain ORDER BY domain"})
            capped = await call(client, "query_table", {"sql": "SELECT * FROM range(100)"})
            refused = await error(client, "query_table", {"sql": "SELECT * FROM read_csv('/etc/passwd')"})
            stats = await call(client, "stats", {})
    assert table["columns"] == ["domain", "n"]
    assert table["rows"] == [["legal", 1], ["product", 1], ["tax", 1]]
    assert capped["row_count"] == 5 and capped["truncated"] is True and capped["max_rows"] == 5
    assert "reading files" in refused
    assert stats["tenant"] == "acme" and stats["embedding_model"] == "all-MiniLM-L6-v2"
    assert stats["embedding_dim"] == 384
    assert stats["tables"]["documents"]["rows"] == 3 and stats["tables"]["chunks"]["rows"] == 4
    assert stats["documents_per_domain"] == {"legal": 1, "product": 1, "tax": 1}


async def test_each_tenant_sees_only_its_own_data(server: MCPServer) -> None:
    with tenant_context("beta"):
        async with Client(server) as client:
            listing = await call(client, "list_documents", {})
            hits = await call(client, "search", {"query": f"Motorschutzschalter {GTIN}"})
            missing = await error(client, "get_document", {"document_id": doc_id("vertrag")})
    assert listing["total"] == 0 and hits["results"] == []
    assert "not found" in missing
