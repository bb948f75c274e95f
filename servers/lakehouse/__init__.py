"""Lakehouse storage library and MCP server ``lakehouse`` (LanceDB chunks + Delta tables)."""
