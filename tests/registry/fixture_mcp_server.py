"""A real MCP server (the SDK's MCPServer) for the live-snapshot tests.

``python fixture_mcp_server.py`` serves it over stdio; the tests also mount
:func:`build` 's Streamable HTTP app on loopback for the remote snapshot.
"""

from __future__ import annotations

import mcp_types as types
from mcp.server.mcpserver import MCPServer

INSTRUCTIONS = "Use lookup_product before quoting prices. Umlaute: äöü."


def build() -> MCPServer:
    server = MCPServer("fixture-snapshot", instructions=INSTRUCTIONS)

    @server.tool(title="Look up a product", annotations=types.ToolAnnotations(readOnlyHint=True))
    def lookup_product(sku: str, locale: str = "de-DE") -> dict[str, str]:
        """Find a product by its SKU and return its name."""
        return {"sku": sku, "name": f"Produkt {sku}", "locale": locale}

    @server.tool(annotations=types.ToolAnnotations(destructiveHint=True, idempotentHint=False))
    def delete_quote(quote_id: int) -> str:
        """Delete a quote permanently."""
        return f"deleted {quote_id}"

    @server.prompt()
    def summarise(topic: str) -> str:
        return f"Summarise {topic}."

    @server.resource("fixture://catalogue")
    def catalogue() -> str:
        return "catalogue"

    return server


if __name__ == "__main__":
    build().run("stdio")
