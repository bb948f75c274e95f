"""The MCP gateway (OAuth, tenants, scopes, routing). Built by the gateway issue."""
