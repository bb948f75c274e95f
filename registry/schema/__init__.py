"""The bundled ``server.json`` JSON Schema (MIT, from modelcontextprotocol/registry; see NOTICE.md)."""
